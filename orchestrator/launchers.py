"""The launcher factory: --launcher docker|process. Its own module, so that the launchers import only the contract
they implement (orchestrator/launch.py), never the module that chooses between them."""

from __future__ import annotations

from pathlib import Path

from orchestrator.launch import Launcher


def make_launcher(name: str, run_id: str, results: Path | None = None) -> Launcher:
    """--launcher docker|process; results: the run's folder, whose containers alone the launcher's clean-up touches."""
    if name == "docker":
        from orchestrator.docker_launcher import DockerLauncher

        return DockerLauncher.connected(run_id, results)
    if name == "process":
        from orchestrator.process_launcher import ProcessLauncher

        return ProcessLauncher()
    raise ValueError(f"unknown launcher {name!r}")
