"""Background sampler: power, utilisation, memory and temperature every interval, in a daemon thread.

It only reads counters (psutil, NVML queries, RAPL files) and appends to lists, so it stays far below 1 % of a core
at 100 ms; windows slice the series they need by time afterwards. Samples carry the monotonic clock (a wall clock
can step back), so a slice is two binary searches; samples no open window can need any more are pruned, so a slice
stays cheap and memory flat over a day-long run.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
import time
from typing import Callable

import psutil


class Sampler:
    def __init__(self, interval_s: float, probes: list[Callable[[], dict[str, float]]]):
        self.interval_s = interval_s
        self.probes = probes
        self.t: list[float] = []  # monotonic time of each sample
        self.values: list[dict[str, float]] = []
        self.errors = 0  # probe reads that failed (each left its metric out of that sample)
        self.last_error: str | None = None
        self.error_t: list[tuple[float, str]] = []  # (monotonic t, message) of failed reads not yet pruned
        self._holds: dict[int, float] = {}  # open windows: id -> start (their samples are kept)
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # windows read while the thread appends
        self._proc = psutil.Process(os.getpid())
        self._thread = threading.Thread(target=self._loop, name="meter-sampler", daemon=True)
        psutil.cpu_percent(None)  # prime: the first call always returns 0

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as e:  # nothing a probe or psutil does may end the sampler (and every later sample)
                self._error(f"{type(e).__name__}: {e}")
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = message
            self.error_t.append((time.monotonic(), message))

    def sample_once(self) -> None:
        row: dict[str, float] = {"cpu_util_pct": psutil.cpu_percent(None)}
        try:
            rss = self._proc.memory_info().rss + sum(
                c.memory_info().rss for c in self._proc.children(recursive=True))
            row["proc_rss_mb"] = rss / 2**20
        except psutil.Error:
            pass
        for probe in self.probes:
            # a transient failed read (an NVMLError, a half-written sysfs file, …) leaves that metric out of this one
            # sample; it must not end the sampler thread (and with it every later sample of the trial)
            try:
                row.update(probe())
            except Exception as e:
                self._error(f"{type(e).__name__}: {e}")
        with self._lock:
            self.t.append(time.monotonic())
            self.values.append(row)

    def hold(self, start: float) -> int:
        """A window opened at ``start`` (monotonic): its samples are kept until ``release``."""
        with self._lock:
            key = next(self._ids)
            self._holds[key] = start
            return key

    def release(self, key: int) -> None:
        """The window is read: drop every sample (and error) older than the oldest window still open."""
        with self._lock:
            self._holds.pop(key, None)
            keep_from = min(self._holds.values(), default=time.monotonic())
            cut = bisect.bisect_left(self.t, keep_from)
            del self.t[:cut], self.values[:cut]
            self.error_t = [e for e in self.error_t if e[0] >= keep_from]

    def slice(self, start: float, end: float, keep_series: bool, max_points: int = 2000) -> dict:
        """Samples taken in [start, end] (monotonic s): summary per metric, the series (thinned) when asked."""
        with self._lock:
            lo, hi = bisect.bisect_left(self.t, start), bisect.bisect_right(self.t, end)
            times, rows = self.t[lo:hi], self.values[lo:hi]
            errors = [m for t, m in self.error_t if start <= t <= end]
        keys = sorted({k for r in rows for k in r})
        summary = {}
        for k in keys:
            vals = [r[k] for r in rows if k in r]
            summary[k] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}
        series = None
        if keep_series and rows:
            step = max(1, len(rows) // max_points)  # long windows are thinned, never cut
            series = {"t_s": [round(t - start, 4) for t in times[::step]]}
            for k in keys:
                series[k] = [r.get(k) for r in rows[::step]]
        out = {"n": len(rows), "interval_s": self.interval_s, "summary": summary, "series": series}
        if errors:
            out["read_errors"] = {"n": len(errors), "last": errors[-1]}
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
