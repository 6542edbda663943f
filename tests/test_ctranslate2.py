"""CTranslate2 engine: host-side checks of its contract (the host has no ctranslate2: registration, options, the
precision check, the vocabulary mapping), then the real runtime through the ctranslate2-cpu image (the orchestrator's
Docker launcher: prepare with the cache read-write, measured runs read-only, no network).

What the container tests show: TransformersConverter converts the study's architectures except phi (refused with the
converter's own reason, recorded); every run generates exactly the asked number of new tokens with the compute type
CTranslate2 really ran recorded, a batch of two runs as one (N + the prompts' length difference decode steps, not
2 × N), and the token ids agree with the torch fp32 eager reference; int8 weights run as int8_float32; as served,
outputs end where the runner's rule says with torch's tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _containers import Launch, build_image, engine_cache, shareable, summary
from conftest import architecture_params
from _converting_engines import tiny  # noqa: F401  (pytest fixture)
from _converting_engines import (NEW_TOKENS, PROMPTS, assert_exact, assert_reused, body, prepare_and_run,
                                 reference_factory)
from runners.engines import engine_class
from runners.engines.ctranslate2 import RECIPES, CTranslate2Engine, check_compute_type, read_vocabulary
from runners.job import JobError, parse_job

# TransformersConverter 4.8.5's PhiLoader reads the old remote-code config (n_layer): transformers' PhiConfig fails
REFUSED = {"phi": "AttributeError: 'PhiConfig' object has no attribute 'n_layer'"}


# ------------------------------------------------------------------------------------------------ host-only checks

def test_registered_with_its_precisions_and_options():
    cls = engine_class("ctranslate2")
    assert cls is CTranslate2Engine and cls.precisions == {"cpu": ("fp32", "int8")}
    assert RECIPES == {"fp32": ("float32", "float32"), "int8": ("int8", "int8_float32")}
    assert "prepare" in cls.optional_phases and "threads" in cls.options
    job = parse_job(body(Path("/m"), engine="ctranslate2", precision="int8", options={"threads": 1}))
    assert job.precision == "int8" and job.engine_options["threads"] == 1


@pytest.mark.parametrize("data, field", [({"engine_options": {"threads": 0}}, "engine_options.threads"),
                                         ({"engine_options": {"compute_type": "int16"}}, "engine_options"),
                                         ({"precision": "fp16"}, "precision"),
                                         ({"device": "cuda"}, "device")])
def test_bad_input_is_a_one_line_job_error_naming_the_field(data, field):
    job = {**body(Path("/m"), engine="ctranslate2"), **data}
    with pytest.raises(JobError) as e:
        parse_job(job)
    assert e.value.field.startswith(field), e.value.field


def test_a_compute_type_other_than_the_precisions_fails_with_the_reason():
    check_compute_type("int8", "int8_float32")
    with pytest.raises(JobError, match="int8 asked .compute type int8_float32. but CTranslate2 runs float32"):
        check_compute_type("int8", "float32")


def test_a_vocabulary_listing_a_token_twice_is_refused(tmp_path):
    (tmp_path / "vocabulary.json").write_text('["a", "b", "c"]')
    assert read_vocabulary(tmp_path) == ["a", "b", "c"]
    (tmp_path / "vocabulary.json").write_text('["a", "b", "a"]')
    with pytest.raises(JobError, match="lists 1 tokens twice"):
        read_vocabulary(tmp_path)


# ---------------------------------------------------------------------------------------------- through the image

@pytest.fixture(scope="module")
def launch(docker_client, tmp_path_factory):
    runtime = build_image(docker_client, "ctranslate2-cpu")
    runner = Launch(docker_client, runtime, tmp_path_factory.mktemp("ctranslate2-work"), "test-ctranslate2")
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def ct2_cache(tmp_path_factory) -> Path:
    return engine_cache(tmp_path_factory.mktemp("ctranslate2-cache") / "engines")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    return reference_factory(tmp_path_factory.mktemp("ctranslate2-references"))


def _batched_steps(rec: dict) -> None:
    """Each batch ran as one: N decode steps plus one per token the longer prompt has over the shorter (CTranslate2
    feeds that remainder inside the batch's loop) — not the N × 2 of prompts run one after another."""
    for b in {p["batch"] for p in rec["per_prompt"]}:
        members = [p for p in rec["per_prompt"] if p["batch"] == b]
        lengths = [p["prompt_tokens"] for p in members]
        assert len(members) == 2
        assert {p["decode_steps"] for p in members} == {NEW_TOKENS + max(lengths) - min(lengths)}, members
    assert rec["engine"]["details"]["batching"].startswith("runtime batch")


@pytest.mark.parametrize("arch", [p for p in architecture_params(("llama",)) if p.values[0] not in REFUSED])
def test_each_architecture_converts_and_generates_exactly_the_references_tokens(launch, tiny, ct2_cache,
                                                                              references, arch):
    model = tiny[arch]
    prep, rec = prepare_and_run(launch, model, ct2_cache, engine="ctranslate2", reference=references(model))
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    assert info["cached"] is False and info["quantization"] == info["saved_compute_type"] == "float32"
    assert info["bytes"] > 0
    assert info["artifact"] == f"/cache/ctranslate2/{info['model_key']}/fp32"
    assert info["converter"]["tool"] == "ctranslate2.converters.TransformersConverter"
    assert_exact(rec)
    assert_reused(rec)
    d = rec["engine"]["details"]
    assert d["compute_type"] == "float32" and d["intra_threads"] == 2 and d["versions"]["ctranslate2"] == "4.8.5"
    _batched_steps(rec)
    assert rec["agreement"]["prompts"] == PROMPTS and rec["agreement"]["share_identical"] == 1.0, rec["agreement"]


@pytest.mark.heavy  # CI time: make test-all
def test_int8_weights_run_as_int8_and_are_recorded(launch, tiny, ct2_cache, references):
    model = tiny["llama"]
    prep, rec = prepare_and_run(launch, model, ct2_cache, engine="ctranslate2", precision="int8",
                                reference=references(model))
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    assert info["quantization"] == "int8" and info["artifact"].endswith("/int8")
    assert info["saved_compute_type"] == "int8_float32"  # the file holds int8 weights (read back), not float32
    assert_exact(rec)
    assert rec["engine"]["details"]["compute_type"] == "int8_float32"
    assert rec["agreement"]["prompts"] == PROMPTS  # recorded; int8 weights may change tokens


def test_as_served_stops_where_the_runners_rule_says_with_torchs_tokens(launch, tiny, ct2_cache, tmp_path):
    """EOS ids as CTranslate2's end tokens and the runner's stop rule through its per-token callback: every output
    ends where the rule says (checked by the runner), with the tokens torch gives under the same rule."""
    from runners.runner import TrialRun

    model = tiny["llama"]
    served = {"new_tokens": 24, "fixed_length": False, "stop_sequences": ["e", "\n"]}
    ref_body = body(model, engine="torch")
    ref_body["generation"].update(served)
    ref = TrialRun(parse_job(ref_body), ref_body).run()
    assert ref["status"] == "ok" and ref["stopping"]["ended_by"].get("stop"), ref.get("stopping")
    job = body(model, engine="ctranslate2", cache=ct2_cache, reference=shareable(tmp_path / "ref.json", ref))
    job["generation"].update(served)
    prep, _ = launch("prepare", job)
    assert prep["status"] == "ok", summary(prep)
    rec, _ = launch("run", job)
    assert rec["status"] == "ok", summary(rec)
    assert rec["stopping"]["inconsistent"] == 0, [p["ended_by"] for p in rec["per_prompt"]]
    assert [p["output_ids"] for p in rec["per_prompt"]] == [p["output_ids"] for p in ref["per_prompt"]]
    # the callback ends each row at its stop token: no steps past the batch's end but the prompt tail CTranslate2
    # feeds inside its loop
    batches = {p["batch"] for p in rec["per_prompt"]}
    tails = sum(max(lengths) - min(lengths) for lengths in
                ([p["prompt_tokens"] for p in rec["per_prompt"] if p["batch"] == b] for b in batches))
    assert rec["stopping"]["steps_past_end"] <= tails, rec["stopping"]


def test_an_architecture_the_converter_cannot_convert_is_refused_with_its_reason(launch, tiny, ct2_cache):
    prep, outcome = launch("prepare", body(tiny["phi"], engine="ctranslate2", cache=ct2_cache))
    assert prep["status"] == "failed" and prep["error"]["type"] == "ConversionError", summary(prep)
    assert "ctranslate2 conversion of phi-tiny-trained (PhiForCausalLM) to fp32 failed" in prep["error"]["message"]
    assert REFUSED["phi"] in prep["error"]["message"]
    assert not any(ct2_cache.glob("ctranslate2/phi-*/fp32"))  # no half conversion left as if complete


def test_measured_run_without_a_conversion_says_to_prepare(launch, tiny, tmp_path_factory):
    empty = engine_cache(tmp_path_factory.mktemp("ctranslate2-empty") / "engines")
    rec, outcome = launch("run", body(tiny["gpt2"], engine="ctranslate2", cache=empty))
    assert rec["status"] == "failed" and rec["error"]["type"] == "JobError", summary(rec)
    assert "run the prepare step first" in rec["error"]["message"] and outcome.exit_code == 2
    assert not any(empty.rglob("model.bin"))
