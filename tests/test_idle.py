"""The idle baseline re-used for a block of trials (orchestrator/idle.py), against counters at known, changeable
rates (computed at each read, so a loaded machine cannot move a figure): re-used while the host stays at it,
re-measured when it drifts in any direction, loses a reading, warms up, or ages — and every trial told which baseline
it got."""

from __future__ import annotations

import sys

import pytest

from _known_rate import install_rapl
from orchestrator.idle import DRIFT_FLOOR_W, IdleBaseline, drift, warmer
from runners.job import MeterSpec
from runners.meters import MeterSet
from test_meters import make_rapl_tree

HOST = {"idle_seconds": 1.0, "idle_reuse_s": 60.0, "idle_check_s": 0.5, "idle_drift": 0.1, "cooldown_margin_c": 3.0}


def _watts(idle: dict, component: str) -> float:
    return next(p["watts"] for p in idle["power"] if p["component"] == component)


@pytest.fixture
def powered(tmp_path, monkeypatch):
    """Host meters over a package at 20 W, DRAM at 4 W and one GPU at 60 W (40 °C), all at known rates."""
    import _fake_nvml

    gpu = _fake_nvml.FakeGpu("GPU-a", watts=60.0, period_s=0.001)
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml.module([gpu]))
    root = make_rapl_tree(tmp_path, 0, 0, max_range=262_143_328_850)
    meters = MeterSet.create(MeterSpec(rapl_root=str(root), codecarbon=False, sample_interval_s=0.05))
    rates = install_rapl(meters, {"cpu:package-0": 20.0, "cpu:dram-0": 4.0})
    try:
        yield rates, gpu, meters
    finally:
        meters.close()


def test_a_baseline_is_reused_while_the_host_stays_at_it_and_remeasured_when_it_drifts(powered):
    rates, gpu, meters = powered
    idle = IdleBaseline(meters, HOST)
    first = idle.for_trial()
    assert first["baseline"]["reused"] is False and "first" in first["baseline"]["why"]
    assert first["duration_s"] >= 0.999
    assert _watts(first, "cpu:package-0") == pytest.approx(20.0, rel=1e-3)
    assert _watts(first, "gpu:0") == pytest.approx(60.0, rel=0.01)

    second = idle.for_trial()
    b = second["baseline"]
    assert b["reused"] is True and b["taken_unix"] == first["start_unix"] and b["age_s"] > 0
    assert second["start_unix"] == first["start_unix"]  # the very baseline, not the short check
    assert b["check"]["duration_s"] >= 0.499 and b["check"]["moved"] == []
    assert _watts(second, "cpu:package-0") == _watts(first, "cpu:package-0")

    rates["cpu:package-0"].set(28.0)  # the host idles 40 % higher now: the old baseline is wrong
    third = idle.for_trial()
    b = third["baseline"]
    assert b["reused"] is False and "drifted" in b["why"] and "cpu:package-0" in b["why"]
    assert b["check"]["moved"] and third["start_unix"] > first["start_unix"]
    assert _watts(third, "cpu:package-0") == pytest.approx(28.0, rel=1e-3)
    assert idle.for_trial()["baseline"]["reused"] is True  # at the new level again


@pytest.mark.parametrize("change, component", [
    ("package down", "cpu:package-0"),  # a baseline too high makes every net figure too low
    ("gpu up", "gpu:0"),
    ("gpu down", "gpu:0"),
])
def test_a_drift_in_any_direction_or_component_forces_a_new_baseline(powered, change, component):
    rates, gpu, meters = powered
    idle = IdleBaseline(meters, HOST)
    idle.for_trial()
    {"package down": lambda: rates["cpu:package-0"].set(12.0), "gpu up": lambda: gpu.set_watts(90.0),
     "gpu down": lambda: gpu.set_watts(30.0)}[change]()
    b = idle.for_trial()["baseline"]
    assert b["reused"] is False and component in b["why"]


