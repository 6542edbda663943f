"""OpenVINO GenAI engine: host-side checks of its contract, then the real runtime through the openvino-genai image
(the orchestrator's Docker launcher: prepare with the cache read-write, measured runs read-only, no network).

What the container tests show: the IR is the openvino engine's conversion and the tokenizer IR a cached conversion
of its own; a batch of 2 runs through GenAI's continuous-batching scheduler (one step per new token for both
prompts, no padding) and batch 1 through LLMPipeline.generate with a streamer; every run generates exactly the asked
number of new tokens, OpenVINO's compiled precisions (f32 hint, f32 KV cache) are read back into the record, and the
token ids agree with the torch fp32 eager reference; int8 weights are recorded as such; an architecture the exporter
cannot convert fails prepare with the exporter's own reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _containers import Launch, build_image, engine_cache, summary
from conftest import architecture_params
from _converting_engines import tiny  # noqa: F401  (pytest fixture)
from _converting_engines import (NEW_TOKENS, PROMPTS, agreement_line, assert_exact, assert_reused, body,
                                 build_foreign, reference_factory)
from orchestrator import fixtures
from runners.engines import engine_class
from runners.engines.base import Shape
from runners.engines.openvino_genai import parse_properties
from runners.engines.options import EngineContext
from runners.job import JobError, parse_job

ENGINE = "openvino-genai"
AGREEMENT: dict[str, str] = {}
# the head of what GenAI 2026.4 prints for a compiled model under OPENVINO_LOG_LEVEL=4 (abridged)
PRINTOUT = """SchedulerConfig {
  max_num_batched_tokens: 18446744073709551615
 }
Model: LLM with Paged Attention
  NETWORK_NAME: Model0
  NUM_STREAMS: 1
  INFERENCE_NUM_THREADS: 2
  INFERENCE_PRECISION_HINT: f32
  ENABLE_CPU_PINNING: YES
  EXECUTION_DEVICES: CPU
  KV_CACHE_PRECISION: f32
  KEY_CACHE_PRECISION: u8
EXECUTION_DEVICES:
 CPU: AMD EPYC
