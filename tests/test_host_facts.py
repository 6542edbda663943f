"""The host's side of a trial without Docker: its verdict on a launch (orchestrator/host_facts.judge), the host block
merged into the record once (HostFacts, the keys and order records on disk have), and the executor's rule for
models this host cannot get (skipped, not failed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import matrix_file

from orchestrator.execute import Executor
from orchestrator.host_facts import HostFacts, judge
from orchestrator.launch import LaunchSpec, Outcome
from orchestrator.matrix import load
from orchestrator.plan import expand
from orchestrator.store import RunStore

# record["host"] of a trial as records on disk have it, in order; a prepare record has the first 15 only
HOST_KEYS = ["launcher", "container_id", "image", "image_id", "limits", "exit_code", "oom_killed", "timed_out",
             "started_unix", "exited_unix", "container", "idle", "log", "log_tail", "overhead_s", "meters",
             "cooldown", "begin_unix", "trial_start_unix", "node", "recorded_unix"]


def _spec(tmp_path: Path, job: dict | None = None) -> LaunchSpec:
    log = tmp_path / "logs" / "t.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("loading\nTraceback: boom\n")
    return LaunchSpec(name="t", runtime=None, mode="run", job=job or {"trial": {"trial_id": "t"}},  # type: ignore
                      work=tmp_path / "work", log_path=log, timeout_s=60.0, mem_limit="1g")


def _ok_record() -> dict:
    return {"status": "ok", "error": None, "trial": {"trial_id": "t"},
            "phases": {"load": {"start_unix": 102.0, "end_unix": 103.0}, "generate": {"start_unix": 103.0,
                                                                                     "end_unix": 107.0}}}


@pytest.mark.parametrize("outcome, kind", [
    (dict(record=None, exit_code=None, launch_error="no such image"), "LaunchError"),
    (dict(record=None, exit_code=137, timed_out=True), "Timeout"),
    (dict(record=None, exit_code=137, oom_killed=True), "OOMKilled"),
    (dict(record=None, exit_code=1), "NoRecord"),
    (dict(record=_ok_record(), exit_code=3), "ExitCode"),
])
def test_a_launch_is_ok_only_when_the_runner_exited_0_with_an_ok_record(tmp_path, outcome, kind):
    rec = judge(Outcome(**outcome), {"trial": {"trial_id": "t"}}, _spec(tmp_path), "run")
    assert rec["status"] == "failed" and rec["error"]["type"] == kind
    if kind == "NoRecord":
        assert rec["error"]["message"].endswith("Traceback: boom")  # the log's last line says why
    assert judge(Outcome(record=_ok_record(), exit_code=0), {}, _spec(tmp_path), "run")["status"] == "ok"


def test_the_host_block_has_the_keys_of_records_on_disk_and_a_prepare_record_no_trial_keys(tmp_path):
    spec = _spec(tmp_path)
    outcome = Outcome(record=_ok_record(), exit_code=0, facts={"launcher": "process", "started_unix": 100.0,
                                                               "exited_unix": 110.0},
                      timings={"create_s": 0.0})
    rec = judge(outcome, spec.job, spec, "run")
    facts = HostFacts.launched(outcome, spec, tmp_path, rec, container={"duration_s": 10.0})
    prepare = facts.as_dict()
    assert list(prepare) == HOST_KEYS[:15]
    assert prepare["log"] == "logs/t.log" and prepare["log_tail"] is None and prepare["container"]["duration_s"] == 10
    assert prepare["overhead_s"] == {"create_s": 0.0, "runner_startup_s": 2.0, "runner_exit_s": 3.0}
    facts.idle, facts.meters, facts.cooldown = {"power": []}, {}, {"waited_s": 0.0}
    facts.begin_unix = facts.trial_start_unix = facts.recorded_unix = 1.0
    facts.node = {"hostname": "h"}
    assert list(facts.as_dict()) == HOST_KEYS
    failed = judge(Outcome(record=None, exit_code=1), spec.job, spec, "run")
    assert "boom" in HostFacts.launched(Outcome(record=None, exit_code=1), spec, tmp_path, failed, None).log_tail


class _Launcher:
    name = "process"

    def remove_stale(self):
        return []

    def gpu_problem(self):
        return None

    def ensure_ready(self, runtimes, build, log):
        self.ready = runtimes


class _UI:
    def __init__(self):
        self.lines: list[str] = []

    def note(self, line: str) -> None:
        self.lines.append(line)


class _Preparer:
    def reference_runtime(self):
        return None

    def prepare(self, trials):
        return {"gone": "no such folder"}, {"some-cell": "conversion failed"}


def test_trials_of_a_model_this_host_cannot_get_are_skipped_not_failed(tmp_path):
    path = matrix_file(tmp_path, '[models.tiny]\nfixture = "llama"\n[models.gone]\nfixture = "llama"\n', reps=2)
    plan = expand(load(path))
    ui = _UI()
    ex = Executor(plan, RunStore(tmp_path / "results", "r"), _Launcher(), None, ui)
    ex.preparer = _Preparer()
    sel = ex.select(plan.trials)
    assert len(sel.todo) == 4
    broken = ex.prepare(sel, build=False)
    assert broken == {"some-cell": "conversion failed"}
    assert [t.cell.model.name for t in sel.todo] == ["tiny", "tiny"]
    assert sorted(sel.skipped.values()) == ["model not available: no such folder"] * 2
    assert any("skipped 2 trial(s)" in line for line in ui.lines)
