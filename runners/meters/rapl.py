"""RAPL powercap counters (``/sys/class/powercap/intel-rapl*``): CPU package and DRAM energy, *measured*.

``energy_uj`` is a free-running counter that wraps at ``max_energy_range_uj``. Each read adds the delta since the
previous read to a running total, so a window sees every wrap as long as reads come more often than one wrap period
(~minutes at full power): the sampler thread reads every interval, which guarantees that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Sub-domains "core"/"uncore" are parts of the package: counting them too would count energy twice.
_KEPT_DOMAINS = ("package", "dram")


@dataclass
class RaplCounter:
    component: str  # "cpu:package-0", "cpu:dram-0"
    path: Path
    max_range_uj: int
    limit_w: float | None = None  # the zone's highest power limit (constraint_*_max_power_uw / _power_limit_uw)
    _last_raw: int | None = None
    _total_uj: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_t: float | None = None
    blind: list = field(default_factory=list)  # (monotonic t, gap s) of reads further apart than ``wrap_s``

    @property
    def wrap_s(self) -> float:
        """The shortest time the counter can take to wrap (its range at the fastest believable power): reads
        further apart than this could miss a whole wrap, and undercount by a range."""
        from runners.meters.validity import max_power_w

        return self.max_range_uj / 1e6 / max_power_w(self.limit_w) if self.max_range_uj else float("inf")

    def blind_between(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(t, gap) for t, gap in self.blind if start < t <= end + gap]

    def read_raw(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())

    def total_uj(self) -> int:
        """Energy accumulated since the first read, wraparound included. The read happens under the lock: two
        threads (sampler, window) reading outside it could apply an older reading after a newer one, which looks like
        a wrap and adds a whole counter range."""
        with self._lock:
            raw = self.read_raw()
            now = time.monotonic()
            if self._last_raw is not None:
                self._total_uj += wrap_delta(self._last_raw, raw, self.max_range_uj)
                if self._last_t is not None and now - self._last_t > self.wrap_s:
                    self.blind.append((now, now - self._last_t))
            self._last_raw, self._last_t = raw, now
            return self._total_uj


def wrap_delta(before: int, after: int, max_range: int) -> int:
    """Counter delta between two raw readings; a smaller second reading means the counter wrapped once."""
    if after >= before:
        return after - before
    return max_range - before + after + 1 if max_range else after


def zone_limit_w(zone: Path) -> float | None:
    """The highest power the zone's constraints name (W), the bound its counter cannot rise much faster than; None
    when the zone names none (DRAM zones often do not)."""
    values = []
    for f in [*zone.glob("constraint_*_max_power_uw"), *zone.glob("constraint_*_power_limit_uw")]:
        try:
            values.append(int(f.read_text().strip()))
        except (OSError, ValueError):
            continue
    top = max(values, default=0)
    return top / 1e6 if top > 0 else None


def _in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def discover(root: str | Path = "/sys/class/powercap") -> tuple[list[RaplCounter], str | None]:
    """Find readable package and DRAM domains. Returns (counters, reason when none can be used)."""
    root = Path(root)
    if not root.is_dir():
        if _in_container():
            return [], (f"no powercap tree at {root}: Docker masks powercap inside containers (CVE-2020-8694); the "
                        "orchestrator meters CPU/DRAM for this trial's windows from the host's counter trace when "
                        "the host has RAPL")
        return [], f"no powercap tree at {root}: no RAPL on this host (a VM, or not an Intel/AMD RAPL CPU)"
    counters: list[RaplCounter] = []
    problems: list[str] = []
    # Top-level zones are packages (intel-rapl:N); their children (intel-rapl:N:M) hold dram.
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:
            continue
        package_index = zone.name.split(":")[1]
        for domain in [zone, *sorted(zone.glob(f"{zone.name}:*"))]:
            try:
                name = (domain / "name").read_text().strip()
            except OSError:
                continue
            kind = name.split("-")[0]
            if kind not in _KEPT_DOMAINS:
                continue
            try:
                max_range = int((domain / "max_energy_range_uj").read_text().strip())
                counter = RaplCounter(f"cpu:{kind}-{package_index}", domain, max_range, zone_limit_w(domain))
                counter.total_uj()  # first read: proves readability, sets the baseline
            except PermissionError:
                problems.append(f"{domain}/energy_uj exists but is not readable by this user: it is root-only since "
                                "CVE-2020-8694 — run the orchestrator as root, or grant read access (e.g. "
                                "`chmod o+r .../energy_uj` at boot, or a udev rule)")
                continue
            except (OSError, ValueError) as e:
                problems.append(f"{domain}: {e}")
                continue
            counters.append(counter)
    if counters:
        return counters, None
    return [], "; ".join(problems) or f"no intel-rapl package domains under {root}"


def unreadable(reason: str | None) -> bool:
    """True when a counter exists but this user may not read it: a problem to say loudly, not a missing meter."""
    return bool(reason) and "not readable by this user" in reason
