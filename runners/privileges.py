"""What the runner's own process may do, as the kernel sees it from inside: its capabilities (effective and bounding),
whether it can gain privileges (no_new_privs), whether the root file system is read-only, the cgroup's process limit, and its uid.
Recorded in every record's environment (runners/environment.py), so a reviewer sees what a measured container really
ran with, not what the orchestrator asked for. Standard library only: the runner reads it in every image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# cgroup v2 (the container's own cgroup namespace), then cgroup v1's pids controller
PIDS_MAX_FILES = ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max")


def status_fields(status_text: str) -> dict[str, Any]:
    """From /proc/self/status: CapEff, the capabilities in force, and CapBnd, the most it could ever gain (hex, as
    the kernel writes them: a non-root user has CapEff 0 anyway, only a dropped bounding set shows `cap_drop ALL`),
    and NoNewPrivs (bool); None where absent."""
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in status_text.splitlines() if ":" in line)}
    nnp = fields.get("NoNewPrivs")
    return {"cap_eff": fields.get("CapEff") or None, "cap_bnd": fields.get("CapBnd") or None,
            "no_new_privs": nnp == "1" if nnp else None}


def root_read_only(mounts_text: str) -> bool | None:
    """Whether / is mounted read-only, from /proc/self/mounts (the last mount on / is the one in force); None when
    no line names /."""
    options = None
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "/":
            options = parts[3].split(",")
    return None if options is None else "ro" in options


def pids_limit(text: str) -> int | str | None:
    """pids.max: a number, "max" (no limit), or None when it is neither."""
    text = text.strip()
    return text if text == "max" else int(text) if text.isdigit() else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except (OSError, ValueError):
        return None


def collect() -> dict[str, Any]:
    """This process's privileges; a fact that cannot be read is None (e.g. no pids controller on the host)."""
    status = _read("/proc/self/status")
    mounts = _read("/proc/self/mounts")
    pids = next((t for t in map(_read, PIDS_MAX_FILES) if t is not None), None)
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        **status_fields(status or ""),
        "root_read_only": root_read_only(mounts) if mounts is not None else None,
        "pids_max": pids_limit(pids) if pids is not None else None,
    }
