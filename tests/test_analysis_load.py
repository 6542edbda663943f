"""analysis.load and analysis.metrics: records -> tidy tables, net energy, per-token/EDP/per-B figures, agreement.

Fixtures are built with analysis.synthetic.make_record, which writes records the runner's schema accepts (checked
here with runners.record.validate_record), so the loader is tested on the shape the runner really writes."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from analysis.load import config_label, load_runs, size_group
from analysis.metrics import add_metrics, pareto_front, with_agreement
from runners.agreement import attach_all
from analysis.synthetic import make_record, synthetic_run, write_run
from runners.record import validate_record


def _write(tmp_path, records, run="run-a"):
    return write_run(records, tmp_path / run)


def _mixed_record() -> dict:
    """A CUDA trial with a measured GPU (NVML) but no CPU counter: the CPU figure is codecarbon's estimate."""
    rec = make_record(model="m", engine="torch", device="cuda", source="measured", energy_j=50.0,
                      components={"gpu:0": 1.0}, idle_w={"gpu:0": 2.0})
    gen = rec["phases"]["generate"]
    gen["energy"].append({"component": "cpu", "joules": 30.0, "source": "estimated", "meter": "codecarbon",
                          "reason": "no CPU energy counter"})
    gen["energy"].append({"component": "cpu:package-0", "joules": None, "source": "unavailable", "meter": "rapl",
                          "reason": "no powercap"})
    gen["energy_total"] = {"measured_j": 50.0, "estimated_j": 30.0}
    return rec


def test_synthetic_records_match_the_runner_schema():
    records = synthetic_run(repetitions=2, failed=2) + [
        make_record(device="cuda", engine="onnx", source="measured", idle_w={"gpu:0": 30.0},
                    host_idle_w={"gpu:0": 31.0, "cpu:package-0": 10.0}),
        make_record(status="failed", error={"phase": "generate", "type": "RuntimeError", "message": "boom"}),
        _mixed_record(),
    ]
    for rec in records:
        validate_record(rec)  # raises on any mismatch
    assert sum(r["status"] == "failed" for r in records) == 3


def test_config_label_and_size_group():
    assert config_label("torch", "cuda", "fp32") == "TORCH-CUDA"  # the study's spelling
    assert config_label("onnx", "cpu", "int8") == "ONNX-CPU-int8"
    assert config_label("openvino", "cpu") == "OV-CPU"
    assert [size_group(p) for p in (0.135, 0.999, 1.0, 1.99, 2.0, 7.0)] == \
        ["<1B", "<1B", "1B–2B", "1B–2B", "≥2B", "≥2B"]
    assert size_group(None) is None


def test_one_row_per_trial_and_per_prompt_failures_listed(tmp_path):
    ok = [make_record(model="m", repetition=r, prompts=3, new_tokens=5) for r in range(2)]
    bad = make_record(model="m", repetition=2, status="failed",
                      error={"phase": "load", "type": "MemoryError", "message": "out of memory while loading"})
    run = _write(tmp_path, ok + [bad])
    (run / "matrix.json").write_text(json.dumps({"not": "a record"}))  # other JSON in the run: ignored
    (run / "trials" / "broken.json").write_text('{"schema": "slm-matrix.rec')  # unreadable: listed, not dropped
    (run / "work" / "t" / "out").mkdir(parents=True)  # the trial in flight: not yet a result
    (run / "work" / "t" / "out" / "record.json").write_text(json.dumps(ok[0]))

    t = load_runs(run)
    assert len(t.trials) == 3
    assert len(t.prompts) == 2 * 3
    assert set(t.prompts.columns) >= {"task_id", "latency_s", "ttft_s", "tpot_s", "output_ids", "config", "model"}
    assert len(t.ok) == 2
    reasons = dict(zip(t.failures["status"], t.failures["error_message"]))
    assert reasons["failed"] == "out of memory while loading"
    assert "unreadable" in reasons and len(t.failures) == 2
    assert t.problems.empty  # every synthetic record passes the runner's schema
    row = t.trials.iloc[0]
    assert (row["model"], row["config"], row["runtime"], row["provider"], row["precision"], row["batch"]) == \
        ("m", "TORCH-CPU", "torch-cpu", "cpu", "fp32", 1)


