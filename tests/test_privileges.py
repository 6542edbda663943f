"""Least privilege of the measured containers, seen from inside: a trial of each CPU runtime through the orchestrator's
Docker launcher records (runners/privileges.py) no effective capabilities, no-new-privileges, a read-only root file
system, a pids limit in force and uid 1000 — and still generates its tokens. And the clean-up of a killed
orchestrator's containers touches only this results folder's, never another checkout's run of the same id.

In the default suite every CPU image × engine is checked from the conformance trials CI runs anyway
(tests/test_images.py asserts locked_down_problems on each record); this file's own trials, which also cover the
prepare (conversion) containers, are opt-in: SLM_PRIVILEGE_RUNTIMES=cpu (or a comma list) runs every CPU runtime
(~9 min on 2 busy cores: three conversions and vLLM's start-up)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.docker_layer import MEASURED_PIDS_LIMIT
from runners import privileges

# the engine that shows a runtime generating (conversions first where the engine converts), and its quick options
ENGINES = {"torch-cpu": "torch", "onnx-cpu": "onnx", "openvino": "openvino", "llamacpp-cpu": "llamacpp",
           "vllm-cpu": "vllm"}
CONVERTS = ("onnx", "openvino", "llamacpp")
QUICK = {"llamacpp": {"threads": 2}, "vllm": {"threads": 2, "enforce_eager": True}}
NEW_TOKENS = 2


def locked_down_problems(facts: dict[str, Any] | None) -> list[str]:
    """What a measured container's environment.privileges says it could do beyond least privilege (empty: none)."""
    if not facts:
        return ["the record has no environment.privileges"]
    expected = {"cap_eff": "0000000000000000", "cap_bnd": "0000000000000000", "no_new_privs": True, "root_read_only": True, "uid": 1000,
                "pids_max": MEASURED_PIDS_LIMIT}
    return [f"{k} is {facts.get(k)!r}, not {v!r}" for k, v in expected.items() if facts.get(k) != v]


def _asked() -> list[str]:
    asked = os.environ.get("SLM_PRIVILEGE_RUNTIMES", "")
    if not asked:  # CI time: the conformance test checks every image's trial record already
        return [pytest.param("torch-cpu", marks=pytest.mark.skip(
            reason="opt-in (SLM_PRIVILEGE_RUNTIMES=cpu): tests/test_images.py checks every CPU image's trial"))]
    return list(ENGINES) if asked == "cpu" else [r.strip() for r in asked.split(",") if r.strip()]


# --------------------------------------------------------------------------------------------------- without Docker

def test_privilege_facts_are_parsed_from_the_kernels_files():
    status = ("Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t00000000a80425fb\n"
              "NoNewPrivs:\t0\n")
    assert privileges.status_fields(status) == {"cap_eff": "0000000000000000", "cap_bnd": "00000000a80425fb",
                                                "no_new_privs": False}
    assert privileges.status_fields("CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nNoNewPrivs:\t1\n") == {
        "cap_eff": "0000000000000000", "cap_bnd": "0000000000000000", "no_new_privs": True}
    assert privileges.status_fields("Name:\told kernel\n") == {"cap_eff": None, "cap_bnd": None, "no_new_privs": None}
    mounts = ("overlay / overlay ro,relatime,lowerdir=/a:/b,upperdir=/c 0 0\n"
              "tmpfs /tmp tmpfs rw,nosuid,nodev,size=2097152k 0 0\n")
    assert privileges.root_read_only(mounts) is True
    assert privileges.root_read_only("/dev/vda / ext4 rw,relatime 0 0\n") is False
    # the last mount on / is the one in force
    assert privileges.root_read_only("rootfs / rootfs ro 0 0\n/dev/vda / ext4 rw,relatime 0 0\n") is False
    assert privileges.root_read_only("tmpfs /tmp tmpfs rw 0 0\n") is None
    assert privileges.pids_limit("4096\n") == 4096 and privileges.pids_limit("max\n") == "max"
    assert privileges.pids_limit("garbage") is None


def test_this_process_facts_fit_the_record_schema():
    import jsonschema

    from runners.record.schema import PRIVILEGES_SCHEMA

    facts = privileges.collect()
    jsonschema.validate(facts, PRIVILEGES_SCHEMA)
    assert facts["uid"] == os.getuid()


