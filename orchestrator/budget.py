"""What a matrix will cost before it runs: trials, wall time, energy, and the share of wall time that is not a measured
generate window — per runtime × model and in total, from what this host has already recorded.

A trial's cost comes from ok records of this host for the same runtime image, model, engine and precision (a real run,
or the short calibration that ``orchestrate.py plan --calibrate`` runs through the same containers): its fixed part
(idle baseline, cooldown, container start, imports, model load, warm-up: wall time minus the generate window) as
recorded, its generate part scaled by the work asked (prompts × new tokens per prompt). A cell with no such record is
*extrapolated* from records of the same image, engine, precision and work on another model, its generate time and
energy per token scaled by parameters (batch-1 decode reads every weight once per token) — said so on every row and
total, never mixed silently with what was recorded — or, when there is none either, *unknown*: listed, never guessed.
"""

from __future__ import annotations

import json
import socket
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from runners.record import HOST_WINDOW, Record, work_label

CALIBRATION_PROMPTS = 4  # per cell: enough for a per-prompt generate time, few enough to be quick
CALIBRATION_PREFIX = "calibration-"


@dataclass(frozen=True)
class Sample:
    """One ok trial of this host, reduced to what an estimate needs."""
    # (image tag, model, engine, precision, work: same work N tokens / as served, engine options as JSON)
    key: tuple[str, str, str, str, str, str]
    image_id: str | None
    wall_s: float  # idle baseline start (or trial start) to the record
    generate_s: float
    tokens: int  # new tokens generated in the window
    prompts: int
    energy_j: float | None  # the host's container window (what the trial cost), gross
    generate_j: float | None
    generate_j_per_token: float | None  # the record's J/token (its metrics), in the generate window's source
    source: str | None  # measured | estimated
    run_id: str
    params: float | None = None  # the model's parameters (the record's count), for extrapolating to another size


def options_key(options: dict[str, Any] | None) -> str:
    """Engine options as part of what a cell is: OpenVINO stateful and without KV cache share image, engine and
    precision but not their cost."""
    return json.dumps(options or {}, sort_keys=True)


def sample(record: dict[str, Any] | Record) -> Sample | None:
    r = record if isinstance(record, Record) else Record(record)
    wall, gen_s = r.wall_s(), r.duration("generate")
    if not r.is_ok_run or not (wall and gen_s):
        return None
    container, gen = r.energy(HOST_WINDOW), r.energy("generate")
    return Sample(key=(r.host.get("image") or "", r.model_name or "", r.engine_name or "", r.precision, r.work,
                       options_key(r.engine_options)),
                  image_id=r.host.get("image_id"), wall_s=wall, generate_s=gen_s, tokens=r.output_tokens,
                  prompts=r.prompt_count, energy_j=container.joules if container else None,
                  generate_j=gen.joules if gen else None,
                  generate_j_per_token=r.metrics().j_per_token.get(gen.source) if gen and gen.source else None,
                  source=container.source if container else None,
                  run_id=r.run_id or "", params=r.params_b * 1e9 if r.params_b else None)


def host_samples(results: Path, hostname: str | None = None) -> list[Sample]:
    """Every ok trial recorded on this host under results/ (any run, calibrations included)."""
    hostname = hostname or socket.gethostname()
    out = []
    for f in sorted(Path(results).glob("*/trials/*.json")):
        rec = Record.read(f)
        if rec is None or rec.environment.get("hostname") not in (hostname, None):
            continue
        s = sample(rec)
        if s is not None:
            out.append(s)
    return out


@dataclass
class Estimate:
    runtime: str
    model: str
    trials: int
    wall_s: float | None = None
    energy_j: float | None = None
    outside_s: float | None = None  # wall time that is not a measured generate window
    source: str | None = None
    basis: str | None = None  # which records it comes from, or why it is unknown
    extrapolated: bool = False  # from another model's records, scaled by parameters

    @property
    def known(self) -> bool:
        return self.wall_s is not None


