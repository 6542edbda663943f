"""The sandbox's executor: runs HumanEval programs, one process each, and prints one JSON line per outcome.

Runs inside the sandbox container (network none, read-only root, tmpfs /tmp, non-root, no capabilities, a pids limit,
memory and CPU limits: evaluation/sandbox.py) as its PID 1, so a completion cannot signal it (the kernel ignores
signals to a namespace's init that it has no handler for). Standard library only.

    python executor.py PROGRAMS.jsonl      # lines: {"task_id", "program", "timeout_s"}

Outcomes: ``passed``; ``failed`` (an AssertionError: a test did not hold); ``error`` (another exception, its type
named; or death by a signal, e.g. the memory limit); ``timeout`` (HumanEval's 3 s by default). Each program runs from
stdin in an isolated interpreter (-I) in a fresh folder under /tmp, in its own session so that everything it started
is killed with it, under RLIMIT_AS (memory), RLIMIT_CPU and RLIMIT_FSIZE; the next program starts clean.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MEMORY_BYTES = int(os.environ.get("SANDBOX_TASK_MEMORY_BYTES", str(512 * 2**20)))
FILE_BYTES = 2**20
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Iteration))\b")


def _limits(timeout_s: float):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
        cpu = int(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _kill_group(pgid: int) -> None:
    # a fork bomb keeps forking while we kill: repeat until the group is empty (the pids limit bounds it)
    for _ in range(100):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def _reap() -> None:
    # as PID 1 we inherit every orphan (a daemonised child of a completion): collect them so none stays a zombie
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def classify(returncode: int | None, stderr: str, timed_out: bool) -> tuple[str, str | None]:
    if timed_out:
        return "timeout", None
    if returncode == 0:
        return "passed", None
    if returncode is not None and returncode < 0:
        return "error", f"killed by signal {signal.Signals(-returncode).name}"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    m = _EXC.match(last)
    kind = m.group(1).rsplit(".", 1)[-1] if m else None
    if kind == "AssertionError":
        return "failed", kind
    return "error", kind or (f"exit status {returncode}" if returncode is not None else "no exit status")


def run_one(program: str, timeout_s: float) -> dict:
    work = tempfile.mkdtemp(prefix="task-", dir="/tmp" if os.path.isdir("/tmp") else None)
    t0 = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd=work, start_new_session=True,
                                preexec_fn=_limits(timeout_s), env={"PATH": "/usr/bin:/bin", "HOME": work})
        try:
            _, err = proc.communicate(program.encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            _, err = proc.communicate()
        _kill_group(proc.pid)  # whatever it left running
        code = proc.returncode
        stderr = err.decode(errors="replace")[-4000:]
    except OSError as e:  # cannot even start (the pids limit reached by a leftover): an error, the next task goes on
        code, stderr = None, f"OSError: {e}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _reap()
    outcome, kind = classify(code, stderr, timed_out)
    return {"outcome": outcome, "error_type": kind, "seconds": round(time.monotonic() - t0, 4),
            "stderr_tail": None if outcome == "passed" else stderr[-600:]}


def main(path: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 without a handler: a completion cannot interrupt us
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            task = json.loads(line)
            result = run_one(task["program"], float(task.get("timeout_s", 3.0)))
            print(json.dumps({"task_id": task["task_id"], **result}), flush=True)
    print(json.dumps({"done": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
