"""The report's tables, as data frames: summaries, agreement with the reference, work kept out of comparisons,
preparation, meter validity, statistics and pass@1. ``analysis.report_sections`` lays them out."""

from __future__ import annotations

import pandas as pd

from analysis.metrics import SUMMARY_COLUMNS
from analysis.report_analysis import Analysis
from analysis.report_format import fmt
from analysis.stats import CONFIDENCE, Comparison, fmt_p
from runners.agreement import NOT_APPLICABLE

AGREEMENT_KEYS = ["model", "engine", "runtime", "precision", "config"]


def split_models(a: Analysis) -> dict[str, dict[str, list[str]]]:
    """model -> {energy boundary: configurations}, for models whose configurations were measured on more than one
    boundary (their energy is compared within each boundary only)."""
    out = {}
    for model, part in a.medians.groupby("model") if not a.medians.empty else []:
        bounds = part.groupby(part["energy_boundary"].astype(object).fillna("no energy figure"))["config"].agg(sorted)
        if len(bounds) > 1:
            out[model] = {b: list(c) for b, c in bounds.items()}
    return out


def no_reference(a: Analysis) -> pd.DataFrame:
    """Model × configuration rows whose work had no agreement reference."""
    ok = a.ok
    if ok.empty or "agreement_status" not in ok:
        return pd.DataFrame(columns=["model", "config", "agreement_note"])
    miss = ok[~ok["agreement_status"].isin(["compared", NOT_APPLICABLE["status"]])]
    note = miss["agreement_note"].astype(object)  # all-None is read as a float column
    miss = miss.assign(agreement_note=note.fillna("no agreement recorded for these trials"))
    return miss.groupby(["model", "config"], as_index=False)["agreement_note"].first()


def sampled_configs(a: Analysis) -> list[str]:
    """Model × configuration labels whose decoding was sampled: never in the agreement table, said in words."""
    ok = a.ok
    if ok.empty or "agreement_status" not in ok:
        return []
    hit = ok[ok["agreement_status"] == NOT_APPLICABLE["status"]]
    return sorted({f"{r.model} {r.config}" for r in hit.itertuples()})


def _agreement_verdict(g: pd.DataFrame) -> str:
    """The verdict on one row of the agreement table, in words: the one verdict (ReferencePolicy.verdict, already
    in ``different_output``), or unknown for want of a reference."""
    different = g["different_output"].dropna() if "different_output" in g else g.iloc[:0]
    if len(different):
        return f"different work: {different.iloc[0]}"
    if (g["agreement_status"] == "compared").any():
        return "same work"
    note = g["agreement_note"].astype(object).dropna()
    return "unknown, no reference: " + (note.iloc[0] if len(note) else "no agreement recorded for these trials")


def agreement_table(a: Analysis) -> pd.DataFrame:
    """Agreement with the reference for every successful configuration, compared or kept out: one row per model ×
    engine × runtime (image folder) × precision, so two images of one engine are two rows; the worst trial's share of
    prompts token-identical to the reference (what the verdict reads) and the verdict."""
    every = a.every
    columns = [*AGREEMENT_KEYS, "trials", "identical (worst trial)", "verdict"]
    if every.empty or "agreement_status" not in every:
        return pd.DataFrame(columns=columns)
    every = every[every["agreement_status"] != NOT_APPLICABLE["status"]]  # sampled: said apart (sampled_configs)
    rows = [(*key, len(g), g["agreement"].min(), _agreement_verdict(g))
            for key, g in every.groupby(AGREEMENT_KEYS, dropna=False, sort=True)]
    return pd.DataFrame(rows, columns=columns)


def different_table(a: Analysis) -> pd.DataFrame:
    """Model × configuration rows that did not do the reference's work, with the reason and their figures."""
    d = a.different
    if d.empty:
        return pd.DataFrame(columns=["model", "config", "trials", "identical", "reason"])
    return d.groupby(["model", "config"], as_index=False).agg(
        trials=("trial_id", "size"), identical=("agreement", "min"), reason=("different_output", "first"),
        j_per_token=("j_per_token", "median"), tokens_per_s=("tokens_per_s", "median"))


def validity_table(a: Analysis) -> pd.DataFrame:
    """Every meter-validity flag of the successful trials (windows the counter cannot resolve, rejected counters,
    counter vs integrated power, host trace problems), with the host trace's boundary error."""
    ok = a.ok
    if ok.empty or "meter_flags" not in ok:
        return pd.DataFrame()
    f = ok[ok["meter_flags"].notna()]
    return f[["model", "config", "repetition", "duration_s", "boundary_error_j", "meter_flags"]].rename(
        columns={"duration_s": "window s", "boundary_error_j": "boundary error J", "meter_flags": "flags"})


