"""ONNX Runtime engine: host-side checks of its contract, then the real runtime through the onnx-cpu image (the
orchestrator's Docker launcher: prepare with the cache read-write, measured runs read-only, no network), and the
onnx-cuda image (its GPU test runs only where a GPU and the NVIDIA container runtime are).

What the container tests show: optimum exports each of the study's seven architectures with past key/values; every
run generates exactly the asked number of new tokens with the KV cache, on the provider asked for, and its token ids
agree with the torch fp32 eager reference (record["agreement"]); int8 dynamic quantisation is made from the cached
fp32 export; a measured run never converts (read-only cache: a missing conversion says to run prepare).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _containers import Launch, build_image, engine_cache, summary
from conftest import architecture_params
from _converting_engines import tiny  # noqa: F401  (pytest fixture)
from _converting_engines import (NEW_TOKENS, PROMPTS, agreement_line, assert_exact, assert_reused, body,
                                 build_foreign, prepare_and_run, reference_factory)
from orchestrator import fixtures
from runners.engines import engine_class
from runners.engines.onnx import ProviderFallback, check_provider
from runners.job import JobError, parse_job

AGREEMENT: dict[str, str] = {}  # arch -> line, printed at the end (pytest -s) and checked as a whole


# ------------------------------------------------------------------------------------------------ host-only checks

def test_registered_with_its_precisions_and_options():
    cls = engine_class("onnx")
    assert cls.precisions == {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16")}
    assert {"threads", "io_binding", "graph_optimization"} <= set(cls.options)
    job = parse_job(body(Path("/m"), engine="onnx", precision="int8", options={"io_binding": True}))
    assert job.precision == "int8" and job.engine_options["io_binding"] is True


@pytest.mark.parametrize("device, precision", [("cpu", "fp16"), ("cuda", "int8")])
def test_a_precision_the_device_lacks_is_a_job_error_naming_the_supported_ones(device, precision):
    with pytest.raises(JobError) as e:
        parse_job(body(Path("/m"), engine="onnx", device=device, precision=precision))
    assert e.value.field == "precision"


@pytest.mark.parametrize("options, field", [({"graph_optimization": "max"}, "engine_options.graph_optimization"),
                                            ({"io_binding": "yes"}, "engine_options.io_binding"),
                                            ({"threads": 0}, "engine_options.threads")])
def test_bad_options_are_one_line_job_errors(options, field):
    with pytest.raises(JobError) as e:
        parse_job(body(Path("/m"), engine="onnx", options=options))
    assert e.value.field == field


def test_provider_fallback_is_an_error_carrying_onnx_runtimes_message():
    check_provider("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"])  # what was asked
    log = ("2026-11-22 [E:onnxruntime:Default, provider_bridge_ort.cc:2036] Failed to load library "
           "libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared object file\n"
           "[W:onnxruntime:Default, onnxruntime_pybind_state.cc:1032] Failed to create CUDAExecutionProvider.\n")
    with pytest.raises(ProviderFallback) as e:
        check_provider("CUDAExecutionProvider", ["CPUExecutionProvider"], log)
    assert "silent fallback" in str(e.value) and "CUDAExecutionProvider" in str(e.value)
    assert "libcudnn.so.9: cannot open shared object file" in str(e.value)  # ORT's own reason
    assert "Failed to create CUDAExecutionProvider" in str(e.value) or "libcudnn" in str(e.value)


def test_conversion_cache_is_atomic_keyed_by_content_and_never_converts_where_it_cannot_write(tmp_path):
    from runners.engines import _conversion

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    calls = []

    def convert(out: Path) -> dict:
        calls.append(out)
        (out / "model.onnx").write_bytes(b"onnx")
        return {"exporter": {"tool": "test"}}

    cache = tmp_path / "cache"
    made = _conversion.ensure(cache, "onnx", "tiny/m", model, "fp32", convert)
    assert made["cached"] is False and made["model_key"].startswith("tiny_m-") and len(calls) == 1
    assert Path(made["artifact"]) == cache / "onnx" / made["model_key"] / "fp32"
    assert made["files"] == {"model.onnx": 4} and made["architecture"] == "LlamaForCausalLM"
    again = _conversion.ensure(cache, "onnx", "tiny/m", model, "fp32", convert)
    assert again["cached"] is True and again["created_unix"] == made["created_unix"] and len(calls) == 1

    def refuse(out: Path) -> dict:
        (out / "half.onnx").write_bytes(b"half")
        raise ValueError("Trying to export a foo model, that is a custom or unsupported architecture")

    with pytest.raises(_conversion.ConversionError, match="ValueError: Trying to export a foo model"):
        _conversion.ensure(cache, "onnx", "tiny/m", model, "int8", refuse)
    assert sorted(p.name for p in (cache / "onnx" / made["model_key"]).iterdir()) == ["fp32"]  # no half export

    (model / "model.safetensors").write_bytes(b"\1" * 64)  # other weights, same size: another key
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")  # a cache that cannot be written (like the read-only mount of a measured run)
    with pytest.raises(JobError, match="run the prepare step first") as e:
        _conversion.ensure(blocked, "onnx", "tiny/m", model, "fp32", convert)
    assert e.value.field == "cache_dir" and len(calls) == 1
    with pytest.raises(JobError, match="needs a cache"):
        _conversion.ensure(None, "onnx", "tiny/m", model, "fp32", convert)


# ---------------------------------------------------------------------------------------------- through the image

@pytest.fixture(scope="module")
def launch(docker_client, tmp_path_factory):
    runtime = build_image(docker_client, "onnx-cpu")
    runner = Launch(docker_client, runtime, tmp_path_factory.mktemp("onnx-work"), "test-onnx")
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    return engine_cache(tmp_path_factory.mktemp("onnx-cache") / "engines")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    return reference_factory(tmp_path_factory.mktemp("onnx-references"))


@pytest.mark.parametrize("arch", architecture_params(("gpt2", "bloom", "phi")))
def test_each_architecture_exports_with_past_and_generates_exactly(launch, tiny, onnx_cache, references, arch):
    model = tiny[arch]
    prep, rec = prepare_and_run(launch, model, onnx_cache, engine="onnx", reference=references(model))
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    assert info["cached"] is False and info["exporter"]["task"] == "text-generation-with-past"
    assert info["exporter"]["optimum-onnx"] and info["exporter"]["onnxruntime"]
    assert info["artifact"] == f"/cache/onnx/{info['model_key']}/fp32"
    assert "model.onnx" in info["files"] and prep["phases"]["prepare"]["duration_s"] > 0
    assert_exact(rec)
    assert_reused(rec)
    d = rec["engine"]["details"]
    assert d["provider"] == "CPUExecutionProvider" and d["providers"] == ["CPUExecutionProvider"]
    assert d["kv_cache"] is True and d["intra_op_threads"] == 2 and d["io_binding"] is False
    agreement = rec["agreement"]
    assert agreement["prompts"] == PROMPTS and agreement["reference_engine"]["name"] == "torch"
    AGREEMENT[arch] = agreement_line(arch, rec)
    # fp32 through another kernel library: the first token (a whole forward pass over the prompt) must agree
    assert all(x is None or x >= 1 for x in agreement["first_divergence"]), AGREEMENT[arch]


@pytest.mark.heavy  # it needs all seven architectures' runs: make test-all
def test_fp32_agreement_over_the_seven_architectures_is_at_least_95_percent():
    if len(AGREEMENT) < len(fixtures.ARCHITECTURES):
        pytest.skip("needs every architecture's run (run the whole module)")
    pairs = [line.split(": ")[1].split(" identical")[0].split("/") for line in AGREEMENT.values()]
    identical, total = sum(int(a) for a, _ in pairs), sum(int(b) for _, b in pairs)
    print("\nONNX Runtime fp32 vs torch fp32 eager:\n  " + "\n  ".join(AGREEMENT.values()))
    assert identical / total >= 0.95, AGREEMENT


def test_int8_quantises_the_cached_fp32_export_and_is_reused(launch, tiny, onnx_cache, references):
    model = tiny["llama"]
    prep, rec = prepare_and_run(launch, model, onnx_cache, engine="onnx", precision="int8",
                                reference=references(model))
    assert prep["status"] == "ok", summary(prep)
    info = prep["phases"]["prepare"]["info"]
    assert info["exporter"]["tool"] == "optimum.onnxruntime.ORTQuantizer"
    assert info["quantization"]["method"] == "dynamic" and info["quantization"]["weights_dtype"] == "QInt8"
    assert info["source"]["precision"] == "fp32"  # made from the fp32 export (itself exported first if missing)
    assert "model_quantized.onnx" in info["files"]
    fp32_info = onnx_cache / Path(info["source"]["artifact"]).relative_to("/cache") / "conversion.json"
    assert info["bytes"] < json.loads(fp32_info.read_text())["bytes"]  # int8 weights: a smaller model
    assert_exact(rec)
    assert_reused(rec)
    # quantised weights change the numbers: the agreement is recorded, not required to be total
    assert rec["agreement"]["prompts"] == PROMPTS
    again, _ = launch("prepare", body(model, engine="onnx", precision="int8", cache=onnx_cache))
    assert again["phases"]["prepare"]["info"]["cached"] is True
    assert again["phases"]["prepare"]["info"]["created_unix"] == info["created_unix"]  # the same conversion


def test_measured_run_without_a_prepared_export_says_to_prepare(launch, tiny, tmp_path_factory):
    empty = engine_cache(tmp_path_factory.mktemp("onnx-empty") / "engines")
    rec, outcome = launch("run", body(tiny["llama"], engine="onnx", cache=empty))
    assert rec["status"] == "failed" and rec["error"]["type"] == "JobError", summary(rec)
    assert rec["error"]["phase"] == "prepare" and "run the prepare step first" in rec["error"]["message"]
    assert outcome.exit_code == 2
    assert not any(empty.rglob("model.onnx"))  # and it converted nothing


def test_an_architecture_optimum_cannot_export_fails_with_the_exporters_reason(launch, tiny, onnx_cache,
                                                                             tmp_path_factory, readable_models):
    """Mamba (a state-space LM outside the study) has no ONNX export config in optimum-onnx 0.1.0: the cell fails in
    prepare with optimum's own words, leaves no half export behind, and the matrix goes on."""
    model = build_foreign("mamba", tmp_path_factory.mktemp("foreign") / "tiny-mamba", tiny["llama"])
    readable_models(model)
    prep, outcome = launch("prepare", body(model, engine="onnx", cache=onnx_cache))
    assert prep["status"] == "failed" and prep["error"]["type"] == "ConversionError", summary(prep)
    message = prep["error"]["message"]
    assert prep["error"]["phase"] == "prepare" and "onnx conversion of tiny-mamba (MambaForCausalLM)" in message
    assert "Trying to export a mamba model, that is a custom or unsupported architecture" in message
    assert outcome.exit_code == 1
    assert not list((onnx_cache / "onnx").glob("tiny-mamba-*/*"))  # no conversion, not even a half one


