"""OpenVINO through optimum-intel's OVModelForCausalLM (CPU; an Intel GPU when one is present).

prepare: optimum-intel exports the HF model to OpenVINO IR into the engine cache, once per (model, precision,
KV-cache mode): fp32 weights (OVConfig(dtype="fp32") — without it optimum-intel silently compresses the weights of a
model over 1B parameters to int8), or int8 = NNCF's data-free int8 weight compression (asymmetric, per channel) of
the cached fp32 IR. bf16 runs the fp32 IR with a bf16 inference precision.
KV-cache modes (option ``kv_cache``): "stateful" (default: the past key/values live inside the model as OpenVINO
state), "explicit" (past key/values as model inputs/outputs), "none" (no past: every step runs the whole sequence —
what the study mostly measured). The mode that ran is recorded.
Settings that change the tokens are set explicitly and read back from the compiled model into the record:
INFERENCE_PRECISION_HINT (OpenVINO's CPU default is bf16 where the CPU has AMX), KV_CACHE_PRECISION (its default is
f16, even with an f32 hint), DYNAMIC_QUANTIZATION_GROUP_SIZE (activations of int8-compressed weights quantised on
the fly). A precision the device does not give (bf16 without bf16 support) fails the trial with the reason.
Compiling the IR for the device (core.compile_model) is the runner's "compile" window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.engines import _conversion
from runners.engines import options as o
from runners.engines.base import Engine, StepHook
from runners.engines.hf_generate import generate_ids
from runners.errors import JobError

ENGINE_DIR = "openvino"
IR_FILE = "openvino_model.xml"
KV_MODES = ("stateful", "explicit", "none")
OV_DEVICES = ("CPU", "GPU")
# precision -> (IR weights, inference precision hint, KV-cache precision, dynamic quantisation group size)
RECIPES = {
    "fp32": ("fp32", "f32", "f32", 0),
    "bf16": ("fp32", "bf16", "bf16", 0),
    # OpenVINO's own int8 default: int8 weights, activations quantised per group of 32 on the fly
    "int8": ("int8", "f32", "f32", 32),
}
KV_CACHE_PRECISIONS = ("f32", "f16", "bf16", "u8")


class OpenVinoEngine(Engine):
    name = "openvino"
    family = "OpenVINO"
    optional_phases = frozenset({"prepare", "compile"})
    precisions = {"cpu": ("fp32", "bf16", "int8")}
    requires = ("openvino", "optimum.intel")
    multi_gpu = "it runs on the CPU here; no NVIDIA GPU device"

    @dataclass(frozen=True)
    class Options(o.Options):
        kv_cache: str = o.option("stateful", "stateful | explicit (past as inputs/outputs) | none (no KV cache: the "
                                             "whole sequence every step, as the study ran it)", choices=KV_MODES)
        ov_device: str = o.option("CPU", "OpenVINO device: CPU | GPU (an Intel GPU; the container needs /dev/dri)",
                                  choices=OV_DEVICES)
        kv_cache_precision: str | None = o.option(None, "KV_CACHE_PRECISION (default: follows the precision)",
                                                  choices=KV_CACHE_PRECISIONS)
        dynamic_quantization_group_size: int | None = o.option(
            None, "DYNAMIC_QUANTIZATION_GROUP_SIZE: 0 = off (default: 32 for int8, 0 otherwise)", minimum=0)

    def __init__(self, ctx, tokenizer, options):
        super().__init__(ctx, tokenizer, options)
        self.model = None
        self.conversion: dict[str, Any] = {}
        self.compiled_facts: dict[str, Any] = {}

    @property
    def kv_mode(self) -> str:
        return self.options.kv_cache

    @property
    def ov_device(self) -> str:
        return self.options.ov_device

    def check_host(self) -> None:
        super().check_host()
        if self.ov_device != "CPU":
            import openvino as ov

            available = ov.Core().available_devices
            if not any(d.split(".")[0] == self.ov_device for d in available):
                raise JobError("engine_options.ov_device", f"{self.ov_device} asked but OpenVINO sees only "
                                                           f"{', '.join(available) or 'no device'}",
                               "run on a host with an Intel GPU (and its compute runtime; pass /dev/dri into the "
                               "container), or use ov_device CPU")

    # --- prepare ----------------------------------------------------------------------------------------------------
    def prepare(self, prompts: list) -> dict[str, Any]:
        weights = RECIPES[self.ctx.precision][0]
        facts = self._ensure(weights)
        self.conversion = facts
        return facts

    def _ensure(self, weights: str) -> dict[str, Any]:
        if weights == "int8":
            convert = self._compress_int8  # from the (cached) fp32 IR: one export per model and KV mode
        else:
            def convert(out: Path) -> dict[str, Any]:
                return _export(self.model_dir, out, self.kv_mode)
        return _conversion.ensure(self.cache_dir, ENGINE_DIR, self.ctx.model_name, self.model_dir,
                                  f"{weights}/{self.kv_mode}", convert, is_complete=lambda d: (d / IR_FILE).is_file())

    def _compress_int8(self, out: Path) -> dict[str, Any]:
        source = self._ensure("fp32")
        facts = _compress_int8(Path(source["artifact"]), out, self.kv_mode)
        facts["source"] = {"precision": "fp32", "artifact": source["artifact"], "cached": source["cached"]}
        return facts

    # --- load / compile / generate -----------------------------------------------------------------------------------
    def ov_config(self) -> dict[str, str]:
        _, hint, kv_precision, group = RECIPES[self.ctx.precision]
        opts = self.options
        group = opts.dynamic_quantization_group_size if opts.dynamic_quantization_group_size is not None else group
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "KV_CACHE_PRECISION": opts.kv_cache_precision or kv_precision,
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(group),
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "CACHE_DIR": "",  # no compiled-blob cache: the engine cache is read-only in measured runs
        }
        if self.ov_device == "CPU":
            config["INFERENCE_NUM_THREADS"] = str(self.threads())
        return config

    def load(self, shape) -> None:
        from optimum.intel import OVModelForCausalLM

        artifact = Path(self.conversion.get("artifact") or "")
        if not (artifact / IR_FILE).is_file():
            raise JobError("cache_dir", f"no OpenVINO IR at {artifact}", "run prepare first")
        # read the IR only; compiling it for the device is the compile window
        self.model = OVModelForCausalLM.from_pretrained(artifact, device=self.ov_device, ov_config=self.ov_config(),
                                                        use_cache=self.kv_mode != "none", compile=False)
        if self.kv_mode == "stateful" and not self.model.stateful:
            raise RuntimeError(f"the IR at {artifact} was exported stateful but optimum-intel loaded it stateless")

    def compile(self, shape) -> dict[str, Any]:
        self.model.compile()
        request = self.model.request
        compiled = request.get_compiled_model() if hasattr(request, "get_compiled_model") else request
        self.compiled_facts = compiled_properties(compiled)
        _check_precision(self.ctx.precision, self.compiled_facts, self.ov_device)
        return {"ov_device": self.ov_device, "asked": self.ov_config(), "compiled": self.compiled_facts}

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop=None) -> list[list[int]]:
        return generate_ids(self.model, self.tokenizer, prompts, max_new_tokens, self.ends_on(ignore_eos), on_step,
                            "cpu", stop, self.ctx.sampling, self.ctx.sampling_seed(*prompts))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "library": "optimum-intel (OVModelForCausalLM)",
            "versions": _conversion.versions("openvino", "optimum-intel", "optimum", "nncf", "transformers"),
            "provider": f"openvino:{self.ov_device}",
            "ov_device": self.ov_device,
            "kv_cache": self.kv_mode != "none",
            "kv_cache_mode": self.kv_mode,
            "stateful": getattr(self.model, "stateful", None) if self.model is not None else None,
            "batching": "padded batch (left padding)",
            "asked": self.ov_config(),
            "compiled": self.compiled_facts,
            "precision_hint": self.compiled_facts.get("INFERENCE_PRECISION_HINT"),
        }
        if self.conversion:
            info["conversion"] = {k: self.conversion.get(k) for k in
                                  ("model_key", "artifact", "cached", "exporter", "weights", "seconds")}
        return info

    def close(self) -> None:
        self.model = None


_READ_BACK = ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION",
              "DYNAMIC_QUANTIZATION_GROUP_SIZE", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT",
              "EXECUTION_MODE_HINT", "EXECUTION_DEVICES", "ENABLE_HYPER_THREADING")


def compiled_properties(compiled) -> dict[str, Any]:
    """What the compiled model really uses (the hints as the plugin resolved them)."""
    supported = set(compiled.get_property("SUPPORTED_PROPERTIES"))
    out: dict[str, Any] = {}
    for key in _READ_BACK:
        if key in supported:
            try:
                value = compiled.get_property(key)
            except RuntimeError:
                continue
            out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """OpenVINO property values as JSON: element types as 'f32'/'bf16', enums as their names."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    name = getattr(value, "get_type_name", None)
    if callable(name):  # openvino.Type
        return value.get_type_name()
    return str(value).split(".")[-1]


