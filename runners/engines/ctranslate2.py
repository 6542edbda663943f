"""CTranslate2 (its Generator: C++ decoding loop, KV cache, its own batching) on the CPU.

prepare: ctranslate2.converters.TransformersConverter (its Python API, on the local model folder, no network) writes
the model into the engine cache once per (model, precision) with CTranslate2's own weight quantisation: fp32 =
"float32" weights, int8 = "int8" weights (per output channel). An architecture the converter cannot convert (no
loader registered, or a loader that does not read this transformers version's config) fails prepare with the
converter's own reason (ConversionError).
load: ctranslate2.Generator(artifact, device="cpu", compute_type=…, intra_threads=threads, inter_threads=1); the
compute type it really runs (Generator.compute_type) is checked against the precision asked and recorded.
generate: token ids in, ids out. CTranslate2 takes prompts as vocabulary tokens, so the ids are mapped through the
converted model's own vocabulary.json (never re-tokenised) and its results are read back as ids (sequences_ids).
Greedy = sampling_topk 1. Fixed length: end_token [] (no end token at all: the model's EOS is not even suppressed,
which min_length would do and which would change the argmax), max_length N with include_prompt_in_result False, so
max_length counts new tokens only: exactly N. As served: end_token = the runner's EOS ids, return_end_token True,
and the runner's stop rule through the per-token callback (True ends that row).
Batching is CTranslate2's own (generate_batch, one call per batch): the prompts' common length is forwarded at once,
a longer prompt's remaining tokens are fed one per step inside the batch's decoding loop (its constrained decoding),
so a batch whose prompts differ by D tokens takes N + D decode steps; on_step is called once per such step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from runners.engines import _conversion
from runners.engines.base import Engine, StepHook
from runners.errors import JobError

ENGINE_DIR = "ctranslate2"
MODEL_FILE = "model.bin"
VOCABULARY_FILE = "vocabulary.json"
# precision -> (the converter's weight quantization, the compute type the Generator runs)
RECIPES = {
    "fp32": ("float32", "float32"),
    "int8": ("int8", "int8_float32"),  # int8 weights and matmuls (activations quantised per call), the rest fp32
}
BATCHING = ("runtime batch (CTranslate2 generate_batch: the prompts' common length forwarded at once, the rest of "
            "each longer prompt fed one token per step in the batch's decoding loop)")


class CTranslate2Engine(Engine):
    name = "ctranslate2"
    family = "CTranslate2"
    optional_phases = frozenset({"prepare"})
    precisions = {"cpu": tuple(RECIPES)}
    requires = ("ctranslate2",)
    multi_gpu = "it runs on the CPU here"

    def __init__(self, ctx, tokenizer, options):
        super().__init__(ctx, tokenizer, options)
        self.generator = None
        self.vocabulary: list[str] = []
        self.conversion: dict[str, Any] = {}

    # --- prepare ----------------------------------------------------------------------------------------------------
    def prepare(self, prompts: list) -> dict[str, Any]:
        quantization = RECIPES[self.ctx.precision][0]
        facts = _conversion.ensure(self.cache_dir, ENGINE_DIR, self.ctx.model_name, self.model_dir,
                                   self.ctx.precision, lambda out: convert(self.model_dir, out, quantization),
                                   is_complete=lambda d: (d / MODEL_FILE).is_file())
        self.conversion = facts
        return facts

    # --- load / generate ----------------------------------------------------------------------------------------------
    def load(self, shape) -> None:
        import ctranslate2

        artifact = Path(self.conversion.get("artifact") or "")
        if not (artifact / MODEL_FILE).is_file():
            raise JobError("cache_dir", f"no CTranslate2 model at {artifact}", "run prepare first")
        self.vocabulary = read_vocabulary(artifact)
        if len(self.tokenizer) > len(self.vocabulary):
            raise JobError("model", f"the tokenizer has {len(self.tokenizer)} ids but the converted vocabulary "
                                    f"{len(self.vocabulary)} tokens", "convert the model again (prepare)")
        self.generator = ctranslate2.Generator(str(artifact), device="cpu", compute_type=RECIPES[self.ctx.precision][1],
                                               intra_threads=self.threads(), inter_threads=1)
        check_compute_type(self.ctx.precision, self.generator.compute_type)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop=None) -> list[list[int]]:
        eos = self.ends_on(ignore_eos)
        rows: list[list[int]] = [[] for _ in prompts]
        seen = [-1]

        def callback(step) -> bool:
            # called per generated token per row (rows still being fed their prompt get none); the first call of a
            # step means the batch's step is done. Steps in which no row produced a token (every short row ended
            # while a long one was still being fed) are counted when the next token arrives.
            while seen[0] < step.step:
                seen[0] += 1
                on_step()
            rows[step.batch_id].append(step.token_id)
            return stop is not None and stop.hit(rows[step.batch_id])

        results = self.generator.generate_batch(
            [self.tokens(p) for p in prompts], max_length=max_new_tokens, include_prompt_in_result=False,
            end_token=sorted(eos), return_end_token=True, callback=callback, **self.decoding(prompts))
        # as served a row ends at its EOS (returned) or at the token whose callback said stop: nothing to trim
        out = [list(r.sequences_ids[0]) for r in results]
        if ignore_eos and any(len(row) != max_new_tokens for row in out):
            raise RuntimeError(f"CTranslate2 returned {[len(row) for row in out]} new tokens where {max_new_tokens} "
                               "were asked")
        return out

    def tokens(self, ids: list[int]) -> list[str]:
        """Prompt ids as the converted model's vocabulary tokens (CTranslate2's input): a mapping, not a tokeniser."""
        vocab = self.vocabulary
        return [vocab[i] for i in ids]

    def decoding(self, prompts: list[list[int]]) -> dict[str, Any]:
        sampling = self.ctx.sampling
        if sampling is None:
            return {"sampling_topk": 1}
        import ctranslate2

        ctranslate2.set_random_seed(self.ctx.sampling_seed(*prompts))
        # topk 0: the whole vocabulary, then nucleus and temperature, as the other engines sample
        return {"sampling_topk": 0, "sampling_topp": sampling.top_p, "sampling_temperature": sampling.temperature}

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "library": "ctranslate2 (Generator.generate_batch)",
            "versions": _conversion.versions("ctranslate2", "transformers", "torch"),
            "provider": "ctranslate2:cpu",
            "compute_type_asked": RECIPES[self.ctx.precision][1],
            "compute_type": getattr(self.generator, "compute_type", None),
            "intra_threads": self.threads(),
            "inter_threads": 1,
            "kv_cache": True,
            "batching": BATCHING,
            # a batch's decode steps include (longest - shortest prompt) steps that feed prompt tokens
            "prompt_tail_in_decode_loop": True,
            "decoding": {"include_prompt_in_result": False, "fixed_length": "end_token [] (no end token), "
                         "max_length = new tokens", "as_served": "end_token = the runner's EOS ids, "
                         "return_end_token, stop rule through the callback"},
        }
        if self.conversion:
            info["conversion"] = {k: self.conversion.get(k) for k in
                                  ("model_key", "artifact", "cached", "converter", "quantization",
                                           "saved_compute_type", "seconds")}
        return info

    def close(self) -> None:
        self.generator = None


def check_compute_type(precision: str, got: str) -> None:
    want = RECIPES[precision][1]
    if got != want:
        raise JobError("precision", f"{precision} asked (compute type {want}) but CTranslate2 runs {got} on this CPU",
                       "use a precision whose compute type this CPU supports (float32 runs everywhere)")


def read_vocabulary(artifact: Path) -> list[str]:
    """The converted model's id -> token table; a token listed twice would make the id -> token mapping lossy."""
    vocab = json.loads((Path(artifact) / VOCABULARY_FILE).read_text())
    if len(set(vocab)) != len(vocab):
        raise JobError("model", f"{artifact / VOCABULARY_FILE} lists {len(vocab) - len(set(vocab))} tokens twice: "
                                "ids cannot be passed to CTranslate2 as tokens one to one",
                       "use another engine for this model")
    return vocab


