"""Shared fixtures: the real Docker engine, the torch-cpu image built from this checkout, and a model cache.

Tests that need Docker skip only when no engine can be reached on a laptop without Docker; where Docker is expected
(CI=true, or SLM_REQUIRE_DOCKER=1), an engine that does not answer fails them: a broken engine must not turn CI green.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # orchestrator/ and runners/ live at the repository root
    sys.path.insert(0, str(REPO))


def architecture_params(in_make_test: tuple[str, ...]) -> list:
    """The seven fixture architectures as test parameters, those outside ``in_make_test`` marked heavy: make test (CI's
    time) runs a representative subset per runtime — chosen so that across the runtimes every architecture runs —
    and make test-all runs every one."""
    from orchestrator import fixtures

    unknown = set(in_make_test) - set(fixtures.ARCHITECTURES)
    assert not unknown, f"not fixture architectures: {sorted(unknown)}"
    return [pytest.param(arch, id=arch, marks=() if arch in in_make_test else pytest.mark.heavy)
            for arch in fixtures.ARCHITECTURES]


def docker_expected() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("SLM_REQUIRE_DOCKER") == "1"


@pytest.fixture(scope="session")
def docker_client():
    from orchestrator.docker_launcher import connect

    try:
        client = connect()
        client.ping()
    except Exception as e:  # no engine here: the Docker tests cannot mean anything
        if docker_expected():
            pytest.fail(f"Docker is expected here (CI={os.environ.get('CI')!r}, SLM_REQUIRE_DOCKER="
                        f"{os.environ.get('SLM_REQUIRE_DOCKER')!r}) but no engine answers ({type(e).__name__}: {e}) "
                        "— start dockerd (.ci/run does)")
        pytest.skip(f"no Docker engine reachable ({type(e).__name__}: {e}); start dockerd to run this test")
    yield client
    client.close()


@pytest.fixture(scope="session")
def torch_cpu_image(docker_client) -> dict:
    """slm-matrix/torch-cpu:latest built from this checkout through the orchestrator (layer-cached: seconds when
    `make images-cpu` ran before), so containers run the runners/ code under test, not a stale copy."""
    from orchestrator.images import ImageError, build, discover

    runtime = discover()["torch-cpu"]
    try:
        return build(docker_client, runtime, log=lambda line: None)
    except ImageError as e:
        pytest.fail(f"{e} — set BASE_IMAGE / PIP_EXTRA_INDEX_URL as for `make images-cpu` (see .ci/run)")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A fresh host model cache for this session (tiny fixtures build in seconds)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def readable_models():
    """Shared fixture folders (tests/_models.py) made readable by the images' uid 1000 before being mounted."""
    from orchestrator.models import _readable

    def make(*paths: Path) -> None:
        for p in paths:
            _readable(Path(p))
    return make


def orchestrate(*args: str, timeout: float = 900, env: dict | None = None, check: bool = False
                ) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (a fresh process, real argv)."""
    proc = subprocess.run([sys.executable, str(REPO / "orchestrate.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"orchestrate {' '.join(args)} → {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def matrix_file(tmp_path: Path, models: str, *, reps: int = 1, extra: str = "") -> Path:
    """A small matrix on torch-cpu: 2 prompts, 4 new tokens, no idle wait (the tests are about orchestration)."""
    p = tmp_path / "matrix.toml"
    p.write_text(f"""
[matrix]
name = "{tmp_path.name}"
seed = 11
repetitions = {reps}

[workload]
count = 2

[generation]
new_tokens = 4

[warmup]
batches = 0

[host]
idle_seconds = 0

[container]
timeout_s = 600

[runtimes.torch-cpu]
{extra}
{models}""")
    return p


@pytest.fixture
def fake_nvml(monkeypatch):
    """Install the fake pynvml (tests/_fake_nvml.py) with the given GPUs: the meters run against NVML's interface."""
    import _fake_nvml

    def install(*gpus):
        monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml.module(list(gpus)))
        return gpus
    return install
