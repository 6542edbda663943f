"""Counters and clocks at the same instants, and counters that cannot lie (issue 22, items 3 and 4).

Every counter here runs at a known rate on the monotonic clock (tests/_known_rate.py, tests/_fake_nvml.py): its value
is computed at the instant it is read, so the expected energy of any window is exact and no assertion depends on how
busy the machine is. What is slow in the real meters (codecarbon's first task: 128–200 ms; slicing a long sampler
series) is made slow on purpose, so a window that reads its counters on the wrong side of it fails every time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from _known_rate import KnownRate, install_rapl
from runners.job import MeterSpec
from runners.meters import MeterSet, nvml, rapl, resolution_flags
from runners.meters.sampler import Sampler
from runners.meters.trace import CounterTrace, CounterTracer
from runners.meters.validity import FALLBACK_MAX_W, METHOD_TEXT, POWER_MARGIN, max_power_w, rise_problem
from test_meters import make_rapl_tree

SLOW_S = 0.2  # what codecarbon's first start_task costs (128–200 ms), and more


def _slowed(fn, seconds=SLOW_S):
    def slow(*a, **k):
        time.sleep(seconds)
        return fn(*a, **k)
    return slow



def _rapl_meters(tmp_path, codecarbon=False, max_range=262_143_328_850, **spec):
    root = make_rapl_tree(tmp_path / "rapl", 0, 0, max_range=max_range)
    return MeterSet.create(MeterSpec(rapl_root=str(root), codecarbon=codecarbon, sample_interval_s=0.05, **spec))


def _power(idle: dict, component: str) -> float:
    return next(p["watts"] for p in idle["power"] if p["component"] == component)


# --- item 3: counters and clocks at the same instants -----------------------------------------------------------------


def test_first_idle_baseline_is_within_1_percent_with_codecarbon_running(tmp_path):
    """Against a package counter at exactly 20 W, with codecarbon's task start and stop taking 200 ms each, a 1-s
    first baseline reads 20 W (it read 22.6–26 W when the counters were read before codecarbon's task started)."""
    meters = _rapl_meters(tmp_path, codecarbon=True)
    try:
        assert meters.estimator is not None, meters.reasons.get("codecarbon")
        meters.estimator.begin = _slowed(meters.estimator.begin)
        meters.estimator.end = _slowed(meters.estimator.end)
        install_rapl(meters, {"cpu:package-0": 20.0, "cpu:dram-0": 4.0})
        idle = meters.idle(1.0)
    finally:
        meters.close()
    assert _power(idle, "cpu:package-0") == pytest.approx(20.0, rel=0.01)
    assert _power(idle, "cpu:dram-0") == pytest.approx(4.0, rel=0.01)


def test_gpu_counter_is_read_before_the_sampler_is_sliced(fake_nvml, tmp_path):
    """A GPU counter at 100 W (updated every 1 ms) and a slice of the sampler that takes 200 ms (a day-long series):
    the idle power is 100 W within 1 %, because the counter is read with the clocks, before the slice."""
    from _fake_nvml import FakeGpu

    fake_nvml(FakeGpu("GPU-a", watts=100.0, period_s=0.001))
    meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False, sample_interval_s=0.05),
                             "cuda")
    try:
        meters.sampler.slice = _slowed(meters.sampler.slice)
        idle = meters.idle(1.0)
    finally:
        meters.close()
    assert _power(idle, "gpu:0") == pytest.approx(100.0, rel=0.01)


