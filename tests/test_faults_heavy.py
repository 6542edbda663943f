"""The heavy faults, against the real orchestrator (a fresh `python3 orchestrate.py run` process) and the real Docker
engine: the orchestrator SIGKILLed mid-trial, the results file system full while a trial runs, the Docker engine
restarted mid-trial, an image build that fails for a cause the user can fix. Opt-in: they run only when selected with
`-m faults` (the engine restart disturbs every container on the host):

    python3 -m pytest -m faults tests/test_faults_heavy.py

Each asserts the message, the exit status, every finished record byte-identical after the fault and, on resume, intact
(the agreement pass at the end of a run rewrites only their "agreement" block) and every unfinished trial run exactly
once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _models import tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)
from conftest import REPO, matrix_file, orchestrate
from test_faults import fill, small_fs, trials_of  # noqa: F401  (small_fs: a pytest fixture)

from orchestrator.docker_launcher import LABEL_RUN, LABEL_SCOPE, results_scope
from orchestrator.images import ImageError, follow_build
from orchestrator.store import RunStore

pytestmark = pytest.mark.faults


@pytest.fixture(autouse=True)
def opt_in(request):
    if "faults" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("opt-in: python3 -m pytest -m faults tests/test_faults_heavy.py")


def containers_of(client, run_dir: Path) -> list:
    """The containers of this run in this results folder (another checkout's of the same run id are not ours)."""
    return client.containers.list(all=True, filters={"label": [f"{LABEL_RUN}={run_dir.name}",
                                                               f"{LABEL_SCOPE}={results_scope(run_dir)}"]})


def start(path: Path, results: Path, *launcher: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "orchestrate.py"), "run", "--matrix", str(path), "--results",
                             str(results), "--cache", str(results.parent / "cache"), *launcher], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})


def wait_for(proc: subprocess.Popen, ready, timeout_s: float = 900) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()


def second_trial_running(client, run_dir: Path):
    """The first trial recorded and the second one's container running."""
    return lambda: len(trials_of(run_dir)) == 1 and any(c.status == "running"
                                                         for c in containers_of(client, run_dir))


