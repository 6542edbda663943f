"""results/<run-id>/: one record per trial, written atomically, plus the matrix snapshot the run was started with.

    results/<run-id>/
      matrix.toml            the matrix as it was when the run started (its sha256 is in run.json and every record)
      run.json               run id, matrix hash, seed, the full trial order and the reference policy (written once,
                             when the run starts)
      invocations/*.json     one file per orchestrator invocation (many may write at once: nodes of a cluster)
      slurm/                 sharding.json (whole models per shard) and one file per submitted job array
      trials/<trial>.json    one record per finished trial (ok or failed); its presence means "done"
      trials/.invalid/       records found truncated or not records on resume, moved aside (<trial>.<UTC time>.json.invalid;
                             the reason is printed and kept in that invocation's file); their trials run again
      lock/<scope>.json      the orchestrator running the run (or one shard of it) now: orchestrator/run_lock.py
      prepare/<name>.json    model fetches and engine conversions, outside every measured window
      logs/<name>.log        the container's (or process's) output
      work/<name>/           job.json + out/ of the trial in flight (removed once its record is stored)

A record is only ever written complete (runners.record.write_json_atomic), so an interrupted run loses at most the
trial in flight, and a resume finds every finished trial intact. A results file system that is full when a record is
written leaves no partial file (the temp file is removed) and ends the run (ResultsNotWritable); a resume after space
is freed runs that trial. A file under trials/ that is not a record (a crash of the file system) never stops a reader:
records() skips it and invalid() names it; the next run moves it aside and runs its trial again.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from runners.agreement import RUN_KEY, ReferencePolicy
from runners.record import RECORD_SCHEMAS, new_record, write_json_atomic

INVALID_DIR = ".invalid"  # under trials/: what a resume moved aside (a dot folder: no reader globs it)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class RunConflict(RuntimeError):
    pass


class ResultsNotWritable(RuntimeError):
    """The results file system is full (or over quota): nothing partial was left; free space then resume."""

    def __init__(self, path: Path, error: OSError):
        self.path = path
        super().__init__(f"cannot write {path}: {error.strerror or error} — free space then resume (run the same "
                         "command again): every finished trial is recorded, the trial in flight runs again")


def no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in NO_SPACE


def record_problem(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the record, None), or (None, why the file under trials/ is not a usable record)."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    except ValueError as e:  # UnicodeDecodeError included
        return None, f"not valid JSON (truncated?): {e}"
    if not isinstance(data, dict):
        return None, f"not a record: a JSON {type(data).__name__}, not an object"
    if "schema" in data and data["schema"] not in RECORD_SCHEMAS:  # (hand-made records may carry none)
        return None, f"not a record: schema {data['schema']!r} (known: {', '.join(RECORD_SCHEMAS)})"
    if data.get("status") not in ("ok", "failed"):
        return None, f"not a record: status {data.get('status')!r} is neither 'ok' nor 'failed'"
    return data, None


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
        """The trial's record; None when it has none, or only a file that is not a record (see invalid())."""
        p = self.trial_path(trial_id)
        return record_problem(p)[0] if p.is_file() else None

    def records(self) -> dict[str, dict[str, Any]]:
        """Every readable record by trial id; files that are not records are skipped (invalid() names them)."""
        found = ((p.stem, record_problem(p)[0]) for p in sorted(self.trials_dir.glob("*.json")))
        return {trial_id: rec for trial_id, rec in found if rec is not None}

    def invalid(self, trial_ids=None) -> dict[str, str]:
        """{trial id: why} of the files under trials/ (only those of trial_ids, when given) that are not records."""
        paths = (sorted(self.trials_dir.glob("*.json")) if trial_ids is None
                 else [self.trial_path(t) for t in trial_ids])
        found = ((p.stem, record_problem(p)[1]) for p in paths if p.is_file())
        return {trial_id: why for trial_id, why in found if why is not None}

    def set_aside_invalid(self, trial_ids) -> dict[str, dict[str, str]]:
        """Move the invalid records of these trials (only this invocation's: another shard's are its own) to
        trials/.invalid/, so that their trials run again; {trial id: {reason, moved_to}}."""
        moved = {}
        for trial_id, why in self.invalid(trial_ids).items():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            target = self.trials_dir / INVALID_DIR / f"{trial_id}.{stamp}-{os.getpid()}.json.invalid"
            target.parent.mkdir(exist_ok=True)
            os.replace(self.trial_path(trial_id), target)
            moved[trial_id] = {"reason": why, "moved_to": str(target.relative_to(self.root))}
        return moved

    def write_trial(self, trial_id: str, record: dict[str, Any]) -> Path:
        path = self.trial_path(trial_id)
        try:
            return write_json_atomic(path, record)
        except OSError as e:  # write_json_atomic removed its temp file: no partial record is left
            if no_space(e):
                raise ResultsNotWritable(path, e) from e
            raise

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