def test_window_energy_and_time_share_their_instants_at_a_power_step(tmp_path):
    """A window opened at 10 W that sees a step to 50 W: its energy is the counter's exact energy between the two
    instants the window reports (start_mono, end_mono), and its duration is the span between those instants."""
    meters = _rapl_meters(tmp_path)
    try:
        rate = install_rapl(meters, {"cpu:package-0": 10.0})["cpu:package-0"]
        with meters.window("generate") as w:
            time.sleep(0.3)
            rate.set(50.0)
            time.sleep(0.3)
    finally:
        meters.close()
    r = w.result
    fig = next(f for f in r["energy"] if f["component"] == "cpu:package-0")
    assert r["duration_s"] == pytest.approx(r["end_mono"] - r["start_mono"], abs=1e-4)
    # within the span of the edge's reads (microseconds): a read on the wrong side of anything slow is off by far more
    assert fig["joules"] == pytest.approx(rate.between(r["start_mono"], r["end_mono"]), rel=1e-3)
    assert fig.get("valid", True) is True


def test_the_sampler_slices_by_binary_search_and_prunes_what_no_open_window_needs():
    s = Sampler(0.01, [])
    outer = s.hold(time.monotonic())
    for _ in range(50):
        s.sample_once()
    mid = time.monotonic()
    inner = s.hold(mid)
    for _ in range(20):
        s.sample_once()
    assert s.slice(mid, time.monotonic(), keep_series=True)["n"] == 20
    s.release(inner)
    assert len(s.t) == 70  # the outer window still needs every sample since its start
    s.release(outer)
    assert s.t == [] and s.values == []  # no window open: nothing kept, memory flat over a day-long run
    for _ in range(5):
        s.sample_once()
    assert s.slice(0.0, time.monotonic(), keep_series=False)["n"] == 5


# --- item 4: counters that cannot lie ---------------------------------------------------------------------------------


def test_an_nvml_error_at_a_window_edge_is_an_invalid_figure_not_an_aborted_run(fake_nvml, tmp_path):
    from _fake_nvml import FakeGpu

    gpu, = fake_nvml(FakeGpu("GPU-a", watts=100.0, period_s=0.001))
    meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False, sample_interval_s=0.02),
                             "cuda")
    try:
        with meters.window("generate") as w:
            time.sleep(0.1)
            gpu.fail = True  # the end read raises NVMLError
        gpu.fail = False
        with meters.window("generate") as ok:
            time.sleep(0.1)
    finally:
        meters.close()
    fig = next(f for f in w.result["energy"] if f["component"] == "gpu:0")
    assert fig["valid"] is False and fig["joules"] is None and "Unknown Error" in fig["invalid_reason"]
    assert "end" in fig["invalid_reason"]
    assert w.result["energy_total"]["measured_j"] is None  # no total of a boundary missing its GPU
    assert "invalid-figure" in {f["code"] for f in w.result["flags"]}
    good = next(f for f in ok.result["energy"] if f["component"] == "gpu:0")
    assert good.get("valid", True) and good["joules"] == pytest.approx(100.0 * ok.result["duration_s"], rel=0.05)


def test_an_nvml_error_while_probing_leaves_the_meters_running(fake_nvml, tmp_path):
    from _fake_nvml import FakeGpu

    gpu, = fake_nvml(FakeGpu("GPU-a", watts=100.0))
    (g,), _ = nvml.discover()
    gpu.fail = True  # the counter answered at discovery, fails while probed
    v = g.probe_counter(max_s=0.05)
    assert "Unknown Error" in v["error"] and "power is sampled" in v["rejected"] and not g.has_energy_counter
    meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False), "cuda")  # fails throughout
    try:
        with meters.window("generate") as w:
            time.sleep(0.1)
    finally:
        meters.close()
    fig = next(f for f in w.result["energy"] if f["component"] == "gpu:0")
    assert fig["meter"] == "nvml-power-samples"  # no counter to trust: sampled power, labelled so