def _check_precision(precision: str, compiled: dict[str, Any], device: str) -> None:
    want = RECIPES[precision][1]
    got = compiled.get("INFERENCE_PRECISION_HINT")
    if got is not None and got != want:
        raise JobError("precision", f"{precision} asked but OpenVINO on {device} runs with inference precision {got}"
                                    f" (this device has no {want} support)",
                       "use a precision this device supports (fp32 runs everywhere)")


# --- conversion --------------------------------------------------------------------------------------------------

def _export(model_dir: Path, out: Path, kv_mode: str) -> dict[str, Any]:
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    task = "text-generation-with-past" if kv_mode != "none" else "text-generation"
    # OVConfig(dtype="fp32") explicitly: without an ov_config, optimum-intel compresses the weights of a model over
    # 1B parameters to int8 on its own, and other dtypes store f16 weights
    main_export(str(model_dir), out, task=task, stateful=kv_mode == "stateful", ov_config=OVConfig(dtype="fp32"),
                convert_tokenizer=False, library_name="transformers", local_files_only=True)
    if not (out / IR_FILE).is_file():
        raise RuntimeError(f"optimum-intel's export wrote no {IR_FILE} ({sorted(p.name for p in out.iterdir())})")
    return {"exporter": {"tool": "optimum.exporters.openvino.main_export", "task": task,
                         "stateful": kv_mode == "stateful", "kv_cache_mode": kv_mode,
                         **_conversion.versions("optimum-intel", "optimum", "openvino", "torch", "transformers")},
            "weights": {"format": "fp32", "constant_types": ir_weight_types(out / IR_FILE), "quantization": None}}


