"""Meters: RAPL parsing and wraparound against a sysfs-like tree, source labelling, NVML on a GPU host only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runners.job import MeterSpec
from runners.meters import MeterSet, rapl


def make_rapl_tree(root: Path, package_uj: int, dram_uj: int, max_range: int = 262_143_328_850) -> Path:
    """A powercap tree shaped like the kernel's: intel-rapl:0 (package-0) with core and dram sub-zones; the range is a
    real package's (262 kJ) unless a test wraps it on purpose."""
    zones = {
        "intel-rapl:0": ("package-0", package_uj),
        "intel-rapl:0/intel-rapl:0:0": ("core", 5),
        "intel-rapl:0/intel-rapl:0:1": ("dram", dram_uj),
    }
    for rel, (name, energy) in zones.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    # The kernel also lists sub-zones flat at the top; discovery must not count them twice.
    (root / "intel-rapl:0:1").symlink_to(root / "intel-rapl:0/intel-rapl:0:1")
    return root


def set_energy(root: Path, rel: str, value: int) -> None:
    # atomically, as the kernel's sysfs file reads: a reader never sees it empty half-way through a write
    tmp = root / rel / "energy_uj.tmp"
    tmp.write_text(f"{value}\n")
    tmp.replace(root / rel / "energy_uj")


def test_wrap_delta():
    assert rapl.wrap_delta(100, 250, 1000) == 150
    # 900 → wrap at 1000 (counter goes 0..1000) → 50: 100 to the top, 1 for the wrap step, 50 after it
    assert rapl.wrap_delta(900, 50, 1000) == 151


def test_rapl_discovers_package_and_dram_not_core(tmp_path):
    root = make_rapl_tree(tmp_path, 1000, 200)
    counters, reason = rapl.discover(root)
    assert reason is None
    assert sorted(c.component for c in counters) == ["cpu:dram-0", "cpu:package-0"]


def test_rapl_accumulates_across_wraparound(tmp_path):
    root = make_rapl_tree(tmp_path, 990_000, 10, max_range=999_999)
    counters, _ = rapl.discover(root)
    pkg = next(c for c in counters if c.component == "cpu:package-0")
    set_energy(root, "intel-rapl:0", 995_000)
    assert pkg.total_uj() == 5_000
    set_energy(root, "intel-rapl:0", 4_000)  # wrapped: 4_999 to the top + 1 + 4_000
    assert pkg.total_uj() == 5_000 + 9_000
    set_energy(root, "intel-rapl:0", 6_000)
    assert pkg.total_uj() == 16_000


def test_window_reports_rapl_as_measured_and_keeps_sources_apart(tmp_path):
    root = make_rapl_tree(tmp_path, 0, 0)
    meters = MeterSet.create(MeterSpec(rapl_root=str(root), codecarbon=False, sample_interval_s=0.02))
    try:
        with meters.window("generate") as w:
            set_energy(root, "intel-rapl:0", 2_500_000)  # 2.5 J
            set_energy(root, "intel-rapl:0/intel-rapl:0:1", 500_000)  # 0.5 J
            time.sleep(0.1)
    finally:
        meters.close()
    figures = {f["component"]: f for f in w.result["energy"]}
    assert figures["cpu:package-0"]["joules"] == pytest.approx(2.5)
    assert figures["cpu:package-0"]["source"] == "measured"
    assert figures["cpu:dram-0"]["joules"] == pytest.approx(0.5)
    assert w.result["energy_total"] == {"measured_j": pytest.approx(3.0), "estimated_j": None}
    # The sampler turned the counter into power while the window was open.
    assert w.result["samples"]["n"] >= 2
    assert "cpu_package0_power_w" in w.result["samples"]["summary"]


def test_rapl_absent_gives_codecarbon_estimate_labelled_estimated(tmp_path):
    meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=True))
    try:
        with meters.window("generate") as w:
            sum(i * i for i in range(300_000))
    finally:
        meters.close()
    figures = {f["component"]: f for f in w.result["energy"]}
    assert figures["cpu"]["source"] == "estimated" and figures["cpu"]["meter"] == "codecarbon"
    assert figures["cpu"]["joules"] > 0
    assert figures["ram"]["source"] == "estimated"
    assert w.result["energy_total"]["measured_j"] is None  # nothing estimated is passed off as measured
    assert w.result["energy_total"]["estimated_j"] == pytest.approx(figures["cpu"]["joules"] + figures["ram"]["joules"])
    assert w.intensity_g_per_kwh and w.intensity_g_per_kwh > 0


