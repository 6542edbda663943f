"""The host model cache: hub downloads, fixture builds, local folders — all before and outside any measured window.

    <cache>/hf/        a Hugging Face hub cache (snapshot_download cache_dir); mounted read-only as the job's hf_cache
    <cache>/models/    fixture models built by orchestrator.fixtures, one folder per fixture and options
    <cache>/engines/   engine conversions (ONNX, OpenVINO IR, GGUF …): the job's cache_dir, written only by `prepare`
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.matrix import ModelEntry

DEFAULT_CACHE = Path(os.environ.get("SLM_MATRIX_CACHE", Path.home() / ".cache" / "slm-matrix"))


class ModelUnavailable(RuntimeError):
    pass


# The user the runtime images run as (images/_base/Dockerfile): what must be able to read a model folder
CONTAINER_USER = (1000, 1000)


def unreadable(root: Path, user: tuple[int, int] = CONTAINER_USER) -> list[str]:
    """Files and folders under ``root`` that ``user`` (uid, gid) cannot read (folders: read and enter), e.g. the
    0600 model.safetensors that save_pretrained writes as root. Supplementary groups are not considered."""
    uid, gid = user

    def can(st: os.stat_result, bits: int) -> bool:  # bits: r=4, x=1 (as an "other" triple)
        if st.st_uid == uid:
            return st.st_mode & (bits << 6) == bits << 6
        if st.st_gid == gid:
            return st.st_mode & (bits << 3) == bits << 3
        return st.st_mode & bits == bits

    bad = []
    for d, dirs, files in os.walk(root):
        if not can(os.stat(d), 5):
            bad.append(d + "/")
        bad += [os.path.join(d, f) for f in sorted(files) if not can(os.stat(os.path.join(d, f)), 4)]
    return bad


def readability_problem(name: str, root: Path, user: tuple[int, int] = CONTAINER_USER) -> str | None:
    """One line naming what the containers' user cannot read and the fix, or None."""
    bad = unreadable(root, user)
    if not bad:
        return None
    first = Path(bad[0])
    st = first.stat()
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return (f"models.{name}.path: {first}{more} cannot be read by the containers' user (uid {user[0]}): mode "
            f"{st.st_mode & 0o777:04o}, owner uid {st.st_uid} — make the folder readable: chmod -R a+rX {root}")


@dataclass
class ModelCache:
    root: Path
    # who reads the models: the images' user for containers; None when the runner runs as this user (process)
    reader: tuple[int, int] | None = CONTAINER_USER

    @property
    def hf(self) -> Path:
        return self.root / "hf"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def engines(self) -> Path:
        return self.root / "engines"

    def make(self) -> None:
        for d in (self.hf, self.models, self.engines):
            d.mkdir(parents=True, exist_ok=True)
        # images run as uid 1000; the prepare container writes conversions here
        os.chmod(self.engines, 0o777)

    def local_path(self, m: ModelEntry) -> Path | None:
        """The model folder a job points at (None for hub models: those are found in the hf cache)."""
        if m.source == "path":
            return m.path
        if m.source == "fixture":
            from orchestrator import fixtures

            if m.fixture == "smollm2":
                return self.models / fixtures.SMOLLM2_DIRNAME
            return self.models / fixtures.fixture_name(m.fixture, **m.fixture_options)
        return None

    def job_model(self, m: ModelEntry) -> dict[str, Any]:
        """The job's model section, with host paths (a launcher maps them to what it mounts)."""
        if m.source == "hub":
            return {"name": m.name, "hub_id": m.hub_id, "revision": m.revision, "hf_cache": str(self.hf)}
        return {"name": m.name, "path": str(self.local_path(m))}

    # --- fetching -------------------------------------------------------------------------------------------------
    def fetch(self, m: ModelEntry) -> dict[str, Any]:
        """Make the model available locally; returns facts for prepare/<model>.json (duration, cached, path)."""
        t0 = time.monotonic()
        start = time.time()
        if m.source == "path":
            if not (m.path / "config.json").is_file():
                raise ModelUnavailable(f"models.{m.name}.path: {m.path} has no config.json — point it at a folder "
                                       "written by save_pretrained")
            problem = readability_problem(m.name, m.path, self.reader) if self.reader else None
            if problem:  # every trial would fail in its container with a bare FileNotFoundError/PermissionError
                raise ModelUnavailable(problem)
            info = {"cached": True, "path": str(m.path)}
        elif m.source == "fixture":
            info = self._build_fixture(m)
        else:
            info = self._download(m)
        return {"model": m.name, "source": m.source, "hub_id": m.hub_id, "fixture": m.fixture, **info,
                "start_unix": start, "duration_s": time.monotonic() - t0}

    def _build_fixture(self, m: ModelEntry) -> dict[str, Any]:
        from orchestrator import fixtures  # builds atomically and reuses a complete folder itself

        out = self.local_path(m)
        cached = (out / fixtures.MARKER).is_file()
        if m.fixture == "smollm2":
            path = fixtures.build_smollm2(out)
        else:
            path = fixtures.build_tiny(m.fixture, out, **m.fixture_options)
        _readable(Path(path))
        return {"cached": cached, "path": str(path)}

    def _download(self, m: ModelEntry) -> dict[str, Any]:
        from huggingface_hub import snapshot_download

        try:  # already here: no network needed (and none used)
            path = snapshot_download(m.hub_id, revision=m.revision, cache_dir=self.hf, local_files_only=True)
            return {"cached": True, "path": path}
        except Exception:
            pass
        if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
            raise ModelUnavailable(f"models.{m.name}: {m.hub_id} is not in {self.hf} and HF_HUB_OFFLINE is set — "
                                   "prepare on a host with internet and copy the cache, or unset HF_HUB_OFFLINE")
        try:
            from huggingface_hub import HfApi

            files = HfApi().list_repo_files(m.hub_id, revision=m.revision)
            # weights once: safetensors when the repo has them, else the PyTorch .bin files; no TF/Flax/ONNX copies
            weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
            path = snapshot_download(m.hub_id, revision=m.revision, cache_dir=self.hf,
                                     allow_patterns=["*.json", "*.model", "*.txt", "*.py", "*.tiktoken", *weights])
        except Exception as e:
            first = (str(e).splitlines() or [""])[0]
            raise ModelUnavailable(f"models.{m.name}: downloading {m.hub_id} into {self.hf} failed "
                                   f"({type(e).__name__}: {first[:120]}{'…' if len(first) > 120 else ''}) — check "
                                   "the network / HF_TOKEN, or give the model as path = a local folder") from e
        return {"cached": False, "path": path}


def _readable(root: Path) -> None:
    """Containers run as uid 1000 and mount the folder read-only: it must be world-readable (builds stage in a
    mkdtemp folder, which is 0700)."""
    for d, _, files in os.walk(root):
        os.chmod(d, os.stat(d).st_mode | 0o555)
        for f in files:
            p = os.path.join(d, f)
            os.chmod(p, os.stat(p).st_mode | 0o444)