def test_a_component_that_cannot_be_read_now_forces_a_new_baseline(powered):
    rates, gpu, meters = powered
    idle = IdleBaseline(meters, HOST)
    idle.for_trial()
    gpu.fail = True  # NVMLError on every energy read: the check has no GPU reading
    got = idle.for_trial()
    assert got["baseline"]["reused"] is False and "gpu:0: no idle reading now" in got["baseline"]["why"]
    assert _watts(got, "gpu:0") is None  # and the new baseline says it has none, rather than a made-up one


def test_a_warmer_gpu_forces_a_new_baseline(powered):
    rates, gpu, meters = powered
    idle = IdleBaseline(meters, HOST)
    idle.for_trial()
    gpu.temp_c = 42.0  # within the 3 °C margin
    assert idle.for_trial()["baseline"]["reused"] is True
    gpu.temp_c = 30.0  # cooler is fine
    assert idle.for_trial()["baseline"]["reused"] is True
    gpu.temp_c = 44.0
    b = idle.for_trial()["baseline"]
    assert b["reused"] is False and "gpu0: 44 °C now vs 40 °C" in b["why"]
    gpu.temp_c = 46.0  # within the margin of the new baseline's 44 °C
    assert idle.for_trial()["baseline"]["reused"] is True


def test_a_baseline_ages_out_and_reuse_off_measures_every_trial(powered):
    _, _, meters = powered
    idle = IdleBaseline(meters, {**HOST, "idle_reuse_s": 30.0})
    idle.for_trial()
    idle.current["start_unix"] -= 31.0  # as if taken 31 s ago: no sleeping on the wall clock
    aged = idle.for_trial()["baseline"]
    assert aged["reused"] is False and "old" in aged["why"] and "idle_reuse_s = 30 s" in aged["why"]
    assert idle.for_trial()["baseline"]["reused"] is True  # the fresh one is re-used again

    every = IdleBaseline(meters, {**HOST, "idle_reuse_s": 0})
    got = [every.for_trial()["baseline"] for _ in range(2)]
    assert [b["reused"] for b in got] == [False, False] and all("before every trial" in b["why"] for b in got)
    assert IdleBaseline(meters, {**HOST, "idle_seconds": 0}).for_trial() is None


def _power(**watts) -> dict:
    return {"power": [{"component": c.replace("_", ":", 1).replace("_", "-"), "watts": w} for c, w in watts.items()]}


def test_drift_is_two_sided_relative_with_a_floor_in_watts():
    base = _power(cpu_package_0=20.0, cpu_dram_0=0.8)
    assert drift(base, _power(cpu_package_0=21.9, cpu_dram_0=0.8), 0.1) == []
    assert drift(base, _power(cpu_package_0=18.1, cpu_dram_0=0.8), 0.1) == []
    assert "cpu:package-0: 22.10 W now" in drift(base, _power(cpu_package_0=22.1, cpu_dram_0=0.8), 0.1)[0]
    assert "cpu:package-0: 17.90 W now" in drift(base, _power(cpu_package_0=17.9, cpu_dram_0=0.8), 0.1)[0]
    # 0.8 W ± 0.45 W is noise (below the floor), ± 0.55 W is not
    assert DRIFT_FLOOR_W == 0.5
    assert drift(base, _power(cpu_package_0=20.0, cpu_dram_0=1.25), 0.1) == []
    assert drift(base, _power(cpu_package_0=20.0, cpu_dram_0=0.35), 0.1) == []
    assert len(drift(base, _power(cpu_package_0=20.0, cpu_dram_0=1.35), 0.1)) == 1
    assert drift(base, _power(cpu_package_0=20.0), 0.1) == ["cpu:dram-0: no idle reading now"]
    assert drift(base, _power(cpu_package_0=20.0, cpu_dram_0=None), 0.1) == ["cpu:dram-0: no idle reading now"]
    assert drift(base, _power(cpu_package_0=20.0, cpu_dram_0=0.8, gpu_0=50.0), 0.1) == []  # new: no baseline to drift from


def test_warmer_flags_only_a_gpu_hotter_than_the_margin():
    assert warmer({0: 40.0, 1: 50.0}, {0: 43.0, 1: 60.0, 2: 90.0}, 3.0) == [
        "gpu1: 60 °C now vs 50 °C at the baseline (> +3 °C)"]
    assert warmer({0: 40.0}, {0: 30.0}, 3.0) == []
