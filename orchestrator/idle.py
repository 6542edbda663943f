"""The host's idle-power baseline: measured in full, then re-used for a block of trials while the host stays at it.

A full baseline (``[host] idle_seconds``) before every trial is the safe protocol and the default. With
``idle_reuse_s > 0`` a baseline is re-used for later trials, for at most that many seconds, when a short check
window (``idle_check_s``) before each trial finds every component's idle power within ``idle_drift`` of it and every
GPU within ``cooldown_margin_c`` of the temperature it had — otherwise a full baseline is measured again. Either way
the trial's record carries the baseline it is compared with, when it was taken, and the check that allowed it.
"""

from __future__ import annotations

import time
from typing import Any

# below this many watts a relative drift means nothing (an idle DRAM counter at 0.8 W moving by 0.1 W is noise)
DRIFT_FLOOR_W = 0.5


def drift(baseline: dict[str, Any], check: dict[str, Any], tolerance: float) -> list[str]:
    """What moved between a baseline and a check window, one line per component out of tolerance (empty: none)."""
    base = {p["component"]: p for p in baseline.get("power") or [] if p.get("watts") is not None}
    moved = []
    for p in check.get("power") or []:
        b = base.get(p["component"])
        if b is None or p.get("watts") is None:
            continue
        allowed = max(tolerance * b["watts"], DRIFT_FLOOR_W)
        if abs(p["watts"] - b["watts"]) > allowed:
            moved.append(f"{p['component']}: {p['watts']:.2f} W now vs {b['watts']:.2f} W at the baseline "
                         f"(> ±{allowed:.2f} W)")
    missing = sorted(set(base) - {p["component"] for p in check.get("power") or [] if p.get("watts") is not None})
    moved += [f"{c}: no idle reading now" for c in missing]
    return moved


def warmer(baseline_temps: dict[int, float], temps: dict[int, float], margin_c: float) -> list[str]:
    return [f"gpu{i}: {t:.0f} °C now vs {baseline_temps[i]:.0f} °C at the baseline (> +{margin_c:g} °C)"
            for i, t in temps.items() if i in baseline_temps and t > baseline_temps[i] + margin_c]


class IdleBaseline:
    """Gives each trial its idle baseline, from ``meters.idle`` (host meters) under the matrix's [host] policy."""

    def __init__(self, meters, host: dict[str, Any]):
        self.meters = meters
        self.seconds = float(host["idle_seconds"])
        self.reuse_s = float(host["idle_reuse_s"])
        self.check_s = float(host["idle_check_s"])
        self.tolerance = float(host["idle_drift"])
        self.margin_c = float(host["cooldown_margin_c"])
        self.current: dict[str, Any] | None = None
        self.temps: dict[int, float] = {}

    def for_trial(self) -> dict[str, Any] | None:
        """The baseline this trial is compared with (None when the matrix asks for none)."""
        if self.seconds <= 0:
            return None
        if self.reuse_s <= 0:
            return self._measure("measured before every trial ([host] idle_reuse_s = 0)")
        if self.current is None:
            return self._measure("the first baseline of this run")
        age = time.time() - self.current["start_unix"]
        if age > self.reuse_s:
            return self._measure(f"the last baseline was {age:.0f} s old (> idle_reuse_s = {self.reuse_s:g} s)")
        check = self.meters.idle(self.check_s)
        temps = self.meters.gpu_temperatures()
        moved = drift(self.current, check, self.tolerance) + warmer(self.temps, temps, self.margin_c)
        summary = {"start_unix": check["start_unix"], "duration_s": check["duration_s"],
                   "power": [{"component": p["component"], "watts": p["watts"], "source": p["source"]}
                             for p in check["power"]], "temps_c": temps, "moved": moved}
        if moved:
            return self._measure("the host drifted from the last baseline: " + "; ".join(moved), summary)
        return {**self.current, "baseline": {"reused": True, "taken_unix": self.current["start_unix"],
                                             "age_s": age, "why": "the check window found the host at the baseline",
                                             "check": summary, "tolerance": self.tolerance,
                                             "margin_c": self.margin_c}}

    def _measure(self, why: str, check: dict[str, Any] | None = None) -> dict[str, Any]:
        self.temps = self.meters.gpu_temperatures()
        self.current = self.meters.idle(self.seconds)
        return {**self.current, "baseline": {"reused": False, "taken_unix": self.current["start_unix"], "age_s": 0.0,
                                             "why": why, "check": check, "temps_c": self.temps,
                                             "tolerance": self.tolerance, "margin_c": self.margin_c}}
