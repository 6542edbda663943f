"""The report: one self-contained HTML file (plots embedded) and a Markdown summary, written from the numbers.

``analyse(run_dirs)`` does the work (analysis/report_analysis.py: tables, metrics, statistics, savings, the study's
figures); ``write_report`` renders it (report_sections.py lays out the page from report_tables.py and
report_headlines.py) and exports the tables next to the report as parquet and CSV; ``build_report`` does both.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.figures import make_figures
from analysis.report_analysis import DEFAULT_PAIRS, Analysis, analyse
from analysis.report_format import html_table
from analysis.report_headlines import headlines, source_words
from analysis.report_sections import render
from analysis.report_tables import agreement_table, stats_overview, validity_table

# what callers (the CLI, the tests) import from here, wherever it is defined
__all__ = ["DEFAULT_PAIRS", "Analysis", "analyse", "build_report", "headlines", "html_table", "validity_table",
           "write_report"]


def write_report(a: Analysis, out_dir: str | Path, *, title: str | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    figs = make_figures(a, source_words(a) if len(a.sources) == 1 else "mixed sources")
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
    agreement_table(a).to_csv(out / "tables" / "agreement.csv", index=False)
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
