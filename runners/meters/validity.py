"""Counters that cannot lie: each measured figure is checked against what its counter can physically do, and a figure
that fails is kept (for inspection) but marked ``valid: false`` with the reason — analysis counts it as no figure.

A counter reading is trusted only when
- it was read at both edges of the window (an NVML or sysfs error at an edge leaves no figure),
- the trace samples bracketing each edge are at most ``MAX_GAP_INTERVALS`` trace intervals apart (a longer gap means
  reads failed there: the interpolated edge could be anywhere in the gap),
- it never went backwards (RAPL wraps are already unwrapped by the meter; a cumulative counter that still decreases
  was reset, e.g. a driver reload),
- it never rose faster than the device can draw: ``max_power_w`` (NVML's power-limit constraint, RAPL's constraint
  power limits) × ``POWER_MARGIN``, or ``FALLBACK_MAX_W`` where the device does not say.
"""

from __future__ import annotations

from typing import Any

from runners.record import totals

# bracketing trace samples further apart than this many trace intervals make the window's edge unknowable
MAX_GAP_INTERVALS = 5
# how far above its maximum power limit a device's counter may rise before it is not believed (transients, sensor
# error: NVML reads up to ~5 % off, RAPL's limits are averages over a time window)
POWER_MARGIN = 2.0
# a device that states no limit: generous — above any CPU package or GPU board sold today (B200: 1000 W)
FALLBACK_MAX_W = 2000.0
# a counter that moves in steps (NVML: every update period) may show one step's energy in a short bracket
STEP_SLACK_S = 0.1

# The report's method section (wired into analysis/report.py): what the counters see and what they do not.
METHOD_TEXT = (
    "GPU energy is NVML's total-energy counter (nvmlDeviceGetTotalEnergyConsumption, millijoules since the driver "
    "loaded), read at each window's two instants — not power samples integrated by us. The counter is the board's "
    "own: it covers the GPU board (chip, memory, voltage regulators), not the host, the PSU's conversion loss or the "
    "fans, which an external wall meter would add. It updates in steps (its update period is probed and recorded; "
    "each window edge is uncertain by up to one period of energy, stated as the figure's boundary error), and on "
    "A100/H100-class GPUs the power sensor behind it samples only part of each update period (about 25 %), so bursts "
    "shorter than a period can be missed or over-weighted: windows shorter than a few seconds are flagged, and "
    "comparisons rest on windows many periods long. CPU package and DRAM energy are RAPL counters (modelled, not "
    "metered, on most CPUs; DRAM on some platforms only), read by the host and unwrapped at their maximum range. "
    "Every measured figure is checked: a read error at an edge, a gap in the host's counter trace longer than "
    f"{MAX_GAP_INTERVALS} trace intervals at an edge, a counter that went backwards (a reset), or one that rose "
    f"faster than {POWER_MARGIN:g} × the device's maximum power limit marks the figure invalid; an invalid figure is "
    "left out of every statistic and comparison and listed under Meter validity with its reason."
)


def max_power_w(limit_w: float | None) -> float:
    """The fastest a counter may rise (W): the device's own limit × POWER_MARGIN, else FALLBACK_MAX_W."""
    return limit_w * POWER_MARGIN if limit_w and limit_w > 0 else FALLBACK_MAX_W


def rise_problem(joules: float, seconds: float, limit_w: float | None, slack_s: float = STEP_SLACK_S) -> str | None:
    """Why a counter increment of ``joules`` over ``seconds`` cannot be real (None: it can)."""
    if joules < 0:
        return f"the counter went backwards by {-joules:.3f} J (a reset, or a wrap the meter missed)"
    bound = max_power_w(limit_w)
    if joules > bound * (max(seconds, 0.0) + slack_s):
        where = f"{limit_w:g} W limit × {POWER_MARGIN:g}" if limit_w else f"no stated limit; {FALLBACK_MAX_W:g} W"
        return (f"the counter rose {joules:.1f} J in {seconds:.3f} s ({joules / max(seconds, 1e-9):.0f} W), faster "
                f"than the device can draw ({where})")
    return None


def invalidate(fig: dict[str, Any], reason: str) -> dict[str, Any]:
    """Mark a figure invalid (in place, and returned): its number stays for inspection, never for statistics."""
    fig["valid"] = False
    fig["invalid_reason"] = reason if not fig.get("invalid_reason") else f"{fig['invalid_reason']}; {reason}"
    return fig


def invalid_flags(figures: list[dict]) -> list[dict]:
    return [{"code": "invalid-figure", "component": f["component"],
             "message": f"measured figure not valid, left out of statistics: {f['invalid_reason']}"}
            for f in figures if f.get("valid") is False]


def valid_totals(figures: list[dict]) -> dict[str, float | None]:
    """``record.totals``, except that a source holding an invalid figure has no total (a sum missing a component, or
    holding an impossible one, is no figure of that boundary)."""
    out = totals([f for f in figures if f.get("valid") is not False])
    for f in figures:
        if f.get("valid") is False and f["source"] in ("measured", "estimated"):
            out[f"{f['source']}_j"] = None
    if any(f.get("valid") is False and f["source"] == "unavailable" for f in figures):
        out["measured_j"] = None  # a counter that failed at an edge: its measured figure is missing, not zero
    return out