def test_measured_containers_are_locked_down_as_the_sandbox_is(tmp_path):
    """Every option of the sandbox's lock-down is in a measured container's options, the user pinned to 1000:1000
    whatever the image says, and /cache writable only in prepare."""
    from orchestrator.docker_launcher import DockerLauncher
    from orchestrator.docker_layer import LOCKED_DOWN
    from orchestrator.images import discover
    from orchestrator.launch import LaunchSpec

    launcher = DockerLauncher(client=object(), run_id="r", results=tmp_path)
    for mode in ("run", "prepare"):
        spec = LaunchSpec(name="t", runtime=discover()["torch-cpu"], mode=mode, job={"cache_dir": str(tmp_path)},
                          work=tmp_path / mode, log_path=tmp_path / "log", timeout_s=1)
        job, volumes = launcher._mounts(spec)
        options = launcher._options(spec, volumes)
        assert {k: options[k] for k in LOCKED_DOWN} == LOCKED_DOWN and options["user"] == "1000:1000"
        assert options["pids_limit"] == MEASURED_PIDS_LIMIT and set(options["tmpfs"]) == {"/tmp"}
        assert options["environment"]["HOME"] == "/tmp"  # every home cache on the tmpfs
        assert volumes[str(tmp_path.resolve())]["mode"] == ("rw" if mode == "prepare" else "ro")


# ------------------------------------------------------------------------------------------------------ with Docker

@pytest.fixture(scope="module")
def tiny_llama(readable_models) -> Path:
    """The tiny Llama with SmolLM2's tokenizer: one model every CPU runtime converts and runs."""
    from orchestrator import fixtures

    model = fixtures.build_tiny("llama", fixtures.default_root() / fixtures.fixture_name("llama", tokenizer="smollm2"),
                                tokenizer="smollm2")
    readable_models(model)
    return model


def _body(model: Path, engine: str, cache: Path) -> dict[str, Any]:
    return {"engine": engine, "device": "cpu", "precision": "fp32", "model": {"name": model.name, "path": str(model)},
            "workload": {"count": 1, "seed": 1}, "generation": {"batch_size": 1, "new_tokens": NEW_TOKENS},
            "warmup": {"batches": 0}, "meters": {"codecarbon": False, "sample_interval_s": 0.1},
            "engine_options": QUICK.get(engine, {}), "seed": 0, "cache_dir": str(cache)}


@pytest.mark.parametrize("runtime", _asked())
def test_a_trial_runs_locked_down_and_still_generates(runtime, docker_client, tiny_llama, tmp_path):
    from _containers import Launch, build_image, engine_cache, summary

    rt = build_image(docker_client, runtime)
    engine = ENGINES[runtime]
    body = _body(tiny_llama, engine, engine_cache(tmp_path / "cache"))
    launch = Launch(docker_client, rt, tmp_path / "work", f"test-privileges-{runtime}")
    try:
        records = [launch(mode, body)[0] for mode in (("prepare", "run") if engine in CONVERTS else ("run",))]
    finally:
        launch.close()
    for rec in records:  # the conversion container too
        assert rec["status"] == "ok", summary(rec)
        assert locked_down_problems(rec["environment"].get("privileges")) == [], (rec["mode"], rec["environment"])
    assert [p["generated_tokens"] for p in records[-1]["per_prompt"]] == [NEW_TOKENS]


def test_stale_clean_up_touches_only_this_results_folders_containers(docker_client, torch_cpu_image, tmp_path):
    """Two checkouts, one run id: each orchestrator's clean-up removes its own leftovers, never the other's."""
    from orchestrator.docker_launcher import DockerLauncher, results_scope
    from orchestrator.docker_layer import remove

    run_id = f"test-privileges-stale-{os.getpid()}"
    ours = DockerLauncher(docker_client, run_id, results=tmp_path / "a")
    theirs = DockerLauncher(docker_client, run_id, results=tmp_path / "b")
    assert results_scope(tmp_path / "a") == results_scope(tmp_path / "b" / ".." / "a")  # one folder, however named
    made = {who: docker_client.containers.create(torch_cpu_image["id"], ["true"], labels=launcher.labels("t1"))
            for who, launcher in (("ours", ours), ("theirs", theirs))}
    try:
        assert ours.remove_stale() == [made["ours"].short_id]
        alive = {c.id for c in docker_client.containers.list(all=True, filters={"label": f"io.slm-matrix.run={run_id}"})}
        assert alive == {made["theirs"].id}
    finally:
        for c in made.values():
            remove(c)
