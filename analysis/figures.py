"""What each figure and each Pareto front of the report shows: only rows with a finite figure, only within one
comparison group (a model within one energy boundary), only over the rows every other comparison uses — and a
caption naming what was left out and why. The drawing itself is analysis/plots.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import plots
from analysis.metrics import pareto_front

MIN_FRONT = 2  # a "front" of one configuration says nothing


@dataclass
class Figures:
    png: dict[str, bytes] = field(default_factory=dict)  # name -> PNG
    captions: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)  # name -> why the figure is not drawn


def finite(df: pd.DataFrame, cols: list[str], panel: str, what: str) -> tuple[pd.DataFrame, str]:
    """(rows whose ``cols`` are all finite, a sentence naming the panel × configurations left out)."""
    if df.empty:
        return df, ""
    vals = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    keep = np.isfinite(vals).all(axis=1)
    counts = pd.Series(~keep, index=df.index).groupby([df[panel], df["config"]], sort=True).agg(["sum", "size"])
    left = [f"{p} · {cfg}" + ("" if missing == n else f" ({missing} of {n} rows)")
            for (p, cfg), missing, n in zip(counts.index, counts["sum"], counts["size"]) if missing]
    note = f" Left out ({what}): {'; '.join(left)}." if left else ""
    return df[keep], note


def fronts(df: pd.DataFrame, x: str, y: str, by: str) -> pd.Series:
    """True for rows on the Pareto front (lower x and lower y) of their ``by`` group; a group with fewer than
    MIN_FRONT rows of finite figures has no front."""
    on = pd.Series(False, index=df.index)
    for _, part in df.groupby(by):
        part = part[np.isfinite(part[[x, y]].apply(pd.to_numeric, errors="coerce").to_numpy(float)).all(axis=1)]
        if len(part) >= MIN_FRONT:
            on.loc[part.index] = pareto_front(part, x, y).astype(bool)
    return on


def quality_rows(qt: pd.DataFrame) -> pd.DataFrame:
    """The quality table's rows that may be compared, with ``panel`` (model × boundary, and mode where a group holds
    both) and ``front`` (pass@1 vs net J/token), plus the excluded ones marked."""
    q = qt.assign(fail=1 - qt["pass@1"])
    modes = q.groupby("group")["mode"].transform("nunique")
    q["panel"] = q["group"].where(modes < 2, q["group"] + " · " + q["mode"])
    comparable = q[q["excluded"].isna()]
    q["front"] = False
    q.loc[comparable.index, "front"] = fronts(comparable, "j_per_token", "fail", "panel")
    return q


def front_sentences(medians: pd.DataFrame, qt: pd.DataFrame) -> list[str]:
    """Headlines for the fronts of at least two configurations, and nothing for the rest."""
    out = []
    if not medians.empty:
        on = medians[fronts(medians, "duration_s", "energy_j", "group")]
        if not on.empty:
            out.append("Pareto-optimal in energy and time (nothing both cheaper and faster), within each model and "
                       "energy boundary: " + "; ".join(f"{g}: {', '.join(sorted(p['config']))}"
                                                       for g, p in on.groupby("group")) + ".")
    if not qt.empty:
        on = quality_rows(qt).query("front")
        if not on.empty:
            out.append("Pareto-optimal in pass@1 and net J/token (nothing solves more for less), within each model "
                       "and energy boundary: " + "; ".join(f"{g}: {', '.join(sorted(p['config']))}"
                                                           for g, p in on.groupby("panel")) + ".")
    return out


def _box(f: Figures, name: str, ok: pd.DataFrame, value: str, label: str, panel: str, caption: str,
         what: str) -> None:
    part, note = finite(ok, [value], panel, what)
    if part.empty:
        f.absent[name] = caption + " Not drawn: no trial has a finite figure." + note
        return
    f.png[name] = plots.to_png(plots.box_plots(part, value, label, panel=panel))
    f.captions[name] = caption + note


def _pareto(f: Figures, medians: pd.DataFrame, src: str) -> None:
    caption = ("Median energy against median time per configuration, within each model and energy boundary; ringed "
               "points joined by the dashed line are the Pareto front (only where two or more configurations have "
               "both figures).")
    part, note = finite(medians, ["energy_j", "duration_s"], "group", "no energy or time figure")
    if part.empty:
        f.absent["pareto"] = caption + " Not drawn: no configuration has both figures." + note
        return
    part = part.assign(front=fronts(part, "duration_s", "energy_j", "group"))
    f.png["pareto"] = plots.to_png(plots.energy_time_scatter(part, energy_label=f"median energy, {src} (J)",
                                                             panel="group"))
    f.captions["pareto"] = caption + note


def _quality(f: Figures, qt: pd.DataFrame) -> None:
    caption = ("HumanEval pass@1 (Wilson 95 % interval) against median net J/token per configuration, one panel per "
               "model and energy boundary; ringed points joined by the dashed line are the Pareto front (no "
               "configuration solves more for less energy per token), drawn where two or more may be compared.")
    q = quality_rows(qt)
    excluded = q[q["excluded"].notna()]
    note = ("" if excluded.empty else " Left out (kept out of every comparison): " + "; ".join(
        f"{r.panel} · {r.config} ({r.excluded})" for r in excluded.itertuples()) + ".")
    part, more = finite(q[q["excluded"].isna()], ["j_per_token", "pass@1"], "panel", "no net J/token figure")
    if part.empty:
        f.absent["quality"] = caption + " Not drawn: no comparable configuration has a net J/token." + note + more
        return
    f.png["quality"] = plots.to_png(plots.quality_energy_scatter(part))
    f.captions["quality"] = caption + note + more


def _typical(part: pd.DataFrame) -> pd.Series:
    """The trial closest to its configuration's median energy (else time): a typical one, not an outlier."""
    for col in ("energy_j", "duration_s"):
        v = pd.to_numeric(part[col], errors="coerce")
        if v.notna().any():
            return part.loc[(v - v.median()).abs().idxmin()]
    return part.iloc[0]


