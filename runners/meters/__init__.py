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
from runners.meters import nvml, rapl
from runners.meters.sampler import Sampler


def _figure(component: str, joules: float | None, source: str, meter: str, reason: str | None = None) -> dict:
    return {"component": component, "joules": joules, "source": source, "meter": meter, "reason": reason}


class Window:
    def __init__(self, meters: "MeterSet", name: str, info: dict[str, Any] | None):
        self.meters = meters
        self.name = name
        self.info: dict[str, Any] = dict(info or {})
        self.result: dict[str, Any] | None = None
        self.intensity_g_per_kwh: float | None = None

    def __enter__(self) -> "Window":
        m = self.meters
        self._rapl0 = {c.component: c.total_uj() for c in m.rapl}
        self._gpu0 = {g.component: g.energy_mj() for g in m.gpus if g.has_energy_counter}
        self._task = m.estimator.begin() if m.estimator else None
        self._t0 = time.time()
        self._p0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        p1 = time.perf_counter()
        t1 = time.time()
        m = self.meters
        duration = p1 - self._p0
        figures: list[dict] = []
        for c in m.rapl:
            figures.append(_figure(c.component, (c.total_uj() - self._rapl0[c.component]) / 1e6, "measured",
                                   "rapl"))
        samples = m.sampler.slice(self._t0, t1, m.spec.keep_series) if m.sampler else None
        for g in m.gpus:
            if g.has_energy_counter:
                figures.append(_figure(g.component, (g.energy_mj() - self._gpu0[g.component]) / 1e3, "measured",
                                       "nvml"))
            else:  # no energy counter on this board: integrate the sampled NVML power readings
                figures.append(_figure(g.component, _integrate(samples, f"gpu{g.index}_power_w", duration),
                                       "measured", "nvml-power-samples"))
        if self._task is not None:
            est = m.estimator.end(self._task)
            self.intensity_g_per_kwh = est["intensity_g_per_kwh"]
            kinds = {c.component.split(":")[1].split("-")[0] for c in m.rapl}
            if "package" not in kinds:
                figures.append(_figure("cpu", est["joules"]["cpu"], "estimated", "codecarbon",
                                       f"no CPU energy counter; codecarbon model ({m.estimator.describe()})"))
            if "dram" not in kinds:
                figures.append(_figure("ram", est["joules"]["ram"], "estimated", "codecarbon",
                                       "no DRAM energy counter; codecarbon models RAM power from its size"))
        elif not m.rapl:
            figures.append(_figure("cpu", None, "unavailable", "rapl", m.reasons.get("rapl")))
        if not m.gpus:
            figures.append(_figure("gpu", None, "unavailable", "nvml", m.reasons.get("nvml")))
        totals = {"measured_j": None, "estimated_j": None}
        for f in figures:
            if f["source"] in ("measured", "estimated") and f["joules"] is not None:
                key = f"{f['source']}_j"
                totals[key] = (totals[key] or 0.0) + f["joules"]
        self.result = {
            "start_unix": self._t0, "end_unix": t1, "duration_s": duration, "energy": figures,
            "energy_total": totals, "samples": samples, "info": self.info,
        }


def _integrate(samples: dict | None, key: str, duration: float) -> float | None:
    if not samples or key not in samples.get("summary", {}):
        return None
    return samples["summary"][key]["mean"] * duration


class MeterSet:
    """All meters available on this host, created once (codecarbon's start-up takes ~2 s) and shared by windows."""

    def __init__(self, spec: MeterSpec):
        self.spec = spec
        self.reasons: dict[str, str | None] = {}
        self.rapl, self.reasons["rapl"] = rapl.discover(spec.rapl_root)
        self.gpus, self.reasons["nvml"] = nvml.discover()
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
    def create(cls, spec: MeterSpec | None = None) -> "MeterSet":
        return cls(spec or MeterSpec())

    def window(self, name: str, info: dict[str, Any] | None = None) -> Window:
        return Window(self, name, info)

    def idle(self, seconds: float) -> dict[str, Any]:
        """Mean power per component over ``seconds`` of doing nothing, for net = raw − idle × duration."""
        with self.window("idle") as w:
            time.sleep(seconds)
        assert w.result is not None
        d = w.result["duration_s"]
        power = [{"component": f["component"], "watts": (f["joules"] / d) if f["joules"] is not None else None,
                  "source": f["source"], "meter": f["meter"], "reason": f["reason"]} for f in w.result["energy"]]
        return {"duration_s": d, "start_unix": w.result["start_unix"], "power": power,
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
            "nvml": [{"index": g.index, "name": g.name, "energy_counter": g.has_energy_counter} for g in self.gpus],
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
