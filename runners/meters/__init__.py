"""Energy measurement as named windows (like Zeus): open a window, do the work, close it, read joules and seconds
taken between the same two instants.

Every figure carries its source: ``measured`` (a hardware counter: NVML total energy, RAPL powercap), ``estimated``
(codecarbon's model, used only for components without a counter) or ``unavailable`` (with the reason). Totals keep
measured and estimated apart; they are never added together.

    meters = MeterSet.create(job.meters)
    with meters.window("generate") as w:
        ...
    w.result   # the record's Window dict
"""

from __future__ import annotations

import time
from typing import Any

from runners.job import MeterSpec
from runners.record import WindowResult
from runners.meters import nvml, rapl
from runners.meters.sampler import Sampler
from runners.meters.trace import CounterTrace, CounterTracer

# An estimate stands in for a component only while no counter covers it: RAPL package -> "cpu", dram -> "ram",
# an NVML GPU -> "gpu".
SUPERSEDES = {"package": "cpu", "dram": "ram", "gpu": "gpu"}


def figure(component: str, joules: float | None, source: str, meter: str, reason: str | None = None,
           **extra: Any) -> dict:
    return {"component": component, "joules": joules, "source": source, "meter": meter, "reason": reason, **extra}


def kind(component: str) -> str:
    """'cpu:package-0' -> 'package', 'cpu:dram-0' -> 'dram', 'gpu:1' -> 'gpu', 'cpu' -> 'cpu'."""
    if component.startswith("gpu"):
        return "gpu"
    return component.split(":")[1].split("-")[0] if ":" in component else component


def resolution_flags(figures: list[dict], duration: float, periods: dict[str, float | None]) -> list[dict]:
    """Flags for measured figures the counter cannot resolve well: a window shorter than MIN_WINDOW_S, or spanning
    fewer than MIN_UPDATES updates of a counter whose update period is known."""
    flags = []
    for f in figures:
        if f["source"] != "measured" or f["joules"] is None:
            continue
        period = periods.get(f["component"])
        updates = duration / period if period else None
        if duration < nvml.MIN_WINDOW_S or (updates is not None and updates < nvml.MIN_UPDATES):
            flags.append({"code": "short-window", "component": f["component"],
                          "message": f"{duration:.2f} s window" + (f" = {updates:.0f} counter updates" if updates
                                                                   else "")
                          + f": below {nvml.MIN_WINDOW_S:g} s or {nvml.MIN_UPDATES} updates, the counter's "
                          "resolution is a large share of the figure"})
        if f.get("meter") == "nvml-power-samples":
            flags.append({"code": "power-integrated", "component": f["component"],
                          "message": "no usable energy counter: energy integrated from sampled power"})
    return flags


