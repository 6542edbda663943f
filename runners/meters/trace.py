"""Counter traces: the host samples its energy counters at a fine interval, and any window whose boundaries are known
on the same clock gets its energy from the trace afterwards.

Why: Docker masks powercap in containers and ``energy_uj`` is root-only (CVE-2020-8694), so a containerised runner
cannot read RAPL, and must not be given that side channel. The runner marks its phase windows on the kernel's
monotonic clock (``time.monotonic()``, CLOCK_MONOTONIC, shared by the host and every container without a time
namespace); the host traces the counters on that clock; ``energy(component, t0, t1)`` interpolates the cumulative
counter at both instants. The boundary error is stated, never hidden: the true counter value at an instant lies
between the two samples that bracket it, so the error of one boundary is at most that bracket's increment (or one
counter update period of energy, for a counter that moves in steps slower than the trace).

A read that fails (an NVMLError, a sysfs error — anything) costs that component one point of the trace and is
recorded; it never ends the trace. A window whose edge falls in a gap of more than ``MAX_GAP_INTERVALS`` intervals,
or whose counter went backwards or rose faster than the device can draw, gets an invalid figure with the reason.
"""

from __future__ import annotations

import bisect
import threading
from array import array
import time
from dataclasses import dataclass, field
from typing import Callable

from runners.meters.validity import MAX_GAP_INTERVALS, STEP_SLACK_S, rise_problem

# component -> a reader of its cumulative energy in joules (wraparound already handled by the meter)
Reader = Callable[[], float]


@dataclass
class WindowEnergy:
    joules: float | None
    boundary_error_j: float | None
    samples: int  # trace points strictly inside the window
    reason: str | None = None  # why there is no figure
    valid: bool = True
    invalid_reason: str | None = None  # why the figure cannot be trusted
    read_errors: list[str] = field(default_factory=list)  # failed reads of this counter during the window


