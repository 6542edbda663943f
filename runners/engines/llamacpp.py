"""llama.cpp through llama-cpp-python's low-level API (CPU, and CUDA with every layer offloaded).

prepare: HF folder -> GGUF with llama.cpp's own ``convert_hf_to_gguf.py`` (f32, f16), quantised from the f32 GGUF
with ``llama_model_quantize`` (q8_0, q4_K_M); cached under ``<cache>/llamacpp/<model-key>/<precision>/``. It also
checks that the GGUF's tokenizer turns the workload's prompts into the same ids as the HF tokenizer (the ids fed to
the model are always the workload's ids — the inputs file's in same-work mode — as for every runtime).

generate: one llama_context; the prompts of a batch are *parallel sequences* of that context (one llama_decode per
step for the whole batch, sequence ids 0..B-1), or one after the other (``batching="sequential"``). Greedy = argmax
of the logits llama.cpp returns; no sampler, no repetition penalty.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.engines._conversion import ConversionError, architecture, ensure, versions
from runners.engines import options as o
from runners.engines.base import Engine, StepHook, module_found
from runners.errors import JobError

ENGINE_DIR = "llamacpp"
GGUF_NAME = "model.gguf"
# job precision -> how the GGUF is made: ("convert", converter --outtype) or ("quantize", llama_ftype, source precision)
RECIPES: dict[str, tuple] = {
    "fp32": ("convert", "f32"),
    "fp16": ("convert", "f16"),
    "q8_0": ("quantize", "LLAMA_FTYPE_MOSTLY_Q8_0", "fp32"),
    "q4_k_m": ("quantize", "LLAMA_FTYPE_MOSTLY_Q4_K_M", "fp32"),
}
DEFAULT_CONVERTER = "/opt/llama.cpp/convert_hf_to_gguf.py"
BATCHING = ("parallel", "sequential")
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


def converter_path() -> Path:
    return Path(os.environ.get("LLAMA_CPP_CONVERTER", DEFAULT_CONVERTER))


def _converter_reason(output: str) -> str:
    """The converter's own reason: the last exception line of its traceback, else its last non-empty line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*", line):
            return line[:500]
    return (lines[-1] if lines else "no output")[:500]


def sliding_window_dropped(model_dir: Path, gguf: Path, context: int) -> tuple[str | None, dict[str, Any]]:
    """Why llama.cpp would compute something else than the HF model on work of ``context`` tokens (or None), and the
    facts checked: the converter maps some sliding-window models onto an architecture without a window (Mistral ->
    ``llama``; the GGUF then has no ``<arch>.attention.sliding_window``), and past the window llama.cpp attends to the
    whole context."""
    from gguf import GGUFReader

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    fields = GGUFReader(str(gguf)).fields
    arch = str(fields["general.architecture"].contents()) if "general.architecture" in fields else "?"
    window = config.get("sliding_window")
    if config.get("use_sliding_window") is False:  # Qwen2/3 carry a window they do not use
        window = None
    kept = fields.get(f"{arch}.attention.sliding_window")
    kept = int(kept.contents()) if kept is not None else None
    facts = {"gguf_architecture": arch, "sliding_window": {"model": window, "gguf": kept}}
    if window and kept is None and context > window:
        return (f"llama.cpp's {arch!r} architecture has no sliding-window attention: convert_hf_to_gguf.py dropped "
                f"{architecture(model_dir)}'s window of {int(window)} tokens, so past it llama.cpp attends to the "
                f"whole context, another computation than the model's (this work reaches {context} tokens)"), facts
    return None, facts


