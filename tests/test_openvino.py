"""OpenVINO engine: host-side checks of its contract, then the real runtime through the openvino image (the
orchestrator's Docker launcher: prepare with the cache read-write, measured runs read-only, no network).

What the container tests show: optimum-intel exports each of the study's seven architectures to a stateful IR (KV
cache inside the model); every run generates exactly the asked number of new tokens with the mode recorded, the
precision settings OpenVINO really compiled with are read back into the record (f32 hint and f32 KV cache for fp32 —
OpenVINO's CPU defaults are bf16 and f16), and the token ids agree with the torch fp32 eager reference; the
no-KV-cache and explicit-past modes give the same tokens; int8 weight compression is recorded as such.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _containers import Launch, build_image, engine_cache, summary
from conftest import architecture_params
from _converting_engines import tiny  # noqa: F401  (pytest fixture)
from _converting_engines import (PROMPTS, agreement_line, assert_exact, assert_reused, body, build_foreign,
                                 prepare_and_run, prepare_and_run_in_process, reference_factory)
from orchestrator import fixtures
from runners.engines import engine_class
from runners.engines.openvino import RECIPES, _check_precision
from runners.job import JobError, parse_job

AGREEMENT: dict[str, str] = {}


# ------------------------------------------------------------------------------------------------ host-only checks

def test_registered_with_its_precisions_and_options():
    cls = engine_class("openvino")
    assert cls.precisions == {"cpu": ("fp32", "bf16", "int8")} and set(RECIPES) == {"fp32", "bf16", "int8"}
    assert {"threads", "kv_cache", "ov_device", "kv_cache_precision", "dynamic_quantization_group_size"} \
        <= set(cls.options)
    job = parse_job(body(Path("/m"), engine="openvino", precision="int8", options={"kv_cache": "none"}))
    assert job.engine_options["kv_cache"] == "none"


@pytest.mark.parametrize("options, field", [({"kv_cache": "paged"}, "engine_options.kv_cache"),
                                            ({"ov_device": "NPU"}, "engine_options.ov_device"),
                                            ({"kv_cache_precision": "f8"}, "engine_options.kv_cache_precision"),
                                            ({"threads": 0}, "engine_options.threads")])
def test_bad_options_are_one_line_job_errors(options, field):
    with pytest.raises(JobError) as e:
        parse_job(body(Path("/m"), engine="openvino", options=options))
    assert e.value.field == field


def test_openvino_has_no_cuda_device():
    with pytest.raises(JobError) as e:
        parse_job(body(Path("/m"), engine="openvino", device="cuda"))
    assert e.value.field == "device"


def test_a_precision_the_device_does_not_give_fails_with_the_reason():
    _check_precision("bf16", {"INFERENCE_PRECISION_HINT": "bf16"}, "CPU")
    with pytest.raises(JobError, match="bf16 asked but OpenVINO on CPU runs with inference precision f32"):
        _check_precision("bf16", {"INFERENCE_PRECISION_HINT": "f32"}, "CPU")


# ---------------------------------------------------------------------------------------------- through the image

@pytest.fixture(scope="module")
def launch(docker_client, tmp_path_factory):
    runtime = build_image(docker_client, "openvino")
    runner = Launch(docker_client, runtime, tmp_path_factory.mktemp("openvino-work"), "test-openvino")
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory) -> Path:
    return engine_cache(tmp_path_factory.mktemp("openvino-cache") / "engines")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    return reference_factory(tmp_path_factory.mktemp("openvino-references"))


def _compiled(rec: dict) -> dict:
    return rec["engine"]["details"]["compiled"]


@pytest.mark.parametrize("arch", architecture_params(("gpt_neox", "gemma")))
def test_each_architecture_exports_stateful_and_generates_exactly(launch, tiny, ov_cache, references, arch):
    model = tiny[arch]
    prep, rec = prepare_and_run(launch, model, ov_cache, engine="openvino", reference=references(model))
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    assert info["cached"] is False and info["exporter"]["stateful"] is True
    assert info["artifact"] == f"/cache/openvino/{info['model_key']}/fp32/stateful"
    assert set(info["weights"]["constant_types"]) == {"f32"}, info["weights"]  # no silent int8/f16 weights
    assert_exact(rec)
    assert_reused(rec)
    d = rec["engine"]["details"]
    assert d["kv_cache"] is True and d["kv_cache_mode"] == "stateful" and d["stateful"] is True
    compiled = _compiled(rec)
    assert compiled["INFERENCE_PRECISION_HINT"] == "f32" and compiled["KV_CACHE_PRECISION"] == "f32", compiled
    assert compiled["INFERENCE_NUM_THREADS"] == 2 and compiled["EXECUTION_DEVICES"] == ["CPU"]
    assert rec["phases"]["compile"]["duration_s"] > 0  # compile_model has its own window
    agreement = rec["agreement"]
    assert agreement["prompts"] == PROMPTS and agreement["reference_engine"]["name"] == "torch"
    AGREEMENT[arch] = agreement_line(arch, rec)
    assert all(x is None or x >= 1 for x in agreement["first_divergence"]), AGREEMENT[arch]


@pytest.mark.heavy  # it needs all seven architectures' runs: make test-all
def test_fp32_agreement_over_the_seven_architectures_is_at_least_95_percent():
    if len(AGREEMENT) < len(fixtures.ARCHITECTURES):
        pytest.skip("needs every architecture's run (run the whole module)")
    pairs = [line.split(": ")[1].split(" identical")[0].split("/") for line in AGREEMENT.values()]
    identical, total = sum(int(a) for a, _ in pairs), sum(int(b) for _, b in pairs)
    print("\nOpenVINO fp32 (stateful) vs torch fp32 eager:\n  " + "\n  ".join(AGREEMENT.values()))
    assert identical / total >= 0.95, AGREEMENT


# --- option variants, in-process on the host's OpenVINO (same versions as the image) --------------------------------

@pytest.fixture(scope="module")
def host_ov():
    pytest.importorskip("optimum.intel", reason="host without the dev requirements' optimum-intel/openvino")


@pytest.mark.parametrize("mode", ["none", "explicit"])
def test_other_kv_cache_modes_are_their_own_conversion_and_give_the_same_tokens(host_ov, tiny, tmp_path,
                                                                                references, mode):
    model = tiny["llama"]
    prep, rec = prepare_and_run_in_process(model, tmp_path, engine="openvino", options={"kv_cache": mode},
                                           reference=references(model))
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    assert info["artifact"].endswith(f"/fp32/{mode}") and info["exporter"]["stateful"] is False
    assert info["exporter"]["task"] == ("text-generation" if mode == "none" else "text-generation-with-past")
    assert_exact(rec, container=False)
    d = rec["engine"]["details"]
    assert d["kv_cache_mode"] == mode and d["kv_cache"] is (mode != "none") and d["stateful"] is False
    assert rec["agreement"]["share_identical"] == 1.0, rec["agreement"]


def test_int8_weight_compression_is_recorded_and_generates_exactly(host_ov, tiny, tmp_path, references):
    model = tiny["llama"]
    prep, rec = prepare_and_run_in_process(model, tmp_path, engine="openvino", precision="int8",
                                           reference=references(model))
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    weights = info["weights"]
    assert weights["format"] == "int8" and weights["quantization"]["bits"] == 8
    assert info["source"]["precision"] == "fp32" and info["artifact"].endswith("/int8/stateful")
    assert "u8" in weights["constant_types"] or "i8" in weights["constant_types"], weights
    assert_exact(rec, container=False)
    compiled = _compiled(rec)
    assert compiled["INFERENCE_PRECISION_HINT"] == "f32" and compiled["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 32
    assert rec["agreement"]["prompts"] == PROMPTS  # recorded; int8 weights may change tokens


def test_bf16_runs_with_a_bf16_hint_or_fails_saying_the_cpu_lacks_it(host_ov, tiny, tmp_path, references):
    model = tiny["llama"]
    prep, rec = prepare_and_run_in_process(model, tmp_path, engine="openvino", precision="bf16",
                                           reference=references(model))
    assert prep["status"] == "ok" and prep["phases"]["prepare"]["info"]["artifact"].endswith("/fp32/stateful")
    if rec["status"] == "failed":  # a CPU without bf16: the precision is refused, not silently run in f32
        assert rec["error"]["phase"] == "compile" and "no bf16 support" in rec["error"]["message"], summary(rec)
        return
    assert_exact(rec, container=False)
    assert _compiled(rec)["INFERENCE_PRECISION_HINT"] == "bf16"
    assert rec["engine"]["details"]["precision_hint"] == "bf16"


def test_measured_run_without_a_prepared_ir_says_to_prepare(launch, tiny, tmp_path_factory):
    empty = engine_cache(tmp_path_factory.mktemp("openvino-empty") / "engines")
    rec, outcome = launch("run", body(tiny["gpt2"], engine="openvino", cache=empty))
    assert rec["status"] == "failed" and rec["error"]["type"] == "JobError", summary(rec)
    assert "run the prepare step first" in rec["error"]["message"] and outcome.exit_code == 2
    assert not any(empty.rglob("openvino_model.xml"))


def test_an_architecture_optimum_intel_cannot_export_fails_with_the_exporters_reason(launch, tiny, ov_cache,
                                                                                    tmp_path_factory,
                                                                                    readable_models):
    """RWKV has no OpenVINO export config in optimum-intel 1.27: prepare fails with optimum-intel's own words."""
    model = build_foreign("rwkv", tmp_path_factory.mktemp("foreign-ov") / "tiny-rwkv", tiny["llama"])
    readable_models(model)
    prep, _ = launch("prepare", body(model, engine="openvino", cache=ov_cache))
    assert prep["status"] == "failed" and prep["error"]["type"] == "ConversionError", summary(prep)
    assert "Trying to export a rwkv model, that is a custom or unsupported architecture" in prep["error"]["message"]
