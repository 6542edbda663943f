"""Derived figures per trial, and per model × configuration.

Every energy figure is computed twice, from the raw (``energy_j``) and the idle-subtracted (``net_energy_j``)
energy of the generate window; the suffix ``_net`` marks the second. Both come from one source kind per trial
(``energy_source``: measured or estimated).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from runners.agreement import ReferencePolicy

J_PER_WH = 3600.0

# Columns the summary shows, in order: (column, label).
SUMMARY_COLUMNS = (
    ("energy_j", "energy J"), ("net_energy_j", "net energy J"), ("j_per_token", "J/token"),
    ("j_per_prompt", "J/prompt"), ("wh_per_1000_prompts", "Wh/1000 prompts"), ("wh", "Wh"),
    ("tokens_per_wh", "tokens/Wh"), ("duration_s", "time s"), ("tokens_per_s", "tokens/s"),
    ("ttft_s_median", "TTFT s"), ("tpot_s_median", "TPOT s"), ("edp_js", "EDP J·s"), ("edp_per_b", "EDP/B"),
    ("wh_per_b", "Wh/B"), ("co2_g", "CO₂ g"), ("agreement", "agreement"),
)


def _div(a, b):
    """Elementwise a / b with None/0 -> NaN (a figure that cannot be computed is missing, not infinite)."""
    a = pd.to_numeric(a, errors="coerce")
    b = pd.to_numeric(b, errors="coerce")
    return a / b.where(b != 0)


def add_metrics(trials: pd.DataFrame) -> pd.DataFrame:
    """J/prompt, Wh per 1 000 prompts (AI Energy Score), Wh, tokens/Wh, tokens/s, EDP (J·s), EDP and Wh
    per billion parameters (edge SLM study), CO₂ (g, from the recorded grid intensity). J/token (gross and net) is the
    record's own (runners.record: ``j_per_token`` and ``j_per_token_net`` columns of analysis.load)."""
    t = trials.copy()
    duration = pd.to_numeric(t["duration_s"], errors="coerce")
    params_b = pd.to_numeric(t["model_params_b"], errors="coerce")
    tokens = pd.to_numeric(t["tokens_output"], errors="coerce")
    prompts = pd.to_numeric(t["prompts"], errors="coerce")
    intensity = pd.to_numeric(t["co2_intensity_g_per_kwh"], errors="coerce")
    latency = pd.to_numeric(t["latency_s_mean"], errors="coerce") if "latency_s_mean" in t else np.nan
    t["tokens_per_s"] = _div(tokens, duration)
    for suffix, col in (("", "energy_j"), ("_net", "net_energy_j")):
        e = pd.to_numeric(t[col], errors="coerce")
        wh = e / J_PER_WH
        t[f"wh{suffix}"] = wh
        t[f"j_per_prompt{suffix}"] = _div(e, prompts)
        t[f"wh_per_1000_prompts{suffix}"] = _div(wh * 1000.0, prompts)
        t[f"tokens_per_wh{suffix}"] = _div(tokens, wh)
        # per inference, as the edge-SLM study defines it: energy of one prompt × its latency (not whole-run
        # energy × whole-run time, which grows with the square of the prompt count)
        t[f"edp_js{suffix}"] = _div(e, prompts) * latency
        t[f"edp_per_b{suffix}"] = _div(t[f"edp_js{suffix}"], params_b)
        t[f"wh_per_b{suffix}"] = _div(wh, params_b)
        t[f"co2_g{suffix}"] = wh / 1000.0 * intensity  # kWh × g/kWh
    return t


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for points no other point beats in both x and y (lower is better for both, e.g. energy and time)."""
    xs, ys = df[x].to_numpy(float), df[y].to_numpy(float)
    mask = []
    for i in range(len(df)):
        dominated = np.any((xs <= xs[i]) & (ys <= ys[i]) & ((xs < xs[i]) | (ys < ys[i])))
        mask.append(not dominated and not np.isnan(xs[i]) and not np.isnan(ys[i]))
    return pd.Series(mask, index=df.index)


def with_agreement(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials plus ``agreement``: the share of prompts identical to the reference, as the one computation
    (runners/agreement.py, run by the orchestrator over the whole run) recorded it. A trial whose work had no
    reference has no agreement (NaN) and its ``agreement_status`` says so — it is never counted as identical."""
    t = trials.copy()
    compared = t["agreement_status"] == "compared"
    t["agreement"] = pd.to_numeric(t["agreement_share_identical"], errors="coerce").where(compared)
    return t


