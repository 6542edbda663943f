"""Cells and trials: the matrix expanded (runtime × engine × model × setting × repetition) in a seeded order.

The order is a function of the matrix alone (its seed and its full selection), so CLI filters, resumes and skips never
change which position a trial has; ``order_index`` and the seed go into every record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from orchestrator.matrix import (Matrix, MatrixError, ModelEntry, RuntimeEntry, Setting, family_members, greedy_only,
                                 single_gpu)
from orchestrator.matrix_entries import setting_families
from orchestrator.sweep import compact_names, unhonoured


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
        for given, pool, what in ((runtimes, list(m.runtimes), "runtime"), (models, list(m.models), "model"),
                                  (settings, [*m.settings, *setting_families(m.settings)], "setting")):
            for g in given or ():
                if g not in pool:
                    raise MatrixError(str(m.path), f"--{what} {g}", "is not in this matrix",
                                      f"use one of: {', '.join(pool)}")
        settings = family_members(settings, m.settings)  # --setting precision: every setting of that family
        return [t for t in self.trials
                if (not runtimes or t.cell.runtime.name in runtimes) and (not models or t.cell.model.name in models)
                and (not settings or t.cell.setting.name in settings)]


def expand(matrix: Matrix) -> Plan:
    cells = []
    # combinations that are not cells, grouped: one line per runtime/engine and reason, its settings listed
    skipped: dict[tuple[str, str], list[str]] = {}
    for r in matrix.runtimes.values():
        own = family_members(list(r.settings), matrix.settings) if r.settings is not None else None
        for e in r.engines:
            offered = r.spec.engine_precisions(e)
            for s in matrix.settings.values():
                if own is not None and s.name not in own:
                    skipped.setdefault((f"{r.name}/{e}", f"the entry runs {', '.join(r.settings)} only"),
                                       []).append(s.name)
                    continue
                if s.devices is not None and r.spec.device not in s.devices:
                    skipped.setdefault((f"{r.name}/{e}", f"for {' and '.join(s.devices)} runtimes only"),
                                       []).append(s.name)
                    continue
                why = unhonoured(s.axes, r.spec.device) or greedy_only(e, s) or single_gpu(e, s)
                if why:
                    skipped.setdefault((f"{r.name}/{e}", why), []).append(s.name)
                    continue
                if s.precision not in offered:
                    skipped.setdefault((f"{r.name}/{e}", f"engine offers {', '.join(offered)} on {r.spec.device}"),
                                       []).append(s.name)
                    continue
                cells += [Cell(r, e, m, s) for m in matrix.models.values() if r.models is None or m.name in r.models]
    excluded = [f"{where} × {', '.join(compact_names(names, matrix.settings.values()))}: {why}"
                for (where, why), names in skipped.items()]
    excluded += [f"{r.name} × {', '.join(sorted(set(matrix.models) - set(r.models)))}: the entry runs "
                 f"{', '.join(r.models)} only" for r in matrix.runtimes.values()
                 if r.models is not None and set(matrix.models) - set(r.models)]
    # Canonical order first (sorted ids), then one seeded shuffle: same matrix + seed → same order anywhere.
    pending = sorted(((c, rep) for c in cells for rep in range(matrix.repetitions)),
                     key=lambda cr: (cr[0].id, cr[1]))
    random.Random(matrix.seed).shuffle(pending)
    trials = [Trial(c, rep, i) for i, (c, rep) in enumerate(pending)]
    return Plan(matrix, cells, trials, excluded)
