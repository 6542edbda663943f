"""The runner as a plain process, for hosts without Docker (e.g. a bare GPU box): same job contract, same record.

The runner runs from this checkout's runners/ with this Python (which then needs the runtime's libraries). Paths in
the job stay host paths; nothing is mounted, so read-only / no-network / memory limits are not enforced — the
record's host.limits says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from orchestrator import REPO_ROOT
from orchestrator.launch import LaunchSpec, Outcome, read_record, write_job


def runner_env(spec: LaunchSpec) -> dict[str, str]:
    """The runner's environment: offline, this checkout importable, and a CUDA trial shown its own GPUs only."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    if spec.runtime.gpu and spec.gpus:  # the trial's GPUs only, in the order of [host] gpus (CUDA takes UUIDs)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)
    return env


class ProcessLauncher:
    name = "process"

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    def gpu_problem(self) -> str | None:
        from runners.meters import nvml

        gpus, reason = nvml.discover()
        return None if gpus else f"no NVIDIA GPU visible on this host ({reason})"

    def remove_stale(self) -> list[str]:
        return []

    def ensure_ready(self, runtimes, build_them: bool, log) -> None:
        """Nothing to build: the runner runs from this checkout with this Python (its libraries must be here)."""

    def image_of(self, runtime) -> str | None:
        return None

    def run(self, spec: LaunchSpec, meters) -> Outcome:
        job_path = write_job(spec, spec.job)
        out = spec.work / "out" / "record.json"
        env = runner_env(spec)
        facts = {"launcher": self.name, "image": None, "image_id": None, "python": self.python,
                 "limits": {"timeout_s": spec.timeout_s, "not_enforced": [k for k in ("mem_limit", "cpus")
                                                                          if getattr(spec, k)]}}
        timings: dict[str, float] = {"create_s": 0.0}
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        timed_out = False
        t1 = time.monotonic()
        with open(spec.log_path, "wb") as log, meters.window("container", trace=True) as w:
            timings["meters_open_s"] = time.monotonic() - t1
            t1 = time.monotonic()
            # own session: a timeout or Ctrl-C ends the runner and anything it started
            proc = subprocess.Popen([self.python, "-m", "runners", spec.mode, str(job_path), "--out", str(out)],
                                    cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            timings["start_s"] = time.monotonic() - t1
            facts["started_unix"] = time.time()
            facts["pid"] = proc.pid
            t2 = time.monotonic()
            try:
                code = proc.wait(timeout=spec.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
            except BaseException:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            timings["run_s"] = time.monotonic() - t2
            facts["exited_unix"] = time.time()
        t3 = time.monotonic()
        record = read_record(out)
        timings["collect_s"] = time.monotonic() - t3
        timings["remove_s"] = 0.0
        # a signal death shows as a negative code; report it the way a container would (128 + signal)
        exit_code = 128 - code if code < 0 else code
        return Outcome(record, exit_code, oom_killed=False, timed_out=timed_out, window=w.result, facts=facts,
                       timings=timings, trace=w.trace)