def _compress_int8(source: Path, out: Path, kv_mode: str) -> dict[str, Any]:
    """NNCF's data-free int8 weight compression (asymmetric, per channel) of an fp32 IR, through optimum-intel."""
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    quant = OVWeightQuantizationConfig(bits=8, sym=False)
    model = OVModelForCausalLM.from_pretrained(source, quantization_config=quant, use_cache=kv_mode != "none",
                                               compile=False)
    model.save_pretrained(out)
    types = ir_weight_types(out / IR_FILE)
    if not ({"u8", "i8"} & set(types)):
        raise RuntimeError(f"NNCF left no int8 weights in the IR (weight types {types})")
    return {"exporter": {"tool": "optimum.intel.OVModelForCausalLM(quantization_config=int8) + NNCF",
                         "stateful": kv_mode == "stateful", "kv_cache_mode": kv_mode,
                         **_conversion.versions("optimum-intel", "openvino", "nncf")},
            "weights": {"format": "int8", "constant_types": types,
                        "quantization": {k: v for k, v in quant.to_dict().items()
                                         if k in ("bits", "sym", "group_size", "ratio", "dtype", "all_layers")}}}


def ir_weight_types(xml: Path) -> dict[str, int]:
    """Element types of the IR's weight constants with their element counts (shows f32 vs int8 weights)."""
    import openvino as ov

    counts: dict[str, int] = {}
    for op in ov.Core().read_model(xml).get_ops():
        if op.get_type_name() == "Constant":
            shape = list(op.get_output_shape(0))
            n = 1
            for d in shape:
                n *= int(d)
            if n >= 1024:  # weights, not the small index/shape constants
                t = op.get_element_type().get_type_name()
                counts[t] = counts.get(t, 0) + n
    return dict(sorted(counts.items()))
