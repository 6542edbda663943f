"""Operating points (issue 24): J/token, tokens/s, mean power, TTFT/TPOT against batch size, new tokens, prompt
tokens and threads, per model and runtime — the sweet spot of each runtime, the runtime ranking at each batch size
and where it inverts, the time–energy Pareto front over the sweep, and batch invariance (the share of prompts whose
tokens equal the same configuration's at batch 1, as the record's agreement block gives it).

Figures are compared only within one context: one comparison group (a model within one energy boundary, which names
its source, and one work) and one prompt length; rankings also hold threads fixed. A curve is therefore drawn from one
energy source and says which. Only the rows every other comparison uses (``Analysis.ok``) enter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.figures import fronts
from analysis.stats import median_ci

AXES = ("batch_size", "new_tokens", "prompt_tokens", "threads", "power_limit_w", "gpus")
# metric column -> label; mean_w is the generate window's mean power (its energy ÷ its duration)
CURVE_METRICS = {"j_per_token": "J/token", "tokens_per_s": "tokens/s", "mean_w": "mean W", "ttft_s_median": "TTFT s",
                 "tpot_s_median": "TPOT s"}
LINE_KEYS = ["runtime", "engine", "precision"]


@dataclass
class OperatingPoints:
    points: pd.DataFrame  # one row per context × line × point: medians with CIs, batch invariance, Pareto membership
    sweet_spots: pd.DataFrame  # per context × line: the point of least median J/token
    rankings: pd.DataFrame  # per context × threads × batch size: lines ordered by median J/token
    inversions: list[str] = field(default_factory=list)  # per context: who leads where, in words
    # per capped point: energy saved and time lost against the same point uncapped (power_cap_tradeoffs)
    power_caps: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def empty(self) -> bool:
        return self.points.empty


def applies(trials: pd.DataFrame) -> bool:
    """A run with a sweep, or more than one value of some axis within one model × runtime."""
    if trials.empty:
        return False
    if "sweep_of" in trials and trials["sweep_of"].notna().any():
        return True
    per = trials.groupby(["model", "runtime"])[[a for a in AXES if a in trials]].nunique()
    return bool((per > 1).any().any())


def _with_keys(ok: pd.DataFrame) -> pd.DataFrame:
    """Trials with ``line`` (the runtime's configuration without the point's setting), ``context`` (what may be
    compared: comparison group, energy source, new tokens, prompt length) and ``mean_w``."""
    t = ok.copy()
    t["line"] = [f"{r.runtime} · {r.engine}" + ("" if r.precision == "fp32" else f" {r.precision}")
                 for r in t.itertuples()]
    nt = t["new_tokens"].map(lambda v: "?" if pd.isna(v) else f"{int(v)}")
    pt = t["prompt_tokens"].map(lambda v: "" if pd.isna(v) else f", {int(v)}-token prompts")
    # a group is one energy boundary, and a boundary names its source: one context, one source
    t["context"] = t["group"].astype(str) + " · " + nt + " new tokens" + pt
    # what a ranking holds fixed besides the batch size: the threads asked for, the GPU power cap, several GPUs
    threads = t["threads_asked"].map(lambda v: None if pd.isna(v) else f"{int(v)} threads")
    none = pd.Series(None, index=t.index)
    cap = t["power_limit_w"].map(lambda v: None if pd.isna(v) else f"{int(v)} W cap") if "power_limit_w" in t \
        else none
    gpus = t["gpus"].map(lambda v: f"{int(v)} GPUs" if pd.notna(v) and v > 1 else None) if "gpus" in t else none
    t["held"] = [" · ".join(x for x in held if isinstance(x, str)) or "engine default"
                 for held in zip(threads, cap, gpus)]
    t["mean_w"] = pd.to_numeric(t["energy_j"], errors="coerce") / pd.to_numeric(t["duration_s"], errors="coerce")
    return t


def _point_rows(t: pd.DataFrame) -> pd.DataFrame:
    rows = []
    keys = ["model", "group", "context", "energy_source", "energy_boundary", "work", "line", *AXES, "held"]
    # an axis (or fact) the trials do not know was not varied
    t = t.assign(**{a: np.nan for a in (*AXES, "energy_boundary", "work") if a not in t})
    for key, g in t.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, key), n=len(g))
        for col in CURVE_METRICS:
            ci = median_ci(g[col]) if col in g else {"median": np.nan, "ci_low": np.nan, "ci_high": np.nan}
            row.update({col: ci["median"], f"{col}_low": ci["ci_low"], f"{col}_high": ci["ci_high"]})
        row["energy_j"] = pd.to_numeric(g["energy_j"], errors="coerce").median()
        row["duration_s"] = pd.to_numeric(g["duration_s"], errors="coerce").median()
        row["batch_invariance"] = g["batch_invariance"].min()  # the worst trial, as agreement reads it
        rows.append(row)
    return pd.DataFrame(rows)


def sweet_spots(points: pd.DataFrame) -> pd.DataFrame:
    """Per context × line: the operating point of least median J/token."""
    p = points.dropna(subset=["j_per_token"])
    if p.empty:
        return pd.DataFrame(columns=["model", "context", "energy_source", "line", *AXES, "j_per_token"])
    best = p.loc[p.groupby(["context", "line"], sort=True)["j_per_token"].idxmin()]
    return best[["model", "context", "energy_source", "line", *AXES, "j_per_token", "tokens_per_s"]].reset_index(
        drop=True)


def rankings(points: pd.DataFrame) -> pd.DataFrame:
    """Per context × threads and power cap × batch size: the lines ordered by median J/token (one energy boundary
    and work each)."""
    rows = []
    p = points.dropna(subset=["j_per_token", "batch_size"])
    for (context, threads, batch), g in p.groupby(["context", "held", "batch_size"], sort=True):
        order = g.sort_values(["j_per_token", "line"])
        rows.append({"context": context, "threads": threads, "batch_size": int(batch),
                     "ranking": " < ".join(order["line"]), "leader": order["line"].iloc[0], "lines": len(order)})
    return pd.DataFrame(rows, columns=["context", "threads", "batch_size", "ranking", "leader", "lines"])


def inversion_words(ranks: pd.DataFrame) -> list[str]:
    """Per context and threads with two or more lines: who leads at which batch sizes, e.g. 'llamacpp leads at
    batch 1–2, torch from batch 4' — or that one leads at every batch size."""
    out = []
    for (context, threads), g in ranks[ranks["lines"] > 1].groupby(["context", "threads"], sort=True):
        g = g.sort_values("batch_size")
        runs: list[list] = []  # [leader, first batch, last batch]
        for leader, batch in zip(g["leader"], g["batch_size"]):
            if runs and runs[-1][0] == leader:
                runs[-1][2] = batch
            else:
                runs.append([leader, batch, batch])
        where = f"{context}" + ("" if threads == "engine default" else f", {threads}")
        if len(runs) == 1:
            out.append(f"{where}: {runs[0][0]} uses the least J/token at every batch size measured "
                       f"({', '.join(map(str, g['batch_size']))}); the ranking does not invert.")
            continue
        parts = [f"{leader} leads at batch {lo}" + (f"–{hi}" if hi != lo else "") if i == 0 else
                 f"{leader} from batch {lo}" + (f" to {hi}" if i < len(runs) - 1 and hi != lo else "")
                 for i, (leader, lo, hi) in enumerate(runs)]
        out.append(f"{where}: the ranking by J/token inverts — " + ", ".join(parts) + ".")
    return out


