"""codecarbon: the CO2 intensity of the grid, and the *estimated* energy of components that have no counter.

Without RAPL, codecarbon models CPU power from load × TDP per thread and RAM power from its size: an estimate, and
every figure taken from it is labelled so. Components that have a real counter (RAPL, NVML) never take its figure.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any


class CodecarbonEstimator:
    def __init__(self, country_iso_code: str, interval_s: float):
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self.country_iso_code = country_iso_code
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code, log_level="error", save_to_file=False,
            measure_power_secs=max(interval_s, 1.0), tracking_mode="machine", allow_multiple_runs=True)
        self.tracker.start()
        self.modes = {type(h).__name__: getattr(h, "_mode", None) for h in self.tracker._hardware}

    def begin(self) -> str:
        task = f"w-{uuid.uuid4().hex[:8]}"
        self.tracker.start_task(task)
        return task

    def end(self, task: str) -> dict[str, Any]:
        data = self.tracker.stop_task(task)
        kwh = {"cpu": data.cpu_energy, "ram": data.ram_energy, "gpu": data.gpu_energy}
        total_kwh = data.energy_consumed
        intensity = (data.emissions * 1000.0 / total_kwh) if total_kwh else None  # kg/kWh -> g/kWh
        return {"joules": {k: v * 3.6e6 for k, v in kwh.items()}, "intensity_g_per_kwh": intensity}

    def describe(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.modes.items())

    def close(self) -> None:
        try:
            self.tracker.stop()
        except Exception:  # stopping a tracker that never measured can raise; nothing to keep from it
            pass
