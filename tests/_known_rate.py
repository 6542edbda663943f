"""Energy counters at known rates on the monotonic clock, for tests that must not depend on machine load.

A ``KnownRate`` is cumulative energy that grows at a set power (changeable: ``set``) — its value at an instant is
computed when it is read, so a meter reading it at any moment, however late a loaded machine schedules it, gets the
exact energy at that moment; ``between(t0, t1)`` is the exact energy of any interval. ``install_rapl`` puts such a
counter behind each RAPL domain a ``MeterSet`` discovered (the raw ``energy_uj`` value, wrapping at the domain's
range, so the meter's wraparound handling is exercised too)."""

from __future__ import annotations

import bisect
import threading
import time


class KnownRate:
    def __init__(self, watts: float, t0: float | None = None):
        self._lock = threading.Lock()
        self.times = [time.monotonic() if t0 is None else t0]  # when each rate began
        self.watts = [watts]
        self.fail: Exception | None = None  # raised by reads while set (a driver error, a half-written file)

    def set(self, watts: float) -> float:
        """From now on the counter grows at ``watts``; returns the instant of the step."""
        with self._lock:
            now = time.monotonic()
            self.times.append(now)
            self.watts.append(watts)
            return now

    def between(self, t0: float, t1: float) -> float:
        """The exact energy (J) the counter gains over [t0, t1]."""
        return self.joules(t1) - self.joules(t0)

    def joules(self, at: float | None = None) -> float:
        """Cumulative energy since the counter began, at ``at`` (default: now)."""
        at = time.monotonic() if at is None else at
        with self._lock:
            times, watts = list(self.times), list(self.watts)
        total, k = 0.0, bisect.bisect_right(times, at)
        for i in range(k):
            end = times[i + 1] if i + 1 < k else at
            total += watts[i] * max(0.0, end - times[i])
        return total

    def read(self) -> float:
        if self.fail is not None:
            raise self.fail
        return self.joules()


def install_rapl(meters, rates: dict[str, float]) -> dict[str, KnownRate]:
    """Behind each of ``meters``' RAPL domains named in ``rates`` (component -> W), a known-rate counter: its raw
    reading is the energy in µJ modulo the domain's range + 1, as the kernel's ``energy_uj`` wraps."""
    out = {}
    for c in meters.rapl:
        if c.component not in rates:
            continue
        rate = out[c.component] = KnownRate(rates[c.component])
        with c._lock:  # the sampler thread reads these too
            c.read_raw = lambda rate=rate, c=c: int(rate.read() * 1e6) % (c.max_range_uj + 1)
            c._last_raw = None  # the next read sets a new baseline; windows use differences only
    return out