def power_cap_tradeoffs(points: pd.DataFrame) -> pd.DataFrame:
    """Per context × line × point capped at several GPU power limits: each cap against the same point uncapped (else
    at its highest cap) — energy saved and time lost, in % of the reference's medians (negative: the other way)."""
    cols = ["context", "line", "batch_size", "new_tokens", "prompt_tokens", "threads", "gpus", "power_limit_w",
            "reference", "energy_saved", "time_lost"]
    if "power_limit_w" not in points or points["power_limit_w"].isna().all():
        return pd.DataFrame(columns=cols)
    rows = []
    same = ["context", "line", "batch_size", "new_tokens", "prompt_tokens", "threads", "gpus"]
    for key, g in points.groupby(same, dropna=False, sort=True):
        if len(g) < 2:
            continue
        uncapped = g[g["power_limit_w"].isna()]
        ref = uncapped.iloc[0] if len(uncapped) else g.loc[g["power_limit_w"].idxmax()]
        for _, r in g[g["power_limit_w"].notna()].sort_values("power_limit_w").iterrows():
            if r.name == ref.name:
                continue
            rows.append({**dict(zip(same, key)), "power_limit_w": r["power_limit_w"],
                         "reference": "uncapped" if pd.isna(ref["power_limit_w"]) else f"{int(ref['power_limit_w'])} W",
                         "energy_saved": 1 - r["energy_j"] / ref["energy_j"],
                         "time_lost": r["duration_s"] / ref["duration_s"] - 1})
    return pd.DataFrame(rows, columns=cols)


def operating_points(ok: pd.DataFrame) -> OperatingPoints:
    """Everything the Operating points section shows, from the compared trials (their batch invariance is the
    record's: runners/agreement.py compares a trial at batch > 1 with its own configuration at batch 1)."""
    empty = pd.DataFrame()
    if ok.empty or not applies(ok):
        return OperatingPoints(empty, empty, empty)
    t = _with_keys(ok)
    points = _point_rows(t)
    points["pareto"] = fronts(points, "duration_s", "energy_j", "context")
    ranks = rankings(points)
    return OperatingPoints(points, sweet_spots(points), ranks, inversion_words(ranks), power_cap_tradeoffs(points))
