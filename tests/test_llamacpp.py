"""llama.cpp engine: host-side checks of its pure-Python parts, then the real runtime through the llamacpp-cpu image
(the orchestrator's Docker launcher: prepare with the cache read-write, measured runs read-only, no network).

What the container tests show: llama.cpp's own converter turns the tiny fixtures of the study's architectures into
GGUF or says why not (its reason is recorded); the conversions are cached and a second prepare reuses them; f32,
f16, q8_0 and q4_K_M (quantised by llama_model_quantize) generate exactly the asked number of tokens; the GGUF's
tokenizer gives the HF prompt ids; token agreement with a torch fp32 reference is in the record.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _containers import Launch, build_image, engine_cache, shareable, summary
from conftest import architecture_params
from _models import smollm2_dir  # noqa: F401  (pytest fixture)
from orchestrator import fixtures
from runners.engines import engine_class
from runners.engines._conversion import model_key
from runners.engines._gguf import RECIPES, converter_reason
from runners.job import JobError, parse_job

NEW_TOKENS = 16
PROMPTS = 3

# Every architecture converts when its fixture carries the tokenizer llama.cpp's converter takes
# (fixtures.llama_cpp_tokenizer: SmolLM2's BPE, SentencePiece for Gemma). What it rejects, and its own reason, is
# shown with a Gemma fixture that only has a tokenizer.json (the converter's Gemma path reads tokenizer.model).
REJECTED_CASE = ("gemma", "smollm2", "tokenizer.model")


# ------------------------------------------------------------------------------------------------ host-only checks

def _job(**over):
    data = {"engine": "llamacpp", "device": "cpu", "precision": "fp32", "model": {"path": "/m"}}
    data.update(over)
    return parse_job(data)


def test_registered_with_its_precisions_and_options():
    cls = engine_class("llamacpp")
    assert cls.precisions["cpu"] == ("fp32", "fp16", "q8_0", "q4_k_m") == tuple(RECIPES)
    assert set(cls.precisions) == {"cpu", "cuda"}
    assert {"threads", "batching", "n_gpu_layers", "flash_attn"} <= set(cls.options)
    assert _job(precision="q4_k_m", engine_options={"threads": 2, "batching": "sequential"}).precision == "q4_k_m"


@pytest.mark.parametrize("options, field", [({"batching": "ragged"}, "engine_options.batching"),
                                            ({"flash_attn": "maybe"}, "engine_options.flash_attn"),
                                            ({"threads": 0}, "engine_options.threads"),
                                            ({"threads": "2"}, "engine_options.threads")])
def test_bad_options_are_one_line_job_errors(options, field):
    with pytest.raises(JobError) as e:
        _job(engine_options=options)
    assert e.value.field == field


def test_unknown_precision_names_the_supported_ones():
    with pytest.raises(JobError, match="q4_k_m"):
        _job(precision="q5_k_s")


def test_model_key_follows_the_content_and_is_memoised(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 1000)
    memo = tmp_path / "keys"
    first = model_key("tiny/llama", model, memo)
    assert first.startswith("tiny_llama-") and len(first.split("-")[-1]) == 12
    assert model_key("tiny/llama", model, memo) == first and len(list(memo.iterdir())) == 1
    (model / "model.safetensors").write_bytes(b"\1" * 1000)  # same size, other weights: another key
    assert model_key("tiny/llama", model, memo) != first


def test_converter_reason_is_its_exception_line():
    out = "INFO:hf-to-gguf:Loading model\nTraceback (most recent call last):\n  File \"x.py\", line 3\n" \
          "NotImplementedError: Architecture 'Foo' not supported!\n"
    assert converter_reason(out) == "NotImplementedError: Architecture 'Foo' not supported!"
    assert converter_reason("just a line\n") == "just a line"


# ---------------------------------------------------------------------------------------------- through the image

@pytest.fixture(scope="session")
def llamacpp_runtime(docker_client):
    return build_image(docker_client, "llamacpp-cpu")


@pytest.fixture(scope="session")
def launch(docker_client, llamacpp_runtime, tmp_path_factory):
    runner = Launch(docker_client, llamacpp_runtime, tmp_path_factory.mktemp("llamacpp-work"), "test-llamacpp")
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory) -> Path:
    return engine_cache(tmp_path_factory.mktemp("llamacpp-cache") / "engines")


def _tiny(arch: str, tokenizer: str) -> Path:
    return fixtures.build_tiny(arch, fixtures.default_root() / fixtures.fixture_name(arch, tokenizer=tokenizer),
                               tokenizer=tokenizer)


@pytest.fixture(scope="session")
def llama_tiny(readable_models) -> dict[str, Path]:
    """Tiny models of every architecture with a tokenizer llama.cpp's converter takes."""
    built = {arch: _tiny(arch, fixtures.llama_cpp_tokenizer(arch)) for arch in fixtures.ARCHITECTURES}
    readable_models(*built.values())
    return built