def test_no_counter_and_no_codecarbon_is_unavailable_with_reason(tmp_path):
    meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False))
    try:
        with meters.window("load") as w:
            pass
        idle = meters.idle(0.05)
    finally:
        meters.close()
    cpu = next(f for f in w.result["energy"] if f["component"] == "cpu")
    assert cpu["source"] == "unavailable" and cpu["joules"] is None and "powercap" in cpu["reason"]
    assert all(p["watts"] is None for p in idle["power"])


def test_idle_power_is_energy_over_duration(tmp_path):
    root = make_rapl_tree(tmp_path, 0, 0)
    meters = MeterSet.create(MeterSpec(rapl_root=str(root), codecarbon=False))
    try:
        set_energy(root, "intel-rapl:0", 0)
        # A fake 10 W package: the counter advances while idle() sleeps; set it from a timer thread.
        import threading

        t = threading.Timer(0.05, set_energy, (root, "intel-rapl:0", 2_000_000))
        t.start()
        idle = meters.idle(0.2)
        t.join()
    finally:
        meters.close()
    pkg = next(p for p in idle["power"] if p["component"] == "cpu:package-0")
    assert pkg["source"] == "measured"
    assert pkg["watts"] == pytest.approx(2.0 / idle["duration_s"])


def _has_nvml() -> bool:
    from runners.meters import nvml

    gpus, _ = nvml.discover()
    return bool(gpus)


@pytest.mark.skipif(not _has_nvml(), reason="no NVIDIA GPU / NVML on this host")
def test_nvml_energy_counter_measures_gpu_work():
    import torch

    meters = MeterSet.create(MeterSpec(codecarbon=False))
    try:
        with meters.window("generate") as w:
            a = torch.randn(4096, 4096, device="cuda")
            for _ in range(50):
                a = a @ a.T / 4096
            torch.cuda.synchronize()
    finally:
        meters.close()
    gpu = next(f for f in w.result["energy"] if f["component"] == "gpu:0")
    assert gpu["source"] == "measured" and gpu["joules"] > 0


# --- RAPL: the accumulation race -------------------------------------------------------------------------------------


def test_rapl_reads_under_the_lock_so_an_old_reading_never_counts_as_a_wrap(tmp_path):
    """Thread A reads 100 µJ and stalls; thread B reads 200 µJ and applies it; if A then applied its older reading,
    the counter would look wrapped and a whole counter range would be added. Reading under the lock forbids it."""
    import threading

    root = make_rapl_tree(tmp_path, 0, 0, max_range=262_143_328_850)
    counters, _ = rapl.discover(root)
    pkg = next(c for c in counters if c.component == "cpu:package-0")
    a_has_read, release_a = threading.Event(), threading.Event()
    original = pkg.read_raw

    def slow_read():
        value = original()
        if threading.current_thread().name == "A":
            a_has_read.set()
            release_a.wait(5)
        return value

    pkg.read_raw = slow_read
    set_energy(root, "intel-rapl:0", 100)
    a = threading.Thread(target=pkg.total_uj, name="A")
    a.start()
    assert a_has_read.wait(5)
    set_energy(root, "intel-rapl:0", 200)
    b = threading.Thread(target=pkg.total_uj, name="B")
    b.start()
    b.join(0.5)  # with the read under the lock, B waits for A here
    release_a.set()
    a.join(5)
    b.join(5)
    assert pkg.total_uj() == 200  # 0 → 100 → 200, never + a counter range


# --- the host's counter trace -----------------------------------------------------------------------------------------


def test_trace_interpolates_each_boundary_and_states_its_error():
    from runners.meters.trace import CounterTrace

    tr = CounterTrace(0.1)
    for i in range(11):  # 10 W, sampled every 100 ms, monotonic t = 100.0 … 101.0
        tr.add(100.0 + i / 10, {"cpu:package-0": 10.0 * i / 10})
    e = tr.energy("cpu:package-0", 100.25, 100.75)
    assert e.joules == pytest.approx(5.0)  # 10 W × 0.5 s, interpolated inside both brackets
    assert e.boundary_error_j == pytest.approx(2.0)  # each bracket's increment: 1 J + 1 J
    assert e.samples == 5
    on_points = tr.energy("cpu:package-0", 100.2, 100.7)
    assert on_points.joules == pytest.approx(5.0) and on_points.boundary_error_j == 0.0
    outside = tr.energy("cpu:package-0", 99.0, 100.5)
    assert outside.joules is None and "outside the host's counter trace" in outside.reason


