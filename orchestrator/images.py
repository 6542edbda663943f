"""Runtime discovery from images/*/Dockerfile LABELs, and image builds through the Docker SDK.

A runtime is a folder under images/ whose Dockerfile carries the io.slm-matrix.* labels; nothing here names one, so
a new runtime is one new folder (plus its matrix.toml entry). Labels say only what cannot be derived: the engines and
the device. The runtime's name is its folder, a GPU is needed when the device is cuda, and the precisions are the
engines' own (runners/engines). Every runtime image is built FROM the shared base (images/_base), built first.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator import REPO_ROOT

IMAGE_PREFIX_ENV = "IMAGE_PREFIX"
LABEL_PREFIX = "io.slm-matrix."
REQUIRED_LABELS = ("engines", "device")
BASE_DIR = "_base"  # images/_base: the shared base stage, not a runtime (folders starting with "_" are not runtimes)
# Optional labels: container settings this runtime needs (e.g. vLLM's shared memory); the matrix may override them.
CONTAINER_LABELS = {"shm-size": "shm_size", "mem-limit": "mem_limit"}


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Runtime:
    name: str
    engines: tuple[str, ...]  # the first is the default engine
    device: str  # "cpu" | "cuda"
    dockerfile: Path
    container: tuple[tuple[str, str], ...] = ()  # (container key, value) from the optional labels

    @property
    def gpu(self) -> bool:
        """Needs a GPU DeviceRequest."""
        return self.device == "cuda"

    def engine_precisions(self, engine: str) -> tuple[str, ...]:
        from runners.engines import engine_class

        return tuple(engine_class(engine).precisions.get(self.device, ()))

    @property
    def precisions(self) -> tuple[str, ...]:
        """What its engines offer on its device, in the engines' order."""
        return tuple(dict.fromkeys(p for e in self.engines for p in self.engine_precisions(e)))

    @property
    def image(self) -> str:
        return image_name(self.name)


def image_name(folder: str) -> str:
    return f"{os.environ.get(IMAGE_PREFIX_ENV, 'slm-matrix')}/{folder.strip('_')}:latest"


def base_image() -> str:
    """The shared base's tag: <prefix>/runner-base:latest."""
    return image_name("runner-base")


def _labels(dockerfile: Path) -> dict[str, str]:
    """LABEL key=value pairs of a Dockerfile, continuation lines joined, quotes handled by shlex."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    labels: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"\s*LABEL\s+(.*)$", line, re.IGNORECASE)
        if not m:
            continue
        for word in shlex.split(m.group(1), comments=True):
            if "=" in word:
                key, _, value = word.partition("=")
                labels[key] = value
    return labels


def parse_runtime(dockerfile: Path) -> Runtime:
    labels = {k[len(LABEL_PREFIX):]: v for k, v in _labels(dockerfile).items() if k.startswith(LABEL_PREFIX)}
    missing = [k for k in REQUIRED_LABELS if not labels.get(k)]
    if missing:
        raise ImageError(f"{dockerfile}: missing LABEL {', '.join(LABEL_PREFIX + k for k in missing)} — every "
                         f"runtime Dockerfile declares {', '.join(LABEL_PREFIX + k for k in REQUIRED_LABELS)}")
    derived = sorted(k for k in ("runtime", "gpu", "precisions") if k in labels)
    if derived:
        raise ImageError(f"{dockerfile}: LABEL {', '.join(LABEL_PREFIX + k for k in derived)} — remove: the runtime is "
                         "the folder's name, a GPU is needed when the device is cuda, the precisions are the engines'")
    if labels["device"] not in ("cpu", "cuda"):
        raise ImageError(f"{dockerfile}: LABEL {LABEL_PREFIX}device={labels['device']!r} — use cpu or cuda")
    from runners.engines import ENGINE_NAMES

    unknown = [e for e in labels["engines"].split() if e not in ENGINE_NAMES]
    if unknown:
        raise ImageError(f"{dockerfile}: LABEL {LABEL_PREFIX}engines names {', '.join(unknown)} — use engines of "
                         f"runners/engines: {', '.join(ENGINE_NAMES)}")
    return Runtime(name=dockerfile.parent.name, engines=tuple(labels["engines"].split()), device=labels["device"],
                   dockerfile=dockerfile,
                   container=tuple((key, labels[label]) for label, key in CONTAINER_LABELS.items() if label in labels))


def discover(images_dir: Path | None = None) -> dict[str, Runtime]:
    """Every runtime under images/: folders with a Dockerfile (others, e.g. wheelhouse/, are build inputs; _base is
    the shared base)."""
    root = images_dir or REPO_ROOT / "images"
    return {df.parent.name: parse_runtime(df) for df in sorted(root.glob("*/Dockerfile"))
            if not df.parent.name.startswith("_")}


# --- Docker -------------------------------------------------------------------------------------------------------


def image_info(client, runtime: Runtime) -> dict[str, Any] | None:
    """{image, id, size_mb, created} of the local image, or None when it is not built. Never pulls: a missing
    local image would otherwise surface as an APIError 500 from a failed pull."""
    import docker.errors

    try:
        img = client.images.get(runtime.image)
    except docker.errors.ImageNotFound:
        return None
    return {"image": runtime.image, "id": img.id, "size_mb": round(img.attrs["Size"] / 1e6, 1),
            "created": img.attrs.get("Created")}


def build_args() -> dict[str, str]:
    """Same rule as images/build.sh: BASE_IMAGE when non-empty; PIP_EXTRA_INDEX_URL when set (empty = none); the
    runtime images' RUNNER_BASE is the shared base built here."""
    args = {"RUNNER_BASE": base_image()}
    if os.environ.get("BASE_IMAGE"):
        args["BASE_IMAGE"] = os.environ["BASE_IMAGE"]
    if "PIP_EXTRA_INDEX_URL" in os.environ:
        args["PIP_EXTRA_INDEX_URL"] = os.environ["PIP_EXTRA_INDEX_URL"]
    return args


def build_dockerfile(client, dockerfile: Path, tag: str, log: Callable[[str], None], nocache: bool = False) -> None:
    """Build one Dockerfile of images/ (context: the repository root) with the build arguments; ImageError on failure."""
    stream = client.api.build(path=str(REPO_ROOT), dockerfile=str(dockerfile.relative_to(REPO_ROOT)), tag=tag,
                              buildargs=build_args(), rm=True, forcerm=True, nocache=nocache, decode=True)
    last_error = None
    for chunk in stream:
        if "stream" in chunk and chunk["stream"].strip():
            log(chunk["stream"].rstrip())
        if "error" in chunk:
            last_error = chunk["error"].strip()
            log(last_error)
    if last_error:
        raise ImageError(f"building {tag} from {dockerfile} failed: {last_error}")


def build(client, runtime: Runtime, *, log: Callable[[str], None] = print, nocache: bool = False) -> dict[str, Any]:
    """Build one runtime image, the shared base first (the builder's layer cache makes an unchanged rebuild of
    either take about a second)."""
    import docker.errors

    t0 = time.monotonic()
    build_dockerfile(client, REPO_ROOT / "images" / BASE_DIR / "Dockerfile", base_image(), log, nocache)
    build_dockerfile(client, runtime.dockerfile, runtime.image, log, nocache)
    try:
        info = image_info(client, runtime)
    except docker.errors.APIError as e:
        raise ImageError(f"{runtime.image} built but cannot be inspected: {e}") from e
    if info is None:
        raise ImageError(f"{runtime.image}: the build reported no error but the image is missing")
    info["build_s"] = round(time.monotonic() - t0, 1)
    return info