"""


# ------------------------------------------------------------------------------------------------ host-only checks

def test_registered_with_its_precisions_and_options():
    cls = engine_class(ENGINE)
    assert cls.precisions == {"cpu": ("fp32", "int8")}
    assert set(cls.options) == {"threads", "attention_backend"}
    job = parse_job(body(Path("/m"), engine=ENGINE, precision="int8", options={"attention_backend": "SDPA"}))
    assert job.engine_options["attention_backend"] == "SDPA"


@pytest.mark.parametrize("options, field", [({"attention_backend": "flash"}, "engine_options.attention_backend"),
                                            ({"kv_cache": "none"}, "engine_options.kv_cache"),
                                            ({"threads": 0}, "engine_options.threads")])
def test_bad_options_are_one_line_job_errors(options, field):
    with pytest.raises(JobError) as e:
        parse_job(body(Path("/m"), engine=ENGINE, options=options))
    assert e.value.field == field


@pytest.mark.parametrize("device, precision, field", [("cuda", "fp32", "device"), ("cpu", "bf16", "precision")])
def test_no_cuda_and_no_bf16(device, precision, field):
    with pytest.raises(JobError) as e:
        parse_job(body(Path("/m"), engine=ENGINE, device=device, precision=precision))
    assert e.value.field == field


def test_sdpa_refuses_a_batch_it_cannot_time_step_by_step():
    cls = engine_class(ENGINE)
    ctx = EngineContext(device="cpu", precision="fp32", model_dir=Path("/m"), model_name="m", cache_dir=None)
    engine = cls(ctx, None, cls.check_options({"attention_backend": "SDPA"}))
    with pytest.raises(JobError) as e:
        engine.load(Shape(batch_size=2, prompts=4, shortest_prompt=3, longest_prompt=9, max_new_tokens=8))
    assert e.value.field == "generation.batch_size" and "streams tokens at batch 1 only" in str(e.value)


def test_the_compiled_models_printout_is_read_back():
    facts = parse_properties(PRINTOUT)
    assert facts["model"] == "LLM with Paged Attention" and facts["INFERENCE_NUM_THREADS"] == 2
    assert facts["INFERENCE_PRECISION_HINT"] == "f32" and facts["KEY_CACHE_PRECISION"] == "u8"
    assert facts["ENABLE_CPU_PINNING"] is True and facts["EXECUTION_DEVICES"] == ["CPU"]
    assert "max_num_batched_tokens" not in facts and "CPU" not in facts


# ---------------------------------------------------------------------------------------------- through the image

@pytest.fixture(scope="module")
def launch(docker_client, tmp_path_factory):
    runtime = build_image(docker_client, ENGINE)
    runner = Launch(docker_client, runtime, tmp_path_factory.mktemp("genai-work"), "test-openvino-genai")
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def genai_cache(tmp_path_factory) -> Path:
    return engine_cache(tmp_path_factory.mktemp("genai-cache") / "engines")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    return reference_factory(tmp_path_factory.mktemp("genai-references"))


PREPARED: dict[tuple, dict] = {}


def _prepare(launch, model: Path, cache: Path, precision: str = "fp32") -> dict:
    """One prepare per (model, precision) for the module: the runs of several tests share it."""
    key = (str(model), precision)
    if key not in PREPARED:
        PREPARED[key], _ = launch("prepare", body(model, engine=ENGINE, precision=precision, cache=cache))
    assert PREPARED[key]["status"] == "ok", summary(PREPARED[key])
    return PREPARED[key]


def _run(launch, model: Path, cache: Path, reference: Path, **over) -> dict:
    rec, _ = launch("run", body(model, engine=ENGINE, cache=cache, reference=reference, **over))
    return rec


def _details(rec: dict) -> dict:
    return rec["engine"]["details"]


def _assert_f32(rec: dict) -> None:
    compiled = _details(rec)["compiled"]
    assert compiled["INFERENCE_PRECISION_HINT"] == "f32", compiled  # OpenVINO's CPU default is bf16 where it can
    assert compiled["KEY_CACHE_PRECISION"] == compiled["VALUE_CACHE_PRECISION"] == "f32", compiled  # default u8/f16
    assert compiled["INFERENCE_NUM_THREADS"] == 2 and compiled["EXECUTION_DEVICES"] == ["CPU"]


@pytest.mark.parametrize("arch", architecture_params(("llama",)))
def test_each_architecture_converts_batches_and_agrees_with_torch(launch, tiny, genai_cache, references, arch):
    model = tiny[arch]
    info = _prepare(launch, model, genai_cache)["phases"]["prepare"]["info"]
    assert info["artifact"] == f"/cache/openvino/{info['model_key']}/fp32/stateful"  # the openvino engine's IR
    assert set(info["weights"]["constant_types"]) == {"f32"}, info["weights"]
    tokenizer = info["tokenizer"]
    assert tokenizer["artifact"] == f"/cache/{ENGINE}/{info['model_key']}/tokenizer" and "seconds" in tokenizer
    assert tokenizer["converted"] or tokenizer["reason"], tokenizer
    rec = _run(launch, model, genai_cache, references(model))
    assert_exact(rec)
    assert_reused(rec)
    d = _details(rec)
    assert d["batching"].startswith("continuous batching") and "ContinuousBatchingPipeline" in d["library"]
    assert [p["decode_steps"] for p in rec["per_prompt"]] == [NEW_TOKENS] * PROMPTS  # one step for both prompts
    _assert_f32(rec)
    assert d["compiled"]["model"] == "LLM with Paged Attention"
    agreement = rec["agreement"]
    AGREEMENT[arch] = agreement_line(arch, rec)
    assert agreement["prompts"] == PROMPTS and agreement["reference_engine"]["name"] == "torch"
    assert agreement["share_identical"] == 1.0, AGREEMENT[arch]


@pytest.mark.heavy  # it needs all seven architectures' runs: make test-all
def test_fp32_agreement_over_the_seven_architectures():
    if len(AGREEMENT) < len(fixtures.ARCHITECTURES):
        pytest.skip("needs every architecture's run (run the whole module)")
    print("\nOpenVINO GenAI fp32 (PA, batch 2) vs torch fp32 eager:\n  " + "\n  ".join(AGREEMENT.values()))


@pytest.mark.parametrize("backend", ["PA", pytest.param("SDPA", marks=pytest.mark.heavy)])
def test_batch_1_streams_through_llmpipeline_step_by_step(launch, tiny, genai_cache, references, backend):
    model = tiny["llama"]
    _prepare(launch, model, genai_cache)
    rec = _run(launch, model, genai_cache, references(model, batch=1), batch=1,
               options={"attention_backend": backend})
    assert_exact(rec)
    assert_reused(rec)
    d = _details(rec)
    assert "LLMPipeline" in d["library"] and d["batching"] == "batch 1" and d["attention_backend"] == backend
    assert d["tokenizer_ir_loaded"] is True  # the pipeline as deployed: with its tokenizer IR
    assert [p["decode_steps"] for p in rec["per_prompt"]] == [NEW_TOKENS] * PROMPTS  # the streamer: once a token
    _assert_f32(rec)
    assert rec["agreement"]["share_identical"] == 1.0, agreement_line(backend, rec)


@pytest.mark.heavy  # CI time: make test-all (int8 goes through the openvino engine's NNCF path, tested there)
def test_int8_weight_compression_is_recorded_and_generates_exactly(launch, tiny, genai_cache, references):
    model = tiny["llama"]
    info = _prepare(launch, model, genai_cache, "int8")["phases"]["prepare"]["info"]
    assert info["weights"]["format"] == "int8" and info["artifact"].endswith("/int8/stateful")
    assert {"u8", "i8"} & set(info["weights"]["constant_types"]), info["weights"]
    rec = _run(launch, model, genai_cache, references(model), precision="int8")
    assert_exact(rec)
    compiled = _details(rec)["compiled"]
    assert compiled["INFERENCE_PRECISION_HINT"] == "f32" and compiled["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 32
    assert rec["agreement"]["prompts"] == PROMPTS  # recorded; int8 weights may change tokens


@pytest.mark.heavy  # CI time: make test-all (the exporter is the openvino engine's, whose refusal test_openvino runs)
def test_an_architecture_the_exporter_cannot_convert_fails_with_its_reason(launch, tiny, genai_cache,
                                                                          tmp_path_factory, readable_models):
    model = build_foreign("rwkv", tmp_path_factory.mktemp("foreign-genai") / "tiny-rwkv", tiny["llama"])
    readable_models(model)
    prep, _ = launch("prepare", body(model, engine=ENGINE, cache=genai_cache))
    assert prep["status"] == "failed" and prep["error"]["type"] == "ConversionError", summary(prep)
    assert "Trying to export a rwkv model, that is a custom or unsupported architecture" in prep["error"]["message"]