@pytest.fixture(scope="session")
def references(tmp_path_factory):
    """torch fp32 eager records (in-process on the host) of the same job: the reference for token agreement."""
    from runners.record import validate_record
    from runners.runner import TrialRun

    folder = tmp_path_factory.mktemp("references")
    made: dict[tuple, Path] = {}

    def get(model_dir: Path, **over) -> Path:
        key = (str(model_dir), json.dumps(over, sort_keys=True))
        if key not in made:
            data = _body(model_dir, engine="torch", precision="fp32", **over)
            record = TrialRun(parse_job(data), data).run()
            validate_record(record)
            assert record["status"] == "ok", record["error"]
            made[key] = shareable(folder / f"ref-{len(made)}.json", record)
        return made[key]

    return get


def _body(model_dir: Path, *, engine="llamacpp", precision="fp32", batch=1, count=PROMPTS, new_tokens=NEW_TOKENS,
          options=None, cache=None, reference=None) -> dict:
    data = {"engine": engine, "device": "cpu", "precision": precision,
            "model": {"name": Path(model_dir).name, "path": str(model_dir)},
            "workload": {"count": count, "seed": 2412}, "generation": {"batch_size": batch, "new_tokens": new_tokens},
            "warmup": {"batches": 1}, "meters": {"codecarbon": False, "sample_interval_s": 0.1},
            "engine_options": dict(options or {}), "seed": 0}
    if engine == "llamacpp":
        data["engine_options"].setdefault("threads", 2)
    if cache:
        data["cache_dir"] = str(cache)
    if reference:
        data["reference"] = str(reference)
    return data


def _prepare_and_run(launch, model_dir, cache, precision="fp32", reference=None, **over):
    prep, _ = launch("prepare", _body(model_dir, precision=precision, cache=cache, **over))
    if prep["status"] != "ok":
        return prep, None
    rec, _ = launch("run", _body(model_dir, precision=precision, cache=cache, reference=reference, **over))
    return prep, rec


def _assert_exact(rec, count=PROMPTS, new_tokens=NEW_TOKENS):
    assert rec["status"] == "ok", summary(rec)
    assert [p["generated_tokens"] for p in rec["per_prompt"]] == [new_tokens] * count
    assert all(len(p["output_ids"]) == new_tokens for p in rec["per_prompt"])
    assert rec["tokens"]["output"] == count * new_tokens
    d = rec["engine"]["details"]
    assert d["n_threads"] == 2 and d["n_threads_batch"] == 2, d
    assert rec["phases"]["prepare"]["info"]["cached"] is True  # measured runs never convert
    first = rec["per_prompt"][0]
    assert 0 < first["ttft_s"] < first["latency_s"] and first["tpot_s"] > 0


@pytest.mark.parametrize("arch", architecture_params(("llama", "gpt_bigcode")))
def test_each_architecture_converts_and_generates_exactly(launch, llama_tiny, gguf_cache, references, arch):
    model = llama_tiny[arch]
    prep, rec = _prepare_and_run(launch, model, gguf_cache, reference=references(model, batch=2), batch=2)
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    assert info["cached"] is False and info["conversion"] == "convert_hf_to_gguf.py" and info["outtype"] == "f32"
    assert set(info["tensor_types"]) == {"F32"}
    tok = info["tokenizer_agreement"]
    assert tok["checked"] and tok["prompts"] == PROMPTS, tok
    if fixtures.llama_cpp_tokenizer(arch) == "smollm2":
        assert tok["share_identical"] == 1.0, tok
    _assert_exact(rec)
    d = rec["engine"]["details"]
    assert d["batching"].startswith("parallel sequences") and d["n_seq_max"] == 2
    agreement = rec["agreement"]
    assert agreement["prompts"] == PROMPTS and agreement["reference_engine"]["name"] == "torch"
    # random-weight tiny models have nearly flat logits, so f32 rounding can flip a near-tie late in a sequence;
    # the first tokens must match
    assert all(d is None or d >= 1 for d in agreement["first_divergence"]), agreement


