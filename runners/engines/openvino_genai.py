"""OpenVINO GenAI: its LLMPipeline (C++ generate loop, greedy sampler and KV-cache management) on the CPU.

prepare: the IR is the openvino engine's own conversion (runners/engines/openvino.py: optimum-intel's stateful
export in fp32, NNCF int8 weight compression of it), found in or added to the same cache entry, so one model has one
IR; the tokenizer and detokenizer become IR too (openvino-tokenizers' convert_tokenizer), a cached conversion of its
own that LLMPipeline loads as a deployment would. A tokenizer it cannot convert is recorded with its reason and the
pipeline runs without one: this engine feeds and reads token ids only.
Attention backends (option ``attention_backend``): "PA" (GenAI's CPU default: PagedAttention, the continuous-batching
scheduler) or "SDPA" (the stateful model's own KV cache). Prefix caching, on by default in LLMPipeline, is switched
off: the warm-up's prompts are the measured ones, and a cached prefix would skip their prefill.
Timing: at batch 1 LLMPipeline.generate with a streamer, whose write() runs once per generated token; GenAI streams
only at batch 1, so a batch of B > 1 runs through the same scheduler as ContinuousBatchingPipeline requests, one
step() per decode step for all of them (PA only: SDPA refuses B > 1 with the reason).
Settings that change the tokens are the openvino engine's (f32 inference precision and f32 KV cache for fp32), read
back from the compiled model: GenAI prints the compiled model's properties when OPENVINO_LOG_LEVEL asks for it,
which is the only view of the model it compiles.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from runners.engines import _conversion
from runners.engines import options as o
from runners.engines.base import Engine, StepHook
from runners.engines.openvino import IR_FILE, OpenVinoEngine, _check_precision
from runners.errors import JobError

ENGINE_DIR = "openvino-genai"
BACKENDS = ("PA", "SDPA")
TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")
UNLIMITED = 2**64 - 1  # size_t max: LLMPipeline's own max_num_batched_tokens (no chunked prefill)


class OpenVinoGenAIEngine(Engine):
    name = "openvino-genai"
    family = "OpenVINO"
    optional_phases = frozenset({"prepare"})
    precisions = {"cpu": ("fp32", "int8")}
    requires = ("openvino_genai", "openvino_tokenizers", "optimum.intel")
    multi_gpu = "it runs on the CPU here; no NVIDIA GPU device"
    greedy_only = "GenAI's own sampler is not wired to the job's sampling spec (temperature, top-p, seed) yet"

    @dataclass(frozen=True)
    class Options(o.Options):
        attention_backend: str = o.option("PA", "PA (PagedAttention, continuous batching: GenAI's CPU default) | "
                                                "SDPA (the stateful model's KV cache; batch 1 only)",
                                          choices=BACKENDS)

    def __init__(self, ctx, tokenizer, options):
        super().__init__(ctx, tokenizer, options)
        # the openvino engine, stateful, with this job's threads: its export, int8 compression and OpenVINO settings
        self.ir = OpenVinoEngine(ctx, tokenizer, OpenVinoEngine.Options(threads=options.threads))
        self.pipe = None
        self.batched = False
        self.conversion: dict[str, Any] = {}
        self.compiled_facts: dict[str, Any] = {}
        self.requests = 0

    # --- prepare ----------------------------------------------------------------------------------------------------
    def prepare(self, prompts: list) -> dict[str, Any]:
        facts = dict(self.ir.prepare(prompts))
        facts["tokenizer"] = _conversion.ensure(self.cache_dir, ENGINE_DIR, self.ctx.model_name, self.model_dir,
                                                "tokenizer", lambda out: _convert_tokenizer(self.model_dir, out))
        self.conversion = facts
        return facts

    # --- load / generate ----------------------------------------------------------------------------------------------
    def properties(self) -> dict[str, Any]:
        """The openvino engine's OpenVINO settings (precision hint, KV-cache precision, threads, …) + the backend."""
        props: dict[str, Any] = {k: v for k, v in self.ir.ov_config().items() if k != "CACHE_DIR"}
        props["ATTENTION_BACKEND"] = self.options.attention_backend
        return props

    def scheduler_config(self):
        import openvino_genai as genai

        config = genai.SchedulerConfig()
        config.max_num_batched_tokens = UNLIMITED
        config.enable_prefix_caching = False
        return config

    def load(self, shape) -> None:
        self.batched = shape.batch_size > 1
        if self.batched and self.options.attention_backend != "PA":
            raise JobError("generation.batch_size", f"is {shape.batch_size} but GenAI streams tokens at batch 1 "
                                                    "only, and its SDPA backend has no step-by-step batch API, so "
                                                    "the decode steps of a batch cannot be timed",
                           "use batch_size 1, or engine_options.attention_backend = \"PA\" (continuous batching)")
        import openvino_genai as genai

        artifact = Path(self.conversion.get("artifact") or "")
        if not (artifact / IR_FILE).is_file():
            raise JobError("cache_dir", f"no OpenVINO IR at {artifact}", "run prepare first")
        props = self.properties()
        tokenizer_dir = Path(self.conversion.get("tokenizer", {}).get("artifact") or "")
        tokenizer = genai.Tokenizer(str(tokenizer_dir)) if (tokenizer_dir / TOKENIZER_FILES[0]).is_file() else None
        with compiled_model_printout() as printed:
            if self.batched:  # PagedAttention by construction: the property is LLMPipeline's, not the plugin's
                del props["ATTENTION_BACKEND"]
                self.pipe = genai.ContinuousBatchingPipeline(str(artifact), self.scheduler_config(), "CPU", props)
            else:
                if props["ATTENTION_BACKEND"] == "PA":
                    props["scheduler_config"] = self.scheduler_config()
                args = (str(artifact), tokenizer, "CPU") if tokenizer is not None else (str(artifact), "CPU")
                self.pipe = genai.LLMPipeline(*args, **props)
        self.compiled_facts = parse_properties(printed.text)
        _check_precision(self.ctx.precision, self.compiled_facts, "CPU")
        self.tokenizer_loaded = tokenizer is not None

    def generation_config(self, max_new_tokens: int, ignore_eos: bool):
        import openvino_genai as genai

        config = genai.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.do_sample = False
        ends = sorted(self.ends_on(ignore_eos))
        if ends:  # set explicitly: GenAI fills an unset EOS from the model folder's generation_config.json
            config.eos_token_id = ends[0]
            config.stop_token_ids = set(ends)
        else:
            config.min_new_tokens = max_new_tokens
            config.ignore_eos = True
        return config

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop=None) -> list[list[int]]:
        config = self.generation_config(max_new_tokens, ignore_eos)
        if self.batched:
            new = self._step_batch(prompts, config, on_step, stop)
        else:
            new = [self._stream_one(prompts[0], config, on_step, stop)]
        eos = self.ends_on(ignore_eos)
        return [_trim(row, eos, stop) for row in new]

    def _stream_one(self, prompt: list[int], config, on_step: StepHook, stop) -> list[int]:
        import openvino_genai as genai

        seen: list[int] = []

        class StepClock(genai.StreamerBase):
            def write(self, token):
                on_step()  # GenAI calls write once per generated token, right after sampling it
                seen.extend([token] if isinstance(token, int) else token)
                stopped = stop is not None and stop.hit(seen)
                return genai.StreamingStatus.STOP if stopped else genai.StreamingStatus.RUNNING

            def end(self):
                pass

        result = self.pipe.generate(_ids_tensor(prompt), config, StepClock())
        return [int(t) for t in result.tokens[0]]

    def _step_batch(self, prompts: list[list[int]], config, on_step: StepHook, stop) -> list[list[int]]:
        pipe = self.pipe
        handles = []
        for prompt in prompts:
            handles.append(pipe.add_request(self.requests, _ids_tensor(prompt), config))
            self.requests += 1
        rows: list[list[int]] = [[] for _ in prompts]
        while pipe.has_non_finished_requests():
            pipe.step()  # one scheduler step: every running request of the batch gets its next token
            if _read(handles, rows):
                on_step()
            if stop is not None:
                for handle, row in zip(handles, rows):
                    if row and stop.hit(row):
                        handle.stop()
        _read(handles, rows)
        return rows

    def describe(self) -> dict[str, Any]:
        backend = self.options.attention_backend
        info: dict[str, Any] = {
            "library": "openvino-genai " + ("(ContinuousBatchingPipeline add_request/step)" if self.batched
                                            else "(LLMPipeline.generate + streamer)"),
            "versions": _conversion.versions("openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel",
                                             "nncf", "transformers"),
            "provider": "openvino-genai:CPU",
            "attention_backend": backend,
            "kv_cache": True,
            "kv_cache_mode": "paged" if backend == "PA" else "stateful",
            "batching": ("continuous batching (PagedAttention scheduler; one step decodes every prompt, no padding)"
                         if self.batched else "batch 1"),
            "scheduler": {"prefix_caching": False, "max_num_batched_tokens": "unlimited"} if backend == "PA" else None,
            "asked": self.properties(),
            "compiled": self.compiled_facts,
            "precision_hint": self.compiled_facts.get("INFERENCE_PRECISION_HINT"),
            "tokenizer_ir_loaded": getattr(self, "tokenizer_loaded", None),
        }
        if self.conversion:
            info["conversion"] = {k: self.conversion.get(k) for k in
                                  ("model_key", "artifact", "cached", "exporter", "weights", "seconds")}
            tokenizer = self.conversion.get("tokenizer", {})
            info["conversion"]["tokenizer"] = {k: tokenizer.get(k) for k in ("artifact", "cached", "converted",
                                                                             "reason", "seconds")}
        return info

    def close(self) -> None:
        self.pipe = None