def test_net_energy_is_raw_minus_idle_power_times_duration(tmp_path):
    # 100 J over 10 s split cpu 80 J / ram 20 J (estimated); idle cpu 2 W, ram 1 W -> net 100 − 3 × 10 = 70 J
    rec = make_record(energy_j=100.0, duration_s=10.0, idle_w={"cpu": 2.0, "ram": 1.0})
    t = load_runs(_write(tmp_path, [rec]))
    row = t.trials.iloc[0]
    assert row["energy_estimated_j"] == pytest.approx(100.0)
    assert row["net_energy_estimated_j"] == pytest.approx(70.0)
    assert (row["energy_source"], row["energy_j"], row["net_energy_j"]) == ("estimated", pytest.approx(100.0),
                                                                            pytest.approx(70.0))
    assert pd.isna(row["energy_measured_j"])
    gen = t.energy[t.energy["phase"] == "generate"].set_index("component")
    assert gen.loc["cpu", "net_joules"] == pytest.approx(80.0 - 2.0 * 10.0)
    assert gen.loc["ram", "net_joules"] == pytest.approx(20.0 - 1.0 * 10.0)
    # the load window (2 s, 10 J) is netted with the same idle power
    assert row["load_net_energy_estimated_j"] == pytest.approx(10.0 - 3.0 * 2.0)


def test_runner_idle_first_then_host_idle_same_source_only(tmp_path):
    # runner idle has cpu only; host idle supplies ram (and its cpu figure must not be used)
    a = make_record(model="a", energy_j=100.0, duration_s=10.0, idle_w={"cpu": 2.0},
                    host_idle_w={"cpu": 5.0, "ram": 1.0})
    # measured energy with an estimated idle figure: no net (different source kinds never mix)
    b = make_record(model="b", source="measured", energy_j=100.0, duration_s=10.0, components={"gpu:0": 1.0},
                    device="cuda")
    b["idle"] = {"duration_s": 5.0, "power": [{"component": "gpu:0", "watts": 3.0, "source": "estimated",
                                               "meter": "codecarbon", "reason": None}]}
    # an idle baseline for only some components: no net either (partial subtraction would mislead)
    c = make_record(model="c", energy_j=100.0, duration_s=10.0, idle_w={"cpu": 2.0})
    t = load_runs(_write(tmp_path, [a, b, c])).trials.set_index("model")
    assert t.loc["a", "net_energy_j"] == pytest.approx(100.0 - (2.0 + 1.0) * 10.0)
    assert t.loc["a", "idle_origin"] == "host+runner"
    # the orchestrator's window around the runner (synthetic: 2 + 1 + 10 + 5 = 18 s at the generate power)
    assert t.loc["a", "host_container_energy_estimated_j"] == pytest.approx(180.0)
    assert t.loc["a", "host_container_net_energy_estimated_j"] == pytest.approx(180.0 - 3.0 * 18.0)
    assert t.loc["b", "energy_j"] == pytest.approx(100.0) and pd.isna(t.loc["b", "net_energy_j"])
    assert pd.isna(t.loc["c", "net_energy_j"])


def test_measured_and_estimated_are_never_summed(tmp_path):
    t = load_runs(_write(tmp_path, [_mixed_record()]))
    row = t.trials.iloc[0]
    assert row["energy_measured_j"] == pytest.approx(50.0)
    assert row["energy_estimated_j"] == pytest.approx(30.0)
    assert (row["energy_source"], row["energy_j"], row["energy_components"]) == ("measured", 50.0, "gpu:0")
    assert row["net_energy_j"] == pytest.approx(50.0 - 2.0 * 10.0)  # gpu idle 2 W over 10 s; CPU not in it
    sources = t.energy[t.energy["phase"] == "generate"].set_index("component")["source"]
    assert sources.to_dict() == {"gpu:0": "measured", "cpu": "estimated", "cpu:package-0": "unavailable"}


