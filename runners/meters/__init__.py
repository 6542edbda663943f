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
from dataclasses import dataclass
from typing import Any

from runners.job_spec import MeterSpec
from runners.record import WindowResult
from runners.meters import nvml, rapl
from runners.meters.sampler import Sampler
from runners.meters.trace import CounterTrace, CounterTracer
from runners.meters.validity import STEP_SLACK_S, invalid_flags, invalidate, rise_problem, valid_totals

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


@dataclass
class Edge:
    """One edge of a window: every counter read, and the clocks taken around those reads (their midpoint is the
    instant the figures belong to, so energy and time share their two instants)."""

    mono: float
    perf: float
    unix: float
    joules: dict[str, float]  # component -> cumulative J (the counters read without error)
    errors: dict[str, str]  # component -> why its read failed

    @classmethod
    def read(cls, readers: dict[str, Any]) -> "Edge":
        p0, m0 = time.perf_counter(), time.monotonic()
        joules, errors = {}, {}
        for component, read in readers.items():
            try:
                joules[component] = read()
            except Exception as e:  # an NVMLError or a sysfs error: the figure is invalid, the run goes on
                errors[component] = f"{type(e).__name__}: {e}"
        m1, p1 = time.monotonic(), time.perf_counter()
        unix = time.time() - (m1 - m0) / 2
        return cls((m0 + m1) / 2, (p0 + p1) / 2, unix, joules, errors)


class Window:
    def __init__(self, meters: "MeterSet", name: str, info: dict[str, Any] | None, trace: bool = False):
        self.meters = meters
        self.name = name
        self.info: dict[str, Any] = dict(info or {})
        self.result: dict[str, Any] | None = None
        self.intensity_g_per_kwh: float | None = None
        self.trace: CounterTrace | None = None  # with trace=True: every counter, finely, for windows marked inside
        self._tracer = CounterTracer(meters.counter_readers(), meters.spec.trace_interval_s, meters.power_limits(),
                                     meters.update_periods(), {c.component: c.wrap_s for c in meters.rapl}
                                     ) if trace else None

    def __enter__(self) -> "Window":
        m = self.meters
        # what is slow goes first (codecarbon's first task takes 128–200 ms): the counters and the clocks are read
        # last, side by side, so the window's energy and its time start at the same instant
        self._task = m.estimator.begin() if m.estimator else None
        if self._tracer is not None:
            self._tracer.__enter__()
        self._hold = m.sampler.hold(time.monotonic())
        self._edge0 = Edge.read(m.counter_readers())
        return self

    def __exit__(self, *exc) -> None:
        m = self.meters
        edge1 = Edge.read(m.counter_readers())  # first of all: the counters and the clocks, together
        duration = edge1.perf - self._edge0.perf
        if self._tracer is not None:
            self._tracer.__exit__(*exc)
            self.trace = self._tracer.trace
        samples = m.sampler.slice(self._edge0.mono, edge1.mono, m.spec.keep_series)
        m.sampler.release(self._hold)
        figures = m.counter_figures(self._edge0, edge1, duration)
        figures += m.sampled_figures(samples, duration)
        if self._task is not None:
            est = m.estimator.end(self._task)
            self.intensity_g_per_kwh = est["intensity_g_per_kwh"]
            figures += m.estimated_figures(est)
        else:
            figures += m.unavailable_figures()
        result = WindowResult(
            start_unix=self._edge0.unix, end_unix=edge1.unix, start_mono=self._edge0.mono, end_mono=edge1.mono,
            duration_s=duration, energy=figures, samples=samples, info=self.info,
            flags=[*resolution_flags(figures, duration, m.update_periods()), *invalid_flags(figures),
                   *_sampler_flags(samples)],
        ).as_dict()
        result["energy_total"] = valid_totals(figures)
        self.result = result


def _sampler_flags(samples: dict | None) -> list[dict]:
    errors = (samples or {}).get("read_errors")
    if not errors:
        return []
    return [{"code": "sampler-read-error", "component": None,
             "message": f"{errors['n']} sampler read(s) failed in this window (last: {errors['last']}): those "
                        "samples lack the metric; counter figures are unaffected"}]