class Window:
    def __init__(self, meters: "MeterSet", name: str, info: dict[str, Any] | None, trace: bool = False):
        self.meters = meters
        self.name = name
        self.info: dict[str, Any] = dict(info or {})
        self.result: dict[str, Any] | None = None
        self.intensity_g_per_kwh: float | None = None
        self.trace: CounterTrace | None = None  # with trace=True: every counter, finely, for windows marked inside
        self._tracer = CounterTracer(meters.counter_readers(), meters.spec.trace_interval_s) if trace else None

    def __enter__(self) -> "Window":
        m = self.meters
        if self._tracer is not None:
            self._tracer.__enter__()
        self._rapl0 = {c.component: c.total_uj() for c in m.rapl}
        self._gpu0 = {g.component: g.energy_mj() for g in m.gpus if g.has_energy_counter}
        self._task = m.estimator.begin() if m.estimator else None
        self._t0 = time.time()
        self._m0 = time.monotonic()  # the kernel's clock, shared with the host: the host meters by it
        self._p0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        p1 = time.perf_counter()
        m1 = time.monotonic()
        t1 = time.time()
        m = self.meters
        duration = p1 - self._p0
        figures: list[dict] = []
        for c in m.rapl:
            figures.append(figure(c.component, (c.total_uj() - self._rapl0[c.component]) / 1e6, "measured", "rapl"))
        samples = m.sampler.slice(self._t0, t1, m.spec.keep_series) if m.sampler else None
        for g in m.gpus:
            if g.has_energy_counter:
                figures.append(figure(g.component, (g.energy_mj() - self._gpu0[g.component]) / 1e3, "measured",
                                      "nvml"))
            else:  # no (usable) energy counter on this board: integrate the sampled NVML power readings
                joules = _integrate(samples, f"gpu{g.index}_power_w", duration)
                figures.append(figure(g.component, joules, "measured" if joules is not None else "unavailable",
                                      "nvml-power-samples", None if joules is not None else
                                      "no energy counter and no power sample in this window"))
        if self._tracer is not None:
            self._tracer.__exit__(*exc)
            self.trace = self._tracer.trace
        if self._task is not None:
            est = m.estimator.end(self._task)
            self.intensity_g_per_kwh = est["intensity_g_per_kwh"]
            kinds = {kind(c.component) for c in m.rapl}
            if "package" not in kinds:
                figures.append(figure("cpu", est["joules"]["cpu"], "estimated", "codecarbon",
                                      f"no CPU energy counter here ({m.reasons.get('rapl')}); codecarbon model "
                                      f"({m.estimator.describe()})"))
            if "dram" not in kinds:
                figures.append(figure("ram", est["joules"]["ram"], "estimated", "codecarbon",
                                      "no DRAM energy counter; codecarbon models RAM power from its size"))
        elif not m.rapl:
            figures.append(figure("cpu", None, "unavailable", "rapl", m.reasons.get("rapl")))
        if not m.gpus:
            figures.append(figure("gpu", None, "unavailable", "nvml", m.reasons.get("nvml")))
        self.result = WindowResult(
            start_unix=self._t0, end_unix=t1, start_mono=self._m0, end_mono=m1, duration_s=duration, energy=figures,
            flags=resolution_flags(figures, duration, m.update_periods()), samples=samples, info=self.info,
        ).as_dict()


def _integrate(samples: dict | None, key: str, duration: float) -> float | None:
    if not samples or key not in samples.get("summary", {}):
        return None
    return samples["summary"][key]["mean"] * duration


