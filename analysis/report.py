"""The report: one self-contained HTML file (plots embedded) and a Markdown summary, written from the numbers.

``analyse(run_dirs)`` does the work (tables, metrics, statistics, savings, the study's figures); ``write_report``
renders it; ``build_report`` does both. Tables are exported next to the report as parquet and CSV.
"""

from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figures import Figures, front_sentences, make_figures
from analysis.load import Tables, load_runs
from analysis.quality import NONE_SOLVED, add_quality, load_evaluations, paired_vs_reference, quality_table
from analysis.metrics import (SUMMARY_COLUMNS, add_metrics, agreement_spec, comparison_groups, flag_different_output,
                              flag_mixed_hardware, model_config_medians, with_agreement)
from analysis.stats import (ALPHA, MIN_N_TEST, Comparison, fmt_p, p_words, run_statistics, savings_best_worst,
                            savings_matrix, savings_pair, savings_range)
from runners.meters.validity import METHOD_TEXT
from analysis.study import (DEFAULT_STUDY_CSV, STUDY_ID, STUDY_PAIR, STUDY_SETUP, compare_with_study, headline,
                            our_medians, read_medians)

DEFAULT_PAIRS = (STUDY_PAIR, ("TORCH-CPU", "ONNX-CPU"))
STUDY_COLUMNS = {"study_model": "study's model", "our_source": "our source", "our_prompts": "our prompts",
                 "our_new_tokens_per_prompt": "our new tokens/prompt", "our_j_per_prompt": "our J/prompt",
                 "study_j_per_prompt": "study J/prompt", "energy_ratio": "energy ours÷study",
                 "our_s_per_prompt": "our s/prompt", "study_s_per_prompt": "study s/prompt",
                 "time_ratio": "time ours÷study", "our_hardware": "our hardware"}
GLOSSARY = ("Energy of the generate window, within its energy boundary (the components it covers and whether "
            "they were measured or estimated). net = raw − idle power × duration (same component, same source). "
            "J/token = energy ÷ new tokens; J/prompt = energy ÷ prompts; tokens/Wh = new tokens ÷ Wh; "
            "Wh/1000 prompts as AI Energy Score reports. EDP = energy-delay product per inference, as the edge-SLM "
            "study defines it: J/prompt × mean per-prompt latency (J·s; a batch's latency for each of its prompts). "
            "EDP/B and Wh/B = per billion parameters. agreement = share of prompts whose tokens equal the reference "
            "configuration's (NaN with 'no reference' when there was none).")
NO_ENERGY_WORDS = "absent: no hardware counter (RAPL, NVML) was readable and nothing estimated it (codecarbon off)"
ESTIMATED_NOTE = ("ESTIMATED, not measured: no hardware energy counter (RAPL, NVML) was available, so energy comes "
                  "from codecarbon's model (CPU load × a per-thread power figure, plus a modelled RAM power). Use it "
                  "to rank configurations on this machine with care; it is not a measurement of joules.")


@dataclass
class Analysis:
    tables: Tables
    ok: pd.DataFrame
    medians: pd.DataFrame
    comparisons: list[Comparison]
    best_worst: pd.DataFrame
    pairs: dict[tuple[str, str], pd.DataFrame]
    savings_matrix: pd.DataFrame
    study: dict | None = None  # the study's headline recomputed from its medians
    study_comparison: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)
    min_n: int = MIN_N_TEST
    # HumanEval evaluations (orchestrate.py evaluate): per trial, per model × configuration, paired vs the reference
    quality: pd.DataFrame = field(default_factory=pd.DataFrame)
    quality_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    quality_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    # trials of configurations that did not do the reference's work (kept out of every comparison), and the rule
    different: pd.DataFrame = field(default_factory=pd.DataFrame)
    agreement: dict = field(default_factory=dict)
    # trials of configurations whose repetitions came from more than one machine (kept out of every comparison)
    mixed_hardware: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def sources(self) -> list[str]:
        return sorted(set(self.ok["energy_source"].dropna()))


