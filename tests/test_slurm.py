"""The matrix on a Slurm cluster: shards of whole models, the batch script, concurrent writers on one results folder,
and a real single-node Slurm (scripts/slurm_local.sh) running a run as a job array — cancelled half-way, resubmitted,
completed with no finished trial lost or repeated."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, docker_expected, matrix_file, orchestrate

from orchestrator.matrix import MatrixError, load
from orchestrator.plan import expand
from orchestrator.shard import assign, parse
from orchestrator.store import RunStore


# --- sharding and the batch script (no Slurm needed) --------------------------------------------------------------


def test_shards_hold_whole_models_and_cover_the_run_once():
    plan = expand(load(REPO / "matrix.toml"))
    sharding = assign(plan, 4)
    shards = [sharding.trials(plan.trials, i) for i in range(4)]
    assert sorted(t.id for s in shards for t in s) == sorted(t.id for t in plan.trials)  # each trial exactly once
    for i, trials in enumerate(shards):
        assert trials, f"shard {i} is empty"
        assert [t.order_index for t in trials] == sorted(t.order_index for t in trials)  # the run's order
        for t in trials:  # every trial of a model is in its model's shard
            assert sharding.models[t.cell.model.name] == i
    assert len(set(sharding.models.values())) == 4
    assert assign(plan, 4) == sharding  # every array task computes the same assignment
    with pytest.raises(MatrixError, match="never split"):
        assign(plan, len(plan.matrix.models) + 1)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(MatrixError, match="--shard"):
            parse(bad)
    assert parse("3/4") == (3, 4)


def test_dry_run_prints_the_batch_script_of_a_4_node_gpu_cluster_and_writes_nothing(tmp_path):
    proc = orchestrate("submit", "--slurm", "--matrix", str(REPO / "matrix.toml"), "--shards", "4", "--partition",
                       "gpu", "--account", "green-ai", "--time", "2-00:00:00", "--gpus-per-node", "1",
                       "--sbatch-arg=--constraint=h100", "--dry-run", "--results", str(tmp_path / "results"),
                       timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for line in ("#SBATCH --array=0,1,2,3", "#SBATCH --exclusive", "#SBATCH --partition=gpu",
                 "#SBATCH --account=green-ai", "#SBATCH --time=2-00:00:00", "#SBATCH --signal=B:TERM@120",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --constraint=h100", "#SBATCH --nodes=1"):
        assert line in out, line
    assert 'run --matrix' in out and '--shard "${SLURM_ARRAY_TASK_ID}/4"' in out and "exec " in out
    assert "4320 trials over 4 shard(s)" in out
    assert not (tmp_path / "results").exists()  # a dry run submits and writes nothing
    bad = orchestrate("submit", "--slurm", "--matrix", str(REPO / "matrix.toml"), "--time", "two days",
                      "--dry-run", "--results", str(tmp_path / "results"), timeout=120)
    assert bad.returncode == 2 and "--time: two days: is not a Slurm time limit" in bad.stderr


def _writer(root: str, worker: int, n: int) -> None:
    store = RunStore(root, "run")
    for k in range(n):
        store.write_trial(f"w{worker}-t{k}", {"status": "ok", "worker": worker, "k": k, "pad": "x" * 20_000})
        store.log_invocation({"started_unix": time.time(), "worker": worker, "k": k})


def _reader(root: str, stop, bad) -> None:
    trials = Path(root) / "run" / "trials"
    while not stop.is_set():
        for p in trials.glob("*.json"):
            try:
                json.loads(p.read_text())
            except FileNotFoundError:
                continue
            except ValueError:
                bad.value += 1


def test_many_writers_on_one_results_folder_lose_nothing_and_no_reader_sees_half_a_file(tmp_path):
    """Nodes of a cluster write records and invocation logs into one shared run concurrently: 6 processes × 30
    trials, while another process keeps reading every record."""
    from orchestrator.matrix import load as load_matrix

    store = RunStore(tmp_path, "run")
    path = matrix_file(tmp_path, '[models.a]\nfixture = "llama"\n')
    store.open(load_matrix(path), [])
    ctx = multiprocessing.get_context("fork")
    stop, bad = ctx.Event(), ctx.Value("i", 0)
    reader = ctx.Process(target=_reader, args=(str(tmp_path), stop, bad))
    reader.start()
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), w, 30)) for w in range(6)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
    stop.set()
    reader.join(30)
    assert all(w.exitcode == 0 for w in writers)
    records = store.records()
    assert len(records) == 180 and all(r["status"] == "ok" for r in records.values())
    invocations = store.read_run()["invocations"]
    assert sorted((e["worker"], e["k"]) for e in invocations) == [(w, k) for w in range(6) for k in range(30)]
    assert bad.value == 0  # no reader ever saw a partial record


# --- a real Slurm ---------------------------------------------------------------------------------------------------


def _slurm_up() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm's commands are not installed (scripts/slurm_local.sh installs and starts a single-node Slurm)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or not any(s in proc.stdout for s in ("idle", "mixed", "allocated")):
        return f"no Slurm node is up ({(proc.stderr or proc.stdout).strip()}) — run scripts/slurm_local.sh"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _slurm_up()
    if problem:
        if docker_expected():  # CI starts a real Slurm (.ci/run): one that does not answer must fail the run
            pytest.fail(f"Slurm is expected here (CI) but {problem}")
        pytest.skip(problem)


def _status(run_id: str, results: Path) -> str:
    return orchestrate("status", "--run-id", run_id, "--results", str(results), timeout=120, check=True).stdout


def _tasks(job_id: str) -> dict[int, str]:
    proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    out = {}
    for line in proc.stdout.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if f.get("ArrayTaskId", "").isdigit():
            out[int(f["ArrayTaskId"])] = f.get("JobState", "?")
    return out


def _wait(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _submitted(proc) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("submitted job array "))
    return line.split()[3].rstrip(":")


def test_a_run_as_a_slurm_job_array_cancelled_resubmitted_and_complete(tmp_path, slurm, torch_cpu_image):
    """Two models, 3 repetitions each, as 2 array tasks on the local Slurm (node-exclusive: one after the other).
    The first task to run is cancelled (scancel) once it has stored a record and has the next trial in flight; the
    run is resubmitted (only that shard: the other is queued or done), and completes: every trial recorded once,
    the records finished before the cancel untouched, the cancelled shard's records from two jobs, status per shard
    and node, and a report of the merged run."""
    path = matrix_file(tmp_path, '[models.tiny-llama]\nfixture = "llama"\n[models.tiny-gpt2]\nfixture = "gpt2"\n',
                       reps=3)
    path.write_text(path.read_text().replace("[host]\nidle_seconds = 0", "[host]\nidle_seconds = 2"))
    results, run_id = tmp_path / "results", tmp_path.name
    common = ["--matrix", str(path), "--results", str(results), "--cache", str(tmp_path / "cache")]
    job = _submitted(orchestrate("submit", "--slurm", "--shards", "2", *common, timeout=300))
    store = RunStore(results, run_id)
    sharding = json.loads((store.slurm_dir / "sharding.json").read_text())
    assert sorted(sharding["models"].values()) == [0, 1]

    def shard_records(i):
        return {k: r for k, r in store.records().items()
                if sharding["models"][r["trial"]["model"]] == i}

    def first_running():
        running = [i for i, s in _tasks(job).items() if s == "RUNNING"]
        if not running:
            return None
        i = running[0]
        in_flight = [p for p in store.work_dir.glob("*") if p.name not in store.records()] if store.work_dir.is_dir() else []
        # trial folders only (runtime__engine__model__…): a model's tokenize__<model> step has its own folder
        mine = [p for p in in_flight if p.name.count("__") >= 2 and p.name.split("__")[2] in
                [m for m, k in sharding["models"].items() if k == i]]
        return (i,) if len(shard_records(i)) >= 1 and mine else None

    (victim,) = _wait(first_running, 600, "a running shard with a record stored and a trial in flight", poll=0.2)
    subprocess.run(["scancel", f"{job}_{victim}"], check=True, timeout=60)
    _wait(lambda: _tasks(job).get(victim) not in ("RUNNING", "COMPLETING"), 120, "the cancelled task to end")
    assert _tasks(job)[victim] == "CANCELLED"
    # a finished trial's identity: when it was stored, by which container (the agreement pass rewrites files later)
    before = {k: (r["host"]["recorded_unix"], r["host"]["container_id"], r["created_unix"])
              for k, r in store.records().items()}
    assert 1 <= len(shard_records(victim)) < 3, "the cancel came too late to leave the shard unfinished"
    status = _status(run_id, results)
    assert "CANCELLED" in status

    again = orchestrate("submit", "--slurm", *common, timeout=300)
    job2 = _submitted(again)
    assert f"submitted job array {job2}: shard(s) {victim} of 2" in again.stdout  # only what is missing
    _wait(lambda: len(store.records()) == 6 and all(s == "COMPLETED" for s in _tasks(job2).values())
          and all(s in ("COMPLETED", "CANCELLED") for s in _tasks(job).values()), 900, "the run to complete", poll=1)

    records = store.records()
    assert len(records) == 6 and all(r["status"] == "ok" for r in records.values())
    for k, identity in before.items():  # nothing finished was lost or run again
        r = records[k]
        assert (r["host"]["recorded_unix"], r["host"]["container_id"], r["created_unix"]) == identity
    jobs = {i: {r["host"]["node"]["slurm"]["array_job_id"] for r in shard_records(i).values()} for i in (0, 1)}
    assert jobs[victim] == {job, job2} and jobs[1 - victim] == {job}  # the cancelled shard resumed in the new job
    for r in records.values():
        node = r["host"]["node"]
        assert node["shard"]["index"] == sharding["models"][r["trial"]["model"]] and node["shard"]["count"] == 2
        assert node["slurm"]["array_task_id"] == str(node["shard"]["index"]) and node["hostname"]
    invocations = store.read_run()["invocations"]
    assert sum(1 for e in invocations if e.get("interrupted")) == 1
    by_cancelled = sum(1 for r in shard_records(victim).values() if r["host"]["node"]["slurm"]["array_job_id"] == job)
    finished = sum((e.get("counts") or {}).get("ok", 0) for e in invocations if not e.get("interrupted"))
    assert finished + by_cancelled == 6  # every trial ran to its record exactly once
    assert "nothing to submit" in orchestrate("submit", "--slurm", *common, timeout=300).stdout

    status = _status(run_id, results)
    assert "6 ok, 0 failed, 0 left" in status
    assert "COMPLETED" in status and os.uname().nodename.split(".")[0] in status
    report = subprocess.run([sys.executable, "-m", "analysis", "report", str(results / run_id),
                             "--out", str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "report" / "report.md").read_text().count("tiny-") >= 2
