"""The report's Operating points section (issue 24): per model and runtime, the figures at each operating point with
their intervals, the sweet spots, the ranking at each batch size and where it inverts, the time–energy Pareto front
and batch invariance — with the curves against batch size and every other swept axis. Present only when a run has a
sweep or several values of an axis within one model × runtime (analysis/operating_points.py computes it all)."""

from __future__ import annotations

import base64
import html

import pandas as pd

from analysis.figures import CURVE_FIGURES, Figures
from analysis.operating_points import AXES, CURVE_METRICS, OperatingPoints
from analysis.report_format import fmt, html_table, md_table
from analysis.stats import CONFIDENCE

FIGURES = CURVE_FIGURES  # drawn in this section, not again under Plots
NOTE = ("Medians over repetitions with {level:.0f} % bootstrap confidence intervals, per operating point (batch size, "
        "new tokens, prompt tokens where the workload fixed them, threads). mean W = the generate window's energy ÷ "
        "its duration. Runtimes are ranked only within one model, energy boundary (and so one energy source) and "
        "work, at one batch size and thread count. batch-invariant = the share of prompts whose tokens equal the "
        "same runtime's at batch 1 (other axes equal; worst trial), '–' at batch 1 or without a batch-1 point. "
        "Pareto = no other point of the same model, boundary and work is both cheaper and faster (median energy "
        "and time of the generate window).")


def _percent(saved: float) -> str:
    """A saving in words: '12.0 % less' / '6.7 % more'."""
    return f"{abs(100 * saved):.1f} % {'less' if saved >= 0 else 'more'}"


def _interval(m, lo, hi) -> str:
    return "–" if pd.isna(m) else f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]"


def points_table(op: OperatingPoints) -> pd.DataFrame:
    """One row per context × runtime × point: its axes, n, each metric with its interval, invariance, Pareto."""
    p = op.points
    out = pd.DataFrame({"model · boundary · work": p["context"], "source": p["energy_source"], "runtime": p["line"]})
    for axis in AXES:
        if p[axis].notna().any():
            out[axis.replace("_", " ")] = p[axis]
    out["n"] = p["n"]
    for col, label in CURVE_METRICS.items():
        out[label] = [_interval(m, lo, hi) for m, lo, hi in zip(p[col], p[f"{col}_low"], p[f"{col}_high"])]
    out["batch-invariant"] = p["batch_invariance"]
    out["Pareto"] = p["pareto"].map({True: "yes", False: ""})
    return out


def sentences(op: OperatingPoints) -> list[str]:
    """Sweet spot per runtime, the inversions, the Pareto front, batch invariance below 1: in words."""
    out = []
    for context, g in op.sweet_spots.groupby("context", sort=True):
        source = g["energy_source"].iloc[0]
        out.append(f"{context}, {'no' if pd.isna(source) else source} energy: least J/token " + "; ".join(
            f"{r.line} at batch {fmt(r.batch_size)}" + ("" if pd.isna(r.threads) else f", {fmt(r.threads)} threads")
            + f" ({fmt(r.j_per_token)} J/token, {fmt(r.tokens_per_s)} tokens/s)" for r in g.itertuples()) + ".")
    out += op.inversions
    front = op.points[op.points["pareto"]]
    for context, g in front.groupby("context", sort=True):
        out.append(f"{context}: Pareto front in energy and time over the whole sweep — " + ", ".join(
            f"{r.line} at batch {fmt(r.batch_size)}" for r in g.sort_values(["line", "batch_size"]).itertuples())
            + ".")
    for context, g in op.power_caps.groupby("context", sort=True):
        out.append(f"{context}: the GPU power cap's trade-off — " + "; ".join(
            f"{r.line} at batch {fmt(r.batch_size)}, {fmt(r.power_limit_w)} W: {_percent(r.energy_saved)} energy "
            f"for {_percent(-r.time_lost)} time against {r.reference}" for r in g.itertuples()) + ".")
    varied = op.points[op.points["batch_invariance"] < 1]
    if not varied.empty:
        out.append("Batch invariance below 1 (tokens changed by batching, against the same runtime at batch 1): "
                   + "; ".join(f"{r.line} at batch {fmt(r.batch_size)}: {r.batch_invariance:.1%} of prompts identical"
                               for r in varied.itertuples()) + ".")
    elif op.points["batch_invariance"].notna().any():
        out.append("Batch invariance: every runtime's tokens at batch > 1 equal its own at batch 1 on every prompt.")
    return out


def section(op: OperatingPoints | None, figs: Figures, h: list[str], md: list[str]) -> None:
    """Append the section's HTML and Markdown (nothing when the run has no operating points to compare)."""
    if op is None or op.empty:
        return
    note = NOTE.format(level=100 * CONFIDENCE)
    words, table = sentences(op), points_table(op)
    h.append(f"<h2 id='operating'>Operating points</h2><p class='muted'>{html.escape(note)}</p><ul class='headline'>"
             + "".join(f"<li>{html.escape(s)}</li>" for s in words) + "</ul>")
    md += ["## Operating points", "", note, ""] + [f"- {s}" for s in words] + [""]
    for name in FIGURES:
        if name in figs.png:
            b64 = base64.b64encode(figs.png[name]).decode()
            cap = figs.captions.get(name, name)
            h.append(f"<figure><img alt='{name}' src='data:image/png;base64,{b64}'><figcaption class='muted'>"
                     f"{html.escape(cap)}</figcaption></figure>")
            md += [f"![{cap}](plots/{name}.png)", ""]
        elif name in figs.absent:
            md += [f"_{figs.absent[name]}_", ""]
    h.append("<h3>At each operating point</h3>" + html_table(table))
    md += ["### At each operating point", "", md_table(table)]
    ranks = op.rankings[op.rankings["lines"] > 1].drop(columns=["leader", "lines"])
    if not ranks.empty:
        ranks = ranks.rename(columns={"context": "model · boundary · work", "batch_size": "batch size",
                                      "ranking": "ranking by median J/token (least first)"})
        h.append("<h3>Runtime ranking at each batch size</h3>" + html_table(ranks))
        md += ["### Runtime ranking at each batch size", "", md_table(ranks)]
