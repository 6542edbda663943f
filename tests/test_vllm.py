"""vLLM engine: host-side checks of its options, then the real runtime through the vllm-cpu image (the orchestrator's
Docker launcher, no network, the image's shm-size label honoured), and the CUDA images where a GPU and the NVIDIA
container runtime are present (skipped otherwise, with the reason)."""

from __future__ import annotations

import os

import pytest

from _containers import Launch, build_image, engine_cache, shareable, summary
from _models import smollm2_dir, tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)
from runners.engines import engine_class
from runners.engines.vllm_engine import cpu_bind_list
from runners.job import JobError, parse_job

NEW_TOKENS = 16


def _job(**over):
    data = {"engine": "vllm", "device": "cpu", "precision": "fp32", "model": {"path": "/m"}}
    data.update(over)
    return parse_job(data)


def test_registered_with_its_precisions_and_options():
    cls = engine_class("vllm")
    assert cls.precisions == {"cuda": ("fp32", "fp16", "bf16"), "cpu": ("fp32", "bf16")}
    assert {"tensor_parallel_size", "gpu_memory_utilization", "enforce_eager", "threads"} <= set(cls.options)
    job = _job(device="cuda", precision="fp16", gpus=2, meters={"gpus": {"0": 0, "1": 1}},
               engine_options={"tensor_parallel_size": 2, "gpu_memory_utilization": 1, "enforce_eager": True})
    assert job.engine_options["tensor_parallel_size"] == 2 and job.gpus == 2


@pytest.mark.parametrize("options, field", [({"tensor_parallel_size": 0}, "engine_options.tensor_parallel_size"),
                                            ({"gpu_memory_utilization": 1.5}, "engine_options.gpu_memory_utilization"),
                                            ({"enforce_eager": "yes"}, "engine_options.enforce_eager"),
                                            ({"swap_space": 4}, "engine_options.swap_space")])
def test_bad_options_are_one_line_job_errors(options, field):
    with pytest.raises(JobError) as e:
        _job(engine_options=options)
    assert e.value.field == field


def test_fp16_is_not_offered_on_cpu():
    with pytest.raises(JobError, match="fp32, bf16"):
        _job(precision="fp16")


def test_cpu_binding_takes_the_first_visible_cpus():
    cpus = sorted(os.sched_getaffinity(0))
    assert cpu_bind_list(1) == str(cpus[0])
    assert cpu_bind_list(10_000) == ",".join(map(str, cpus))


def test_sampling_stops_on_the_eos_ids_of_the_context(tmp_path, monkeypatch):
    """vLLM is told the runner's EOS ids (the context's), not a set of its own from the tokenizer or config.json."""
    import json
    import sys
    import types
    from pathlib import Path

    from runners.engines.options import EngineContext

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [5, 6]}))
    cls = engine_class("vllm")
    ctx = EngineContext(device="cpu", precision="fp32", model_dir=Path(tmp_path), model_name="m", cache_dir=None,
                        eos_ids=frozenset({9, 7}))
    engine = cls(ctx, types.SimpleNamespace(eos_token_id=2), cls.check_options({}))
    assert engine._sampling(8, False)["stop_token_ids"] == [7, 9]
    fixed = engine._sampling(8, True)
    assert fixed["stop_token_ids"] is None and fixed["ignore_eos"] is True


# ---------------------------------------------------------------------------------------------- through the image

def _body(model_dir, *, precision="fp32", device="cpu", batch=2, count=3, new_tokens=NEW_TOKENS, options=None,
          reference=None, engine="vllm"):
    data = {"engine": engine, "device": device, "precision": precision,
            "model": {"name": model_dir.name, "path": str(model_dir)},
            "workload": {"count": count, "seed": 2412}, "generation": {"batch_size": batch, "new_tokens": new_tokens},
            "warmup": {"batches": 1}, "meters": {"codecarbon": False, "sample_interval_s": 0.1},
            "engine_options": dict(options or {}), "seed": 0}
    if reference:
        data["reference"] = str(reference)
    return data


def _reference(folder, model_dir, **over):
    from runners.record import validate_record
    from runners.runner import TrialRun

    data = _body(model_dir, engine="torch", **over)
    record = TrialRun(parse_job(data), data).run()
    validate_record(record)
    assert record["status"] == "ok", record["error"]
    return shareable(folder / f"ref-{model_dir.name}.json", record)


@pytest.fixture(scope="session")
def vllm_cpu(docker_client, tmp_path_factory):
    runtime = build_image(docker_client, "vllm-cpu")
    assert dict(runtime.container).get("shm_size") == "2g"  # the LABEL the orchestrator honours
    runner = Launch(docker_client, runtime, tmp_path_factory.mktemp("vllm-work"), "test-vllm")
    yield runner
    runner.close()


def _assert_exact(rec, count, new_tokens=NEW_TOKENS):
    assert rec["status"] == "ok", summary(rec)
    assert [p["generated_tokens"] for p in rec["per_prompt"]] == [new_tokens] * count
    assert rec["tokens"]["output"] == count * new_tokens
    compile_window = rec["phases"]["compile"]
    assert compile_window["info"]["startup_s"] > 0 and compile_window["duration_s"] > 0
    d = rec["engine"]["details"]
    assert d["step_clock"].startswith("engine steps") and d["startup_window"] == "compile"
    first = rec["per_prompt"][0]
    assert 0 < first["ttft_s"] < first["latency_s"]


