"""How the report writes a number, a range and a table (Markdown and HTML): one formatting for every section."""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd


def fmt(x, digits: int = 3) -> str:
    if x is None or isinstance(x, str):
        return "–" if x is None else x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 10 ** digits:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def _fmt_df(df: pd.DataFrame) -> pd.DataFrame:
    return df.apply(lambda col: col.map(fmt)) if not df.empty else df


def pct(x: float) -> str:
    return f"{x:.1f} %"


def span(lo: float, hi: float, digits: int = 1) -> str:
    """'12.3 %–45.6 %', or one figure when the range is a single value (one model)."""
    a, b = f"{lo:.{digits}f}", f"{hi:.{digits}f}"
    return f"{a} %" if a == b else f"{a} %–{b} %"


def range_words(r: dict, a: str, b: str, digits: int = 1) -> str:
    """'A used x–y % less energy than B', or the honest version when the sign changes."""
    lo, hi, d = r["low"], r["high"], digits
    if lo >= 0:
        return f"{a} used {span(lo, hi, d)} less energy than {b}"
    if hi <= 0:
        return f"{a} used {span(-hi, -lo, d)} more energy than {b}"
    return f"{a} used between {-lo:.{d}f} % more and {hi:.{d}f} % less energy than {b}"


def md_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "_(none)_\n"
    d = _fmt_df(df)
    head = "| " + " | ".join(map(str, d.columns)) + " |"
    sep = "|" + "|".join("---" for _ in d.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |"
            for row in d.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def html_table(df: pd.DataFrame) -> str:
    """A plain HTML table: numbers right-aligned (class n), text left, long text wrapping (class w), everything
    escaped."""
    if df is None or df.empty:
        return "<p class='muted'>(none)</p>"
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    cls = [" class='n'" if n else "" for n in numeric]
    head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(df.columns, cls))
    # long text (a test's result, a failure's reason) wraps; names and numbers stay on one line
    body = "".join("<tr>" + "".join(f"<td{' class=w' if len(v) > 48 and not k else k}>{html.escape(v)}</td>"
                                    for v, k in zip(row, cls)) + "</tr>"
                   for row in _fmt_df(df).itertuples(index=False))
    return f"<table class='t'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
