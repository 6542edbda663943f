"""The sandbox container, host side: build its image, run a batch of programs in it locked down, read the outcomes.

Lock-down (each a Docker option, all on every run): no network; read-only root filesystem with a small tmpfs at /tmp
(noexec is not set: Python writes nothing executable there, and the tests import nothing from it); uid 1000, all
capabilities dropped, ``no-new-privileges``; a pids limit (fork bombs), a memory limit with no swap beyond it, one
CPU; the programs mounted read-only. Inside, the executor gives every program its own process, timeout and rlimits.

A container that dies before the last program (the executor killed, the memory limit hit by the executor itself) is
not the end: the programs without an outcome go to a fresh container, and a program that killed two containers in a
row is recorded as an ``error`` ("sandbox died") — one hostile completion never costs the others their evaluation.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator import REPO_ROOT
from orchestrator.images import build_dockerfile, image_name, prepare_build

DOCKERFILE = REPO_ROOT / "images" / "_sandbox" / "Dockerfile"
PASSED_WHEN = "check(candidate) returned: the task's token came after the program, never the exit status alone"


@dataclass(frozen=True)
class Limits:
    mem_limit: str = "1g"  # the container; each program is held to 512 MiB of address space inside it
    cpus: float = 1.0
    pids_limit: int = 64
    tmpfs_size: str = "64m"


def image() -> str:
    return image_name("_sandbox")


class Sandbox:
    def __init__(self, client, limits: Limits = Limits()):
        self.client = client
        self.limits = limits

    def ensure_image(self, build: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
        import docker.errors

        if build:
            prepare_build(self.client, log)  # the base image (BASE_IMAGE, the stock one, or the local Debian base)
            build_dockerfile(self.client, DOCKERFILE, image(), log)
        try:
            img = self.client.images.get(image())
        except docker.errors.ImageNotFound:
            from orchestrator.launch import HostProblem

            raise HostProblem(f"the sandbox image {image()} is not built: run with --build (or orchestrate.py build "
                              "--all), which builds images/_sandbox/Dockerfile") from None
        return {"image": image(), "image_id": img.id}

    def run_options(self, input_dir: Path) -> dict[str, Any]:
        lim = self.limits
        return {
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"size={lim.tmpfs_size},mode=1777"},
            "user": "1000:1000",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": lim.pids_limit,
            "mem_limit": lim.mem_limit,
            "memswap_limit": lim.mem_limit,
            "nano_cpus": int(lim.cpus * 1e9),
            "volumes": {str(input_dir): {"bind": "/input", "mode": "ro"}},
            "labels": {"io.slm-matrix.role": "sandbox"},
        }

    def _container(self, tasks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """One container over these tasks: (outcomes in order, why it stopped early or None)."""
        with tempfile.TemporaryDirectory(prefix="sandbox-") as tmp:
            d = Path(tmp)
            (d / "programs.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
            d.chmod(0o755)
            (d / "programs.jsonl").chmod(0o644)
            budget = 30 + sum(float(t.get("timeout_s", 3.0)) + 2.0 for t in tasks)
            c = self.client.containers.run(image(), ["/input/programs.jsonl"], detach=True, **self.run_options(d))
            try:
                try:
                    status = c.wait(timeout=budget)
                    why = None if status.get("StatusCode") == 0 else f"exit status {status.get('StatusCode')}"
                except Exception:  # the requests timeout: the executor hangs (it should not); stop it
                    c.kill()
                    why = f"no answer within {budget:.0f} s"
                c.reload()
                if c.attrs.get("State", {}).get("OOMKilled"):
                    why = "the container hit its memory limit"
                lines = c.logs(stdout=True, stderr=False).decode(errors="replace").splitlines()
            finally:
                c.remove(force=True)
        out, done = [], False
        for line in lines:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            if item.get("done"):
                done = True
            elif "task_id" in item:
                out.append(item)
        return out, (None if done else why or "the executor stopped before the end")

    def evaluate(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Outcomes for every task, in order: {"task_id", "outcome", "error_type", "seconds", "stderr_tail"}."""
        results: dict[int, dict[str, Any]] = {}
        pending = list(range(len(tasks)))
        strikes: dict[int, int] = {}
        while pending:
            got, why = self._container([tasks[i] for i in pending])
            for i, item in zip(pending, got):
                results[i] = item
            pending = pending[len(got):]
            if pending and why:
                first = pending[0]  # the task that was running when the container died
                strikes[first] = strikes.get(first, 0) + 1
                if strikes[first] >= 2:
                    results[first] = {"task_id": tasks[first]["task_id"], "outcome": "error",
                                      "error_type": "sandbox died", "seconds": None, "stderr_tail": why}
                    pending = pending[1:]
        return [results[i] for i in range(len(tasks))]

    def describe(self) -> dict[str, Any]:
        # passed_when: evaluations written before this rule lack it (exit status 0 was a pass then)
        return {"limits": asdict(self.limits), "network": "none", "read_only_root": True, "user": "1000:1000",
                "cap_drop": "ALL", "no_new_privileges": True, "passed_when": PASSED_WHEN}


def wait_gone(client, label: str = "io.slm-matrix.role=sandbox", timeout_s: float = 10.0) -> None:
    """Sandbox containers left by a killed evaluation, removed."""
    t_end = time.monotonic() + timeout_s
    for c in client.containers.list(all=True, filters={"label": label}):
        c.remove(force=True)
        if time.monotonic() > t_end:
            break