def test_traced_window_meters_a_root_only_counter_at_a_known_rate(tmp_path):
    """A 0400 powercap-like tree (as the kernel's since CVE-2020-8694) advanced by a writer at 25 W: the trace gives
    any sub-window rate × duration within the stated boundary error."""
    writer = RaplWriter(tmp_path, package_w=25.0, dram_w=5.0)
    with writer:
        meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path), codecarbon=False, trace_interval_s=0.01))
        try:
            with meters.window("container", trace=True) as w:
                time.sleep(0.2)
                t0 = time.monotonic()
                time.sleep(0.6)
                t1 = time.monotonic()
                time.sleep(0.2)
        finally:
            meters.close()
    for comp, watts in (("cpu:package-0", 25.0), ("cpu:dram-0", 5.0)):
        e = w.trace.energy(comp, t0, t1)
        assert e.joules == pytest.approx(watts * (t1 - t0), abs=e.boundary_error_j + watts * 2 * writer.step_s)
        assert 0 < e.boundary_error_j < watts * 0.1


class RaplWriter:
    """A powercap-like tree whose package and DRAM counters advance at known rates, written atomically (rename) with
    mode 0400 like the kernel's since CVE-2020-8694; readable here only because the tests run as root."""

    def __init__(self, root: Path, package_w: float, dram_w: float, step_s: float = 0.005):
        import threading

        self.root, self.step_s = root, step_s
        self.rates = {"intel-rapl:0": package_w, "intel-rapl:0/intel-rapl:0:1": dram_w}
        self.joules = {rel: 0.0 for rel in self.rates}  # accumulated up to t0 (rates may change: set_rates)
        make_rapl_tree(root, 0, 0, max_range=262_143_328_850)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.monotonic()
        self._write()

    def set_rates(self, package_w: float, dram_w: float) -> None:
        """From now on the counters advance at these rates (what they counted so far is kept)."""
        with self._lock:
            now = time.monotonic()
            for rel, watts in self.rates.items():
                self.joules[rel] += watts * (now - self.t0)
            self.t0 = now
            self.rates = {"intel-rapl:0": package_w, "intel-rapl:0/intel-rapl:0:1": dram_w}

    def _write(self) -> None:
        import os

        with self._lock:
            elapsed = time.monotonic() - self.t0
            values = {rel: self.joules[rel] + watts * elapsed for rel, watts in self.rates.items()}
        for rel, joules in values.items():
            path = self.root / rel / "energy_uj"
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
            os.write(fd, f"{int(joules * 1e6)}\n".encode())
            os.close(fd)
            os.replace(tmp, path)

    def _loop(self) -> None:
        while not self._stop.wait(self.step_s):
            self._write()

    def __enter__(self) -> "RaplWriter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


# --- NVML, against the library's interface with replayed counter traces ------------------------------------------------



def _cuda_meters(tmp_path, **spec):
    return MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False, sample_interval_s=0.02,
                                     **spec), "cuda")


def _cuda_window(tmp_path, seconds: float, **spec):
    """(meters, the generate window's result) of a CUDA trial's meters around ``seconds`` of sleep."""
    meters = _cuda_meters(tmp_path, **spec)
    try:
        with meters.window("generate") as w:
            time.sleep(seconds)
    finally:
        meters.close()
    return meters, w.result


def test_memory_bandwidth_from_nvml_clock_and_bus_else_the_datasheet_table(fake_nvml):
    from _fake_nvml import FakeGpu
    from runners.meters import nvml

    fake_nvml(FakeGpu("GPU-a"), FakeGpu("GPU-b", mem_clock_mhz=None), FakeGpu("GPU-c", name="NVIDIA Z1",
                                                                               bus_width_bits=None))
    (a, b, c), _ = nvml.discover()
    got = a.memory_bandwidth()
    assert got["source"] == "nvml" and got["bytes_per_s"] == pytest.approx(3201e6 * 2 * 6144 / 8)  # 4.92 TB/s
    assert "3201 MHz" in got["detail"] and "6144 bit" in got["detail"]
    got = b.memory_bandwidth()  # NVML cannot say: the H200's datasheet figure, named as such
    assert got["source"] == "datasheet" and got["bytes_per_s"] == 4.8e12 and "H200" in got["detail"]
    got = c.memory_bandwidth()  # neither knows: no figure, and why
    assert got["bytes_per_s"] is None and "NVIDIA Z1" in got["reason"] and "Not Supported" in got["reason"]


