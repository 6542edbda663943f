"""llama.cpp through llama-cpp-python's low-level API (CPU, and CUDA with every layer offloaded).

prepare: the HF folder as a GGUF in the engine cache (runners/engines/_gguf.py: llama.cpp's own converter, then
``llama_model_quantize`` for q8_0 / q4_K_M), and a check that the GGUF's tokenizer turns the workload's prompts into
the same ids as the HF tokenizer (the ids fed to the model are always the workload's ids — the inputs file's in
same-work mode — as for every runtime).

generate: one llama_context; the prompts of a batch are *parallel sequences* of that context (one llama_decode per
step for the whole batch, sequence ids 0..B-1), or one after the other (``batching="sequential"``). Greedy = argmax
of the logits llama.cpp returns; no sampler, no repetition penalty. A sequence ends on the runner's EOS ids.
"""

from __future__ import annotations

import ctypes
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.engines import options as o
from runners.engines._conversion import versions
from runners.engines._gguf import (RECIPES, captured_log, converter_path, converter_reason, ensure_gguf,
                                   sliding_window_dropped, tokenizer_check)
from runners.engines.base import Engine, StepHook, module_found
from runners.errors import JobError

BATCHING = ("parallel", "sequential")
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


class LlamaCppEngine(Engine):
    name = "llamacpp"
    family = "llama.cpp"
    optional_phases = frozenset({"prepare"})
    precisions = {"cpu": tuple(RECIPES), "cuda": tuple(RECIPES)}
    greedy_only = "argmax of llama_get_logits over its batch API; its sampler chain is not wired in"
    requires = ("llama_cpp", "gguf")
    # llama.cpp can split layers over GPUs (split_mode), but this engine does not set it up or check where they went
    multi_gpu = "the engine offloads to one GPU; llama.cpp's split_mode is not wired in"

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        if device not in cls.precisions:
            return f"the {cls.name} engine does not run on {device}"
        missing = [m for m in cls.requires if not module_found(m)]
        if missing:
            return f"{', '.join(missing)} not installed"
        if not converter_path().is_file():  # prepare converts HF folders with llama.cpp's own script
            return f"llama.cpp's convert_hf_to_gguf.py is not at {converter_path()} (set LLAMA_CPP_CONVERTER)"
        if device == "cuda":  # no torch here: ask llama.cpp itself
            import llama_cpp

            if not llama_cpp.llama_supports_gpu_offload():
                return "this llama-cpp-python build has no GPU offload (build it with GGML_CUDA=on)"
        return None

    @dataclass(frozen=True)
    class Options(o.Options):
        threads: int | None = o.option(None, "CPU threads for decoding (llama n_threads; default: all visible "
                                             "cores)", minimum=1)
        threads_batch: int | None = o.option(None, "CPU threads for prompt processing (n_threads_batch; default: "
                                                   "= threads)", minimum=1)
        batching: str = o.option("parallel", "parallel (the batch's prompts as parallel sequences of one context) "
                                             "| sequential (one prompt after the other)", choices=BATCHING)
        n_gpu_layers: int = o.option(-1, "layers offloaded to the GPU on cuda (-1 = all); ignored on cpu (0)")
        flash_attn: str = o.option("auto", "auto | on | off", choices=FLASH_ATTN)
        n_batch: int | None = o.option(None, "logical batch size for prompt processing (default: llama.cpp's, "
                                             "2048)", minimum=1)
        n_ubatch: int | None = o.option(None, "physical batch size (default: llama.cpp's, 512)", minimum=1)

    def __init__(self, ctx, tokenizer, options):
        super().__init__(ctx, tokenizer, options)
        self.gguf: Path | None = None
        self.conversion: dict[str, Any] = {}
        self.tokenizer_agreement: dict[str, Any] | None = None
        self.model = self.lctx = None
        self._batch = None
        self._logs: list[str] = []
        self._facts: dict[str, Any] = {}

    def check_host(self) -> None:
        if self.ctx.device != "cuda":
            return
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            raise JobError("device", "cuda asked but this llama.cpp build has no GPU offload",
                           "run cuda jobs of the llamacpp engine in the llamacpp-cuda image")
        from runners.meters import nvml

        gpus, reason = nvml.discover()
        if not gpus:
            raise JobError("device", f"cuda asked but no NVIDIA GPU is visible ({reason})",
                           "run cuda jobs on a host with an NVIDIA GPU (and the NVIDIA container runtime)")

    # --- prepare ------------------------------------------------------------------------------------------------
    def prepare(self, prompts: list) -> dict[str, Any]:
        t0 = time.perf_counter()
        facts = ensure_gguf(self.cache_dir, self.ctx.model_name, self.model_dir, self.ctx.precision, self.threads())
        self.gguf = Path(facts["artifact"])
        self.conversion = facts
        self.tokenizer_agreement = tokenizer_check(self.gguf, prompts, self.tokenizer)
        return {**facts, "prepare_s": round(time.perf_counter() - t0, 3),
                "tokenizer_agreement": self.tokenizer_agreement}

    # --- load -----------------------------------------------------------------------------------------------------
    def load(self, shape) -> None:
        import llama_cpp

        if self.gguf is None:
            raise RuntimeError("prepare() must run before load()")
        problem, facts = sliding_window_dropped(self.model_dir, self.gguf, shape.context)
        if problem:  # a refusal with the reason, rather than a number for other work
            raise JobError("model", problem, "keep prompt + new tokens within the window, or run this model on "
                                             "another runtime")
        self._facts["conversion_checks"] = facts
        opts = self.options
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = opts.n_gpu_layers if self.ctx.device == "cuda" else 0
        with captured_log() as log:
            self.model = llama_cpp.llama_model_load_from_file(str(self.gguf).encode(), mparams)
            if not self.model:
                raise RuntimeError(f"llama.cpp could not load {self.gguf}: {converter_reason(''.join(log))}")
            self.vocab = llama_cpp.llama_model_get_vocab(self.model)
            self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

            self.batching = opts.batching
            n_seq = shape.batch_size if self.batching == "parallel" else 1
            self.n_ctx_seq = 256 * -(-(shape.context + 1) // 256)  # room per sequence, in llama.cpp's steps
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = n_seq * self.n_ctx_seq
            cparams.n_seq_max = n_seq
            cparams.n_threads = self.threads()
            cparams.n_threads_batch = int(opts.threads_batch or self.threads())
            cparams.flash_attn_type = FLASH_ATTN[opts.flash_attn]
            cparams.no_perf = False
            if opts.n_batch:
                cparams.n_batch = opts.n_batch
            if opts.n_ubatch:
                cparams.n_ubatch = opts.n_ubatch
            self.lctx = llama_cpp.llama_init_from_model(self.model, cparams)
            if not self.lctx:
                raise RuntimeError(f"llama.cpp could not create a context (n_ctx {cparams.n_ctx}, n_seq {n_seq}): "
                                   f"{converter_reason(''.join(log))}")
        self._logs = log
        self.n_batch = llama_cpp.llama_n_batch(self.lctx)
        self._batch = llama_cpp.llama_batch_init(max(self.n_batch, n_seq), 0, 1)
        offload = [m for line in log for m in [re.search(r"offloaded (\d+)/(\d+) layers to GPU", line)] if m]
        offloaded = offload[-1].group(0) if offload else None
        self._facts = {
            "n_ctx": llama_cpp.llama_n_ctx(self.lctx), "n_ctx_seq": llama_cpp.llama_n_ctx_seq(self.lctx),
            "n_seq_max": llama_cpp.llama_n_seq_max(self.lctx), "n_batch": self.n_batch,
            "n_ubatch": llama_cpp.llama_n_ubatch(self.lctx), "n_threads": llama_cpp.llama_n_threads(self.lctx),
            "n_threads_batch": llama_cpp.llama_n_threads_batch(self.lctx), "kv_unified": bool(cparams.kv_unified),
            "flash_attn": opts.flash_attn, "n_gpu_layers": mparams.n_gpu_layers,
            "n_layer": llama_cpp.llama_model_n_layer(self.model), "offload": offloaded,
            "model_params": llama_cpp.llama_model_n_params(self.model),
            "model_bytes": llama_cpp.llama_model_size(self.model), "model_desc": _model_desc(llama_cpp, self.model),
        }
        if self.ctx.device == "cuda" and not (offload and int(offload[-1].group(1)) > 0):
            raise RuntimeError(f"cuda asked but llama.cpp offloaded no layer to the GPU ({offloaded or 'no log'})")
    # --- generate -------------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop=None) -> list[list[int]]:
        if self.batching == "sequential":
            return [self._generate([p], max_new_tokens, ignore_eos, on_step, stop)[0] for p in prompts]
        return self._generate(prompts, max_new_tokens, ignore_eos, on_step, stop)

    def _generate(self, prompts: list[list[int]], max_new: int, ignore_eos: bool,
                  on_step: StepHook, stop=None) -> list[list[int]]:
        import llama_cpp
        import numpy as np

        n = len(prompts)
        if any(len(p) + max_new > self.n_ctx_seq for p in prompts):
            raise RuntimeError(f"a prompt + {max_new} new tokens exceeds the context per sequence ({self.n_ctx_seq})")
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.lctx), True)
        batch = self._batch
        out: list[list[int]] = [[] for _ in range(n)]

        def decode(items: list[tuple[int, int, int, bool]]) -> list[int]:
            """items: (token, pos, seq, wants_logits) -> argmax per wanted row, in order."""
            batch.n_tokens = len(items)
            for i, (tok, pos, seq, want) in enumerate(items):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = want
            rc = llama_cpp.llama_decode(self.lctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            rows = sum(1 for it in items if it[3])
            if not rows:
                return []
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.lctx), shape=(rows, self.n_vocab))
            return logits.argmax(axis=1).tolist()

        # prefill: every prompt's tokens, chunked by n_batch; logits only for each prompt's last token
        flat = [(tok, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, tok in enumerate(p)]
        firsts: list[int] = []
        for start in range(0, len(flat), self.n_batch):
            firsts += decode(flat[start:start + self.n_batch])
        ends = self.ends_on(ignore_eos)
        active = []

        def goes_on(s: int, tok: int) -> bool:  # the runner's EOS ids (as served), then its stop rule
            return tok not in ends and not (stop is not None and stop.hit(out[s]))

        for s, tok in enumerate(firsts):
            out[s].append(tok)
            if goes_on(s, tok):
                active.append(s)
        on_step()
        for step in range(1, max_new):
            if not active:
                break
            nxt = decode([(out[s][-1], len(prompts[s]) + step - 1, s, True) for s in active])
            still = []
            for s, tok in zip(active, nxt):
                out[s].append(tok)
                if goes_on(s, tok):
                    still.append(s)
            active = still
            on_step()
        return out

    # --- facts ----------------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "library": "llama-cpp-python (low-level API)",
            "llama_cpp_python": versions("llama_cpp_python")["llama_cpp_python"],
            "provider": "cuda" if self.ctx.device == "cuda" else "cpu",
            "gguf": str(self.gguf) if self.gguf else None,
            "gguf_type": self.conversion.get("outtype") or self.conversion.get("ftype"),
            "tensor_types": self.conversion.get("tensor_types"),
            "kv_cache": True,
            "sampling": "greedy: argmax of llama_get_logits (no sampler chain)",
            "batching": None if self.lctx is None else (
                "parallel sequences (one llama_context, one llama_decode per step for the whole batch)"
                if self.batching == "parallel" else "sequential prompts (one llama_context, batch run one by one)"),
            "threads": self.threads(),
            "tokenizer_agreement": self.tokenizer_agreement,
            **self._facts,
        }
        try:
            import llama_cpp

            info["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
            info["gpu_offload_supported"] = bool(llama_cpp.llama_supports_gpu_offload())
        except Exception:  # noqa: BLE001 — describe() must never fail
            pass
        return info

    def close(self) -> None:
        try:
            import llama_cpp
        except ImportError:
            return
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self.lctx:
            llama_cpp.llama_free(self.lctx)
            self.lctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


# ---------------------------------------------------------------------------------------------------------- helpers

def _model_desc(llama_cpp, model) -> str:
    buf = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(model, buf, 256)
    return buf.value.decode(errors="replace")
