"""orchestrator/host_energy.py from a synthetic host counter trace: no Docker, exact expected figures.

The trace: package 20 W, DRAM 4 W, gpu:0 100 W, gpu:1 200 W, sampled every 100 ms on the monotonic clock from
t = 1000 s to 1020 s — what the host's CounterTracer records around a container."""

from __future__ import annotations

import copy

import pytest

from orchestrator import host_energy
from runners.meters import figure
from runners.meters.trace import CounterTrace
from runners.record import WindowResult

WATTS = {"cpu:package-0": 20.0, "cpu:dram-0": 4.0, "gpu:0": 100.0, "gpu:1": 200.0}


def _trace(skip: tuple[float, float] | None = None) -> CounterTrace:
    """The trace; reads of gpu:1 failed in ``skip`` (monotonic s) when given."""
    tr = CounterTrace(0.1)
    for i in range(201):
        t = 1000.0 + i / 10
        for comp, w in WATTS.items():
            if skip and comp == "gpu:1" and skip[0] <= t <= skip[1]:
                tr.add_error(comp, t, "NVMLError: GPU is lost")
            else:
                tr.add_point(comp, t, w * (t - 1000.0))
    return tr


def _window(start: float, end: float, figures: list[dict]) -> dict:
    return WindowResult(start_unix=start, end_unix=end, start_mono=start, end_mono=end, duration_s=end - start,
                        energy=figures).as_dict()


def _estimates(cpu_j: float = 50.0, ram_j: float = 10.0) -> list[dict]:
    return [figure("cpu", cpu_j, "estimated", "codecarbon", "no counter in the container"),
            figure("ram", ram_j, "estimated", "codecarbon", "no counter in the container")]


def _by_component(window: dict) -> dict[str, dict]:
    return {f["component"]: f for f in window["energy"]}


def test_a_trial_counts_only_its_own_devices():
    cpu = host_energy.trial_boundary("cpu", [])
    assert cpu("cpu:package-0") and cpu("cpu:dram-0") and cpu("gpu") and cpu("cpu") and cpu("ram")
    assert not cpu("gpu:0")
    cuda = host_energy.trial_boundary("cuda", [1])
    assert cuda("gpu:1") and cuda("cpu:package-0") and cuda("gpu")
    assert not cuda("gpu:0")


def test_restrict_keeps_the_trials_components_and_re_sums_them():
    host = _window(1000.0, 1010.0, [figure(c, w * 10.0, "measured", "rapl" if "cpu" in c else "nvml")
                                    for c, w in WATTS.items()])
    host["flags"] = [{"code": "short-window", "component": "gpu:0", "message": "x"},
                     {"code": "host-trace", "component": None, "message": "y"}]
    cpu = host_energy.restrict(host, host_energy.trial_boundary("cpu", []))
    assert sorted(_by_component(cpu)) == ["cpu:dram-0", "cpu:package-0"]
    assert cpu["energy_total"] == {"measured_j": pytest.approx(240.0), "estimated_j": None}
    assert cpu["boundary"] == "cpu:dram-0 measured + cpu:package-0 measured"
    assert [f["code"] for f in cpu["flags"]] == ["host-trace"]  # another GPU's flag is not this trial's
    cuda = host_energy.restrict(host, host_energy.trial_boundary("cuda", [1]))
    assert cuda["energy_total"]["measured_j"] == pytest.approx(240.0 + 2000.0)
    assert host_energy.restrict(None, lambda c: True) is None
    idle = {"power": [{"component": c, "watts": w} for c, w in WATTS.items()],
            "checks": [{"component": "gpu:0"}, {"component": "gpu:1"}]}
    kept = host_energy.restrict_idle(idle, host_energy.trial_boundary("cuda", [0]))
    assert [p["component"] for p in kept["power"]] == ["cpu:package-0", "cpu:dram-0", "gpu:0"]
    assert kept["checks"] == [{"component": "gpu:0"}]


