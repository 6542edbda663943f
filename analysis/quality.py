"""Whether the answers work: HumanEval pass@1 per trial and configuration, energy per solved task, and each
configuration's tasks gained and lost against the reference (McNemar's exact test, Holm-corrected).

Reads results/<run>/evaluations/*.json (``orchestrate.py evaluate``). Definitions:

- pass@1 of a trial: tasks passed ÷ tasks evaluated (greedy decoding: one sample per task). Per configuration: the mean
  over its trials, with a Wilson 95 % interval for n = tasks per trial (repetitions of greedy decoding repeat the same
  answers, so they are not extra samples).
- pass@k from n samples per task with c correct: the unbiased estimator 1 − C(n−c, k) / C(n, k) (Chen et al. 2021),
  for runs that draw several samples per task.
- energy per solved task: the trial's net generate energy (idle subtracted, within its energy boundary) ÷ tasks
  passed; "none solved" when nothing passed — never infinity. J/token beside it is from the same net energy.
- the pass@1 vs J/token Pareto front is drawn per model × energy boundary (the comparison group) over the
  configurations every other comparison uses (analysis/figures.py).
- paired comparison with the reference configuration of the same model (torch fp32 by default): per task, passed by
  one and not the other (a task counts as passed by a configuration when it passed in the majority of its trials);
  McNemar's exact test on the discordant tasks, Holm-corrected across the model's configurations.
"""

from __future__ import annotations

from math import comb
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from runners.agreement import ReferencePolicy

NONE_SOLVED = "none solved"
NO_NET = "no net energy (no idle baseline of every component)"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def wilson(passed: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(passed, n, alpha=alpha, method="wilson")
    return float(lo), float(hi)


def load_evaluations(run_dirs: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per evaluated trial, one row per trial × task)."""
    from evaluation.evaluate import read_evaluations

    trials, tasks = [], []
    for run_dir in map(Path, run_dirs):
        for ev in read_evaluations(run_dir).values():
            trials.append({"trial_id": ev["trial_id"], "eval_mode": ev["mode"], "tasks_passed": ev["passed"],
                           "tasks_total": ev["total"], "eval_new_tokens": ev.get("new_tokens")})
            tasks += [{"trial_id": ev["trial_id"], "task_id": t["task_id"], "outcome": t["outcome"],
                       "error_type": t.get("error_type")} for t in ev["tasks"]]
    return pd.DataFrame(trials), pd.DataFrame(tasks)


def add_quality(ok: pd.DataFrame, evaluations: pd.DataFrame) -> pd.DataFrame:
    """The ok trials that were evaluated, with pass@1 and J per solved task from the net generate energy — the
    energy of ``j_per_token_net`` (analysis/metrics.py), so the two sit side by side on one footing."""
    if evaluations.empty or ok.empty:
        return pd.DataFrame()
    t = ok.merge(evaluations, on="trial_id", how="inner")
    t["pass_at_1"] = t["tasks_passed"] / t["tasks_total"]
    net = pd.to_numeric(t["net_energy_j"], errors="coerce")
    t["j_per_solved"] = net / t["tasks_passed"].where(t["tasks_passed"] > 0)
    return t


def _excluded(g: pd.DataFrame) -> str | None:
    """Why a configuration is kept out of every comparison (different work, repetitions from several machines)."""
    for col in ("different_output", "mixed_hardware"):
        if col in g and g[col].notna().any():
            return str(g[col].dropna().iloc[0])
    return None


def _solved_note(g: pd.DataFrame) -> str | None:
    solved = g["tasks_passed"]
    if (solved == 0).all():
        return NONE_SOLVED
    if g["j_per_token_net"].isna().all():
        return NO_NET
    return None if (solved > 0).all() else "some trials solved none"


def _energy_group(g: pd.DataFrame, model: str) -> str:
    """The comparison group of the configuration's trials that have a net figure (a trial whose figure the meters
    marked invalid sits in the 'no energy figure' group)."""
    if "group" not in g:
        return model
    groups = g.loc[g["j_per_token_net"].notna(), "group"]
    return str((groups if len(groups) else g["group"]).mode().iloc[0])


def quality_table(q: pd.DataFrame) -> pd.DataFrame:
    """Per model × configuration × mode: pass@1 [Wilson 95 %], net J/token and net J per solved task, the comparison
    group (model within one energy boundary) and why it is excluded from comparisons, if it is."""
    if q.empty:
        return pd.DataFrame()
    rows = []
    for (model, config, mode), g in q.groupby(["model", "config", "eval_mode"], sort=True):
        n = int(g["tasks_total"].iloc[0])  # greedy: repetitions repeat the same answers, not extra samples
        p = float(g["pass_at_1"].mean())
        lo, hi = wilson(p * n, n)
        note = _solved_note(g)
        rows.append({"model": model, "config": config, "mode": mode, "trials": len(g), "tasks": n,
                     "pass@1": p, "ci_low": lo, "ci_high": hi,
                     # medians over the trials with a net figure, both from the same trials' energy
                     "j_per_token": g["j_per_token_net"].median(),
                     "j_per_solved": g["j_per_solved"].median() if note is None else np.nan,
                     "j_per_solved_note": note, "group": _energy_group(g, model),
                     "energy_boundary": "; ".join(sorted(set(g["energy_boundary"].dropna()))),
                     "excluded": _excluded(g)})
    return pd.DataFrame(rows)


def _solved_by_config(q: pd.DataFrame, tasks: pd.DataFrame) -> dict[tuple[str, str, str], pd.Series]:
    """(model, config, mode) -> per task: passed in the majority of the configuration's trials."""
    merged = tasks.merge(q[["trial_id", "model", "config", "eval_mode"]], on="trial_id")
    merged["passed"] = merged["outcome"] == "passed"
    out = {}
    for key, g in merged.groupby(["model", "config", "eval_mode"]):
        out[key] = g.groupby("task_id")["passed"].mean() > 0.5
    return out


