"""ONNX Runtime through optimum's ORTModelForCausalLM (CPU and CUDA execution providers).

prepare: optimum-onnx exports the HF model with past key/values (``text-generation-with-past``) into the engine
cache, once per (model, precision): fp32; fp16 (exported by optimum in fp16, for CUDA); int8 = the fp32 export with
ONNX Runtime dynamic quantisation (int8 weights, activations quantised per call; optimum's ORTQuantizer), the
SmolLM-135M report's best CPU configuration.
generate: transformers' generate over the ORT session (runners.engines.hf_generate), KV cache on. On CUDA, IO binding
keeps input ids, logits and the past key/values on the GPU between steps (no host round-trip per token).
ONNX Runtime quietly falls back to the CPU provider when the CUDA libraries cannot be loaded: the provider the
session really has is checked after load, and a fallback fails the trial with ONNX Runtime's own message.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from runners.engines import _conversion
from runners.engines import options as o
from runners.engines.base import Engine, StepHook
from runners.engines.hf_generate import generate_ids
from runners.errors import JobError

ENGINE_DIR = "onnx"
MODEL_FILE = {"fp32": "model.onnx", "fp16": "model.onnx", "int8": "model_quantized.onnx"}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
GRAPH_LEVELS = ("disabled", "basic", "extended", "all")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ORT_PREFIX = re.compile(r"^[\d\-: .]*\[[EWI]:onnxruntime:[^\]]*\]\s*")


class ProviderFallback(RuntimeError):
    """The session runs on another execution provider than the one asked for."""


class OnnxEngine(Engine):
    name = "onnx"
    family = "ONNX Runtime"
    optional_phases = frozenset({"prepare"})
    # CPU: fp32 and int8 dynamic quantisation (fp16 kernels on the CPU provider are partial and slow);
    # CUDA: fp32 and fp16 (ORT's integer MatMul kernels are CPU ones: int8 dynamic quantisation is no CUDA option).
    precisions = {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16")}
    requires = ("onnxruntime", "optimum.onnxruntime")
    multi_gpu = "one ONNX Runtime session runs on one CUDA execution provider device"

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        reason = super().unavailable(device)
        if reason is None and device == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                reason = (f"this onnxruntime ({onnxruntime.__version__}) has no CUDAExecutionProvider "
                          "(onnxruntime-gpu is the package that has it)")
        return reason

    @dataclass(frozen=True)
    class Options(o.Options):
        io_binding: bool | None = o.option(None, "bind inputs, outputs and past key/values on the device (default: "
                                                 "on for cuda, off for cpu, as optimum does)")
        graph_optimization: str = o.option("all", "ONNX Runtime graph optimisation level", choices=GRAPH_LEVELS)

    def __init__(self, ctx, tokenizer, options):
        super().__init__(ctx, tokenizer, options)
        self.model = None
        self.conversion: dict[str, Any] = {}
        self.session_facts: dict[str, Any] = {}

    # --- prepare ----------------------------------------------------------------------------------------------------
    def prepare(self, prompts: list) -> dict[str, Any]:
        precision = self.ctx.precision
        facts = _conversion.ensure(self.cache_dir, ENGINE_DIR, self.ctx.model_name, self.model_dir, precision,
                                   self._convert, is_complete=lambda d: (d / MODEL_FILE[precision]).is_file())
        self.conversion = facts
        return facts

    def _convert(self, out: Path) -> dict[str, Any]:
        if self.ctx.precision == "int8":
            # quantise the (cached) fp32 export: one export per model, whatever precisions are asked
            source = _conversion.ensure(self.cache_dir, ENGINE_DIR, self.ctx.model_name, self.model_dir, "fp32",
                                        _export_fp32(self.model_dir),
                                        is_complete=lambda d: (d / MODEL_FILE["fp32"]).is_file())
            facts = _quantize_dynamic(Path(source["artifact"]), out)
            facts["source"] = {"precision": "fp32", "artifact": source["artifact"], "cached": source["cached"]}
            return facts
        return _export(self.model_dir, out, self.ctx.precision)

    # --- load / generate ----------------------------------------------------------------------------------------------
    def load(self, shape) -> None:
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        artifact = Path(self.conversion.get("artifact") or "")
        if not (artifact / MODEL_FILE[self.ctx.precision]).is_file():
            raise JobError("cache_dir", f"no ONNX model at {artifact}", "run prepare first")
        device = self.ctx.device
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = self.options.graph_optimization
        levels = ort.GraphOptimizationLevel
        opts.graph_optimization_level = {"disabled": levels.ORT_DISABLE_ALL, "basic": levels.ORT_ENABLE_BASIC,
                                         "extended": levels.ORT_ENABLE_EXTENDED, "all": levels.ORT_ENABLE_ALL}[level]
        io_binding = self.options.io_binding if self.options.io_binding is not None else device == "cuda"
        preloaded = None
        if device == "cuda":
            torch.cuda.init()  # torch's CUDA libraries (the same pip nvidia-* packages) loaded first
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()  # CUDA/cuDNN from the pip nvidia-* packages, before the session looks for them
                preloaded = True
        provider = PROVIDERS[device]
        with _capture_fd2() as log:
            self.model = ORTModelForCausalLM.from_pretrained(
                artifact, file_name=MODEL_FILE[self.ctx.precision], provider=provider, session_options=opts,
                use_io_binding=io_binding, use_cache=True)
        providers = self.model.providers
        self.session_facts = {"providers": providers, "provider_asked": provider, "io_binding": io_binding,
                              "graph_optimization": level, "intra_op_threads": self.threads(),
                              "cuda_dlls_preloaded": preloaded, "session_dtype": str(self.model.dtype)}
        check_provider(provider, providers, log.text)
        self.device = self.model.device
        self.torch_threads = torch.get_num_threads()

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop=None) -> list[list[int]]:
        return generate_ids(self.model, self.tokenizer, prompts, max_new_tokens, self.ends_on(ignore_eos), on_step,
                            self.device, stop, self.ctx.sampling, self.ctx.sampling_seed(*prompts))

    def synchronize(self) -> None:
        if self.ctx.device == "cuda" and self.model is not None:
            import torch

            torch.cuda.synchronize()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "library": "optimum-onnx (ORTModelForCausalLM)",
            "versions": _conversion.versions("onnxruntime", "onnxruntime-gpu", "optimum", "optimum-onnx",
                                             "onnx", "transformers"),
            "provider": (self.session_facts.get("providers") or [None])[0],
            **self.session_facts,
            "kv_cache": True,
            "batching": "padded batch (left padding)",
            "precision_artifact": self.ctx.precision,
        }
        if self.conversion:
            info["conversion"] = {k: self.conversion.get(k) for k in
                                  ("model_key", "artifact", "cached", "exporter", "quantization", "seconds")}
        return info

    def close(self) -> None:
        self.model = None


# --- conversion --------------------------------------------------------------------------------------------------

def _export_fp32(model_dir: Path):
    return lambda out: _export(model_dir, out, "fp32")


def _export(model_dir: Path, out: Path, precision: str) -> dict[str, Any]:
    """optimum's ONNX export of a causal LM with past key/values. fp16 is exported from the fp16 torch model on the
    CPU (the graph does not depend on the exporting device; prepare needs no GPU)."""
    from optimum.exporters.onnx import main_export

    main_export(str(model_dir), out, task="text-generation-with-past", dtype=precision, device="cpu",
                do_validation=False, library_name="transformers", local_files_only=True)
    if not (out / "model.onnx").is_file():
        raise RuntimeError(f"optimum's export wrote no model.onnx ({sorted(p.name for p in out.iterdir())})")
    return {"exporter": {"tool": "optimum.exporters.onnx.main_export", "task": "text-generation-with-past",
                         "dtype": precision, "device": "cpu",
                         **_conversion.versions("optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu",
                                                "torch", "transformers")}}


def _quantize_dynamic(source: Path, out: Path) -> dict[str, Any]:
    """ONNX Runtime dynamic quantisation (int8 weights, activations quantised at run time) via optimum."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    quantizer = ORTQuantizer.from_pretrained(source, file_name=MODEL_FILE["fp32"])
    external = any(p.suffix == ".onnx_data" or p.name.endswith(".onnx.data") for p in source.iterdir())
    quantizer.quantize(save_dir=out, quantization_config=config, use_external_data_format=external)
    if not (out / MODEL_FILE["int8"]).is_file():
        raise RuntimeError(f"ORTQuantizer wrote no {MODEL_FILE['int8']} ({sorted(p.name for p in out.iterdir())})")
    qc = config.__dict__
    return {"exporter": {"tool": "optimum.onnxruntime.ORTQuantizer",
                         **_conversion.versions("optimum", "optimum-onnx", "onnxruntime", "onnxruntime-gpu")},
            "quantization": {"method": "dynamic", "weights_dtype": str(qc.get("weights_dtype")),
                             "activations_dtype": str(qc.get("activations_dtype")),
                             "per_channel": qc.get("per_channel"), "reduce_range": qc.get("reduce_range"),
                             "operators": list(qc.get("operators_to_quantize") or []), "preset": "avx512_vnni"}}


