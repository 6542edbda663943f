"""TOML text from the matrix's own structure (tomllib reads TOML, it does not write it): scalars, lists and inline
tables inside `[section]` and `[section.entry]` tables — what matrix files hold."""

from __future__ import annotations

import json
import re
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
    return repr(v) if isinstance(v, float) else str(v)


def table(name: str, values: dict) -> str:
    return f"[{name}]\n" + "".join(f"{key(k)} = {value(v)}\n" for k, v in values.items()) + "\n"


def dumps(data: dict[str, Any]) -> str:
    """A matrix document: each top-level table as [name], or as [name.entry] tables when all its values are tables
    (settings, runtimes, models)."""
    out = []
    for name, section in data.items():
        if not isinstance(section, dict):
            raise ValueError(f"top-level {name!r} is not a table")
        if section and all(isinstance(v, dict) for v in section.values()) and name in ("settings", "runtimes", "models"):
            out += [table(f"{key(name)}.{key(entry)}", values) for entry, values in section.items()]
        else:
            out.append(table(key(name), section))
    return "".join(out)
