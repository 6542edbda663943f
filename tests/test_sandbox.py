"""The evaluation sandbox through the real container (images/_sandbox): HumanEval's own canonical solutions pass
164/164, empty bodies pass none, and hostile completions are contained — each followed by a canonical solution that
must still pass, and a canary file on the host that must be untouched at the end.

Each hostile step is followed by the task's canonical solution, so a step that got what it wanted would go on to pass:
every hostile row below must come out as anything *but* passed. The executor's own rule (passed only when
check(candidate) returned, never by exit status) is tests/test_executor_hostile.py, without Docker."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections import Counter

import pytest

from evaluation import humaneval as he

pytestmark = pytest.mark.usefixtures("docker_client")


@pytest.fixture(scope="module")
def container(docker_client):
    """The sandbox's container through the orchestrator's Docker layer, its image built as the runtimes' are."""
    from orchestrator.docker_sandbox import DockerSandbox

    c = DockerSandbox(docker_client)
    c.ensure_image(build=True, log=lambda line: None)
    return c


@pytest.fixture(scope="module")
def sandbox(container):
    from evaluation.sandbox import Sandbox

    return Sandbox(container)


def _tasks(completions: dict[str, str]) -> list[dict]:
    return [{"task_id": t, "program": he.program(t, c), "timeout_s": he.TIMEOUT_S} for t, c in completions.items()]


def test_canonical_solutions_all_pass_and_empty_bodies_all_fail(sandbox):
    problems = he.problems()
    assert len(problems) == 164
    canonical = sandbox.evaluate(_tasks({t: p["canonical_solution"] for t, p in problems.items()}))
    assert Counter(r["outcome"] for r in canonical) == {"passed": 164}
    assert [r["task_id"] for r in canonical] == list(problems)  # in order, one each
    empty = sandbox.evaluate(_tasks({t: "    pass\n" for t in problems}))
    assert not [r for r in empty if r["outcome"] == "passed"]
    assert {r["outcome"] for r in empty} <= {"failed", "error"}
    assert sum(r["outcome"] == "failed" for r in empty) > 100  # mostly assertions, some TypeErrors on None


@pytest.fixture
def host_listener():
    """A TCP server on the host, reachable from any container that has a network (the bridge's gateway)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(8)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1], accepted
    srv.close()


def test_hostile_completions_are_contained_and_the_next_task_still_evaluates(sandbox, tmp_path, host_listener,
                                                                             docker_client):
    port, accepted = host_listener
    gateway = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0].get("Gateway", "172.17.0.1")
    canary = tmp_path / "canary.txt"
    canary.write_text("the host's file\n")
    before = hashlib.sha256(canary.read_bytes()).hexdigest()
    hostile = {
        "infinite loop": ("    while True:\n        pass\n", {"timeout"}),
        "fork bomb": ("    import os\n    while True:\n        os.fork()\n", {"timeout", "error"}),
        "memory bomb": ("    blocks = []\n    while True:\n        blocks.append(bytearray(2**26))\n", {"error"}),
        "network": (f"    import socket\n    socket.create_connection(({gateway!r}, {port}), timeout=2)\n",
                    {"error"}),
        "write /": ("    open('/pwned', 'w').write('x')\n", {"error"}),
        "write inputs": ("    open('/input/programs.jsonl', 'a').write('x')\n", {"error"}),
        "read host file": (f"    print(open({str(canary)!r}).read())\n", {"error"}),
        "write host file": (f"    open({str(canary)!r}, 'w').write('pwned')\n", {"error"}),
        "kill pid 1": ("    import os, signal\n    for s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):\n"
                       "        os.kill(1, s)\n    import time\n    time.sleep(0.5)\n", {"error", "timeout", "passed"}),
        "sys.exit(0)": ("    import sys\n    sys.exit(0)\n", {"error"}),
        "os._exit(0)": ("    import os\n    os._exit(0)\n", {"error"}),
    }
    problems = he.problems()
    ids = list(problems)
    tasks = []
    for k, (name, (completion, _)) in enumerate(hostile.items()):
        hostile_id, next_id = ids[2 * k], ids[2 * k + 1]
        then = problems[hostile_id]["canonical_solution"]  # reached only if the hostile step got what it wanted
        tasks += [{"task_id": hostile_id, "program": he.program(hostile_id, completion + then), "timeout_s": 3.0,
                   "name": name},
                  {"task_id": next_id, "program": he.program(next_id, problems[next_id]["canonical_solution"]),
                   "timeout_s": 3.0, "name": f"after {name}"}]
    results = sandbox.evaluate(tasks)
    by_name = {t["name"]: r for t, r in zip(tasks, results)}
    for name, (_, allowed) in hostile.items():
        got = by_name[name]
        if name != "kill pid 1":
            assert got["outcome"] != "passed", (name, got)
        assert got["outcome"] in allowed, (name, got)
        assert by_name[f"after {name}"]["outcome"] == "passed", (name, by_name[f"after {name}"])
    # and how each was stopped
    assert by_name["memory bomb"]["error_type"] == "MemoryError"
    assert by_name["network"]["error_type"] == "OSError"  # "Network is unreachable": no interface but lo
    assert by_name["write /"]["error_type"] == "OSError"  # read-only file system
    assert by_name["write inputs"]["error_type"] in ("OSError", "PermissionError")  # read-only mount, root's file
    assert by_name["read host file"]["error_type"] == "FileNotFoundError"
    assert by_name["sys.exit(0)"]["error_type"] == by_name["os._exit(0)"]["error_type"] == \
        "exit before the tests finished (exit status 0)"
    assert not accepted  # no connection ever reached the host
    assert hashlib.sha256(canary.read_bytes()).hexdigest() == before
    # the container itself (its PID 1, the executor) survived every one: all outcomes came from one container run,
    # or from a retry of only the task that was running; no task was given up as "sandbox died"
    assert not [r for r in results if r["error_type"] == "sandbox died"]


def test_the_container_is_locked_down(container, tmp_path, docker_client):
    opts = container.run_options(tmp_path)
    assert opts["network_mode"] == "none" and opts["read_only"] and opts["user"] == "1000:1000"
    assert opts["cap_drop"] == ["ALL"] and "no-new-privileges" in opts["security_opt"]
    assert opts["pids_limit"] and opts["mem_limit"] == opts["memswap_limit"]
    assert opts["volumes"][str(tmp_path)]["mode"] == "ro"
    # what the engine applied, not only what we asked: inspect a live container
    from orchestrator.docker_sandbox import image

    c = docker_client.containers.run(image(), ["/input/none.jsonl"], detach=True, **opts)
    try:
        c.wait(timeout=30)
        host = c.attrs["HostConfig"]
        assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert host["PidsLimit"] == opts["pids_limit"] and "no-new-privileges" in host["SecurityOpt"]
        assert c.attrs["Config"]["User"] == "1000:1000"
        assert [m["RW"] for m in c.attrs["Mounts"]] == [False]
    finally:
        c.remove(force=True)
