"""Statistics per model and per size group, with the configuration as the factor.

Tests come from scipy and scikit-posthocs (Shapiro–Wilk, Kruskal–Wallis, Dunn with Holm correction, bootstrap
confidence intervals); only Cliff's δ is computed here (it is a count). A group with too few repetitions gets a note
saying so instead of a p-value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats

ALPHA = 0.05
# The level of every interval the report gives, matched to the tests' significance level (95 %): the one
# definition the report's words and the bootstrap both read.
CONFIDENCE = 1 - ALPHA
MIN_N_TEST = 5  # repetitions per configuration below which Kruskal–Wallis/Dunn are not run (chi² approximation)
MIN_N_SHAPIRO = 3  # scipy's Shapiro–Wilk needs at least 3 values
# Cliff's δ magnitude thresholds of Romano et al. (2006): |δ| < 0.147 negligible, < 0.33 small, < 0.474 medium.
DELTA_THRESHOLDS = ((0.147, "negligible"), (0.33, "small"), (0.474, "medium"))
TIME_METRICS = {"duration_s", "tokens_per_s", "ttft_s_median", "tpot_s_median", "latency_s_median"}


def cliffs_delta(x, y) -> float:
    """Cliff's δ = P(X > Y) − P(X < Y) over all pairs; positive when x tends to be larger."""
    x = np.asarray(x, float)[:, None]
    y = np.asarray(y, float)[None, :]
    return float(np.sign(x - y).mean())


def delta_magnitude(delta: float) -> str:
    d = abs(delta)
    for limit, label in DELTA_THRESHOLDS:
        if d < limit:
            return label
    return "large"