class MeterSet:
    """The meters of one trial (or of the host), created once (codecarbon's start-up takes ~2 s) and shared by
    windows.

    ``device`` draws the energy boundary: "cpu" counts no GPU at all; "cuda" counts only the GPUs in
    ``spec.gpus`` (else the one ``cuda:0`` means); None (the host's meters) counts every GPU it can see — the host
    restricts each trial's figures to that trial's components afterwards."""

    def __init__(self, spec: MeterSpec, device: str | None = None):
        self.spec = spec
        self.device = device
        self.reasons: dict[str, str | None] = {}
        self.rapl, self.reasons["rapl"] = rapl.discover(spec.rapl_root)
        if device == "cpu":
            self.gpus, self.reasons["nvml"] = [], "a CPU trial's energy boundary holds no GPU"
        else:
            select = spec.gpus if spec.gpus is not None else (nvml.default_selection() if device == "cuda" else None)
            self.gpus, self.reasons["nvml"] = nvml.discover(select)
        self.validity = {g.component: g.probe_counter() for g in self.gpus if g.has_energy_counter}
        self.estimator = None
        if spec.codecarbon:
            try:
                from runners.meters.estimate import CodecarbonEstimator

                self.estimator = CodecarbonEstimator(spec.country_iso_code, spec.sample_interval_s)
            except Exception as e:  # codecarbon missing or failing must not sink a trial: say why instead
                self.reasons["codecarbon"] = f"codecarbon unavailable: {e}"
        probes = [g.sample for g in self.gpus]
        if self.rapl:
            probes.append(_RaplPowerProbe(self.rapl))
        self.sampler = Sampler(spec.sample_interval_s, probes)
        self.sampler.start()

    @classmethod
    def create(cls, spec: MeterSpec | None = None, device: str | None = None) -> "MeterSet":
        return cls(spec or MeterSpec(), device)

    def window(self, name: str, info: dict[str, Any] | None = None, *, trace: bool = False) -> Window:
        return Window(self, name, info, trace)

    def counter_readers(self) -> dict[str, Any]:
        """component -> cumulative joules, for every hardware counter here (what a host trace follows)."""
        readers: dict[str, Any] = {c.component: (lambda c=c: c.total_uj() / 1e6) for c in self.rapl}
        readers.update({g.component: g.energy_j for g in self.gpus if g.has_energy_counter})
        return readers

    def update_periods(self) -> dict[str, float | None]:
        return {c: v.get("update_period_s") for c, v in self.validity.items()}

    def idle(self, seconds: float) -> dict[str, Any]:
        """Mean power per component over ``seconds`` of doing nothing, for net = raw − idle × duration; and, per GPU
        with a counter, the counter's energy against its integrated power readings (flagged beyond 10 %)."""
        with self.window("idle") as w:
            time.sleep(seconds)
        assert w.result is not None
        d = w.result["duration_s"]
        power = [{"component": f["component"], "watts": (f["joules"] / d) if f["joules"] is not None else None,
                  "source": f["source"], "meter": f["meter"], "reason": f["reason"]} for f in w.result["energy"]]
        checks = []
        for f in w.result["energy"]:
            g = next((g for g in self.gpus if g.component == f["component"] and f["meter"] == "nvml"), None)
            integrated = _integrate(w.result["samples"], f"gpu{g.index}_power_w", d) if g else None
            if g is None or integrated is None or not f["joules"]:
                continue
            gap = abs(f["joules"] - integrated) / f["joules"]
            checks.append({"component": f["component"], "counter_j": f["joules"], "power_integrated_j": integrated,
                           "relative_gap": gap, "flagged": gap > nvml.MAX_COUNTER_POWER_GAP})
        flags = [{"code": "counter-vs-power", "component": c["component"],
                  "message": f"idle: counter {c['counter_j']:.2f} J vs integrated power {c['power_integrated_j']:.2f} "
                             f"J ({c['relative_gap'] * 100:.0f} % apart, > {nvml.MAX_COUNTER_POWER_GAP * 100:.0f} %)"}
                 for c in checks if c["flagged"]]
        return {"duration_s": d, "start_unix": w.result["start_unix"], "start_mono": w.result["start_mono"],
                "end_mono": w.result["end_mono"], "power": power, "checks": checks,
                "flags": w.result["flags"] + flags,
                "samples": w.result["samples"] and {**w.result["samples"], "series": None}}

    def gpu_temperatures(self) -> dict[int, float]:
        temps = {}
        for g in self.gpus:
            t = g.sample().get(f"gpu{g.index}_temp_c")
            if t is not None:
                temps[g.index] = t
        return temps

    def describe(self) -> dict[str, Any]:
        return {
            "rapl": [c.component for c in self.rapl],
            "nvml": [{"index": g.index, "uuid": g.uuid, "name": g.name, "energy_counter": g.has_energy_counter}
                     for g in self.gpus],
            "validity": self.validity,
            "codecarbon": self.estimator.describe() if self.estimator else None,
            "sample_interval_s": self.spec.sample_interval_s,
            "unavailable": {k: v for k, v in self.reasons.items() if v},
        }

    def close(self) -> None:
        self.sampler.stop()
        if self.estimator:
            self.estimator.close()


class _RaplPowerProbe:
    """Sampler probe: CPU package/DRAM power from successive RAPL readings (also keeps the wrap accounting fresh)."""

    def __init__(self, counters: list[rapl.RaplCounter]):
        self.counters = counters
        self.last: dict[str, tuple[float, int]] = {}

    def __call__(self) -> dict[str, float]:
        out = {}
        now = time.monotonic()
        for c in self.counters:
            total = c.total_uj()
            prev = self.last.get(c.component)
            if prev and now > prev[0]:
                key = c.component.replace("cpu:", "cpu_").replace("-", "") + "_power_w"
                out[key] = (total - prev[1]) / 1e6 / (now - prev[0])
            self.last[c.component] = (now, total)
        return out