def test_nvml_window_is_the_counter_delta_in_joules(fake_nvml, tmp_path):
    """Counter at 120 W while the power readings say 300 W: the figure is the counter's delta ÷ 1000 (mJ → J), not
    integrated power, not mJ, not a fallback zero."""
    from _fake_nvml import FakeGpu

    gpu, = fake_nvml(FakeGpu("GPU-a", watts=120.0, reported_power_w=300.0, period_s=0.02))
    meters, result = _cuda_window(tmp_path, 0.5)
    fig = next(f for f in result["energy"] if f["component"] == "gpu:0")
    assert fig["source"] == "measured" and fig["meter"] == "nvml"
    assert fig["joules"] == pytest.approx(120.0 * result["duration_s"], abs=120.0 * 0.02 * 1.5)
    assert meters.validity["gpu:0"]["update_period_s"] == pytest.approx(0.02, rel=0.5)
    assert result["boundary"] == "gpu:0 measured"
    # 0.5 s is far below what a counter resolves well: flagged
    assert [f["code"] for f in result["flags"]] == ["short-window"]


def test_nvml_without_counter_integrates_power_and_says_so(fake_nvml, tmp_path):
    from _fake_nvml import FakeGpu

    fake_nvml(FakeGpu("GPU-a", watts=80.0, has_counter=False))
    meters, result = _cuda_window(tmp_path, 0.3)
    fig = next(f for f in result["energy"] if f["component"] == "gpu:0")
    assert fig["meter"] == "nvml-power-samples" and fig["joules"] == pytest.approx(80.0 * result["duration_s"])
    assert "power-integrated" in {f["code"] for f in result["flags"]}


@pytest.mark.parametrize("start_mj, what", [(5_000_000, "frozen"), (0, "zero")])
def test_a_frozen_or_zero_counter_is_rejected(fake_nvml, tmp_path, start_mj, what):
    from _fake_nvml import FakeGpu

    fake_nvml(FakeGpu("GPU-a", watts=80.0, frozen=True, start_mj=start_mj))
    meters, result = _cuda_window(tmp_path, 0.2)
    v = meters.validity["gpu:0"]
    assert v[what] is True and "power is sampled" in v["rejected"]
    fig = next(f for f in result["energy"] if f["component"] == "gpu:0")
    assert fig["meter"] == "nvml-power-samples" and fig["joules"] == pytest.approx(80.0 * result["duration_s"])


def test_only_the_trials_gpu_is_metered(fake_nvml, tmp_path):
    """Two GPUs on the host: a trial on the second counts that one (named by the host's index), a CPU trial none."""
    from _fake_nvml import FakeGpu

    fake_nvml(FakeGpu("GPU-a", watts=60.0), FakeGpu("GPU-b", watts=200.0))
    meters, result = _cuda_window(tmp_path, 0.2, gpus={"GPU-b": 1})
    gpus = [f for f in result["energy"] if f["component"].startswith("gpu")]
    assert [f["component"] for f in gpus] == ["gpu:1"]
    assert gpus[0]["joules"] == pytest.approx(200.0 * result["duration_s"], abs=200.0 * 0.02 * 1.5)
    cpu_trial = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False), "cpu")
    try:
        with cpu_trial.window("generate") as w:
            pass
    finally:
        cpu_trial.close()
    gpu = next(f for f in w.result["energy"] if f["component"] == "gpu")
    assert gpu["source"] == "unavailable" and "CPU trial" in gpu["reason"]
    missing = MeterSet.create(MeterSpec(rapl_root=str(tmp_path / "none"), codecarbon=False, gpus={"GPU-z": 3}),
                              "cuda")
    missing.close()
    assert not missing.gpus and "GPU-z" in missing.reasons["nvml"]


@pytest.mark.parametrize("reported, flagged", [(None, False), (300.0, True)])
def test_idle_cross_checks_the_counter_against_integrated_power(fake_nvml, tmp_path, reported, flagged):
    from _fake_nvml import FakeGpu

    fake_nvml(FakeGpu("GPU-a", watts=100.0, reported_power_w=reported, period_s=0.01))
    meters = _cuda_meters(tmp_path)
    try:
        idle = meters.idle(0.6)
    finally:
        meters.close()
    check, = idle["checks"]
    assert check["flagged"] is flagged
    assert ("counter-vs-power" in {f["code"] for f in idle["flags"]}) is flagged


def test_a_failed_probe_read_skips_one_metric_not_the_sampler():
    from runners.meters.sampler import Sampler

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("invalid literal for int() with base 10: ''")  # a half-read counter file
        return {"x": float(len(calls))}

    s = Sampler(0.01, [flaky])
    s.start()
    time.sleep(0.15)
    s.stop()
    assert len(s.values) >= 5 and s.errors == 1 and "invalid literal" in s.last_error
    assert sum("x" not in row for row in s.values) == 1  # only that sample lacks the metric
