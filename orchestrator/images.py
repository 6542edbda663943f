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
from orchestrator.build_causes import BUILD_CAUSES, EXTRA_CA_ENV, build_failure_cause  # noqa: F401  (re-exported)

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
            "created": img.attrs.get("Created"), "sources": (img.labels or {}).get(SOURCES_LABEL)}


# An image records the sources it was built from (recipe_paths): one built from an older checkout runs an older
# runner than the one in this checkout, and is said so (rebuild with --build).
SOURCES_LABEL = LABEL_PREFIX + "sources"
BASE_LABEL = LABEL_PREFIX + "base-image"  # the base it was built FROM: tag@id (a stock base's digest when pulled)


# Build inputs of the host, not of the checkout's recipe (images/README.md: Build inputs)
HOST_INPUT_DIRS = ("wheelhouse", "extra-ca")


def recipe_paths(runtime: Runtime) -> list[Path]:
    """The checkout's files a runtime's image is built from: runners/, the shared base, its own folder, and every
    other file its Dockerfile COPYs from images/ (the openvino image installs torch-cpu's requirements and lock) —
    not host inputs (CA certificates, wheels)."""
    copied = set()
    for line in runtime.dockerfile.read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0].upper() == "COPY" and not parts[1].startswith("--"):
            copied.update(REPO_ROOT / src for src in parts[1:-1] if src.startswith("images/")
                          and src.split("/")[1] not in HOST_INPUT_DIRS)
    roots = {REPO_ROOT / "runners", REPO_ROOT / "images" / BASE_DIR, runtime.dockerfile.parent, *copied}
    return sorted({p for root in roots for p in ([root] if root.is_file() else root.rglob("*"))
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"})


def sources_hash(runtime: Runtime) -> str:
    """sha256 (16 hex) of the checkout's files the runtime's image is built from (recipe_paths)."""
    import hashlib

    h = hashlib.sha256()
    for p in recipe_paths(runtime):
        h.update(str(p.relative_to(REPO_ROOT)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def stale_problem(client, runtime: Runtime) -> str | None:
    """Why the built image of the runtime is not this checkout's (None: it is, or it is not built, or it predates
    the label)."""
    info = image_info(client, runtime)
    if info is None or not info["sources"] or info["sources"] == sources_hash(runtime):
        return None
    return (f"image {runtime.image} is stale: built from other sources of runners/ or images/ "
            f"({info['sources']}, this checkout {sources_hash(runtime)}) — its trials run that older runner; rebuild "
            f"with `python orchestrate.py build --runtime {runtime.name}` or add --build")


# --- build inputs: the base image, extra CA certificates, local wheels, the extra index -------------------------

STOCK_BASE = "python:3.11-slim-bookworm"  # the Dockerfiles' default BASE_IMAGE
LOCAL_BASE = "slm-matrix/base:bookworm"  # scripts/make_local_base.sh: Debian bookworm minbase + Python 3.11
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # the CPU images' default extra index
WHEEL_DIRS_ENV = "SLM_WHEEL_DIRS"  # folders (os.pathsep) of local wheels for the pinned versions
PULL_TIMEOUT_S = 90.0


def _pull(client, image: str, timeout_s: float) -> str | None:
    """Pull with a time limit (a registry behind a black-holing firewall would hang the daemon's pull for minutes);
    None when pulled, else why not."""
    import threading

    result: list[str | None] = []

    def pull():
        try:
            client.images.pull(image)
            result.append(None)
        except Exception as e:  # the engine's refusal, a DNS failure, a read timeout: all mean "not here"
            result.append(str(e).splitlines()[0][:160] or type(e).__name__)

    t = threading.Thread(target=pull, daemon=True)
    t.start()
    t.join(timeout_s)
    return result[0] if result else f"no answer within {timeout_s:.0f} s"


def base_digest(client, base: str) -> str:
    """``tag@sha256:…`` of the base image: its registry digest when pulled, else its local id (a base made here)."""
    img = client.images.get(base)
    return (img.attrs.get("RepoDigests") or [f"{base}@{img.id}"])[0]


def ensure_base(client, log: Callable[[str], None]) -> str:
    """The base image the builds use, made available: BASE_IMAGE when given; else the stock Python image when it is
    here or can be pulled; else — said, not silent — the local Debian base built by scripts/make_local_base.sh (root
    and debootstrap needed), which is then exported as BASE_IMAGE for this process's builds."""
    import docker.errors

    given = os.environ.get("BASE_IMAGE")
    if given:
        return given
    for name in (STOCK_BASE, LOCAL_BASE):
        try:
            client.images.get(name)
            os.environ["BASE_IMAGE"] = name
            return name
        except docker.errors.ImageNotFound:
            pass
    log(f"pulling the base image {STOCK_BASE}")
    why = _pull(client, STOCK_BASE, PULL_TIMEOUT_S)
    if why is None:
        os.environ["BASE_IMAGE"] = STOCK_BASE
        return STOCK_BASE
    log(f"cannot pull {STOCK_BASE} ({why}): building the local Debian base {LOCAL_BASE} with "
        "scripts/make_local_base.sh (a few minutes, once)")
    import subprocess

    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "make_local_base.sh"), LOCAL_BASE],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"no base image: {STOCK_BASE} cannot be pulled and scripts/make_local_base.sh failed "
                         f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}) — "
                         "set BASE_IMAGE to a Python 3.11 image this host has, or run the script as root with "
                         "debootstrap installed")
    os.environ["BASE_IMAGE"] = LOCAL_BASE
    return LOCAL_BASE


