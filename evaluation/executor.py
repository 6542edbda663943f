"""The sandbox's executor: runs HumanEval programs, one process each, and prints one JSON line per outcome.

Runs inside the sandbox container (network none, read-only root, tmpfs /tmp, non-root, no capabilities, a pids limit,
memory and CPU limits: orchestrator/docker_sandbox.py) as its PID 1, so a completion cannot signal it (the kernel ignores
signals to a namespace's init that it has no handler for). Standard library only.

    python executor.py PROGRAMS.jsonl      # lines: {"task_id", "program", "timeout_s"}

Outcomes: ``passed`` (the program ran to its end: its last statement, ``check(candidate)``, returned); ``failed``
(an AssertionError: a test did not hold); ``error`` (another exception, its type named; death by a signal, e.g. the
memory limit; or an exit before the tests finished — ``sys.exit(0)``, ``os._exit(0)``, ``quit()`` — whatever its
status); ``timeout`` (HumanEval's 3 s by default). Each program runs in an isolated interpreter (-I) in a fresh folder
under /tmp, in its own session so that everything it started is killed with it, under RLIMIT_AS (memory), RLIMIT_CPU
and RLIMIT_FSIZE; the next program starts clean.

Passed is never read from the exit status: a small harness in the child (``HARNESS``) reads a random token (a new one
per program, never in the program's text) and the program from stdin, runs the program as ``__main__``, and only when
it returns writes the token to a pipe of its own; the executor scores ``passed`` when the token came through that
pipe (other bytes the program wrote there are ignored). HumanEval's own harness has the same rule (``exec``
returned). Not defended: code written to game its own checker — the token is in the same process (a frame walk
finds it), and a completion can return an object equal to everything or rebind the names the tests use; the sandbox
protects the host and the other tasks, not a task's verdict from its own completion.
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MEMORY_BYTES = int(os.environ.get("SANDBOX_TASK_MEMORY_BYTES", str(512 * 2**20)))
FILE_BYTES = 2**20
EXITED = "exit before the tests finished"
# Runs in the child: the token is stdin's first line, the program the rest. The program runs as a fresh __main__ (the
# harness's own globals are not reachable by `import __main__`); only its return writes the token. Standard library.
HARNESS = """\
import os, sys, types
def _run(fd):
    token, _, source = sys.stdin.buffer.read().partition(b"\\n")
    write, main = os.write, types.ModuleType("__main__")
    sys.modules["__main__"], sys.argv[:] = main, ["-"]
    exec(compile(source, "<stdin>", "exec"), main.__dict__)
    write(fd, token)
_run(int(sys.argv[1]))
"""
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


def classify(returncode: int | None, stderr: str, timed_out: bool, finished: bool) -> tuple[str, str | None]:
    """(outcome, error type); ``finished``: the harness wrote this run's token, i.e. the program ran to its end."""
    if finished:
        return "passed", None  # check(candidate) returned; what the process did after that cannot undo it
    if timed_out:
        return "timeout", None
    if returncode is not None and returncode < 0:
        return "error", f"killed by signal {signal.Signals(-returncode).name} before the tests finished"
    if returncode == 1:  # an uncaught exception: Python printed its traceback and exits with 1
        last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
        m = _EXC.match(last)
        if m:
            kind = m.group(1).rsplit(".", 1)[-1]
            return ("failed" if kind == "AssertionError" else "error"), kind
    if returncode is None:  # could not start
        return "error", stderr.split(":", 1)[0] if stderr else "no exit status"
    return "error", f"{EXITED} (exit status {returncode})"


def _read_pipe(fd: int) -> bytes:
    """What the child wrote to its token pipe: at most a pipe's capacity (a writer beyond it blocks until its timeout);
    never blocks here, as a leftover of the program may still hold the write end."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) <= 2**16 and (chunk := os.read(fd, 2**16)):
            data += chunk
    except BlockingIOError:
        pass
    return data


def run_one(program: str, timeout_s: float) -> dict:
    work = tempfile.mkdtemp(prefix="task-", dir="/tmp" if os.path.isdir("/tmp") else None)
    token = secrets.token_hex(16).encode()
    t0 = time.monotonic()
    timed_out, got = False, b""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-c", HARNESS, str(w)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work, start_new_session=True,
                                pass_fds=(w,), preexec_fn=_limits(timeout_s),
                                env={"PATH": "/usr/bin:/bin", "HOME": work})
        os.close(w)
        w = -1
        try:
            _, err = proc.communicate(token + b"\n" + program.encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            _, err = proc.communicate()
        _kill_group(proc.pid)  # whatever it left running
        got = _read_pipe(r)
        code = proc.returncode
        stderr = err.decode(errors="replace")[-4000:]
    except OSError as e:  # cannot even start (the pids limit reached by a leftover): an error, the next task goes on
        code, stderr = None, f"OSError: {e}"
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(work, ignore_errors=True)
        _reap()
    outcome, kind = classify(code, stderr, timed_out, finished=token in got)
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
