"""Derived figures per trial, and per model × configuration.

Every energy figure is computed twice, from the raw (``energy_j``) and the idle-subtracted (``net_energy_j``)
energy of the generate window; the suffix ``_net`` marks the second. Both come from one source kind per trial
(``energy_source``: measured or estimated).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

J_PER_WH = 3600.0
REFERENCE_DEVICES = ("cpu", "cuda")  # torch fp32 is the reference for token agreement, on the CPU first

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
    """J/token, J/prompt, Wh per 1 000 prompts (AI Energy Score), Wh, tokens/Wh, tokens/s, EDP (J·s), EDP and Wh
    per billion parameters (edge SLM study), CO₂ (g, from the recorded grid intensity)."""
    t = trials.copy()
    duration = pd.to_numeric(t["duration_s"], errors="coerce")
    params_b = pd.to_numeric(t["model_params_b"], errors="coerce")
    tokens = pd.to_numeric(t["tokens_output"], errors="coerce")
    prompts = pd.to_numeric(t["prompts"], errors="coerce")
    intensity = pd.to_numeric(t["co2_intensity_g_per_kwh"], errors="coerce")
    t["tokens_per_s"] = _div(tokens, duration)
    for suffix, col in (("", "energy_j"), ("_net", "net_energy_j")):
        e = pd.to_numeric(t[col], errors="coerce")
        wh = e / J_PER_WH
        t[f"wh{suffix}"] = wh
        t[f"j_per_token{suffix}"] = _div(e, tokens)
        t[f"j_per_prompt{suffix}"] = _div(e, prompts)
        t[f"wh_per_1000_prompts{suffix}"] = _div(wh * 1000.0, prompts)
        t[f"tokens_per_wh{suffix}"] = _div(tokens, wh)
        t[f"edp_js{suffix}"] = e * duration
        t[f"edp_per_b{suffix}"] = _div(e * duration, params_b)
        t[f"wh_per_b{suffix}"] = _div(wh, params_b)
        t[f"co2_g{suffix}"] = wh / 1000.0 * intensity  # kWh × g/kWh
    return t


def token_agreement(prompts: pd.DataFrame, trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Compare every prompt's output ids with the torch fp32 reference of the same model (TORCH-CPU, else
    TORCH-CUDA; its first repetition), matched on (task_id, index).

    Returns the prompts with ``identical`` and ``first_divergence`` (None when no reference exists) and the share of
    identical prompts per trial_id."""
    p = prompts.copy()
    p["identical"] = pd.Series([None] * len(p), dtype=object, index=p.index)
    p["first_divergence"] = pd.Series([None] * len(p), dtype=object, index=p.index)
    if p.empty:
        return p, pd.Series(dtype=float)
    for model, mp in p.groupby("model"):
        # By engine/precision, not label: a label may carry a runtime suffix (two torch images on one device).
        cands = trials[(trials["model"] == model) & (trials["status"] == "ok") & (trials["engine"] == "torch")
                       & (trials["precision"] == "fp32") & trials["trial_id"].isin(mp["trial_id"])]
        if cands.empty:
            continue
        order = cands["device"].map({d: i for i, d in enumerate(REFERENCE_DEVICES)}).fillna(len(REFERENCE_DEVICES))
        ref_trial = cands.assign(_o=order).sort_values(["_o", "run_id", "config", "repetition"]).iloc[0]["trial_id"]
        rp = mp[mp["trial_id"] == ref_trial]
        ref = {(t, i): list(ids) for t, i, ids in zip(rp["task_id"], rp["index"], rp["output_ids"])}
        for idx, r in mp.iterrows():
            want = ref.get((r["task_id"], r["index"]))
            if want is None:
                continue
            got = list(r["output_ids"])
            same = got == want
            p.at[idx, "identical"] = same
            if not same:
                p.at[idx, "first_divergence"] = next(
                    (i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    have = p[p["identical"].notna()]
    share = have.groupby("trial_id")["identical"].mean().astype(float)
    return p, share


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for points no other point beats in both x and y (lower is better for both, e.g. energy and time)."""
    xs, ys = df[x].to_numpy(float), df[y].to_numpy(float)
    mask = []
    for i in range(len(df)):
        dominated = np.any((xs <= xs[i]) & (ys <= ys[i]) & ((xs < xs[i]) | (ys < ys[i])))
        mask.append(not dominated and not np.isnan(xs[i]) and not np.isnan(ys[i]))
    return pd.Series(mask, index=df.index)


def with_agreement(trials: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """Trials plus ``agreement``: our share of prompts identical to the torch fp32 reference, falling back to the
    record's own ``agreement.share_identical`` where we cannot compute it."""
    t = trials.copy()
    _, share = token_agreement(prompts, trials) if not prompts.empty else (None, pd.Series(dtype=float))
    ours = t["trial_id"].map(share)
    t["agreement"] = ours.fillna(pd.to_numeric(t["agreement_share_identical"], errors="coerce"))
    return t


def model_config_medians(ok: pd.DataFrame, columns=None) -> pd.DataFrame:
    """Median over repetitions per model × configuration, with n and the energy source(s) of the figures."""
    columns = [c for c, _ in SUMMARY_COLUMNS] if columns is None else list(columns)
    columns = [c for c in columns if c in ok.columns]
    keys = ["model", "size_group", "model_params_b", "config", "engine", "device", "precision"]
    g = ok.groupby(keys, dropna=False, sort=True)
    med = g[columns].median(numeric_only=True)
    med.insert(0, "n", g.size())
    med.insert(1, "energy_source", g["energy_source"].agg(lambda s: "+".join(sorted(set(s.dropna())))))
    return med.reset_index()