# --- provider check --------------------------------------------------------------------------------------------------

def check_provider(asked: str, providers: list[str], ort_log: str = "") -> None:
    """Fail when ONNX Runtime did not give the session the provider asked for (its silent CPU fallback)."""
    if providers and providers[0] == asked:
        return
    lines = [_ANSI.sub("", line).strip() for line in ort_log.splitlines()]
    lines = [line for line in lines if line]
    # ORT logs "[E:onnxruntime:…] … FAIL : <cause>", then "[W:onnxruntime:…] Failed to create …": E says why
    errors = [line for line in lines if "[E:" in line] or [line for line in lines if "fail" in line.lower()]
    cause = "; ".join(_ORT_PREFIX.sub("", line).split("FAIL : ")[-1] for line in errors[:2]) \
        or "ONNX Runtime logged no reason"
    raise ProviderFallback(f"ONNX Runtime was asked for {asked} but the session runs on {providers} (its silent "
                           f"fallback): {cause[:700]}")


class _Captured:
    text = ""


@contextlib.contextmanager
def _capture_fd2() -> Iterator[_Captured]:
    """ONNX Runtime's C++ logger writes to file descriptor 2, out of Python's reach: copy what it writes while a
    session is created (and still show it on stderr)."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            data = tmp.read()
            captured.text = data.decode(errors="replace")
            if data:
                sys.stderr.write(captured.text)
                sys.stderr.flush()
