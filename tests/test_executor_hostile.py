"""Passed means the tests ran to the end: the sandbox's executor (evaluation/executor.py), run as a plain subprocess
over a programs file exactly as the sandbox container runs it, scores a program ``passed`` only when its harness
wrote the run's token after ``check(candidate)`` returned — never by exit status.

Every hostile completion below is a way out of the interpreter *followed by HumanEval's canonical solution*: if the
way out were not caught, the body would go on to return the right answer and pass — so not-passed here means the
exit itself was refused, not that the answer was wrong. Docker-free (the container's lock-down: tests/test_sandbox.py).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from evaluation import humaneval as he
from evaluation.executor import EXITED

EXECUTOR = Path(__file__).resolve().parents[1] / "evaluation" / "executor.py"
TASK = "HumanEval/0"  # has_close_elements: check() calls the candidate several times


def run_executor(tasks: list[dict], folder: Path, name: str = "programs.jsonl") -> subprocess.Popen:
    path = folder / name
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return subprocess.Popen([sys.executable, str(EXECUTOR), str(path)], stdout=subprocess.PIPE, text=True)


def outcomes(proc: subprocess.Popen) -> list[dict]:
    out, _ = proc.communicate(timeout=600)
    lines = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0 and lines[-1] == {"done": True}, lines[-3:]
    return lines[:-1]


def canonical(task_id: str = TASK) -> str:
    return he.problems()[task_id]["canonical_solution"]


# name -> (the body's first lines, the error type it must be given); the canonical solution follows each
HOSTILE = {
    "sys.exit(0)": ("    import sys\n    sys.exit(0)\n", f"{EXITED} (exit status 0)"),
    "sys.exit()": ("    import sys\n    sys.exit()\n", f"{EXITED} (exit status 0)"),
    "sys.exit(1)": ("    import sys\n    sys.exit(1)\n", f"{EXITED} (exit status 1)"),
    "raise SystemExit(0)": ("    raise SystemExit(0)\n", f"{EXITED} (exit status 0)"),
    "raise SystemExit": ("    raise SystemExit\n", f"{EXITED} (exit status 0)"),
    "exit()": ("    exit()\n", f"{EXITED} (exit status 0)"),
    "quit()": ("    quit()\n", f"{EXITED} (exit status 0)"),
    "os._exit(0)": ("    import os\n    os._exit(0)\n", f"{EXITED} (exit status 0)"),
    "SIGKILL to itself": ("    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
                          "killed by signal SIGKILL before the tests finished"),
    "SIGTERM to itself": ("    import os, signal\n    os.kill(os.getpid(), signal.SIGTERM)\n",
                          "killed by signal SIGTERM before the tests finished"),
    "SIGKILL to its group": ("    import os, signal\n    os.killpg(0, signal.SIGKILL)\n",
                             "killed by signal SIGKILL before the tests finished"),
    "a thread calls os._exit(0)": ("    import os, threading, time\n    threading.Thread(target=os._exit, args=(0,))"
                                   ".start()\n    time.sleep(2)\n", f"{EXITED} (exit status 0)"),
    "exec another interpreter": ("    import os, sys\n    os.execv(sys.executable, [sys.executable, '-c', 'pass'])\n",
                                 f"{EXITED} (exit status 0)"),
    # a crash turned into exit status 0 at shutdown
    "atexit os._exit(0) after an exception": ("    import atexit, os\n    atexit.register(os._exit, 0)\n"
                                              "    raise ValueError('wrong')\n", f"{EXITED} (exit status 0)"),
    # forged tokens: random hex where the token could be (stdout, stderr, every inherited descriptor), at once and
    # again at shutdown
    "fake tokens everywhere": (
        "    import atexit, os, secrets, sys\n"
        "    def forge():\n"
        "        for fd in range(1, 256):\n"
        "            try:\n"
        "                os.write(fd, (secrets.token_hex(16) + '\\n').encode())\n"
        "            except OSError:\n"
        "                pass\n"
        "    forge()\n    atexit.register(forge)\n    sys.exit(0)\n", f"{EXITED} (exit status 0)"),
    # a completion that looks for the token where a harness might have put it: environment, arguments, stdin, files
    "searches for the token": (
        "    import os, re, sys\n"
        "    seen = ' '.join([*os.environ.values(), *sys.argv, sys.stdin.buffer.read().decode(errors='replace')])\n"
        "    for name in ['/proc/self/cmdline', '/proc/self/environ', *os.listdir('.')]:\n"
        "        try:\n"
        "            seen += open(name, 'rb').read().decode(errors='replace')\n"
        "        except OSError:\n"
        "            pass\n"
        "    for token in set(re.findall('[0-9a-f]{32}', seen)):\n"
        "        for fd in range(1, 256):\n"
        "            try:\n"
        "                os.write(fd, token.encode())\n"
        "            except OSError:\n"
        "                pass\n"
        "    sys.exit(0)\n", f"{EXITED} (exit status 0)"),
    # the parent leaves with status 0, the forked child runs the tests — on a wrong answer: not passed
    "fork, the parent exits 0": ("    import os\n    if os.fork():\n        os._exit(0)\n    return True\n",
                                 f"{EXITED} (exit status 0)"),
}


def test_every_way_out_of_the_interpreter_before_the_tests_finish_is_not_a_pass(tmp_path):
    names = list(HOSTILE) + ["top-level exit after the function"]
    programs = [he.program(TASK, HOSTILE[n][0] + canonical()) for n in HOSTILE]
    programs.append(he.program(TASK, canonical() + "\nimport sys\nsys.exit(0)\n"))  # runs before the tests exist
    got = outcomes(run_executor([{"task_id": TASK, "program": p, "timeout_s": 5.0} for p in programs], tmp_path))
    by_name = dict(zip(names, got))
    assert not [n for n, r in by_name.items() if r["outcome"] == "passed"], by_name
    assert {n: r["outcome"] for n, r in by_name.items()} == {n: "error" for n in names}
    assert {n: by_name[n]["error_type"] for n in HOSTILE} == {n: kind for n, (_, kind) in HOSTILE.items()}
    assert by_name["top-level exit after the function"]["error_type"] == f"{EXITED} (exit status 0)"


def test_right_answers_pass_wrong_ones_fail_and_a_pass_is_not_undone_after_check_returned(tmp_path):
    chatty = ("    import sys\n    print('x' * 10000)\n    print('AssertionError', file=sys.stderr)\n"
              + canonical())
    rows = {
        "canonical": (canonical(), "passed", None),
        "return True": ("    return True\n", "failed", "AssertionError"),
        "return None": ("    pass\n", "failed", "AssertionError"),
        "raises": ("    raise ValueError('no')\n", "error", "ValueError"),
        "prints to stdout and stderr": (chatty, "passed", None),
        # a non-daemon thread keeps the interpreter past the timeout, but check() had returned: HumanEval's rule too
        "hangs at shutdown": ("    import threading, time\n    threading.Thread(target=time.sleep, args=(60,))"
                              ".start()\n" + canonical(), "passed", None),
        "infinite loop": ("    while True:\n        pass\n", "timeout", None),
    }
    tasks = [{"task_id": TASK, "program": he.program(TASK, body), "timeout_s": 1.5} for body, _, _ in rows.values()]
    got = dict(zip(rows, outcomes(run_executor(tasks, tmp_path))))
    assert {n: (r["outcome"], r["error_type"]) for n, r in got.items()} == \
        {n: (outcome, kind) for n, (_, outcome, kind) in rows.items()}
    assert got["canonical"]["stderr_tail"] is None and "ValueError: no" in got["raises"]["stderr_tail"]


@pytest.mark.slow
def test_all_164_canonical_solutions_pass_through_the_executor(tmp_path):
    """The harness changes nothing a right answer needs (about 25 s on one core: two executors, one half each)."""
    problems = he.problems()
    assert len(problems) == 164
    tasks = [{"task_id": t, "program": he.program(t, p["canonical_solution"]), "timeout_s": he.TIMEOUT_S}
             for t, p in problems.items()]
    procs = [run_executor(tasks[i::2], tmp_path, f"half{i}.jsonl") for i in range(2)]
    got = [r for proc in procs for r in outcomes(proc)]
    assert Counter(r["outcome"] for r in got) == {"passed": 164}, [r for r in got if r["outcome"] != "passed"][:3]
    assert sorted(r["task_id"] for r in got) == sorted(problems)


def test_every_program_ends_with_its_check_so_running_to_the_end_means_check_returned():
    for task_id, p in he.problems().items():
        last = ast.parse(he.program(task_id, p["canonical_solution"])).body[-1]
        assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call), task_id
        assert ast.unparse(last.value) == f"check({p['entry_point']})", task_id


def test_each_evaluation_says_which_rule_scored_it():
    """Evaluations are resumable: one written under the old rule (exit status 0 passed) stays; the facts tell them
    apart."""
    from evaluation.sandbox import PASSED_WHEN, Sandbox
    from orchestrator.docker_sandbox import DockerSandbox

    facts = Sandbox(DockerSandbox(client=None)).describe()
    assert facts["passed_when"] == PASSED_WHEN and facts["network"] == "none" and facts["cap_drop"] == "ALL"
    assert "check(candidate) returned" in PASSED_WHEN and "never the exit status" in PASSED_WHEN


def test_a_container_that_dies_costs_only_the_task_that_killed_it():
    """The sandbox's resume rule over a stand-in container (no Docker): the programs after a container death go to a
    fresh one, and a program that killed two containers in a row is an error ("sandbox died")."""
    from evaluation.sandbox import Sandbox

    class DiesAtTheBomb:
        def __init__(self):
            self.runs: list[list[str]] = []

        def run(self, programs: str, timeout_s: float) -> tuple[str, str | None]:
            ids = [json.loads(line)["task_id"] for line in programs.splitlines()]
            self.runs.append(ids)
            printed = ""
            for task_id in ids:
                if task_id == "bomb":
                    return printed, "exit status 137"
                printed += json.dumps({"task_id": task_id, "outcome": "passed"}) + "\n"
            return printed + json.dumps({"done": True}) + "\n", None

        def describe(self) -> dict:
            return {}

    container = DiesAtTheBomb()
    got = Sandbox(container).evaluate([{"task_id": t, "program": "", "timeout_s": 3.0} for t in ("a", "bomb", "b")])
    assert [r["outcome"] for r in got] == ["passed", "error", "passed"]
    assert got[1]["error_type"] == "sandbox died" and got[1]["stderr_tail"] == "exit status 137"
    assert container.runs == [["a", "bomb", "b"], ["bomb", "b"], ["b"]]
