"""Plots a person would rather look at than read. Every function returns a matplotlib Figure (Agg backend)."""

from __future__ import annotations

import io
import warnings

import matplotlib
import matplotlib.ticker  # noqa: F401  (batch sizes written as numbers on the log2 axis)

matplotlib.use("Agg")  # headless: the analysis runs in CI and over SSH
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


sns.set_theme(style="whitegrid", context="notebook")


def _grid(n: int, col_wrap: int = 3, w: float = 4.6, h: float = 3.6):
    cols = min(col_wrap, max(n, 1))
    rows = -(-max(n, 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _palette(configs) -> dict:
    configs = sorted(set(configs))
    return dict(zip(configs, sns.color_palette("tab10", max(len(configs), 1))))


def box_plots(ok: pd.DataFrame, value: str, label: str, panel: str = "model") -> plt.Figure:
    """One panel per model (or comparison group: a model within one energy boundary), a box per configuration
    (repetitions as points)."""
    models = sorted(ok[panel].unique())
    fig, axes = _grid(len(models))
    pal = _palette(ok["config"])
    for ax, model in zip(axes, models):
        part = ok[ok[panel] == model]
        order = sorted(part["config"].unique())
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`: not ours to fix
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            sns.boxplot(data=part, x="config", y=value, hue="config", order=order, palette=pal, ax=ax, legend=False,
                        fliersize=0)
        sns.stripplot(data=part, x="config", y=value, order=order, color="black", size=3, alpha=0.6, ax=ax)
        ax.set_title(model, fontsize=11)
        ax.set_xlabel("")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    return fig


def _front_panel(ax, part: pd.DataFrame, x: str, y: str, ys=None) -> None:
    """The points of one panel, and its Pareto front (the rows marked ``front``) ringed and joined."""
    front = part[part["front"]].sort_values(x)
    fy = front[y] if ys is None else ys(front)
    ax.plot(front[x], fy, "--", color="grey", lw=1, zorder=2)
    ax.scatter(front[x], fy, s=180, facecolors="none", edgecolors="black", zorder=4)


def _legend(fig: plt.Figure, pal: dict, front: bool) -> None:
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in pal.items()]
    if front:
        handles.append(plt.Line2D([], [], marker="o", ls="--", color="grey", mfc="none", mec="black",
                                  label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06, 1, 1))


def energy_time_scatter(medians: pd.DataFrame, energy: str = "energy_j", time: str = "duration_s",
                        energy_label: str = "energy (J)", panel: str = "model") -> plt.Figure:
    """Median energy against median time per configuration, one panel per model (or comparison group); the rows
    marked ``front`` (analysis/figures.py decides which) are ringed and joined."""
    models = sorted(medians[panel].unique())
    fig, axes = _grid(len(models))
    pal = _palette(medians["config"])
    for ax, model in zip(axes, models):
        part = medians[medians[panel] == model]
        for r in part.itertuples(index=False):
            ax.scatter(getattr(r, time), getattr(r, energy), color=pal[r.config], s=60, label=r.config, zorder=3)
        _front_panel(ax, part, time, energy)
        ax.set_title(model, fontsize=11)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(energy_label)
    _legend(fig, pal, medians["front"].any())
    return fig


def quality_energy_scatter(q: pd.DataFrame) -> plt.Figure:
    """pass@1 (with its interval) against net J/token per configuration, one panel per ``panel`` (a model within
    one energy boundary); the rows marked ``front`` ringed and joined."""
    panels = sorted(q["panel"].unique())
    fig, axes = _grid(len(panels))
    pal = _palette(q["config"])
    for ax, name in zip(axes, panels):
        part = q[q["panel"] == name]
        for _, r in part.iterrows():
            p = 100 * r["pass@1"]
            ax.errorbar(r["j_per_token"], p, yerr=[[p - 100 * r["ci_low"]], [100 * r["ci_high"] - p]], fmt="o",
                        color=pal[r["config"]], ms=7, capsize=3, zorder=3)
        _front_panel(ax, part, "j_per_token", "pass@1", ys=lambda fr: 100 * fr["pass@1"])
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("net J/token (median)")
        ax.set_ylabel("HumanEval pass@1 (%)")
    _legend(fig, pal, q["front"].any())
    return fig


def _words(ax, title: str, xlabel: str, ylabel: str, legend: int) -> None:
    """A panel's title, axis labels and legend (its font size)."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend, loc="best")


def axis_curves(points: pd.DataFrame, metric: str, label: str, panel: str = "panel", x: str = "batch_size",
                x_label: str = "batch size", log2: bool = True) -> plt.Figure:
    """A metric's median (with its confidence band) against one operating-point axis (``x``), one line per runtime,
    one panel per ``panel`` (one context, the other axes held); sizes (batch, tokens) on a log2 axis."""
    panels = sorted(points[panel].unique())
    fig, axes = _grid(len(panels), col_wrap=2, w=6.0, h=4.0)
    pal = _palette(points["line"])
    for ax, name in zip(axes, panels):
        for line, g in points[points[panel] == name].sort_values(x).groupby("line", sort=True):
            ax.plot(g[x], g[metric], "o-", color=pal[line], label=line, lw=1.6)
            ax.fill_between(g[x], g[f"{metric}_low"], g[f"{metric}_high"], color=pal[line], alpha=0.2, lw=0)
        if log2:
            ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        _words(ax, name, x_label, label, legend=8)
    fig.tight_layout()
    return fig


def savings_heatmap(matrix: pd.DataFrame, title: str) -> plt.Figure:
    """model × configuration: % energy saved against the worst configuration of the same model."""
    fig, ax = plt.subplots(figsize=(1.3 * max(len(matrix.columns), 3) + 3, 0.6 * max(len(matrix), 2) + 2.2))
    sns.heatmap(matrix, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": "% saved vs worst"}, ax=ax,
                linewidths=0.5)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("configuration")
    ax.set_ylabel("model")
    ax.tick_params(axis="x", rotation=30)
    ax.tick_params(axis="y", rotation=0)  # model names read across, not stacked sideways
    fig.tight_layout()
    return fig


def series_keys(series: dict) -> tuple[list[str], str]:
    """The sampled power series of a trial (…power…, …_w); utilisation where no power was sampled."""
    keys = [k for k in series if k != "t_s" and ("power" in k or k.endswith("_w"))]
    if keys:
        return keys, "power (W)"
    return [k for k in series if "util" in k], "utilisation (%)"


def power_over_time(traces: list[tuple[str, dict]]) -> plt.Figure | None:
    """Power over the generate window of the given trials (title, sampled series), one panel each."""
    traces = [(t, s) for t, s in traces if series_keys(s)[0]]
    if not traces:
        return None
    fig, axes = _grid(len(traces), col_wrap=3, h=3.0)
    for ax, (title, s) in zip(axes, traces):
        keys, ylabel = series_keys(s)
        t = pd.to_numeric(pd.Series(s["t_s"]), errors="coerce").to_numpy(float)
        for k in keys:
            y = pd.to_numeric(pd.Series(s[k]), errors="coerce").to_numpy(float)  # a missed sample is None
            ax.plot(t[: len(y)], y[: len(t)], lw=1.2, label=k)
        _words(ax, title, "time in generate window (s)", ylabel, legend=7)
    fig.tight_layout()
    return fig


def to_png(fig: plt.Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