def cell_work(matrix, cell) -> tuple[int, int | None]:
    """(prompts, new tokens per prompt or None when only max_length bounds it) of a cell's trials."""
    workload = matrix.job["workload"]
    generation = {**matrix.job["generation"], **cell.setting.generation}
    prompts = workload.get("count") or 164
    new = generation.get("new_tokens") if "max_length" not in cell.setting.generation else None
    if new is None and generation.get("max_length") is None:
        new = 128
    return int(prompts), (int(new) if new is not None else None)


def estimate(plan, trials: Iterable, samples: list[Sample], image_ids: dict[str, str] | None = None
             ) -> list[Estimate]:
    """Per runtime × model of the selected trials: trials, expected wall time and energy, the non-measured share."""
    by_key: dict[tuple, list[Sample]] = {}
    for s in samples:
        by_key.setdefault(s.key, []).append(s)
    groups: dict[tuple[str, str], list] = {}
    for t in trials:
        groups.setdefault((t.cell.runtime.name, t.cell.model.name), []).append(t)
    out = []
    for (runtime, model), ts in groups.items():
        e = Estimate(runtime, model, len(ts), wall_s=0.0, energy_j=0.0, outside_s=0.0)
        sources, bases, missing = set(), set(), []
        for t in ts:
            cell = t.cell
            generation = {**plan.matrix.job["generation"], **cell.setting.generation}
            if "max_length" in cell.setting.generation:
                generation.pop("new_tokens", None)
            if "new_tokens" in cell.setting.generation:
                generation.pop("max_length", None)
            key = (cell.runtime.spec.image, cell.model.name, cell.engine, cell.setting.precision,
                   work_label({"fixed_length": True, **generation}), options_key(cell.runtime.engine_options))
            same_image = (lambda pool: [s for s in pool if s.image_id == image_ids[cell.runtime.spec.image]]
                          if image_ids and cell.runtime.spec.image in image_ids else pool)  # not an older build
            pool = same_image(by_key.get(key, []))
            scale = 1.0
            if not pool and cell.model.params_b:  # another model's records of the same cell kind, scaled by size
                kin = same_image([s for k, ss in by_key.items() if (k[0], *k[2:]) == (key[0], *key[2:]) for s in ss
                                  if s.params])
                if kin:
                    near = min({s.key[1] for s in kin}, key=lambda m: abs(
                        next(s.params for s in kin if s.key[1] == m) - cell.model.params_b * 1e9))
                    pool = [s for s in kin if s.key[1] == near]
                    scale = cell.model.params_b * 1e9 / statistics.median(s.params for s in pool)
                    e.extrapolated = True
                    bases.add(f"scaled ×{scale:.3g} from {near} (parameters)")
            if not pool:
                missing.append(f"{cell.engine} {cell.setting.precision}")
                continue
            prompts, new = cell_work(plan.matrix, cell)
            fixed = statistics.median(s.wall_s - s.generate_s for s in pool)
            per_token = scale * statistics.median(s.generate_s / s.tokens for s in pool if s.tokens)
            # max_length bounds prompt + new tokens: the new tokens per prompt are the samples' (same workload)
            tokens = prompts * (new if new else statistics.median(s.tokens / s.prompts for s in pool if s.prompts))
            gen_s = per_token * tokens
            e.wall_s += fixed + gen_s
            e.outside_s += fixed
            with_energy = [s for s in pool if s.energy_j is not None and s.generate_j_per_token is not None]
            if with_energy and e.energy_j is not None:
                fixed_j = statistics.median(s.energy_j - s.generate_j for s in with_energy)
                per_token_j = scale * statistics.median(s.generate_j_per_token for s in with_energy)
                e.energy_j += fixed_j + per_token_j * tokens
                sources.update(s.source for s in with_energy)
            else:
                e.energy_j = None
            bases.update(s.run_id for s in pool)
        if missing:
            out.append(Estimate(runtime, model, len(ts), source=None,
                                basis=f"unknown: {', '.join(sorted(set(missing)))}"))
            continue
        e.source = "+".join(sorted(sources)) or None
        e.basis = ", ".join(sorted(bases))
        out.append(e)
    return out