def test_host_figures_replace_the_runners_estimates_and_keep_its_own_counter():
    """A CUDA trial on gpu:1: the runner measured its GPU itself (NVML in the container) and estimated CPU and RAM;
    the host replaces the estimates by RAPL from its trace, keeps the runner's GPU figure, never adds gpu:0."""
    runner_gpu = figure("gpu:1", 1999.0, "measured", "nvml", boundary_error_j=0.5)
    w = _window(1002.05, 1012.05, [runner_gpu, *_estimates()])
    w = host_energy.meter_window(w, _trace(), host_energy.trial_boundary("cuda", [1]))
    figs = _by_component(w)
    assert sorted(figs) == ["cpu:dram-0", "cpu:package-0", "gpu:1"]
    assert figs["gpu:1"]["joules"] == 1999.0 and figs["gpu:1"]["meter"] == "nvml"
    assert figs["cpu:package-0"]["joules"] == pytest.approx(200.0)
    assert figs["cpu:dram-0"]["joules"] == pytest.approx(40.0)
    assert figs["cpu:package-0"]["meter"] == "rapl-host-trace" and figs["cpu:package-0"]["source"] == "measured"
    # each edge in the middle of a 100 ms bracket: that bracket's increment per edge
    assert figs["cpu:package-0"]["boundary_error_j"] == pytest.approx(2 * 2.0)
    assert figs["cpu:package-0"]["trace_points"] == 100
    assert w["energy_total"] == {"measured_j": pytest.approx(1999.0 + 240.0), "estimated_j": None}
    assert w["boundary"] == "cpu:dram-0 measured + cpu:package-0 measured + gpu:1 measured"
    hm = w["host_metered"]
    assert hm["components"] == ["cpu:dram-0", "cpu:package-0"] and hm["replaced_estimates"] == ["cpu", "ram"]
    assert hm["boundary_error_j"] == pytest.approx(4.0 + 0.8) and hm["trace_interval_s"] == 0.1
    assert w["flags"] == []  # 10 s, 100 trace intervals: no short window


def test_a_short_window_metered_by_the_host_is_flagged():
    w = _window(1002.05, 1005.05, _estimates())
    w = host_energy.meter_window(w, _trace(), host_energy.trial_boundary("cpu", []))
    assert {(f["code"], f["component"]) for f in w["flags"]} == {("short-window", "cpu:package-0"),
                                                                  ("short-window", "cpu:dram-0")}


def test_a_window_without_monotonic_marks_is_flagged_not_metered():
    w = _window(1002.0, 1012.0, _estimates())
    del w["start_mono"]
    before = copy.deepcopy(w["energy"])
    w = host_energy.meter_window(w, _trace(), host_energy.trial_boundary("cpu", []))
    assert w["energy"] == before and [f["code"] for f in w["flags"]] == ["host-trace"]


def test_a_trace_gap_at_an_edge_gives_an_invalid_figure_and_no_total():
    w = _window(1002.05, 1012.05, _estimates())
    w = host_energy.meter_window(w, _trace(skip=(1011.5, 1013.0)), host_energy.trial_boundary("cuda", [1]))
    gpu = _by_component(w)["gpu:1"]
    assert gpu["valid"] is False and "gap at the window's end" in gpu["invalid_reason"]
    assert w["energy_total"]["measured_j"] is None
    codes = {(f["code"], f["component"]) for f in w["flags"]}
    assert ("invalid-figure", "gpu:1") in codes and ("read-error", "gpu:1") in codes
    # the same reads failing inside a window, with good reads at both edges: a flag, a valid figure
    w = _window(1002.05, 1012.05, _estimates())
    w = host_energy.meter_window(w, _trace(skip=(1005.0, 1006.0)), host_energy.trial_boundary("cuda", [1]))
    gpu = _by_component(w)["gpu:1"]
    assert gpu.get("valid", True) and gpu["joules"] == pytest.approx(2000.0)
    assert [f["code"] for f in w["flags"]] == ["read-error"]


def test_a_traced_component_that_yields_no_figure_is_invalid_not_left_to_the_estimate():
    w = _window(1015.05, 1025.05, _estimates())  # ends after the trace: the host's last reads failed
    w = host_energy.meter_window(w, _trace(), host_energy.trial_boundary("cpu", []))
    pkg = _by_component(w)["cpu:package-0"]
    assert pkg["source"] == "unavailable" and pkg["valid"] is False and "outside" in pkg["invalid_reason"]
    assert "cpu" not in _by_component(w)  # the estimate does not silently stand in for the counter
    assert w["energy_total"]["measured_j"] is None