@pytest.mark.parametrize("watts, offset_mj, why", [
    (150.0, 0, None),  # under the 100 W limit × 2: believed
    (500.0, 0, "faster than the device can draw"),
    (100.0, -50_000, "went backwards"),  # a reset during the window
])
def test_a_counter_that_rises_too_fast_or_goes_backwards_is_invalid(fake_nvml, tmp_path, watts, offset_mj, why):
    from _fake_nvml import FakeGpu

    gpu, = fake_nvml(FakeGpu("GPU-a", watts=watts, period_s=0.001, power_limit_w=100.0))
    meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False), "cuda")
    try:
        with meters.window("generate") as w:
            time.sleep(0.3)
            gpu.offset_mj = offset_mj
    finally:
        meters.close()
    fig = next(f for f in w.result["energy"] if f["component"] == "gpu:0")
    if why is None:
        assert fig.get("valid", True) is True and w.result["energy_total"]["measured_j"] == fig["joules"]
    else:
        assert fig["valid"] is False and why in fig["invalid_reason"] and fig["joules"] is not None
        assert w.result["energy_total"]["measured_j"] is None


def test_the_gpu_figure_states_its_error_one_update_period_at_each_edge(fake_nvml, tmp_path):
    from _fake_nvml import FakeGpu

    fake_nvml(FakeGpu("GPU-a", watts=100.0, period_s=0.02))
    meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False), "cuda")
    try:
        with meters.window("generate") as w:
            time.sleep(0.4)
    finally:
        meters.close()
    fig = next(f for f in w.result["energy"] if f["component"] == "gpu:0")
    period = meters.validity["gpu:0"]["update_period_s"]
    assert period == pytest.approx(0.02, rel=0.5)
    assert fig["boundary_error_j"] == pytest.approx(2 * period * fig["joules"] / w.result["duration_s"])
    assert abs(fig["joules"] - 100.0 * w.result["duration_s"]) <= fig["boundary_error_j"] + 1e-6


def test_rise_problem_bounds():
    assert rise_problem(10.0, 1.0, 100.0) is None
    assert rise_problem(0.0, 1.0, None) is None
    assert "backwards" in rise_problem(-0.5, 1.0, 100.0)
    bound = 100.0 * POWER_MARGIN * (1.0 + 0.1)
    assert rise_problem(bound * 0.99, 1.0, 100.0) is None and "faster" in rise_problem(bound * 1.01, 1.0, 100.0)
    assert max_power_w(None) == FALLBACK_MAX_W and max_power_w(350.0) == 350.0 * POWER_MARGIN
    assert "faster" in rise_problem(FALLBACK_MAX_W * 2, 1.0, None)


def test_rapl_zone_limit_is_read_from_its_constraints(tmp_path):
    root = make_rapl_tree(tmp_path, 0, 0)
    (root / "intel-rapl:0" / "constraint_0_power_limit_uw").write_text("125000000\n")
    (root / "intel-rapl:0" / "constraint_1_max_power_uw").write_text("250000000\n")
    counters, _ = rapl.discover(root)
    limits = {c.component: c.limit_w for c in counters}
    assert limits == {"cpu:package-0": 250.0, "cpu:dram-0": None}


def test_the_short_window_rule():
    fig = [{"component": "gpu:0", "joules": 10.0, "source": "measured", "meter": "nvml"}]
    assert nvml.MIN_WINDOW_S == 5.0 and nvml.MIN_UPDATES == 50
    assert [f["code"] for f in resolution_flags(fig, 4.9, {})] == ["short-window"]
    assert resolution_flags(fig, 5.1, {}) == []
    assert resolution_flags(fig, 10.0, {"gpu:0": 0.1}) == []  # 100 updates
    assert [f["code"] for f in resolution_flags(fig, 10.0, {"gpu:0": 0.25})] == ["short-window"]  # 40 updates
    estimated = [{**fig[0], "source": "estimated"}]
    assert resolution_flags(estimated, 1.0, {}) == []


# --- the host's counter trace ------------------------------------------------------------------------------------------