@dataclass
class CounterTrace:
    """(monotonic time, cumulative joules) per component, appended by ``CounterTracer``; each component has its own
    instants (a failed read leaves a gap in that component only)."""

    interval_s: float
    # per component: its maximum power limit (W, None: unknown) and its counter's update period (s, None: unknown)
    limits_w: dict[str, float | None] = field(default_factory=dict)
    periods_s: dict[str, float | None] = field(default_factory=dict)
    # per component: the shortest time its counter takes to wrap (RAPL); a longer bracket could hide a wrap
    wrap_s: dict[str, float] = field(default_factory=dict)
    # compact arrays: a 4-hour trial at 20 ms is 720 000 points per component
    times: dict[str, array] = field(default_factory=dict)
    joules: dict[str, array] = field(default_factory=dict)
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic t, component, message)

    @property
    def components(self) -> list[str]:
        return sorted(set(self.joules) | {c for _, c, _ in self.errors})

    def add(self, t: float, values: dict[str, float]) -> None:
        for c, v in values.items():
            self.add_point(c, t, v)

    def add_point(self, component: str, t: float, joules: float) -> None:
        self.times.setdefault(component, array("d")).append(t)
        self.joules.setdefault(component, array("d")).append(joules)

    def add_error(self, component: str, t: float, message: str) -> None:
        self.errors.append((t, component, message))

    def energy(self, component: str, start: float, end: float) -> WindowEnergy:
        t, series = self.times.get(component), self.joules.get(component)
        if not series:
            why = "every read of it failed" if component in self.components else "it was not traced"
            return WindowEnergy(None, None, 0, f"{component}: no counter trace ({why})",
                                read_errors=self._errors(component, start, end))
        if len(t) < 2 or start < t[0] or end > t[-1]:
            return WindowEnergy(None, None, 0, f"window [{start:.3f}, {end:.3f}] (monotonic s) is outside the host's "
                                               f"counter trace [{t[0]:.3f}, {t[-1]:.3f}] of {component}: the clocks are "
                                               "not shared (time namespace?), or the first/last reads failed",
                                read_errors=self._errors(component, start, end))
        (e0, inc0, gap0), (e1, inc1, gap1) = _at(t, series, start), _at(t, series, end)
        joules = e1 - e0
        period = self.periods_s.get(component) or 0.0
        watts = joules / (end - start) if end > start else 0.0
        # each edge: the bracket's increment, or one counter update of energy when the counter steps slower
        error = max(abs(inc0), watts * period) + max(abs(inc1), watts * period)
        lo, hi = bisect.bisect_right(t, start), bisect.bisect_left(t, end)
        problems = [f"the trace has a {g:.2f} s gap at the window's {edge} (> {MAX_GAP_INTERVALS} × "
                    f"{self.interval_s:g} s: reads failed there)"
                    for edge, g in (("start", gap0), ("end", gap1)) if g > MAX_GAP_INTERVALS * self.interval_s]
        problems += self._implausible(component, t, series, max(lo - 1, 0), min(hi + 1, len(t)), period)
        # a failed read after the last good one before the window touches it too: it widened the start's bracket
        return WindowEnergy(joules, error, hi - lo, None, not problems, "; ".join(problems) or None,
                            self._errors(component, t[max(lo - 1, 0)], end))

    def _implausible(self, component: str, t: array, series: array, i: int, j: int, period: float) -> list[str]:
        """The first bracket in [i, j) whose counter went backwards or rose faster than the device can draw."""
        limit, slack = self.limits_w.get(component), max(period, STEP_SLACK_S)
        wrap = self.wrap_s.get(component, float("inf"))
        for k in range(i + 1, j):
            if t[k] - t[k - 1] > wrap:
                return [f"the counter went unread for {t[k] - t[k - 1]:.1f} s, longer than it takes to wrap "
                        f"({wrap:.1f} s): a wrap may be missing, at {t[k]:.3f} s"]
            problem = rise_problem(series[k] - series[k - 1], t[k] - t[k - 1], limit, slack)
            if problem:
                return [f"{problem}, at {t[k]:.3f} s"]
        return []

    def _errors(self, component: str, start: float, end: float) -> list[str]:
        return [f"{m} (at {at:.3f} s)" for at, c, m in self.errors if c == component and start <= at <= end]


def _at(t: array, series: array, at: float) -> tuple[float, float, float]:
    """Interpolated cumulative energy at ``at``, the increment of the bracket holding it (its error bound) and the
    bracket's length in seconds."""
    i = bisect.bisect_left(t, at)
    if i < len(t) and t[i] == at:
        return series[i], 0.0, 0.0
    t0, t1 = t[i - 1], t[i]
    e0, e1 = series[i - 1], series[i]
    return e0 + (e1 - e0) * (at - t0) / (t1 - t0), e1 - e0, t1 - t0


class CounterTracer:
    """A daemon thread reading every counter each ``interval_s`` into a ``CounterTrace``; read once more at stop so
    the trace covers the last instant. No failed read ends it."""

    def __init__(self, readers: dict[str, Reader], interval_s: float, limits_w: dict[str, float | None] | None = None,
                 periods_s: dict[str, float | None] | None = None, wrap_s: dict[str, float] | None = None):
        self.readers = readers
        self.trace = CounterTrace(interval_s, dict(limits_w or {}), dict(periods_s or {}), dict(wrap_s or {}))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="counter-trace", daemon=True)

    def _read(self) -> None:
        for component, read in self.readers.items():
            before = time.monotonic()
            try:
                value = read()
            except Exception as e:  # NVMLError, OSError, ValueError, …: one point lost, recorded, the trace goes on
                self.trace.add_error(component, before, f"{type(e).__name__}: {e}")
                continue
            # the instant of the read: midway between its start and its end
            self.trace.add_point(component, (before + time.monotonic()) / 2, value)

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._read()
            next_at += self.trace.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> "CounterTracer":
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._read()
