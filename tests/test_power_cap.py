"""The GPU power cap per trial (issue 24 item 4, orchestrator/power_cap.py) against NVML's interface with a replayed
device (tests/_fake_nvml.py, as the NVML meter is tested): set before the idle baseline and read back into the record,
restored after a failed trial, after Ctrl-C and — from the note — at the next start after a killed orchestrator;
skipped, never run uncapped, where the host may not set it; a limit outside the board's range refused by field.

The trials run through the real executor and host meters; only the launcher is a stand-in (a CUDA runner cannot run
on a host without a GPU): it reads the device's limit while "the container runs" and ends the trial as asked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _fake_nvml import FakeGpu
from rich.console import Console

from orchestrator.execute import Executor
from orchestrator.launch import Outcome
from orchestrator.matrix import MatrixError, load
from orchestrator.models import ModelCache
from orchestrator.plan import expand
from orchestrator.power_cap import PowerCap, note_path
from orchestrator.session import RunOptions
from orchestrator.session import run as run_session
from orchestrator.store import RunStore
from runners.record import Record, validate_record


def _matrix(tmp_path: Path, cap: str = "[200]", plain: bool = False) -> Path:
    """A capped CUDA trial's matrix: the cap as a sweep axis (``cap`` a list) or, ``plain``, a setting field."""
    (tmp_path / "rapl").mkdir(exist_ok=True)  # no RAPL zones: the GPU is the only counter
    path = tmp_path / "matrix.toml"
    path.write_text(f"""
[matrix]
name = "capped"
seed = 3
repetitions = 1
[workload]
count = 2
[generation]
new_tokens = 4
[meters]
codecarbon = false
[host]
idle_seconds = 0.2
gpus = [0]
rapl_root = "{tmp_path / 'rapl'}"
[runtimes.torch-cuda]
engines = ["torch"]
[models.tiny]
fixture = "llama"
params_b = 0.001
[settings.fp32]
precision = "fp32"
{f"power_limit_w = {cap}" if plain else f"sweep = {{ power_limit_w = {cap} }}"}
""")
    return path


class _Launcher:
    """Stands in for the container: notes the GPU's limit while it runs, then fails the trial or is interrupted."""
    name = "process"

    def __init__(self, gpu: FakeGpu, interrupt: bool = False):
        self.gpu, self.interrupt, self.limits_seen = gpu, interrupt, []

    def gpu_problem(self):
        return None

    def image_of(self, runtime):
        return None

    def run(self, spec, meters):
        self.limits_seen.append(self.gpu.limit_w)
        if self.interrupt:
            raise KeyboardInterrupt  # Ctrl-C while the container runs
        return Outcome(record=None, exit_code=1)  # the runner died: a failed trial


class _UI:
    def __init__(self):
        self.lines: list[str] = []

    def note(self, line: str) -> None:
        self.lines.append(line)


def _executor(tmp_path: Path, launcher, cap: str = "[200]", plain: bool = False) -> tuple[Executor, list]:
    plan = expand(load(_matrix(tmp_path, cap, plain)))
    store = RunStore(tmp_path / "results", "capped")
    store.open(plan.matrix, [t.id for t in plan.trials])
    return Executor(plan, store, launcher, ModelCache(tmp_path / "cache"), _UI()), plan.trials


@pytest.fixture
def gpu(fake_nvml) -> FakeGpu:
    board, = fake_nvml(FakeGpu("GPU-cap", period_s=0.001, power_limit_w=700.0, limit_w=450.0))
    return board


def test_a_failed_trial_ran_capped_and_its_gpu_is_restored_with_the_cap_in_its_record(tmp_path, gpu):
    launcher = _Launcher(gpu)
    ex, (trial,) = _executor(tmp_path, launcher)
    try:
        assert ex.select([trial]).todo == [trial]
        record = ex.run_trial(trial)
    finally:
        ex.close()
    assert launcher.limits_seen == [200.0]  # the container ran under the cap
    assert gpu.limit_w == 450.0 and not ex.cap_note.exists()  # restored although the trial failed
    assert record["status"] == "failed"
    # the cap was set before the idle baseline was taken (the baseline is measured under it)
    set_at = [t for t, w in gpu.limits_set if w == 200.0]
    assert set_at and set_at[0] < record["host"]["idle"]["start_unix"]
    validate_record(record)
    cap = Record(json.loads(ex.store.trial_path(trial.id).read_text())).power_cap
    assert cap["requested_w"] == 200
    assert cap["gpus"] == [{"component": "gpu:0", "uuid": "GPU-cap", "requested_w": 200, "enforced_w": 200.0,
                            "enforced_at_end_w": 200.0, "original_w": 450.0, "restored_w": 450.0}]


def test_the_records_cap_block_must_hold_requested_and_enforced(tmp_path, gpu):
    import jsonschema

    ex, (trial,) = _executor(tmp_path, _Launcher(gpu))
    try:
        record = ex.run_trial(trial)
    finally:
        ex.close()
    for key in ("requested_w", "enforced_w"):
        broken = json.loads(json.dumps(record))
        del broken["host"]["power_cap"]["gpus"][0][key]
        with pytest.raises(jsonschema.ValidationError):
            validate_record(broken)


