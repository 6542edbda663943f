"""NVIDIA GPUs through NVML (nvidia-ml-py): total-energy counter per device (*measured*, mJ), plus the sampled
power, utilisation, memory and temperature.

Only the trial's own GPUs are metered: ``discover(select)`` keeps the devices named by UUID (or index), and names
each component after the host's index, so a one-GPU trial on an eight-GPU host counts one GPU — inside a container
(which sees its GPU as index 0) as in a plain process (which sees them all).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

# A window shorter than this, or spanning fewer counter updates, is flagged: the counter cannot resolve it well.
MIN_WINDOW_S = 5.0
MIN_UPDATES = 50
# Counter energy vs integrated power over the idle window: a larger relative gap is flagged.
MAX_COUNTER_POWER_GAP = 0.10


@dataclass
class NvmlGpu:
    index: int  # the host's index: the component is "gpu:<index>"
    handle: Any
    name: str
    has_energy_counter: bool
    uuid: str | None = None
    validity: dict[str, Any] = field(default_factory=dict)

    @property
    def component(self) -> str:
        return f"gpu:{self.index}"

    def serial(self) -> str | None:
        """The board's serial number, where NVML gives it (data-centre boards); names one physical GPU."""
        import pynvml

        try:
            value = pynvml.nvmlDeviceGetSerial(self.handle)
        except (pynvml.NVMLError, AttributeError):
            return None
        value = value.decode() if isinstance(value, bytes) else value
        return value or None

    def energy_mj(self) -> int:
        import pynvml

        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def energy_j(self) -> float:
        return self.energy_mj() / 1e3

    def power_limit_w(self) -> float | None:
        """The highest power limit the board accepts (NVML's constraint maximum, else the enforced limit), in W: what
        the energy counter can never rise much faster than. None when NVML does not say."""
        import pynvml

        for call in (lambda: pynvml.nvmlDeviceGetPowerManagementLimitConstraints(self.handle)[1],
                     lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(self.handle)):
            try:
                mw = call()
            except (pynvml.NVMLError, AttributeError, TypeError, IndexError):
                continue
            if mw:
                return mw / 1000.0
        return None

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

    def probe_counter(self, max_s: float = 1.0, poll_s: float = 0.002) -> dict[str, Any]:
        """How often the energy counter moves, and whether it moves at all. A counter that reads zero or does not
        change within ``max_s`` is rejected (``has_energy_counter`` becomes False: power is sampled instead), and so
        is one whose reads fail (an NVMLError here must not stop the meters from starting)."""
        import pynvml

        try:
            return self._probe(max_s, poll_s)
        except pynvml.NVMLError as e:
            self.has_energy_counter = False
            self.validity = {"counter_mj": None, "changes": 0, "probe_s": max_s, "update_period_s": None,
                             "zero": False, "frozen": False, "error": f"{type(e).__name__}: {e}",
                             "rejected": f"reading the energy counter failed ({e}); power is sampled and integrated "
                                         "instead"}
            return self.validity

    def _probe(self, max_s: float, poll_s: float) -> dict[str, Any]:
        first = self.energy_mj()
        changes: list[float] = []
        last, t_end = first, time.monotonic() + max_s
        while time.monotonic() < t_end and len(changes) < 6:
            time.sleep(poll_s)
            v = self.energy_mj()
            if v != last:
                changes.append(time.monotonic())
                last = v
        gaps = [b - a for a, b in zip(changes, changes[1:])]
        period = sorted(gaps)[len(gaps) // 2] if gaps else None
        v = {"counter_mj": first, "changes": len(changes), "probe_s": max_s, "update_period_s": period,
             "zero": first == 0 and last == 0, "frozen": not changes}
        if v["zero"] or v["frozen"]:
            self.has_energy_counter = False
            v["rejected"] = ("the energy counter reads zero" if v["zero"] else
                             f"the energy counter did not change within {max_s:g} s") + \
                "; power is sampled and integrated instead"
        self.validity = v
        return v

    def memory_bandwidth(self) -> dict[str, Any]:
        """Peak memory bandwidth from NVML: max memory clock × bus width × 2 (NVML reports the clock of one edge; HBM
        and GDDR transfer on both), e.g. A100-80GB 1593 MHz × 5120 bit → 2.04 TB/s, its datasheet figure. Falls back
        to KNOWN_BANDWIDTH (datasheets) by board name; {"bytes_per_s": None, "reason": ...} when neither knows."""
        import pynvml

        try:
            mhz = pynvml.nvmlDeviceGetMaxClockInfo(self.handle, pynvml.NVML_CLOCK_MEM)
            bits = pynvml.nvmlDeviceGetMemoryBusWidth(self.handle)
            why = f"NVML reports {mhz} MHz × {bits} bit"
        except (pynvml.NVMLError, AttributeError) as e:  # AttributeError: an nvidia-ml-py without the call
            mhz = bits = None
            why = f"NVML gives no memory clock or bus width here ({e})"
        if mhz and bits:
            return {"bytes_per_s": mhz * 1e6 * 2 * bits / 8, "source": "nvml",
                    "detail": f"max memory clock {mhz} MHz × bus width {bits} bit × 2 (double data rate)"}
        for key, (bps, source) in KNOWN_BANDWIDTH.items():
            if key.lower() in self.name.lower():
                return {"bytes_per_s": bps, "source": "datasheet", "detail": source}
        return {"bytes_per_s": None, "source": None,
                "reason": f"{why}; {self.name!r} is not in the table of known GPUs"}


# Peak memory bandwidth of common data-centre and workstation boards, from NVIDIA's product datasheets; used only when
# NVML cannot give the memory clock and bus width. Most specific names first (matched as substrings of the NVML name).
KNOWN_BANDWIDTH: dict[str, tuple[float, str]] = {
    "H200": (4.8e12, "NVIDIA H200 datasheet: 4.8 TB/s HBM3e"),
    "H100 PCIe": (2.0e12, "NVIDIA H100 datasheet (PCIe): 2.0 TB/s HBM2e"),
    "H100 NVL": (3.9e12, "NVIDIA H100 datasheet (NVL): 3.9 TB/s HBM3"),
    "H100": (3.35e12, "NVIDIA H100 datasheet (SXM): 3.35 TB/s HBM3"),
    "A100-SXM4-80GB": (2.039e12, "NVIDIA A100 datasheet (80GB SXM): 2,039 GB/s HBM2e"),
    "A100 80GB PCIe": (1.935e12, "NVIDIA A100 datasheet (80GB PCIe): 1,935 GB/s HBM2e"),
    "A100": (1.555e12, "NVIDIA A100 datasheet (40GB): 1,555 GB/s HBM2"),
    "L40S": (864e9, "NVIDIA L40S datasheet: 864 GB/s GDDR6"),
    "L4": (300e9, "NVIDIA L4 datasheet: 300 GB/s GDDR6"),
    "A10": (600e9, "NVIDIA A10 datasheet: 600 GB/s GDDR6"),
    "V100": (900e9, "NVIDIA V100 datasheet (SXM2/PCIe 32GB): 900 GB/s HBM2"),
    "RTX 4090": (1008e9, "NVIDIA GeForce RTX 4090 specifications: 1,008 GB/s GDDR6X"),
}


def _uuid(pynvml, handle) -> str | None:
    try:
        u = pynvml.nvmlDeviceGetUUID(handle)
    except pynvml.NVMLError:
        return None
    return u.decode() if isinstance(u, bytes) else u


def default_selection() -> dict[str, int]:
    """Without an explicit selection, the GPU the trial's CUDA work uses: the first of CUDA_VISIBLE_DEVICES (an
    index or a UUID), else index 0 — what ``cuda:0`` means for every engine here."""
    first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    return {first: int(first) if first.isdigit() else 0}


def discover(select: dict[str, int] | None = None) -> tuple[list[NvmlGpu], str | None]:
    """Initialise NVML and list the selected GPUs ({UUID or index: host index}; None = every visible GPU).
    Returns (gpus, reason when there are none)."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return [], f"NVML not available ({e}): no NVIDIA driver or GPU visible"
    try:
        return _list(pynvml, select)
    except pynvml.NVMLError as e:  # a GPU lost, a driver/library mismatch: no GPU meters, and why — never a crash
        return [], f"NVML failed while listing the GPUs ({type(e).__name__}: {e})"


def _list(pynvml, select: dict[str, int] | None) -> tuple[list[NvmlGpu], str | None]:
    gpus, seen = [], set()
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        uuid = _uuid(pynvml, h)
        if select is not None:
            key = uuid if uuid in select else str(i) if str(i) in select else None
            if key is None:
                continue
            seen.add(key)
            index = select[key]
        else:
            index = i
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else name
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            has_counter = True
        except pynvml.NVMLError:
            has_counter = False  # pre-Volta: power is sampled and integrated instead
        gpus.append(NvmlGpu(index, h, name, has_counter, uuid))
    missing = sorted(set(select or ()) - seen)
    if missing:
        return [], f"GPU(s) {', '.join(missing)} asked for but not visible to NVML here"
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
