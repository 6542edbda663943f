"""Typed reads from matrix.toml's tables (orchestrator/matrix.py): a wrong value, a missing key or a key left over is
one ``MatrixError`` line naming the file, the key path, what is wrong and what is allowed."""

from __future__ import annotations

import re
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SIZE_RE = re.compile(r"^[0-9]+[bkmgBKMG]?$")  # Docker's memory sizes
CONTAINER_KEYS = {
    "timeout_s": ((int, float), "wall-clock limit of one trial's container, seconds"),
    "mem_limit": (str, "container memory limit, Docker syntax (\"8g\", \"512m\")"),
    "cpus": ((int, float), "CPU limit of the container (Docker --cpus)"),
    "shm_size": (str, "size of /dev/shm, Docker syntax (\"2g\")"),
}


class MatrixError(ValueError):
    """One line: file, key path, problem, fix."""

    def __init__(self, source: str, key: str, problem: str, fix: str):
        self.key = key
        super().__init__(f"{source}: {key}: {problem} — {fix}")


class Table:
    """Typed reads from one TOML table; keys left over at the end are reported as unknown, with the allowed ones."""

    def __init__(self, src: str, data: Any, path: str):
        if not isinstance(data, dict):
            raise MatrixError(src, path, f"must be a table, got {_tname(data)}", f"write it as [{path}] or {{…}}")
        self.src, self.data, self.path = src, dict(data), path

    def key(self, k: str) -> str:
        return f"{self.path}.{k}" if self.path else k

    def get(self, k: str, kind, default: Any = ..., *, choices=None, minimum=None, maximum=None,
            what: str = "") -> Any:
        if k not in self.data:
            if default is ...:
                raise MatrixError(self.src, self.key(k), "is missing", f"add {k} = … ({what or _kname(kind)})")
            return default
        v = self.data.pop(k)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
            raise MatrixError(self.src, self.key(k), f"must be {_kname(kind)}, got {_tname(v)} {v!r}",
                              f"give {k} {_kname(kind)} value{f' ({what})' if what else ''}")
        if choices is not None and v not in choices:
            raise MatrixError(self.src, self.key(k), f"unknown value {v!r}", f"use one of: {', '.join(choices)}")
        if minimum is not None and v < minimum:
            raise MatrixError(self.src, self.key(k), f"must be ≥ {minimum}, got {v!r}", f"set it to {minimum} or more")
        if maximum is not None and v > maximum:
            raise MatrixError(self.src, self.key(k), f"must be ≤ {maximum}, got {v!r}", f"set it to {maximum} or less")
        return float(v) if float in kinds and not isinstance(v, bool) and isinstance(v, int) else v

    def names(self, k: str, allowed: list[str], what: str) -> list[str] | None:
        """An optional list selecting some of ``allowed`` (None: all)."""
        v = self.get(k, list, None)
        if v is None:
            return None
        for i, item in enumerate(v):
            if item not in allowed:
                raise MatrixError(self.src, f"{self.key(k)}[{i}]", f"unknown {what} {item!r}",
                                  f"use one of: {', '.join(allowed) or '(none defined)'}")
        if len(set(v)) != len(v):
            raise MatrixError(self.src, self.key(k), "lists a name twice", "list each once")
        return v

    def table(self, k: str, default: Any = ...) -> dict:
        v = self.get(k, dict, {} if default is ... else default)
        return v

    def done(self, allowed) -> None:
        if self.data:
            k = sorted(self.data)[0]
            raise MatrixError(self.src, self.key(k), "unknown key",
                              f"remove it; allowed keys here: {', '.join(allowed)}")


def _kname(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds if not (k is int and float in kinds))


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(
        type(v), type(v).__name__)


def check_name(src: str, key: str, name: str) -> None:
    # names become file names and container labels
    if not NAME_RE.match(name):
        raise MatrixError(src, key, f"name {name!r} has characters a file name cannot carry",
                          "use letters, digits, '.', '_' and '-' only")


def named_entries(src: str, data: Any, section: str, parse) -> dict[str, Any]:
    """Each ``[<section>.<name>]`` entry, its name checked, as ``parse(key, value)`` makes it, in file order."""
    defs = Table(src, data, section)
    out: dict[str, Any] = {}
    for name in list(defs.data):
        key = f"{section}.{name}"
        check_name(src, key, name)
        out[name] = parse(key, defs.data.pop(name))
    return out


def container_limits(t: Table) -> dict[str, Any]:
    """The [container] keys a table gives (the matrix's defaults, or a runtime's or model's overrides)."""
    out = {}
    for k, (kind, what) in CONTAINER_KEYS.items():
        if k in t.data:
            out[k] = t.get(k, kind, minimum=0.001 if kind != str else None, what=what)
            if kind is str and not SIZE_RE.match(out[k]):
                raise MatrixError(t.src, t.key(k), f"{out[k]!r} is not a size", "write it like \"512m\" or \"8g\"")
    return out
