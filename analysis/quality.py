"""Whether the answers work: HumanEval pass@1 per trial and configuration, energy per solved task, and each
configuration's tasks gained and lost against the reference (McNemar's exact test, Holm-corrected).

Reads results/<run>/evaluations/*.json (``orchestrate.py evaluate``). Definitions:

- pass@1 of a trial: tasks passed ÷ tasks evaluated (greedy decoding: one sample per task). Per configuration: the mean
  over its trials, with a Wilson 95 % interval for n = tasks per trial (repetitions of greedy decoding repeat the same
  answers, so they are not extra samples).
- pass@k from n samples per task with c correct: the unbiased estimator 1 − C(n−c, k) / C(n, k) (Chen et al. 2021),
  for runs that draw several samples per task.
- energy per solved task: the trial's net generate energy (idle subtracted, within its energy boundary) ÷ tasks
  passed; "none solved" when nothing passed — never infinity.
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

NONE_SOLVED = "none solved"


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
    """The ok trials that were evaluated, with pass@1 and J per solved task (net generate energy ÷ passed)."""
    if evaluations.empty or ok.empty:
        return pd.DataFrame()
    t = ok.merge(evaluations, on="trial_id", how="inner")
    t["pass_at_1"] = t["tasks_passed"] / t["tasks_total"]
    net = pd.to_numeric(t["net_energy_j"], errors="coerce")
    t["j_per_solved"] = net / t["tasks_passed"].where(t["tasks_passed"] > 0)
    return t


def quality_table(q: pd.DataFrame) -> pd.DataFrame:
    """Per model × configuration (× energy boundary): pass@1 [Wilson 95 %], J/token, J per solved task."""
    if q.empty:
        return pd.DataFrame()
    rows = []
    for (model, config, mode), g in q.groupby(["model", "config", "eval_mode"], sort=True):
        n = int(g["tasks_total"].iloc[0])
        p = float(g["pass_at_1"].mean())
        lo, hi = wilson(p * n, n)
        solved = g["tasks_passed"]
        j_solved = g["j_per_solved"].median() if (solved > 0).all() else np.nan
        rows.append({"model": model, "config": config, "mode": mode, "trials": len(g), "tasks": n,
                     "pass@1": p, "ci_low": lo, "ci_high": hi,
                     "j_per_token": float(g["j_per_token"].median()) if g["j_per_token"].notna().any() else np.nan,
                     "j_per_solved": j_solved,
                     "j_per_solved_note": None if (solved > 0).all() else NONE_SOLVED if (solved == 0).all()
                     else "some trials solved none",
                     "energy_boundary": "; ".join(sorted(set(g["energy_boundary"].dropna())))})
    return pd.DataFrame(rows)


def _solved_by_config(q: pd.DataFrame, tasks: pd.DataFrame) -> dict[tuple[str, str, str], pd.Series]:
    """(model, config, mode) -> per task: passed in the majority of the configuration's trials."""
    merged = tasks.merge(q[["trial_id", "model", "config", "eval_mode"]], on="trial_id")
    merged["passed"] = merged["outcome"] == "passed"
    out = {}
    for key, g in merged.groupby(["model", "config", "eval_mode"]):
        out[key] = g.groupby("task_id")["passed"].mean() > 0.5
    return out


def paired_vs_reference(q: pd.DataFrame, tasks: pd.DataFrame, reference: dict) -> pd.DataFrame:
    """Per model × configuration: tasks gained and lost against the reference configuration, McNemar exact p,
    Holm-adjusted within the model."""
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.multitest import multipletests

    if q.empty or tasks.empty:
        return pd.DataFrame()
    solved = _solved_by_config(q, tasks)
    is_ref = ((q["engine"] == reference["engine"]) & (q["precision"] == reference["precision"])
              & q["device"].isin(reference["devices"]))
    rows = []
    for (model, mode), g in q.groupby(["model", "eval_mode"]):
        refs = g[is_ref.loc[g.index]]
        if refs.empty:
            continue
        # the preferred device's reference, as the agreement does
        ref_cfg = refs.sort_values("device", key=lambda d: d.map({x: i for i, x in
                                                                    enumerate(reference["devices"])}))["config"].iloc[0]
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
                         "mcnemar_p": p})
        if part:
            adjusted = multipletests([r["mcnemar_p"] for r in part], method="holm")[1]
            for r, adj in zip(part, adjusted):
                r["p_holm"] = float(adj)
            rows += part
    return pd.DataFrame(rows)
