"""One container per runner invocation, through the Docker SDK.

Mounts: the job read-only at /job, out/ read-write at /out, the model folder read-only under /models, the HF cache
read-only at /hf-cache, the engine cache at /cache (read-only in measured runs, read-write only for `prepare`).
Locked down (docker_layer.measured_lock_down): no network, read-only root with a tmpfs /tmp, no capabilities, no new
privileges, uid 1000, a pids limit. CUDA runtimes get a GPU DeviceRequest. The container is always removed, whatever
happens, and a killed orchestrator's leftovers are removed on the next start — only this results folder's.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors

from orchestrator.docker_layer import (MEASURED_PIDS_LIMIT, MEASURED_TMPFS, Container, connect, connected, gpu_problem,
                                       limits, local_image, measured_lock_down, remove)
from orchestrator.images import BASE_LABEL, SOURCES_LABEL, Runtime, build, image_info
from orchestrator.launch import HostProblem, LaunchSpec, Outcome, read_record, write_job

LABEL_RUN = "io.slm-matrix.run"
LABEL_NAME = "io.slm-matrix.trial"
# Whose run: two checkouts on one host may use the same run id, each with its own results folder.
LABEL_SCOPE = "io.slm-matrix.results-scope"
LABEL_RESULTS = "io.slm-matrix.results"  # the folder itself, for a person reading `docker ps`


def results_scope(results: Path | None) -> str:
    """This host and results folder, as a label value: a hash (labels are filtered by exact value)."""
    where = f"{socket.gethostname()}:{Path(results).resolve() if results is not None else ''}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def device_ids(spec: LaunchSpec) -> list[str]:
    """The Docker GPU device ids of a CUDA trial: exactly its GPUs (by UUID, the job's gpus of them, in the order of
    [host] gpus), never every GPU of the host; "0" where NVML named none."""
    return list(spec.gpus) or ["0"]


class DockerLauncher:
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None, run_id: str = "", results: Path | None = None):
        self.client = client or connect()
        self.run_id = run_id
        self.results = Path(results).resolve() if results is not None else None
        self.scope = results_scope(results)

    @classmethod
    def connected(cls, run_id: str, results: Path | None = None) -> "DockerLauncher":
        """A launcher on a Docker engine that answers, or HostProblem with the fix."""
        return cls(connected(), run_id, results)

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

    def labels(self, trial: str) -> dict[str, str]:
        """The labels of this launcher's containers: run, results folder, trial."""
        return {LABEL_RUN: self.run_id, LABEL_SCOPE: self.scope, LABEL_RESULTS: str(self.results or ""),
                LABEL_NAME: trial}

    def remove_stale(self) -> list[str]:
        """Containers of this run and results folder left by an orchestrator that was killed (not Ctrl-C'd)
        mid-trial; another results folder's containers of the same run id are not ours."""
        gone = []
        ours = [f"{LABEL_RUN}={self.run_id}", f"{LABEL_SCOPE}={self.scope}"]  # label filters are ANDed
        for c in self.client.containers.list(all=True, filters={"label": ours}):
            remove(c)
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

    def _options(self, spec: LaunchSpec, volumes: dict[str, dict[str, str]]) -> dict[str, Any]:
        options: dict[str, Any] = dict(
            measured_lock_down(), volumes=volumes, shm_size=spec.shm_size,
            labels={**self.labels(spec.name), **spec.labels},
            # the record's environment.hostname names the machine, not a throw-away container id (kept in host.*)
            hostname=socket.gethostname(), **limits(spec.mem_limit, spec.cpus))
        if spec.runtime.gpu:
            options["device_requests"] = [docker.types.DeviceRequest(device_ids=device_ids(spec),
                                                                     capabilities=[["gpu"]])]
        return options

    def run(self, spec: LaunchSpec, meters) -> Outcome:
        rt: Runtime = spec.runtime
        image = local_image(self.client, rt.image)
        if image is None:
            return Outcome(None, None, launch_error=f"image {rt.image} is not built — run `orchestrate.py build` "
                                                    f"(or `make images`)", facts={"launcher": self.name})
        job, volumes = self._mounts(spec)
        write_job(spec, job)
        volumes[str((spec.work / "job").resolve())] = {"bind": "/job", "mode": "ro"}
        volumes[str((spec.work / "out").resolve())] = {"bind": "/out", "mode": "rw"}
        facts: dict[str, Any] = {"launcher": self.name, "image": rt.image, "image_id": image.id,
                                 "image_sources": image.labels.get(SOURCES_LABEL),
                                 "image_base": image.labels.get(BASE_LABEL),
                                 "limits": {"mem_limit": spec.mem_limit, "cpus": spec.cpus, "shm_size": spec.shm_size,
                                            "timeout_s": spec.timeout_s, "network": "none", "gpu": rt.gpu,
                                            "gpus": sorted(spec.gpus.values()) if rt.gpu else [],
                                            "pids_limit": MEASURED_PIDS_LIMIT, "tmpfs": dict(MEASURED_TMPFS)}}
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        try:
            container = Container(self.client, image.id, [spec.mode, "/job/job.json", "--out", "/out/record.json"],
                                  **self._options(spec, volumes))
        except docker.errors.APIError as e:  # refused for this trial only: record it, the matrix goes on
            return Outcome(None, None, launch_error=f"container create refused: {e.explanation or e}",
                           facts=facts, timings=timings)
        facts["container_id"] = container.id
        timings["create_s"] = time.monotonic() - t0
        with container:  # also on Ctrl-C: stop the trial in flight, leave nothing behind
            outcome = self._run_created(container, spec, meters, facts, timings)
        timings["remove_s"] = container.remove_s
        return outcome

    def _run_created(self, container: Container, spec: LaunchSpec, meters, facts: dict[str, Any],
                     timings: dict[str, float]) -> Outcome:
        """Start, wait (killed at the timeout) and collect, inside the host meters' "container" window."""
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
            container.stream_log(spec.log_path)
            t2 = time.monotonic()
            exit_code, timed_out = container.wait(spec.timeout_s)
            timings["run_s"] = time.monotonic() - t2
            facts["exited_unix"] = time.time()
        t3 = time.monotonic()
        oom = container.oom_killed()
        container.log_written()
        record = self._collect(container, spec)
        timings["collect_s"] = time.monotonic() - t3
        return Outcome(record, exit_code, oom_killed=oom, timed_out=timed_out, window=w.result, facts=facts,
                       timings=timings, trace=w.trace)

    def _collect(self, container: Container, spec: LaunchSpec) -> dict[str, Any] | None:
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