def _ids_tensor(prompt: list[int]):
    import numpy as np
    import openvino as ov

    return ov.Tensor(np.array([prompt], dtype=np.int64))


def _read(handles, rows: list[list[int]]) -> bool:
    """Append what each request generated since the last read; whether any token came."""
    got = False
    for handle, row in zip(handles, rows):
        if handle.can_read():
            for output in handle.read().values():
                row.extend(int(t) for t in output.generated_ids)
                got = got or len(output.generated_ids) > 0
    return got


def _trim(row: list[int], eos: frozenset[int], stop) -> list[int]:
    """Up to and including the first EOS or the stop rule's token (as served); the whole row at fixed length."""
    cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
    if stop is not None:
        hit = stop.first_hit(row[:cut])
        cut = cut if hit is None else hit + 1
    return row[:cut]


# --- the compiled model's properties --------------------------------------------------------------------------------

class _Printed:
    text = ""


@contextlib.contextmanager
def compiled_model_printout() -> Iterator[_Printed]:
    """GenAI prints each compiled model's properties to stdout (C++, file descriptor 1) when OPENVINO_LOG_LEVEL is
    above WARNING: capture that while the pipeline is built."""
    printed = _Printed()
    saved_level = os.environ.get("OPENVINO_LOG_LEVEL")
    os.environ["OPENVINO_LOG_LEVEL"] = "4"
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield printed
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            if saved_level is None:
                os.environ.pop("OPENVINO_LOG_LEVEL", None)
            else:
                os.environ["OPENVINO_LOG_LEVEL"] = saved_level
            tmp.seek(0)
            printed.text = tmp.read().decode(errors="replace")


