"""The evaluation sandbox's container, the Docker side of evaluation/sandbox.py: its image (images/_sandbox, built the
way the runtime images are) and one locked-down run of the executor over a file of programs, through the Docker layer.

Lock-down (each a Docker option, all on every run): no network; read-only root filesystem with a small tmpfs at /tmp
(noexec is not set: Python writes nothing executable there, and the tests import nothing from it); uid 1000, all
capabilities dropped, ``no-new-privileges``; a pids limit (fork bombs), a memory limit with no swap beyond it, one
CPU; the programs mounted read-only. Inside, the executor gives every program its own process, timeout and rlimits.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator import REPO_ROOT
from orchestrator.docker_layer import LOCKED_DOWN, Container, connected, limits, local_image
from orchestrator.images import build_dockerfile, image_name, prepare_build
from orchestrator.launch import HostProblem

DOCKERFILE = REPO_ROOT / "images" / "_sandbox" / "Dockerfile"
ROLE_LABEL = {"io.slm-matrix.role": "sandbox"}


@dataclass(frozen=True)
class Limits:
    mem_limit: str = "1g"  # the container; each program is held to 512 MiB of address space inside it
    cpus: float = 1.0
    pids_limit: int = 64
    tmpfs_size: str = "64m"


def image() -> str:
    return image_name("_sandbox")


class DockerSandbox:
    """What evaluation.sandbox.Sandbox is given to run its programs: ``run`` and ``describe``."""

    def __init__(self, client, limits: Limits = Limits()):
        self.client = client
        self.limits = limits

    @classmethod
    def connected(cls, limits: Limits = Limits()) -> "DockerSandbox":
        """On a Docker engine that answers, or HostProblem with the fix."""
        return cls(connected(), limits)

    def ensure_image(self, build: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
        if build:
            prepare_build(self.client, log)  # the base image (BASE_IMAGE, the stock one, or the local Debian base)
            build_dockerfile(self.client, DOCKERFILE, image(), log)
        img = local_image(self.client, image())
        if img is None:
            raise HostProblem(f"the sandbox image {image()} is not built: run with --build (or orchestrate.py build "
                              "--all), which builds images/_sandbox/Dockerfile")
        return {"image": image(), "image_id": img.id}

    def run_options(self, input_dir: Path) -> dict[str, Any]:
        lim = self.limits
        return {
            **LOCKED_DOWN,
            "tmpfs": {"/tmp": f"size={lim.tmpfs_size},mode=1777"},
            "pids_limit": lim.pids_limit,
            **limits(lim.mem_limit, lim.cpus),
            "volumes": {str(input_dir): {"bind": "/input", "mode": "ro"}},
            "labels": ROLE_LABEL,
        }

    def run(self, programs: str, timeout_s: float) -> tuple[str, str | None]:
        """The executor over these programs (its JSON lines) in one fresh locked-down container, killed after
        timeout_s: (what it printed, why the container ended abnormally — or None)."""
        with tempfile.TemporaryDirectory(prefix="sandbox-") as tmp:
            d = Path(tmp)
            (d / "programs.jsonl").write_text(programs)
            d.chmod(0o755)
            (d / "programs.jsonl").chmod(0o644)
            with Container(self.client, image(), ["/input/programs.jsonl"], **self.run_options(d)) as c:
                c.start()
                code, timed_out = c.wait(timeout_s)
                why = (f"no answer within {timeout_s:.0f} s" if timed_out else
                       None if code == 0 else f"exit status {code}")
                if c.oom_killed():
                    why = "the container hit its memory limit"
                return c.stdout(), why

    def describe(self) -> dict[str, Any]:
        return {"limits": asdict(self.limits), "network": LOCKED_DOWN["network_mode"],
                "read_only_root": LOCKED_DOWN["read_only"], "user": LOCKED_DOWN["user"],
                "cap_drop": ",".join(LOCKED_DOWN["cap_drop"]),
                "no_new_privileges": "no-new-privileges" in LOCKED_DOWN["security_opt"]}