def _pins() -> dict[str, set[str]]:
    """name -> every version an image's constraints.txt pins with `name==version` (names normalised as wheel file
    names are)."""
    pins: dict[str, set[str]] = {}
    for f in (REPO_ROOT / "images").glob("*/constraints.txt"):
        for line in f.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#,]+)", line.strip())
            if m:
                pins.setdefault(re.sub(r"[-_.]+", "_", m.group(1)).lower(), set()).add(m.group(2))
    return pins


def stage_build_inputs(log: Callable[[str], None]) -> dict[str, Any]:
    """What the user asked to put into the build context (never picked up silently): the *.crt files of
    $SLM_EXTRA_CA_DIR into images/extra-ca/, the wheels of $SLM_WHEEL_DIRS that match a pinned version into
    images/wheelhouse/; and, when PIP_EXTRA_INDEX_URL is unset and the PyTorch CPU index does not answer, an empty
    one (no extra index: the wheelhouse or the registry must then hold torch) — said, not silent."""
    import shutil

    facts: dict[str, Any] = {"extra_ca": [], "wheels": []}
    ca_dir = os.environ.get(EXTRA_CA_ENV)
    if ca_dir:
        if not Path(ca_dir).is_dir():
            raise ImageError(f"{EXTRA_CA_ENV}={ca_dir} is not a folder — point it at the folder of *.crt files to "
                             "trust (e.g. /usr/local/share/ca-certificates)")
        for crt in sorted(Path(ca_dir).glob("*.crt")):
            shutil.copyfile(crt, REPO_ROOT / "images" / "extra-ca" / crt.name)
            facts["extra_ca"].append(crt.name)
        log(f"extra CA certificates from {ca_dir}: {', '.join(facts['extra_ca']) or 'none found'}")
    pins = _pins()
    for d in filter(None, os.environ.get(WHEEL_DIRS_ENV, "").split(os.pathsep)):
        for whl in sorted(Path(d).glob("*.whl")):
            name, version = whl.name.split("-")[:2]
            if version in pins.get(re.sub(r"[-_.]+", "_", name).lower(), ()):
                dst = REPO_ROOT / "images" / "wheelhouse" / whl.name
                if not dst.exists() or dst.stat().st_size != whl.stat().st_size:
                    shutil.copyfile(whl, dst)
                facts["wheels"].append(whl.name)
        log(f"local wheels from {d} matching a pin: {', '.join(facts['wheels']) or 'none'}")
    if "PIP_EXTRA_INDEX_URL" not in os.environ:
        import urllib.request

        try:
            urllib.request.urlopen(f"{TORCH_CPU_INDEX}/torch/", timeout=15)
        except OSError as e:
            os.environ["PIP_EXTRA_INDEX_URL"] = ""
            log(f"the PyTorch CPU index {TORCH_CPU_INDEX} does not answer ({e}): building without an extra index "
                "(torch then comes from the wheelhouse or the registry)")
    return facts


