"""The matrix on a Slurm cluster: one job array, one array task per shard, each the ordinary orchestrator on its node.

    orchestrate.py submit --slurm --shards N [--partition P] [--account A] [--time HH:MM:SS] [--gpus-per-node G]
                          [--sbatch-arg ARG ...] [--dry-run]

Each array task runs ``orchestrate.py run --shard $SLURM_ARRAY_TASK_ID/N`` on its node: that node's Docker engine and
GPUs, one trial at a time, node-exclusive unless asked otherwise, results into the shared results folder (every file
there is written whole by a rename; run.json is written once; invocations and submissions are one file each). The
batch script is written into results/<run>/slurm/ and kept. Submitting a run again submits only the shards that still
have trials left (a task that was cancelled or timed out resumes where it stopped: finished trials are kept).
Slurm is reached through its commands (sbatch, squeue, scontrol), as users do; nothing here needs its Python API.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import REPO_ROOT
from orchestrator.launch import HostProblem
from runners.record import write_json_atomic

TIME_RE = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")  # Slurm's --time forms: M, M:S, H:M:S, D-H, D-H:M:S
# Slurm's wording for job states that are over (squeue shows neither PENDING nor RUNNING any more)
FINISHED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE"}


@dataclass
class SubmitOptions:
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # the array task's time limit, Slurm syntax
    gpus_per_node: int | None = None
    exclusive: bool = True  # one trial at a time on a whole node: nothing else draws power beside it
    sbatch_args: list[str] = field(default_factory=list)  # passed through verbatim, e.g. --constraint=h100
    python: str = sys.executable
    launcher: str = "docker"

    def check(self) -> None:
        from orchestrator.matrix import MatrixError

        if self.time is not None and not TIME_RE.match(self.time):
            raise MatrixError("--time", self.time, "is not a Slurm time limit",
                              "write it as minutes, HH:MM:SS or D-HH:MM:SS (e.g. 12:00:00)")
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise MatrixError("--gpus-per-node", str(self.gpus_per_node), "must be ≥ 0", "e.g. --gpus-per-node 1")


def batch_script(*, run_id: str, results: Path, cache: Path, shards: int, indices: list[int],
                 options: SubmitOptions, repo: Path = REPO_ROOT) -> str:
    """The sbatch script of one job array over ``indices`` of ``shards`` shards."""
    results, cache = Path(results).resolve(), Path(cache).resolve()
    out = results / run_id / "slurm"
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=slm-{run_id}"[:80],
             f"#SBATCH --array={','.join(str(i) for i in indices)}",
             "#SBATCH --nodes=1",
             "#SBATCH --ntasks=1",
             f"#SBATCH --output={out}/%A_%a.out"]
    if options.exclusive:
        lines.append("#SBATCH --exclusive")
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.account:
        lines.append(f"#SBATCH --account={options.account}")
    if options.time:
        lines.append(f"#SBATCH --time={options.time}")
        # SIGTERM to the orchestrator 2 min before the limit: the trial in flight is stopped and removed cleanly
        lines.append("#SBATCH --signal=B:TERM@120")
    if options.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={options.gpus_per_node}")
    lines += [f"#SBATCH {a}" for a in options.sbatch_args]
    cmd = [options.python, str(repo / "orchestrate.py"), "run", "--matrix", str(results / run_id / "matrix.toml"),
           "--run-id", run_id, "--results", str(results), "--cache", str(cache), "--launcher", options.launcher]
    lines += ["",
              "# written by orchestrate.py submit --slurm; one array task = one shard (whole models) on one node",
              "set -euo pipefail",
              f"cd {shlex.quote(str(repo))}",
              "echo \"shard ${SLURM_ARRAY_TASK_ID}/" + str(shards) + " on $(hostname) (job ${SLURM_JOB_ID})\"",
              # exec: the orchestrator is the batch step itself, so scancel's and the time limit's SIGTERM reach it
              "exec " + " ".join(shlex.quote(c) for c in cmd) + f" --shard \"${{SLURM_ARRAY_TASK_ID}}/{shards}\"",
              ""]
    return "\n".join(lines)


def slurm_problem() -> str | None:
    """Why jobs cannot be submitted from here, or None."""
    missing = [c for c in ("sbatch", "squeue", "scontrol") if shutil.which(c) is None]
    if missing:
        return (f"Slurm's commands are not on PATH ({', '.join(missing)} missing) — submit from a login node of the "
                "cluster, or install the Slurm client")
    return None


def sbatch(script: Path) -> str:
    """Submit; the job id."""
    problem = slurm_problem()
    if problem:
        raise HostProblem(problem)
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise HostProblem(f"sbatch refused the job array: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip().split(";")[0]


def task_states(job_ids: list[str]) -> dict[tuple[str, int], dict[str, str]]:
    """(array job id, task index) -> {state, node, reason} for the tasks Slurm still knows (squeue, then scontrol for
    tasks that ended recently). Tasks Slurm has forgotten are simply absent."""
    out: dict[tuple[str, int], dict[str, str]] = {}
    if not job_ids or slurm_problem():
        return out
    proc = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%F|%K|%T|%N|%r"],
                          capture_output=True, text=True, timeout=60)
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5 and parts[1].isdigit():
            out[(parts[0], int(parts[1]))] = {"state": parts[2], "node": parts[3], "reason": parts[4]}
    for job in job_ids:
        proc = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=60)
        for line in proc.stdout.splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            task = f.get("ArrayTaskId", "")
            if f.get("ArrayJobId") == job and task.isdigit() and (job, int(task)) not in out:
                out[(job, int(task))] = {"state": f.get("JobState", "?"), "node": f.get("NodeList", ""),
                                         "reason": f.get("Reason", "")}
    return out


def record_submission(slurm_dir: Path, job_id: str, indices: list[int], shards: int, script: Path,
                      options: SubmitOptions) -> dict[str, Any]:
    entry = {"job_id": job_id, "array": indices, "shards": shards, "script": script.name,
             "submitted_unix": time.time(), "options": {k: v for k, v in vars(options).items()}}
    write_json_atomic(slurm_dir / f"job-{job_id}.json", entry)
    return entry


def submissions(slurm_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(slurm_dir.glob("job-*.json")) if slurm_dir.is_dir() else ():
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda e: e["submitted_unix"])


def current_tasks(slurm_dir: Path) -> dict[int, dict[str, Any]]:
    """shard -> its latest submission's task: {job_id, state, node, reason} (state "UNKNOWN" when Slurm forgot it)."""
    subs = submissions(slurm_dir)
    states = task_states(sorted({s["job_id"] for s in subs}))
    latest: dict[int, dict[str, Any]] = {}
    for s in subs:
        for i in s["array"]:
            latest[i] = {"job_id": s["job_id"], **states.get((s["job_id"], i),
                                                             {"state": "UNKNOWN", "node": "", "reason": ""})}
    return latest


