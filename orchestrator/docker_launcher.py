"""One container per runner invocation, through the Docker SDK.

Mounts: the job read-only at /job, out/ read-write at /out, the model folder read-only under /models, the HF cache
read-only at /hf-cache, the engine cache at /cache (read-only in measured runs, read-write only for `prepare`).
No network. CUDA runtimes get a GPU DeviceRequest. The container is always removed, whatever happens.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from orchestrator.images import Runtime, build, image_info
from orchestrator.launch import HostProblem, LaunchSpec, Outcome, read_record, write_job

LABEL_RUN = "io.slm-matrix.run"
LABEL_NAME = "io.slm-matrix.trial"


def connect() -> docker.DockerClient:
    return docker.from_env(timeout=120)


def gpu_problem(client: docker.DockerClient) -> str | None:
    """Why CUDA containers cannot run here, or None. Checked before creating one: a GPU DeviceRequest without the
    NVIDIA runtime fails only at start (APIError 500) and leaves a Created container behind."""
    runtimes = sorted((client.info().get("Runtimes") or {}))
    if "nvidia" not in runtimes:
        return (f"Docker has no NVIDIA runtime (runtimes: {', '.join(runtimes)}) — install nvidia-container-toolkit "
                "and restart dockerd on a host with an NVIDIA GPU")
    from runners.meters import nvml

    gpus, reason = nvml.discover()
    if not gpus:
        return f"no NVIDIA GPU visible on this host ({reason})"
    return None


class DockerLauncher:
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None, run_id: str = ""):
        self.client = client or connect()
        self.run_id = run_id

    @classmethod
    def connected(cls, run_id: str) -> "DockerLauncher":
        """A launcher on a Docker engine that answers, or HostProblem with the fix."""
        try:
            client = connect()
            client.ping()
        except Exception as e:
            raise HostProblem(f"cannot reach the Docker engine ({type(e).__name__}: {e}) — start dockerd (or set "
                              "DOCKER_HOST), or run with --launcher process") from e
        return cls(client, run_id)

    def gpu_problem(self) -> str | None:
        return gpu_problem(self.client)

    def ensure_ready(self, runtimes, build_them: bool, log) -> None:
        for rt in sorted(runtimes, key=lambda r: r.name):
            if build_them:
                log(f"building {rt.image} (cached layers make an unchanged image take seconds)")
                info = build(self.client, rt, log=lambda line: None)
                log(f"  {rt.image} {info['id'][7:19]} {info['size_mb']:.0f} MB ({info['build_s']:.1f} s)")
            elif image_info(self.client, rt) is None:
                raise HostProblem(f"image {rt.image} is not built — run `python orchestrate.py build --runtime "
                                  f"{rt.name}` (or `make images`), or add --build")

    def image_of(self, runtime: Runtime) -> str | None:
        return runtime.image

    def remove_stale(self) -> list[str]:
        """Containers of this run left by an orchestrator that was killed (not Ctrl-C'd) mid-trial."""
        gone = []
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}):
            c.remove(force=True)
            gone.append(c.short_id)
        return gone

    # --- one invocation ---------------------------------------------------------------------------------------------
    def _mounts(self, spec: LaunchSpec) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
        job = json.loads(json.dumps(spec.job))
        volumes: dict[str, dict[str, str]] = {}
        model = job.get("model", {})
        if model.get("path"):
            host = str(Path(model["path"]).resolve())
            model["path"] = f"/models/{Path(host).name}"
            volumes[host] = {"bind": model["path"], "mode": "ro"}
        if model.get("hf_cache"):
            volumes[str(Path(model["hf_cache"]).resolve())] = {"bind": "/hf-cache", "mode": "ro"}
            model["hf_cache"] = "/hf-cache"
        if job.get("cache_dir"):
            volumes[str(Path(job["cache_dir"]).resolve())] = {"bind": "/cache",
                                                              "mode": "rw" if spec.mode == "prepare" else "ro"}
            job["cache_dir"] = "/cache"
        if job.get("reference"):
            ref = Path(job["reference"]).resolve()
            volumes[str(ref.parent)] = {"bind": "/reference", "mode": "ro"}
            job["reference"] = f"/reference/{ref.name}"
        return job, volumes

    def run(self, spec: LaunchSpec, meters) -> Outcome:
        rt: Runtime = spec.runtime
        timings: dict[str, float] = {}
        try:
            image = self.client.images.get(rt.image)  # never let a missing image turn into a pull
        except docker.errors.ImageNotFound:
            return Outcome(None, None, launch_error=f"image {rt.image} is not built — run `orchestrate.py build` "
                                                    f"(or `make images`)", facts={"launcher": self.name})
        job, volumes = self._mounts(spec)
        write_job(spec, job)
        volumes[str((spec.work / "job").resolve())] = {"bind": "/job", "mode": "ro"}
        volumes[str((spec.work / "out").resolve())] = {"bind": "/out", "mode": "rw"}
        kwargs: dict[str, Any] = dict(
            command=[spec.mode, "/job/job.json", "--out", "/out/record.json"], volumes=volumes, detach=True,
            network_disabled=True, labels={LABEL_RUN: self.run_id, LABEL_NAME: spec.name, **spec.labels},
            shm_size=spec.shm_size,
            # the record's environment.hostname names the machine, not a throw-away container id (kept in host.*)
            hostname=socket.gethostname())
        if spec.mem_limit:
            kwargs["mem_limit"] = spec.mem_limit
            kwargs["memswap_limit"] = spec.mem_limit  # no swap either: over the limit means OOM-killed
        if spec.cpus:
            kwargs["nano_cpus"] = int(spec.cpus * 1e9)
        if rt.gpu:  # exactly the trial's GPUs (by UUID), never every GPU of the host
            kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=list(spec.gpus) or ["0"],
                                                                    capabilities=[["gpu"]])]
        facts: dict[str, Any] = {"launcher": self.name, "image": rt.image, "image_id": image.id,
                                 "limits": {"mem_limit": spec.mem_limit, "cpus": spec.cpus, "shm_size": spec.shm_size,
                                            "timeout_s": spec.timeout_s, "network": "none", "gpu": rt.gpu,
                                            "gpus": sorted(spec.gpus.values()) if rt.gpu else []}}
        container = None
        log_thread = None
        exit_code, timed_out, window = None, False, None
        try:
            t0 = time.monotonic()
            try:
                container = self.client.containers.create(image.id, **kwargs)
            except docker.errors.APIError as e:  # refused for this trial only: record it, the matrix goes on
                return Outcome(None, None, launch_error=f"container create refused: {e.explanation or e}",
                               facts=facts, timings=timings)
            facts["container_id"] = container.id
            timings["create_s"] = time.monotonic() - t0
            t1 = time.monotonic()
            with meters.window("container", trace=True) as w:
                timings["meters_open_s"] = time.monotonic() - t1  # the host meters' start (codecarbon's first task)
                t1 = time.monotonic()
                try:
                    container.start()
                except docker.errors.APIError as e:
                    return Outcome(None, None, launch_error=f"container start refused: {e.explanation or e}",
                                   facts=facts, timings=timings)
                timings["start_s"] = time.monotonic() - t1
                facts["started_unix"] = time.time()
                log_thread = threading.Thread(target=_stream_log, args=(container, spec.log_path), daemon=True)
                log_thread.start()
                t2 = time.monotonic()
                try:
                    exit_code = container.wait(timeout=spec.timeout_s)["StatusCode"]
                except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout):
                    # the SDK's way of saying the timeout passed — or that the engine went away
                    if time.monotonic() - t2 < spec.timeout_s - 1:
                        raise
                    timed_out = True
                    try:
                        container.kill()
                    except docker.errors.APIError:
                        pass  # it exited between the timeout and the kill
                    exit_code = container.wait(timeout=60)["StatusCode"]
                timings["run_s"] = time.monotonic() - t2
                facts["exited_unix"] = time.time()
            window = w.result
            t3 = time.monotonic()
            container.reload()
            state = container.attrs["State"]
            oom = bool(state.get("OOMKilled"))
            log_thread.join(timeout=10)
            record = self._collect(container, spec)
            timings["collect_s"] = time.monotonic() - t3
            return Outcome(record, exit_code, oom_killed=oom, timed_out=timed_out, window=window, facts=facts,
                           timings=timings, trace=w.trace)
        finally:
            if container is not None:  # also on Ctrl-C: stop the trial in flight, leave nothing behind
                t4 = time.monotonic()
                try:
                    container.remove(force=True)
                except docker.errors.NotFound:
                    pass
                timings["remove_s"] = time.monotonic() - t4

    def _collect(self, container, spec: LaunchSpec) -> dict[str, Any] | None:
        path = spec.work / "out" / "record.json"
        try:
            return read_record(path)
        except PermissionError:
            # written by the image's uid 1000 with mode 0600 and we are another non-root user: copy it out instead
            try:
                stream, _ = container.get_archive("/out/record.json")
            except docker.errors.NotFound:
                return None
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.extractfile("record.json")
                return json.loads(member.read()) if member else None


def _stream_log(container, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                f.write(chunk)
                f.flush()
        except Exception as e:  # the container went away mid-stream (Ctrl-C): keep what we have
            f.write(f"\n[orchestrator] log stream ended: {e}\n".encode())
