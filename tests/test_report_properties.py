"""The report renders for every record set the tool can write, and claims nothing it cannot back (issue 22 item 1).

Record sets are drawn through the synthetic builder (analysis/synthetic.py, the runner's own record author):
configurations with no energy figure at all (a CPU host without RAPL, codecarbon off), one repetition, one
configuration, every trial failed, several energy boundaries in one model, records of schema /1 beside /2, no
agreement pass, evaluations present or missing, a configuration that did different work, repetitions from two hosts,
work as served beside the same work, one repetition of a configuration without a figure.
For each: ``build_report`` writes its files, no energy comparison, saving, winner or Pareto front crosses an energy
boundary or includes a row kept out of comparisons, and nothing is claimed for fewer than two configurations."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from analysis.figures import fronts, quality_rows
from analysis.report import analyse, headlines, write_report
from analysis.synthetic import (ESTIMATED_COMPONENTS, MEASURED_CPU, MEASURED_CUDA, as_schema_1, make_record,
                                write_evaluations, write_run)

CONFIGS = (("torch", "cpu", "fp32"), ("onnx", "cpu", "fp32"), ("openvino", "cpu", "int8"), ("torch", "cuda", "fp32"),
           ("vllm", "cpu", "fp32"))
ENERGY_METRICS = {"energy_j", "net_energy_j"}

cells = st.fixed_dictionaries({
    "source": st.sampled_from(("estimated", "measured", "unavailable")), "reps": st.integers(1, 3),
    "failed": st.integers(0, 3), "idle": st.booleans(), "schema1": st.booleans(),
    "energy": st.floats(5.0, 500.0), "duration": st.floats(1.0, 60.0), "diverge": st.booleans(),
    "two_hosts": st.booleans(), "served": st.booleans(), "lost_one": st.booleans()})
record_sets = st.fixed_dictionaries({
    "models": st.lists(st.dictionaries(st.integers(0, len(CONFIGS) - 1), cells, min_size=1, max_size=3),
                       min_size=1, max_size=2),
    "agreement": st.booleans(), "evaluated": st.booleans()})


def _cell(**kw):
    return {"source": "estimated", "reps": 2, "failed": 0, "idle": True, "schema1": False, "energy": 100.0,
            "duration": 10.0, "diverge": False, "two_hosts": False, "served": False,
            "lost_one": False, **kw}


def _records(drawn: dict) -> list[dict]:
    recs, order = [], 0
    for m, cells_of_model in enumerate(drawn["models"]):
        for c, cell in cells_of_model.items():
            engine, device, precision = CONFIGS[c]
            source = cell["source"]
            comps = {"estimated": ESTIMATED_COMPONENTS, "unavailable": {}}.get(
                source, MEASURED_CUDA if device == "cuda" else MEASURED_CPU)
            for r in range(cell["reps"]):
                lost = cell["lost_one"] and r == 1  # one repetition without a figure (e.g. marked invalid)
                rec = make_record(
                    model=f"m{m}", engine=engine, device=device, precision=precision,
                    source="unavailable" if lost else source, repetition=r,
                    order_index=order, energy_j=cell["energy"] * (1 + 0.03 * r),
                    duration_s=cell["duration"] * (1 + 0.02 * r),
                    idle_w={k: 0.5 for k in comps} if cell["idle"] and comps and not lost else None,
                    status="failed" if r < cell["failed"] else "ok",
                    diverge=range(4) if cell["diverge"] else (), diverge_from=0 if cell["diverge"] else None,
                    fixed_length=not cell["served"])
                if cell["two_hosts"] and r % 2:
                    rec["environment"]["hostname"] = "other-host"
                recs.append(as_schema_1(rec) if cell["schema1"] else rec)
                order += 1
    return recs


def _one_boundary(rows: pd.DataFrame, what: str) -> None:
    bounds = set(rows["energy_boundary"].fillna("none"))
    assert len(bounds) <= 1, f"{what} crosses energy boundaries: {bounds}"
    assert "none" not in bounds, f"{what} holds a configuration without an energy figure"
    assert rows["work"].nunique() <= 1, f"{what} crosses work (same work vs as served): {set(rows['work'])}"


def _assert_claims_hold(a, heads: list[str]) -> None:
    ok, med = a.ok, a.medians
    if ok.empty:
        assert not [h for h in heads if "less energy" in h or "Pareto" in h], heads
        return
    for c in a.comparisons:  # every energy test within one boundary, over finite figures
        if c.metric in ENERGY_METRICS and not c.groups.empty and c.tested:
            key = "group" if c.scope == "model" else "size_scope"
            _one_boundary(ok[(ok[key] == c.name) & ok["config"].isin(c.groups["config"])], f"test {c.name}")
    finite = med[np.isfinite(pd.to_numeric(med["energy_j"], errors="coerce"))] if not med.empty else med
    sizes = finite.groupby("group")["config"].nunique() if not finite.empty else pd.Series(dtype=int)
    for bw in a.best_worst.itertuples():  # a saving needs two configurations of one boundary
        pair = ok[(ok["group"] == bw.group) & ok["config"].isin([bw.best, bw.worst])]
        _one_boundary(pair, f"best vs worst {bw.group}")
        assert bw.best != bw.worst and sizes[bw.group] >= 2
    for (pa, pb), df in a.pairs.items():
        for g in df["group"]:
            _one_boundary(ok[(ok["group"] == g) & ok["config"].isin([pa, pb])], f"pair {pa}/{pb} in {g}")
    for h in heads:  # no winner named for a group of fewer than two configurations with an energy figure
        if "used the least energy" in h:
            group = next(g for g in sorted(sizes.index, key=len, reverse=True) if h.startswith(f"{g}: "))
            assert sizes[group] >= 2, h
    if not med.empty:
        on = med[fronts(med, "duration_s", "energy_j", "group")]
        for g, part in on.groupby("group"):
            assert sizes.get(g, 0) >= 2, g
            _one_boundary(ok[(ok["group"] == g) & ok["config"].isin(part["config"])], f"energy-time front {g}")
        if on.empty:
            assert not any(h.startswith("Pareto-optimal in energy and time") for h in heads), heads
    if not a.quality_table.empty:  # item 6: the quality front per model × boundary, over the comparable rows
        q = quality_rows(a.quality_table)
        front = q[q["front"]]
        assert front["excluded"].isna().all()
        for panel, part in front.groupby("panel"):
            comparable = q[(q["panel"] == panel) & q["excluded"].isna() & q["j_per_token"].notna()]
            assert len(comparable) >= 2, panel
            assert len(set(zip(comparable["energy_boundary"], comparable["mode"]))) == 1, (panel, comparable)
        if front.empty:
            assert not any(h.startswith("Pareto-optimal in pass@1") for h in heads), heads
    kept_out = {(r.model, r.config) for d in (a.different, a.mixed_hardware) if not d.empty for r in d.itertuples()}
    assert not kept_out & set(zip(med["model"], med["config"]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_sets)
# the named cases, always run: no energy anywhere (the crash of issue 22); one group without energy beside others
# on several boundaries, one repetition without a figure, schema /1 beside /2, evaluated; one configuration, one
# repetition; every trial failed; no agreement pass and evaluations missing; different work, two hosts, as served
@example({"models": [{0: _cell(source="unavailable", idle=False), 1: _cell(source="unavailable", idle=False)}],
          "agreement": True, "evaluated": False})
@example({"models": [{0: _cell(reps=3, lost_one=True), 1: _cell(schema1=True), 2: _cell(source="unavailable"),
                      3: _cell(source="measured")}], "agreement": True, "evaluated": True})
@example({"models": [{0: _cell(reps=1)}], "agreement": True, "evaluated": True})
@example({"models": [{0: _cell(failed=3), 1: _cell(failed=3)}], "agreement": True, "evaluated": False})
@example({"models": [{0: _cell(), 1: _cell(energy=50.0)}, {0: _cell(source="measured")}], "agreement": False,
          "evaluated": False})
@example({"models": [{0: _cell(), 1: _cell(energy=60.0), 4: _cell(diverge=True, energy=5.0),
                      2: _cell(two_hosts=True, energy=4.0), 3: _cell(served=True, energy=3.0)}], "agreement": True,
          "evaluated": True})
def test_the_report_renders_and_claims_nothing_it_cannot_back(drawn):
    with tempfile.TemporaryDirectory() as tmp:
        recs = _records(drawn)
        run = write_run(recs, Path(tmp) / "r", agreement=drawn["agreement"])
        if drawn["evaluated"]:
            write_evaluations(recs, run)
        a = analyse([run], study_csv=None)
        paths = write_report(a, Path(tmp) / "out")
        page = paths["html"].read_text()
        assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
        assert paths["markdown"].read_text().startswith("# ")
        _assert_claims_hold(a, headlines(a))
        _assert_left_out_is_said(a, paths["markdown"].read_text())


def _assert_left_out_is_said(a, md: str) -> None:
    """Each plot of energy names the configurations it leaves out for want of a figure."""
    if a.ok.empty:
        return  # no successful trial: no plot to caption
    plots = md.split("## Plots")[1].split("## Failures")[0]
    for name, start in (("box_energy", "Energy of the generate window"), ("pareto", "Median energy against")):
        caption = next(line for line in plots.splitlines() if start in line)
        rows = a.ok if name == "box_energy" else a.medians
        for r in rows[rows["energy_j"].isna()].itertuples():
            assert f"{r.group} · {r.config}" in caption and "Left out" in caption, (name, caption)
