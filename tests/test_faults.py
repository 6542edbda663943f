"""Faults a long matrix meets, each ending in a clear message, its documented exit status, and a resume that loses no
finished trial: two orchestrators on one run (the lock), a record found truncated or not a record, a results file
system that is full. The heavy cases (a SIGKILLed orchestrator, a restarted Docker engine, a full disk under the real
orchestrator, a failed image build) are in tests/test_faults_heavy.py behind the `faults` marker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _models import tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)
from conftest import REPO, matrix_file, orchestrate

from orchestrator import cli
from orchestrator.run_lock import RunLock, RunLocked
from orchestrator.store import ResultsNotWritable, RunStore


def trials_of(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "trials").glob("*.json"))}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run_root: Path, scope: str, **holder) -> Path:
    path = run_root / "lock" / f"{scope}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"hostname": socket.gethostname(), "started_unix": time.time() - 60,
                                "command": ["orchestrate.py", "run"], "token": "theirs", **holder}))
    return path


# --- two orchestrators on one run -------------------------------------------------------------------------------------


@pytest.fixture
def holder(tmp_path):
    """A real second process on this host that holds the run's lock while the test runs."""
    run_root = tmp_path / "results" / tmp_path.name
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path;"
            "from orchestrator.run_lock import RunLock; RunLock(Path(sys.argv[2])).acquire(); print('held', flush=True);"
            "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(run_root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_orchestrator_on_the_run_is_refused_naming_the_holder(tmp_path, holder, capsys):
    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tmp_path}"\n')
    code = cli.main(["run", "--matrix", str(path), "--results", str(tmp_path / "results"), "--cache",
                     str(tmp_path / "cache"), "--launcher", "process"])
    err = capsys.readouterr().err
    assert code == 4, err
    assert f"pid {holder.pid} on host {socket.gethostname()}" in err and "is in use" in err
    assert "lock" in err and len(err.strip().splitlines()) <= 3
    assert list((tmp_path / "results" / tmp_path.name / "trials").glob("*.json")) == []  # nothing ran


def test_a_lock_held_on_another_host_is_respected_unless_broken_explicitly(tmp_path):
    write_lock(tmp_path, "run", hostname="node-elsewhere", pid=4242)
    with pytest.raises(RunLocked, match=r"pid 4242 on host node-elsewhere.*pass --break-lock"):
        RunLock(tmp_path).acquire()
    notes: list[str] = []
    lock = RunLock(tmp_path, break_lock=True, note=notes.append).acquire()
    assert lock.taken_over[0]["hostname"] == "node-elsewhere" and "broken by --break-lock" in notes[0]
    lock.release()
    assert not lock.path.exists()


def test_shards_of_one_run_lock_apart_and_exclude_the_whole_run(tmp_path):
    a = RunLock(tmp_path, {"index": 0, "count": 2}).acquire()
    b = RunLock(tmp_path, {"index": 1, "count": 2}).acquire()  # array tasks on two nodes run at once
    with pytest.raises(RunLocked, match="shard-0-of-2"):
        RunLock(tmp_path, {"index": 0, "count": 2}).acquire()  # the same shard twice is not
    with pytest.raises(RunLocked, match="is in use"):
        RunLock(tmp_path).acquire()  # an unsharded run would run the shards' trials too
    a.release()
    b.release()
    whole = RunLock(tmp_path).acquire()
    with pytest.raises(RunLocked, match=r"is in use \(run\)"):
        RunLock(tmp_path, {"index": 1, "count": 2}).acquire()
    whole.release()


def test_a_lock_of_a_reused_pid_is_stale(tmp_path):
    # this very pid, but a process started at another time: the holder is gone, its pid now someone else's
    write_lock(tmp_path, "run", pid=os.getpid(), process_started_unix=1.0)
    notes: list[str] = []
    RunLock(tmp_path, note=notes.append).acquire().release()
    assert "is now another process" in notes[0]


# --- a resume after a crash: a stale lock, a truncated record, a file that is not a record -----------------------------


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, tiny_model_dir):
    """A run as a crash leaves it (its orchestrator's lock, a record cut short, a JSON file that is no record), resumed
    by the real orchestrator (process launcher: one trial of a tiny model)."""
    tmp = tmp_path_factory.mktemp("crashed")
    path = matrix_file(tmp, f'[models.tiny]\npath = "{tiny_model_dir}"\n')
    run_dir = tmp / "results" / tmp.name
    store = RunStore(run_dir.parent, run_dir.name)
    from orchestrator.matrix import load
    from orchestrator.plan import expand

    plan = expand(load(path))
    store.open(plan.matrix, [t.id for t in plan.trials])
    (trial,) = plan.trials
    truncated = b'{"schema": "slm-matrix.record/2", "status": "ok", "per_prom'
    store.trial_path(trial.id).write_bytes(truncated)
    (store.trials_dir / "notes.json").write_text('["not a record"]')
    pid = dead_pid()
    write_lock(run_dir, "run", pid=pid)
    status = orchestrate("status", "--run-id", run_dir.name, "--results", str(run_dir.parent))
    resumed = orchestrate("run", "--matrix", str(path), "--results", str(run_dir.parent), "--cache",
                          str(tmp / "cache"), "--launcher", "process", timeout=900)
    return {"store": store, "trial": trial, "truncated": truncated, "pid": pid, "status": status,
            "resumed": resumed}