def parse_properties(text: str) -> dict[str, Any]:
    """The first 'Model: …' block of GenAI's printout as {property: value} (numbers as int, YES/NO as bool,
    EXECUTION_DEVICES as a list), plus 'model': its title (e.g. 'LLM with Paged Attention')."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("Model: ") and not out:
            out["model"] = line[len("Model: "):].strip()
        elif out and line.startswith("  ") and ":" in line:
            key, _, value = line.strip().partition(":")
            value = value.strip()
            out[key] = (int(value) if value.isdigit() else {"YES": True, "NO": False}.get(value, value))
        elif out:
            break
    if "EXECUTION_DEVICES" in out:
        out["EXECUTION_DEVICES"] = str(out["EXECUTION_DEVICES"]).split()
    return out


# --- conversion --------------------------------------------------------------------------------------------------

def _convert_tokenizer(model_dir: Path, out: Path) -> dict[str, Any]:
    """openvino-tokenizers' tokenizer and detokenizer IR of the model's HF tokenizer. A tokenizer it cannot convert
    is a cached result too ({"converted": False, "reason"}): the engine needs ids only, and a measured run (cache
    read-only) must not try again."""
    facts: dict[str, Any] = {"exporter": {"tool": "openvino_tokenizers.convert_tokenizer(with_detokenizer=True)",
                                          **_conversion.versions("openvino-tokenizers", "openvino", "transformers")}}
    try:
        import openvino as ov
        from openvino_tokenizers import convert_tokenizer
        from transformers import AutoTokenizer

        tokenizer, detokenizer = convert_tokenizer(AutoTokenizer.from_pretrained(model_dir), with_detokenizer=True)
        for model, name in zip((tokenizer, detokenizer), TOKENIZER_FILES):
            ov.save_model(model, out / name)
    except Exception as e:  # noqa: BLE001 — the converter's refusal is the result
        for p in out.iterdir():
            p.unlink()
        return {**facts, "converted": False, "reason": _conversion.exporter_reason(e)}
    return {**facts, "converted": True}


# --- the runtime's own timing (benchmarks/native_tools.py) ----------------------------------------------------------

def native_decode(artifact_dir: str | Path, prompt_ids: list[int], new_tokens: int, threads: int,
                  precision: str = "fp32", repetitions: int = 3) -> dict[str, Any]:
    """LLMPipeline.generate with nothing around it, timed by GenAI's own perf metrics as its benchmark_genai.py does
    (a warm-up generate, then ``repetitions`` generates): seconds and tokens of the last, TTFT and TPOT (mean ± std
    over the repetitions, ms), and the per-token durations GenAI recorded. ``artifact_dir``: the prepared IR."""
    import openvino_genai as genai

    from runners.engines.openvino import RECIPES

    _, hint, kv_precision, group = RECIPES[precision]
    scheduler = genai.SchedulerConfig()
    scheduler.max_num_batched_tokens = UNLIMITED
    scheduler.enable_prefix_caching = False
    pipe = genai.LLMPipeline(str(artifact_dir), "CPU", INFERENCE_PRECISION_HINT=hint, KV_CACHE_PRECISION=kv_precision,
                             DYNAMIC_QUANTIZATION_GROUP_SIZE=str(group), INFERENCE_NUM_THREADS=str(threads),
                             PERFORMANCE_HINT="LATENCY", NUM_STREAMS="1", scheduler_config=scheduler)
    config = genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = new_tokens
    config.ignore_eos, config.do_sample = True, False
    ids = _ids_tensor(prompt_ids)
    pipe.generate(ids, config)
    metrics = None
    for _ in range(repetitions):
        result = pipe.generate(ids, config)
        metrics = result.perf_metrics if metrics is None else metrics + result.perf_metrics
    raw = result.perf_metrics.raw_metrics
    return {"seconds": result.perf_metrics.get_generate_duration().mean / 1000,
            "tokens": len(result.tokens[0]),
            "ttft_ms": [metrics.get_ttft().mean, metrics.get_ttft().std],
            "tpot_ms": [metrics.get_tpot().mean, metrics.get_tpot().std],
            "throughput_tokens_s": metrics.get_throughput().mean,
            "token_durations_ms": [d / 1000 for d in raw.m_durations],
            "repetitions": repetitions}
