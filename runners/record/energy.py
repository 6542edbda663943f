"""A window's energy as every reader sees it: raw and idle-subtracted joules per source kind, the headline (measured
where it exists, otherwise estimated — never their sum) and its boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runners.record.facts import ENERGY_SOURCES, at


@dataclass(frozen=True)
class IdlePower:
    watts: float
    source: str | None
    origin: str  # "runner" (its own baseline) | "host" (the orchestrator's)


@dataclass(frozen=True)
class Energy:
    """One window's energy: raw and idle-subtracted joules per source kind, never summed across kinds.

    net = raw − Σ idle_W × duration over the window's components of that source; None unless every component has an
    idle figure of the same source kind (a partial subtraction would mix baselines). A figure the meters marked
    invalid (read error, trace gap, reset, impossible rise) makes the window no figure: ``invalid`` says why."""

    duration_s: float
    measured_j: float | None = None
    estimated_j: float | None = None
    net_measured_j: float | None = None
    net_estimated_j: float | None = None
    measured_components: str | None = None
    estimated_components: str | None = None
    invalid: str | None = None
    boundary_error_j: float | None = None  # the host meter's error at the window's edges (counter steps)

    @property
    def source(self) -> str | None:
        """The headline's source: measured where the window has it, otherwise estimated."""
        return next((s for s in ENERGY_SOURCES if getattr(self, f"{s}_j") is not None), None)

    @property
    def joules(self) -> float | None:
        return getattr(self, f"{self.source}_j") if self.source else None

    @property
    def net_joules(self) -> float | None:
        return getattr(self, f"net_{self.source}_j") if self.source else None

    @property
    def components(self) -> str | None:
        return getattr(self, f"{self.source}_components") if self.source else None

    @property
    def boundary(self) -> str | None:
        """What the headline covers and how, e.g. ``cpu:package-0+gpu:0 (measured)``: only one boundary compares."""
        return f"{self.components} ({self.source})" if self.source else None


def window_energy(window: dict, idle: dict[str, IdlePower]) -> Energy:
    """A window's Energy, given the idle power per component."""
    duration = float(window.get("duration_s") or 0.0)
    figures = [f for f in window.get("energy") or [] if isinstance(f, dict)]
    invalid = "; ".join(f"{f.get('component')}: {f.get('invalid_reason')}" for f in figures
                        if f.get("valid") is False) or None
    values: dict[str, Any] = {}
    for source in ENERGY_SOURCES:
        figs = [f for f in figures if f.get("source") == source and f.get("joules") is not None]
        raw = at(window, "energy_total", f"{source}_j")
        if raw is None and figs:
            raw = float(sum(f["joules"] for f in figs))
        net = None
        if raw is not None and figs:
            idles = [idle.get(f["component"]) for f in figs]
            if all(i is not None and i.source == source for i in idles):
                net = float(raw) - sum(i.watts for i in idles) * duration
        values[f"{source}_j"] = None if raw is None or invalid else float(raw)
        values[f"net_{source}_j"] = None if invalid else net
        values[f"{source}_components"] = "+".join(sorted(f["component"] for f in figs)) or None
    errors = [f["boundary_error_j"] for f in figures
              if f.get("source") == "measured" and f.get("boundary_error_j") is not None]
    edge = sum(errors) if errors else at(window, "host_metered", "boundary_error_j")
    return Energy(duration_s=duration, invalid=invalid, boundary_error_j=edge, **values)


def without_gpus(window: dict) -> dict:
    figures = [f for f in window.get("energy") or [] if not str(f.get("component", "")).startswith("gpu")]
    if len(figures) == len(window.get("energy") or []):
        return window
    return {**window, "energy": figures, "energy_total": None}  # totals re-summed from the figures that remain
