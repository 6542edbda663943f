"""``orchestrate.py evaluate``: every ok trial of a run whose workload is HumanEval's full prompts, evaluated in the
sandbox, after the run and outside every measured window; results/<run>/evaluations/<trial>.json per trial.

Resumable like trials: a trial with an evaluation file is not evaluated again; an interrupted evaluation leaves no file
(atomic writes). Two modes, named in every evaluation from the job: *same work* (fixed_length: exactly N tokens were
generated everywhere; the completion is cut at HumanEval's stop sequences here, the same rule for every engine) and
*as served* (the engine stopped at EOS; the same cut applies to what it produced).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from evaluation import humaneval as he
from runners.record import Record, write_json_atomic

SCHEMA = "slm-matrix.evaluation/1"
OUTCOMES = ("passed", "failed", "error", "timeout")


def not_evaluable(record: dict[str, Any]) -> str | None:
    """Why a record cannot be evaluated, or None."""
    r = Record(record)
    if not r.is_ok_run:
        return "not an ok run trial"
    if r.workload.get("dataset", "humaneval") != "humaneval" or r.workload.get("style") != "full":
        return "its workload is not HumanEval's full prompts (fragments are not programs)"
    if any("output_text" not in p for p in r.per_prompt):
        return "its record has no output_text (made by a runner before evaluation existed): run the trial again"
    return None


def mode(record: dict[str, Any]) -> str:
    return "same-work" if Record(record).fixed_length else "as-served"


def tasks(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"task_id": p["task_id"], "program": he.program(p["task_id"], he.cut(p["output_text"])),
             "timeout_s": he.TIMEOUT_S} for p in Record(record).per_prompt]


def evaluation_of(trial_id: str, record: dict[str, Any], outcomes: list[dict[str, Any]],
                  sandbox_facts: dict[str, Any], seconds: float) -> dict[str, Any]:
    r = Record(record)
    cuts = [he.split(p["output_text"]) for p in r.per_prompt]
    rows = [{"task_id": o["task_id"], "outcome": o["outcome"], "error_type": o.get("error_type"),
             "seconds": o.get("seconds"), "stop": stop, "completion_chars": len(text)}
            for o, (text, stop) in zip(outcomes, cuts)]
    return {
        "schema": SCHEMA, "trial_id": trial_id, "run_id": r.run_id, "model": r.model_name,
        "engine": r.engine_name, "device": r.device, "precision": r.precision, "mode": mode(record),
        "new_tokens": r.generation.get("new_tokens"),
        "stop_sequences": list(he.STOP_SEQUENCES), "timeout_s": he.TIMEOUT_S,
        "tasks": rows, "total": len(rows), "passed": sum(row["outcome"] == "passed" for row in rows),
        "sandbox": sandbox_facts, "seconds": round(seconds, 2), "evaluated_unix": time.time(),
    }


def evaluate_run(store, sandbox, sandbox_facts: dict[str, Any], log: Callable[[str], None] = print
                 ) -> dict[str, int]:
    """Evaluate what is not yet evaluated; {"evaluated", "already", "not_evaluable"}. ``sandbox``: an
    evaluation.sandbox.Sandbox over the container the orchestrator gives it (orchestrator/docker_sandbox.py)."""
    counts = {"evaluated": 0, "already": 0, "not_evaluable": 0}
    for trial_id, record in store.records().items():
        if not_evaluable(record):
            counts["not_evaluable"] += 1
            continue
        path = store.evaluation_path(trial_id)
        if path.exists():
            counts["already"] += 1
            continue
        t0 = time.monotonic()
        outcomes = sandbox.evaluate(tasks(record))
        ev = evaluation_of(trial_id, record, outcomes, sandbox_facts, time.monotonic() - t0)
        write_json_atomic(path, ev)
        counts["evaluated"] += 1
        log(f"  evaluated {trial_id}: {ev['passed']}/{ev['total']} passed ({ev['mode']}, {ev['seconds']:.1f} s)")
    return counts


def read_evaluations(run_dir: Path) -> dict[str, dict[str, Any]]:
    """trial id -> its evaluation, for every evaluation file of a run."""
    import json

    out = {}
    for p in sorted((Path(run_dir) / "evaluations").glob("*.json")):
        data = json.loads(p.read_text())
        if data.get("schema") == SCHEMA:
            out[data["trial_id"]] = data
    return out