@dataclass
class Pending:
    """What a submission of the run would do: per shard, its trials left and its task still queued or running."""
    sharding: Any  # orchestrator.shard.Sharding
    left: dict[int, list]  # shard -> its trials not yet recorded
    active: dict[int, dict[str, Any]]  # shard -> its Slurm task, still pending or running
    indices: list[int]  # the shards to submit now: trials left and no task of theirs in the queue


def pending(store, matrix, plan, shards: int | None, dry_run: bool) -> Pending:
    """The run's shards and which to submit. A dry run of a run not started writes nothing (the sharding a
    submission would write); otherwise the run is opened and its sharding written, as every array task reads it."""
    from orchestrator.shard import assign, run_sharding

    if dry_run and not store.exists():
        sharding = assign(plan, shards or len(matrix.models))
    else:
        store.open(matrix, [t.id for t in plan.trials])
        sharding = run_sharding(store, plan, shards)
    records = store.records() if store.exists() else {}
    left = {i: [t for t in sharding.trials(plan.trials, i) if t.id not in records] for i in range(sharding.count)}
    active = {i: t for i, t in (current_tasks(store.slurm_dir) if store.exists() else {}).items()
              if t["state"] not in FINISHED and t["state"] != "UNKNOWN"}
    return Pending(sharding, left, active, [i for i in range(sharding.count) if left[i] and i not in active])


def submit(slurm_dir: Path, script: str, todo: Pending, options: SubmitOptions) -> tuple[str, Path]:
    """The batch script kept in the run's slurm/ folder and submitted: (job id, script path)."""
    path = slurm_dir / f"submit-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    job_id = sbatch(path)
    record_submission(slurm_dir, job_id, todo.indices, todo.sharding.count, path, options)
    return job_id, path


def env_facts() -> dict[str, Any] | None:
    """The Slurm job this process runs in (None outside Slurm), for the records."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    keys = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
            "node": "SLURMD_NODENAME", "partition": "SLURM_JOB_PARTITION", "cluster": "SLURM_CLUSTER_NAME"}
    return {k: os.environ.get(v) for k, v in keys.items()}
