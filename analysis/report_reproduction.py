"""The report's Reproduction section (issue 25): a run made by `orchestrate.py reproduce` holds reproduction.json;
its report shows, per cell, the original's figures beside the reproduction's — tokens identical, the generate
window's median time and energy on each side with their ratio and its bootstrap interval, whether the new median
falls inside the original repetitions' range, the host differences, the verdict — and how each image was made ready
(local, loaded from the bundle, rebuilt from the recipe). Nothing here is recomputed: the orchestrator's comparison
(orchestrator/reproduce.py) is the one figure, read back."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.report_format import fmt, html_table, md_table
from analysis.stats import CONFIDENCE
from runners.record.facts import mapping

SCHEMA = "slm-matrix.reproduction/1"  # orchestrator/reproduce.py writes it
NOTE = ("Each row compares one cell's trials in this run with the original run's trials of the same cell: tokens = the "
        "worst trial's share of prompts token-identical to the original's first repetition; time and energy = the "
        "generate window's median on each side (n trials), their ratio (reproduction ÷ original) with a "
        "{level:.0f} % bootstrap interval, 'in range' when the new median lies within the original repetitions' "
        "range. Energy is compared only within one energy source and boundary.")


def load(run_dirs) -> list[dict[str, Any]]:
    """The reproduction.json of each run folder that has one (a run that is not a reproduction has none)."""
    out = []
    for d in run_dirs:
        path = Path(d) / "reproduction.json"
        if path.is_file():
            doc = json.loads(path.read_text())
            if doc.get("schema") == SCHEMA:
                out.append({**doc, "run_dir": str(d)})
    return out


def _side(f: dict[str, Any], key: str, n: str) -> str:
    return "–" if f.get(key) is None else f"{fmt(f[key])} (n={f.get(n)})"


def _ratio(f: dict[str, Any]) -> str:
    if f.get("ratio") is None:
        return f.get("note") or "–"
    ci = "" if f.get("low") is None else f" [{fmt(f['low'])}, {fmt(f['high'])}]"
    inside = {True: ", in range", False: ", out of range"}.get(f.get("within_original_range"), "")
    return f"×{fmt(f['ratio'])}{ci}{inside}"


def table(doc: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for r in doc.get("cells") or []:
        t, e = r.get("time") or {}, r.get("energy") or {}
        share = r.get("tokens_identical")
        rows.append({"cell": r.get("cell"), "tokens identical": "–" if share is None else f"{100 * share:.0f} %",
                     "time s, original": _side(t, "original_median", "original_n"),
                     "time s, reproduction": _side(t, "median", "n"), "time ratio": _ratio(t),
                     "energy J, original": _side(e, "original_median", "original_n"),
                     "energy J, reproduction": _side(e, "median", "n"), "energy ratio": _ratio(e),
                     "energy measured on": ", ".join(e.get("measured_on") or []) or "–",
                     "host differs": ", ".join(mapping(r.get("host_differences"))) or "–", "verdict": r.get("verdict")})
    return pd.DataFrame(rows)


def sentence(doc: dict[str, Any]) -> str:
    cells = doc.get("cells") or []
    verdicts = pd.Series([c.get("verdict") for c in cells]).value_counts()
    words = ", ".join(f"{n} {v}" for v, n in verdicts.items()) or "no cell compared"
    images = "; ".join(f"{image}: {how}" for image, how in sorted(mapping(doc.get("images")).items()))
    allowed = " Images built from another recipe were allowed (--allow-different-images)." \
        if doc.get("allow_different_images") else ""
    return (f"Reproduction of {doc.get('original')}: {len(cells)} cell(s) — {words}." + allowed
            + (f" Images: {images}." if images else ""))


def section(reproductions: list[dict[str, Any]], h: list[str], md: list[str]) -> None:
    """Append the section (nothing for a run that is not a reproduction)."""
    if not reproductions:
        return
    note = NOTE.format(level=100 * CONFIDENCE)
    h.append(f"<h2 id='reproduction'>Reproduction</h2><p class='muted'>{html.escape(note)}</p>")
    md += ["## Reproduction", "", note, ""]
    for doc in reproductions:
        words, df = sentence(doc), table(doc)
        h.append(f"<p>{html.escape(words)}</p>" + html_table(df))
        md += [words, "", md_table(df)]
