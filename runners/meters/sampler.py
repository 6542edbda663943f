"""Background sampler: power, utilisation, memory and temperature every interval, in a daemon thread.

It only reads counters (psutil, NVML queries, RAPL files) and appends to lists, so it stays far below 1 % of a core
at 100 ms; windows slice the series they need by time afterwards.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

import psutil


class Sampler:
    def __init__(self, interval_s: float, probes: list[Callable[[], dict[str, float]]]):
        self.interval_s = interval_s
        self.probes = probes
        self.t: list[float] = []  # unix time of each sample
        self.values: list[dict[str, float]] = []
        self.errors = 0  # probe reads that failed (each left its metric out of that sample)
        self.last_error: str | None = None
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
            self.sample_once()
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def sample_once(self) -> None:
        row: dict[str, float] = {"cpu_util_pct": psutil.cpu_percent(None)}
        try:
            rss = self._proc.memory_info().rss + sum(
                c.memory_info().rss for c in self._proc.children(recursive=True))
            row["proc_rss_mb"] = rss / 2**20
        except psutil.Error:
            pass
        for probe in self.probes:
            # a transient failed read leaves that metric out of this one sample; it must not end the sampler thread
            # (and with it every later sample of the trial)
            try:
                row.update(probe())
            except (OSError, ValueError) as e:
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
        with self._lock:
            self.t.append(time.time())
            self.values.append(row)

    def slice(self, start: float, end: float, keep_series: bool, max_points: int = 2000) -> dict:
        with self._lock:
            idx = [i for i, t in enumerate(self.t) if start <= t <= end]
            rows = [self.values[i] for i in idx]
        keys = sorted({k for r in rows for k in r})
        summary = {}
        for k in keys:
            vals = [r[k] for r in rows if k in r]
            summary[k] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}
        series = None
        if keep_series and rows:
            step = max(1, len(idx) // max_points)  # long windows are thinned, never cut
            picked = idx[::step]
            series = {"t_s": [round(self.t[i] - start, 4) for i in picked]}
            for k in keys:
                series[k] = [self.values[i].get(k) for i in picked]
        return {"n": len(rows), "interval_s": self.interval_s, "summary": summary, "series": series}

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
