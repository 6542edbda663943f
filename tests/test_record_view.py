"""runners.record.Record: the one read side of the record. Every reader (analysis, budget, status, evaluation,
benchmarks) takes its facts from here, so each fact is pinned here with known answers: the energy headline and its
boundary, idle-subtracted net, a CPU trial's boundary without GPUs, per-batch latency, J/token, the /1 upgrade."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.synthetic import as_schema_1, make_record
from runners.record import Record, metrics_of, new_record, work_label


def _figure(component, joules, source="measured", **extra):
    return {"component": component, "joules": joules, "source": source, "meter": "m", "reason": None, **extra}


def _window(duration, *figures, total=None):
    return {"duration_s": duration, "energy": list(figures), "energy_total": total}


def test_headline_is_measured_where_measured_exists_never_the_sum():
    rec = make_record(device="cuda", source="measured", energy_j=50.0, components={"gpu:0": 1.0})
    gen = rec["phases"]["generate"]
    gen["energy"].append(_figure("cpu", 30.0, "estimated"))
    gen["energy_total"] = {"measured_j": 50.0, "estimated_j": 30.0}
    e = Record(rec).energy("generate")
    assert (e.source, e.joules, e.measured_j, e.estimated_j) == ("measured", 50.0, 50.0, 30.0)
    assert e.components == "gpu:0" and e.boundary == "gpu:0 (measured)"
    only_estimated = Record(make_record(source="estimated", energy_j=40.0)).energy("generate")
    assert (only_estimated.source, only_estimated.joules) == ("estimated", pytest.approx(40.0))
    assert only_estimated.boundary == "cpu+ram (estimated)"


def test_net_subtracts_idle_only_when_every_component_has_a_baseline_of_its_source():
    rec = make_record(source="measured", energy_j=100.0, duration_s=10.0,
                      idle_w={"cpu:package-0": 2.0, "cpu:dram-0": 1.0})
    e = Record(rec).energy("generate")
    assert e.net_joules == pytest.approx(100.0 - (2.0 + 1.0) * 10.0)
    partial = make_record(source="measured", energy_j=100.0, duration_s=10.0, idle_w={"cpu:package-0": 2.0})
    assert Record(partial).energy("generate").net_joules is None  # one baseline missing: never a partial net
    other_kind = make_record(source="measured", energy_j=100.0, idle_w={"cpu:package-0": 2.0, "cpu:dram-0": 1.0})
    for p in other_kind["idle"]["power"]:
        p["source"] = "estimated"
    assert Record(other_kind).energy("generate").net_joules is None  # an estimated baseline under a measured figure


def test_the_runners_baseline_comes_first_the_hosts_fills_the_rest():
    rec = make_record(source="measured", idle_w={"cpu:package-0": 2.0}, host_idle_w={"cpu:package-0": 9.0,
                                                                                       "cpu:dram-0": 1.0})
    idle = Record(rec).idle_power()
    assert (idle["cpu:package-0"].watts, idle["cpu:package-0"].origin) == (2.0, "runner")
    assert (idle["cpu:dram-0"].watts, idle["cpu:dram-0"].origin) == (1.0, "host")


def test_a_cpu_trial_never_counts_a_gpu():
    rec = make_record(source="measured", energy_j=10.0, components={"cpu:package-0": 1.0})
    gen = rec["phases"]["generate"]
    gen["energy"].append(_figure("gpu:0", 500.0))
    gen["energy_total"] = {"measured_j": 510.0, "estimated_j": None}
    e = Record(rec).energy("generate")
    assert e.joules == pytest.approx(10.0) and e.components == "cpu:package-0"
    rec["engine"]["device"] = "cuda"
    assert Record(rec).energy("generate").joules == pytest.approx(510.0)


def test_an_invalid_figure_makes_the_window_no_figure_and_says_why():
    rec = make_record(source="measured", energy_j=10.0)
    rec["phases"]["generate"]["energy"][0].update(valid=False, invalid_reason="counter reset")
    r = Record(rec)
    e = r.energy("generate")
    assert e.joules is None and e.net_joules is None and e.source is None and "counter reset" in e.invalid
    assert any(f["code"] == "invalid-figure" for f in r.meter_flags())
    assert [f["joules"] for f in r.figures() if f["phase"] == "generate" and f["component"] == "cpu:package-0"] == [None]


def test_latency_counts_each_batch_once_tpot_each_prompt():
    per_prompt = [{"batch": 0, "latency_s": 1.0, "ttft_s": 0.1, "tpot_s": 0.01, "generated_tokens": 4},
                  {"batch": 0, "latency_s": 1.0, "ttft_s": 0.1, "tpot_s": 0.03, "generated_tokens": 4},
                  {"batch": 0, "latency_s": 1.0, "ttft_s": 0.1, "tpot_s": 0.02, "generated_tokens": 4},
                  {"batch": 1, "latency_s": 4.0, "ttft_s": 0.4, "tpot_s": 0.05, "generated_tokens": 4}]
    m = metrics_of(_window(5.0, _figure("cpu:package-0", 32.0), total={"measured_j": 32.0, "estimated_j": None}),
                   per_prompt)
    assert m.latency_s["mean"] == pytest.approx(2.5)  # (1 + 4) / 2 batches, not (1+1+1+4) / 4 prompts
    assert m.ttft_s["p50"] == pytest.approx(0.25)
    assert m.tpot_s["mean"] == pytest.approx(0.0275)
    assert m.latency_per_prompt_mean_s == pytest.approx(7.0 / 4)  # per inference: each prompt its batch's
    assert m.tokens_per_s == pytest.approx(16 / 5.0)
    assert m.j_per_token == {"measured": pytest.approx(2.0), "estimated": None}


@settings(max_examples=40, deadline=None)
@given(measured=st.one_of(st.none(), st.floats(0.0, 1e6)), estimated=st.one_of(st.none(), st.floats(0.0, 1e6)),
       tokens=st.lists(st.integers(0, 512), min_size=1, max_size=8), duration=st.floats(0.0, 1e3))
def test_j_per_token_keeps_sources_apart_and_divides_by_the_tokens_made(measured, estimated, tokens, duration):
    per_prompt = [{"batch": i, "latency_s": 1.0, "generated_tokens": n} for i, n in enumerate(tokens)]
    m = metrics_of(_window(duration, total={"measured_j": measured, "estimated_j": estimated}), per_prompt)
    total = sum(tokens)
    for source, joules in (("measured", measured), ("estimated", estimated)):
        if joules is None or total == 0:
            assert m.j_per_token[source] is None
        else:
            assert m.j_per_token[source] == pytest.approx(joules / total)
    assert m.tokens_per_s == (pytest.approx(total / duration) if duration > 0 else None)


def test_the_runner_and_the_view_compute_the_same_metrics():
    rec = make_record(prompts=6, batch=4, new_tokens=8, energy_j=120.0, duration_s=6.0)
    assert Record(rec).metrics().as_dict() == rec["metrics"]  # synthetic records store metrics_of, as the runner


def test_a_schema_1_record_is_upgraded_once_in_memory():
    rec = make_record(source="measured", energy_j=10.0)
    old = as_schema_1(rec)
    for p in old["per_prompt"]:
        p["new_tokens"] = p.pop("generated_tokens")
    before = json.dumps(old, sort_keys=True)
    r = Record(old)
    assert json.dumps(old, sort_keys=True) == before  # the caller's dict is not rewritten
    assert [p["generated_tokens"] for p in r.per_prompt] == [8] * 4 and all("new_tokens" not in p for p in r.per_prompt)
    assert r.window("generate")["boundary"] == "cpu:dram-0 measured + cpu:package-0 measured"
    assert r.metrics().j_per_token["measured"] == pytest.approx(10.0 / 32)


def test_what_ran_and_where():
    rec = make_record(model="m", engine="openvino", device="cpu", precision="int8", runtime="openvino",
                      params_b=1.5, run_id="r1", repetition=3)
    r = Record(rec)
    assert (r.config, r.runtime, r.model_name, r.params_b, r.size_group) == ("OV-CPU-int8", "openvino", "m", 1.5,
                                                                            "1B–2B")
    assert (r.run_id, r.repetition, r.is_ok_run) == ("r1", 3, True)
    assert r.work == work_label({"new_tokens": 8, "fixed_length": True}) == "same work: 8 new tokens"
    assert r.hostname == "synthetic"
    r2 = Record(r.with_host({"node": {"hostname": "node-7"}}))
    assert r2.hostname == "node-7"  # the orchestrator's node first (a cluster's compute node)


def test_a_failed_record_with_nothing_reads_as_missing_facts_not_errors(tmp_path):
    r = Record(new_record(None))
    assert (r.status, r.is_ok, r.engine_name, r.energy("generate"), r.output_tokens) == ("failed", False, None,
                                                                                           None, 0)
    assert r.metrics().tokens_per_s is None and r.preparation().cached is None and r.wall_s() is None
    bad = tmp_path / "x.json"
    bad.write_text('{"schema": "something else"}')
    assert Record.read(bad) is None and Record.read(tmp_path / "missing.json") is None
    with pytest.raises(ValueError, match="not a trial record"):
        Record.load(bad)


def test_preparation_names_the_tool_and_whether_it_was_cached():
    rec = make_record()
    rec["phases"]["prepare"] = {**rec["phases"]["load"], "info": {"cached": False, "seconds": 12.5,
                                                                  "exporter": {"tool": "optimum-cli"}}}
    p = Record(rec).preparation()
    assert (p.cached, p.conversion, p.seconds) == (False, "optimum-cli", 12.5)


def test_the_headline_per_token_is_the_headlines_source_gross_and_net():
    rec = make_record(source="measured", energy_j=64.0, duration_s=4.0, prompts=4, new_tokens=8,
                      idle_w={"cpu:package-0": 2.0, "cpu:dram-0": 2.0})
    gross, net = Record(rec).headline_per_token()
    assert gross == pytest.approx(64.0 / 32) and net == pytest.approx((64.0 - 4.0 * 4.0) / 32)