def summary_tables(a: Analysis) -> dict[str, pd.DataFrame]:
    m = a.medians
    if m.empty:
        return {}
    keys = ["model", "size_group", "config", "n", "energy_boundary"]
    labels = dict(SUMMARY_COLUMNS)
    energy_cols = ["energy_j", "net_energy_j", "j_per_token", "j_per_prompt", "wh_per_1000_prompts", "tokens_per_wh",
                   "edp_js", "edp_per_b", "wh_per_b", "co2_g"]
    perf_cols = ["duration_s", "tokens_per_s", "ttft_s_median", "tpot_s_median", "agreement"]
    res_cols = [c for c in a.ok.columns if c.startswith("sampled_") and (
        ("util" in c and c.endswith("_mean")) or (("mem" in c or "rss" in c) and c.endswith("_max")))]
    none = m[m["energy_j"].isna()]
    left = "; ".join(f"{r.model} · {r.config}" for r in none.itertuples())
    out = {
        "Energy (medians over repetitions" + (f"; left out, no energy figure: {left})" if left else ")"):
            m[m["energy_j"].notna()][keys + energy_cols].rename(
            columns={**labels, "energy_boundary": "energy boundary (source)", "size_group": "size"}),
        "Time and output (medians over repetitions)": m[keys[:4] + perf_cols].rename(
            columns={**labels, "size_group": "size"}),
    }
    if res_cols:
        res = a.ok.groupby(["model", "config"])[res_cols].median().reset_index()
        out["Utilisation and memory (sampled, medians over repetitions)"] = res.rename(
            columns={c: c.removeprefix("sampled_") for c in res_cols})
    return out


def preparation_table(a: Analysis) -> pd.DataFrame:
    """The prepare records (conversions into the cache): time and energy, per source, never summed."""
    t = a.tables.trials
    prep = t[t["mode"] == "prepare"]
    cols = ["model", "config", "status", "prepare_cached", "prepare_conversion", "prepare_duration_s",
            "prepare_energy_measured_j", "prepare_energy_estimated_j"]
    return prep.reindex(columns=cols).rename(columns={
        "prepare_cached": "cached", "prepare_conversion": "conversion", "prepare_duration_s": "time s",
        "prepare_energy_measured_j": "measured J", "prepare_energy_estimated_j": "estimated J"})


def stats_overview(a: Analysis) -> pd.DataFrame:
    rows = []
    for c in a.comparisons:
        g = c.groups
        normal = g["normal"].dropna().astype(bool)
        rows.append({"scope": c.scope, "name": c.name, "metric": c.metric, "configs": len(g),
                     "n per config": ("–" if not len(g) else f"{g['n'].min()}" if g["n"].min() == g["n"].max()
                                      else f"{g['n'].min()}–{g['n'].max()}"),
                     "normal (Shapiro–Wilk)": f"{int(normal.sum())}/{len(normal)}",
                     "H": c.kruskal_h, "p": fmt_p(c.kruskal_p) if c.tested else "–",
                     "result": ("significant" if c.significant else "not significant") if c.tested else c.note})
    return pd.DataFrame(rows)


def comparison_tables(c: Comparison) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One comparison's groups (median with its interval, Shapiro–Wilk) and its pairs (Dunn–Holm, Cliff's δ)."""
    g = c.groups.copy()
    ci = f"median [{100 * CONFIDENCE:.0f} % CI]"
    g[ci] = [f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]" for m, lo, hi in zip(g["median"], g["ci_low"], g["ci_high"])]
    g["Shapiro–Wilk"] = [note if note else f"W = {w:.3f}, p = {fmt_p(p)}" for w, p, note in
                         zip(g["shapiro_w"], g["shapiro_p"], g["shapiro_note"])]
    groups = g[["config", "n", ci, "Shapiro–Wilk"]]
    pairs = c.pairs
    if not pairs.empty:
        pairs = pairs.assign(p_holm=pairs["p_holm"].map(fmt_p), delta=pairs["delta"].map(lambda d: f"{d:+.2f}"),
                             significant=pairs["significant"].map({True: "yes", False: "no"}))
        pairs = pairs[["a", "b", "median_a", "median_b", "p_holm", "significant", "delta", "magnitude"]].rename(
            columns={"p_holm": "Dunn–Holm p", "delta": "Cliff's δ (a vs b)"})
    return groups, pairs


def quality_display(a: Analysis) -> pd.DataFrame:
    q = a.quality_table
    if q.empty:
        return q
    return pd.DataFrame({
        "model": q["model"], "configuration": q["config"], "mode": q["mode"], "trials": q["trials"],
        "tasks": q["tasks"], "pass@1": [f"{100 * p:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"
                                        for p, lo, hi in zip(q["pass@1"], q["ci_low"], q["ci_high"])],
        "net J/token": [fmt(x) for x in q["j_per_token"]],
        "net J per solved task": [note if isinstance(note, str) else fmt(x)
                                  for x, note in zip(q["j_per_solved"], q["j_per_solved_note"])],
        "energy boundary": q["energy_boundary"], "kept out of comparisons": q["excluded"]})
