"""Shards of a run for a cluster: whole models per shard, so each model's runtimes are measured on one node.

The per-model statistics compare runtimes with one another; measured on two different machines, a difference
between two runtimes would partly be a difference between two machines. So a shard holds every trial of its models
(all their runtimes, settings and repetitions) and never part of a model. Models are spread over the shards by their
expected cost (trials × parameters), largest first, each onto the lightest shard so far; the assignment is a function
of the matrix and the shard count alone, so every array task computes the same one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from orchestrator.matrix import MatrixError
from orchestrator.plan import Plan, Trial

SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Sharding:
    count: int
    models: dict[str, int]  # model -> shard index

    def shard_of(self, trial: Trial) -> int:
        return self.models[trial.cell.model.name]

    def trials(self, trials: list[Trial], index: int) -> list[Trial]:
        """The shard's trials, in the run's order."""
        return [t for t in trials if self.models[t.cell.model.name] == index]

    def to_dict(self) -> dict:
        return {"count": self.count, "models": dict(sorted(self.models.items()))}


def parse(text: str) -> tuple[int, int]:
    """"i/N" (0 ≤ i < N) -> (i, N)."""
    m = SHARD_RE.match(text or "")
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise MatrixError("--shard", text, "must be i/N with 0 ≤ i < N (e.g. 0/4)",
                          "give the array task's index and the shard count, e.g. --shard $SLURM_ARRAY_TASK_ID/4")
    return int(m.group(1)), int(m.group(2))


def assign(plan: Plan, count: int) -> Sharding:
    """Whole models onto ``count`` shards, balanced by trials × parameters (a model of unknown size counts as 1 B)."""
    models = plan.matrix.models
    if count < 1:
        raise MatrixError("--shards", str(count), "must be at least 1", "give the number of nodes to spread over")
    if count > len(models):
        raise MatrixError("--shards", str(count), f"the matrix has {len(models)} model(s), and a model is never split "
                          "over nodes (its runtimes are compared on one machine)",
                          f"use at most {len(models)} shards, or add models")
    trials: dict[str, int] = {}
    for t in plan.trials:
        trials[t.cell.model.name] = trials.get(t.cell.model.name, 0) + 1
    cost = {name: trials.get(name, 0) * (m.params_b or 1.0) for name, m in models.items()}
    load = [0.0] * count
    out: dict[str, int] = {}
    for name in sorted(cost, key=lambda n: (-cost[n], n)):
        i = min(range(count), key=lambda k: (load[k], k))
        out[name] = i
        load[i] += cost[name]
    return Sharding(count, out)


def from_dict(data: dict) -> Sharding:
    return Sharding(int(data["count"]), {str(k): int(v) for k, v in data["models"].items()})


def run_sharding(store, plan: Plan, count: int | None) -> Sharding:
    """The run's sharding: the one written when it was first submitted (every task and resubmission uses it), else
    computed by the same rule and written, so that later ones agree."""
    from runners.record import write_json_atomic

    path = store.slurm_dir / "sharding.json"
    if path.is_file():
        sharding = from_dict(json.loads(path.read_text()))
        if count is not None and count != sharding.count:
            raise MatrixError("--shards", str(count), f"run {store.run_id} is sharded {sharding.count} ways ({path})",
                              f"use {sharding.count}, or start a new --run-id")
        return sharding
    sharding = assign(plan, len(plan.matrix.models) if count is None else count)
    write_json_atomic(path, sharding.to_dict())
    return sharding