def _power(f: Figures, ok: pd.DataFrame, series: dict) -> None:
    traces = []
    with_series = ok[ok["trial_id"].isin(list(series))]
    if not with_series.empty:
        model = sorted(with_series["model"].unique())[0]
        for cfg, part in with_series[with_series["model"] == model].groupby("config"):
            r = _typical(part)
            rep = "?" if pd.isna(r["repetition"]) else int(r["repetition"])
            traces.append((f"{model} · {cfg} · rep {rep}", series[r["trial_id"]]))
    fig = plots.power_over_time(traces[:6])
    if fig is None:
        f.absent["power"] = "No sampled power or utilisation series in these records."
        return
    f.png["power"] = plots.to_png(fig)
    has_power = any(plots.series_keys(s)[1].startswith("power") for _, s in traces)
    f.captions["power"] = (
        ("Sampled power" if has_power else "No power series was sampled (no RAPL or NVML counter): CPU "
         "utilisation instead,") + " over the generate window of a typical trial of each configuration (the one "
        "closest to its configuration's median energy, or time where it has no energy figure).")


def _batch_curves(f: Figures, op) -> None:
    """J/token and tokens/s against batch size, per context (and threads where set) with two or more batch sizes;
    each panel one energy source, named in its title."""
    if op is None or op.empty:
        return
    p = op.points.dropna(subset=["batch_size"])
    p = p.assign(panel=p["context"] + np.where(p["held"] == "engine default", "", " · " + p["held"])
                 + "\n" + p["energy_source"].fillna("no") + " energy")
    p = p[p.groupby(["panel", "line"])["batch_size"].transform("nunique") > 1]
    if p.empty:
        f.absent["batch_energy"] = "No runtime was measured at two or more batch sizes: no curve against batch size."
        return
    words = (" Median over repetitions with its bootstrap confidence band, one line per runtime; batch size on a "
             "log2 axis; one panel per model, energy boundary and work, its energy source in the title (measured "
             "and estimated figures are never on one curve).")
    energy = p.dropna(subset=["j_per_token"])
    if not energy.empty:
        f.png["batch_energy"] = plots.to_png(plots.axis_curves(energy, "j_per_token", "J/token"))
        f.captions["batch_energy"] = "J/token against batch size." + words
    f.png["batch_speed"] = plots.to_png(plots.axis_curves(p.dropna(subset=["tokens_per_s"]), "tokens_per_s",
                                                          "tokens/s"))
    f.captions["batch_speed"] = "Tokens/s against batch size." + words