def analyse(run_dirs, *, study_csv: str | Path | None = DEFAULT_STUDY_CSV, pairs=DEFAULT_PAIRS,
            min_n: int = MIN_N_TEST, seed: int = 0) -> Analysis:
    tables = load_runs(run_dirs)
    if tables.trials.empty:
        raise ValueError(f"no records (schema slm-matrix.record/1 or /2) under {', '.join(map(str, tables.run_dirs))}")
    spec = agreement_spec(tables.run_dirs)
    every = flag_mixed_hardware(flag_different_output(comparison_groups(with_agreement(add_metrics(tables.ok))), spec))
    # Different work is never compared as the same work: such configurations stay out of statistics, savings,
    # winners, Pareto fronts and headlines (listed apart, with the reason); nor are repetitions from several machines
    different = every[every["different_output"].notna()] if not every.empty else every
    mixed = every[every["different_output"].isna() & every["mixed_hardware"].notna()] if not every.empty else every
    ok = every[every["different_output"].isna() & every["mixed_hardware"].isna()] if not every.empty else every
    medians = model_config_medians(ok) if not ok.empty else pd.DataFrame()
    metrics = [m for m in ("energy_j", "net_energy_j", "duration_s") if not ok.empty and ok[m].notna().any()]
    # a group with no finite figure (no energy counter) is no comparison, not "one configuration"
    comparisons = [c for c in run_statistics(ok, metrics, min_n=min_n, seed=seed) if not c.groups.empty]
    a = Analysis(tables=tables, ok=ok, medians=medians, comparisons=comparisons,
                 best_worst=savings_best_worst(medians, "energy_j", by="group") if not medians.empty
                 else pd.DataFrame(),
                 pairs={p: savings_pair(medians, *p, "energy_j", by="group") for p in pairs} if not medians.empty
                 else {},
                 savings_matrix=savings_matrix(medians, "energy_j", by="group") if not medians.empty
                 else pd.DataFrame(),
                 min_n=min_n, different=different, agreement=spec, mixed_hardware=mixed)
    if study_csv is not None and Path(study_csv).is_file():
        study = read_medians(study_csv)
        a.study = headline(study)
        a.study_comparison = compare_with_study(our_medians(ok), study) if not ok.empty else None
    evaluations, eval_tasks = load_evaluations(tables.run_dirs)
    if not evaluations.empty:
        a.quality = add_quality(every, evaluations)  # whether answers work is shown for every configuration
        a.quality_table = quality_table(a.quality)
        a.quality_pairs = paired_vs_reference(a.quality, eval_tasks, spec)  # the run's [agreement] policy
    a.warnings = _warnings(a)
    return a


def _warnings(a: Analysis) -> list[str]:
    out = []
    ok = a.ok
    if not a.mixed_hardware.empty:
        for (model, config), g in a.mixed_hardware.groupby(["model", "config"]):
            out.append(f"{model} · {config}: {g['mixed_hardware'].iloc[0]} — kept out of every test, saving and "
                       "headline; run a model's repetitions on one machine (orchestrate.py submit keeps models whole "
                       "per node).")
    if not a.tables.problems.empty:
        out.append(f"{len(a.tables.problems)} record(s) do not match the runner's schema (listed under Failures).")
    if ok.empty:
        return out + ["No successful trial: nothing to measure."]
    cuda_cpu = ok[(ok["device"] == "cuda") & ok["provider"].astype(str).str.contains("CPU", case=False)]
    for cfg, provider in cuda_cpu.groupby("config")["provider"].first().items():
        out.append(f"{cfg}: asked for CUDA but the provider was {provider} — the runtime fell back to the CPU.")
    work = ok.groupby("model")[["prompts", "tokens_output"]].nunique()
    for model in work[(work > 1).any(axis=1)].index:
        out.append(f"{model}: configurations ran different workloads (prompt or token counts differ).")
    nonpositive = ok[pd.to_numeric(ok["net_energy_j"], errors="coerce") <= 0]
    if len(nonpositive):
        kinds = "+".join(sorted(set(nonpositive["energy_source"].dropna())))
        out.append(f"{len(nonpositive)} trial(s) have net energy ≤ 0 ({kinds}): the idle baseline draws as much "
                   "power as the work does" + (" — an estimate that barely tells load from idle; compare raw energy "
                   "and time instead." if kinds == "estimated" else "."))
    flagged = ok[ok["meter_flags"].notna()] if "meter_flags" in ok else ok.iloc[:0]
    if len(flagged):
        out.append(f"{len(flagged)} trial(s) carry meter-validity flags (short windows, counters the meters could "
                   "not trust, host trace problems): listed under Meter validity.")
    none = ok[ok["energy_j"].isna()].groupby(["model", "config"]).size()
    if len(none):
        which = "; ".join(f"{m} · {c}" for m, c in none.index)
        out.append(f"{int(none.sum())} trial(s) have no energy figure ({which}): left out of every energy table, plot, "
                   "saving and test; their time and output are shown.")
    missing_net = ok[ok["net_energy_j"].isna() & ok["energy_j"].notna()]
    if len(missing_net):
        out.append(f"{len(missing_net)} trial(s) have no idle baseline for every component of their energy source:"
                   " their net energy is missing (raw kept).")
    return out


# --- formatting ---------------------------------------------------------------------------------------------------


def fmt(x, digits: int = 3) -> str:
    if x is None or isinstance(x, str):
        return "–" if x is None else x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 10 ** digits:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def _fmt_df(df: pd.DataFrame) -> pd.DataFrame:
    return df.apply(lambda col: col.map(fmt)) if not df.empty else df


