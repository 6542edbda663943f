"""transformers on PyTorch, eager mode: the reference engine (CPU and CUDA; fp32, fp16, bf16)."""

from __future__ import annotations

import sys
from typing import Any

from dataclasses import dataclass

from runners.engines import options as o
from runners.engines.base import Engine, StepHook
from runners.engines.hf_generate import generate_ids

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchEngine(Engine):
    name = "torch"
    family = "PyTorch"
    precisions = {"cpu": ("fp32", "bf16", "fp16"), "cuda": ("fp32", "fp16", "bf16")}
    requires = ("torch", "transformers")
    # several GPUs: accelerate's device_map="auto" places consecutive layers on each (in the torch images); the
    # layers run in turn, one GPU busy at a time — model parallelism, not tensor parallelism
    multi_gpu = None

    @dataclass(frozen=True)
    class Options(o.Options):
        attn_implementation: str | None = o.option(
            None, "transformers attention kernel: eager | sdpa (default: the model's default)")

    def load(self, shape) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if self.ctx.device == "cpu":
            torch.set_num_threads(self.threads())
        self.device = torch.device("cuda:0" if self.ctx.device == "cuda" else "cpu")  # where the inputs go
        kwargs: dict[str, Any] = {"dtype": getattr(torch, DTYPES[self.ctx.precision]), **self.placement()}
        if self.options.attn_implementation:
            kwargs["attn_implementation"] = self.options.attn_implementation
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, **kwargs)
        self.model = (model if "device_map" in kwargs else model.to(self.device)).eval()

    def placement(self) -> dict[str, Any]:
        """from_pretrained's placement: the layers spread over the trial's GPUs (device_map "auto", accelerate's
        balanced split over every visible GPU: the launcher shows exactly the trial's) when it has several; else none
        (the model is moved to the one device)."""
        return {"device_map": "auto"} if self.ctx.device == "cuda" and self.ctx.gpus > 1 else {}

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop=None) -> list[list[int]]:
        return generate_ids(self.model, self.tokenizer, prompts, max_new_tokens, self.ends_on(ignore_eos), on_step,
                            self.device, stop, self.ctx.sampling, self.ctx.sampling_seed(*prompts))

    def synchronize(self) -> None:
        if self.ctx.device == "cuda":
            import torch

            for gpu in range(self.ctx.gpus):  # every GPU the layers are on, not only the current one
                torch.cuda.synchronize(gpu)

    def describe(self) -> dict[str, Any]:
        import torch

        info = {
            "library": "transformers",
            "provider": "cuda" if self.ctx.device == "cuda" else "cpu",
            "dtype": DTYPES[self.ctx.precision],
            "kv_cache": True,
            "batching": "padded batch (left padding)",
            "torch_threads": torch.get_num_threads(),
        }
        model = getattr(self, "model", None)
        if model is not None:
            info["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
            if getattr(model, "hf_device_map", None):  # where each layer went, when spread over several GPUs
                info["device_map"] = {k: str(v) for k, v in model.hf_device_map.items()}
            if self.ctx.device == "cuda":
                info["gpu_name"] = torch.cuda.get_device_name(0)
        return info

    def close(self) -> None:
        self.model = None
        torch = sys.modules.get("torch")  # a job refused before torch was imported (or without torch) has no cache
        if self.ctx.device == "cuda" and torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