# The other operating-point axes, each drawn where a runtime was measured at two or more of its values with every
# other axis held: axis -> (its words, log2 scale)
OTHER_AXES = {"new_tokens": ("new tokens", True), "prompt_tokens": ("prompt tokens", True),
              "threads": ("threads", False), "power_limit_w": ("GPU power cap (W)", False), "gpus": ("GPUs", False)}
CURVE_FIGURES = ("batch_energy", "batch_speed", *(f"{a}_{k}" for a in OTHER_AXES for k in ("energy", "speed")))


def _axis_curves(f: Figures, op) -> None:
    """J/token and tokens/s against each other swept axis; a panel per model, energy boundary and values of the
    other axes (so a curve moves one axis only)."""
    if op is None or op.empty:
        return
    p = op.points
    words = {"batch_size": "batch", **{a: w for a, (w, _) in OTHER_AXES.items()}}
    for axis, (label, log2) in OTHER_AXES.items():
        if axis not in p or p[axis].nunique() < 2:
            continue
        held = [a for a in words if a != axis and a in p]
        q = p.dropna(subset=[axis])
        # the comparison group without the work's token count (the work's kind: same work, as served, sampled)
        q = q.assign(panel=[f"{r['model']} ⟨{r['energy_boundary']}⟩ · {str(r['work']).split(':')[0]}\n"
                            + ", ".join(f"{words[a]} {r[a]:g}" for a in held if pd.notna(r[a]))
                            + f"\n{r['energy_source'] if isinstance(r['energy_source'], str) else 'no'} energy"
                            for _, r in q.iterrows()])
        q = q[q.groupby(["panel", "line"])[axis].transform("nunique") > 1]
        if q.empty:
            continue
        note = (" One line per runtime, median with its bootstrap band; one panel per model, energy boundary and "
                "values of the other axes (named in its title).")
        for metric, name, what in (("j_per_token", "energy", "J/token"), ("tokens_per_s", "speed", "tokens/s")):
            drawn = q.dropna(subset=[metric])
            if not drawn.empty:
                f.png[f"{axis}_{name}"] = plots.to_png(plots.axis_curves(drawn, metric, what, x=axis, x_label=label,
                                                                         log2=log2))
                f.captions[f"{axis}_{name}"] = f"{what} against {label}." + note


def make_figures(a, src: str) -> Figures:
    """Every figure of the report (``a``: analysis.report.Analysis; ``src``: the energy source in words)."""
    f = Figures()
    ok = a.ok
    if ok.empty:
        return f
    _box(f, "box_energy", ok, "energy_j", f"energy, {src} (J)", "group",
         f"Energy of the generate window per trial ({src}), per model (and energy boundary) × configuration.",
         "no energy figure")
    _box(f, "box_time", ok, "duration_s", "time (s)", "model",
         "Duration of the generate window per trial, per model × configuration.", "no time figure")
    _pareto(f, a.medians, src)
    if not a.savings_matrix.empty and a.savings_matrix.shape[1] > 1:
        f.png["savings"] = plots.to_png(plots.savings_heatmap(
            a.savings_matrix, f"% of energy ({src}) saved against the worst configuration of each model "
                              "(and energy boundary)"))
        f.captions["savings"] = "Savings heatmap: (worst − configuration) / worst × 100, per model, median energy."
    if not a.quality_table.empty:
        _quality(f, a.quality_table)
    _power(f, ok, a.tables.series)
    _batch_curves(f, a.operating)
    _axis_curves(f, a.operating)
    return f