def test_ctrl_c_during_a_capped_trial_restores_the_limit(tmp_path, gpu):
    launcher = _Launcher(gpu, interrupt=True)
    ex, (trial,) = _executor(tmp_path, launcher)
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.run_trial(trial)
    finally:
        ex.close()
    assert launcher.limits_seen == [200.0]
    assert gpu.limit_w == 450.0 and not ex.cap_note.exists()
    assert ex.store.record(trial.id) is None  # nothing is recorded for a trial stopped in flight


def test_a_killed_orchestrators_cap_is_restored_by_the_next_start(tmp_path, gpu, capsys):
    ex, trials = _executor(tmp_path, _Launcher(gpu))
    note = note_path(ex.store.root, None)
    PowerCap(note, [0], 200, trials[0].id).__enter__()  # capped, then killed: no __exit__ ever runs
    assert gpu.limit_w == 200.0 and json.loads(note.read_text())["gpus"][0]["original_w"] == 450.0
    # the next start of the run (no trial selected: the start-up alone)
    code = run_session(ex.plan.matrix, ex.plan, [], RunOptions(results=tmp_path / "results", cache=tmp_path / "cache",
                                                               run_id="capped", launcher="process"),
                       Console(file=sys.stdout, width=200))
    assert code == 0
    assert gpu.limit_w == 450.0 and not note.exists()
    assert "gpu0: power limit restored to 450 W (it was 200 W)" in capsys.readouterr().out


def test_a_host_that_may_not_set_the_limit_skips_the_capped_cells_never_runs_them_uncapped(tmp_path, fake_nvml):
    board, = fake_nvml(FakeGpu("GPU-user", period_s=0.001, may_set=False))
    launcher = _Launcher(board)
    ex, trials = _executor(tmp_path, launcher, cap="[200, 300]")
    sel = ex.select(trials)
    assert sel.todo == [] and len(sel.skipped) == 2
    assert all("needs root" in why and "Insufficient Permissions" in why for why in sel.skipped.values())
    assert launcher.limits_seen == [] and board.limits_set == []


def test_without_nvml_the_capped_cells_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` fails: nvidia-ml-py is not installed
    ex, trials = _executor(tmp_path, _Launcher(FakeGpu("GPU-none")))
    sel = ex.select(trials)
    assert sel.todo == [] and all("not installed" in why for why in sel.skipped.values())


def test_a_cap_refused_when_the_trial_starts_fails_it_without_launching(tmp_path, gpu):
    launcher = _Launcher(gpu)
    ex, (trial,) = _executor(tmp_path, launcher)
    assert ex.select([trial]).todo == [trial]
    gpu.may_set = False  # the permission went away after the start
    try:
        record = ex.run_trial(trial)
    finally:
        ex.close()
    assert launcher.limits_seen == []  # never run uncapped
    assert record["error"]["type"] == "PowerCapFailed" and "Insufficient Permissions" in record["error"]["message"]
    assert gpu.limit_w == 450.0 and not ex.cap_note.exists()


@pytest.mark.parametrize("cap", ["[50]", "[200, 800]"])
def test_a_limit_outside_the_boards_range_is_refused_naming_the_field_and_the_range(tmp_path, gpu, cap):
    ex, trials = _executor(tmp_path, _Launcher(gpu), cap=cap)
    with pytest.raises(MatrixError) as e:
        ex.select(trials)
    assert e.value.key == "settings.fp32.sweep.power_limit_w" and "100–700 W" in str(e.value), str(e.value)
    assert gpu.limits_set == []


def test_a_plain_setting_field_caps_its_trials_and_is_range_checked(tmp_path, fake_nvml):
    board, = fake_nvml(FakeGpu("GPU-p", period_s=0.001, limit_w=450.0))
    launcher = _Launcher(board)
    ex, (trial,) = _executor(tmp_path, launcher, cap="200", plain=True)
    assert trial.cell.setting.name == "fp32"  # not a sweep point: the setting keeps its name
    record = ex.run_trial(trial)
    ex.close()
    assert launcher.limits_seen == [200.0] and board.limit_w == 450.0
    assert record["host"]["power_cap"]["requested_w"] == 200
    (tmp_path / "over").mkdir()
    ex, trials = _executor(tmp_path / "over", _Launcher(board), cap="800", plain=True)
    with pytest.raises(MatrixError) as err:
        ex.select(trials)
    assert err.value.key == "settings.fp32.power_limit_w", err.value


def test_a_plain_cap_leaves_cpu_runtimes_out_and_is_refused_beside_a_sweep(tmp_path):
    path = _matrix(tmp_path, "200", plain=True)
    path.write_text(path.read_text() + "[runtimes.torch-cpu]\n")
    plan = expand(load(path))
    assert {c.runtime.name for c in plan.cells} == {"torch-cuda"}
    assert any("caps a GPU" in x for x in plan.excluded), plan.excluded
    beside = "power_limit_w = 200\nsweep = { batch_size = [1, 2] }"
    path.write_text(path.read_text().replace("power_limit_w = 200", beside))
    with pytest.raises(MatrixError) as err:
        load(path)
    assert err.value.key == "settings.fp32.power_limit_w"