def idle_power(fig: dict[str, Any], duration: float) -> dict[str, Any]:
    """An idle figure as power; an invalid figure gives no power (a baseline from it would corrupt every net figure)."""
    ok = fig["joules"] is not None and fig.get("valid") is not False and duration > 0
    return {"component": fig["component"], "watts": fig["joules"] / duration if ok else None,
            "source": fig["source"], "meter": fig["meter"],
            "reason": fig["reason"] if fig.get("valid") is not False else fig["invalid_reason"]}


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
        self._gpu_limits = {g.component: g.power_limit_w() for g in self.gpus}
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

    def power_limits(self) -> dict[str, float | None]:
        """component -> the device's highest power limit (W), the bound a counter may not rise much faster than."""
        limits: dict[str, float | None] = {c.component: c.limit_w for c in self.rapl}
        limits.update(self._gpu_limits)
        return limits

    def counter_figures(self, edge0: Edge, edge1: Edge, duration: float) -> list[dict]:
        """One measured figure per counter: the difference of its two edge readings, checked (validity.py)."""
        periods, limits = self.update_periods(), self.power_limits()
        figures = []
        for component in self.counter_readers():
            meter = "nvml" if kind(component) == "gpu" else "rapl"
            failed = [f"{edge}: {e.errors[component]}" for edge, e in (("start", edge0), ("end", edge1))
                      if component in e.errors]
            if failed:
                figures.append(invalidate(figure(component, None, "unavailable", meter,
                                                 "the counter's read failed at the window's " + "; ".join(failed)),
                                          "the counter could not be read at the window's " + "; ".join(failed)))
                continue
            joules = edge1.joules[component] - edge0.joules[component]
            period = periods.get(component)
            # each edge reads a counter that moved last up to one update period ago: that period's energy, per edge
            error = 2 * period * joules / duration if period and duration > 0 else None
            fig = figure(component, joules, "measured", meter, boundary_error_j=error)
            problem = rise_problem(joules, duration, limits.get(component), period or STEP_SLACK_S) or \
                self._blind(component, edge0.mono, edge1.mono)
            figures.append(invalidate(fig, problem) if problem else fig)
        return figures

    def _blind(self, component: str, start: float, end: float) -> str | None:
        """Why a RAPL figure could have missed a wrap: its reads were once further apart than a wrap takes."""
        c = next((c for c in self.rapl if c.component == component), None)
        gaps = c.blind_between(start, end) if c else []
        if not gaps:
            return None
        return (f"the counter went unread for {max(g for _, g in gaps):.0f} s, longer than it takes to wrap "
                f"({c.wrap_s:.0f} s at the fastest believable power): a wrap may be missing")

    def sampled_figures(self, samples: dict | None, duration: float) -> list[dict]:
        """GPUs without a (usable) energy counter: their sampled NVML power readings, integrated."""
        figures = []
        for g in self.gpus:
            if g.has_energy_counter:
                continue
            joules = _integrate(samples, f"gpu{g.index}_power_w", duration)
            figures.append(figure(g.component, joules, "measured" if joules is not None else "unavailable",
                                  "nvml-power-samples", None if joules is not None else
                                  "no energy counter and no power sample in this window"))
        return figures

    def estimated_figures(self, est: dict[str, Any]) -> list[dict]:
        """codecarbon's figures for the components no counter covers (and only those)."""
        kinds, figures = {kind(c.component) for c in self.rapl}, []
        if "package" not in kinds:
            figures.append(figure("cpu", est["joules"]["cpu"], "estimated", "codecarbon",
                                  f"no CPU energy counter here ({self.reasons.get('rapl')}); codecarbon model "
                                  f"({self.estimator.describe()})"))
        if "dram" not in kinds:
            figures.append(figure("ram", est["joules"]["ram"], "estimated", "codecarbon",
                                  "no DRAM energy counter; codecarbon models RAM power from its size"))
        return figures + self.unavailable_figures(cpu=False)

    def unavailable_figures(self, cpu: bool = True) -> list[dict]:
        figures = []
        if cpu and not self.rapl:
            figures.append(figure("cpu", None, "unavailable", "rapl", self.reasons.get("rapl")))
        if not self.gpus:
            figures.append(figure("gpu", None, "unavailable", "nvml", self.reasons.get("nvml")))
        return figures

    def idle(self, seconds: float) -> dict[str, Any]:
        """Mean power per component over ``seconds`` of doing nothing, for net = raw − idle × duration; and, per GPU
        with a counter, the counter's energy against its integrated power readings (flagged beyond 10 %)."""
        with self.window("idle") as w:
            time.sleep(seconds)
        assert w.result is not None
        d = w.result["duration_s"]
        power = [idle_power(f, d) for f in w.result["energy"]]
        checks = []
        for f in w.result["energy"]:
            g = next((g for g in self.gpus if g.component == f["component"] and f["meter"] == "nvml"), None)
            integrated = _integrate(w.result["samples"], f"gpu{g.index}_power_w", d) if g else None
            if g is None or integrated is None or not f["joules"] or f.get("valid") is False:
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
