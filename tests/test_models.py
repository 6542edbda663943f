"""A user's model folder (`path = ...`) that the containers' user cannot read fails clearly before any container
starts: `plan` names the file, its mode and the fix, and `run` skips that model's trials with the same line instead
of failing each trial with a bare FileNotFoundError in its container."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import matrix_file, orchestrate

from _models import tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)
from orchestrator.models import CONTAINER_USER, readability_problem, unreadable


@pytest.fixture
def user_model(tmp_path, tiny_model_dir):
    """The tiny Llama copied as `save_pretrained` leaves it when run as root: weights 0600, owned by root."""
    d = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, d)
    for p in [d, *d.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(d / "model.safetensors", 0o600)
    return d


def test_unreadable_files_are_named_with_the_fix(user_model):
    if os.getuid() == CONTAINER_USER[0]:
        pytest.skip("this user is the containers' user: everything it owns is readable to it")
    assert unreadable(user_model) == [str(user_model / "model.safetensors")]
    line = readability_problem("mine", user_model)
    assert "model.safetensors" in line and "0600" in line and f"chmod -R a+rX {user_model}" in line
    os.chmod(user_model / "model.safetensors", 0o644)
    assert readability_problem("mine", user_model) is None
    os.chmod(user_model, 0o700)  # a folder it cannot enter
    assert unreadable(user_model)[0] == f"{user_model}/"


def test_plan_and_run_say_so_before_any_container(user_model, tmp_path, docker_client):
    if os.getuid() == CONTAINER_USER[0]:
        pytest.skip("this user is the containers' user")
    matrix = matrix_file(tmp_path, f'[models.mine]\npath = "{user_model}"\nparams_b = 0.001\n')
    plan = orchestrate("plan", "--matrix", str(matrix))
    assert plan.returncode == 0 and "model not readable in the containers" in plan.stdout
    assert "model.safetensors" in plan.stdout and "chmod -R a+rX" in plan.stdout
    run = orchestrate("run", "--matrix", str(matrix), "--results", str(tmp_path / "results"),
                      "--cache", str(tmp_path / "cache"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "skipped 1 trial(s)" in run.stdout and "model.safetensors" in run.stdout and "0600" in run.stdout
    run_dir = tmp_path / "results" / tmp_path.name
    assert not list(run_dir.glob("logs/*.log"))  # no container started: every container leaves its log
    assert not list(run_dir.glob("trials/*.json"))  # and nothing is recorded as failed
