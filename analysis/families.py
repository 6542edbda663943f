"""Runtime families (issue 27 item 5): one runtime library reached through several engines — ONNX Runtime through
optimum's generate loop and through ONNX Runtime GenAI, OpenVINO through optimum-intel and through OpenVINO GenAI,
PyTorch eager and compiled. Within a family the runtime is the same, so the gap between its engines is what the
*path* costs; a comparison that ranks "ONNX" or "OpenVINO" by one path would rank the Python around it.

Each engine declares its family (runners/engines: ``Engine.family``). Engines of one family are compared only within
one comparison group (model, energy boundary, work — analysis.metrics.comparison_groups), device, precision and
operating point, on the median J/token and tokens/s over repetitions, as a ratio to the family's first engine by name
(the generic path: onnx, openvino, torch) with a bootstrap interval (analysis.stats.median_ratio_ci)."""

from __future__ import annotations

import html

import pandas as pd

from analysis.operating_points import AXES
from analysis.report_format import fmt, html_table, md_table
from analysis.stats import CONFIDENCE, median_ratio_ci

METRICS = {"j_per_token": "J/token", "tokens_per_s": "tokens/s"}
NOTE = ("Engines that drive one runtime library, compared within one model, energy boundary, work, device, precision "
        "and operating point: medians over repetitions, and each engine's ratio to the family's first engine by name "
        "with a {level:.0f} % bootstrap interval. Below 1 in J/token, or above 1 in tokens/s, that engine's path is "
        "the better one.")


def family_of(engine: str) -> str:
    """The engine's declared family; an engine this checkout does not know is a family of its own."""
    from runners.engines import ENGINE_NAMES, engine_class

    return (engine_class(engine).family or engine) if engine in ENGINE_NAMES else engine


def families(ok: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per engine of a family that has two or more engines within one comparison: its n, medians and ratios
    to the family's first engine."""
    if ok.empty or "engine" not in ok:
        return pd.DataFrame()
    t = ok.assign(family=ok["engine"].astype(str).map(family_of))
    axes = [a for a in AXES if a in t and t[a].notna().any()]
    keys = ["family", "group", "device", "precision", *axes]
    rows = []
    for key, g in t.groupby(keys, dropna=False, sort=True):
        engines = sorted(g["engine"].astype(str).unique())
        if len(engines) < 2:
            continue
        base = g[g["engine"] == engines[0]]
        for engine in engines:
            mine = g[g["engine"] == engine]
            row = dict(zip(keys, key), engine=engine, against=engines[0], n=len(mine))
            for col in METRICS:
                if col not in g:
                    continue
                r = median_ratio_ci(mine[col].dropna().tolist(), base[col].dropna().tolist(), seed=seed)
                row.update({col: r["median"], f"{col}_ratio": r["ratio"], f"{col}_low": r["low"],
                            f"{col}_high": r["high"]})
            rows.append(row)
    return pd.DataFrame(rows)


def _ratio(m, lo, hi) -> str:
    if m is None or pd.isna(m):
        return "–"
    return f"×{fmt(m)}" + ("" if lo is None or pd.isna(lo) else f" [{fmt(lo)}, {fmt(hi)}]")


def table(fam: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"family": fam["family"], "model · boundary · work": fam["group"], "device": fam["device"],
                        "precision": fam["precision"]})
    for axis in AXES:
        if axis in fam and fam[axis].notna().any():
            out[axis.replace("_", " ")] = fam[axis]
    out["engine"], out["n"] = fam["engine"], fam["n"]
    for col, label in METRICS.items():
        if col in fam:
            out[label] = fam[col].map(fmt)
            out[f"{label} vs first"] = [
                "reference" if e == a else _ratio(m, lo, hi)
                for e, a, m, lo, hi in zip(fam["engine"], fam["against"], fam[f"{col}_ratio"], fam[f"{col}_low"],
                                           fam[f"{col}_high"])]
    return out


def sentences(fam: pd.DataFrame) -> list[str]:
    """Per family and comparison: what the other path costs or saves against the first, in words."""
    out = []
    for r in fam[fam["engine"] != fam["against"]].itertuples():
        if pd.isna(getattr(r, "j_per_token_ratio", None)):
            continue
        energy = r.j_per_token_ratio
        words = f"{abs(1 - energy):.0%} {'less' if energy < 1 else 'more'} energy per token"
        speed = getattr(r, "tokens_per_s_ratio", None)
        if speed is not None and not pd.isna(speed):
            words += f" at {fmt(speed)}× the tokens/s"
        out.append(f"{r.family} on {r.group} ({r.device}, {r.precision}): {r.engine} uses {words} of {r.against}"
                   + ("" if pd.isna(r.j_per_token_low) else
                      f" (J/token ratio {fmt(r.j_per_token_low)}–{fmt(r.j_per_token_high)})") + ".")
    return out


def section(fam: pd.DataFrame, h: list[str], md: list[str]) -> None:
    """Append the report's Runtime families section (nothing when no family has two engines in one comparison)."""
    if fam is None or fam.empty:
        return
    note, words, df = NOTE.format(level=100 * CONFIDENCE), sentences(fam), table(fam)
    h.append(f"<h2 id='families'>Runtime families</h2><p class='muted'>{html.escape(note)}</p><ul class='headline'>"
             + "".join(f"<li>{html.escape(s)}</li>" for s in words) + "</ul>" + html_table(df))
    md += ["## Runtime families", "", note, ""] + [f"- {s}" for s in words] + ["", md_table(df)]
