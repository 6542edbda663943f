"""Running the runner in a real runtime image, the way the orchestrator does: its Docker launcher, `prepare` with the
engine cache read-write, measured runs with the cache read-only and no network. Shared by the llama.cpp and vLLM
tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from runners.record import write_json_atomic


def build_image(client, runtime_name: str) -> Any:
    """The runtime's image built from this checkout through the orchestrator (layer-cached: seconds after `make
    images-cpu`), so containers run the runners/ code under test. Returns the orchestrator's Runtime."""
    from orchestrator.images import ImageError, build, discover

    runtime = discover()[runtime_name]
    try:
        build(client, runtime, log=lambda line: None)
    except ImageError as e:
        pytest.fail(f"{e} — set BASE_IMAGE / PIP_EXTRA_INDEX_URL as for `make images-cpu` (see .ci/run)")
    return runtime


def engine_cache(root: Path) -> Path:
    """An engine cache the images' uid 1000 can write (prepare) and read (measured runs)."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o777)
    return root


def shareable(path: Path, record: dict[str, Any]) -> Path:
    """Write a (reference) record where a read-only mount gives uid 1000 access to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    write_json_atomic(path, record)
    os.chmod(path, 0o644)
    return path


class Launch:
    """One runner invocation per call, through orchestrator.docker_launcher.DockerLauncher."""

    def __init__(self, client, runtime, work: Path, run_id: str):
        from runners.job import MeterSpec
        from runners.meters import MeterSet

        self.client, self.runtime, self.work, self.run_id = client, runtime, work, run_id
        self.meters = MeterSet.create(MeterSpec(codecarbon=False, keep_series=False))
        self.count = 0

    def __call__(self, mode: str, job: dict[str, Any], *, timeout_s: float = 600) -> tuple[dict | None, Any]:
        from orchestrator.docker_launcher import DockerLauncher
        from orchestrator.launch import LaunchSpec

        self.count += 1
        name = f"{mode}-{self.count:03d}"
        container = dict(getattr(self.runtime, "container", ()) or ())  # the image's LABELs (shm-size, …)
        spec = LaunchSpec(name=name, runtime=self.runtime, mode=mode, job=job, work=self.work / name,
                          log_path=self.work / f"{name}.log", timeout_s=timeout_s,
                          shm_size=container.get("shm_size"), labels={"io.slm-matrix.test": self.run_id})
        outcome = DockerLauncher(self.client, run_id=self.run_id).run(spec, self.meters)
        if outcome.launch_error:
            pytest.fail(f"{self.runtime.name}: {outcome.launch_error}")
        if outcome.record is None:
            log = spec.log_path.read_text()[-3000:] if spec.log_path.exists() else "(no log)"
            pytest.fail(f"{self.runtime.name} {mode}: no record (exit {outcome.exit_code}, oom "
                        f"{outcome.oom_killed}, timed out {outcome.timed_out})\n{log}")
        return outcome.record, outcome

    def close(self) -> None:
        self.meters.close()


def summary(record: dict[str, Any]) -> str:
    """One line for assertion messages."""
    if record.get("status") != "ok":
        return json.dumps(record.get("error"))[:2000]
    return f"ok {record.get('tokens')}"