def median_ci(values, *, confidence: float = CONFIDENCE, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Median with a bootstrap confidence interval (scipy.stats.bootstrap, BCa; percentile where BCa degenerates)."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), float)
    out = {"n": len(x), "median": float(np.median(x)) if len(x) else np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "ci_note": None}
    if len(x) < 2:
        out["ci_note"] = f"n={len(x)}: no interval"
        return out
    if np.all(x == x[0]):
        out["ci_low"] = out["ci_high"] = float(x[0])
        return out
    for method in ("BCa", "percentile"):
        # BCa warns (and returns NaN) when a small sample has many ties: then the percentile interval is used
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap((x,), np.median, confidence_level=confidence, n_resamples=n_resamples,
                                  method=method, rng=np.random.default_rng(seed))
        lo, hi = res.confidence_interval
        if np.isfinite(lo) and np.isfinite(hi):
            out.update(ci_low=float(lo), ci_high=float(hi), ci_note=None if method == "BCa" else "percentile")
            break
    return out


def median_ratio_ci(new: list[float], old: list[float], seed: int = 0) -> dict[str, Any]:
    """median(new) / median(old) with a percentile bootstrap interval over both samples (None with the reason where
    a sample is too small), and each side's median and n: how a reproduction's figure compares with the original's,
    and one engine's with another's of its runtime family."""
    a, b = np.asarray(new, float), np.asarray(old, float)
    out: dict[str, Any] = {"ratio": float(np.median(a) / np.median(b)) if len(a) and len(b) and np.median(b) else None,
                           "low": None, "high": None, "note": None,
                           # the two sides themselves, so a report can show the figures beside their ratio
                           "median": float(np.median(a)) if len(a) else None, "n": len(a),
                           "original_median": float(np.median(b)) if len(b) else None, "original_n": len(b)}
    if out["ratio"] is None:
        out["note"] = "no figure on one side"
        return out
    if len(a) < 2 or len(b) < 2:
        out["note"] = f"n = {len(a)} and {len(b)}: no interval (2 or more on each side)"
        return out
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((a, b), lambda x, y, axis=-1: np.median(x, axis=axis) / np.median(y, axis=axis),
                              confidence_level=CONFIDENCE, n_resamples=2000, method="percentile",
                              rng=np.random.default_rng(seed))
    out["low"], out["high"] = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return out


@dataclass
class Comparison:
    """Configurations compared on one metric within one model or size group."""

    scope: str  # "model" | "size group"
    name: str
    metric: str
    groups: pd.DataFrame  # per configuration: n, median, CI, Shapiro–Wilk
    tested: bool = False
    note: str | None = None  # why there is no test, or what was left out
    kruskal_h: float | None = None
    kruskal_p: float | None = None
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # Dunn–Holm p and Cliff's δ per pair

    @property
    def significant(self) -> bool | None:
        return None if self.kruskal_p is None else bool(self.kruskal_p < ALPHA)

    def verdict(self) -> str:
        if not self.tested:
            return self.note or "no test"
        word = "differ significantly" if self.significant else "show no significant difference"
        return f"Kruskal–Wallis H = {self.kruskal_h:.2f}, {p_words(self.kruskal_p)}: configurations {word}"


def fmt_p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_words(p: float | None) -> str:
    """'p < 0.001' or 'p = 0.012'."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def shapiro(values) -> tuple[float | None, float | None, str | None]:
    x = np.asarray(values, float)
    if len(x) < MIN_N_SHAPIRO:
        return None, None, f"n={len(x)} < {MIN_N_SHAPIRO}: too few for Shapiro–Wilk"
    if np.all(x == x[0]):
        return None, None, "all values equal"
    w, p = stats.shapiro(x)
    return float(w), float(p), None


def compare_configs(df: pd.DataFrame, value: str, *, group: str = "config", scope: str = "model",
                    name: str = "", min_n: int = MIN_N_TEST, alpha: float = ALPHA, seed: int = 0,
                    skip: str | None = None) -> Comparison:
    """Shapiro–Wilk per configuration, Kruskal–Wallis across them, Dunn post-hoc (Holm) and Cliff's δ per pair.

    Configurations with fewer than ``min_n`` values are left out of the tests (and named in the note); with fewer
    than two left (or when ``skip`` gives a reason), no test is run and the note says why."""
    data = df[[group, value]].copy()
    data[value] = pd.to_numeric(data[value], errors="coerce")
    data = data.dropna()
    rows = []
    for cfg, vals in data.groupby(group, sort=True)[value]:
        w, p, note = shapiro(vals)
        ci = median_ci(vals, seed=seed)
        rows.append({group: cfg, "n": len(vals), "median": ci["median"], "ci_low": ci["ci_low"],
                     "ci_high": ci["ci_high"], "shapiro_w": w, "shapiro_p": p,
                     "normal": None if p is None else bool(p >= alpha), "shapiro_note": note})
    groups = pd.DataFrame(rows, columns=[group, "n", "median", "ci_low", "ci_high", "shapiro_w", "shapiro_p",
                                         "normal", "shapiro_note"])
    cmp = Comparison(scope=scope, name=name, metric=value, groups=groups)
    if skip:
        cmp.note = skip
        return cmp
    enough = groups[groups["n"] >= min_n][group].tolist()
    few = groups[groups["n"] < min_n]
    notes = []
    if len(few):
        notes.append("too few repetitions for a test (n < %d): %s" % (
            min_n, ", ".join(f"{c} (n={n})" for c, n in zip(few[group], few["n"]))))
    if len(enough) < 2:
        cmp.note = "; ".join(notes) if len(groups) >= 2 else "only one configuration: nothing to compare"
        return cmp
    tested = data[data[group].isin(enough)]
    samples = [tested.loc[tested[group] == c, value].to_numpy() for c in enough]
    if np.unique(np.concatenate(samples)).size == 1:  # nothing to rank: scipy returns NaN (older: raises)
        cmp.note = "; ".join(["no test: all values are identical", *notes])
        return cmp
    h, p = stats.kruskal(*samples)
    cmp.tested, cmp.kruskal_h, cmp.kruskal_p = True, float(h), float(p)
    cmp.note = "; ".join(notes) or None
    dunn = sp.posthoc_dunn(tested, val_col=value, group_col=group, p_adjust="holm")
    pairs = []
    for i, a in enumerate(enough):
        for b in enough[i + 1:]:
            xa = tested.loc[tested[group] == a, value].to_numpy()
            xb = tested.loc[tested[group] == b, value].to_numpy()
            d = cliffs_delta(xa, xb)
            p_ab = float(dunn.loc[a, b])
            pairs.append({"a": a, "b": b, "n_a": len(xa), "n_b": len(xb), "median_a": float(np.median(xa)),
                          "median_b": float(np.median(xb)), "p_holm": p_ab, "significant": p_ab < alpha,
                          "delta": d, "magnitude": delta_magnitude(d)})
    cmp.pairs = pd.DataFrame(pairs)
    return cmp


def run_statistics(ok: pd.DataFrame, metrics=("energy_j", "duration_s"), *, min_n: int = MIN_N_TEST,
                   seed: int = 0) -> list[Comparison]:
    """Every metric compared across configurations, per model and per size group. Energy is compared only within
    one energy boundary (``group`` / ``size_scope``, see metrics.comparison_groups): configurations measured on
    different boundaries are separate comparisons, never one sample. Time is comparable everywhere."""
    out = []
    for scope, time_key, energy_key in (("model", "time_group", "group"),
                                        ("size group", "time_size_scope", "size_scope")):
        if time_key not in ok.columns:  # tables made without comparison_groups
            time_key = "model" if scope == "model" else "size_group"
        for metric in metrics:
            if metric not in ok.columns:
                continue
            key = time_key if metric in TIME_METRICS or energy_key not in ok.columns else energy_key
            for name, part in ok.groupby(key, sort=True):
                sources = sorted(set(part["energy_source"].dropna()))
                skip = None
                if metric not in TIME_METRICS and len(sources) > 1:  # only without boundary groups (old tables)
                    skip = f"no test: configurations mix {' and '.join(sources)} energy (not comparable)"
                out.append(compare_configs(part, metric, scope=scope, name=str(name), min_n=min_n, seed=seed,
                                           skip=skip))
    return out


# --- savings (the study's headline figures) ------------------------------------------------------------------------


def savings_best_worst(medians: pd.DataFrame, value: str, *, by: str = "model",
                       config: str = "config") -> pd.DataFrame:
    """Per model: the best (lowest median) and worst configuration and how much the best saves,
    (worst − best) / worst × 100 — the study's "best vs worst" figure."""
    rows = []
    for name, part in medians.dropna(subset=[value]).groupby(by, sort=True):
        if len(part) < 2:
            continue
        ordered = part.sort_values(value, kind="stable")  # on a tie, best and worst are still two configurations
        best, worst = ordered.iloc[0], ordered.iloc[-1]
        rows.append({by: name, "best": best[config], "best_value": best[value], "worst": worst[config],
                     "worst_value": worst[value], "n_configs": len(part),
                     "savings_pct": (worst[value] - best[value]) / worst[value] * 100.0})
    return pd.DataFrame(rows, columns=[by, "best", "best_value", "worst", "worst_value", "n_configs",
                                       "savings_pct"])


def savings_pair(medians: pd.DataFrame, a: str, b: str, value: str, *, by: str = "model",
                 config: str = "config") -> pd.DataFrame:
    """Per model having both: how much configuration ``a`` saves against ``b``, (b − a) / b × 100 (negative when
    a uses more)."""
    piv = medians.pivot_table(index=by, columns=config, values=value, aggfunc="first")
    if a not in piv.columns or b not in piv.columns:
        return pd.DataFrame(columns=[by, "a", "b", "a_value", "b_value", "savings_pct"])
    both = piv[[a, b]].dropna()
    out = pd.DataFrame({by: both.index, "a": a, "b": b, "a_value": both[a].to_numpy(),
                        "b_value": both[b].to_numpy()})
    out["savings_pct"] = (out["b_value"] - out["a_value"]) / out["b_value"] * 100.0
    return out.reset_index(drop=True)


def savings_matrix(medians: pd.DataFrame, value: str, *, by: str = "model", config: str = "config") -> pd.DataFrame:
    """model × configuration: how much each configuration saves against the worst one of that model (%)."""
    piv = medians.pivot_table(index=by, columns=config, values=value, aggfunc="first")
    worst = piv.max(axis=1)
    return (piv.rsub(worst, axis=0)).div(worst, axis=0) * 100.0


def savings_range(savings: pd.DataFrame, by: str = "model") -> dict | None:
    """Min and max savings over models, and which models they come from."""
    s = savings.dropna(subset=["savings_pct"])
    if s.empty:
        return None
    lo, hi = s.loc[s["savings_pct"].idxmin()], s.loc[s["savings_pct"].idxmax()]
    return {"low": float(lo["savings_pct"]), "low_model": lo[by], "high": float(hi["savings_pct"]),
            "high_model": hi[by], "n_models": len(s)}