def test_a_runner_figure_it_could_not_read_yields_to_the_hosts():
    from runners.meters.validity import invalidate

    failed = invalidate(figure("gpu:1", None, "unavailable", "nvml", "read failed"), "read failed at the start")
    w = _window(1002.05, 1012.05, [failed, *_estimates()])
    w["flags"] = [{"code": "invalid-figure", "component": "gpu:1", "message": "read failed"}]
    w = host_energy.meter_window(w, _trace(), host_energy.trial_boundary("cuda", [1]))
    gpu = [f for f in w["energy"] if f["component"] == "gpu:1"]
    assert len(gpu) == 1 and gpu[0]["meter"] == "nvml-host-trace" and gpu[0]["joules"] == pytest.approx(2000.0)
    assert w["energy_total"]["measured_j"] == pytest.approx(2240.0) and w["flags"] == []


def test_meter_idle_gives_the_hosts_power_for_what_the_runner_could_not_read():
    idle = {"duration_s": 5.0, "start_mono": 1001.0, "end_mono": 1006.0,
            "power": [{"component": "cpu", "watts": 9.0, "source": "estimated", "meter": "codecarbon",
                       "reason": "model"},
                      {"component": "gpu:1", "watts": 199.0, "source": "measured", "meter": "nvml", "reason": None}]}
    idle = host_energy.meter_idle(idle, _trace(), host_energy.trial_boundary("cuda", [1]))
    power = {p["component"]: p for p in idle["power"]}
    assert sorted(power) == ["cpu:dram-0", "cpu:package-0", "gpu:1"]
    assert power["cpu:package-0"]["watts"] == pytest.approx(20.0) and power["cpu:dram-0"]["watts"] == pytest.approx(4.0)
    assert power["gpu:1"]["watts"] == 199.0  # the runner's own counter stands
    assert power["cpu:package-0"]["meter"] == "rapl-host-trace"
    no_marks = {"duration_s": 5.0, "power": []}
    assert host_energy.meter_idle(no_marks, _trace(), lambda c: True)["power"] == []


def test_an_idle_window_in_a_trace_gap_gives_no_baseline():
    idle = {"duration_s": 5.0, "start_mono": 1011.0, "end_mono": 1016.0, "power": []}
    idle = host_energy.meter_idle(idle, _trace(skip=(1010.0, 1012.0)), host_energy.trial_boundary("cuda", [1]))
    gpu = next(p for p in idle["power"] if p["component"] == "gpu:1")
    assert gpu["watts"] is None and "gap" in gpu["reason"]
    assert "invalid-figure" in {f["code"] for f in idle["flags"]}


def test_apply_meters_every_window_and_refreshes_joules_per_token():
    record = {"phases": {"load": _window(1001.05, 1002.05, _estimates(5.0, 1.0)),
                         "generate": _window(1002.05, 1012.05, _estimates())},
              "idle": {"duration_s": 1.0, "start_mono": 1000.5, "end_mono": 1001.0, "power": []},
              "tokens": {"output": 100}, "per_prompt": [{"batch": 0, "generated_tokens": 60},
                                                        {"batch": 1, "generated_tokens": 40}],
              "metrics": {"tokens_per_s": 10.0, "joules_per_token": {"measured": None, "estimated": 0.6}}}
    runners = copy.deepcopy(record)
    metered = host_energy.apply(record, _trace(), host_energy.trial_boundary("cpu", []))
    assert record == runners  # new windows: the runner's are left as they were
    assert sorted(metered) == ["idle", "metrics", "phases"]
    assert metered["phases"]["load"]["energy_total"]["measured_j"] == pytest.approx(24.0)
    assert metered["metrics"] == {"tokens_per_s": 10.0,
                                  "joules_per_token": {"measured": pytest.approx(2.4), "estimated": None}}
    assert {p["component"] for p in metered["idle"]["power"]} == {"cpu:package-0", "cpu:dram-0"}
    assert host_energy.apply(record, None, lambda c: True) == {}
    assert host_energy.apply(record, CounterTrace(0.1), lambda c: True) == {}


def test_meter_window_leaves_the_runners_window_as_it_was():
    w = _window(1002.05, 1012.05, _estimates())
    before = copy.deepcopy(w)
    metered = host_energy.meter_window(w, _trace(), host_energy.trial_boundary("cpu", []))
    assert w == before and metered is not w and "host_metered" in metered
