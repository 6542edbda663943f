"""The sandbox, evaluation side: a batch of programs through the executor in a locked-down container, its outcome
lines read back, in order. The container is passed in (``Sandbox(container)``: orchestrator/docker_sandbox.py runs it
through the orchestrator's one Docker layer, with its lock-down); nothing here starts one or knows Docker.

A container that dies before the last program (the executor killed, the memory limit hit by the executor itself) is
not the end: the programs without an outcome go to a fresh container, and a program that killed two containers in a
row is recorded as an ``error`` ("sandbox died") — one hostile completion never costs the others their evaluation.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

PASSED_WHEN = "check(candidate) returned: the task's token came after the program, never the exit status alone"


class Container(Protocol):
    """What runs the executor (evaluation/executor.py) locked down: orchestrator.docker_sandbox.DockerSandbox."""

    def run(self, programs: str, timeout_s: float) -> tuple[str, str | None]:
        """The executor over these programs (JSON lines) in a fresh container, killed after timeout_s: (what it
        printed, why the container ended abnormally, or None)."""

    def describe(self) -> dict[str, Any]:
        """The container's lock-down, as facts kept in every evaluation."""


class Sandbox:
    def __init__(self, container: Container):
        self.container = container

    def _batch(self, tasks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """One container over these tasks: (outcomes in order, why it stopped early or None)."""
        budget = 30 + sum(float(t.get("timeout_s", 3.0)) + 2.0 for t in tasks)
        printed, why = self.container.run("".join(json.dumps(t) + "\n" for t in tasks), budget)
        out, done = [], False
        for line in printed.splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            if item.get("done"):
                done = True
            elif "task_id" in item:
                out.append(item)
        return out, (None if done else why or "the executor stopped before the end")

    def evaluate(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Outcomes for every task, in order: {"task_id", "outcome", "error_type", "seconds", "stderr_tail"}."""
        results: dict[int, dict[str, Any]] = {}
        pending = list(range(len(tasks)))
        strikes: dict[int, int] = {}
        while pending:
            got, why = self._batch([tasks[i] for i in pending])
            for i, item in zip(pending, got):
                results[i] = item
            pending = pending[len(got):]
            if pending and why:
                first = pending[0]  # the task that was running when the container died
                strikes[first] = strikes.get(first, 0) + 1
                if strikes[first] >= 2:
                    results[first] = {"task_id": tasks[first]["task_id"], "outcome": "error",
                                      "error_type": "sandbox died", "seconds": None, "stderr_tail": why}
                    pending = pending[1:]
        return [results[i] for i in range(len(tasks))]

    def describe(self) -> dict[str, Any]:
        # passed_when: evaluations written before this rule lack it (exit status 0 was a pass then)
        return {**self.container.describe(), "passed_when": PASSED_WHEN}