def agreement_spec(run_dirs) -> ReferencePolicy:
    """The reference policy of the runs: the first run's that has one (run.json, or its matrix.toml snapshot for a
    run started before run.json carried it), else the defaults."""
    found = (ReferencePolicy.of_run(d) for d in run_dirs)
    return next((p for p in found if p is not None), ReferencePolicy())


def flag_different_output(ok: pd.DataFrame, spec: ReferencePolicy | dict | None = None) -> pd.DataFrame:
    """``different_output``: why a model × configuration did not do the reference's work — the policy's verdict
    (``ReferencePolicy.verdict``) over its trials, the one verdict the orchestrator's summary gives: the worst trial's
    share against the threshold in the reference's precision, first-token divergence on every prompt in a lower one,
    any prompt that was another input; else None. Such rows stay in the tables, flagged, and out of every
    comparison."""
    policy = ReferencePolicy.from_spec(spec)
    t = ok.copy()
    t["different_output"] = None
    if t.empty or "agreement" not in t:
        return t
    cols = {"agreement_status": "status", "agreement": "share_identical", "agreement_at_first_token": "at_first_token",
            "agreement_other_inputs": "other_inputs"}
    for (model, config), g in t.groupby(["model", "config"]):
        trials = g.reindex(columns=list(cols)).rename(columns=cols)
        found = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in trials.to_dict("records")]
        why = policy.verdict(found, str(g["precision"].iloc[0]))
        if why:
            t.loc[g.index, "different_output"] = why
    return t


def flag_mixed_hardware(ok: pd.DataFrame) -> pd.DataFrame:
    """``mixed_hardware``: why a model × configuration's repetitions are not one sample — they were measured on
    more than one machine (a cluster run that split them, or runs of two hosts merged) — else None. Such rows stay
    in the tables, flagged, and out of every test, saving and headline."""
    t = ok.copy()
    t["mixed_hardware"] = None
    if t.empty or "hardware" not in t:
        return t
    for (model, config), g in t.groupby(["model", "config"]):
        machines = sorted(set(g["hardware"].dropna()))
        if len(machines) > 1:
            t.loc[g.index, "mixed_hardware"] = (f"its {len(g)} trials were measured on {len(machines)} machines "
                                                f"({' | '.join(machines)}): not tested as one sample")
    return t


def comparison_groups(ok: pd.DataFrame) -> pd.DataFrame:
    """``group``: what energy figures are compared within — a model, split by energy boundary where its
    configurations were measured on different ones (e.g. a CPU package against a GPU, or measured against
    estimated), and by work where they were asked for different work (a fixed token count vs as served).
    ``size_scope`` does the same for size groups."""
    t = ok.copy()
    if t.empty:
        return t.assign(group=pd.Series(dtype=object), size_scope=pd.Series(dtype=object),
                        time_group=pd.Series(dtype=object), time_size_scope=pd.Series(dtype=object))
    boundary = t["energy_boundary"].fillna("no energy figure")
    if "work" in t and t["work"].nunique() > 1:
        boundary = boundary + " · " + t["work"].fillna("?")
    # configurations measured on different machines are never compared, in energy or in time
    machine = t["machine"].fillna("?") if "machine" in t else pd.Series("", index=t.index)
    if machine.nunique() > 1:
        boundary = boundary + " · " + machine
    for cols, split_by in ((("group", "size_scope"), boundary), (("time_group", "time_size_scope"), machine)):
        for col, key in zip(cols, ("model", "size_group")):
            base = t[key].astype(str)
            n = split_by.groupby(base).nunique()
            split = base.isin(n[n > 1].index)
            t[col] = base.where(~split, base + " ⟨" + split_by + "⟩")
    return t


def model_config_medians(ok: pd.DataFrame, columns=None) -> pd.DataFrame:
    """Median over repetitions per model × configuration × energy boundary, with n and the energy source."""
    columns = [c for c, _ in SUMMARY_COLUMNS] if columns is None else list(columns)
    columns = [c for c in columns if c in ok.columns]
    keys = ["model", "group", "size_group", "size_scope", "model_params_b", "config", "engine", "device", "precision",
            "energy_boundary"]
    g = ok.groupby(keys, dropna=False, sort=True)
    med = g[columns].median(numeric_only=True)
    med.insert(0, "n", g.size())
    med.insert(1, "energy_source", g["energy_source"].agg(lambda s: "+".join(sorted(set(s.dropna())))))
    return med.reset_index()
