"""ONNX Runtime GenAI: its model builder and its C++ generator loop (og.Model, og.GeneratorParams, og.Generator).

prepare: the GenAI model builder (``python -m onnxruntime_genai.models.builder -i <HF folder> -o <cache> -p
<precision> -e cpu|cuda``) writes the ONNX decoder (GroupQueryAttention, KV cache) and genai_config.json into the
engine cache, one build per (model, precision, execution provider) from the HF weights: int8/int4 are its
MatMulNBits weight-only quantisation with its own defaults (read back from the graph into the record: bits, block
size, accuracy level — 4 on the CPU, activations quantised to int8 on the fly), and so is its norms' epsilon (the
0.18 builder gives Phi 1e-6 where the model says 1e-5: recorded). The builder runs in its own process with
transformers 5 first on its path (BUILDER_PATH; images/onnx-genai-cpu/builder/requirements.txt says why); an
architecture it has no builder for is refused with its own words (ConversionError).
generate: one Generator per batch, greedy (do_sample False, one beam), max_length = longest prompt + N. Batches
run together as GenAI batches them: right-padded with the model's pad id — GenAI masks the trailing pad ids of each
row and GroupQueryAttention carries each row's own length (left padding would be attended to). GenAI's own EOS stop
is switched off (genai_config eos_token_id overlaid to []): it would end a row at the model's EOS, and its
min_length would suppress EOS (other tokens than the torch reference's); the loop here ends rows at the runner's
EOS ids and stop rule instead, so a fixed-length run gets exactly N tokens. Threads: the decoder's session options
(intra_op_num_threads) overlaid on genai_config.json; the overlay is recorded. CUDA (onnx-genai-cuda): the builder's
cuda graph, whose genai_config names the CUDA provider; the device GenAI reports is checked after load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.engines import _conversion
from runners.engines import options as o
from runners.engines.base import Engine, StepHook
from runners.errors import JobError

ENGINE_DIR = "onnx-genai"
CONFIG_FILE = "genai_config.json"
MODEL_FILE = "model.onnx"
QUANTISED_BITS = {"int8": 8, "int4": 4}  # the builder's MatMulNBits precisions; fp32/fp16 have none
# transformers 5 (and its hub) for the builder's process only; the runner's own transformers stays the images' 4.57
BUILDER_PATH = Path(os.environ.get("SLM_GENAI_BUILDER_PATH", "/opt/genai-builder"))
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$")


class OnnxGenaiEngine(Engine):
    name = "onnx-genai"
    family = "ONNX Runtime"
    optional_phases = frozenset({"prepare"})
    # the builder's precisions per execution provider: fp32, fp16 (CUDA), MatMulNBits weight-only int8 / int4
    precisions = {"cpu": ("fp32", "int8", "int4"), "cuda": ("fp32", "fp16", "int4")}
    requires = ("onnxruntime_genai",)
    multi_gpu = "one GenAI model runs on one execution provider device"
    greedy_only = "GenAI's own sampler (do_sample, top_p, temperature) is not wired to the job's sampling spec yet"

    @dataclass(frozen=True)
    class Options(o.Options):
        pass

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        reason = super().unavailable(device)
        if reason is None and device == "cuda":
            import onnxruntime_genai as og

            if not og.is_cuda_available():
                reason = "this onnxruntime-genai has no CUDA (onnxruntime-genai-cuda is the package that has it)"
        return reason

    def __init__(self, ctx, tokenizer, options):
        super().__init__(ctx, tokenizer, options)
        self.model = None
        self.conversion: dict[str, Any] = {}
        self.overlay: dict[str, Any] = {}
        self.pad_id: int | None = None
        self.search: dict[str, Any] = {}

    # --- prepare ----------------------------------------------------------------------------------------------------
    def prepare(self, prompts: list) -> dict[str, Any]:
        precision, device = self.ctx.precision, self.ctx.device

        def convert(out: Path) -> dict[str, Any]:
            return build(self.model_dir, out, precision, self.ctx.model_name, device)

        # the builder makes one graph per execution provider (its kernels, its genai_config provider)
        variant = precision if device == "cpu" else f"{precision}-{device}"
        self.conversion = _conversion.ensure(self.cache_dir, ENGINE_DIR, self.ctx.model_name, self.model_dir,
                                             variant, convert, is_complete=_is_complete)
        return self.conversion

    # --- load / generate ----------------------------------------------------------------------------------------------
    def load(self, shape) -> None:
        import onnxruntime_genai as og

        artifact = Path(self.conversion.get("artifact") or "")
        if not _is_complete(artifact):
            raise JobError("cache_dir", f"no GenAI model at {artifact}", "run prepare first")
        self.overlay = config_overlay(self.threads())
        config = og.Config(str(artifact))
        config.overlay(json.dumps(self.overlay))
        self.model = og.Model(config)
        if self.model.device_type.lower() != self.ctx.device:
            raise RuntimeError(f"GenAI was asked for {self.ctx.device} but runs the model on {self.model.device_type}")
        self.pad_id = int(json.loads((artifact / CONFIG_FILE).read_text())["model"]["pad_token_id"])

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop=None) -> list[list[int]]:
        import onnxruntime_genai as og

        rows = right_padded(prompts, self.pad_id)
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, num_beams=1, batch_size=len(prompts),
                                  max_length=rows.shape[1] + max_new_tokens)
        self.search = params.get_search_options()
        generator = og.Generator(self.model, params)
        generator.append_tokens(rows)  # the prefill
        ends = self.ends_on(ignore_eos)
        out: list[list[int]] = [[] for _ in prompts]
        live = set(range(len(prompts)))
        for _ in range(max_new_tokens):
            generator.generate_next_token()
            tokens = generator.get_next_tokens()
            on_step()
            for row in sorted(live):  # rows past their end keep decoding in the batch; their tokens are dropped
                out[row].append(int(tokens[row]))
                if out[row][-1] in ends or (stop is not None and stop.hit(out[row])):
                    live.discard(row)
            if not live:
                break
        return out

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "library": "onnxruntime-genai (og.Model / og.Generator)",
            "versions": _conversion.versions("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime",
                                             "onnxruntime-gpu", "onnx-ir", "numpy"),
            "provider": "CUDAExecutionProvider" if self.ctx.device == "cuda" else "CPUExecutionProvider",
            "device_type": getattr(self.model, "device_type", None),
            "model_type": getattr(self.model, "type", None),
            "batching": "right-padded batch (GenAI masks each row's trailing pad ids; rows decode together)",
            "kv_cache": True,
            "pad_token_id": self.pad_id,
            "config_overlay": self.overlay,
            "intra_op_threads": self.threads(),
            "search": self.search,
            "eos": "GenAI's eos_token_id overlaid to []: rows end at the runner's EOS ids / stop rule in this loop",
        }
        if self.conversion:
            info["conversion"] = {k: self.conversion.get(k) for k in
                                  ("model_key", "artifact", "cached", "exporter", "weights", "norm_epsilon",
                                   "seconds")}
        return info

    def close(self) -> None:
        self.model = None


def config_overlay(threads: int) -> dict[str, Any]:
    """What this engine lays over the builder's genai_config.json: the decoder's threads, and no EOS inside GenAI."""
    return {"model": {"eos_token_id": [],
                      "decoder": {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}


def right_padded(prompts: list[list[int]], pad_id: int | None):
    """The batch as GenAI reads it: rows padded on the right with the model's pad id. GenAI takes a row's trailing
    pad ids for padding, so a prompt that itself ends with the pad id cannot be batched."""
    import numpy as np

    width = max(len(p) for p in prompts)
    if len(prompts) > 1:
        ending = [i for i, p in enumerate(prompts) if p[-1] == pad_id]
        if ending:
            raise JobError("generation.batch_size",
                           f"is {len(prompts)} but prompt {ending[0]} of a batch ends with the pad id {pad_id}, which "
                           "GenAI would take for right padding (and hide from attention)",
                           "run this workload at batch_size 1 on onnx-genai")
    rows = np.full((len(prompts), width), pad_id, dtype=np.int32)
    for i, p in enumerate(prompts):
        rows[i, :len(p)] = p
    return rows


def _is_complete(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / MODEL_FILE).is_file()


# --- conversion --------------------------------------------------------------------------------------------------

def build(model_dir: Path, out: Path, precision: str, model_name: str, device: str = "cpu") -> dict[str, Any]:
    """The GenAI model builder on a local HF folder, in its own process (its transformers first on the path), with
    its scratch folder outside the cache; its failure is a ConversionError carrying its last exception line."""
    scratch = Path(tempfile.mkdtemp(prefix="genai-builder-"))
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(out),
               "-p", precision, "-e", device, "-c", str(scratch)]
    path = [str(BUILDER_PATH)] if BUILDER_PATH.is_dir() else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(path + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        raise _conversion.ConversionError(
            f"{ENGINE_DIR} conversion of {model_name} ({_conversion.architecture(model_dir)}) to {precision} failed: "
            f"the GenAI model builder said {builder_reason(proc.stderr, proc.returncode)}")
    if not _is_complete(out):
        raise RuntimeError(f"the GenAI model builder wrote no {MODEL_FILE} + {CONFIG_FILE} "
                           f"({sorted(p.name for p in out.iterdir())})")
    return {"exporter": {"tool": "onnxruntime_genai.models.builder", "precision": precision,
                         "execution_provider": device, "extra_options": {},
                         **_conversion.versions("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime",
                                                "onnxruntime-gpu", "onnx-ir", "torch"),
                         "transformers": builder_transformers(), "builder_path": path[0] if path else None},
            **graph_facts(out / MODEL_FILE, precision, model_dir),
            "genai_config": json.loads((out / CONFIG_FILE).read_text())["model"].get("type")}


def builder_reason(stderr: str, returncode: int) -> str:
    """The builder's own words: its last exception line (``NotImplementedError: The … model is not currently
    supported.``), else the tail of what it printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    found = [line for line in lines if _EXCEPTION_LINE.match(line)]
    text = found[-1] if found else " | ".join(lines[-3:]) or f"nothing (exit status {returncode})"
    return text[:600]


