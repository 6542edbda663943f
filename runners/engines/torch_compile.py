"""transformers on PyTorch with the model's forward compiled by torch.compile (Inductor): it *generates* — the same
greedy decode loop, KV cache and exact token count as the eager reference (the study's "JIT" ran one forward pass).

The compile window compiles and runs the graphs the measured generation needs — prefill and decode, at the job's
batch size, prompt lengths inside the workload's range — so compilation is not charged to warm-up or generation.
Graphs compiled after that window (recompiles) are counted into the record. TorchScript is not offered: tracing a
transformers causal LM fails (unordered_map::at) and a traced graph cannot carry the growing KV cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runners.engines import options as o

from runners.engines.base import module_found
from runners.engines.hf_generate import generate_ids
from runners.engines.torch_engine import TorchEngine

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# a code-like text to make compile-time prompts from (token ids only matter for their count)
_COMPILE_TEXT = ("def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, i * 2))\n" * 4)


class TorchCompileEngine(TorchEngine):
    name = "torch-compile"
    family = "PyTorch"
    optional_phases = frozenset({"compile"})
    # torch.compile of a model accelerate has dispatched over several GPUs has not been tried: one GPU until it is
    multi_gpu = "torch.compile over a model spread by device_map has not been tried"

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        # Inductor generates Triton kernels for CUDA: without triton, compiling for the GPU fails at the first graph
        if device == "cuda" and not module_found("triton"):
            return "triton not installed (Inductor needs it for CUDA)"
        return super().unavailable(device)

    @dataclass(frozen=True)
    class Options(TorchEngine.Options):
        compile_mode: str = o.option("default", "torch.compile mode", choices=MODES)
        backend: str = o.option("inductor", "torch.compile backend")
        dynamic: bool = o.option(True, "compile with dynamic shapes (prompt and cache lengths vary)")

    def compile(self, shape) -> dict[str, Any]:
        import torch
        from torch._dynamo.utils import counters

        torch._dynamo.reset()  # a fresh compile, counted from zero
        counters.clear()
        self.compile_settings = {"backend": self.options.backend, "mode": self.options.compile_mode,
                                 "dynamic": self.options.dynamic}
        self.model.forward = torch.compile(self.model.forward, **self.compile_settings)
        runs = []
        for batch in self._compile_batches(shape):
            t0 = time.perf_counter()
            generate_ids(self.model, self.tokenizer, batch, 3, frozenset(), lambda: None, self.device)
            self.synchronize()
            runs.append({"prompts": len(batch), "lengths": [len(p) for p in batch],
                         "seconds": round(time.perf_counter() - t0, 3)})
        self.graphs_after_compile = _graph_count(counters)
        return {**self.compile_settings, "runs": runs, "graphs": self.graphs_after_compile,
                "graph_breaks": sum(counters["graph_break"].values())}

    def _compile_batches(self, shape) -> list[list[list[int]]]:
        """Two generations shaped like the measured ones: the job's batch size, lengths at both ends of the
        workload's token window (a batch of several prompts has left padding, as the measured batches do)."""
        ids = self.tokenizer(_COMPILE_TEXT)["input_ids"]
        size = shape.batch_size
        lo, hi = max(2, shape.shortest_prompt), max(2, shape.longest_prompt)
        batches = []
        for first in (hi, lo):
            lengths = [first] + [lo + (i % (hi - lo + 1)) for i in range(1, size)]
            batches.append([ids[:n] for n in lengths])
        return batches

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["compiled"] = getattr(self, "compile_settings", None)
        try:
            from torch._dynamo.utils import counters

            total = _graph_count(counters)
            after = getattr(self, "graphs_after_compile", None)
            info["graphs"] = total
            info["recompiles_after_compile_window"] = (total - after) if after is not None else None
            info["graph_breaks"] = sum(counters["graph_break"].values())
        except ImportError:
            pass
        return info


def _graph_count(counters) -> int:
    return int(counters["stats"].get("unique_graphs", 0))
