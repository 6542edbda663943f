"""Shared by the ONNX Runtime, OpenVINO and torch.compile tests: job bodies, the torch fp32 reference records (the
token-agreement reference), prepare-then-run through the orchestrator's Docker launcher, and the exactness checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from _containers import shareable, summary
from orchestrator import fixtures
from runners.job import parse_job

NEW_TOKENS = 8
PROMPTS = 4
BATCH = 2  # two batches of two: left padding is exercised, as in every batched runtime
THREADS = 2


@pytest.fixture(scope="session")
def tiny(readable_models) -> dict[str, Path]:
    """The seven architectures' tiny fixtures (shared with the torch tests), readable by the images' uid 1000."""
    root = fixtures.default_root()
    built = {arch: fixtures.build_tiny(arch, root / fixtures.fixture_name(arch)) for arch in fixtures.ARCHITECTURES}
    readable_models(*built.values())
    return built


def body(model_dir: Path, *, engine: str, precision: str = "fp32", batch: int = BATCH, count: int = PROMPTS,
         new_tokens: int = NEW_TOKENS, options: dict | None = None, cache: Path | None = None,
         reference: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    data = {"engine": engine, "device": device, "precision": precision,
            "model": {"name": Path(model_dir).name, "path": str(model_dir)},
            "workload": {"count": count, "seed": 2412}, "generation": {"batch_size": batch, "new_tokens": new_tokens},
            "warmup": {"batches": 1}, "meters": {"codecarbon": False, "sample_interval_s": 0.1},
            "engine_options": {"threads": THREADS, **(options or {})}, "seed": 0}
    if cache:
        data["cache_dir"] = str(cache)
    if reference:
        data["reference"] = str(reference)
    return data


def reference_factory(folder: Path):
    """torch fp32 eager records (in-process on the host, the same torch and transformers as the images) of the same
    workload: the reference the runner compares each record's token ids with (job.reference)."""
    from runners.record import validate_record
    from runners.runner import TrialRun

    made: dict[tuple, Path] = {}

    def get(model_dir: Path, **over) -> Path:
        key = (str(model_dir), json.dumps(over, sort_keys=True))
        if key not in made:
            data = body(model_dir, engine="torch", **over)
            record = TrialRun(parse_job(data), data).run()
            validate_record(record)
            assert record["status"] == "ok", record["error"]
            made[key] = shareable(folder / f"ref-{len(made)}.json", record)
        return made[key]

    return get


def prepare_and_run(launch, model_dir: Path, cache: Path, *, reference: Path | None = None, **over):
    """`prepare` (cache read-write), then the measured `run` (cache read-only, no network), as the orchestrator does."""
    prep, _ = launch("prepare", body(model_dir, cache=cache, **over))
    if prep["status"] != "ok":
        return prep, None
    rec, _ = launch("run", body(model_dir, cache=cache, reference=reference, **over))
    return prep, rec


def assert_exact(rec: dict, count: int = PROMPTS, new_tokens: int = NEW_TOKENS, container: bool = True) -> None:
    from runners.record import validate_record

    validate_record(rec)
    assert rec["status"] == "ok", summary(rec)
    assert [p["generated_tokens"] for p in rec["per_prompt"]] == [new_tokens] * count
    assert all(len(p["output_ids"]) == new_tokens for p in rec["per_prompt"])
    assert rec["tokens"]["output"] == count * new_tokens
    first = rec["per_prompt"][0]
    assert 0 < first["ttft_s"] < first["latency_s"] and first["tpot_s"] > 0
    if container:  # (the host running the in-process cases may itself be a container: not checked then)
        assert rec["environment"]["in_container"] is True


def assert_reused(rec: dict) -> None:
    """A measured run found the conversion prepare made: nothing converted inside it."""
    info = rec["phases"]["prepare"]["info"]
    assert info["cached"] is True, info
    assert rec["phases"]["prepare"]["duration_s"] < 5.0, rec["phases"]["prepare"]


def agreement_line(name: str, rec: dict) -> str:
    a = rec["agreement"]
    return f"{name}: {a['identical']}/{a['prompts']} identical, first divergence {a['first_divergence']}"


def build_foreign(kind: str, out: Path, tokenizer_from: Path) -> Path:
    """A tiny random-weight causal LM of an architecture outside the study (mamba, rwkv), with a fixture's tokenizer:
    for checking what an exporter says about an architecture it has no configuration for."""
    import shutil

    import torch
    import transformers as tf

    if (out / "config.json").is_file():
        return out
    tok = tf.AutoTokenizer.from_pretrained(tokenizer_from)
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if kind == "mamba":
        config = tf.MambaConfig(hidden_size=64, num_hidden_layers=2, state_size=8, **common)
    elif kind == "rwkv":
        config = tf.RwkvConfig(hidden_size=64, num_hidden_layers=2, attention_hidden_size=64,
                               intermediate_size=256, context_length=256, **common)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tf.AutoModelForCausalLM.from_config(config).eval().save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def prepare_and_run_in_process(model_dir: Path, cache: Path, *, reference: Path | None = None, **over):
    """The same two steps on the host's runtimes (requirements-dev.txt pins the images' versions): for option
    variants, where a container start per case would cost more than the case."""
    from runners.record import validate_record
    from runners.runner import TrialRun

    data = body(model_dir, cache=cache, **over)
    prep = TrialRun(parse_job(data), data, mode="prepare").run()
    validate_record(prep)
    if prep["status"] != "ok":
        return prep, None
    data = body(model_dir, cache=cache, reference=reference, **over)
    rec = TrialRun(parse_job(data), data).run()
    validate_record(rec)
    return prep, rec
