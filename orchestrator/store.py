"""results/<run-id>/: one record per trial, written atomically, plus the matrix snapshot the run was started with.

    results/<run-id>/
      matrix.toml            the matrix as it was when the run started (its sha256 is in run.json and every record)
      run.json               run id, matrix hash, seed, the full trial order and the reference policy (written once,
                             when the run starts)
      invocations/*.json     one file per orchestrator invocation (many may write at once: nodes of a cluster)
      slurm/                 sharding.json (whole models per shard) and one file per submitted job array
      trials/<trial>.json    one record per finished trial (ok or failed); its presence means "done"
      prepare/<name>.json    model fetches and engine conversions, outside every measured window
      logs/<name>.log        the container's (or process's) output
      work/<name>/           job.json + out/ of the trial in flight (removed once its record is stored)

A record is only ever written complete (runners.record.write_json_atomic), so an interrupted run loses at most the
trial in flight, and a resume finds every finished trial intact.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from runners.agreement import RUN_KEY, ReferencePolicy
from runners.record import new_record, write_json_atomic


class RunConflict(RuntimeError):
    pass


class RunStore:
    def __init__(self, results: str | Path, run_id: str):
        self.root = Path(results) / run_id
        self.run_id = run_id
        self.trials_dir = self.root / "trials"
        self.prepare_dir = self.root / "prepare"
        self.logs_dir = self.root / "logs"
        self.work_dir = self.root / "work"
        self.evaluations_dir = self.root / "evaluations"  # orchestrate.py evaluate: one file per evaluated trial
        self.invocations_dir = self.root / "invocations"
        self.slurm_dir = self.root / "slurm"

    # --- the run ------------------------------------------------------------------------------------------------
    @property
    def run_file(self) -> Path:
        return self.root / "run.json"

    def exists(self) -> bool:
        return self.run_file.is_file()

    def read_run(self) -> dict[str, Any]:
        """run.json, its "invocations" merged from invocations/ (and from run.json itself, for older runs)."""
        run = json.loads(self.run_file.read_text())
        found = []
        for p in sorted(self.invocations_dir.glob("*.json")) if self.invocations_dir.is_dir() else ():
            try:
                found.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        run["invocations"] = sorted([*run.get("invocations", []), *found], key=lambda e: e.get("started_unix") or 0)
        return run

    def open(self, matrix, order: list[str]) -> dict[str, Any]:
        """Create the run, or check that an existing one was started with the same matrix (then it resumes)."""
        if self.exists():
            run = self.read_run()
            if run["matrix"]["sha256"] != matrix.hash:
                raise RunConflict(
                    f"results/{self.run_id} was started with another matrix (sha256 {run['matrix']['sha256'][:12]}, "
                    f"now {matrix.hash[:12]} from {matrix.path}) — resume it with its own snapshot "
                    f"({self.root / 'matrix.toml'}) or start a new --run-id")
            return run
        for d in (self.trials_dir, self.prepare_dir, self.logs_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "matrix.toml").write_text(matrix.text)
        run = {"run_id": self.run_id, "created_unix": time.time(), "hostname": socket.gethostname(),
               "matrix": {"name": matrix.name, "path": str(matrix.path), "sha256": matrix.hash,
                          "snapshot": "matrix.toml"},
               "seed": matrix.seed, "order": order, "invocations": [],
               # the matrix's [agreement] as one policy: the summary, the report, the pass@1 comparison and the
               # architectures table read this copy
               RUN_KEY: ReferencePolicy.from_spec(matrix.agreement).as_dict()}
        write_json_atomic(self.run_file, run)
        return run

    def policy(self) -> ReferencePolicy:
        """The run's reference policy: run.json's (older runs: their matrix.toml snapshot's [agreement]), else the
        defaults."""
        return ReferencePolicy.of_run(self.root) or ReferencePolicy()

    def log_invocation(self, entry: dict[str, Any]) -> None:
        """One file per invocation: orchestrators on several nodes of a shared results folder never rewrite one
        file (a read-modify-write of run.json by two of them would lose one's entry)."""
        entry = {"hostname": socket.gethostname(), "pid": os.getpid(), **entry}
        name = f"{entry.get('started_unix', time.time()):.6f}-{entry['hostname']}-{entry['pid']}.json"
        write_json_atomic(self.invocations_dir / name, entry)

    # --- trials ---------------------------------------------------------------------------------------------------
    def trial_path(self, trial_id: str) -> Path:
        return self.trials_dir / f"{trial_id}.json"

    def record(self, trial_id: str) -> dict[str, Any] | None:
        p = self.trial_path(trial_id)
        return json.loads(p.read_text()) if p.is_file() else None

    def records(self) -> dict[str, dict[str, Any]]:
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.trials_dir.glob("*.json"))}

    def write_trial(self, trial_id: str, record: dict[str, Any]) -> Path:
        return write_json_atomic(self.trial_path(trial_id), record)

    def evaluation_path(self, trial_id: str) -> Path:
        return self.evaluations_dir / f"{trial_id}.json"

    def prepare_path(self, name: str) -> Path:
        return self.prepare_dir / f"{name}.json"

    def work(self, name: str) -> Path:
        """A fresh work folder (whatever an interrupted attempt left there is discarded)."""
        d = self.work_dir / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def log_path(self, name: str) -> Path:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        return self.logs_dir / f"{name}.log"


def failed_record(job: dict[str, Any] | None, phase: str, error_type: str, message: str,
                  mode: str = "run") -> dict[str, Any]:
    """The record of a trial whose runner wrote none (killed for memory, timed out, crashed before writing)."""
    record = new_record(job or None, mode=mode)
    record["error"] = {"phase": phase, "type": error_type, "message": message}
    return record
