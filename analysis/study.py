"""The study we reproduce (arXiv 2412.15441): its published medians, its headline ranges, ours next to them.

A medians table has one row per model × configuration with ``model``, ``config``, ``device``, ``energy_j`` and
``time_s``; the same savings functions (analysis.stats) run on the study's table and on ours.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.load import config_label
from analysis.stats import savings_best_worst, savings_pair, savings_range

DEFAULT_STUDY_CSV = Path(__file__).with_name("reference") / "study_2412.15441_medians.csv"
STUDY_ID = "arXiv 2412.15441"
STUDY_PROMPTS = 164
STUDY_SETUP = ("RTX 4090 GPU + AMD CPU; 164 HumanEval fragment prompts, batch 1, max_length 128, fp32; energy = "
               "CPU package + GPU, measured (medians over 10 repetitions)")
STUDY_PAIR = ("TORCH-CUDA", "ONNX-CUDA")
NOT_COMPARABLE = {"jit": "the study's JIT ran one forward pass instead of generating"}


def read_medians(path: str | Path = DEFAULT_STUDY_CSV, *, include_jit: bool = False) -> pd.DataFrame:
    """Read a medians table like the study's CSV (model, hf_id, engine, provider, median_energy_kj, median_time_s)
    into the common form. JIT rows are dropped unless asked for (they are not comparable)."""
    raw = pd.read_csv(path)
    df = pd.DataFrame({
        "model": raw["model"], "hf_id": raw.get("hf_id"), "engine": raw["engine"].str.lower(),
        "device": raw["provider"].str.lower(),
        "precision": raw["precision"] if "precision" in raw else "fp32",
    })
    df["config"] = [config_label(e, d, p) for e, d, p in zip(df["engine"], df["device"], df["precision"])]
    df["energy_j"] = raw["median_energy_kj"] * 1000.0
    df["time_s"] = raw["median_time_s"].astype(float)
    df["comparable"] = ~df["engine"].isin(list(NOT_COMPARABLE))
    return df if include_jit else df[df["comparable"]].reset_index(drop=True)


def headline(medians: pd.DataFrame, *, value: str = "energy_j", pair: tuple[str, str] = STUDY_PAIR) -> dict:
    """The study's headline figures from any medians table: how much ``pair[0]`` saves against ``pair[1]`` (range
    over models), and best vs worst configuration within CPU and within CUDA (range over models)."""
    out = {"pair": pair,
           "pair_savings": savings_pair(medians, *pair, value),
           "cpu_best_worst": savings_best_worst(medians[medians["device"] == "cpu"], value),
           "cuda_best_worst": savings_best_worst(medians[medians["device"] == "cuda"], value),
           "all_best_worst": savings_best_worst(medians, value)}
    for key in ("pair_savings", "cpu_best_worst", "cuda_best_worst", "all_best_worst"):
        out[key + "_range"] = savings_range(out[key])
    return out


def describe_range(r: dict | None, what: str) -> str:
    if r is None:
        return f"{what}: not computable (no model has both sides)"
    return (f"{what}: {r['low']:.2f} %–{r['high']:.2f} % over {r['n_models']} models "
            f"(lowest {r['low_model']}, highest {r['high_model']})")


def our_medians(ok: pd.DataFrame) -> pd.DataFrame:
    """Our run in the common medians form, per model × configuration (medians over repetitions)."""
    keys = ["model", "config", "engine", "device", "precision"]
    g = ok.groupby(keys, sort=True)
    out = g.agg(hf_id=("hf_id", "first"), energy_j=("energy_j", "median"), time_s=("duration_s", "median"),
                prompts=("prompts", "median"), tokens_output=("tokens_output", "median"),
                energy_source=("energy_source", lambda s: "+".join(sorted(set(s.dropna())))),
                cpu_model=("cpu_model", "first"), gpu_model=("gpu_model", "first"), n=("trial_id", "size"))
    return out.reset_index()


def _match_key(name: str | None) -> str:
    return str(name or "").lower().rsplit("/", 1)[-1]


def compare_with_study(ours: pd.DataFrame, study: pd.DataFrame) -> pd.DataFrame:
    """Our medians next to the study's for the same model (hub id or name) and configuration, per prompt (the
    workloads differ in size): J/prompt and s/prompt, and ours ÷ study. Different hardware — read ratios as such."""
    study = study.assign(key=[_match_key(h) for h in study["hf_id"]], key2=[_match_key(m) for m in study["model"]])
    rows = []
    for r in ours.itertuples(index=False):
        cands = study[study["config"] == r.config]
        k = _match_key(r.hf_id) if isinstance(r.hf_id, str) else None
        m = cands[(cands["key"] == k)] if k else cands.iloc[0:0]
        if m.empty:
            m = cands[(cands["key"] == _match_key(r.model)) | (cands["key2"] == _match_key(r.model))]
        if m.empty:
            continue
        s = m.iloc[0]
        prompts = r.prompts if r.prompts and r.prompts > 0 else float("nan")
        ours_jp, ours_sp = r.energy_j / prompts, r.time_s / prompts
        study_jp, study_sp = s["energy_j"] / STUDY_PROMPTS, s["time_s"] / STUDY_PROMPTS
        rows.append({"model": r.model, "study_model": s["model"], "config": r.config, "n": r.n,
                     "our_source": r.energy_source, "our_prompts": r.prompts,
                     "our_new_tokens_per_prompt": r.tokens_output / prompts,
                     "our_j_per_prompt": ours_jp, "study_j_per_prompt": study_jp, "energy_ratio": ours_jp / study_jp,
                     "our_s_per_prompt": ours_sp, "study_s_per_prompt": study_sp, "time_ratio": ours_sp / study_sp,
                     "our_hardware": " / ".join(str(x) for x in (r.cpu_model, r.gpu_model) if isinstance(x, str))})
    return pd.DataFrame(rows, columns=["model", "study_model", "config", "n", "our_source", "our_prompts",
                                       "our_new_tokens_per_prompt", "our_j_per_prompt", "study_j_per_prompt",
                                       "energy_ratio", "our_s_per_prompt", "study_s_per_prompt", "time_ratio",
                                       "our_hardware"])
