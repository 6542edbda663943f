"""The report's headline sentences, each from the numbers: what ran, the savings, each model's winner with its test,
the Pareto fronts, agreement with the reference and the study's figures. Nothing kept out of comparisons (different
work, repetitions from several machines) reaches a claim."""

from __future__ import annotations

import pandas as pd

from analysis.figures import front_sentences
from analysis.report_analysis import Analysis
from analysis.report_format import fmt, pct, range_words, span
from analysis.report_tables import different_table, no_reference, sampled_configs, split_models
from analysis.stats import ALPHA, p_words, savings_best_worst, savings_range
from analysis.study import STUDY_ID

NO_ENERGY_WORDS = "absent: no hardware counter (RAPL, NVML) was readable and nothing estimated it (codecarbon off)"


def source_words(a: Analysis) -> str:
    """Where the energy figures came from, in words."""
    s = a.sources
    words = {(): NO_ENERGY_WORDS, ("estimated",): "estimated", ("measured",): "measured"}.get(
        tuple(s), "measured for some configurations, estimated for others (see the source column)")
    if s and a.ok["energy_j"].isna().any():
        words += "; some trials have none (left out of every energy figure, saving and test)"
    return words


def headlines(a: Analysis) -> list[str]:
    n_failed = len(a.tables.failures)
    if a.ok.empty:
        return [f"No trial succeeded; {n_failed} failed (see Failures)."]
    return [_what_ran(a, n_failed), *_boundary_sentences(a), *_savings_sentences(a), *_winner_sentences(a),
            *front_sentences(a.medians, a.quality_table), *_agreement_sentences(a), *_study_sentences(a)]


def _what_ran(a: Analysis, n_failed: int) -> str:
    ok = a.ok
    reps = ok.groupby(["model", "config"]).size()
    reps_words = f"{reps.min()}" if reps.min() == reps.max() else f"{reps.min()}–{reps.max()}"
    return (f"{len(ok)} successful trials of {ok['model'].nunique()} model(s) × {ok['config'].nunique()} "
            f"configuration(s), {reps_words} repetition(s) per cell; {n_failed} trial(s) failed"
            f"{' (listed under Failures)' if n_failed else ''}. Energy figures are {source_words(a)}.")


def _boundary_sentences(a: Analysis) -> list[str]:
    return [f"{model}: configurations were measured on different energy boundaries — "
            + "; ".join(f"{b}: {', '.join(cfgs)}" for b, cfgs in bounds.items())
            + ". Not comparable across them: energy is compared within each boundary only."
            for model, bounds in split_models(a).items()]


def _savings_sentences(a: Analysis) -> list[str]:
    """The named pairs, best against worst within each model, and within each device."""
    out = []
    for (pa, pb), df in a.pairs.items():
        r = savings_range(df, by="group")
        if r:
            out.append(f"{range_words(r, pa, pb)} (median energy per model, {r['n_models']} model(s)).")
    r = savings_range(a.best_worst, by="group")
    if r:
        best = a.best_worst["best"].value_counts()
        tested = [c for c in a.comparisons if c.scope == "model" and c.metric == "energy_j" and c.tested]
        significant = sum(bool(c.significant) for c in tested)
        out.append(f"Within each model (and energy boundary) the best configuration used {span(r['low'], r['high'])} "
                   f"less energy than the worst; the best was " + " and ".join(f"{c} for {n}" for c, n in best.items())
                   + f" of {len(a.best_worst)} model(s); the configurations differed significantly (Kruskal–Wallis, "
                   f"α = {ALPHA}) for {significant} of {len(tested)} model(s) with enough repetitions to test.")
    if a.medians["device"].nunique() > 1:  # the study's "within CPU" figure, and within every other device
        for device, part in a.medians.groupby("device"):
            r = savings_range(savings_best_worst(part, "energy_j", by="group"), by="group")
            if r:
                out.append(f"Within {device.upper()} alone the best configuration used {span(r['low'], r['high'])} "
                           f"less energy than the worst ({r['n_models']} model(s)).")
    return out


def _winner_sentences(a: Analysis) -> list[str]:
    """Per model: the configuration that used the least energy, with its test against the worst."""
    by_model = {c.name: c for c in a.comparisons if c.scope == "model" and c.metric == "energy_j"}
    out = []
    for _, bw in a.best_worst.iterrows():
        model = bw["group"]
        m = a.medians[(a.medians["group"] == model) & (a.medians["config"] == bw["best"])].iloc[0]
        sentence = (f"{model}: {bw['best']} used the least energy ({fmt(m['j_per_token'])} J/token, "
                    f"{fmt(m['tokens_per_wh'])} tokens/Wh), {pct(bw['savings_pct'])} less than {bw['worst']}")
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
    return out


def _agreement_sentences(a: Analysis) -> list[str]:
    """Different work, work without a reference, and how far outputs differ from the reference."""
    out = []
    diff = different_table(a)
    if not diff.empty:
        out.append("NOT THE SAME OUTPUT — kept out of every comparison above and below (statistics, savings, "
                   "winners, Pareto): " + "; ".join(f"{r.model} {r.config} ({r.reason})" for r in diff.itertuples())
                   + ".")
    agree = a.medians.dropna(subset=["agreement"]) if "agreement" in a.medians else pd.DataFrame()
    no_ref = no_reference(a)
    sampled = sampled_configs(a)
    if sampled:
        out.append("SAMPLED — token agreement not applicable (sampled decoding draws its tokens by chance; energy "
                   "compared at fixed length, with sampled work only): " + "; ".join(sampled) + ".")
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
    return out


def _study_sentences(a: Analysis) -> list[str]:
    out = []
    if a.study:
        s = a.study
        out.append(f"Recomputed from the published medians of {STUDY_ID}: "
                   f"{range_words(s['pair_savings_range'], *s['pair'], digits=2)}, and the best CPU engine saved "
                   f"{s['cpu_best_worst_range']['low']:.2f} %–{s['cpu_best_worst_range']['high']:.2f} % against the "
                   "worst (the study reports 37.99 %–89.16 % and 8.98 %–72.04 %).")
    if a.study_comparison is not None and not a.study_comparison.empty:
        sc = a.study_comparison
        out.append(f"Against the study for the same model and configuration ({len(sc)} cell(s)), our energy per "
                   f"prompt is {fmt(sc['energy_ratio'].min())}×–{fmt(sc['energy_ratio'].max())}× and our time per "
                   f"prompt {fmt(sc['time_ratio'].min())}×–{fmt(sc['time_ratio'].max())}× the study's — on "
                   "different hardware and workload size, so ratios, not a replication.")
    return out
