"""Cells and trials: the matrix expanded (runtime × engine × model × setting × repetition) in a seeded order.

The order is a function of the matrix alone (its seed and its full selection), so CLI filters, resumes and skips never
change which position a trial has; ``order_index`` and the seed go into every record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from orchestrator.matrix import Matrix, MatrixError, ModelEntry, RuntimeEntry, Setting


@dataclass(frozen=True)
class Cell:
    runtime: RuntimeEntry
    engine: str
    model: ModelEntry
    setting: Setting

    @property
    def id(self) -> str:
        return f"{self.runtime.name}__{self.engine}__{self.model.name}__{self.setting.name}"

    @property
    def label(self) -> str:
        return f"{self.runtime.name}/{self.engine} {self.model.name} {self.setting.name}"


@dataclass(frozen=True)
class Trial:
    cell: Cell
    repetition: int
    order_index: int

    @property
    def id(self) -> str:
        return f"{self.cell.id}__r{self.repetition:02d}"

    @property
    def label(self) -> str:
        return f"{self.cell.label} r{self.repetition}"


@dataclass
class Plan:
    matrix: Matrix
    cells: list[Cell]
    trials: list[Trial]  # in run order
    excluded: list[str]  # runtime × setting pairs that are no cell, with the reason

    def select(self, *, runtimes: list[str] | None = None, models: list[str] | None = None,
               settings: list[str] | None = None) -> list[Trial]:
        """The trials this invocation works on (CLI filters); positions stay those of the whole matrix."""
        m = self.matrix
        for given, pool, what in ((runtimes, m.runtimes, "runtime"), (models, m.models, "model"),
                                  (settings, m.settings, "setting")):
            for g in given or ():
                if g not in pool:
                    raise MatrixError(str(m.path), f"--{what} {g}", "is not in this matrix",
                                      f"use one of: {', '.join(pool)}")
        return [t for t in self.trials
                if (not runtimes or t.cell.runtime.name in runtimes) and (not models or t.cell.model.name in models)
                and (not settings or t.cell.setting.name in settings)]


def expand(matrix: Matrix) -> Plan:
    cells, excluded = [], []
    for r in matrix.runtimes.values():
        for s in matrix.settings.values():
            for e in r.engines:
                offered = r.spec.engine_precisions(e)
                if s.precision not in offered:
                    excluded.append(f"{r.name}/{e} × {s.name}: engine offers {', '.join(offered)} on "
                                    f"{r.spec.device}")
                    continue
                for m in matrix.models.values():
                    cells.append(Cell(r, e, m, s))
    # Canonical order first (sorted ids), then one seeded shuffle: same matrix + seed → same order anywhere.
    pending = sorted(((c, rep) for c in cells for rep in range(matrix.repetitions)),
                     key=lambda cr: (cr[0].id, cr[1]))
    random.Random(matrix.seed).shuffle(pending)
    trials = [Trial(c, rep, i) for i, (c, rep) in enumerate(pending)]
    return Plan(matrix, cells, trials, excluded)
