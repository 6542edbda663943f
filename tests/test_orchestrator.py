"""The orchestrator against the real Docker engine and the real runner: the smoke matrix end to end, resume, failures
(crash, timeout, out of memory), Ctrl-C, the process launcher, CUDA rows without a GPU, GPU passthrough."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _models import smollm2_dir, tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)
from conftest import REPO, matrix_file, orchestrate

from orchestrator.docker_launcher import LABEL_RUN, gpu_problem
from orchestrator.matrix import load
from orchestrator.plan import expand
from orchestrator.store import RunStore
from runners.record import SOURCES, validate_record

SMOKE = REPO / "matrix-smoke.toml"
E2E_MODELS = ["tiny-llama", "tiny-gpt2"]  # two of the study's architectures (Llama, GPT-2)


def records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*.json"))}


def containers_of(client, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})


# --- the smoke matrix end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, torch_cpu_image, model_cache):
    results = tmp_path_factory.mktemp("results")
    args = ["run", "--matrix", str(SMOKE), "--run-id", "e2e", "--results", str(results), "--cache", str(model_cache),
            "--runtime", "torch-cpu"]
    for m in E2E_MODELS:
        args += ["--model", m]
    first = orchestrate(*args, timeout=1800)
    assert first.returncode == 0, first.stdout + first.stderr
    return {"dir": results / "e2e", "results": results, "args": args, "first": first, "image": torch_cpu_image,
            "cache": model_cache}


def test_smoke_writes_one_valid_record_per_trial(smoke, docker_client):
    plan = expand(load(SMOKE))
    expected = {t.id for t in plan.select(runtimes=["torch-cpu"], models=E2E_MODELS)}
    assert len(expected) == 2 * 2  # two architectures × two repetitions, one runtime
    recs = records(smoke["dir"])
    assert set(recs) == expected
    for tid, rec in recs.items():
        validate_record(rec)
        assert rec["status"] == "ok", (tid, rec["error"])
        assert rec["trial"]["trial_id"] == tid and rec["trial"]["run_id"] == "e2e"
        host = rec["host"]
        assert host["launcher"] == "docker" and host["exit_code"] == 0
        assert not host["oom_killed"] and not host["timed_out"]
        assert host["image_id"] == smoke["image"]["id"] == rec["trial"]["image_id"]
        assert (smoke["dir"] / host["log"]).is_file()
        assert host["limits"]["network"] == "none"
        # the machine's name, not the container id (else a report sees one "host" per trial)
        assert rec["environment"]["hostname"] == socket.gethostname() != host["container_id"][:12]
    assert containers_of(docker_client, "e2e") == []  # every container removed
    assert not list((smoke["dir"] / "work").iterdir())  # nothing in flight left behind
    assert "4 ok, 0 failed" in smoke["first"].stdout


def test_smoke_generates_exactly_the_configured_tokens(smoke):
    m = load(SMOKE)
    n, count = m.job["generation"]["new_tokens"], m.job["workload"]["count"]
    for rec in records(smoke["dir"]).values():
        assert [p["generated_tokens"] for p in rec["per_prompt"]] == [n] * count
        assert all(len(p["output_ids"]) == n for p in rec["per_prompt"])
        assert rec["tokens"]["output"] == n * count and rec["tokens"]["prompts"] == count


def test_smoke_energy_figures_carry_their_source(smoke):
    for rec in records(smoke["dir"]).values():
        windows = [rec["phases"]["generate"], rec["phases"]["load"], rec["host"]["container"]]
        for w in windows:
            assert w["energy"], w
            for fig in w["energy"]:
                assert fig["source"] in SOURCES and fig["meter"]
                assert (fig["joules"] is None) == (fig["source"] == "unavailable")
            # a number for the CPU on every host: measured (RAPL) where a counter exists, else estimated
            assert any(f["joules"] is not None and f["component"].startswith("cpu") for f in w["energy"])
        # the host's window spans the runner's own windows: the container's whole life
        gen = rec["phases"]["generate"]
        assert rec["host"]["container"]["start_unix"] <= rec["phases"]["load"]["start_unix"]
        assert gen["end_unix"] <= rec["host"]["container"]["end_unix"]
        idle = rec["host"]["idle"]
        assert idle["duration_s"] > 0 and idle["power"] and all(p["source"] in SOURCES for p in idle["power"])
        assert rec["host"]["cooldown"]["waited_s"] >= 0


def test_report_from_the_real_smoke_run(smoke, tmp_path):
    """Records the runner and the orchestrator really wrote: every one loads, matches the schema, has its figures,
    and the report renders from them."""
    from analysis.report import analyse, build_report

    a = analyse([smoke["dir"]])
    assert a.tables.problems.empty
    runs = a.tables.trials[a.tables.trials["mode"] == "run"]
    assert len(runs) == len(list((smoke["dir"] / "trials").glob("*.json"))) == len(a.ok)
    assert set(a.ok["energy_source"]) <= {"measured", "estimated"} and (a.ok["energy_j"] > 0).all()
    assert a.ok["energy_boundary"].notna().all() and a.ok["j_per_token"].notna().all()
    assert (a.ok["agreement_status"] == "compared").all() and (a.ok["agreement"] == 1.0).all()
    page = build_report([smoke["dir"]], tmp_path / "out")["html"].read_text()
    assert page.count("data:image/png;base64,") >= 3 and "class='banner" in page


def test_smoke_runs_in_the_recorded_seeded_order(smoke):
    m = load(SMOKE)
    plan = expand(m)
    run = json.loads((smoke["dir"] / "run.json").read_text())
    assert run["seed"] == m.seed and run["order"] == [t.id for t in plan.trials]
    assert (smoke["dir"] / "matrix.toml").read_text() == SMOKE.read_text()
    sha = hashlib.sha256(SMOKE.read_bytes()).hexdigest()
    assert run["matrix"]["sha256"] == sha
    recs = sorted(records(smoke["dir"]).values(), key=lambda r: r["host"]["started_unix"])
    index = {t.id: t.order_index for t in plan.trials}
    assert [r["trial"]["order_index"] for r in recs] == sorted(index[r["trial"]["trial_id"]] for r in recs)
    for r in recs:
        assert r["trial"]["seed"] == m.seed and r["trial"]["matrix_hash"] == sha
        assert r["trial"]["order_index"] == index[r["trial"]["trial_id"]]


def test_smoke_run_again_resumes_and_reruns_nothing(smoke, docker_client):
    before = {p.name: p.stat().st_mtime_ns for p in (smoke["dir"] / "trials").iterdir()}
    logs = sorted(p.name for p in (smoke["dir"] / "logs").iterdir())
    t0 = time.time()
    again = orchestrate(*smoke["args"], timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 already recorded, 0 skipped, 0 to run" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (smoke["dir"] / "trials").iterdir()} == before
    assert sorted(p.name for p in (smoke["dir"] / "logs").iterdir()) == logs
    assert containers_of(docker_client, "e2e") == []
    assert time.time() - t0 < 120  # no container was started: seconds, not minutes


def test_status_counts_done_failed_left(smoke):
    st = orchestrate("status", "--run-id", "e2e", "--results", str(smoke["results"]))
    assert st.returncode == 0, st.stderr
    # the rest of the smoke matrix (SmolLM2, the other CPU runtimes) was not selected in this run: left
    total = len(expand(load(SMOKE)).trials)
    assert f"{total} trials: 4 ok, 0 failed, {total - 4} left" in st.stdout


def test_benchmark_reports_the_overhead_of_a_run(smoke):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "orchestration_overhead.py"), "--run-dir",
                           str(smoke["dir"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "orchestration overhead per trial" in proc.stdout and "% of trial time" in proc.stdout


# --- failures: recorded with their reason, the matrix goes on ----------------------------------------------------------


@pytest.fixture(scope="module")
def failures(tmp_path_factory, torch_cpu_image, tiny_model_dir, smollm2_dir, readable_models):
    tmp = tmp_path_factory.mktemp("failures")
    broken = tmp / "broken-llama"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(b"\0garbage, not a safetensors header" * 64)  # real file, unreadable weights: a crash
    readable_models(tiny_model_dir, smollm2_dir, broken)
    path = matrix_file(tmp, f"""
