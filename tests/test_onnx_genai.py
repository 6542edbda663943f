"""ONNX Runtime GenAI engine: host-side checks of its contract, then the real runtime through the onnx-genai-cpu image
(the orchestrator's Docker launcher: prepare with the cache read-write, measured runs read-only, no network).

What the container tests show: the GenAI model builder converts Llama, Gemma and Phi and refuses GPT-2, GPTBigCode,
GPT-NeoX and BLOOM with its own words; every run generates exactly the asked number of new tokens in right-padded
batches of two decoded together, with the threads and search options recorded, and its token ids agree with the
torch fp32 eager reference; int8/int4 are the builder's MatMulNBits weights, recorded as such; as served, rows end
where the runner's stop rule says.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _containers import Launch, build_image, engine_cache, shareable, summary
from conftest import architecture_params
from _converting_engines import tiny  # noqa: F401  (pytest fixture)
from _converting_engines import (NEW_TOKENS, PROMPTS, agreement_line, assert_exact, assert_reused, body,
                                 prepare_and_run, reference_factory)
from orchestrator import fixtures
from runners.engines import engine_class
from runners.engines.onnx_genai import builder_reason, config_overlay, right_padded
from runners.job import JobError, parse_job

ENGINE = "onnx-genai"
BUILT = ("llama", "gemma", "phi")  # the architectures the 0.18 builder has a class for; the others it refuses
# the 0.18 builder reads rms_norm_eps or takes 1e-6: Phi's layer_norm_eps (1e-5) is not read, its norms differ
OTHER_EPSILON = {"phi": {"graph": [1e-06], "config": 1e-05, "as_configured": False}}
AGREEMENT: dict[str, str] = {}


# ------------------------------------------------------------------------------------------------ host-only checks

def test_registered_with_its_precisions_and_options():
    cls = engine_class(ENGINE)
    assert cls.precisions == {"cpu": ("fp32", "int8", "int4"), "cuda": ("fp32", "fp16", "int4")}
    assert cls.optional_phases == {"prepare"}
    assert set(cls.options) == {"threads"} and cls.greedy_only
    job = parse_job(body(Path("/m"), engine=ENGINE, precision="int4"))
    assert job.precision == "int4" and job.engine_options["threads"] == 2


@pytest.mark.parametrize("change, field", [({"options": {"threads": 0}}, "engine_options.threads"),
                                           ({"options": {"io_binding": True}}, "engine_options.io_binding"),
                                           ({"precision": "fp16"}, "precision"),
                                           ({"device": "cuda", "precision": "int8"}, "precision")])
def test_bad_jobs_are_one_line_job_errors(change, field):
    with pytest.raises(JobError) as e:
        parse_job(body(Path("/m"), engine=ENGINE, **change))
    assert e.value.field == field


def test_batches_are_right_padded_and_a_prompt_ending_with_the_pad_id_is_refused_in_a_batch():
    assert right_padded([[5, 6, 7], [8, 9]], 0).tolist() == [[5, 6, 7], [8, 9, 0]]
    assert right_padded([[5, 0]], 0).tolist() == [[5, 0]]  # alone, nothing is taken for padding
    with pytest.raises(JobError, match="prompt 1 of a batch ends with the pad id 0") as e:
        right_padded([[5, 6, 7], [8, 0]], 0)
    assert e.value.field == "generation.batch_size"


def test_the_overlay_sets_the_threads_and_takes_eos_out_of_genai():
    overlay = config_overlay(3)
    assert overlay["model"]["eos_token_id"] == []
    assert overlay["model"]["decoder"]["session_options"] == {"intra_op_num_threads": 3, "inter_op_num_threads": 1}


def test_the_builders_reason_is_its_last_exception_line():
    stderr = ("Extra options: {}\nKeyError: 'rope_parameters'\n\nDuring handling of the above exception, another "
              "exception occurred:\n\nTraceback (most recent call last):\n"
              "  File \"builder.py\", line 806, in create_model\n"
              "    raise NotImplementedError(f\"The {hf_name} model is not currently supported.\")\n"
              "NotImplementedError: The /models/gpt2-tiny model is not currently supported.\n")
    assert builder_reason(stderr, 1) == "NotImplementedError: The /models/gpt2-tiny model is not currently supported."
    assert builder_reason("", -9) == "nothing (exit status -9)"
    assert builder_reason("one\ntwo\nthree\nfour\n", 2) == "two | three | four"


# ---------------------------------------------------------------------------------------------- through the image

@pytest.fixture(scope="module")
def launch(docker_client, tmp_path_factory):
    runtime = build_image(docker_client, "onnx-genai-cpu")
    runner = Launch(docker_client, runtime, tmp_path_factory.mktemp("onnx-genai-work"), "test-onnx-genai")
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def genai_cache(tmp_path_factory) -> Path:
    return engine_cache(tmp_path_factory.mktemp("onnx-genai-cache") / "engines")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    return reference_factory(tmp_path_factory.mktemp("onnx-genai-references"))


@pytest.mark.parametrize("arch", architecture_params(("llama",)))  # phi (the builder's epsilon), the refusals: heavy
def test_each_architecture_is_built_and_agrees_or_is_refused_with_the_builders_reason(launch, tiny, genai_cache,
                                                                                      references, arch):
    model = tiny[arch]
    if arch not in BUILT:
        prep, outcome = launch("prepare", body(model, engine=ENGINE, cache=genai_cache))
        assert prep["status"] == "failed" and prep["error"]["type"] == "ConversionError", summary(prep)
        message = prep["error"]["message"]
        assert f"onnx-genai conversion of {model.name} (" in message and "the GenAI model builder said" in message
        assert "NotImplementedError: The " in message and "model is not currently supported." in message
        assert outcome.exit_code == 1 and not list((genai_cache / ENGINE).glob(f"{model.name}-*/*"))
        AGREEMENT[arch] = f"{arch}: refused ({message.split('said ')[-1]})"
        return
    prep, rec = prepare_and_run(launch, model, genai_cache, engine=ENGINE, reference=references(model))
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    assert info["cached"] is False and info["artifact"] == f"/cache/onnx-genai/{info['model_key']}/fp32"
    assert info["exporter"]["tool"] == "onnxruntime_genai.models.builder"
    assert info["exporter"]["onnxruntime-genai"] == "0.18.0" and info["exporter"]["transformers"].startswith("5.")
    assert info["weights"]["matmul_nbits"] is None and info["weights"]["ops"]["GroupQueryAttention"] >= 1
    assert {"model.onnx", "genai_config.json"} <= set(info["files"])
    assert_exact(rec)
    assert_reused(rec)
    d = rec["engine"]["details"]
    assert d["batching"].startswith("right-padded batch") and d["device_type"] == "CPU"
    assert d["config_overlay"]["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 2
    assert d["search"]["do_sample"] is False and d["search"]["num_beams"] == 1 and d["search"]["batch_size"] == 2
    assert all(p["decode_steps"] == NEW_TOKENS for p in rec["per_prompt"])  # two prompts, one step per token
    agreement = rec["agreement"]
    assert agreement["prompts"] == PROMPTS and agreement["reference_engine"]["name"] == "torch"
    AGREEMENT[arch] = agreement_line(arch, rec)
    epsilon = info["norm_epsilon"]
    if arch in OTHER_EPSILON:  # another norm than the model's: recorded, and the first tokens still agree
        assert epsilon == OTHER_EPSILON[arch] and d["conversion"]["norm_epsilon"] == epsilon, epsilon
        AGREEMENT[arch] += f" (builder's norm epsilon {epsilon['graph']}, model's {epsilon['config']})"
        assert all(x is None or x >= 1 for x in agreement["first_divergence"]), AGREEMENT[arch]
    else:
        assert epsilon["as_configured"] is True, epsilon
        assert agreement["share_identical"] == 1.0, AGREEMENT[arch]


@pytest.mark.heavy  # it needs all seven architectures' runs: make test-all
def test_the_seven_architectures_are_built_or_refused_as_expected():
    if len(AGREEMENT) < len(fixtures.ARCHITECTURES):
        pytest.skip("needs every architecture's run (run the whole module)")
    print("\nONNX Runtime GenAI fp32 vs torch fp32 eager:\n  " + "\n  ".join(AGREEMENT.values()))
    assert sorted(a for a, line in AGREEMENT.items() if "refused" not in line) == sorted(BUILT)


@pytest.mark.heavy  # CI time: make test-all
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_integer_weights_are_the_builders_matmulnbits_and_generate_exactly(launch, tiny, genai_cache, references,
                                                                           precision):
    model = tiny["llama"]
    prep, rec = prepare_and_run(launch, model, genai_cache, engine=ENGINE, precision=precision,
                                reference=references(model))
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    nbits = info["weights"]["matmul_nbits"]
    assert info["weights"]["format"] == precision and info["artifact"].endswith(f"/{precision}")
    assert nbits["bits"] == [int(precision[3:])] and nbits["nodes"] >= 1 and nbits["accuracy_level"], nbits
    assert_exact(rec)
    assert rec["engine"]["details"]["conversion"]["weights"]["format"] == precision
    assert rec["agreement"]["prompts"] == PROMPTS  # recorded; quantised weights may change tokens


def test_as_served_rows_end_where_the_runners_rule_says(launch, tiny, genai_cache, tmp_path):
    """As served, the engine's loop ends each row of a batch after EOS or the stop rule's token (GenAI's own EOS is
    off); the runner checks every output's end, and the tokens are torch's under the same rule."""
    from runners.runner import TrialRun

    model = tiny["llama"]
    served = {"fixed_length": False, "stop_sequences": ["e"]}
    ref_body = body(model, engine="torch")
    ref_body["generation"].update(served)
    ref = TrialRun(parse_job(ref_body), ref_body).run()
    assert ref["status"] == "ok" and ref["stopping"]["ended_by"].get("stop"), ref.get("stopping")
    job = body(model, engine=ENGINE, cache=genai_cache, reference=shareable(tmp_path / "ref.json", ref))
    job["generation"].update(served)
    prep, _ = launch("prepare", job)
    assert prep["status"] == "ok", summary(prep)
    rec, _ = launch("run", job)
    assert rec["status"] == "ok", summary(rec)
    assert rec["stopping"]["inconsistent"] == 0, [p["ended_by"] for p in rec["per_prompt"]]
    assert rec["stopping"]["ended_by"] == ref["stopping"]["ended_by"]
    assert rec["agreement"]["share_identical"] == 1.0, rec["agreement"]


def test_measured_run_without_a_built_model_says_to_prepare(launch, tiny, tmp_path_factory):
    empty = engine_cache(tmp_path_factory.mktemp("onnx-genai-empty") / "engines")
    rec, outcome = launch("run", body(tiny["llama"], engine=ENGINE, cache=empty))
    assert rec["status"] == "failed" and rec["error"]["type"] == "JobError", summary(rec)
    assert rec["error"]["phase"] == "prepare" and "run the prepare step first" in rec["error"]["message"]
    assert outcome.exit_code == 2 and not any(empty.rglob("genai_config.json"))


def teardown_module(module):
    if AGREEMENT and os.environ.get("PYTEST_XDIST_WORKER") is None:
        print("\nONNX Runtime GenAI fp32 agreement with torch fp32:\n  " + "\n  ".join(AGREEMENT.values()))