def test_a_stale_lock_of_a_dead_orchestrator_is_taken_over_and_said_so(crashed):
    out = crashed["resumed"].stdout
    assert crashed["resumed"].returncode == 0, out + crashed["resumed"].stderr
    assert f"took over the lock of run {crashed['store'].run_id} (run) from pid {crashed['pid']} on host " \
           f"{socket.gethostname()}" in out and "no longer running" in out
    assert not (crashed["store"].root / "lock" / "run.json").exists()  # released at the end
    inv = crashed["store"].read_run()["invocations"][-1]
    assert inv["lock"]["took_over"][0]["pid"] == crashed["pid"]


def test_a_truncated_record_is_moved_aside_with_the_reason_and_its_trial_run_again(crashed):
    store, trial = crashed["store"], crashed["trial"]
    out = crashed["resumed"].stdout
    assert f"record of {trial.id} is invalid (not valid JSON (truncated?)" in out
    assert "1 trials selected: 0 already recorded, 0 skipped, 1 to run" in out
    (moved,) = (store.trials_dir / ".invalid").iterdir()
    assert moved.read_bytes() == crashed["truncated"]  # kept as it was found
    inv = store.read_run()["invocations"][-1]
    assert inv["set_aside"][trial.id]["moved_to"] == str(moved.relative_to(store.root))
    assert store.record(trial.id)["status"] == "ok"  # run again, once
    assert (store.trials_dir / "notes.json").exists()  # not a trial of the run: left for its owner


def test_readers_skip_a_file_that_is_not_a_record_and_status_names_it(crashed):
    status = crashed["status"]
    assert status.returncode == 0, status.stdout + status.stderr
    assert "not a record:" in status.stdout and "not valid JSON" in status.stdout and "Traceback" not in status.stderr
    store = crashed["store"]
    assert set(store.records()) == {crashed["trial"].id}  # notes.json skipped, not a crash
    assert "not a record: a JSON list" in store.invalid()["notes"]
    assert store.record("notes") is None


