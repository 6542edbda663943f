"""The fixture cache (orchestrator/fixtures.py): where fixtures lie, and folders that are complete or absent.

Every fixture folder carries a ``fixture.json`` marker, written last, with the spec it was built for and the size of
each file; a build happens in a hidden sibling folder that is renamed into place, so an interrupted build never
leaves a folder that looks complete, and a folder whose marker does not match is built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

# Bump when a recipe changes: cached fixtures built by another recipe are then rebuilt, not reused.
RECIPE = 2
MARKER = "fixture.json"


def default_root() -> Path:
    """The fixture cache: $SLM_FIXTURES_DIR, else ~/.cache/slm-matrix/fixtures."""
    env = os.environ.get("SLM_FIXTURES_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slm-matrix" / "fixtures"


def tokenizer_dir(cache_dir: Path | None, name: str) -> Path:
    """Where a tokenizer kind is cached (next to the fixtures that use it)."""
    return (Path(cache_dir) if cache_dir else default_root()) / "_tokenizers" / name


def fixture_info(path: Path) -> dict[str, Any]:
    """The marker of a built fixture (spec, sizes, hashes, versions); raises if the directory is not complete."""
    marker = _read_marker(Path(path))
    if marker is None or not _files_intact(Path(path), marker):
        raise FileNotFoundError(f"{path} is not a complete fixture")
    return marker


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _files_intact(path: Path, marker: dict[str, Any]) -> bool:
    files = marker.get("files") or {}
    return bool(files) and all((path / rel).is_file() and (path / rel).stat().st_size == size
                               for rel, size in files.items())


def is_complete(path: Path, spec: dict[str, Any]) -> bool:
    marker = _read_marker(path)
    return marker is not None and marker.get("spec") == spec and _files_intact(path, marker)


def write_marker(tmp: Path, spec: dict[str, Any], info: dict[str, Any]) -> None:
    files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    marker = {"spec": spec, **info, "files": files}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _partial_prefix(out_dir: Path) -> str:
    # host and pid in the name let a later build sweep only this host's dead leftovers (a cache volume may be shared)
    return f".{out_dir.name}.{socket.gethostname()}."


def _sweep_partials(out_dir: Path) -> None:
    prefix = _partial_prefix(out_dir)
    for p in out_dir.parent.glob(f"{prefix}*.partial"):
        pid = p.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    for p in out_dir.parent.glob(f".{out_dir.name}.*.old"):  # a replaced fixture whose removal was cut short
        shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_replaceable(out_dir: Path) -> None:
    # Only ever replace our own fixtures (they have a marker) or an empty directory, never a user's folder.
    if out_dir.is_dir() and not (out_dir / MARKER).exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists, is not empty and is not a fixture; refusing to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")


@contextlib.contextmanager
def staging(out_dir: Path, spec: dict[str, Any]) -> Iterator[Path]:
    """Yield an empty hidden sibling of out_dir; on success rename it into place, on failure remove it."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(out_dir)
    _sweep_partials(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out_dir)}{os.getpid()}.", suffix=".partial",
                                dir=out_dir.parent))
    try:
        yield tmp
        _make_readable(tmp)
        _publish(tmp, out_dir, spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(tmp: Path) -> None:
    # mkdtemp makes 0700 and safetensors writes 0600; containers running as another user must read the cache
    for p in [tmp, *tmp.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _publish(tmp: Path, out_dir: Path, spec: dict[str, Any]) -> None:
    try:
        os.rename(tmp, out_dir)  # atomic; also replaces an empty directory
        return
    except OSError:
        if not out_dir.is_dir():
            raise
    if is_complete(out_dir, spec):  # a concurrent build of the same fixture got there first: keep it
        return
    check_replaceable(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "tokenizers", "gguf"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # version is information only
            pass
    return out


def pin_tokenizer_class(model_dir: Path) -> None:
    # transformers 5.x maps some tokenizer classes to other loaders; the generic fast class reads tokenizer.json as is
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")