def test_a_rejected_conversion_records_the_converters_reason(launch, gguf_cache, readable_models):
    arch, tokenizer, reason = REJECTED_CASE
    model = _tiny(arch, tokenizer)
    readable_models(model)
    prep, _ = launch("prepare", _body(model, cache=gguf_cache))
    assert prep["status"] == "failed" and prep["error"]["type"] == "ConversionError", summary(prep)
    assert "convert_hf_to_gguf.py rejected" in prep["error"]["message"]
    assert reason in prep["error"]["message"], prep["error"]["message"]


def test_precisions_quantise_from_the_cached_f32_and_reuse_the_cache(launch, llama_tiny, gguf_cache):
    model = llama_tiny["llama"]
    for precision, types in (("fp16", {"F16"}), ("q8_0", {"Q8_0"}), ("q4_k_m", {"Q4_K", "Q6_K"})):
        prep, rec = _prepare_and_run(launch, model, gguf_cache, precision=precision,
                                     options={"batching": "sequential"}, batch=2)
        assert prep["status"] == "ok", summary(prep)
        info = prep["phases"]["prepare"]["info"]
        # the 2-D weights get the asked type; the tiny shapes' rows (128) are below the 256 that K-quants need,
        # so the quantiser falls back for those and says so (recorded in tensor_types and fallbacks)
        present = set(info["tensor_types"]) - {"F32"}
        assert present & types or info.get("fallback_count"), info
        if precision != "fp16":
            assert info["conversion"] == "llama_model_quantize" and info["source"]["precision"] == "fp32"
        _assert_exact(rec)
        assert rec["engine"]["details"]["batching"].startswith("sequential")
    again, _ = launch("prepare", _body(model, precision="q8_0", cache=gguf_cache))
    assert again["status"] == "ok" and again["phases"]["prepare"]["info"]["cached"] is True


def test_measured_run_without_a_prepared_gguf_says_to_prepare(launch, llama_tiny, tmp_path_factory):
    empty = engine_cache(tmp_path_factory.mktemp("empty-cache") / "engines")
    rec, outcome = launch("run", _body(llama_tiny["llama"], precision="q8_0", cache=empty))
    assert rec["status"] == "failed" and rec["error"]["type"] == "JobError", summary(rec)
    assert "prepare" in rec["error"]["message"] and outcome.exit_code == 2


def test_smollm2_real_model_agrees_with_torch_fp32(launch, smollm2_dir, gguf_cache, references, readable_models):
    readable_models(smollm2_dir)
    reference = references(smollm2_dir, count=4, new_tokens=24)
    prep, rec = _prepare_and_run(launch, smollm2_dir, gguf_cache, reference=reference, count=4, new_tokens=24)
    assert prep["status"] == "ok", summary(prep)
    assert prep["phases"]["prepare"]["info"]["tokenizer_agreement"]["share_identical"] == 1.0
    _assert_exact(rec, count=4, new_tokens=24)
    agreement = rec["agreement"]
    assert agreement["prompts"] == 4 and agreement["share_identical"] >= 0.75, agreement


def test_as_served_stops_where_the_runners_rule_says(launch, smollm2_dir, gguf_cache, readable_models, tmp_path):
    """As served with stop sequences: the llama.cpp loop applies the runner's rule after each token; every output ends
    exactly where the rule says (checked by the runner), with torch's tokens under the same rule."""
    from runners.runner import TrialRun

    readable_models(smollm2_dir)
    served = {"fixed_length": False, "stop_sequences": ["\n"]}
    ref_body = _body(smollm2_dir, engine="torch", count=4, new_tokens=24, batch=2)
    ref_body["generation"].update(served)
    ref = TrialRun(parse_job(ref_body), ref_body).run()
    assert ref["status"] == "ok" and ref["stopping"]["inconsistent"] == 0, ref.get("stopping")
    assert ref["stopping"]["ended_by"].get("stop"), ref["stopping"]
    body = _body(smollm2_dir, count=4, new_tokens=24, batch=2, cache=gguf_cache,
                 reference=shareable(tmp_path / "ref.json", ref))
    body["generation"].update(served)
    prep, _ = launch("prepare", body)
    assert prep["status"] == "ok", summary(prep)
    rec, _ = launch("run", body)
    assert rec["status"] == "ok", summary(rec)
    assert rec["stopping"]["inconsistent"] == 0, [p["ended_by"] for p in rec["per_prompt"]]
    assert rec["stopping"]["steps_past_end"] == 0  # the loop checks the rule after each token
    assert rec["agreement"]["share_identical"] >= 0.75, rec["agreement"]
