"""`plan --calibrate`: every selected cell once, on a few prompts, through the same containers — so that the budget
(orchestrator/budget.py) knows cells this host has not run yet. The calibration is a matrix of its own, built in
memory from the matrix, and runs as an ordinary run (orchestrator/session.py) under its own run id.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import tomllib

from orchestrator.budget import CALIBRATION_PREFIX, CALIBRATION_PROMPTS
from orchestrator.matrix import Matrix
from orchestrator.tomlw import dumps

HUMANEVAL_TASKS = 164  # a workload without a count runs every HumanEval task (runners/job_spec.py)


def calibration_matrix(matrix: Matrix) -> Matrix:
    """The matrix's calibration: one repetition of every cell on at most CALIBRATION_PROMPTS prompts, named by the
    matrix's hash (an edited matrix calibrates anew, an unchanged one resumes). Its text — the run's snapshot, whose
    hash the run checks on resume — is the matrix's with those three keys changed."""
    data = tomllib.loads(matrix.text)
    name = f"{CALIBRATION_PREFIX}{matrix.name}-{matrix.hash[:8]}"
    data.setdefault("matrix", {}).update(name=name, repetitions=1)
    workload = data.setdefault("workload", {})
    workload["count"] = min(int(workload.get("count") or HUMANEVAL_TASKS), CALIBRATION_PROMPTS)
    text = f"# written by orchestrate.py plan --calibrate from {matrix.path}\n" + dumps(data)
    job = copy.deepcopy(matrix.job)
    job["workload"]["count"] = workload["count"]
    return dataclasses.replace(matrix, text=text, hash=hashlib.sha256(text.encode()).hexdigest(), name=name,
                               repetitions=1, job=job)