[models.ok]
path = "{tiny_model_dir}"

[models.broken]
path = "{broken}"

[models.slow]            # SmolLM2 cannot start, load and generate in 3 s: the timeout kills it
path = "{smollm2_dir}"
timeout_s = 3

[models.oom]             # SmolLM2's fp32 weights do not fit in 250 MB: the kernel kills it
path = "{smollm2_dir}"
mem_limit = "250m"
""")
    args = ["run", "--matrix", str(path), "--results", str(tmp / "results"), "--cache", str(tmp / "cache")]
    proc = orchestrate(*args, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"dir": tmp / "results" / tmp.name, "proc": proc, "args": args}


def _by_model(run_dir: Path) -> dict[str, dict]:
    return {r["trial"]["model"]: r for r in records(run_dir).values()}


def test_a_crashing_trial_is_recorded_with_the_runners_reason(failures):
    rec = _by_model(failures["dir"])["broken"]
    validate_record(rec)
    assert rec["status"] == "failed" and rec["host"]["exit_code"] == 1
    # the runner's own reason (its record), not one the orchestrator had to make up
    assert "safetensor" in (rec["error"]["type"] + rec["error"]["message"]).lower(), rec["error"]
    assert not rec["host"]["oom_killed"] and not rec["host"]["timed_out"]
    assert rec["host"]["log_tail"] is not None


def test_a_trial_over_its_timeout_is_killed_and_recorded(failures):
    rec = _by_model(failures["dir"])["slow"]
    validate_record(rec)
    assert rec["status"] == "failed" and rec["error"]["type"] == "Timeout"
    assert rec["host"]["timed_out"] and rec["host"]["exit_code"] == 137
    assert "timeout_s=3" in rec["error"]["message"]
    assert rec["host"]["exited_unix"] - rec["host"]["started_unix"] < 60


def test_a_trial_over_its_memory_limit_is_recorded_as_oom(failures):
    rec = _by_model(failures["dir"])["oom"]
    validate_record(rec)
    assert rec["status"] == "failed" and rec["error"]["type"] == "OOMKilled", rec["error"]
    assert rec["host"]["oom_killed"] and rec["host"]["exit_code"] == 137
    assert rec["host"]["limits"]["mem_limit"] == "250m"


def test_the_other_trials_complete_and_failures_are_not_rerun(failures, docker_client):
    by_model = _by_model(failures["dir"])
    assert set(by_model) == {"ok", "broken", "slow", "oom"}
    assert by_model["ok"]["status"] == "ok"
    assert "1 ok, 3 failed" in failures["proc"].stdout
    assert containers_of(docker_client, failures["dir"].name) == []
    # failed trials are results: a resume keeps them; --strict turns them into a non-zero exit
    again = orchestrate(*failures["args"], "--strict", timeout=300)
    assert again.returncode == 1 and "0 to run" in again.stdout and "3 failed trial(s)" in again.stdout


# --- Ctrl-C ------------------------------------------------------------------------------------------------------------


def test_ctrl_c_stops_the_trial_in_flight_and_loses_nothing_finished(tmp_path, torch_cpu_image, tiny_model_dir,
                                                                      readable_models, docker_client):
    readable_models(tiny_model_dir)
    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tiny_model_dir}"\n', reps=2)
    run_dir = tmp_path / "results" / tmp_path.name
    args = [sys.executable, str(REPO / "orchestrate.py"), "run", "--matrix", str(path), "--results",
            str(tmp_path / "results"), "--cache", str(tmp_path / "cache")]
    # started as a shell starts a background job: SIGINT ignored — the orchestrator must install its handler itself
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 900
        # wait until the first trial is recorded and the second one's container runs
        while time.time() < deadline and proc.poll() is None:
            if len(records(run_dir)) == 1 and any(c.status == "running"
                                                  for c in containers_of(docker_client, tmp_path.name)):
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        finished = records(run_dir)
        mtime = {p.name: p.stat().st_mtime_ns for p in (run_dir / "trials").iterdir()}
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert containers_of(docker_client, tmp_path.name) == []  # the trial in flight was stopped and removed
    assert records(run_dir) == finished and len(finished) == 1  # nothing finished lost, nothing half-written
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "trials").iterdir()} == mtime
    run = RunStore(run_dir.parent, run_dir.name).read_run()
    assert run["invocations"][-1]["interrupted"] is True
    resumed = orchestrate(*args[2:], timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 already recorded, 0 skipped, 1 to run" in resumed.stdout
    recs = records(run_dir)
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs.values())


# --- other hosts: no Docker, no GPU, a GPU ------------------------------------------------------------------------------


def test_process_launcher_runs_the_same_job_contract_without_docker(tmp_path, tiny_model_dir):
    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tiny_model_dir}"\n')
    proc = orchestrate("run", "--matrix", str(path), "--results", str(tmp_path / "results"), "--cache",
                       str(tmp_path / "cache"), "--launcher", "process", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (rec,) = records(tmp_path / "results" / tmp_path.name).values()
    validate_record(rec)
    assert rec["status"] == "ok" and rec["host"]["launcher"] == "process" and rec["host"]["image_id"] is None
    assert [p["generated_tokens"] for p in rec["per_prompt"]] == [4, 4]
    assert rec["host"]["container"]["energy"]


def test_cuda_rows_without_a_usable_gpu_are_skipped_with_the_reason(tmp_path, docker_client):
    problem = gpu_problem(docker_client)
    if problem is None:
        pytest.skip("this host has a usable GPU: the passthrough test covers the CUDA rows")
    proc = orchestrate("run", "--matrix", str(REPO / "matrix.toml"), "--runtime", "torch-cuda", "--results",
                       str(tmp_path / "results"), "--cache", str(tmp_path / "cache"), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped 720 trial(s): torch-cuda needs a GPU: " in proc.stdout and problem in proc.stdout
    run_dir = tmp_path / "results" / "study-2412.15441"
    assert records(run_dir) == {}  # skipped is not done: a GPU host runs them on resume
    assert RunStore(run_dir.parent, run_dir.name).read_run()["invocations"][-1]["skipped"]
    status = orchestrate("status", "--run-id", "study-2412.15441", "--results", str(tmp_path / "results"))
    assert "0 ok, 0 failed, 4320 left" in status.stdout and "torch-cuda needs a GPU" in status.stdout


def test_an_image_that_is_not_built_is_named_with_the_fix(tmp_path, docker_client, tiny_model_dir):
    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tiny_model_dir}"\n')
    proc = orchestrate("run", "--matrix", str(path), "--results", str(tmp_path / "r"), "--cache",
                       str(tmp_path / "c"), env={"IMAGE_PREFIX": "slm-matrix-nonexistent"})
    assert proc.returncode == 3
    assert "image slm-matrix-nonexistent/torch-cpu:latest is not built — run `python orchestrate.py build " \
           "--runtime torch-cpu`" in proc.stderr


def test_build_reports_image_ids_and_sizes(torch_cpu_image):
    proc = orchestrate("build", "--runtime", "torch-cpu", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert torch_cpu_image["id"][7:19] in proc.stdout and "size (MB)" in proc.stdout


def test_gpu_passthrough(tmp_path, docker_client, tiny_model_dir, readable_models):
    problem = gpu_problem(docker_client)
    if problem:
        pytest.skip(f"no GPU passthrough here: {problem}")
    from orchestrator.images import build, discover

    build(docker_client, discover()["torch-cuda"], log=lambda line: None)
    readable_models(tiny_model_dir)
    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tiny_model_dir}"\n')
    path.write_text(path.read_text().replace("[runtimes.torch-cpu]", "[runtimes.torch-cuda]"))
    proc = orchestrate("run", "--matrix", str(path), "--results", str(tmp_path / "results"), "--cache",
                       str(tmp_path / "cache"), timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (rec,) = records(tmp_path / "results" / tmp_path.name).values()
    assert rec["status"] == "ok", rec["error"]
    assert rec["engine"]["device"] == "cuda" and rec["engine"]["details"].get("gpu_name")
    gpu = [f for f in rec["host"]["container"]["energy"] if f["component"].startswith("gpu:")]
    assert gpu and all(f["source"] == "measured" for f in gpu)


# --- CPU energy of a containerised trial, metered by the host -----------------------------------------------------------


def test_host_meters_the_containers_windows_from_a_root_only_counter(tmp_path, torch_cpu_image, tiny_model_dir,
                                                                    readable_models, docker_client):
    """Docker masks powercap in containers and energy_uj is root-only: the host's trace of a 0400 powercap-like tree
    (standing in for sysfs, advanced at 20 W package + 4 W DRAM by a writer) must give the containerised trial's
    generate window rate × duration within the stated boundary error, while the container stays non-root."""
    from test_meters import RaplWriter

    readable_models(tiny_model_dir)
    powercap = tmp_path / "powercap"
    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tiny_model_dir}"\n',
                       extra="").read_text().replace("[host]\nidle_seconds = 0", f"""[host]
