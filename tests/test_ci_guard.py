"""Where Docker is expected (CI), a dead engine must fail the Docker tests, not skip them into a green run."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

PROBE = "tests/test_orchestrator.py::test_build_reports_image_ids_and_sizes"  # needs only the docker_client fixture


def _pytest(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "SLM_REQUIRE_DOCKER")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", PROBE], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**base, "DOCKER_HOST": "unix:///nonexistent/docker.sock", **env})


def test_a_dead_engine_fails_the_docker_tests_in_ci():
    ci = _pytest(CI="true")
    assert ci.returncode == 1 and "Docker is expected here" in ci.stdout, ci.stdout[-2000:]
    laptop = _pytest()
    assert laptop.returncode == 0 and "1 skipped" in laptop.stdout, laptop.stdout[-2000:]