def _pct(x: float) -> str:
    return f"{x:.1f} %"


def _span(lo: float, hi: float, digits: int = 1) -> str:
    """'12.3 %–45.6 %', or one figure when the range is a single value (one model)."""
    a, b = f"{lo:.{digits}f}", f"{hi:.{digits}f}"
    return f"{a} %" if a == b else f"{a} %–{b} %"


def _range_words(r: dict, a: str, b: str, digits: int = 1) -> str:
    """'A used x–y % less energy than B', or the honest version when the sign changes."""
    lo, hi, d = r["low"], r["high"], digits
    if lo >= 0:
        return f"{a} used {_span(lo, hi, d)} less energy than {b}"
    if hi <= 0:
        return f"{a} used {_span(-hi, -lo, d)} more energy than {b}"
    return f"{a} used between {-lo:.{d}f} % more and {hi:.{d}f} % less energy than {b}"


def _source_words(a: Analysis) -> str:
    s = a.sources
    words = {(): NO_ENERGY_WORDS, ("estimated",): "estimated", ("measured",): "measured"}.get(
        tuple(s), "measured for some configurations, estimated for others (see the source column)")
    if s and a.ok["energy_j"].isna().any():
        words += "; some trials have none (left out of every energy figure, saving and test)"
    return words


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
    miss = ok[ok["agreement_status"] != "compared"]
    note = miss["agreement_note"].astype(object)  # all-None is read as a float column
    miss = miss.assign(agreement_note=note.fillna("no agreement recorded for these trials"))
    return miss.groupby(["model", "config"], as_index=False)["agreement_note"].first()


def different_table(a: Analysis) -> pd.DataFrame:
    """Model × configuration rows that did not do the reference's work, with the reason and their figures."""
    d = a.different
    if d.empty:
        return pd.DataFrame(columns=["model", "config", "trials", "identical", "reason"])
    g = d.groupby(["model", "config"], as_index=False).agg(
        trials=("trial_id", "size"), identical=("agreement", "min"), reason=("different_output", "first"),
        j_per_token=("j_per_token", "median"), tokens_per_s=("tokens_per_s", "median"))
    return g


DIFFERENT_RULE = ("Same work is checked, not assumed: a configuration in the reference's precision (fp32) whose share "
                  "of prompts token-identical to the reference (torch fp32) is below the threshold ({threshold:.0%}, "
                  "[agreement] threshold) did different work. Lower precisions are expected to diverge after some "
                  "tokens (rounding moves near-ties) and are judged by their own rule: different work only when they "
                  "diverge at the first token on every prompt; their quality is judged by pass@1. Different work is "
                  "listed here with its figures and kept out of every comparison.")


def validity_table(a: Analysis) -> pd.DataFrame:
    """Every meter-validity flag of the successful trials (windows the counter cannot resolve, rejected counters,
    counter vs integrated power, host trace problems), with the host trace's boundary error."""
    ok = a.ok
    if ok.empty or "meter_flags" not in ok:
        return pd.DataFrame()
    f = ok[ok["meter_flags"].notna()]
    return f[["model", "config", "repetition", "duration_s", "boundary_error_j", "meter_flags"]].rename(
        columns={"duration_s": "window s", "boundary_error_j": "boundary error J", "meter_flags": "flags"})


# --- headline sentences -------------------------------------------------------------------------------------------