def gguf_tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type the GGUF holds (shows the quantiser's fallbacks on small shapes)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------------------------------------- engine

class LlamaCppEngine(Engine):
    name = "llamacpp"
    optional_phases = frozenset({"prepare"})
    precisions = {"cpu": tuple(RECIPES), "cuda": tuple(RECIPES)}
    requires = ("llama_cpp", "gguf")

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
        facts = self._ensure(self.ctx.precision)
        self.gguf = Path(facts["artifact"])
        self.conversion = facts
        self.tokenizer_agreement = self._tokenizer_check(self.gguf, prompts)
        return {**facts, "prepare_s": round(time.perf_counter() - t0, 3),
                "tokenizer_agreement": self.tokenizer_agreement}

    def _ensure(self, precision: str) -> dict[str, Any]:
        """The GGUF at ``precision`` from the shared engine cache (made now when the cache is writable); quantised
        precisions are made from the cached f32 GGUF, which is converted first when it is missing."""
        recipe = RECIPES[precision]

        def convert(tmp: Path) -> dict[str, Any]:
            out = tmp / GGUF_NAME
            if recipe[0] == "convert":
                facts = self._convert(out, recipe[1])
            else:
                source = self._ensure(recipe[2])
                facts = self._quantize(Path(source["artifact"]), out, recipe[1])
                facts["source"] = {"precision": recipe[2], "artifact": source["artifact"],
                                   "cached": source["cached"]}
            return {**facts, "tensor_types": gguf_tensor_types(out),
                    "llama_cpp_python": versions("llama_cpp_python")["llama_cpp_python"]}

        facts = ensure(self.cache_dir, ENGINE_DIR, self.ctx.model_name, self.model_dir, precision, convert,
                       is_complete=lambda dest: (dest / GGUF_NAME).is_file())
        return {**facts, "artifact": str(Path(facts["artifact"]) / GGUF_NAME)}

    def _convert(self, out: Path, outtype: str) -> dict[str, Any]:
        converter = converter_path()
        if not converter.is_file():
            raise ConversionError(f"llama.cpp's converter is not at {converter} (set LLAMA_CPP_CONVERTER; the "
                                  "llamacpp images keep it under /opt/llama.cpp)")
        cmd = [sys.executable, str(converter), str(self.model_dir), "--outfile", str(out), "--outtype", outtype]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (out.parent / "convert.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not out.is_file():
            arch = architecture(self.model_dir)
            raise ConversionError(f"llama.cpp's convert_hf_to_gguf.py rejected {self.ctx.model_name} ({arch}): "
                                  f"{_converter_reason(proc.stderr + proc.stdout)}")
        return {"conversion": "convert_hf_to_gguf.py", "converter": str(converter), "outtype": outtype}

    def _quantize(self, source: Path, out: Path, ftype_name: str) -> dict[str, Any]:
        import llama_cpp

        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, ftype_name)
        params.nthread = self.threads()
        with _captured_log() as log:
            rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
        (out.parent / "quantize.log").write_text("".join(log))
        if rc != 0 or not out.is_file():
            raise ConversionError(f"llama_model_quantize({ftype_name}) of {source} failed (rc {rc}): "
                                  f"{_converter_reason(''.join(log))}")
        fallbacks = sorted({line.strip() for line in log if "fallback" in line})
        return {"conversion": "llama_model_quantize", "ftype": ftype_name, "threads": params.nthread,
                "fallbacks": fallbacks[:20], "fallback_count": len(fallbacks)}

    def _tokenizer_check(self, gguf: Path, prompts: list) -> dict[str, Any]:
        """Tokenise the workload's prompts with the GGUF's own tokenizer and compare with the ids generation uses
        (the workload's: the inputs file's in same-work mode, else this image's HF tokenizer's)."""
        try:
            import llama_cpp

            llama_cpp.llama_backend_init()
            params = llama_cpp.llama_model_default_params()
            params.vocab_only = True
            with _captured_log():
                model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
            if not model:
                return {"checked": False, "reason": f"llama.cpp could not load the vocabulary of {gguf}"}
            try:
                vocab = llama_cpp.llama_model_get_vocab(model)
                mismatches, identical = [], 0
                for p in prompts:
                    hf = list(p.ids) if p.ids is not None else list(self.tokenizer(p.text)["input_ids"])
                    ours = _tokenize(llama_cpp, vocab, p.text)
                    if hf == ours:
                        identical += 1
                    elif len(mismatches) < 5:
                        mismatches.append({"task_id": p.task_id, "text": p.text, "hf": hf, "gguf": ours})
                return {"checked": True, "prompts": len(prompts), "identical": identical,
                        "share_identical": identical / len(prompts) if prompts else None,
                        "gguf_vocab": llama_cpp.llama_vocab_n_tokens(vocab), "hf_vocab": len(self.tokenizer),
                        "gguf_adds_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
                        "mismatches": mismatches,
                        "note": "generation always uses the workload's token ids; this only says whether "
                                "llama.cpp's own tokenizer would have produced the same ids"}
            finally:
                llama_cpp.llama_model_free(model)
        except Exception as e:  # noqa: BLE001 — a failed check is recorded, it does not stop the trial
            return {"checked": False, "reason": f"{type(e).__name__}: {e}"}

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
        with _captured_log() as log:
            self.model = llama_cpp.llama_model_load_from_file(str(self.gguf).encode(), mparams)
            if not self.model:
                raise RuntimeError(f"llama.cpp could not load {self.gguf}: {_converter_reason(''.join(log))}")
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
                                   f"{_converter_reason(''.join(log))}")
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
        self.eos = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        # the same EOS set as the torch reference: the tokenizer's EOS and config.json's eos_token_id
        from types import SimpleNamespace

        from runners.engines.hf_generate import eos_ids

        try:
            config = json.loads((Path(self.model_dir) / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        return eos_ids(self.tokenizer, SimpleNamespace(eos_token_id=config.get("eos_token_id")))

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
        active = []
        def goes_on(s: int, tok: int) -> bool:  # EOS (as served), then the runner's stop rule
            return (ignore_eos or tok not in self.eos) and not (stop is not None and stop.hit(out[s]))

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

def _tokenize(llama_cpp, vocab, text: str) -> list[int]:
    data = text.encode("utf-8")
    cap = len(data) + 16
    buf = (llama_cpp.llama_token * cap)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, True, True)
    if n < 0:  # too small: -n is the size needed
        cap = -n
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, True, True)
    return list(buf[:n])


def _model_desc(llama_cpp, model) -> str:
    buf = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(model, buf, 256)
    return buf.value.decode(errors="replace")


class _captured_log:
    """Route llama.cpp's log into a list for the duration (warnings and errors still reach stderr)."""

    def __enter__(self) -> list[str]:
        import llama_cpp

        self.lines: list[str] = []
        self._llama = llama_cpp

        def callback(level, text, _user):
            line = text.decode("utf-8", errors="replace") if text else ""
            self.lines.append(line)
            if level in (2, 3):
                sys.stderr.write(line)

        self._cb = llama_cpp.llama_log_callback(callback)  # keep a reference while C may call it
        llama_cpp.llama_log_set(self._cb, ctypes.c_void_p(0))
        return self.lines

    def __exit__(self, *exc) -> None:
        from llama_cpp import _logger

        self._llama.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
