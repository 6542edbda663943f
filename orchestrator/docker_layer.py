"""The one Docker layer: the engine's client, image lookup, the limits every container runs under, and one container
from creation to removal. The trial launcher (orchestrator/docker_launcher.py) and the evaluation sandbox
(orchestrator/docker_sandbox.py) both go through it; images are built by orchestrator/images.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from orchestrator.launch import HostProblem

# The lock-down of every container this project starts (the sandbox that runs generated code, the measured containers
# that run model code from a hub): no network, nothing writable but what is mounted so, a non-root user without
# capabilities that cannot gain privileges.
LOCKED_DOWN: dict[str, Any] = {
    "network_mode": "none",
    "read_only": True,
    "user": "1000:1000",
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}

# Measured containers, on top of that: one tmpfs at /tmp, and HOME on it, is all a runtime may write besides /out (and
# /cache in prepare): torch inductor's kernels (/tmp/torchinductor_runner), onnxruntime's device id
# (~/.cache/Microsoft), and the home caches of HF, vLLM, numba, OpenVINO, Triton and CUDA's JIT (~/.cache, ~/.triton,
# ~/.nv) — none outlives the trial. "exec": inductor and Triton load the kernels they compile there. 2 GB: compile
# caches of the study's largest models take hundreds of MB; a tmpfs is charged to the container's memory only as it
# is written, and the bound turns a runaway writer into "No space left on device" rather than host memory.
# 4096 processes + threads: thread pools as wide as a many-core host (each thread counts), well below a fork bomb.
MEASURED_TMPFS = {"/tmp": "size=2g,mode=1777,exec"}
MEASURED_ENV = {"HOME": "/tmp"}
MEASURED_PIDS_LIMIT = 4096


def measured_lock_down() -> dict[str, Any]:
    """LOCKED_DOWN as container options of a measured (trial or prepare) container: mounts and limits are the
    launcher's."""
    return {**LOCKED_DOWN, "tmpfs": dict(MEASURED_TMPFS), "environment": dict(MEASURED_ENV),
            "pids_limit": MEASURED_PIDS_LIMIT}


def connect() -> docker.DockerClient:
    return docker.from_env(timeout=120)


def connected() -> docker.DockerClient:
    """A client of a Docker engine that answers, or HostProblem with the fix."""
    try:
        client = connect()
        client.ping()
    except Exception as e:
        raise HostProblem(f"cannot reach the Docker engine ({type(e).__name__}: {e}) — start dockerd (or set "
                          "DOCKER_HOST), or run with --launcher process") from e
    return client


def gpu_problem(client: docker.DockerClient) -> str | None:
    """Why CUDA containers cannot run here, or None. Checked before creating one: a GPU DeviceRequest without the
    NVIDIA runtime fails only at start (APIError 500) and leaves a Created container behind."""
    runtimes = sorted(client.info().get("Runtimes") or ())  # the names of its runtimes
    if "nvidia" not in runtimes:
        return (f"Docker has no NVIDIA runtime (runtimes: {', '.join(runtimes)}) — install nvidia-container-toolkit "
                "and restart dockerd on a host with an NVIDIA GPU")
    from runners.meters import nvml

    gpus, reason = nvml.discover()
    if not gpus:
        return f"no NVIDIA GPU visible on this host ({reason})"
    return None


def local_image(client: docker.DockerClient, tag: str):
    """The image of this tag on this host, or None: never a pull (a missing image is a build to run, not a download)."""
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def limits(mem_limit: str | None, cpus: float | None) -> dict[str, Any]:
    """Memory with no swap beyond it (over the limit means OOM-killed) and CPUs, as container options."""
    out: dict[str, Any] = {}
    if mem_limit:
        out["mem_limit"] = mem_limit
        out["memswap_limit"] = mem_limit
    if cpus:
        out["nano_cpus"] = int(cpus * 1e9)
    return out


def remove(container) -> None:
    """Remove a container, running or not; one that is gone, or already being removed by someone else (409: e.g. a
    second orchestrator cleaning up the same run's stale containers), is what was wanted."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        if e.status_code != 409 or "in progress" not in str(e):
            raise


class Container:
    """One container, created stopped and removed on leaving the ``with`` block whatever happens (also on Ctrl-C).
    Creating it raises docker.errors.APIError when the engine refuses."""

    def __init__(self, client: docker.DockerClient, image: str, command: list[str], **options: Any):
        self.container = client.containers.create(image, command, detach=True, **options)
        self.remove_s: float | None = None
        self._log_thread: threading.Thread | None = None

    @property
    def id(self) -> str:
        return self.container.id

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        t0 = time.monotonic()
        remove(self.container)
        self.remove_s = time.monotonic() - t0

    def start(self) -> None:
        self.container.start()

    def stream_log(self, path: Path) -> None:
        """Its stdout and stderr, written to path as they come (a thread, until it exits: ``log_written``)."""
        self._log_thread = threading.Thread(target=_stream_log, args=(self.container, path), daemon=True)
        self._log_thread.start()

    def wait(self, timeout_s: float) -> tuple[int, bool]:
        """(exit status, timed out): killed when it runs past timeout_s."""
        t0 = time.monotonic()
        try:
            code, timed_out = self.container.wait(timeout=timeout_s)["StatusCode"], False
        except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout):
            # the SDK's way of saying the timeout passed — or that the engine went away
            if time.monotonic() - t0 < timeout_s - 1:
                raise
            try:
                self.container.kill()
            except docker.errors.APIError:
                pass  # it exited between the timeout and the kill
            code, timed_out = self.container.wait(timeout=60)["StatusCode"], True
        return code, timed_out

    def log_written(self) -> None:
        """The streamed log is complete (after it exited)."""
        if self._log_thread is not None:
            self._log_thread.join(timeout=10)

    def oom_killed(self) -> bool:
        """Whether the kernel killed it at its memory limit (read after it exited)."""
        self.container.reload()
        return bool(self.container.attrs["State"].get("OOMKilled"))

    def stdout(self) -> str:
        return self.container.logs(stdout=True, stderr=False).decode(errors="replace")

    def get_archive(self, path: str):
        return self.container.get_archive(path)


def _stream_log(container, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                f.write(chunk)
                f.flush()
        except Exception as e:  # the container went away mid-stream (Ctrl-C): keep what we have
            f.write(f"\n[orchestrator] log stream ended: {e}\n".encode())