def test_io_binding_on_cpu_gives_the_same_tokens_in_process(tiny, tmp_path, references):
    """optimum's IO binding path (the one CUDA uses) on the CPU provider, on the host's ONNX Runtime."""
    pytest.importorskip("optimum.onnxruntime", reason="host without the dev requirements' optimum-onnx")
    from runners.runner import TrialRun

    model = tiny["gpt2"]
    data = body(model, engine="onnx", options={"io_binding": True}, cache=tmp_path, reference=references(model))
    assert TrialRun(parse_job(data), data, mode="prepare").run()["status"] == "ok"
    rec = TrialRun(parse_job(data), data).run()
    assert rec["status"] == "ok", rec["error"]
    assert rec["engine"]["details"]["io_binding"] is True and rec["tokens"]["output"] == PROMPTS * NEW_TOKENS
    assert rec["agreement"]["share_identical"] == 1.0, rec["agreement"]


# -------------------------------------------------------------------------------------------------------- CUDA

@pytest.fixture(scope="module")
def onnx_cuda(docker_client):
    return build_image(docker_client, "onnx-cuda")


def test_onnx_cuda_image_has_the_cuda_provider_and_the_fallback_is_detected(docker_client, onnx_cuda):
    """Without a GPU (this host), the onnx-cuda image still proves two things: its onnxruntime-gpu offers the CUDA
    provider with the CUDA torch's libraries, and a CUDA session that silently lands on the CPU is caught by the
    engine's check with ONNX Runtime's own message."""
    script = (
        "import onnx, onnxruntime as ort, torch; from onnx import helper, TensorProto as T\n"
        "from runners.engines.onnx import check_provider, _capture_fd2\n"
        "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', "
        "[helper.make_tensor_value_info('x', T.FLOAT, [1])], [helper.make_tensor_value_info('y', T.FLOAT, [1])])\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]); m.ir_version = 8\n"
        "print('available', ort.get_available_providers())\n"
        "with _capture_fd2() as log:\n"
        "    s = ort.InferenceSession(m.SerializeToString(), providers=['CUDAExecutionProvider'])\n"
        "print('providers', s.get_providers())\n"
        "try:\n    check_provider('CUDAExecutionProvider', s.get_providers(), log.text); print('CHECK passed')\n"
        "except Exception as e:\n    print('CHECK raised', type(e).__name__, e)\n")
    out = docker_client.containers.run(onnx_cuda.image, ["-c", script], entrypoint="python", remove=True,
                                       network_disabled=True, stderr=True).decode()
    assert "CUDAExecutionProvider" in out.split("available", 1)[1].splitlines()[0], out
    gpu = "CHECK passed" in out
    if not gpu:  # no GPU here: ORT fell back to the CPU, and the check says so with ORT's reason
        assert "providers ['CPUExecutionProvider']" in out and "CHECK raised ProviderFallback" in out, out


