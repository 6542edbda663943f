"""The host's share of a trial's energy: the trial's boundary, and the host's counters for the windows the runner
marked inside its container.

The container cannot read RAPL (Docker masks powercap; ``energy_uj`` is root-only) and must not be given that side
channel. So the host traces its counters during the container's whole span (``meters.window(..., trace=True)``)
and, once the record is back, meters each window the runner marked (start/end on the shared monotonic clock) from
that trace. A component the runner measured itself (NVML inside a CUDA container, RAPL in a plain process) keeps
the runner's figure; a component only the host can read replaces the runner's estimate for it. The runner's windows
are never rewritten: ``apply`` returns metered copies, which the executor merges into the record once.
"""

from __future__ import annotations

from typing import Any, Callable

from runners.meters import SUPERSEDES, figure, idle_power, kind, resolution_flags
from runners.meters.trace import CounterTrace
from runners.meters.validity import invalid_flags, invalidate, valid_totals
from runners.record import Record, boundary, metrics_of

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
    flags = [f for f in window.get("flags") or [] if not f.get("component") or keep(f["component"])]
    return {**window, "energy": figures, "energy_total": valid_totals(figures), "boundary": boundary(figures),
            "flags": flags}


def restrict_idle(idle: dict[str, Any] | None, keep: Keep) -> dict[str, Any] | None:
    if not idle:
        return idle
    return {**idle, "power": [p for p in idle["power"] if keep(p["component"])],
            "checks": [c for c in idle.get("checks", []) if keep(c["component"])]}


def _meter(component: str) -> str:
    return ("nvml" if kind(component) == "gpu" else "rapl") + "-host-trace"


def traced_figure(trace: CounterTrace, comp: str, start: float, end: float) -> tuple[dict[str, Any], list[dict]]:
    """The host's figure of one component over [start, end] (monotonic s), and the flags of the reads it touched.
    A traced counter that yields no figure, or one the trace cannot vouch for, gives an invalid figure with the
    reason — never a silent gap that an estimate would fill."""
    e = trace.energy(comp, start, end)
    flags = []
    if e.read_errors:
        flags.append({"code": "read-error", "component": comp,
                      "message": f"{len(e.read_errors)} host read(s) of the counter failed during this window (last: "
                                 f"{e.read_errors[-1]})" + ("" if e.valid and e.joules is not None else
                                                            ": the figure is not valid")})
    if e.joules is None:
        return invalidate(figure(comp, None, "unavailable", _meter(comp), e.reason), e.reason), flags
    fig = figure(comp, e.joules, "measured", _meter(comp), None, boundary_error_j=e.boundary_error_j,
                 trace_points=e.samples)
    return (fig if e.valid else invalidate(fig, e.invalid_reason)), flags


def meter_window(window: dict[str, Any], trace: CounterTrace, keep: Keep) -> dict[str, Any]:
    """The window with the host's measured figures, superseding the runner's estimates (a new dict: the runner's
    window is left as it was)."""
    if "start_mono" not in window:
        return {**window, "flags": [*window.get("flags", []), {
            "code": "host-trace", "component": None,
            "message": "the runner marked no monotonic boundaries: host counters not applied"}]}
    # the runner's own valid counter figures stand; one it could not read (invalid) yields to the host's
    own = {f["component"] for f in window["energy"] if f["source"] == "measured" and f.get("valid") is not False}
    added, flags = [], []
    for comp in trace.components:
        if comp in own or not keep(comp):
            continue
        fig, read_flags = traced_figure(trace, comp, window["start_mono"], window["end_mono"])
        added.append(fig)
        flags += read_flags
    if not added:
        return {**window, "flags": [*window.get("flags", []), *flags]}
    replaced = {SUPERSEDES[kind(f["component"])] for f in added} | {f["component"] for f in added}
    figures = [f for f in window["energy"] if f["component"] not in replaced] + added
    measured = [f for f in added if f["joules"] is not None]
    periods = {f["component"]: max(trace.interval_s, trace.periods_s.get(f["component"]) or 0.0) for f in measured}
    kept = [f for f in window.get("flags", []) if not (f["code"] == "invalid-figure" and f["component"] in replaced)]
    return {**window, "energy": figures, "energy_total": valid_totals(figures), "boundary": boundary(figures),
            "host_metered": {"components": [f["component"] for f in added], "trace_interval_s": trace.interval_s,
                             "boundary_error_j": sum(f.get("boundary_error_j") or 0.0 for f in added),
                             "replaced_estimates": sorted(replaced - {f["component"] for f in added})},
            "flags": [*kept, *flags, *resolution_flags(measured, window["duration_s"], periods),
                      *invalid_flags(added)]}


def meter_idle(idle: dict[str, Any], trace: CounterTrace, keep: Keep) -> dict[str, Any]:
    """The runner's own idle baseline (when it took one) with host counters for the components it could not read
    (a new dict, or the runner's own when it marked no monotonic boundaries)."""
    if "start_mono" not in idle:
        return idle
    own = {p["component"] for p in idle["power"] if p["source"] == "measured" and p["watts"] is not None}
    d = idle["end_mono"] - idle["start_mono"]
    added, flags = [], []
    for comp in trace.components:
        if comp in own or not keep(comp) or d <= 0:
            continue
        fig, read_flags = traced_figure(trace, comp, idle["start_mono"], idle["end_mono"])
        added.append({**idle_power(fig, d), "meter": _meter(comp)})
        flags += read_flags + invalid_flags([fig])
    replaced = {SUPERSEDES[kind(p["component"])] for p in added} | {p["component"] for p in added}
    metered = {**idle, "power": [p for p in idle["power"] if p["component"] not in replaced] + added}
    if flags:
        metered["flags"] = [*idle.get("flags", []), *flags]
    return metered


def apply(record: dict[str, Any], trace: CounterTrace | None, keep: Keep) -> dict[str, Any]:
    """The record's windows metered from the host's trace, and the metrics derived from them: the parts of the record
    that change ({phases, idle, metrics}; empty without a trace), to be merged into it once. The record is left as it
    was."""
    if trace is None or not trace.components:
        return {}
    # the runner's own windows as it wrote them (every record has "phases": runners.record.new_record)
    phases = {name: meter_window(w, trace, keep) for name, w in record.get("phases", {}).items()}
    metered: dict[str, Any] = {"phases": phases}
    if record.get("idle"):
        metered["idle"] = meter_idle(record["idle"], trace, keep)
    if phases.get("generate") and record.get("metrics") and record.get("tokens"):  # J/token as the runner derives it
        j_per_token = metrics_of(phases["generate"], Record(record).per_prompt).j_per_token
        metered["metrics"] = {**record["metrics"], "joules_per_token": j_per_token}
    return metered