def _verdict_of(g: pd.DataFrame, config: str) -> str | None:
    """The one verdict on a configuration (``ReferencePolicy.verdict``, set by analysis.metrics.flag_different_output
    under the same policy)."""
    if "different_output" not in g:
        return None
    found = g.loc[g["config"] == config, "different_output"].dropna()
    return str(found.iloc[0]) if len(found) else None


def paired_vs_reference(q: pd.DataFrame, tasks: pd.DataFrame,
                        reference: ReferencePolicy | dict | None = None) -> pd.DataFrame:
    """Per model × configuration: tasks gained and lost against the reference configuration of the run's policy
    (``reference``: a ReferencePolicy or its dict, defaults where None), McNemar exact p, Holm-adjusted within the
    model; ``different_output`` carries the policy's verdict (as analysis/metrics.py set it)."""
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.multitest import multipletests

    policy = ReferencePolicy.from_spec(reference)
    if q.empty or tasks.empty:
        return pd.DataFrame()
    solved = _solved_by_config(q, tasks)
    is_ref = pd.Series([policy.matches(e, p, d) for e, p, d in zip(q["engine"], q["precision"], q["device"])],
                       index=q.index, dtype=bool)
    rows = []
    for (model, mode), g in q.groupby(["model", "eval_mode"]):
        refs = g[is_ref.loc[g.index]]
        if refs.empty:
            continue
        # the preferred device's reference, as the agreement does
        ref_cfg = refs.sort_values("device", key=lambda d: d.map(policy.device_rank), kind="stable")["config"].iloc[0]
        base = solved[(model, ref_cfg, mode)]
        part = []
        for cfg in sorted(set(g["config"]) - {ref_cfg}):
            other = solved[(model, cfg, mode)]
            common = base.index.intersection(other.index)
            b, o = base.loc[common], other.loc[common]
            gained, lost = int((o & ~b).sum()), int((b & ~o).sum())
            table = [[int((b & o).sum()), lost], [gained, int((~b & ~o).sum())]]
            p = float(mcnemar(table, exact=True).pvalue)
            part.append({"model": model, "mode": mode, "reference": ref_cfg, "config": cfg, "tasks": len(common),
                         "gained": gained, "lost": lost, "lost_tasks": ", ".join(sorted(
                             (t for t in common if b[t] and not o[t]), key=lambda t: int(t.split("/")[-1]))),
                         "mcnemar_p": p, "different_output": _verdict_of(g, cfg)})
        if part:
            adjusted = multipletests([r["mcnemar_p"] for r in part], method="holm")[1]
            for r, adj in zip(part, adjusted):
                r["p_holm"] = float(adj)
            rows += part
    return pd.DataFrame(rows)
