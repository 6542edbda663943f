"""Plots a person would rather look at than read. Every function returns a matplotlib Figure (Agg backend)."""

from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")  # headless: the analysis runs in CI and over SSH
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.metrics import pareto_front  # noqa: E402

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


def energy_time_scatter(medians: pd.DataFrame, energy: str = "energy_j", time: str = "duration_s",
                        energy_label: str = "energy (J)", panel: str = "model") -> plt.Figure:
    """Median energy against median time per configuration, one panel per model; the Pareto front (nothing is
    both cheaper and faster) is joined by a line and its points are ringed."""
    models = sorted(medians[panel].unique())
    fig, axes = _grid(len(models))
    pal = _palette(medians["config"])
    for ax, model in zip(axes, models):
        part = medians[medians[panel] == model].dropna(subset=[energy, time])
        front = part[pareto_front(part, time, energy)].sort_values(time)
        for r in part.itertuples(index=False):
            ax.scatter(getattr(r, time), getattr(r, energy), color=pal[r.config], s=60, label=r.config, zorder=3)
        ax.plot(front[time], front[energy], "--", color="grey", lw=1, zorder=2)
        ax.scatter(front[time], front[energy], s=180, facecolors="none", edgecolors="black", zorder=4)
        ax.set_title(model, fontsize=11)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(energy_label)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in pal.items()]
    handles.append(plt.Line2D([], [], marker="o", ls="--", color="grey", mfc="none", mec="black",
                              label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def quality_energy_scatter(q: pd.DataFrame) -> plt.Figure:
    """pass@1 (with its interval) against J/token per configuration, one panel per model; the Pareto front (nothing
    solves more tasks for fewer joules per token) ringed and joined."""
    models = sorted(q["model"].unique())
    fig, axes = _grid(len(models))
    pal = _palette(q["config"])
    for ax, model in zip(axes, models):
        part = q[q["model"] == model].dropna(subset=["j_per_token", "pass@1"]).assign(fail=lambda d: 1 - d["pass@1"])
        front = part[pareto_front(part, "j_per_token", "fail")].sort_values("j_per_token")
        for _, r in part.iterrows():
            p = 100 * r["pass@1"]
            ax.errorbar(r["j_per_token"], p, yerr=[[p - 100 * r["ci_low"]], [100 * r["ci_high"] - p]], fmt="o",
                        color=pal[r["config"]], ms=7, capsize=3, zorder=3)
        ax.plot(front["j_per_token"], 100 * front["pass@1"], "--", color="grey", lw=1, zorder=2)
        ax.scatter(front["j_per_token"], 100 * front["pass@1"], s=180, facecolors="none", edgecolors="black",
                   zorder=4)
        ax.set_title(model, fontsize=11)
        ax.set_xlabel("J/token (median)")
        ax.set_ylabel("HumanEval pass@1 (%)")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in pal.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
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
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time in generate window (s)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def to_png(fig: plt.Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