def _stepped_trace() -> CounterTrace:
    """10 W until t = 100.5, 50 W after; sampled every 100 ms from t = 100.0 to 101.0."""
    tr = CounterTrace(0.1)
    for i in range(11):
        t = 100.0 + i / 10
        tr.add(t, {"cpu:package-0": 10.0 * min(t - 100.0, 0.5) + 50.0 * max(t - 100.5, 0.0)})
    return tr


@pytest.mark.parametrize("start, end, joules, error", [
    (100.25, 100.85, 10.0 * 0.25 + 50.0 * 0.35, 1.0 + 5.0),  # edges in a 10 W and a 50 W bracket
    (100.05, 100.45, 4.0, 1.0 + 1.0),
    (100.55, 100.95, 20.0, 5.0 + 5.0),
    (100.5, 101.0, 25.0, 0.0),  # on trace points: no interpolation, no error
])
def test_trace_interpolates_within_each_bracket_at_a_power_step(start, end, joules, error):
    e = _stepped_trace().energy("cpu:package-0", start, end)
    assert e.joules == pytest.approx(joules) and e.boundary_error_j == pytest.approx(error) and e.valid


def test_a_gap_at_a_window_edge_makes_the_figure_invalid_and_read_errors_are_flagged():
    tr = CounterTrace(0.1)
    for i in range(21):
        t = 100.0 + i / 10
        if 3 <= i <= 10:  # reads failed from 100.3 to 101.0 (a 0.8 s gap > 5 intervals)
            tr.add_error("gpu:0", t, "NVMLError: Unknown Error")
            continue
        tr.add(t, {"gpu:0": 10.0 * (t - 100.0)})
    edge = tr.energy("gpu:0", 100.5, 101.8)
    assert edge.valid is False and "gap at the window's start" in edge.invalid_reason
    assert len(edge.read_errors) == 8 and "Unknown Error" in edge.read_errors[-1]
    assert edge.joules == pytest.approx(13.0)  # kept for inspection, never for statistics
    clean = tr.energy("gpu:0", 101.25, 101.85)
    assert clean.valid and clean.read_errors == [] and clean.joules == pytest.approx(6.0)


def test_a_reset_or_an_impossible_rise_inside_a_traced_window_is_invalid():
    tr = CounterTrace(0.1, limits_w={"gpu:0": 100.0})
    for i in range(11):
        t = 100.0 + i / 10
        tr.add(t, {"gpu:0": 10.0 * (t - 100.0) - (50.0 if i >= 6 else 0.0)})
    e = tr.energy("gpu:0", 100.05, 100.95)
    assert e.valid is False and "backwards" in e.invalid_reason
    tr = CounterTrace(0.1, limits_w={"gpu:0": 100.0})
    for i in range(11):
        t = 100.0 + i / 10
        tr.add(t, {"gpu:0": 10.0 * (t - 100.0) + (262_143.0 if i >= 6 else 0.0)})  # a whole RAPL range added
    e = tr.energy("gpu:0", 100.05, 100.95)
    assert e.valid is False and "faster than the device can draw" in e.invalid_reason


def test_the_tracer_survives_nvml_errors_in_any_read_including_the_last(fake_nvml):
    from _fake_nvml import FakeGpu, NVMLError

    gpu, = fake_nvml(FakeGpu("GPU-a", watts=100.0, period_s=0.001))
    meters_gpu, _ = nvml.discover()
    tracer = CounterTracer({"gpu:0": meters_gpu[0].energy_j}, 0.01)
    with tracer:
        time.sleep(0.1)
        gpu.fail = True
        time.sleep(0.1)
        # still failing at the final read: no exception leaves __exit__
    tr = tracer.trace
    assert tracer._thread.is_alive() is False and tr.errors and all("Unknown Error" in m for _, _, m in tr.errors)
    t = tr.times["gpu:0"]
    e = tr.energy("gpu:0", t[0], t[-1] + 0.05)
    assert e.joules is None and "outside" in e.reason
    assert issubclass(NVMLError, Exception)