def kept(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """Every record of before still there, as it was — but for its "agreement" block, which the run's agreement pass
    (runners/agreement.py) recomputes over all the run's trials at the end of every run, by design."""
    def facts(raw: bytes) -> dict:
        return {k: v for k, v in json.loads(raw).items() if k != "agreement"}
    return all(name in after and facts(after[name]) == facts(raw) for name, raw in before.items())


def invocations(run_dir: Path) -> list[dict]:
    return RunStore(run_dir.parent, run_dir.name).read_run()["invocations"]


def test_an_orchestrator_killed_mid_trial_is_resumed_without_loss(tmp_path, torch_cpu_image, tiny_model_dir,
                                                                  readable_models, docker_client):
    readable_models(tiny_model_dir)
    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tiny_model_dir}"\n', reps=3)
    results, run_dir = tmp_path / "results", tmp_path / "results" / tmp_path.name
    proc = start(path, results)
    try:
        wait_for(proc, second_trial_running(docker_client, run_dir))
        finished = trials_of(run_dir)
        proc.send_signal(signal.SIGKILL)  # the OOM killer, a node reboot, `scancel -s KILL`
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert trials_of(run_dir) == finished  # byte-identical after the kill
    orphans = containers_of(docker_client, run_dir)
    assert orphans and list((run_dir / "work").iterdir())  # what the kill left: its container and work folder
    resumed = orchestrate("run", "--matrix", str(path), "--results", str(results), "--cache",
                          str(tmp_path / "cache"), timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out = resumed.stdout
    assert f"removed {len(orphans)} container(s) left by an earlier, killed orchestrator" in out
    assert "took over the lock" in out and "no longer running" in out
    assert "3 trials selected: 1 already recorded, 0 skipped, 2 to run" in out
    recs = trials_of(run_dir)
    assert kept(finished, recs)
    assert len(recs) == 3 and invocations(run_dir)[-1]["counts"] == {"ok": 2, "failed": 0}  # each once
    assert containers_of(docker_client, run_dir) == [] and list((run_dir / "work").iterdir()) == []


def test_a_results_disk_full_mid_trial_ends_clearly_and_a_resume_loses_nothing(tmp_path, tiny_model_dir):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tiny_model_dir}"\n', reps=2)
        results, run_dir = mnt / "results", mnt / "results" / tmp_path.name
        proc = start(path, results, "--launcher", "process")
        try:
            wait_for(proc, lambda: len(trials_of(run_dir)) == 1 and any((run_dir / "work").iterdir()))
            finished = trials_of(run_dir)
            filler = fill(mnt)
            out, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 5, out
        assert "No space left on device" in out and "free space then resume" in out and str(run_dir) in out
        assert "Traceback" not in out
        assert trials_of(run_dir) == finished  # nothing lost, nothing partial
        assert [p.name for p in (run_dir / "trials").iterdir() if p.name.startswith(".")] == []  # no temp file
        filler.unlink()
        resumed = orchestrate("run", "--matrix", str(path), "--results", str(results), "--cache",
                              str(tmp_path / "cache"), "--launcher", "process", timeout=900)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "2 trials selected: 1 already recorded, 0 skipped, 1 to run" in resumed.stdout
        recs = trials_of(run_dir)
        assert len(recs) == 2 and kept(finished, recs)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def restart_dockerd() -> None:
    """Stop the engine by its pid and start it again, detached, as the host started it; back when `docker info`
    answers."""
    pid = int(Path("/var/run/docker.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 120
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        time.sleep(0.5)
    with open("/var/log/dockerd.log", "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    while time.time() < deadline:
        if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError("dockerd did not come back within 120 s (see /var/log/dockerd.log)")


def test_the_docker_engine_restarted_mid_trial_reruns_the_trial(tmp_path, torch_cpu_image, tiny_model_dir,
                                                                readable_models, docker_client):
    readable_models(tiny_model_dir)
    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tiny_model_dir}"\n', reps=2)
    results, run_dir = tmp_path / "results", tmp_path / "results" / tmp_path.name
    proc = start(path, results)
    try:
        wait_for(proc, second_trial_running(docker_client, run_dir))
        finished = trials_of(run_dir)
        restart_dockerd()
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "while" in out and "the trial is not recorded" in out and "the engine answers again" in out, out
    recs = trials_of(run_dir)
    assert kept(finished, recs) and len(recs) == 2
    assert invocations(run_dir)[-1]["counts"] == {"ok": 2, "failed": 0}  # the trial in flight: run again, once
    assert containers_of(docker_client, run_dir) == []
    images = subprocess.run(["docker", "image", "ls"], capture_output=True, text=True).stdout
    assert "slm-matrix/torch-cpu" in images


@pytest.fixture
def tls_index():
    """An HTTPS package index whose certificate no image trusts (as a TLS-intercepting proxy's), on the Docker
    bridge."""
    key, cert = Path("/tmp") / f"fault-key-{os.getpid()}.pem", Path("/tmp") / f"fault-cert-{os.getpid()}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=proxy"], check=True, capture_output=True)
    code = ("import http.server, ssl, sys; s = http.server.HTTPServer(('0.0.0.0', 0), "
            "http.server.SimpleHTTPRequestHandler); c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); "
            "c.load_cert_chain(sys.argv[1], sys.argv[2]); s.socket = c.wrap_socket(s.socket, server_side=True); "
            "print(s.server_port, flush=True); s.serve_forever()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(cert), str(key)], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield f"https://172.17.0.1:{port}/simple"
    proc.kill()
    proc.wait()
    key.unlink()
    cert.unlink()


@pytest.mark.parametrize("index,cause", [
    ("tls", "TLS certificate verification failed against the registry: add your proxy's CA certificates"),
    ("http://127.0.0.1:9/simple", "the package registry did not answer"),
])
def test_a_real_failed_build_names_the_cause_and_the_fix(docker_client, request, index, cause):
    import io

    url = request.getfixturevalue("tls_index") if index == "tls" else index
    dockerfile = (f"FROM slm-matrix/base:bookworm\nRUN pip download --no-deps --retries 1 --timeout 5 "
                  f"--index-url {url} filelock\n")
    stream = docker_client.api.build(fileobj=io.BytesIO(dockerfile.encode()), rm=True, forcerm=True, nocache=True,
                                     decode=True)
    with pytest.raises(ImageError) as e:
        follow_build(stream, "building the fault image", log=lambda line: None)
    assert f"cause: {cause}" in str(e.value)
