"""Image conformance: every runtime image under images/ × every engine it declares, the moment its folder exists —
it builds (on the shared base, layer-cached), its runner validates a job and generates exactly N tokens on a tiny
fixture, and the record names the engine's library versions. CUDA images skip without a GPU host, with the reason.
And a new runtime is one folder: a copy of torch-cpu under a new name is discovered, planned and run with no other
file touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, orchestrate
from test_privileges import locked_down_problems

from orchestrator.images import discover, sources_hash

NEW_TOKENS, PROMPTS = 4, 2
# Options that only make the tiny run quick (vLLM's torch.compile of the model takes minutes on 2 cores).
QUICK_OPTIONS = {"vllm": {"threads": 2, "enforce_eager": True}}
CELLS = [(rt.name, engine) for rt in discover().values() for engine in rt.engines]


def _matrix(path: Path, runtimes: dict[str, tuple[str, ...]], *, name: str) -> Path:
    entries = []
    for rt, engines in runtimes.items():
        options = {k: v for e in engines for k, v in QUICK_OPTIONS.get(e, {}).items()}
        entries.append(f"[runtimes.{rt}]\nengines = {json.dumps(list(engines))}\n"
                       + (f"engine_options = {_toml(options)}\n" if options else ""))
    entries = "\n".join(entries)
    path.write_text(f"""
[matrix]
name = "{name}"
seed = 1
repetitions = 1

[workload]
count = {PROMPTS}

[generation]
new_tokens = {NEW_TOKENS}

[warmup]
batches = 0

[host]
idle_seconds = 0

[container]
timeout_s = 900

{entries}
[models.tiny-llama]
fixture = "llama"
tokenizer = "smollm2"   # a tokenizer llama.cpp's converter recognises
""")
    return path


def _toml(options: dict) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items()) + "}"


@pytest.fixture(scope="module")
def conformance(tmp_path_factory, docker_client, model_cache):
    """One run of the orchestrator over every CPU image × engine (CUDA ones need a GPU host: see the test)."""
    from orchestrator.docker_launcher import gpu_problem

    problem = gpu_problem(docker_client)
    runtimes = {rt.name: rt.engines for rt in discover().values() if not rt.gpu or problem is None}
    root = tmp_path_factory.mktemp("conformance")
    matrix = _matrix(root / "matrix.toml", runtimes, name="conformance")
    proc = orchestrate("run", "--matrix", str(matrix), "--results", str(root / "results"), "--cache",
                       str(model_cache), "--build", timeout=3600)
    records = {(r["trial"]["runtime"], r["engine"]["name"]): r
               for r in (json.loads(p.read_text()) for p in (root / "results" / "conformance" / "trials").glob("*.json"))}
    return {"proc": proc, "records": records, "gpu_problem": problem, "root": root}


@pytest.mark.parametrize("runtime, engine", CELLS, ids=[f"{r}/{e}" for r, e in CELLS])
def test_image_conforms(conformance, docker_client, runtime, engine):
    rt = discover()[runtime]
    if rt.gpu and conformance["gpu_problem"]:
        pytest.skip(f"{runtime} needs a GPU host: {conformance['gpu_problem']}")
    rec = conformance["records"].get((runtime, engine))
    assert rec is not None, conformance["proc"].stdout[-3000:] + conformance["proc"].stderr[-3000:]
    assert rec["status"] == "ok", rec["error"]
    # exactly N new tokens for every prompt, from the image built from this checkout
    assert [p["generated_tokens"] for p in rec["per_prompt"]] == [NEW_TOKENS] * PROMPTS
    assert all(len(p["output_ids"]) == NEW_TOKENS for p in rec["per_prompt"])
    assert rec["host"]["image"] == rt.image and rec["host"]["image_id"] == docker_client.images.get(rt.image).id
    # and the recipe it was built from (the sources hash of this checkout: the image was built from it just now)
    assert rec["host"]["image_sources"] == sources_hash(rt)
    # and the base image it was built FROM, by digest (the local base's id where it was made here)
    assert "@sha256:" in rec["host"]["image_base"], rec["host"]["image_base"]
    # it ran locked down, as seen from inside: no capabilities, no-new-privileges, read-only root, a pids limit, uid 1000
    assert locked_down_problems(rec["environment"].get("privileges")) == []
    # the engine's library versions are in the record
    libraries = {k: v for k, v in rec["environment"]["libraries"].items() if v}
    assert libraries.get("transformers") and len(libraries) >= 3, libraries
    # the runner inside validates a job: the same one, and a broken one with its one-line reason
    job = dict(rec["job"], trial={})
    job_dir = conformance["root"] / "jobs" / f"{runtime}-{engine}"
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "ok.json").write_text(json.dumps(job))
    (job_dir / "bad.json").write_text(json.dumps({**job, "precision": "fp8"}))
    job_dir.chmod(0o755)
    for f in job_dir.iterdir():
        f.chmod(0o644)
    out = docker_client.containers.run(rt.image, ["validate", "/jobs/ok.json"], remove=True, network_disabled=True,
                                       volumes={str(job_dir): {"bind": "/jobs", "mode": "ro"}})
    assert out.decode().startswith(f"ok: {engine}/{rt.device}/"), out
    with pytest.raises(Exception) as err:
        docker_client.containers.run(rt.image, ["validate", "/jobs/bad.json"], remove=True, network_disabled=True,
                                     volumes={str(job_dir): {"bind": "/jobs", "mode": "ro"}}, stderr=True)
    assert "job.precision" in str(err.value) and "fp8" in str(err.value)
    # the image has what the engine needs: its own survey (what the GPU acceptance kit asks a bare host) agrees
    said = docker_client.containers.run(
        rt.image, ["-c", f"from runners.engines import engine_class; "
                         f"print(engine_class({engine!r}).unavailable({rt.device!r}))"],
        entrypoint=["python"], remove=True, network_disabled=True)
    assert said.decode().strip() == "None", said


def test_a_new_runtime_folder_is_discovered_planned_and_run(tmp_path, docker_client, model_cache):
    """images/torch-cpu copied to images/torch-cpu-1t with one ENV line more, in a copy of this checkout: nothing
    else is touched, and the orchestrator discovers, plans, builds and runs it."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".git", "results", "__pycache__", ".pytest_cache"))
    shutil.copytree(repo / "images" / "torch-cpu", repo / "images" / "torch-cpu-1t")
    df = repo / "images" / "torch-cpu-1t" / "Dockerfile"
    df.write_text(df.read_text().replace("USER runner\n", "ENV OMP_NUM_THREADS=1\nUSER runner\n"))
    matrix = _matrix(tmp_path / "matrix.toml", {"torch-cpu-1t": ("torch",)}, name="variant")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(repo / "orchestrate.py"), *args], cwd=repo, capture_output=True,
                              text=True, timeout=1800, env={**os.environ, "COLUMNS": "200"})

    plan = cli("plan", "--matrix", str(matrix))
    assert plan.returncode == 0 and "torch-cpu-1t__torch__tiny-llama__fp32" in plan.stdout, plan.stdout + plan.stderr
    run = cli("run", "--matrix", str(matrix), "--results", str(tmp_path / "results"), "--cache", str(model_cache),
              "--build")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rec, = (json.loads(p.read_text()) for p in (tmp_path / "results" / "variant" / "trials").glob("*.json"))
    assert rec["status"] == "ok" and rec["trial"]["runtime"] == "torch-cpu-1t"
    assert rec["host"]["image"].endswith("/torch-cpu-1t:latest")
    env = docker_client.images.get(rec["host"]["image"]).attrs["Config"]["Env"]
    assert "OMP_NUM_THREADS=1" in env


