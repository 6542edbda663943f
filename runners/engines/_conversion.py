"""The engine cache of converted models (ONNX, OpenVINO IR, …), shared by the engines that convert.

Layout: ``<cache_dir>/<engine>/<model-key>/<precision>[/<variant>]/`` holding the runtime's files and
``conversion.json`` (the facts of the conversion: exporter and versions, seconds, bytes, options). A conversion is
built in a hidden temp folder next to its destination and renamed into place, so a half export never looks complete.

``prepare`` (the orchestrator's prepare container, cache read-write) converts; a measured run (cache read-only) only
finds a conversion: a missing one is a JobError telling to run prepare, never a conversion inside a measured run.
Engine modules import this lazily or at top level: it imports no runtime library.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from runners.errors import JobError

INFO_NAME = "conversion.json"


class ConversionError(RuntimeError):
    """The exporter refused the model (an architecture it cannot export, a precision it cannot make); the message
    carries the exporter's own reason, so the failed cell says why."""


def model_key(name: str, model_dir: Path, memo_dir: Path | None = None) -> str:
    """``<name>-<12 hex>``: the hash covers every file of the resolved model folder (names, sizes, contents), so two
    models with one name (another seed, another revision) never share a conversion. (Same key as the llama.cpp
    engine's, so one model has one key in every engine's cache.)

    The digest is memoised in ``memo_dir`` against the files' (name, size, mtime): hashing a multi-GB model at every
    trial would cost seconds; a read-only cache just reads the memo that prepare wrote."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != "fixture.json")
    stats = [[p.relative_to(model_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo = None
    if memo_dir is not None:
        memo = Path(memo_dir) / (hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:24] + ".json")
        try:
            saved = json.loads(memo.read_text())
            if saved.get("files") == stats:
                return saved["key"]
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256()
    for path, (rel, size, _) in zip(files, stats):
        h.update(f"{rel}\0{size}\0".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name or model_dir.name).strip("._") or "model"
    key = f"{safe[:80]}-{h.hexdigest()[:12]}"
    if memo is not None:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"key": key, "path": str(model_dir), "files": stats}))
            os.replace(tmp, memo)
        except OSError:
            pass  # read-only cache: hashing again next time is only slower
    return key


def exporter_reason(error: BaseException) -> str:
    """One line naming the exporter's own reason: the innermost exception of the chain, with its type."""
    inner = error
    while inner.__cause__ is not None or (inner.__context__ is not None and not inner.__suppress_context__):
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    text = " ".join(str(inner).split()) or type(inner).__name__
    where = traceback.extract_tb(inner.__traceback__)[-1] if inner.__traceback__ else None
    origin = f" (in {Path(where.filename).parent.name}/{Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(inner).__name__}: {text[:600]}{origin}"


def ensure(cache_dir: str | Path | None, engine: str, model_name: str, model_dir: Path, variant: str,
           convert: Callable[[Path], dict[str, Any]], *, is_complete: Callable[[Path], bool] | None = None
           ) -> dict[str, Any]:
    """The conversion of ``model_dir`` for ``engine`` under ``variant`` (e.g. "fp32" or "int8/stateful"): found in
    the cache ({"cached": True, …}) or made now by ``convert(tmp_dir) -> facts`` ({"cached": False, …}).

    Raises JobError when the cache is missing or read-only and holds no conversion (run prepare first), and
    ConversionError with the exporter's reason when the conversion fails."""
    if not cache_dir:
        raise JobError("cache_dir", f"the {engine} engine converts the model and needs a cache for it",
                       "set cache_dir (the orchestrator mounts its engine cache there)")
    t0 = time.perf_counter()
    engine_root = Path(cache_dir) / engine
    key = model_key(model_name, model_dir, engine_root / ".keys")
    dest = engine_root / key / variant
    info_path = dest / INFO_NAME
    base = {"model_key": key, "artifact": str(dest), "variant": variant}
    if info_path.is_file() and (is_complete is None or is_complete(dest)):
        return {**json.loads(info_path.read_text()), **base, "cached": True,
                "lookup_s": round(time.perf_counter() - t0, 3)}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    except OSError as e:
        raise JobError("cache_dir", f"no {engine} {variant} conversion of {model_name} at {dest}, and the cache "
                                    f"cannot be written ({e.strerror or e}) — a measured run never converts",
                       "run the prepare step first (orchestrate.py prepare, or python -m runners prepare JOB) "
                       "with the cache mounted read-write") from e
    try:
        t1 = time.perf_counter()
        try:
            facts = convert(tmp)
        except (JobError, ConversionError):
            raise  # already one line naming the field, or the converter's own reason
        except Exception as e:  # noqa: BLE001 — the exporter's refusal is the cell's result
            raise ConversionError(f"{engine} conversion of {model_name} ({architecture(model_dir)}) to {variant} "
                                  f"failed: {exporter_reason(e)}") from e
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        facts = {**facts, "engine": engine, "variant": variant, "model": model_name,
                 "architecture": architecture(model_dir), "seconds": round(time.perf_counter() - t1, 3),
                 "bytes": sum(files.values()), "files": files, "created_unix": time.time()}
        (tmp / INFO_NAME).write_text(json.dumps(facts, indent=1) + "\n")
        _world_readable(tmp)  # measured runs read it as the images' uid, whoever wrote it
        try:
            os.rename(tmp, dest)  # atomic: a conversion is whole or absent
        except OSError:
            if not info_path.is_file():  # not a concurrent prepare that won the race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**json.loads(info_path.read_text()), **base, "cached": False,
            "lookup_s": round(time.perf_counter() - t0, 3)}


def versions(*dists: str) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def architecture(model_dir: Path) -> str | None:
    """The model's class as its config.json names it (e.g. LlamaForCausalLM): what a conversion error reports."""
    try:
        return (json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or [None])[0]
    except (OSError, ValueError):
        return None


def _world_readable(root: Path) -> None:
    for d, _, files in os.walk(root):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