# --- the results file system full when a record is written --------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MiB tmpfs (root, or a user allowed to mount, only)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> Path:
    """Fill the file system to the last byte."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_results_file_system_leaves_no_partial_record_and_a_resume_writes_it(small_fs):
    store = RunStore(small_fs, "full")
    store.trials_dir.mkdir(parents=True)
    store.write_trial("done", {"schema": "slm-matrix.record/2", "status": "ok", "n": 1})
    before = trials_of(store.root)
    record = {"schema": "slm-matrix.record/2", "status": "ok", "per_prompt": ["x" * 100] * 2000}
    filler = fill(small_fs)
    with pytest.raises(ResultsNotWritable) as e:
        store.write_trial("next", record)
    assert str(store.trial_path("next")) in str(e.value) and "free space then resume" in str(e.value)
    assert "No space left on device" in str(e.value)
    assert sorted(p.name for p in store.trials_dir.iterdir()) == ["done.json"]  # no temp file, no partial record
    assert trials_of(store.root) == before
    filler.unlink()
    store.write_trial("next", record)
    assert store.record("next") == record and trials_of(store.root)["done.json"] == before["done.json"]


def test_a_full_results_file_system_ends_the_cli_with_its_exit_status(tmp_path, small_fs, capsys):
    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tmp_path}"\n')
    fill(small_fs)
    code = cli.main(["run", "--matrix", str(path), "--results", str(small_fs), "--cache", str(tmp_path / "cache"),
                     "--launcher", "process"])
    err = capsys.readouterr().err
    assert code == 5, err
    assert "No space left on device" in err and "free space then resume" in err and str(small_fs) in err


# --- the Docker engine going away under a trial (the restart itself: tests/test_faults_heavy.py) ----------------------


def test_an_engine_that_stops_answering_or_restarts_is_seen(tmp_path, docker_client):
    import docker

    from orchestrator.engine_watch import EngineWatch, daemon_pid

    watch = EngineWatch(docker_client)
    watch.mark()
    assert watch.went_away() is None  # the same engine, answering: a failed trial is the trial's own
    watch.pid = (daemon_pid() or 0) + 1  # another dockerd than the one the trial started under
    if daemon_pid() is not None:
        assert "the Docker engine restarted" in watch.went_away()
    gone = EngineWatch(docker.DockerClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41"))
    assert "stopped answering" in gone.went_away()
    assert gone.wait_back(0.1, note=lambda line: None) is False


# --- an image that is stale (built from other sources than this checkout's) -----------------------------------------


def test_a_stale_image_is_named_with_the_rebuild(docker_client, monkeypatch):
    import io

    from orchestrator.images import SOURCES_LABEL, discover, sources_hash, stale_problem

    monkeypatch.setenv("IMAGE_PREFIX", f"slm-matrix-faults-{os.getpid()}")
    runtime = discover()["torch-cpu"]
    try:
        for sources, stale in (("0123456789abcdef", True), (sources_hash(runtime), False)):
            for _ in docker_client.api.build(fileobj=io.BytesIO(b"FROM slm-matrix/base:bookworm\n"),
                                             tag=runtime.image, labels={SOURCES_LABEL: sources}, rm=True,
                                             decode=True):
                pass
            problem = stale_problem(docker_client, runtime)
            if stale:
                assert problem.startswith(f"image {runtime.image} is stale: built from other sources")
                assert "orchestrate.py build --runtime torch-cpu` or add --build" in problem
            else:
                assert problem is None
    finally:
        docker_client.images.remove(runtime.image, force=True)


def test_a_built_image_carries_the_sources_it_was_built_from(torch_cpu_image, docker_client):
    from orchestrator.images import discover, image_info, sources_hash

    runtime = discover()["torch-cpu"]
    assert image_info(docker_client, runtime)["sources"] == sources_hash(runtime)


# --- a hub model that cannot be fetched ---------------------------------------------------------------------------------


def test_a_hub_model_that_cannot_be_fetched_is_skipped_with_the_reason_and_the_fix(tmp_path):
    path = matrix_file(tmp_path, '[models.nowhere]\nhub_id = "slm-matrix-tests/no-such-model"\nparams_b = 0.1\n')
    proc = orchestrate("run", "--matrix", str(path), "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c"),
                       "--launcher", "process", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped 1 trial(s): model not available: models.nowhere: slm-matrix-tests/no-such-model is not in" \
           in proc.stdout and "unset HF_HUB_OFFLINE" in proc.stdout
    assert list((tmp_path / "r" / tmp_path.name / "trials").iterdir()) == []  # skipped, not failed: runs later


def test_a_requeued_slurm_task_takes_over_its_own_lock_from_a_dead_node(tmp_path, monkeypatch):
    task = {"job_id": "812", "array_job_id": "800", "array_task_id": "3"}
    for var, value in (("SLURM_JOB_ID", "812"), ("SLURM_ARRAY_JOB_ID", "800"), ("SLURM_ARRAY_TASK_ID", "3")):
        monkeypatch.setenv(var, value)
    shard = {"index": 3, "count": 4}
    write_lock(tmp_path, "shard-3-of-4", hostname="node-that-died", pid=77, slurm=task)
    notes: list[str] = []
    RunLock(tmp_path, shard, note=notes.append).acquire().release()
    assert "this Slurm task's earlier run (requeued)" in notes[0]
    # another task's lock on another node, and no Slurm to ask from here: respected
    write_lock(tmp_path, "shard-3-of-4", hostname="node-b", pid=78, slurm={**task, "job_id": "813"})
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue here
    with pytest.raises(RunLocked, match="pass --break-lock"):
        RunLock(tmp_path, shard).acquire()


def test_a_record_of_an_unknown_schema_or_status_is_not_read_as_one(tmp_path):
    store = RunStore(tmp_path, "r")
    store.trials_dir.mkdir(parents=True)
    (store.trials_dir / "a.json").write_text('{"schema": "someone-else/9", "status": "ok"}')
    (store.trials_dir / "b.json").write_text('{"status": "done"}')
    (store.trials_dir / "c.json").write_text('{"status": "failed"}')  # hand-made, no schema: read (tests make these)
    assert set(store.records()) == {"c"}
    assert set(store.invalid()) == {"a", "b"} and "schema 'someone-else/9'" in store.invalid()["a"]
    moved = store.set_aside_invalid(["a", "b", "c"])
    assert set(moved) == {"a", "b"} and sorted(p.stem for p in store.trials_dir.glob("*.json")) == ["c"]
    assert all((store.root / m["moved_to"]).is_file() for m in moved.values())