def builder_transformers() -> str | None:
    """The transformers the builder's process imports: BUILDER_PATH's when there is one, else the runner's."""
    from importlib import metadata

    if BUILDER_PATH.is_dir():
        found = [d.version for d in metadata.distributions(path=[str(BUILDER_PATH)])
                 if d.metadata["Name"] == "transformers"]
        if found:
            return found[0]
    return _conversion.versions("transformers")["transformers"]


def graph_facts(model_file: Path, precision: str, model_dir: Path) -> dict[str, Any]:
    """What the builder's graph holds (read without its external weights): the operators, the MatMulNBits
    quantisation as built (bits, block size, accuracy level) — an fp32 build with quantised weights is refused — and
    its norms' epsilon beside the model's (the 0.18 builder takes rms_norm_eps or 1e-6: Phi's layer_norm_eps 1e-5
    is not read, so its Phi computes another norm, recorded here)."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    ops: dict[str, int] = {}
    nbits: dict[str, set] = {"bits": set(), "block_size": set(), "accuracy_level": set()}
    epsilons: set[float] = set()
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        for attr in node.attribute:
            if node.op_type == "MatMulNBits" and attr.name in nbits:
                nbits[attr.name].add(int(onnx.helper.get_attribute_value(attr)))
            elif node.op_type.endswith("LayerNormalization") and attr.name == "epsilon":
                epsilons.add(float(f"{onnx.helper.get_attribute_value(attr):.6g}"))  # float32 -> 1e-05
    quantised, bits = ops.get("MatMulNBits", 0), QUANTISED_BITS.get(precision)
    if bits is None and quantised:
        raise RuntimeError(f"the builder's {precision} graph has {quantised} MatMulNBits (quantised) nodes")
    if bits is not None and (not quantised or nbits["bits"] != {bits}):
        raise RuntimeError(f"the builder's {precision} graph has MatMulNBits bits {sorted(nbits['bits'])} "
                           f"on {quantised} nodes")
    config = json.loads((Path(model_dir) / "config.json").read_text())
    configured = next((config[k] for k in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon") if k in config),
                      None)
    return {"weights": {"format": precision, "ops": dict(sorted(ops.items())),
                        "matmul_nbits": {"nodes": quantised, **{k: sorted(v) for k, v in nbits.items()}}
                        if quantised else None},
            "norm_epsilon": {"graph": sorted(epsilons), "config": configured,
                             "as_configured": configured is None or epsilons <= {float(f"{configured:.6g}")}}}


# --- the runtime's own loop, for benchmarks/native_tools.py --------------------------------------------------------

def native_decode(artifact_dir: str | Path, prompt_ids: list[int], new_tokens: int, threads: int,
                  warmup: int = 1) -> dict[str, Any]:
    """GenAI's generate loop with nothing around it, timed as its benchmark_e2e.py times it: the prompt (append_tokens)
    apart, then each generate_next_token. Same overlay as the engine (threads, no EOS: exactly ``new_tokens``)."""
    import numpy as np
    import onnxruntime_genai as og

    t0 = time.perf_counter()
    config = og.Config(str(artifact_dir))
    config.overlay(json.dumps(config_overlay(threads)))
    model = og.Model(config)
    load_s = time.perf_counter() - t0
    ids = np.array([prompt_ids], dtype=np.int32)
    for run in range(warmup + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, num_beams=1, max_length=len(prompt_ids) + new_tokens)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        prefill_s = time.perf_counter() - start
        steps = []
        while not generator.is_done():
            t = time.perf_counter()
            generator.generate_next_token()
            steps.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
    decode = steps[1:]  # the first token comes from the prefill's logits
    return {"seconds": seconds, "tokens": len(steps), "prefill_s": prefill_s, "per_token_s": steps, "load_s": load_s,
            "decode_tokens_per_s": len(decode) / sum(decode) if decode else None,
            "output_ids": [int(t) for t in generator.get_sequence(0)[len(prompt_ids):]], "threads": threads}
