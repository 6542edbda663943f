"""The GPU acceptance kit's look at the host: the modules it needs, the floor model's tokenizer, the engines this
Python can run, the memory bandwidth, and the host's and the GPU's facts (read only). See benchmarks/gpu_acceptance.py.
"""

from __future__ import annotations

import os
import platform
import tarfile
from typing import Any

from benchmarks.gpu_acceptance_stages import PRECISIONS, REPO

# What the kit itself and the runner need on the host (module -> pip package); the HumanEval data ships in runners/data
NEEDS = {"torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers", "psutil": "psutil",
         "rich": "rich", "pandas": "pandas", "numpy": "numpy", "safetensors": "safetensors"}
CUDA_NEEDS = {"pynvml": "nvidia-ml-py"}


def missing_modules(device: str = "cpu") -> list[str]:
    from runners.engines.base import module_found

    needs = {**NEEDS, **(CUDA_NEEDS if device == "cuda" else {})}
    return [pkg for mod, pkg in needs.items() if not module_found(mod)]


SHIPPED_SMOLLM2 = REPO / "benchmarks" / "data" / "smollm2-tokenizer.tar.gz"  # Apache-2.0: see its NOTICE


def unpack_shipped_tokenizer() -> None:
    """SmolLM2's tokenizer from the copy shipped with the kit, into the fixtures cache where none is there yet: it is
    otherwise built from a GGUF fetched with pip, which a host without network cannot do."""
    from orchestrator import fixtures

    dst = fixtures.tokenizer_dir(None, "smollm2")
    if dst.exists() or not SHIPPED_SMOLLM2.is_file():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".smollm2-shipped-{os.getpid()}"
    with tarfile.open(SHIPPED_SMOLLM2) as tar:
        tar.extractall(tmp, filter="data")
    tmp.rename(dst)  # whole or not at all


def floor_tokenizer(args) -> tuple[str | None, str | None]:
    """(the floor model's tokenizer kind, why it cannot be had): the one llama.cpp's converter takes for Llama,
    obtained now (SmolLM2's comes from its GGUF, fetched once with pip) so that a host without it stops before starting."""
    from orchestrator import fixtures

    kind = args.floor_tokenizer or fixtures.llama_cpp_tokenizer("llama")
    try:
        if kind == "smollm2":
            unpack_shipped_tokenizer()
        fixtures.load_tokenizer(kind, None)
    except Exception as e:  # no network and nothing cached: name what to bring
        where = fixtures.tokenizer_dir(None, kind)
        return None, (f"the floor model's tokenizer {kind!r} cannot be had here ({type(e).__name__}: {str(e)[:200]}): "
                      f"bring {where} from a host that built it, or give --floor-tokenizer spm")
    return kind, None


def survey(device: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(runnable, skipped): every engine of every runtime image for this device, as this Python can run it."""
    from orchestrator.images import discover
    from runners.engines import engine_class

    runnable, skipped = [], []
    for rt in discover().values():
        if rt.device != device:
            continue
        for engine in rt.engines:
            cls = engine_class(engine)
            offered = [p for p in PRECISIONS if p in cls.precisions.get(device, ())]
            reason = cls.unavailable(device)
            if reason is None and not offered:
                reason = f"offers none of {', '.join(PRECISIONS)} on {device}"
            row = {"runtime": rt.name, "engine": engine, "precisions": offered}
            (runnable if reason is None else skipped).append(row if reason is None else {**row, "reason": reason})
    return runnable, skipped


def bandwidth(device: str, given_gbs: float | None) -> dict[str, Any]:
    if given_gbs:
        return {"bytes_per_s": given_gbs * 1e9, "source": "given", "detail": "--bandwidth-gbs"}
    if device != "cuda":
        return {"bytes_per_s": None, "source": None,
                "reason": "no peak memory bandwidth for a CPU here (give --bandwidth-gbs)"}
    from runners.meters import nvml

    gpus, reason = nvml.discover({"0": 0})
    if not gpus:
        return {"bytes_per_s": None, "source": None, "reason": reason}
    return {"gpu": gpus[0].name, **gpus[0].memory_bandwidth()}


def host_facts(device: str) -> dict[str, Any]:
    import torch
    import transformers

    facts = {"python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine(),
             "cores": os.cpu_count()}
    if device == "cuda" and torch.cuda.is_available():
        from runners.meters import nvml

        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
        facts.update(nvml.driver_info())
    return facts


def gpu_facts(device: str) -> dict[str, Any]:
    """What the GPU is, read only (nothing is set): name, memory clock and bus width, energy-counter update period,
    power limits. Each fact that NVML will not give is None with the reason."""
    if device != "cuda":
        return {"device": device, "reason": "no GPU in --device cpu mode"}
    from runners.meters import nvml

    gpus, reason = nvml.discover({"0": 0})
    if not gpus:
        return {"reason": reason}
    g = gpus[0]
    import pynvml

    def read(call):
        try:
            return call()
        except Exception as e:  # a fact NVML refuses is missing, with why; never a crash
            return f"unavailable: {type(e).__name__}: {e}"

    return {"name": g.name, "uuid": g.uuid, "has_energy_counter": g.has_energy_counter,
            "memory_clock_max_mhz": read(lambda: pynvml.nvmlDeviceGetMaxClockInfo(g.handle, pynvml.NVML_CLOCK_MEM)),
            "memory_bus_width_bit": read(lambda: pynvml.nvmlDeviceGetMemoryBusWidth(g.handle)),
            "bandwidth": g.memory_bandwidth(),
            "energy_counter": read(lambda: g.probe_counter()) if g.has_energy_counter else None,
            "power_limit_enforced_w": read(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(g.handle) / 1000.0),
            "power_limit_max_w": read(g.power_limit_w),
            "memory_total_bytes": read(lambda: pynvml.nvmlDeviceGetMemoryInfo(g.handle).total),
            **nvml.driver_info()}