def headlines(a: Analysis) -> list[str]:
    ok = a.ok
    n_failed = len(a.tables.failures)
    out = []
    if ok.empty:
        return [f"No trial succeeded; {n_failed} failed (see Failures)."]
    reps = ok.groupby(["model", "config"]).size()
    reps_words = f"{reps.min()}" if reps.min() == reps.max() else f"{reps.min()}–{reps.max()}"
    out.append(f"{len(ok)} successful trials of {ok['model'].nunique()} model(s) × {ok['config'].nunique()} "
               f"configuration(s), {reps_words} repetition(s) per cell; {n_failed} trial(s) failed"
               f"{' (listed under Failures)' if n_failed else ''}. Energy figures are {_source_words(a)}.")
    for model, bounds in split_models(a).items():
        out.append(f"{model}: configurations were measured on different energy boundaries — "
                   + "; ".join(f"{b}: {', '.join(cfgs)}" for b, cfgs in bounds.items())
                   + ". Not comparable across them: energy is compared within each boundary only.")
    for (pa, pb), df in a.pairs.items():
        r = savings_range(df, by="group")
        if r:
            out.append(f"{_range_words(r, pa, pb)} (median energy per model, {r['n_models']} model(s)).")
    r = savings_range(a.best_worst, by="group")
    if r:
        best = a.best_worst["best"].value_counts()
        tested = [c for c in a.comparisons if c.scope == "model" and c.metric == "energy_j" and c.tested]
        significant = sum(bool(c.significant) for c in tested)
        out.append(f"Within each model (and energy boundary) the best configuration used {_span(r['low'], r['high'])} less energy "
                   f"than the worst; the best was " + " and ".join(f"{c} for {n}" for c, n in best.items())
                   + f" of {len(a.best_worst)} model(s); the configurations differed significantly (Kruskal–Wallis, "
                   f"α = {ALPHA}) for {significant} of {len(tested)} model(s) with enough repetitions to test.")
    if a.medians["device"].nunique() > 1:  # the study's "within CPU" figure, and within every other device
        for device, part in a.medians.groupby("device"):
            r = savings_range(savings_best_worst(part, "energy_j", by="group"), by="group")
            if r:
                out.append(f"Within {device.upper()} alone the best configuration used {_span(r['low'], r['high'])} "
                           f"less energy than the worst ({r['n_models']} model(s)).")
    by_model = {c.name: c for c in a.comparisons if c.scope == "model" and c.metric == "energy_j"}
    for _, bw in a.best_worst.iterrows():
        model = bw["group"]
        m = a.medians[(a.medians["group"] == model) & (a.medians["config"] == bw["best"])].iloc[0]
        sentence = (f"{model}: {bw['best']} used the least energy ({fmt(m['j_per_token'])} J/token, "
                    f"{fmt(m['tokens_per_wh'])} tokens/Wh), {_pct(bw['savings_pct'])} less than {bw['worst']}")
        cmp = by_model.get(model)
        if cmp is not None and cmp.tested:
            pair = cmp.pairs[((cmp.pairs["a"] == bw["best"]) & (cmp.pairs["b"] == bw["worst"]))
                             | ((cmp.pairs["a"] == bw["worst"]) & (cmp.pairs["b"] == bw["best"]))]
            sentence += f"; {cmp.verdict()}"
            if len(pair):
                p = pair.iloc[0]
                sentence += (f"; best vs worst: Dunn–Holm {p_words(p['p_holm'])}, "
                             f"Cliff's |δ| = {abs(p['delta']):.2f} ({p['magnitude']})")
        elif cmp is not None:
            sentence += f"; {cmp.note}"
        out.append(sentence + ".")
    out += front_sentences(a.medians, a.quality_table)
    diff = different_table(a)
    if not diff.empty:
        out.append("NOT THE SAME OUTPUT — kept out of every comparison above and below (statistics, savings, "
                   "winners, Pareto): " + "; ".join(f"{r.model} {r.config} ({r.reason})" for r in diff.itertuples())
                   + ".")
    agree = a.medians.dropna(subset=["agreement"]) if "agreement" in a.medians else pd.DataFrame()
    no_ref = no_reference(a)
    if not no_ref.empty:
        out.append("NO REFERENCE — token agreement unknown (not checked, not identical) for: " + "; ".join(
            f"{r.model} {r.config}" for r in no_ref.itertuples()) + f". {no_ref['agreement_note'].iloc[0]}.")
    if not agree.empty:
        low = agree[agree["agreement"] < 1.0]
        if low.empty and no_ref.empty:
            out.append("Every configuration produced token-identical outputs to the reference.")
        elif low.empty:
            out.append("Every configuration that had a reference produced token-identical outputs to it.")
        else:
            out.append("Outputs that differ from the reference: " + "; ".join(
                f"{r.model} {r.config} {r.agreement * 100:.0f} % identical" for r in low.itertuples()) + ".")
    if a.study:
        s = a.study
        out.append(f"Recomputed from the published medians of {STUDY_ID}: "
                   f"{_range_words(s['pair_savings_range'], *s['pair'], digits=2)}, and the best CPU engine saved "
                   f"{s['cpu_best_worst_range']['low']:.2f} %–{s['cpu_best_worst_range']['high']:.2f} % against the "
                   "worst (the study reports 37.99 %–89.16 % and 8.98 %–72.04 %).")
    if a.study_comparison is not None and not a.study_comparison.empty:
        sc = a.study_comparison
        out.append(f"Against the study for the same model and configuration ({len(sc)} cell(s)), our energy per "
                   f"prompt is {fmt(sc['energy_ratio'].min())}×–{fmt(sc['energy_ratio'].max())}× and our time per "
                   f"prompt {fmt(sc['time_ratio'].min())}×–{fmt(sc['time_ratio'].max())}× the study's — on "
                   "different hardware and workload size, so ratios, not a replication.")
    return out


# --- tables for the report ----------------------------------------------------------------------------------------


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