# --- conversion --------------------------------------------------------------------------------------------------

def convert(model_dir: Path, out: Path, quantization: str) -> dict[str, Any]:
    """TransformersConverter into ``out`` (the ensure() temp folder; force: it exists already)."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    converter = TransformersConverter(str(model_dir), load_as_float16=False, low_cpu_mem_usage=True,
                                      trust_remote_code=False)
    converter.convert(str(out), quantization=quantization, force=True)
    if not (out / MODEL_FILE).is_file():
        raise RuntimeError(f"the converter wrote no {MODEL_FILE} ({sorted(p.name for p in out.iterdir())})")
    # compute type "default" keeps the saved weights' type: what the file really holds, read back
    saved = ctranslate2.Generator(str(out), device="cpu", compute_type="default", intra_threads=1).compute_type
    return {"converter": {"tool": "ctranslate2.converters.TransformersConverter", "load_as_float16": False,
                          **_conversion.versions("ctranslate2", "transformers", "torch")},
            "quantization": quantization, "saved_compute_type": saved, "vocabulary": len(read_vocabulary(out))}


def native_decode(artifact_dir: str | Path, prompt_ids: list[int], new_tokens: int, threads: int,
                  precision: str = "fp32") -> dict[str, Any]:
    """CTranslate2's generate loop with no harness around it, timed as its own benchmark scripts time it (wall clock
    around generate_batch), for benchmarks/native_tools.py: batch 1, greedy, exactly ``new_tokens`` new tokens.
    The per-token callback's timestamps give the first token's time and the decode rate after it. ``precision``: the
    artifact's (RECIPES), which sets the compute type."""
    import ctranslate2

    vocab = read_vocabulary(Path(artifact_dir))
    generator = ctranslate2.Generator(str(artifact_dir), device="cpu", compute_type=RECIPES[precision][1],
                                      intra_threads=threads, inter_threads=1)
    stamps: list[float] = []
    t0 = time.perf_counter()
    result = generator.generate_batch([[vocab[i] for i in prompt_ids]], max_length=new_tokens, sampling_topk=1,
                                      include_prompt_in_result=False, end_token=[],
                                      callback=lambda step: stamps.append(time.perf_counter()) and False)
    seconds = time.perf_counter() - t0
    ids = result[0].sequences_ids[0]
    decode = stamps[-1] - stamps[0] if len(stamps) > 1 else None
    return {"seconds": seconds, "tokens": len(ids), "first_token_s": stamps[0] - t0 if stamps else None,
            "decode_tokens_per_s": (len(stamps) - 1) / decode if decode else None,
            "per_token_s": [b - a for a, b in zip(stamps, stamps[1:])], "compute_type": generator.compute_type,
            "output_ids": list(ids)}