def test_vllm_cpu_generates_exactly_and_agrees_with_torch(vllm_cpu, tiny_model_dir, readable_models,
                                                           tmp_path_factory):
    readable_models(tiny_model_dir)
    reference = _reference(tmp_path_factory.mktemp("vllm-refs"), tiny_model_dir)
    # enforce_eager: torch.compile of even a tiny model takes minutes on 2 busy cores (measured: 169 s start-up)
    rec, _ = vllm_cpu("run", _body(tiny_model_dir, options={"threads": 2, "enforce_eager": True}, reference=reference))
    _assert_exact(rec, count=3)
    d = rec["engine"]["details"]
    assert d["threads"] == 2 and d["max_num_seqs"] == 2 and d["dtype"] == "torch.float32", d
    assert d["enforce_eager"] is True and d["omp_threads_bind"] is not None
    agreement = rec["agreement"]
    assert agreement["prompts"] == 3 and agreement["reference_engine"]["name"] == "torch"
    assert all(x is None or x >= 1 for x in agreement["first_divergence"]), agreement


@pytest.mark.heavy  # a real model through vLLM's CPU build (1.5 min): make test-all; the tiny runs above stay in CI
def test_vllm_cpu_smollm2_real_model(vllm_cpu, smollm2_dir, readable_models, tmp_path_factory):
    readable_models(smollm2_dir)
    reference = _reference(tmp_path_factory.mktemp("vllm-refs-smol"), smollm2_dir, count=4, new_tokens=24)
    rec, _ = vllm_cpu("run", _body(smollm2_dir, count=4, new_tokens=24, options={"threads": 2, "enforce_eager": True},
                                   reference=reference))
    _assert_exact(rec, count=4, new_tokens=24)
    assert rec["agreement"]["share_identical"] >= 0.75, rec["agreement"]


# --------------------------------------------------------------------------------------------------- CUDA images

@pytest.fixture(scope="session")
def gpu_host(docker_client):
    from orchestrator.docker_launcher import gpu_problem

    problem = gpu_problem(docker_client)
    if problem:
        pytest.skip(f"CUDA images need a GPU host: {problem}")
    return docker_client


@pytest.mark.parametrize("runtime, engine, precision, options", [
    ("vllm-cuda", "vllm", "fp16", {"gpu_memory_utilization": 0.3}),
    ("vllm-cuda", "vllm", "fp32", {"gpu_memory_utilization": 0.3, "enforce_eager": True}),
    ("llamacpp-cuda", "llamacpp", "q8_0", {}),
])
def test_cuda_images_generate_exactly(gpu_host, tmp_path_factory, smollm2_dir, readable_models,
                                      runtime, engine, precision, options):
    readable_models(smollm2_dir)
    rt = build_image(gpu_host, runtime)
    launch = Launch(gpu_host, rt, tmp_path_factory.mktemp(f"{runtime}-work"), f"test-{runtime}")
    try:
        body = _body(smollm2_dir, engine=engine, device="cuda", precision=precision, count=4, options=options)
        if engine == "llamacpp":
            body["cache_dir"] = str(engine_cache(tmp_path_factory.mktemp("cuda-cache") / "engines"))
            prep, _ = launch("prepare", body)
            assert prep["status"] == "ok", summary(prep)
        rec, _ = launch("run", body)
        assert rec["status"] == "ok", summary(rec)
        assert [p["generated_tokens"] for p in rec["per_prompt"]] == [NEW_TOKENS] * 4
        gen = rec["phases"]["generate"]
        assert any(f["component"].startswith("gpu:") and f["source"] == "measured" for f in gen["energy"])
        if engine == "llamacpp":
            offload = rec["engine"]["details"]["offload"]
            n_done, n_all = map(int, offload.split()[1].split("/"))
            assert n_done == n_all, offload
    finally:
        launch.close()


def test_vllm_cpu_as_served_stops_where_the_runners_rule_says(vllm_cpu, smollm2_dir, readable_models,
                                                              tmp_path_factory):
    """As served with stop sequences: vLLM stops with its own `stop` strings; the runner checks each output ended
    exactly where its rule says (runners/stopping.py), and the tokens are torch's under the same rule."""
    readable_models(smollm2_dir)
    served = {"fixed_length": False, "stop_sequences": ["\n"]}
    ref_body = _body(smollm2_dir, engine="torch", count=4, new_tokens=24)
    ref_body["generation"].update(served)
    from runners.runner import TrialRun

    ref = TrialRun(parse_job(ref_body), ref_body).run()
    assert ref["status"] == "ok" and ref["stopping"]["inconsistent"] == 0, ref.get("stopping")
    reference = shareable(tmp_path_factory.mktemp("vllm-refs-served") / "ref.json", ref)
    body = _body(smollm2_dir, count=4, new_tokens=24, options={"threads": 2, "enforce_eager": True},
                 reference=reference)
    body["generation"].update(served)
    rec, _ = vllm_cpu("run", body)
    assert rec["status"] == "ok", summary(rec)
    assert rec["stopping"]["inconsistent"] == 0, [p["ended_by"] for p in rec["per_prompt"]]
    assert rec["stopping"]["ended_by"].get("stop"), rec["stopping"]  # the rule did stop some
    # vLLM matches stop strings in its detokenizer, after the step that completed them: a batch whose outputs all
    # stopped on a string costs one more decode step — recorded, not hidden (at most one per batch)
    assert rec["stopping"]["steps_past_end"] <= rec["stopping"]["batches_past_end"] <= 2, rec["stopping"]
    assert rec["agreement"]["share_identical"] >= 0.75, rec["agreement"]