def test_build_inputs_are_staged_only_when_asked_and_only_pinned_wheels(tmp_path, monkeypatch):
    from orchestrator import images

    ca, wheels = tmp_path / "ca", tmp_path / "wheels"
    ca.mkdir()
    wheels.mkdir()
    (ca / "zz-test-proxy.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    pinned = "transformers-4.57.6-py3-none-any.whl"  # pinned by the images' constraints.txt
    unpinned = "transformers-0.0.1-py3-none-any.whl"
    for name in (pinned, unpinned):
        (wheels / name).write_bytes(b"not a real wheel")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")  # given: no probe of the PyTorch index
    staged_ca = REPO / "images" / "extra-ca" / "zz-test-proxy.crt"
    staged = {n: REPO / "images" / "wheelhouse" / n for n in (pinned, unpinned)}
    assert not any(p.exists() for p in staged.values())
    monkeypatch.delenv(images.EXTRA_CA_ENV, raising=False)
    monkeypatch.delenv(images.WHEEL_DIRS_ENV, raising=False)
    try:
        assert images.stage_build_inputs(lambda line: None) == {"extra_ca": [], "wheels": []}  # nothing unasked
        monkeypatch.setenv(images.EXTRA_CA_ENV, str(ca))
        monkeypatch.setenv(images.WHEEL_DIRS_ENV, str(wheels))
        facts = images.stage_build_inputs(lambda line: None)
        assert facts == {"extra_ca": ["zz-test-proxy.crt"], "wheels": [pinned]}
        assert staged_ca.is_file() and staged[pinned].is_file() and not staged[unpinned].exists()
        monkeypatch.setenv(images.EXTRA_CA_ENV, str(tmp_path / "nowhere"))
        with pytest.raises(images.ImageError, match="SLM_EXTRA_CA_DIR"):
            images.stage_build_inputs(lambda line: None)
    finally:
        staged_ca.unlink(missing_ok=True)
        for p in staged.values():
            p.unlink(missing_ok=True)


def test_the_base_image_is_the_given_one_else_one_this_host_has(docker_client, monkeypatch):
    from orchestrator import images

    monkeypatch.setenv("BASE_IMAGE", "my/base:1")
    assert images.ensure_base(docker_client, lambda line: None) == "my/base:1"
    monkeypatch.delenv("BASE_IMAGE")
    have = {t for img in docker_client.images.list() for t in img.tags}
    if not ({images.STOCK_BASE, images.LOCAL_BASE} & have):
        pytest.skip("neither base image is here (ensure_base would pull or build one)")
    got = images.ensure_base(docker_client, lambda line: None)
    assert got == (images.STOCK_BASE if images.STOCK_BASE in have else images.LOCAL_BASE)
    assert os.environ["BASE_IMAGE"] == got  # the builds of this process use it