idle_seconds = 1
rapl_root = "{powercap}"
trace_interval_s = 0.02""").replace("new_tokens = 4", "new_tokens = 48")
    (tmp_path / "matrix.toml").write_text(path)
    with RaplWriter(powercap, package_w=20.0, dram_w=4.0) as writer:
        assert oct((powercap / "intel-rapl:0" / "energy_uj").stat().st_mode & 0o777) == "0o400"
        proc = orchestrate("run", "--matrix", str(tmp_path / "matrix.toml"), "--results", str(tmp_path / "results"),
                           "--cache", str(tmp_path / "cache"), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec, = records(tmp_path / "results" / tmp_path.name).values()
    assert rec["status"] == "ok", rec["error"]
    assert rec["environment"]["in_container"] and rec["environment"]["uid"] != 0  # non-root, no powercap inside
    assert "masks powercap" in rec["environment"]["meters"]["unavailable"]["rapl"]
    for name in ("load", "generate"):
        w = rec["phases"][name]
        figs = {f["component"]: f for f in w["energy"]}
        assert "cpu" not in figs and "ram" not in figs  # the runner's estimates, superseded by the measurement
        span = w["end_mono"] - w["start_mono"]
        for comp, watts in (("cpu:package-0", 20.0), ("cpu:dram-0", 4.0)):
            f = figs[comp]
            assert f["source"] == "measured" and f["meter"] == "rapl-host-trace"
            tolerance = f["boundary_error_j"] + watts * 2 * writer.step_s + watts * 0.05  # + the writer's lag
            assert f["joules"] == pytest.approx(watts * span, abs=tolerance), (name, comp, f, span)
        assert w["energy_total"]["measured_j"] == pytest.approx(figs["cpu:package-0"]["joules"]
                                                                + figs["cpu:dram-0"]["joules"])
        assert w["boundary"] == "cpu:dram-0 measured + cpu:package-0 measured"
        assert sorted(w["host_metered"]["components"]) == ["cpu:dram-0", "cpu:package-0"]
    gen = rec["phases"]["generate"]
    assert rec["metrics"]["joules_per_token"]["measured"] == pytest.approx(
        gen["energy_total"]["measured_j"] / rec["tokens"]["output"])
    host_idle = {p["component"]: p for p in rec["host"]["idle"]["power"]}
    assert host_idle["cpu:package-0"]["watts"] == pytest.approx(20.0, rel=0.1)
    assert rec["host"]["idle"]["baseline"]["reused"] is False  # every record names the baseline it was compared with
    from analysis.report import analyse

    row = analyse([tmp_path / "results" / tmp_path.name], study_csv=None).ok.iloc[0]
    assert row["energy_source"] == "measured" and row["energy_boundary"] == "cpu:dram-0+cpu:package-0 (measured)"
    assert row["net_energy_j"] == pytest.approx(0.0, abs=row["energy_j"] * 0.2 + 1.0)  # a writer draws no load