def test_a_traced_rapl_counter_is_unwrapped_across_its_range(tmp_path):
    """A package at 30 W whose energy_uj wraps every second (range 30 J): a traced 2.2-s window spans two wraps and
    is still 30 W × its duration, valid (a trace of the raw counter would be off by whole ranges, or negative). The
    zone states a 20 W limit, so a wrap takes at least 30 J / 40 W = 0.75 s: the 20-ms trace sees every one."""
    (tmp_path / "rapl" / "intel-rapl:0").mkdir(parents=True)
    (tmp_path / "rapl" / "intel-rapl:0" / "constraint_0_power_limit_uw").write_text("20000000\n")
    meters = _rapl_meters(tmp_path, max_range=30_000_000, trace_interval_s=0.02)
    try:
        rate = install_rapl(meters, {"cpu:package-0": 30.0})["cpu:package-0"]
        with meters.window("container", trace=True) as w:
            time.sleep(0.1)
            t0 = time.monotonic()
            time.sleep(2.2)
            t1 = time.monotonic()
            time.sleep(0.1)
    finally:
        meters.close()
    e = w.trace.energy("cpu:package-0", t0, t1)
    assert e.valid, e.invalid_reason
    assert e.joules == pytest.approx(rate.between(t0, t1), abs=e.boundary_error_j + 1e-3)
    assert e.joules == pytest.approx(30.0 * (t1 - t0), rel=0.05)


def test_a_traced_window_at_a_power_step_follows_the_counter(tmp_path):
    """Live: the host traces a package that steps from 10 W to 60 W mid-window; the figure is the counter's exact
    energy between the window's instants, within the stated boundary error (no lag of a sample either side)."""
    meters = _rapl_meters(tmp_path, trace_interval_s=0.02)
    try:
        rate = install_rapl(meters, {"cpu:package-0": 10.0})["cpu:package-0"]
        with meters.window("container", trace=True) as w:
            time.sleep(0.1)
            t0 = time.monotonic()
            time.sleep(0.3)
            rate.set(60.0)
            time.sleep(0.3)
            t1 = time.monotonic()
            time.sleep(0.1)
    finally:
        meters.close()
    e = w.trace.energy("cpu:package-0", t0, t1)
    exact = rate.between(t0, t1)
    assert abs(e.joules - exact) <= e.boundary_error_j + 1e-3
    # a one-sample lag would shift the 50 W step by a whole interval: 1 J here, far beyond this
    assert e.boundary_error_j < 60.0 * 0.02 * 2 + 0.5


def test_the_method_text_says_what_the_counter_does_not_see():
    for words in ("NVML", "25 %", "update period", "PSU", "fans", "wall meter", "invalid", "RAPL"):
        assert words in METHOD_TEXT


# --- analysis: an invalid figure is no figure, and is listed -----------------------------------------------------------