def test_params_fall_back_to_model_parameters_and_labels_disambiguate(tmp_path):
    a = make_record(model="m", runtime="torch-cuda121", device="cuda", params_b=1.5)
    b = make_record(model="m", runtime="torch-cuda118", device="cuda", params_b=1.5)
    del b["trial"]["model_params_b"]  # the record's own parameter count (1.5e9) is used instead
    t = load_runs(_write(tmp_path, [a, b])).trials.set_index("runtime")
    assert t.loc["torch-cuda118", "model_params_b"] == pytest.approx(1.5)
    assert t.loc["torch-cuda118", "size_group"] == "1B–2B"
    # two CUDA builds of one engine are two configurations, not one
    assert sorted(t["config"]) == ["TORCH-CUDA[torch-cuda118]", "TORCH-CUDA[torch-cuda121]"]


def test_prepare_records_are_kept_apart_and_do_not_split_labels(tmp_path):
    run = make_record(model="m", repetition=0)
    prep = make_record(model="m")
    prep["mode"] = "prepare"  # as the orchestrator's prepare step writes it: no setting, no repetition
    prep["phases"] = {"prepare": prep["phases"]["load"]}
    # as the onnx engine writes it (llama.cpp's records name the step in "conversion" instead)
    prep["phases"]["prepare"]["info"] = {"cached": False, "exporter": {"tool": "optimum.exporters.onnx.main_export"}}
    prep["trial"] = {k: prep["trial"][k] for k in ("run_id", "cell_id", "runtime")}
    validate_record(prep)
    write_run([run], tmp_path / "r")
    (tmp_path / "r" / "prepare").mkdir()
    (tmp_path / "r" / "prepare" / "cell.json").write_text(json.dumps(prep))
    t = load_runs(tmp_path / "r")
    assert sorted(t.trials["mode"]) == ["prepare", "run"] and len(t.ok) == 1
    assert set(t.trials["config"]) == {"TORCH-CPU"}  # a missing setting is not a second setting
    p = t.trials.set_index("mode").loc["prepare"]
    assert (p["prepare_cached"], p["prepare_conversion"]) == (False, "optimum.exporters.onnx.main_export")
    assert p["prepare_energy_estimated_j"] == pytest.approx(10.0)


def test_several_runs_load_together_and_export(tmp_path):
    r1 = _write(tmp_path, [make_record(run_id="r1", repetition=i) for i in range(2)], "r1")
    r2 = _write(tmp_path, [make_record(run_id="r2", repetition=i) for i in range(3)], "r2")
    t = load_runs([r1, r2])
    assert t.trials.groupby("run_id").size().to_dict() == {"r1": 2, "r2": 3}
    paths = t.export(tmp_path / "out")
    assert {p.name for p in paths} >= {"trials.parquet", "trials.csv", "prompts.parquet", "prompts.csv",
                                       "failures.csv", "energy.parquet"}
    back = pd.read_parquet(tmp_path / "out" / "prompts.parquet")
    assert len(back) == len(t.prompts) and list(back["output_ids"].iloc[0]) == t.prompts["output_ids"].iloc[0]
    csv = pd.read_csv(tmp_path / "out" / "prompts.csv")
    assert json.loads(csv["output_ids"].iloc[0]) == t.prompts["output_ids"].iloc[0]


def test_metrics_by_hand(tmp_path):
    # 100 J, 10 s, 4 prompts × 8 new tokens = 32 tokens, 0.5 B parameters, 400 g CO2/kWh
    rec = make_record(energy_j=100.0, duration_s=10.0, prompts=4, new_tokens=8, params_b=0.5,
                      intensity_g_per_kwh=400.0, idle_w={"cpu": 1.0, "ram": 1.0})
    m = add_metrics(load_runs(_write(tmp_path, [rec])).ok).iloc[0]
    assert m["wh"] == pytest.approx(100 / 3600)
    assert m["j_per_token"] == pytest.approx(100 / 32)
    assert m["j_per_prompt"] == pytest.approx(25.0)
    assert m["wh_per_1000_prompts"] == pytest.approx(25.0 * 1000 / 3600)
    assert m["tokens_per_wh"] == pytest.approx(32 / (100 / 3600))
    assert m["tokens_per_s"] == pytest.approx(3.2)
    # EDP per inference (edge-SLM study): J/prompt × per-prompt latency = 100/4 J × 10/4 s — not 100 J × 10 s
    assert m["edp_js"] == pytest.approx(25.0 * 2.5)
    assert m["edp_per_b"] == pytest.approx(62.5 / 0.5)
    assert m["wh_per_b"] == pytest.approx(100 / 3600 / 0.5)
    assert m["co2_g"] == pytest.approx(100 / 3.6e6 * 400.0)
    # the same figures from the net energy: 100 − 2 W × 10 s = 80 J
    assert m["j_per_token_net"] == pytest.approx(80 / 32)
    assert m["edp_js_net"] == pytest.approx(20.0 * 2.5)
    # TTFT/TPOT: the synthetic latency is 10 s / 4 batches, TTFT 20 % of it, TPOT the rest over 7 steps
    assert m["ttft_s_median"] == pytest.approx(0.5)
    assert m["tpot_s_median"] == pytest.approx(2.0 / 7)


