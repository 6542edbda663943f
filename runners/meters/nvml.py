"""NVIDIA GPUs through NVML (nvidia-ml-py): total-energy counter per device (*measured*, mJ), plus the sampled
power, utilisation, memory and temperature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class NvmlGpu:
    index: int
    handle: Any
    name: str
    has_energy_counter: bool

    @property
    def component(self) -> str:
        return f"gpu:{self.index}"

    def energy_mj(self) -> int:
        import pynvml

        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def sample(self) -> dict[str, float]:
        import pynvml

        h = self.handle
        out: dict[str, float] = {}
        # Each query may be unsupported on some boards; a missing metric is left out, never invented.
        for key, fn in (
            ("power_w", lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
            ("util_pct", lambda: float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)),
            ("mem_used_mb", lambda: pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20),
            ("temp_c", lambda: float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))),
        ):
            try:
                out[f"gpu{self.index}_{key}"] = fn()
            except pynvml.NVMLError:
                pass
        return out


def discover() -> tuple[list[NvmlGpu], str | None]:
    """Initialise NVML and list the visible GPUs. Returns (gpus, reason when there are none)."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return [], f"NVML not available ({e}): no NVIDIA driver or GPU visible"
    gpus = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else name
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            has_counter = True
        except pynvml.NVMLError:
            has_counter = False  # pre-Volta: power is sampled and integrated instead
        gpus.append(NvmlGpu(i, h, name, has_counter))
    if not gpus:
        return [], "NVML found no GPU"
    return gpus, None


def driver_info() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        drv = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        return {"driver": drv.decode() if isinstance(drv, bytes) else drv,
                "cuda_driver": f"{cuda // 1000}.{(cuda % 1000) // 10}"}
    except Exception:  # no NVML: nothing to say
        return {"driver": None, "cuda_driver": None}
