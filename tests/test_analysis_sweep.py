"""Operating points (issue 24 items 3 and 7, the analysis half): a synthetic sweep with known curves
(analysis/synthetic.py SWEEP_CURVES) read back as the sweet spots, the inversion, the Pareto front and batch
invariance it was made with; the report's section and its plots; a run without a sweep has no such section."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.load import load_runs
from analysis.operating_points import applies, operating_points
from analysis.report import build_report
from analysis.report_analysis import analyse
from analysis.synthetic import make_record, sweep_run, write_run
from runners.record import Record

ESTIMATED = "smol-135m ⟨cpu+ram (estimated)⟩ · 32 new tokens"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    run = write_run(sweep_run(), root / "run")
    a = analyse([run], study_csv=None)
    return {"run": run, "root": root, "analysis": a, "op": a.operating}


def test_a_sweep_point_reads_its_axes_and_a_fixed_setting_its_job():
    point = Record(make_record(batch=4, new_tokens=32, sweep_of="fp32"))
    assert point.sweep_of == "fp32" and point.swept_axes == {"batch_size": 4, "new_tokens": 32}
    assert point.operating_point() == {"batch_size": 4, "new_tokens": 32, "prompt_tokens": None,
                                       "threads_asked": None, "threads": 2}  # threads the engine said it ran
    fixed = make_record(batch=2, new_tokens=8)
    fixed["job"]["engine_options"] = {"threads": 1}
    fixed["job"]["workload"].update(style="length", prompt_tokens=64)
    assert Record(fixed).sweep_of is None and Record(fixed).operating_point() == {
        "batch_size": 2, "new_tokens": 8, "prompt_tokens": 64, "threads_asked": 1, "threads": 1}


def test_trial_rows_carry_the_sweep(sweep):
    t = load_runs(sweep["run"]).trials
    assert set(t["sweep_of"]) == {"fp32"} and set(t["swept_axes"]) == {"batch_size,new_tokens"}
    assert sorted(t["batch_size"].unique()) == [1, 2, 4, 8, 16] and set(t["new_tokens"]) == {32}
    assert t["prompt_tokens"].isna().all() and t["batch_size"].dtype == float


def test_the_section_applies_to_a_sweep_or_several_values_of_an_axis(tmp_path):
    fixed = [make_record(engine="torch", batch=b, repetition=r, order_index=2 * b + r) for b in (1,) for r in (0, 1)]
    assert not applies(load_runs(write_run(fixed, tmp_path / "one")).trials)  # one point: nothing to curve
    two = [make_record(engine="torch", batch=b, precision="fp32", run_id=f"b{b}") for b in (1, 4)]
    assert applies(load_runs([write_run([two[0]], tmp_path / "b1"), write_run([two[1]], tmp_path / "b4")]).trials)


def test_sweet_spot_is_the_least_j_per_token_per_runtime(sweep):
    spots = sweep["op"].sweet_spots.set_index("line")
    assert spots.loc["torch-cpu · torch", "batch_size"] == 8  # falls to 8, rises again at 16
    assert spots.loc["llamacpp-cpu · llamacpp", "batch_size"] == 16  # monotone: the largest batch
    assert spots.loc["torch-cpu · torch", "context"] == ESTIMATED


def test_ranking_is_within_one_boundary_and_says_where_it_inverts(sweep):
    op = sweep["op"]
    ranks = op.rankings
    # the measured onnx line (0.1 J/token, another boundary) is never ranked against the estimated ones
    assert not ranks["ranking"].str.contains("onnx").loc[ranks["ranking"].str.contains("torch")].any()
    est = ranks[ranks["context"] == ESTIMATED].set_index("batch_size")["leader"]
    assert est.to_dict() == {1: "llamacpp-cpu · llamacpp", 2: "llamacpp-cpu · llamacpp", 4: "torch-cpu · torch",
                             8: "torch-cpu · torch", 16: "torch-cpu · torch"}
    assert op.inversions == [f"{ESTIMATED}: the ranking by J/token inverts — llamacpp-cpu · llamacpp leads at batch "
                             "1–2, torch-cpu · torch from batch 4."]


def test_pareto_front_over_the_whole_sweep(sweep):
    p = sweep["op"].points
    front = p[(p["context"] == ESTIMATED) & p["pareto"]]
    # torch at 8 uses the least energy, torch at 16 is the fastest; nothing else is both cheaper and faster
    assert sorted(zip(front["line"], front["batch_size"])) == [("torch-cpu · torch", 8), ("torch-cpu · torch", 16)]


def test_batch_invariance_against_the_same_runtime_at_batch_1(sweep):
    p = sweep["op"].points.set_index(["line", "batch_size"])["batch_invariance"]
    for line in ("torch-cpu · torch", "llamacpp-cpu · llamacpp", "onnx-cpu · onnx"):
        assert pd.isna(p[(line, 1)])  # batch 1 is the reference, not a figure
        assert p[(line, 2)] == p[(line, 4)] == 1.0
        assert p[(line, 8)] == p[(line, 16)] == 15 / 16  # prompt 0's tokens change from batch 8 on


def test_batch_invariance_needs_a_batch_1_point(tmp_path):
    recs = [r for r in sweep_run(repetitions=1, measured={}) if r["job"]["generation"]["batch_size"] != 1]
    op = analyse([write_run(recs, tmp_path / "run")], study_csv=None).operating
    assert op.points["batch_invariance"].isna().all()


def test_report_has_the_section_and_its_plots(sweep):
    paths = build_report([sweep["run"]], sweep["root"] / "out", study_csv=None)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    part = md[md.index("## Operating points"):md.index("## Statistics")]
    assert "llamacpp-cpu · llamacpp leads at batch 1–2, torch-cpu · torch from batch 4" in part
    assert "32 new tokens, estimated energy: least J/token llamacpp-cpu · llamacpp at batch 16" in part
    assert "torch-cpu · torch at batch 8, 2 threads (0.398 J/token" in part
    assert "Pareto front in energy and time over the whole sweep — torch-cpu · torch at batch 8" in part
    assert "torch-cpu · torch at batch 8: 93.8% of prompts identical" in part
    assert "| 0.398 [" in part  # torch's median J/token at batch 8 with its interval
    for name in ("batch_energy", "batch_speed"):
        assert f"(plots/{name}.png)" in part and (sweep["root"] / "out" / "plots" / f"{name}.png").is_file()
        assert md.count(f"plots/{name}.png") == 1  # not repeated under Plots
    assert "href='#operating'" in page and "<h2 id='operating'>Operating points</h2>" in page


def test_a_run_without_a_sweep_has_no_section(tmp_path):
    recs = [make_record(engine=e, repetition=r, order_index=i) for i, (e, r) in
            enumerate((e, r) for e in ("torch", "onnx") for r in range(2))]
    a = analyse([write_run(recs, tmp_path / "run")], study_csv=None)
    assert a.operating is None
    md = build_report([tmp_path / "run"], tmp_path / "out", study_csv=None)["markdown"].read_text()
    assert "Operating points" not in md and "batch_energy" not in md


def test_curves_never_mix_sources(sweep):
    p = sweep["op"].points
    assert (p.groupby("context")["energy_source"].nunique() == 1).all()
    assert operating_points(sweep["analysis"].ok.iloc[:0]).empty


def test_batch_invariance_is_the_worst_trial_of_a_point():
    """Two repetitions at batch 4, one with a prompt changed (its record says 0.5): the point reads the worse one (as
    agreement does)."""
    from analysis.operating_points import _point_rows

    keys = {"run_id": "r", "model": "m", "runtime": "torch-cpu", "engine": "torch", "precision": "fp32",
            "new_tokens": 8.0, "prompt_tokens": float("nan"), "threads": 2.0, "power_limit_w": float("nan"),
            "held": "engine default",
            "group": "m", "energy_boundary": "cpu", "work": "same work: 8 new tokens", "context": "m · 8 new tokens",
            "energy_source": "estimated", "line": "torch-cpu · torch",
            "energy_j": 1.0, "duration_s": 1.0}
    t = pd.DataFrame([{**keys, "trial_id": tid, "batch_size": b, "repetition": rep, "batch_invariance": inv}
                      for tid, b, rep, inv in (("one", 1.0, 0, None), ("four-a", 4.0, 0, 1.0),
                                               ("four-b", 4.0, 1, 0.5))])
    points = _point_rows(t).set_index("batch_size")
    assert points.loc[4.0, "batch_invariance"] == 0.5


def test_the_power_cap_trade_off_against_the_same_point_uncapped(tmp_path):
    """A CUDA line uncapped, at 250 W and at 175 W (three repetitions each; the record's host.power_cap as the
    orchestrator writes it): the section says what each cap saved in energy and cost in time, and ranks within a
    cap only."""
    def capped(rec, cap):
        if cap:
            rec["host"] = {**(rec.get("host") or {}), "power_cap": {"requested_w": cap, "gpus": [
                {"component": "gpu0", "uuid": "GPU-0", "requested_w": cap, "enforced_w": float(cap),
                 "original_w": 350.0, "restored_w": 350.0}]}}
            rec["trial"]["trial_id"] += f"-pl{cap}"
            rec["trial"]["setting"] = f"fp32__pl{cap}"
        return rec

    # (cap, energy J, seconds): 175 W saves 12 % energy for 6.7 % more time; 250 W saves 4 % for 2 %
    figures = [(None, 100.0, 10.0), (250, 96.0, 10.2), (175, 88.0, 10.67)]
    recs = [capped(make_record(engine="torch", device="cuda", source="measured", energy_j=e, duration_s=d,
                               repetition=r, order_index=10 * i + r), cap)
            for i, (cap, e, d) in enumerate(figures) for r in range(3)]
    a = analyse([write_run(recs, tmp_path / "run")], study_csv=None)
    trials = a.ok.set_index("trial_id")
    assert sorted(trials["power_limit_w"].dropna().unique()) == [175, 250]
    assert sorted(trials["power_enforced_w"].dropna().unique()) == [175.0, 250.0]
    caps = a.operating.power_caps.set_index("power_limit_w")
    assert caps.loc[175, "energy_saved"] == pytest.approx(0.12) and caps.loc[175, "time_lost"] == pytest.approx(0.067)
    assert caps.loc[250, "energy_saved"] == pytest.approx(0.04) and set(caps["reference"]) == {"uncapped"}
    assert set(a.operating.rankings["threads"]) == {"engine default", "175 W cap", "250 W cap"}
    md = build_report([tmp_path / "run"], tmp_path / "out", study_csv=None)["markdown"].read_text()
    assert ("the GPU power cap's trade-off — torch-cuda · torch at batch 1, 175 W: 12.0 % less energy for 6.7 % "
            "more time against uncapped") in md


def test_a_curve_against_each_other_swept_axis_holds_the_rest(tmp_path):
    """Runs at 8, 16 and 32 new tokens (batch 1): J/token and tokens/s against new tokens are drawn in the section
    (one panel per model, boundary and the other axes' values), never again under Plots; no batch curve is drawn."""
    recs = [make_record(engine=e, new_tokens=n, repetition=r, order_index=100 * i + 10 * j + r, sweep_of="fp32",
                        duration_s=2.0 + n / 8, energy_j=(2.0 + n / 8) * 28)
            for i, e in enumerate(("torch", "onnx")) for j, n in enumerate((8, 16, 32)) for r in range(2)]
    run = write_run(recs, tmp_path / "run")
    paths = build_report([run], tmp_path / "out", study_csv=None)
    md = paths["markdown"].read_text()
    part, rest = md[md.index("## Operating points"):md.index("## Statistics")], md[md.index("## Statistics"):]
    for name in ("new_tokens_energy", "new_tokens_speed"):
        assert f"(plots/{name}.png)" in part and f"plots/{name}.png" not in rest
        assert (tmp_path / "out" / "plots" / f"{name}.png").is_file()
    assert "J/token against new tokens" in part and "plots/batch_energy.png" not in md