def build_args() -> dict[str, str]:
    """Same rule as images/build.sh: BASE_IMAGE when non-empty; PIP_EXTRA_INDEX_URL when set (empty = none); the
    runtime images' RUNNER_BASE is the shared base built here."""
    args = {"RUNNER_BASE": base_image()}
    if os.environ.get("BASE_IMAGE"):
        args["BASE_IMAGE"] = os.environ["BASE_IMAGE"]
    if "PIP_EXTRA_INDEX_URL" in os.environ:
        args["PIP_EXTRA_INDEX_URL"] = os.environ["PIP_EXTRA_INDEX_URL"]
    return args


def build_dockerfile(client, dockerfile: Path, tag: str, log: Callable[[str], None], nocache: bool = False,
                     labels: dict[str, str] | None = None) -> None:
    """Build one Dockerfile of images/ (context: the repository root) with the build arguments; ImageError on failure,
    naming the cause and its fix where the log shows one (BUILD_CAUSES)."""
    stream = client.api.build(path=str(REPO_ROOT), dockerfile=str(dockerfile.relative_to(REPO_ROOT)), tag=tag,
                              buildargs=build_args(), rm=True, forcerm=True, nocache=nocache, decode=True,
                              labels=labels)
    follow_build(stream, f"building {tag} from {dockerfile}", log)


def follow_build(stream, what: str, log: Callable[[str], None]) -> None:
    """Log a build's decoded output stream; ImageError when it failed, with the cause a user can fix."""
    last_error = None
    telling: list[str] = []  # only the log lines that name a known cause (a build log runs to thousands)
    for chunk in stream:
        line = chunk.get("stream", "").rstrip() or chunk.get("error", "").strip()
        if "stream" in chunk and chunk["stream"].strip():
            log(chunk["stream"].rstrip())
        if "error" in chunk:
            last_error = chunk["error"].strip()
            log(last_error)
        if line and any(pattern.search(line) for pattern, _, _ in BUILD_CAUSES):
            telling.append(line)
    if last_error:
        cause = build_failure_cause(telling)
        raise ImageError(f"{what} failed: {last_error}" + (f"\n  cause: {cause}" if cause else ""))


_PREPARED: dict[str, Any] = {}


def prepare_build(client, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The base image and the build inputs, once per process (every build of a run shares them)."""
    if not _PREPARED:
        _PREPARED["base"] = ensure_base(client, log)
        _PREPARED.update(stage_build_inputs(log))
    return _PREPARED


def build(client, runtime: Runtime, *, log: Callable[[str], None] = print, nocache: bool = False) -> dict[str, Any]:
    """Build one runtime image, the shared base first (the builder's layer cache makes an unchanged rebuild of
    either take about a second)."""
    import docker.errors

    t0 = time.monotonic()
    base = prepare_build(client, log)["base"]
    build_dockerfile(client, REPO_ROOT / "images" / BASE_DIR / "Dockerfile", base_image(), log, nocache)
    build_dockerfile(client, runtime.dockerfile, runtime.image, log, nocache,
                     {SOURCES_LABEL: sources_hash(runtime), BASE_LABEL: base_digest(client, base)})
    try:
        info = image_info(client, runtime)
    except docker.errors.APIError as e:
        raise ImageError(f"{runtime.image} built but cannot be inspected: {e}") from e
    if info is None:
        raise ImageError(f"{runtime.image}: the build reported no error but the image is missing")
    info["build_s"] = round(time.monotonic() - t0, 1)
    return info