def _gpu_problem(client) -> str | None:
    from orchestrator.docker_launcher import gpu_problem

    return gpu_problem(client)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_cuda_generates_on_the_gpu_with_io_binding(docker_client, onnx_cuda, tiny, tmp_path_factory,
                                                        references, precision):
    problem = _gpu_problem(docker_client)
    if problem:
        pytest.skip(f"no GPU for the onnx-cuda run: {problem}")
    cache = engine_cache(tmp_path_factory.mktemp(f"onnx-cuda-{precision}") / "engines")
    launch = Launch(docker_client, onnx_cuda, tmp_path_factory.mktemp("onnx-cuda-work"), "test-onnx-cuda")
    try:
        model = tiny["llama"]
        prep, rec = prepare_and_run(launch, model, cache, engine="onnx", device="cuda", precision=precision,
                                    reference=references(model))
    finally:
        launch.close()
    assert prep["status"] == "ok", summary(prep)
    assert_exact(rec)
    d = rec["engine"]["details"]
    assert d["provider"] == "CUDAExecutionProvider" and d["io_binding"] is True, d
    assert any(f["component"].startswith("gpu:") and f["source"] == "measured"
               for f in rec["phases"]["generate"]["energy"])
    if precision == "fp32":
        assert all(x is None or x >= 1 for x in rec["agreement"]["first_divergence"]), rec["agreement"]


def teardown_module(module):
    if AGREEMENT and os.environ.get("PYTEST_XDIST_WORKER") is None:
        print("\nONNX Runtime fp32 agreement with torch fp32:\n  " + "\n  ".join(AGREEMENT.values()))
