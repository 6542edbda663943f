"""What the orchestrator learns about one launch: its verdict (ok or failed, from the exit facts, the same way for
every launcher) and the host's block of the record (``record["host"]``), filled as the facts come in and merged into
the record once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from orchestrator.launch import LaunchSpec, Outcome
from orchestrator.store import failed_record
from runners.record import PHASES, Record

# a field only a trial (mode "run") has: a prepare record's host block has no such key
TRIAL_ONLY = {"trial_only": True}


@dataclass
class HostFacts:
    """``record["host"]``: its keys, in their order on disk."""
    launcher: str | None
    container_id: str | None
    image: str | None
    image_id: str | None
    limits: dict[str, Any] | None
    exit_code: int | None
    oom_killed: bool
    timed_out: bool
    started_unix: float | None
    exited_unix: float | None
    container: dict[str, Any] | None  # the host meters' window around the runner's whole span, the trial's boundary
    idle: dict[str, Any] | None  # the host's idle baseline the trial is compared with
    log: str  # relative to the run's folder
    log_tail: str | None  # a failed launch's last lines
    overhead_s: dict[str, float]  # the launcher's timings, the runner's start-up and exit
    meters: dict[str, Any] | None = field(default=None, metadata=TRIAL_ONLY)
    cooldown: dict[str, Any] | None = field(default=None, metadata=TRIAL_ONLY)
    begin_unix: float | None = field(default=None, metadata=TRIAL_ONLY)  # the launch
    # cooldown and idle included (the baseline may be older)
    trial_start_unix: float | None = field(default=None, metadata=TRIAL_ONLY)
    node: dict[str, Any] | None = field(default=None, metadata=TRIAL_ONLY)  # hostname, shard, Slurm task
    # a later pass (agreement) may rewrite the file: the time the trial's record was made
    recorded_unix: float | None = field(default=None, metadata=TRIAL_ONLY)
    # the hash of the sources the image was built from (its label, orchestrator/images.py): what a reproduction
    # must build again to run the same image
    image_sources: str | None = field(default=None, metadata=TRIAL_ONLY)
    # the base image it was built FROM (tag@digest, or tag@local id for a base made on the host)
    image_base: str | None = field(default=None, metadata=TRIAL_ONLY)

    @classmethod
    def launched(cls, o: Outcome, spec: LaunchSpec, run_root: Path, record: dict[str, Any],
                 container: dict[str, Any] | None) -> HostFacts:
        """The facts of one launch; ``container``: its host window within the trial's boundary."""
        return cls(launcher=o.facts.get("launcher"), container_id=o.facts.get("container_id"),
                   image=o.facts.get("image"), image_id=o.facts.get("image_id"), limits=o.facts.get("limits"),
                   image_sources=o.facts.get("image_sources"), image_base=o.facts.get("image_base"),
                   exit_code=o.exit_code, oom_killed=o.oom_killed, timed_out=o.timed_out,
                   started_unix=o.facts.get("started_unix"), exited_unix=o.facts.get("exited_unix"),
                   container=container, idle=None, log=str(spec.log_path.relative_to(run_root)),
                   log_tail=tail(spec.log_path) if record["status"] != "ok" else None,
                   overhead_s={**o.timings, **runner_span(record, o.facts)})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.metadata.get("trial_only") and getattr(self, f.name) is None)}


def judge(o: Outcome, job: dict[str, Any], spec: LaunchSpec, mode: str) -> dict[str, Any]:
    """The runner's record, ok only when the runner exited 0 with an ok record; otherwise failed, with the most
    specific reason (a record of the orchestrator's own when the runner wrote none)."""
    rec = o.record
    reason = _failure(o, spec)
    if rec is None:
        rec = failed_record(job, *reason, mode=mode)  # type: ignore[misc]
    elif reason is not None:
        rec["status"] = "failed"
        rec["error"] = {"phase": reason[0], "type": reason[1], "message": reason[2],
                        "runner_error": rec.get("error")}
    if job.get("trial", {}).get("image_id"):  # known only once launched; the runner saw the trial without it
        rec.setdefault("trial", {})["image_id"] = job["trial"]["image_id"]
    return rec


def _failure(o: Outcome, spec: LaunchSpec) -> tuple[str, str, str] | None:
    """(phase, type, message) of a launch that failed, or None."""
    if o.launch_error:
        return "launch", "LaunchError", o.launch_error
    if o.timed_out:
        return "container", "Timeout", (f"no result within timeout_s={spec.timeout_s:g} s; the runner was killed "
                                        f"(exit {o.exit_code})")
    if o.oom_killed:
        return "container", "OOMKilled", f"killed for memory: over mem_limit={spec.mem_limit} (exit {o.exit_code})"
    if o.record is None:
        last = (tail(spec.log_path, 1) or "").strip()
        return "container", "NoRecord", (f"the runner exited with {o.exit_code} without writing a record"
                                         + (f": {last}" if last else ""))
    if o.exit_code != 0 and o.record.get("status") == "ok":
        return "container", "ExitCode", f"the runner wrote an ok record but exited with {o.exit_code}"
    return None


def runner_span(rec: dict[str, Any], facts: dict[str, Any]) -> dict[str, float]:
    """Time inside the container before the runner's first window and after its last one (interpreter start,
    imports, record writing): the part of the container's span that no runner window covers."""
    r = Record(rec)
    phases = [w for w in map(r.window, PHASES) if w is not None and "start_unix" in w]
    if not phases or not facts.get("started_unix") or not facts.get("exited_unix"):
        return {}
    return {"runner_startup_s": min(p["start_unix"] for p in phases) - facts["started_unix"],
            "runner_exit_s": facts["exited_unix"] - max(p["end_unix"] for p in phases)}


def tail(path: Path, lines: int = 20) -> str | None:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return None
