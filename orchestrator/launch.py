"""What every launcher takes and gives back: one runner invocation through the job contract.

A launcher writes the job file, starts the runner (a container, or a plain process), streams its output to the log,
enforces the timeout, opens the host meters' "container" window around the runner's whole span, and hands back the
runner's record (or None) with the facts of how the run ended. It never decides whether the trial failed: the
executor does, from these facts, the same way for every launcher.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from orchestrator.images import Runtime


@dataclass
class LaunchSpec:
    name: str  # trial id (or prepare id): container label, log and work folder names
    runtime: Runtime
    mode: str  # "run" | "prepare": the runner's subcommand
    job: dict[str, Any]  # the full job, paths as the host sees them (the launcher maps them)
    work: Path  # an empty folder for job.json and out/
    log_path: Path
    timeout_s: float
    mem_limit: str | None = None
    cpus: float | None = None
    shm_size: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    gpus: dict[str, int] = field(default_factory=dict)  # CUDA runtimes: {NVML UUID: host index} it gets, no other


@dataclass
class Outcome:
    record: dict[str, Any] | None  # what the runner wrote, if anything
    exit_code: int | None
    oom_killed: bool = False
    timed_out: bool = False
    launch_error: str | None = None  # the runner never ran (image missing, start refused)
    window: dict[str, Any] | None = None  # host meters around the runner's whole span
    trace: Any = None  # the host's counter trace over that span (runners.meters.trace.CounterTrace)
    facts: dict[str, Any] = field(default_factory=dict)  # launcher, container_id, image, image_id, limits…
    timings: dict[str, float] = field(default_factory=dict)  # create_s, start_s, run_s, stop_s, collect_s


class HostProblem(RuntimeError):
    """This host cannot run what was asked (no Docker engine, an image not built): exit code 3, with the fix."""


class Launcher(Protocol):
    """What the executor and the CLI need of a launcher; Docker and the plain process implement it."""

    name: str

    def gpu_problem(self) -> str | None:
        """Why CUDA runtimes cannot run here (their trials are skipped with it), or None."""

    def remove_stale(self) -> list[str]:
        """Leftovers of an orchestrator that was killed mid-trial, removed; their names."""

    def ensure_ready(self, runtimes: Iterable[Runtime], build_them: bool, log: Callable[[str], None]) -> None:
        """Make the runtimes runnable (images built, or checked to exist), or raise HostProblem with the fix."""

    def image_of(self, runtime: Runtime) -> str | None:
        """The image a trial of this runtime runs in, for its bookkeeping (None: no image)."""

    def run(self, spec: LaunchSpec, meters) -> Outcome:
        """One runner invocation under the host meters' "container" window (traced)."""


def write_job(spec: LaunchSpec, job: dict[str, Any]) -> Path:
    """job.json inside work/job/ (mounted read-only) and an out/ folder the image's uid 1000 can write."""
    job_dir = spec.work / "job"
    out_dir = spec.work / "out"
    job_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(0o777)
    path = job_dir / "job.json"
    path.write_text(json.dumps(job, indent=1))
    path.chmod(0o644)
    job_dir.chmod(0o755)
    return path


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # cannot happen with write_json_atomic; treated as "no record" all the same
