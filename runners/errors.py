"""The runner's one error type for bad input: its own module, so that the job contract, the engines and the workload
can all raise it without importing each other."""

from __future__ import annotations


class JobError(ValueError):
    """A bad job: names the field, what is wrong and how to fix it, in one line."""

    def __init__(self, field_path: str, problem: str, fix: str):
        self.field = field_path
        self.problem = problem
        self.fix = fix
        super().__init__(f"job.{field_path}: {problem} — {fix}")