def _comparison_tables(c: Comparison) -> tuple[pd.DataFrame, pd.DataFrame]:
    g = c.groups.copy()
    g["median [95 % CI]"] = [f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]" for m, lo, hi in zip(g["median"], g["ci_low"],
                                                                                    g["ci_high"])]
    g["Shapiro–Wilk"] = [note if note else f"W = {w:.3f}, p = {fmt_p(p)}" for w, p, note in
                         zip(g["shapiro_w"], g["shapiro_p"], g["shapiro_note"])]
    groups = g[["config", "n", "median [95 % CI]", "Shapiro–Wilk"]]
    pairs = c.pairs
    if not pairs.empty:
        pairs = pairs.assign(p_holm=pairs["p_holm"].map(fmt_p), delta=pairs["delta"].map(lambda d: f"{d:+.2f}"),
                             significant=pairs["significant"].map({True: "yes", False: "no"}))
        pairs = pairs[["a", "b", "median_a", "median_b", "p_holm", "significant", "delta", "magnitude"]].rename(
            columns={"p_holm": "Dunn–Holm p", "delta": "Cliff's δ (a vs b)"})
    return groups, pairs


# --- rendering ----------------------------------------------------------------------------------------------------


def md_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "_(none)_\n"
    d = _fmt_df(df)
    head = "| " + " | ".join(map(str, d.columns)) + " |"
    sep = "|" + "|".join("---" for _ in d.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |"
            for row in d.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def html_table(df: pd.DataFrame) -> str:
    """A plain HTML table: numbers right-aligned (class n), text left, long text wrapping (class w), everything
    escaped."""
    if df is None or df.empty:
        return "<p class='muted'>(none)</p>"
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    cls = [" class='n'" if n else "" for n in numeric]
    head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(df.columns, cls))
    # long text (a test's result, a failure's reason) wraps; names and numbers stay on one line
    body = "".join("<tr>" + "".join(f"<td{' class=w' if len(v) > 48 and not k else k}>{html.escape(v)}</td>"
                                    for v, k in zip(row, cls)) + "</tr>"
                   for row in _fmt_df(df).itertuples(index=False))
    return f"<table class='t'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1300px;padding:1.5em;
