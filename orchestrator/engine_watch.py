"""The Docker engine going away while a trial runs (restarted, crashed, stopped).

A trial whose engine went away did not fail: its container was killed under it (or its launch broke off with a
connection error). It is not recorded — a failed record would blame the trial and stay failed on resume without
--retry-failed. The orchestrator waits for the engine to answer again (ENGINE_WAIT_S), removes what is left of the
run's containers, and runs the trial again, once; an engine that does not come back (or goes away again) ends the run
with EngineWentAway (exit 3) and "run the same command again" — every finished trial is recorded.

Seen as: a connection error (or an engine error) out of the launch, or a failed trial after which the engine does not
answer, or answers from another dockerd process (its pid file, where this host has one: a restart between two pings).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

ENGINE_WAIT_S = float(os.environ.get("SLM_ENGINE_WAIT_S", 300))  # how long a run waits for a restarting engine
PID_FILES = (Path("/var/run/docker.pid"), Path("/run/docker.pid"))


class EngineWentAway(RuntimeError):
    pass


def engine_failures() -> tuple[type[BaseException], ...]:
    """How a Docker engine fails mid-run; none where the Docker SDK is not installed (a bare host, process launcher)."""
    try:
        import docker.errors
        import requests
    except ImportError:
        return ()
    return (requests.exceptions.ConnectionError, docker.errors.APIError)


def daemon_pid() -> int | None:
    """The local dockerd's pid (None: no pid file here, or its process is gone)."""
    for f in PID_FILES:
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            continue
        return pid if Path(f"/proc/{pid}").exists() else None
    return None


class EngineWatch:
    def __init__(self, client):
        self.client = client
        self.pid: int | None = None

    def mark(self) -> None:
        """Before a launch: which dockerd runs now."""
        self.pid = daemon_pid()

    def went_away(self) -> str | None:
        """Why the engine is not the one that started the trial, or None."""
        try:
            self.client.ping()
        except Exception as e:  # any failure to answer means it is gone
            return f"the Docker engine stopped answering ({type(e).__name__})"
        now = daemon_pid()
        if self.pid is not None and now != self.pid:
            return f"the Docker engine restarted (dockerd pid {self.pid} → {now or 'none'})"
        return None

    def wait_back(self, timeout_s: float, note: Callable[[str], None]) -> bool:
        """Wait until the engine answers again; whether it did within timeout_s."""
        if timeout_s <= 0:
            return False
        note(f"  waiting up to {timeout_s:.0f} s for the Docker engine to answer again")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.client.ping()
                return True
            except Exception:
                time.sleep(2)
        return False
