"""The llama.cpp engine's prepare side: an HF folder made into a GGUF in the engine cache, and the checks of a GGUF.

HF folder -> GGUF with llama.cpp's own ``convert_hf_to_gguf.py`` (f32, f16), quantised from the f32 GGUF with
``llama_model_quantize`` (q8_0, q4_K_M); cached under ``<cache>/llamacpp/<model-key>/<precision>/``. The GGUF's own
tokenizer is checked against the workload's prompt ids, and its architecture against the model's sliding window.
The engine that runs a GGUF is runners/engines/llamacpp.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from runners.engines._conversion import ConversionError, architecture, ensure, versions

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


def converter_path() -> Path:
    return Path(os.environ.get("LLAMA_CPP_CONVERTER", DEFAULT_CONVERTER))


def converter_reason(output: str) -> str:
    """The converter's own reason: the last exception line of its traceback, else its last non-empty line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*", line):
            return line[:500]
    return (lines[-1] if lines else "no output")[:500]


def ensure_gguf(cache_dir: Path | None, model_name: str, model_dir: Path, precision: str,
                threads: int) -> dict[str, Any]:
    """The GGUF at ``precision`` from the shared engine cache (made now when the cache is writable); quantised
    precisions are made from the cached f32 GGUF, which is converted first when it is missing."""
    recipe = RECIPES[precision]

    def convert(tmp: Path) -> dict[str, Any]:
        out = tmp / GGUF_NAME
        if recipe[0] == "convert":
            facts = _convert(model_dir, model_name, out, recipe[1])
        else:
            source = ensure_gguf(cache_dir, model_name, model_dir, recipe[2], threads)
            facts = _quantize(Path(source["artifact"]), out, recipe[1], threads)
            facts["source"] = {"precision": recipe[2], "artifact": source["artifact"], "cached": source["cached"]}
        return {**facts, "tensor_types": gguf_tensor_types(out),
                "llama_cpp_python": versions("llama_cpp_python")["llama_cpp_python"]}

    facts = ensure(cache_dir, ENGINE_DIR, model_name, model_dir, precision, convert,
                   is_complete=lambda dest: (dest / GGUF_NAME).is_file())
    return {**facts, "artifact": str(Path(facts["artifact"]) / GGUF_NAME)}


def _convert(model_dir: Path, model_name: str, out: Path, outtype: str) -> dict[str, Any]:
    converter = converter_path()
    if not converter.is_file():
        raise ConversionError(f"llama.cpp's converter is not at {converter} (set LLAMA_CPP_CONVERTER; the "
                              "llamacpp images keep it under /opt/llama.cpp)")
    cmd = [sys.executable, str(converter), str(model_dir), "--outfile", str(out), "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (out.parent / "convert.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out.is_file():
        raise ConversionError(f"llama.cpp's convert_hf_to_gguf.py rejected {model_name} ({architecture(model_dir)}): "
                              f"{converter_reason(proc.stderr + proc.stdout)}")
    return {"conversion": "convert_hf_to_gguf.py", "converter": str(converter), "outtype": outtype}


def _quantize(source: Path, out: Path, ftype_name: str, threads: int) -> dict[str, Any]:
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = threads
    with captured_log() as log:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    (out.parent / "quantize.log").write_text("".join(log))
    if rc != 0 or not out.is_file():
        raise ConversionError(f"llama_model_quantize({ftype_name}) of {source} failed (rc {rc}): "
                              f"{converter_reason(''.join(log))}")
    fallbacks = sorted({line.strip() for line in log if "fallback" in line})
    return {"conversion": "llama_model_quantize", "ftype": ftype_name, "threads": params.nthread,
            "fallbacks": fallbacks[:20], "fallback_count": len(fallbacks)}


def tokenizer_check(gguf: Path, prompts: list, tokenizer: Any) -> dict[str, Any]:
    """Tokenise the workload's prompts with the GGUF's own tokenizer and compare with the ids generation uses
    (the workload's: the inputs file's in same-work mode, else this image's HF tokenizer's)."""
    try:
        import llama_cpp

        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        with captured_log():
            model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
        if not model:
            return {"checked": False, "reason": f"llama.cpp could not load the vocabulary of {gguf}"}
        try:
            vocab = llama_cpp.llama_model_get_vocab(model)
            mismatches, identical = [], 0
            for p in prompts:
                hf = list(p.ids) if p.ids is not None else list(tokenizer(p.text)["input_ids"])
                ours = _tokenize(llama_cpp, vocab, p.text)
                if hf == ours:
                    identical += 1
                elif len(mismatches) < 5:
                    mismatches.append({"task_id": p.task_id, "text": p.text, "hf": hf, "gguf": ours})
            return {"checked": True, "prompts": len(prompts), "identical": identical,
                    "share_identical": identical / len(prompts) if prompts else None,
                    "gguf_vocab": llama_cpp.llama_vocab_n_tokens(vocab), "hf_vocab": len(tokenizer),
                    "gguf_adds_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
                    "mismatches": mismatches,
                    "note": "generation always uses the workload's token ids; this only says whether "
                            "llama.cpp's own tokenizer would have produced the same ids"}
        finally:
            llama_cpp.llama_model_free(model)
    except Exception as e:  # noqa: BLE001 — a failed check is recorded, it does not stop the trial
        return {"checked": False, "reason": f"{type(e).__name__}: {e}"}


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


class captured_log:
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
