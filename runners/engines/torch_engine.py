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
    precisions = {"cpu": ("fp32", "bf16", "fp16"), "cuda": ("fp32", "fp16", "bf16")}
    requires = ("torch", "transformers")

    @dataclass(frozen=True)
    class Options(o.Options):
        attn_implementation: str | None = o.option(
            None, "transformers attention kernel: eager | sdpa (default: the model's default)")

    def load(self, shape) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if self.ctx.device == "cpu":
            torch.set_num_threads(self.threads())
        self.device = torch.device("cuda:0" if self.ctx.device == "cuda" else "cpu")
        kwargs: dict[str, Any] = {"dtype": getattr(torch, DTYPES[self.ctx.precision])}
        if self.options.attn_implementation:
            kwargs["attn_implementation"] = self.options.attn_implementation
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, **kwargs).to(self.device).eval()

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop=None) -> list[list[int]]:
        return generate_ids(self.model, self.tokenizer, prompts, max_new_tokens, self.ends_on(ignore_eos), on_step,
                            self.device, stop, self.ctx.sampling, self.ctx.sampling_seed(*prompts))

    def synchronize(self) -> None:
        if self.ctx.device == "cuda":
            import torch

            torch.cuda.synchronize()

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
            if self.ctx.device == "cuda":
                info["gpu_name"] = torch.cuda.get_device_name(0)
        return info

    def close(self) -> None:
        self.model = None
        torch = sys.modules.get("torch")  # a job refused before torch was imported (or without torch) has no cache
        if self.ctx.device == "cuda" and torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
