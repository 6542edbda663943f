"""One orchestrator per run (or per shard of a run): a lock file in the results folder.

    results/<run-id>/lock/run.json            an unsharded `run` / `prepare`: the whole run
    results/<run-id>/lock/shard-<i>-of-<N>.json   `run --shard i/N`: that shard only

Shards of one run legitimately run at once on several nodes (a Slurm job array): each writes only its own trials
(whole models, results/<run-id>/slurm/sharding.json) and one invocation file, so each takes only its shard's lock. An
unsharded invocation runs every trial: it conflicts with every shard, and every shard with it.

The lock names its holder (host, pid, start time, command, Slurm task). A lock is stale — taken over, and said so —
when its holder is gone: on this host, its pid no longer runs (or runs another process: pid reuse); on another host,
only when it was a Slurm task that Slurm says is over, or this very task before a requeue (Slurm runs a task once).
Any other host's lock is respected (its process cannot be seen from here) unless the user passes --break-lock.
Created with O_EXCL (atomic on local file systems and NFSv3+).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

BREAK_FLAG = "--break-lock"
RUN_SCOPE = "run"


class RunLocked(RuntimeError):
    """Another orchestrator holds the run (or this shard of it)."""


def scope_of(shard: dict[str, Any] | None) -> str:
    return RUN_SCOPE if shard is None else f"shard-{shard['index']}-of-{shard['count']}"


def _started(pid: int) -> float | None:
    """The process's start time (to tell a reused pid from the holder), None when no such process runs."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except ImportError:  # pragma: no cover - psutil is a dependency; without it a live pid is trusted
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return -1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def _slurm_task_over(slurm: dict[str, Any]) -> bool:
    """True when Slurm says the holder's array task is over (or has forgotten it); False when it runs or Slurm
    cannot be asked from here."""
    from orchestrator.slurm import FINISHED, slurm_problem, task_states

    job, task = slurm.get("array_job_id") or slurm.get("job_id"), slurm.get("array_task_id")
    if not job or slurm_problem():
        return False
    states = task_states([str(job)])
    key = (str(job), int(task)) if task not in (None, "") else None
    if key is None:  # a plain job, not an array task
        found = [s for (j, _), s in states.items() if j == str(job)]
        return not found or all(s["state"] in FINISHED for s in found)
    return key not in states or states[key]["state"] in FINISHED


def stale_reason(holder: dict[str, Any]) -> str | None:
    """Why the holder is gone, or None when it may still run."""
    if holder.get("hostname") == socket.gethostname():
        started = _started(int(holder.get("pid") or 0))
        if started is None:
            return "no longer running"
        if started > 0 and holder.get("process_started_unix") and abs(started - holder["process_started_unix"]) > 1:
            return f"no longer running (pid {holder['pid']} is now another process)"
        return None
    theirs, mine = holder.get("slurm") or {}, _slurm_env() or {}
    task = ("job_id", "array_job_id", "array_task_id")
    if theirs and all(theirs.get(k) == mine.get(k) for k in task):  # Slurm runs a task once: this is its requeue
        return "this Slurm task's earlier run (requeued)"
    if theirs and _slurm_task_over(theirs):
        return "its Slurm task is over"
    return None


def describe(holder: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started_unix") or 0))
    return (f"pid {holder.get('pid')} on host {holder.get('hostname')} (since {when}: "
            f"`{' '.join(holder.get('command') or [])}`)")


class RunLock:
    def __init__(self, run_root: Path, shard: dict[str, Any] | None = None, *, break_lock: bool = False,
                 note=print):
        self.dir = Path(run_root) / "lock"
        self.scope = scope_of(shard)
        self.path = self.dir / f"{self.scope}.json"
        self.break_lock = break_lock
        self.note = note
        self.taken_over: list[dict[str, Any]] = []  # the stale (or broken) locks this one replaced
        self.holder: dict[str, Any] | None = None

    def _conflicting(self) -> list[Path]:
        """The lock files this one cannot live beside: the whole run's, and (unsharded) every shard's; its own."""
        if self.scope == RUN_SCOPE:
            return sorted(self.dir.glob("*.json"))
        return [self.dir / f"{RUN_SCOPE}.json", self.path]

    def _check(self, path: Path) -> None:
        """Raise RunLocked while a live holder has `path`; a stale (or broken) one is moved aside and said so."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        try:
            holder = json.loads(text)
        except ValueError:  # a lock file half-written by a crash: nobody can hold it
            holder = {}
        if holder.get("token") == (self.holder or {}).get("token"):
            return
        why = stale_reason(holder) if holder else "unreadable"
        if why is None and not self.break_lock:
            other = "" if holder.get("hostname") == socket.gethostname() else (
                f"; if that host is down or that orchestrator is gone, pass {BREAK_FLAG}")
            raise RunLocked(f"run {path.parent.parent.name} is in use ({path.stem}): another orchestrator holds it, "
                            f"{describe(holder)} — lock file {path}. Wait for it to finish, or use another "
                            f"--run-id{other}")
        why = why or f"broken by {BREAK_FLAG}"
        aside = path.with_name(f".{path.stem}.{time.time():.0f}-{os.getpid()}.stale")
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # its holder released it meanwhile
            return
        if aside.read_text() != text:  # another orchestrator took it over first: its fresh lock goes back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            aside.unlink()
            return self._check(path)
        self.taken_over.append({**holder, "reason": why})
        self.note(f"took over the lock of run {path.parent.parent.name} ({path.stem}) from "
                  f"{describe(holder) if holder else 'an unreadable lock file'}: {why}")

    def acquire(self) -> RunLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in self._conflicting():
            self._check(p)
        me = {"hostname": socket.gethostname(), "pid": os.getpid(), "started_unix": time.time(),
              "process_started_unix": _started(os.getpid()), "command": list(sys.argv), "scope": self.scope,
              "token": uuid.uuid4().hex, "slurm": _slurm_env()}
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another orchestrator took it between the check and now
            self._check(self.path)
            return self.acquire()
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        self.holder = me
        try:  # an unsharded run and a shard may have started together: each sees the other's file now
            for p in self._conflicting():
                self._check(p)
        except RunLocked:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Remove the lock file if it is still this holder's (a --break-lock elsewhere may have replaced it)."""
        try:
            if self.holder and json.loads(self.path.read_text()).get("token") == self.holder["token"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
        self.holder = None


def _slurm_env() -> dict[str, Any] | None:
    from orchestrator.slurm import env_facts

    return env_facts()