def test_missing_denominators_give_nan_not_inf(tmp_path):
    rec = make_record(params_b=0.5, intensity_g_per_kwh=None)
    rec["trial"]["model_params_b"] = None
    rec["model"]["parameters"] = None
    m = add_metrics(load_runs(_write(tmp_path, [rec])).ok).iloc[0]
    assert math.isnan(m["edp_per_b"]) and math.isnan(m["co2_g"])


def test_token_agreement_against_torch_fp32(tmp_path):
    ref = make_record(model="m", engine="torch", prompts=4, new_tokens=8)
    same = make_record(model="m", engine="onnx", prompts=4, new_tokens=8)
    q = make_record(model="m", engine="onnx", precision="int8", prompts=4, new_tokens=8, diverge=(1,))
    t = load_runs(_write(tmp_path, [ref, same, q]))
    by_cfg = dict(zip(t.trials["config"], with_agreement(t.trials)["agreement"]))
    assert by_cfg == {"TORCH-CPU": 1.0, "ONNX-CPU": 1.0, "ONNX-CPU-int8": 0.75}
    assert q["agreement"]["first_divergence"] == [None, 4, None, None]  # the synthetic divergence starts at 8 // 2
    assert q["agreement"]["reference"] == ref["trial"]["trial_id"]


def test_agreement_is_keyed_on_the_work_not_just_the_model():
    """A 16-token run is never scored against an 8-token reference (it would read 0 % identical): it has no
    reference, and says so."""
    ref = make_record(model="m", engine="torch", prompts=4, new_tokens=8)
    longer = make_record(model="m", engine="onnx", prompts=4, new_tokens=16)
    longer["job"]["generation"]["new_tokens"] = 16
    attach_all({"r": ref, "l": longer})
    assert ref["agreement"]["status"] == "compared" and ref["agreement"]["share_identical"] == 1.0
    assert longer["agreement"]["status"] == "no-reference" and longer["agreement"]["share_identical"] is None


def test_only_the_reference_configuration_is_a_reference():
    """An onnx fp32 or a torch int8 record is not the reference; a CUDA reference yields to a CPU one."""
    onnx = make_record(model="m", engine="onnx", prompts=4, new_tokens=8)
    torch_bf16 = make_record(model="m", engine="torch", precision="bf16", prompts=4, new_tokens=8, diverge=(0,))
    attach_all({"o": onnx, "b": torch_bf16})
    assert onnx["agreement"]["status"] == torch_bf16["agreement"]["status"] == "no-reference"
    cpu = make_record(model="m", engine="torch", prompts=4, new_tokens=8)
    cuda = make_record(model="m", engine="torch", device="cuda", prompts=4, new_tokens=8, diverge=(2,))
    attach_all({"a-cuda": cuda, "z-cpu": cpu, "o": onnx})
    assert onnx["agreement"]["reference"] == "z-cpu" and cuda["agreement"]["share_identical"] == 0.75
    # the matrix may name another reference configuration
    attach_all({"a-cuda": cuda, "z-cpu": cpu, "o": onnx}, {"engine": "onnx", "precision": "fp32", "devices": ["cpu"]})
    assert cpu["agreement"]["reference"] == "o"


def test_pareto_front():
    df = pd.DataFrame({"t": [1, 2, 5, 3, 2], "e": [5, 2, 1, 3, 6]})
    assert pareto_front(df, "t", "e").tolist() == [True, True, True, False, False]
