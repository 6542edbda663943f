"""The host's share of a trial's energy: the trial's boundary, and the host's counters for the windows the runner
marked inside its container.

The container cannot read RAPL (Docker masks powercap; ``energy_uj`` is root-only) and must not be given that side
channel. So the host traces its counters during the container's whole span (``meters.window(..., trace=True)``)
and, once the record is back, meters each window the runner marked (start/end on the shared monotonic clock) from
that trace. A component the runner measured itself (NVML inside a CUDA container, RAPL in a plain process) keeps
the runner's figure; a component only the host can read replaces the runner's estimate for it.
"""

from __future__ import annotations

from typing import Any, Callable

from runners.meters import SUPERSEDES, figure, kind, resolution_flags
from runners.record import boundary, totals
from runners.meters.trace import CounterTrace
from runners.record import joules_per_token

Keep = Callable[[str], bool]


def trial_boundary(device: str, gpu_indices: list[int]) -> Keep:
    """Which components a trial's energy may count: a CPU trial no GPU, a CUDA trial only its own GPUs."""
    own = {f"gpu:{i}" for i in gpu_indices}

    def keep(component: str) -> bool:
        if kind(component) != "gpu" or component == "gpu":  # "gpu" alone: codecarbon's/unavailable placeholder
            return True
        return device == "cuda" and component in own
    return keep


def restrict(window: dict[str, Any] | None, keep: Keep) -> dict[str, Any] | None:
    """The window with only the trial's components (the host's meters see every GPU of the machine)."""
    if not window:
        return window
    figures = [f for f in window["energy"] if keep(f["component"])]
    return {**window, "energy": figures, "energy_total": totals(figures), "boundary": boundary(figures)}


def restrict_idle(idle: dict[str, Any] | None, keep: Keep) -> dict[str, Any] | None:
    if not idle:
        return idle
    return {**idle, "power": [p for p in idle["power"] if keep(p["component"])],
            "checks": [c for c in idle.get("checks", []) if keep(c["component"])]}


def _meter(component: str) -> str:
    return ("nvml" if kind(component) == "gpu" else "rapl") + "-host-trace"


def meter_window(window: dict[str, Any], trace: CounterTrace, keep: Keep) -> None:
    """Add the host's measured figures to one runner window (in place), superseding the runner's estimates."""
    if "start_mono" not in window:
        window.setdefault("flags", []).append({"code": "host-trace", "component": None, "message":
                                               "the runner marked no monotonic boundaries: host counters not applied"})
        return
    own = {f["component"] for f in window["energy"] if f["source"] == "measured"}
    added, flags = [], []
    for comp in trace.components:
        if comp in own or not keep(comp):
            continue
        e = trace.energy(comp, window["start_mono"], window["end_mono"])
        if e.joules is None:
            flags.append({"code": "host-trace", "component": comp, "message": e.reason})
            continue
        added.append(figure(comp, e.joules, "measured", _meter(comp), None, boundary_error_j=e.boundary_error_j,
                            trace_points=e.samples))
    if not added:
        window.setdefault("flags", []).extend(flags)
        return
    replaced = {SUPERSEDES[kind(f["component"])] for f in added}
    figures = [f for f in window["energy"] if f["component"] not in replaced] + added
    window["energy"] = figures
    window["energy_total"] = totals(figures)
    window["boundary"] = boundary(figures)
    window["host_metered"] = {"components": [f["component"] for f in added], "trace_interval_s": trace.interval_s,
                              "boundary_error_j": sum(f["boundary_error_j"] for f in added),
                              "replaced_estimates": sorted(replaced)}
    periods = {f["component"]: trace.interval_s for f in added}
    window["flags"] = [*window.get("flags", []), *flags,
                       *resolution_flags(added, window["duration_s"], periods)]


def meter_idle(idle: dict[str, Any], trace: CounterTrace, keep: Keep) -> None:
    """The runner's own idle baseline (when it took one): host counters for the components it could not read."""
    if "start_mono" not in idle:
        return
    own = {p["component"] for p in idle["power"] if p["source"] == "measured"}
    d = idle["end_mono"] - idle["start_mono"]
    added = []
    for comp in trace.components:
        if comp in own or not keep(comp) or d <= 0:
            continue
        e = trace.energy(comp, idle["start_mono"], idle["end_mono"])
        if e.joules is not None:
            added.append({"component": comp, "watts": e.joules / d, "source": "measured", "meter": _meter(comp),
                          "reason": None})
    replaced = {SUPERSEDES[kind(p["component"])] for p in added}
    idle["power"] = [p for p in idle["power"] if p["component"] not in replaced] + added


def apply(record: dict[str, Any], trace: CounterTrace | None, keep: Keep) -> None:
    """Meter every window of the record from the host's trace, and refresh the figures derived from them."""
    if trace is None or not trace.components:
        return
    for window in (record.get("phases") or {}).values():
        meter_window(window, trace, keep)
    if record.get("idle"):
        meter_idle(record["idle"], trace, keep)
    gen = (record.get("phases") or {}).get("generate")
    if gen and record.get("metrics") and record.get("tokens"):
        record["metrics"]["joules_per_token"] = joules_per_token(gen["energy_total"], record["tokens"]["output"])
