"""nvidia-ml-py's interface (the calls runners/meters/nvml.py makes), replaying counter traces instead of a driver.

NVML cannot run on a host without an NVIDIA GPU; the meter's arithmetic (mJ → J, counter deltas, the power-sample
fallback, GPU selection, the validity probe) is tested against this stand-in of the *library's interface*, fed with
counter traces shaped like NVML's: the total-energy counter in mJ moves in steps every ``period_s`` at the board's
power, and ``nvmlDeviceGetPowerUsage`` (mW) is an independent reading, so a meter that integrated power instead of
differencing the counter gives a different number. On a GPU host the real library is used (tests/test_meters.py
runs the meter for real there).

The power-management limit is replayed too (orchestrator/power_cap.py): read, set within the board's constraints,
and refused with NVML's NoPermission error while ``may_set`` is False (a process that is not root).
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass

from _known_rate import KnownRate


# NVML's return codes that nvidia-ml-py gives as NVMLError.value (the same numbers as the library's)
NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION = 2, 3, 4


class NVMLError(Exception):
    def __init__(self, message: str, value: int | None = None):
        super().__init__(message)
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H200"
    watts: float = 120.0  # what the energy counter accumulates
    reported_power_w: float | None = None  # what nvmlDeviceGetPowerUsage says (None: same as watts)
    period_s: float = 0.02  # counter update period
    has_counter: bool = True  # pre-Volta boards raise NVMLError on the energy call
    frozen: bool = False  # a counter stuck at one value
    start_mj: int = 5_000_000
    temp_c: float = 40.0
    mem_clock_mhz: int | None = 3201  # NVML's max memory clock (an H200's); None: the query is not supported
    bus_width_bits: int | None = 6144
    power_limit_w: float | None = 700.0  # the power-limit constraint's maximum; None: the query is not supported
    min_limit_w: float = 100.0  # the power-limit constraint's minimum
    limit_w: float | None = None  # the power-management limit set now (None: the maximum); also the enforced one
    may_set: bool = True  # False: setting the limit raises NoPermission (NVML's answer to a process that is not root)
    fail: bool = False  # every energy read raises NVMLError while set (e.g. "GPU is lost", "Unknown Error")
    offset_mj: int = 0  # added to the counter: a negative jump is a reset (e.g. a driver reload)

    def __post_init__(self):
        self.t0 = time.monotonic()
        self.rate = KnownRate(self.watts, self.t0)  # the board's power, changeable with set_watts
        if self.limit_w is None:
            self.limit_w = self.power_limit_w
        self.limits_set: list[tuple[float, float]] = []  # every limit set through NVML: (unix time, W), in order

    def set_limit_mw(self, mw: int) -> None:
        if not self.may_set:
            raise NVMLError("Insufficient Permissions", NVML_ERROR_NO_PERMISSION)
        high = _supported(self.power_limit_w)
        if not self.min_limit_w * 1000 <= mw <= high * 1000:
            raise NVMLError("Invalid Argument", NVML_ERROR_INVALID_ARGUMENT)
        self.limit_w = mw / 1000
        self.limits_set.append((time.time(), self.limit_w))

    def set_watts(self, watts: float) -> float:
        """A power step now (the counter's increments follow; the power readings too); returns its instant."""
        self.watts = watts
        return self.rate.set(watts)

    def energy_mj(self) -> int:
        if not self.has_counter or self.fail:
            raise NVMLError("Not Supported" if not self.has_counter else "Unknown Error")
        if self.frozen:
            return self.start_mj
        # the counter moves once per period, to the energy at that update
        updated = self.t0 + int((time.monotonic() - self.t0) / self.period_s) * self.period_s
        return self.start_mj + self.offset_mj + int(self.rate.joules(updated) * 1000)


def _supported(value):
    if value is None:
        raise NVMLError("Not Supported", NVML_ERROR_NOT_SUPPORTED)
    return value


def _by_uuid(gpus: list[FakeGpu], uuid: str) -> FakeGpu:
    for g in gpus:
        if g.uuid == uuid:
            return g
    raise NVMLError("Not Found")


def module(gpus: list[FakeGpu]) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.NVML_ERROR_INVALID_ARGUMENT, m.NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED
    m.NVML_ERROR_NO_PERMISSION = NVML_ERROR_NO_PERMISSION
    m.NVML_TEMPERATURE_GPU = 0
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    m.nvmlDeviceGetHandleByUUID = lambda uuid: _by_uuid(gpus, uuid)
    m.nvmlDeviceGetUUID = lambda h: h.uuid
    m.nvmlDeviceGetName = lambda h: h.name
    m.nvmlDeviceGetTotalEnergyConsumption = lambda h: h.energy_mj()
    m.nvmlDeviceGetPowerUsage = lambda h: int(1000 * (h.watts if h.reported_power_w is None else h.reported_power_w))
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50, memory=10)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2**30, total=2**34)
    m.nvmlDeviceGetTemperature = lambda h, kind: h.temp_c
    m.NVML_CLOCK_MEM = 2
    m.nvmlDeviceGetMaxClockInfo = lambda h, kind: _supported(h.mem_clock_mhz if kind == m.NVML_CLOCK_MEM else None)
    m.nvmlDeviceGetMemoryBusWidth = lambda h: _supported(h.bus_width_bits)
    m.nvmlDeviceGetPowerManagementLimitConstraints = lambda h: (int(h.min_limit_w * 1000),
                                                                int(_supported(h.power_limit_w) * 1000))
    m.nvmlDeviceGetPowerManagementLimit = lambda h: int(_supported(h.limit_w) * 1000)
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: int(_supported(h.limit_w) * 1000)
    m.nvmlDeviceSetPowerManagementLimit = lambda h, mw: h.set_limit_mw(mw)
    m.nvmlSystemGetDriverVersion = lambda: "590.00"
    m.nvmlSystemGetCudaDriverVersion_v2 = lambda: 13000
    return m