color:#1b1b1b;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em} h3{margin-top:1.4em}
.muted{color:#666} .banner{padding:.8em 1em;border-radius:6px;margin:1em 0;font-weight:500}
.estimated{background:#fff3cd;border:2px solid #e0a800} .measured{background:#d1e7dd;border:2px solid #198754}
.mixed{background:#f8d7da;border:2px solid #dc3545} .warn{background:#f8f9fa;border-left:4px solid #e0a800;
padding:.4em .8em;margin:.3em 0}
table.t{border-collapse:collapse;font-size:.82em;margin:.6em 0;display:block;overflow-x:auto}
table.t th,table.t td{border:1px solid #ddd;padding:.25em .5em;text-align:left;white-space:nowrap}
table.t td.w{white-space:normal;min-width:24em} /* long text (a test's result, a failure's reason) wraps */
table.t th{background:#f3f3f3} table.t .n{text-align:right}
ul.headline li{margin:.35em 0} img{max-width:100%;border:1px solid #eee;margin:.5em 0}
nav a{margin-right:1em} details{margin:.5em 0} summary{cursor:pointer;font-weight:600}
"""


def _banner(a: Analysis) -> tuple[str, str]:
    """The sources, and the boundary of every comparison: what each compared energy figure covers."""
    s = a.sources
    bounds = a.ok.groupby(a.ok["energy_boundary"].astype(object).fillna("no energy figure"))["config"].agg(
        lambda x: ", ".join(sorted(set(x))))
    words = " Energy boundaries compared (a comparison never crosses one): " + "; ".join(
        f"[{b}] {cfgs}" for b, cfgs in bounds.items()) + "."
    if not s:
        return "mixed", f"NO ENERGY FIGURE: energy is {NO_ENERGY_WORDS}; only time and output are compared." + words
    if s == ["estimated"]:
        return "estimated", "All energy figures in this report are " + ESTIMATED_NOTE + words
    if s == ["measured"]:
        return "measured", "All energy figures are measured by hardware counters." + words
    return "mixed", ("Energy sources differ between configurations — measured and estimated figures are never "
                     "added, and figures of different boundaries or sources are never compared." + words
                     + " Estimated means " + ESTIMATED_NOTE)


def render(a: Analysis, figs: Figures, title: str) -> tuple[str, str]:
    """(HTML, Markdown)."""
    ctx = {"heads": headlines(a), "tables": summary_tables(a), "overview": stats_overview(a), "figs": figs,
           "title": title}
    h: list[str] = []
    md: list[str] = []
    for section in (_head, _headline_section, _tables_section, _statistics_section, _quality_section,
                    _validity_section,
                    _savings_section, _study_section, _plots_section, _failures_section):
        section(a, h, md, ctx)
    h.append("</body></html>")
    return "\n".join(h), "\n".join(md)


def _head(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """Title, runs and hosts, the banner, the navigation."""
    title = ctx["title"]
    kind, banner = _banner(a) if not a.ok.empty else ("mixed", "No successful trial.")
    runs = ", ".join(sorted(a.tables.trials["run_id"].astype(str).unique()))
    hosts = a.tables.trials[["hostname", "cpu_model", "gpu_model"]].drop_duplicates()
    host_words = "; ".join(" / ".join(str(v) for v in r if isinstance(v, str)) for r in hosts.itertuples(index=False))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    h.append(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>")
    h.append(f"<h1>{html.escape(title)}</h1><p class='muted'>Runs: {html.escape(runs)} · hosts: "
             f"{html.escape(host_words)} · generated {html.escape(stamp)}</p>")
    h.append(f"<div class='banner {kind}'>{html.escape(banner)}</div>")
    h.append("<nav><a href='#headline'>Headline</a><a href='#tables'>Tables</a><a href='#stats'>Statistics</a>"
             "<a href='#quality'>pass@1</a>"
             "<a href='#validity'>Meter validity</a><a href='#savings'>Savings</a><a href='#study'>Study</a><a href='#plots'>Plots</a>"
             "<a href='#failures'>Failures</a></nav>")
    md += [f"# {title}", "", f"Runs: {runs} · hosts: {host_words} · generated {stamp}", "", f"> **{banner}**", ""]



def _headline_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The headline sentences and warnings."""
    heads = ctx["heads"]
    h.append("<h2 id='headline'>Headline</h2><ul class='headline'>"
             + "".join(f"<li>{html.escape(s)}</li>" for s in heads) + "</ul>")
    md += ["## Headline", ""] + [f"- {s}" for s in heads] + [""]
    if a.warnings:
        h.append("".join(f"<div class='warn'>⚠ {html.escape(w)}</div>" for w in a.warnings))
        md += [f"> ⚠ {w}" for w in a.warnings] + [""]



def _tables_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The summary tables and the preparation table."""
    tables = ctx["tables"]
    h.append(f"<h2 id='tables'>Tables</h2><p class='muted'>{html.escape(GLOSSARY)}</p>")
    md += ["## Tables", "", GLOSSARY, ""]
    for name, df in tables.items():
        h.append(f"<h3>{html.escape(name)}</h3>{html_table(df)}")
        md += [f"### {name}", "", md_table(df)]

    diff = different_table(a)
    if not diff.empty:
        rule = DIFFERENT_RULE.format(threshold=float(a.agreement.get("threshold", 0.95)))
        h.append(f"<h3>Not the same output (kept out of every comparison)</h3><p class='muted'>{html.escape(rule)}</p>"
                 + html_table(diff))
        md += ["### Not the same output (kept out of every comparison)", "", rule, "", md_table(diff)]

    prep = preparation_table(a)
    if not prep.empty:
        h.append("<h3>Preparation (model conversion, outside every measured window)</h3>" + html_table(prep))
        md += ["### Preparation (model conversion, outside every measured window)", "", md_table(prep)]



def _statistics_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The tests per model and size group."""
    overview = ctx["overview"]
    h.append(f"<h2 id='stats'>Statistics</h2><p class='muted'>Per model and per size group, configuration as the "
             f"factor. Shapiro–Wilk per configuration; Kruskal–Wallis across configurations; Dunn's post-hoc with "
             f"Holm correction; Cliff's δ with Romano et al.'s magnitudes (|δ| &lt; 0.147 negligible, &lt; 0.33 "
             f"small, &lt; 0.474 medium, else large); medians with 95 % bootstrap CIs (BCa). α = {ALPHA}. No test is "
             f"run for a configuration with fewer than {a.min_n} repetitions.</p>")
    md += ["## Statistics", "", f"Kruskal–Wallis per model and size group (α = {ALPHA}; configurations with fewer "
           f"than {a.min_n} repetitions are not tested).", "", md_table(overview)]
    h.append(html_table(overview))
    for c in a.comparisons:
        if c.metric == "net_energy_j":
            continue  # in the overview; details for raw energy and time keep the report readable
        groups, pairs = _comparison_tables(c)
        h.append(f"<details><summary>{html.escape(c.scope)} {html.escape(c.name)} — {html.escape(c.metric)}: "
                 f"{html.escape(c.verdict())}</summary>{html_table(groups)}"
                 + (f"<p>Dunn post-hoc (Holm) and Cliff's δ</p>{html_table(pairs)}" if not pairs.empty else "")
                 + "</details>")
        md += [f"### {c.scope} {c.name} — {c.metric}", "", c.verdict(), "", md_table(groups)]
        if not pairs.empty:
            md += ["Dunn post-hoc (Holm) and Cliff's δ:", "", md_table(pairs)]



QUALITY_NOTE = ("HumanEval, full prompts, greedy; each completion cut at the first stop sequence (\\ndef, \\nclass, "
                "\\nif, \\nprint, \\n#) and run against its task's tests in a locked-down sandbox container, "
                "outside every measured window. pass@1 = tasks passed ÷ tasks, mean over trials, Wilson 95 % "
                "interval for n = tasks. Net J/token and net J per solved task = net generate energy (idle subtracted) ÷ new "
                f"tokens and ÷ tasks passed (medians over trials; '{NONE_SOLVED}' when nothing passed). The Pareto "
                "front is per model and energy boundary, over the rows every comparison uses. Gained/lost: tasks one configuration passes and the "
                "reference (torch fp32) does not, and the reverse; McNemar's exact test, Holm-corrected per model. "
                "same-work: every configuration generated the same number of tokens (EOS ignored), so energies "
                "compare; as-served: each stopped where it stopped.")


def quality_display(a: Analysis) -> pd.DataFrame:
    q = a.quality_table
    if q.empty:
        return q
    out = pd.DataFrame({
        "model": q["model"], "configuration": q["config"], "mode": q["mode"], "trials": q["trials"],
        "tasks": q["tasks"], "pass@1": [f"{100 * p:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"
                                        for p, lo, hi in zip(q["pass@1"], q["ci_low"], q["ci_high"])],
        "net J/token": [fmt(x) for x in q["j_per_token"]],
        "net J per solved task": [note if isinstance(note, str) else fmt(x)
                                  for x, note in zip(q["j_per_solved"], q["j_per_solved_note"])],
        "energy boundary": q["energy_boundary"], "kept out of comparisons": q["excluded"]})
    return out


def _quality_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """pass@1, J per solved task, tasks gained and lost against the reference."""
    if a.quality_table.empty:
        return
    h.append(f"<h2 id='quality'>Does it work? HumanEval pass@1 and energy per solved task</h2>"
             f"<p class='muted'>{html.escape(QUALITY_NOTE)}</p>{html_table(quality_display(a))}")
    md += ["## Does it work? HumanEval pass@1 and energy per solved task", "", QUALITY_NOTE, "",
           md_table(quality_display(a))]
    if not a.quality_pairs.empty:
        pairs = a.quality_pairs.rename(columns={"mcnemar_p": "McNemar p", "p_holm": "p (Holm)",
                                                "lost_tasks": "tasks lost"})
        pairs["McNemar p"] = pairs["McNemar p"].map(fmt_p)
        pairs["p (Holm)"] = pairs["p (Holm)"].map(fmt_p)
        h.append("<h3>Tasks gained and lost against the reference</h3>" + html_table(pairs))
        md += ["### Tasks gained and lost against the reference", "", md_table(pairs)]


def _validity_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """Meter-validity flags and configurations without an agreement reference."""
    vt = validity_table(a)
    h.append(f"<h2 id='validity'>Meter validity ({len(vt)} flagged trial(s))</h2>")
    md += [f"## Meter validity ({len(vt)} flagged trial(s))", ""]
    h.append(html_table(vt))
    md += [md_table(vt)]
    # what the counters see and do not see, so a reader knows what an external meter would add
    h.append(f"<h3>What the counters measure</h3><p class='muted'>{html.escape(METHOD_TEXT)}</p>")
    md += ["### What the counters measure", "", METHOD_TEXT, ""]
    nr = no_reference(a)
    if not nr.empty:
        words = ("NO REFERENCE: token agreement could not be checked for these configurations — it is unknown, "
                 "not identical.")
        h.append(f"<div class='banner mixed'>{html.escape(words)}</div>{html_table(nr)}")
        md += [f"> **{words}**", "", md_table(nr)]


def _savings_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """Best vs worst and the named pairs."""
    h.append("<h2 id='savings'>Savings</h2><p class='muted'>From median energy per model × configuration: best vs "
             "worst = (worst − best) / worst; a pair A vs B = (B − A) / B (negative: A used more).</p>")
    md += ["## Savings", ""]
    bw = a.best_worst.rename(columns={"best_value": "best J", "worst_value": "worst J", "savings_pct": "saved %"})
    h.append(f"<h3>Best vs worst configuration per model and energy boundary</h3>{html_table(bw)}")
    md += ["### Best vs worst configuration per model and energy boundary", "", md_table(bw)]
    for (pa, pb), df in a.pairs.items():
        h.append(f"<h3>{pa} vs {pb}</h3>")
        md += [f"### {pa} vs {pb}", ""]
        if df.empty:
            h.append("<p class='muted'>Not in this run (no model has both configurations).</p>")
            md += ["_Not in this run (no model has both configurations)._", ""]
        else:
            d = df.rename(columns={"a_value": f"{pa} J", "b_value": f"{pb} J", "savings_pct": "saved %"})
            h.append(html_table(d))
            md += [md_table(d)]



def _study_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The study's recomputed figures and ours beside them."""
    h.append(f"<h2 id='study'>Comparison with the study ({STUDY_ID})</h2>")
    md += [f"## Comparison with the study ({STUDY_ID})", ""]
    if a.study:
        s = a.study
        lines = [f"Study setup: {STUDY_SETUP}.",
                 f"{s['pair'][0]} vs {s['pair'][1]}, recomputed from the published medians: "
                 f"{s['pair_savings_range']['low']:.2f} %–{s['pair_savings_range']['high']:.2f} % "
                 f"(study: 37.99 %–89.16 %).",
                 f"Best vs worst CPU engine, recomputed: {s['cpu_best_worst_range']['low']:.2f} %–"
                 f"{s['cpu_best_worst_range']['high']:.2f} % (study: 8.98 %–72.04 %; its lower end was typed by "
                 "hand, the table gives 8.91 %). JIT rows are left out, as in the study (one forward pass, no "
                 "generation)."]
        h.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
        md += [f"- {x}" for x in lines] + [""]
        sc = a.study_comparison
        note = ("DIFFERENT HARDWARE AND WORKLOAD: ours vs the study's per prompt (the study's 164-prompt totals "
                "÷ 164; about 113–118 new tokens per prompt there). Ratios = ours ÷ study; they say how far apart "
                "the setups are, not whether either is right.")
        h.append(f"<div class='banner mixed'>{html.escape(note)}</div>")
        md += [f"> **{note}**", ""]
        if sc is None or sc.empty:
            h.append("<p class='muted'>No model × configuration of this run is in the study's table.</p>")
            md += ["_No model × configuration of this run is in the study's table._", ""]
        else:
            sc = sc.rename(columns=STUDY_COLUMNS)
            h.append(html_table(sc))
            md += [md_table(sc)]
    else:
        h.append("<p class='muted'>No study medians table given.</p>")
        md += ["_No study medians table given._", ""]



def _plots_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The figures, embedded."""
    figs = ctx["figs"]
    h.append("<h2 id='plots'>Plots</h2>")
    md += ["## Plots", ""]
    for name, png in figs.png.items():
        b64 = base64.b64encode(png).decode()
        cap = html.escape(figs.captions.get(name, name))
        h.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
                 f"<figcaption class='muted'>{cap}</figcaption></figure>")
        md += [f"![{figs.captions.get(name, name)}](plots/{name}.png)", ""]
    for name, why in figs.absent.items():  # a figure with nothing finite to draw: said, not drawn
        h.append(f"<p class='muted'>{html.escape(why)}</p>")
        md += [f"_{why}_", ""]



def _failures_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """Failed trials and records that do not match the schema."""
    failures = a.tables.failures.drop(columns=["record"], errors="ignore")
    problems = a.tables.problems
    h.append(f"<h2 id='failures'>Failures ({len(failures)})</h2>")
    md += [f"## Failures ({len(failures)})", ""]
    h.append(html_table(failures))
    md += [md_table(failures)]
    if not problems.empty:
        h.append(f"<h3>Records that do not match the runner's schema</h3>{html_table(problems)}")
        md += ["### Records that do not match the runner's schema", "", md_table(problems)]


def write_report(a: Analysis, out_dir: str | Path, *, title: str | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    figs = make_figures(a, _source_words(a) if len(a.sources) == 1 else "mixed sources")
    for name, png in figs.png.items():
        (out / "plots" / f"{name}.png").write_bytes(png)
    runs = ", ".join(sorted(a.tables.trials["run_id"].astype(str).unique()))
    page, md = render(a, figs, title or f"Runtime comparison — {runs}")
    paths = {"html": out / "report.html", "markdown": out / "report.md"}
    paths["html"].write_text(page, encoding="utf-8")
    paths["markdown"].write_text(md, encoding="utf-8")
    a.tables.export(out / "tables")
    every = pd.concat([a.ok, a.different], ignore_index=True) if not a.different.empty else a.ok
    every.to_parquet(out / "tables" / "trials_metrics.parquet", index=False)
    every.to_csv(out / "tables" / "trials_metrics.csv", index=False)
    a.medians.to_csv(out / "tables" / "medians.csv", index=False)
    stats_overview(a).to_csv(out / "tables" / "statistics.csv", index=False)
    pairs = [c.pairs.assign(scope=c.scope, name=c.name, metric=c.metric) for c in a.comparisons if not c.pairs.empty]
    if pairs:
        pd.concat(pairs, ignore_index=True).to_csv(out / "tables" / "posthoc.csv", index=False)
    if not a.quality_table.empty:
        a.quality_table.to_csv(out / "tables" / "quality.csv", index=False)
        a.quality_pairs.to_csv(out / "tables" / "quality_vs_reference.csv", index=False)
    return paths


def build_report(run_dirs, out_dir, **kw) -> dict[str, Path]:
    title = kw.pop("title", None)
    return write_report(analyse(run_dirs, **kw), out_dir, title=title)