def test_analysis_counts_an_invalid_figure_as_none_and_lists_it(tmp_path):
    """Three repetitions of a CUDA configuration; in one, the GPU counter was reset mid-window (the meters marked it
    invalid, keeping its impossible number): that trial has no energy figure, statistics use the other two, and the
    meter-validity table lists it with the reason."""
    from analysis.load import load_runs
    from analysis.report import validity_table
    from analysis.synthetic import make_record, write_run
    from runners.meters.validity import invalid_flags, invalidate, valid_totals
    from runners.record import validate_record

    records = [make_record(model="m", engine="torch", device="cuda", source="measured", energy_j=100.0 + r,
                           components={"gpu:0": 1.0}, idle_w={"gpu:0": 2.0}, repetition=r, order_index=r)
               for r in range(3)]
    gen = records[1]["phases"]["generate"]
    gen["energy"][0]["joules"] = 999_999.0
    invalidate(gen["energy"][0], "the counter rose 999999.0 J in 10.000 s, faster than the device can draw")
    gen["energy_total"] = valid_totals(gen["energy"])
    gen["flags"] = invalid_flags(gen["energy"])
    for rec in records:
        validate_record(rec)
    tables = load_runs(write_run(records, tmp_path / "run"))
    ok = tables.ok.set_index("repetition")
    assert pd_isna(ok.loc[1, "energy_j"]) and pd_isna(ok.loc[1, "net_energy_j"])
    assert pd_isna(ok.loc[1, "energy_measured_j"]) and pd_isna(ok.loc[1, "net_energy_measured_j"])
    assert "faster than the device can draw" in ok.loc[1, "energy_invalid"]
    assert ok["energy_j"].median() == pytest.approx(101.0)  # the median of 100 and 102: the invalid one is out
    assert ok.loc[0, "energy_j"] == pytest.approx(100.0) and ok.loc[2, "energy_j"] == pytest.approx(102.0)

    class _A:  # what validity_table reads from an analysis
        pass
    a = _A()
    a.ok = tables.ok
    vt = validity_table(a)
    assert len(vt) == 1 and "invalid-figure" in vt.iloc[0]["flags"] and "faster" in vt.iloc[0]["flags"]


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_an_nvml_error_while_listing_the_gpus_is_a_reason_not_a_crash(fake_nvml, tmp_path):
    """The GPU acceptance kit and the host's meters both start with nvml.discover: a lost GPU there says why."""
    import _fake_nvml
    from _fake_nvml import FakeGpu

    fake_nvml(FakeGpu("GPU-a"))

    def lost(h):
        raise _fake_nvml.NVMLError("GPU is lost")
    sys.modules["pynvml"].nvmlDeviceGetName = lost
    gpus, reason = nvml.discover()
    assert gpus == [] and "GPU is lost" in reason
    meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False), "cuda")
    meters.close()
    assert "GPU is lost" in meters.reasons["nvml"]


def test_a_rapl_counter_left_unread_longer_than_a_wrap_is_invalid(tmp_path):
    """A package whose range wraps in 1 s at the fastest believable power (range 2000 J, 1000 W limit × 2), read at
    the window's edges only (the sampler stopped): a whole wrap could hide between the reads, so the figure is
    invalid; read often enough, the same counter gives a valid figure."""
    root = make_rapl_tree(tmp_path / "rapl", 0, 0, max_range=2_000_000_000)
    (root / "intel-rapl:0" / "constraint_0_power_limit_uw").write_text("1000000000\n")
    meters = MeterSet.create(MeterSpec(rapl_root=str(root), codecarbon=False, sample_interval_s=0.02))
    try:
        install_rapl(meters, {"cpu:package-0": 50.0})
        pkg = next(c for c in meters.rapl if c.component == "cpu:package-0")
        assert pkg.wrap_s == pytest.approx(1.0)
        with meters.window("generate") as read_often:
            time.sleep(0.3)
        meters.sampler.stop()
        with meters.window("generate") as blind:
            time.sleep(1.3)
    finally:
        meters.close()
    often = next(f for f in read_often.result["energy"] if f["component"] == "cpu:package-0")
    assert often.get("valid", True) is True
    fig = next(f for f in blind.result["energy"] if f["component"] == "cpu:package-0")
    assert fig["valid"] is False and "a wrap may be missing" in fig["invalid_reason"]


def test_a_traced_counter_unread_longer_than_a_wrap_is_invalid():
    tr = CounterTrace(0.1, wrap_s={"cpu:package-0": 0.5})
    for t in (100.0, 100.1, 100.2, 100.9, 101.0, 101.1):  # 0.7 s without a read inside the window
        tr.add(t, {"cpu:package-0": 10.0 * (t - 100.0)})
    e = tr.energy("cpu:package-0", 100.05, 101.05)
    assert e.valid is False and "a wrap may be missing" in e.invalid_reason
    assert tr.energy("cpu:package-0", 100.95, 101.05).valid
