"""Several GPUs per trial (issue 24 item 5): ``gpus = N`` gives a CUDA trial the first N of ``[host] gpus`` — its
Docker device ids, its CUDA_VISIBLE_DEVICES, its job's meters.gpus and so its energy boundary hold exactly those N —
and its engine spreads the model over them (vLLM's tensor_parallel_size, torch's device_map). A host with fewer skips
the cells; a CPU runtime or an engine that runs a model on one GPU leaves them out with the reason, never silently.

No GPU exists here: the trials run through the real executor and host meters against NVML's interface with replayed
boards (tests/_fake_nvml.py, as tests/test_power_cap.py does); only the launcher is a stand-in that holds the host's
"container" window open while the runner would run. What vLLM and torch are given is checked without importing them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _fake_nvml import FakeGpu

from orchestrator.docker_launcher import device_ids
from orchestrator.execute import Executor
from orchestrator.launch import Outcome
from orchestrator.matrix import MatrixError, load
from orchestrator.models import ModelCache
from orchestrator.plan import expand
from orchestrator.process_launcher import runner_env
from orchestrator.store import RunStore
from runners.engines.base import Shape
from runners.engines.torch_engine import TorchEngine
from runners.engines.vllm_engine import VllmEngine
from runners.job import JobError, parse_job
from runners.record import validate_record
from runners.runner import engine_context


def _matrix(tmp_path: Path, host_gpus: str = "[1, 2, 0]", setting: str = "sweep = { gpus = [1, 2] }",
            runtimes: tuple[str, ...] = ("torch-cuda",)) -> Path:
    (tmp_path / "rapl").mkdir(exist_ok=True)  # no RAPL zones: the GPUs are the only counters
    entries = "".join(f'[runtimes.{r}]\nengines = ["{"torch" if r.startswith("torch") else r.split("-")[0]}"]\n'
                      for r in runtimes)
    path = tmp_path / "matrix.toml"
    path.write_text(f"""
[matrix]
name = "gpus"
seed = 3
repetitions = 1
[workload]
count = 2
[generation]
new_tokens = 4
[meters]
codecarbon = false
[host]
idle_seconds = 0.1
gpus = {host_gpus}
rapl_root = "{tmp_path / 'rapl'}"
{entries}[models.tiny]
fixture = "llama"
params_b = 0.001
[settings.fp32]
precision = "fp32"
{setting}
""")
    return path


class _Launcher:
    """Stands in for the container: keeps the launch spec and holds the host's container window open a moment."""
    name = "process"

    def __init__(self):
        self.specs = []

    def gpu_problem(self):
        return None

    def image_of(self, runtime):
        return None

    def run(self, spec, meters):
        self.specs.append(spec)
        with meters.window("container", trace=True) as w:
            time.sleep(0.05)
        return Outcome(record=None, exit_code=1, window=w.result, trace=w.trace)  # the runner died: a failed trial


class _UI:
    def note(self, line: str) -> None:
        pass


def _executor(tmp_path: Path, launcher, **matrix) -> tuple[Executor, dict]:
    plan = expand(load(_matrix(tmp_path, **matrix)))
    store = RunStore(tmp_path / "results", "gpus")
    store.open(plan.matrix, [t.id for t in plan.trials])
    return Executor(plan, store, launcher, ModelCache(tmp_path / "cache"), _UI()), {t.cell.setting.name: t
                                                                                    for t in plan.trials}


def _gpu_components(figures: list[dict]) -> list[str]:
    return sorted(f["component"] for f in figures if f["component"].startswith("gpu:"))


def test_a_two_gpu_trial_runs_on_and_is_metered_on_exactly_the_first_two_host_gpus(tmp_path, fake_nvml):
    # three boards at different powers; [host] gpus = [1, 2, 0]: a gpus = 2 trial takes host GPUs 1 and 2
    fake_nvml(FakeGpu("GPU-a", watts=100.0, period_s=0.001), FakeGpu("GPU-b", watts=200.0, period_s=0.001),
              FakeGpu("GPU-c", watts=400.0, period_s=0.001))
    launcher = _Launcher()
    ex, trials = _executor(tmp_path, launcher)
    try:
        assert ex.select(list(trials.values())).todo == list(trials.values())
        two, one = ex.run_trial(trials["fp32__g2"]), ex.run_trial(trials["fp32__g1"])
    finally:
        ex.close()
    spec2, spec1 = launcher.specs
    # the job: two GPUs, its meters told exactly those two (the runner's boundary), and the parser agrees
    assert spec2.job["gpus"] == 2 and spec2.job["meters"]["gpus"] == {"GPU-b": 1, "GPU-c": 2}
    assert parse_job(spec2.job).gpus == 2 and parse_job(spec1.job).gpus == 1
    assert spec1.job["meters"]["gpus"] == {"GPU-b": 1}
    # the launchers show the trial its GPUs only, in the order of [host] gpus
    assert device_ids(spec2) == ["GPU-b", "GPU-c"] and device_ids(spec1) == ["GPU-b"]
    assert runner_env(spec2)["CUDA_VISIBLE_DEVICES"] == "GPU-b,GPU-c"
    assert runner_env(spec1)["CUDA_VISIBLE_DEVICES"] == "GPU-b"
    # the host's figures within the boundary: the container window and the idle baseline hold exactly them
    assert _gpu_components(two["host"]["container"]["energy"]) == ["gpu:1", "gpu:2"]
    assert _gpu_components(two["host"]["idle"]["power"]) == ["gpu:1", "gpu:2"]
    assert _gpu_components(one["host"]["container"]["energy"]) == ["gpu:1"]
    assert _gpu_components(one["host"]["idle"]["power"]) == ["gpu:1"]
    assert two["job"]["gpus"] == 2 and "gpus" not in one["job"]  # a one-GPU job reads as before the field existed
    validate_record(two)


def test_a_capped_two_gpu_trial_caps_exactly_its_two_gpus(tmp_path, fake_nvml):
    boards = fake_nvml(*(FakeGpu(f"GPU-{n}", period_s=0.001, limit_w=450.0) for n in "abc"))
    ex, trials = _executor(tmp_path, _Launcher(), setting="sweep = { power_limit_w = [200], gpus = [2] }")
    try:
        record = ex.run_trial(trials["fp32__pl200__g2"])
    finally:
        ex.close()
    assert [g["component"] for g in record["host"]["power_cap"]["gpus"]] == ["gpu:1", "gpu:2"]
    assert [[w for _, w in b.limits_set] for b in boards] == [[], [200.0, 450.0], [200.0, 450.0]]


def test_a_host_with_fewer_gpus_skips_the_two_gpu_cells_and_never_runs_them_on_fewer(tmp_path, fake_nvml):
    fake_nvml(FakeGpu("GPU-only", period_s=0.001))  # one board; the matrix lists two
    launcher = _Launcher()
    ex, trials = _executor(tmp_path, launcher, host_gpus="[0, 1]")
    try:
        sel = ex.select(list(trials.values()))
    finally:
        ex.close()
    assert sel.todo == [trials["fp32__g1"]]
    why = sel.skipped[trials["fp32__g2"].id]
    assert "GPUs [0, 1]" in why and "no GPU [1]" in why, why
    assert launcher.specs == []


def test_a_setting_asking_more_gpus_than_host_gpus_lists_is_refused_naming_the_field(tmp_path):
    with pytest.raises(MatrixError) as e:
        load(_matrix(tmp_path, host_gpus="[0]", setting="gpus = 2"))
    assert e.value.key == "settings.fp32.gpus" and "[host] gpus = [0, 1]" in str(e.value)


def test_cpu_runtimes_and_one_gpu_engines_leave_the_cells_out_with_the_reason(tmp_path):
    plan = expand(load(_matrix(tmp_path, setting="gpus = 2", runtimes=("torch-cuda", "onnx-cuda", "torch-cpu",
                                                                           "vllm-cuda"))))
    assert sorted(c.runtime.name for c in plan.cells) == ["torch-cuda", "vllm-cuda"]
    excluded = "\n".join(plan.excluded)
    assert "onnx-cuda/onnx × fp32: 2 GPUs per trial not offered: one ONNX Runtime session" in excluded, excluded
    assert "torch-cpu/torch × fp32: gpus gives a trial several GPUs; a CPU engine runs on no GPU" in excluded


@pytest.mark.parametrize("job, field, words", [
    ({"engine": "onnx", "device": "cuda", "gpus": 2}, "gpus", "runs a model on one GPU"),
    ({"engine": "llamacpp", "device": "cuda", "gpus": 2}, "gpus", "split_mode is not wired in"),
    ({"engine": "torch", "device": "cpu", "gpus": 2}, "gpus", "a CPU trial runs on no GPU"),
    ({"engine": "torch", "device": "cuda", "gpus": 2, "meters": {"gpus": {"GPU-b": 1}}}, "meters.gpus",
     "holds 1 GPU(s) but the trial has gpus = 2"),
    ({"engine": "vllm", "device": "cuda", "gpus": 2, "engine_options": {"tensor_parallel_size": 4}},
     "engine_options.tensor_parallel_size", "is 4 but the trial has gpus = 2"),
])
def test_a_job_its_engine_or_device_cannot_spread_is_refused_naming_the_field(job, field, words):
    with pytest.raises(JobError) as e:
        parse_job({"precision": "fp32", "model": {"path": "/m"}, **job})
    assert e.value.field == field and words in str(e.value), str(e.value)


def _engine(cls, gpus: int):
    job = parse_job({"engine": cls.name, "device": "cuda", "precision": "fp16", "model": {"path": "/m"},
                     **({"gpus": gpus} if gpus > 1 else {})})
    return cls(engine_context(job, Path("/m"), frozenset()), None, cls.check_options({}))


def test_vllm_shards_the_model_over_the_trials_gpus_and_torch_spreads_its_layers():
    shape = Shape(batch_size=1, prompts=2, shortest_prompt=10, longest_prompt=15, max_new_tokens=4)
    for gpus in (1, 2):
        vllm = _engine(VllmEngine, gpus)
        vllm.max_model_len = 64  # what load() sets from the shape
        assert vllm.llm_kwargs(shape)["tensor_parallel_size"] == gpus
        assert _engine(TorchEngine, gpus).placement() == ({"device_map": "auto"} if gpus > 1 else {})


def test_the_analysis_holds_the_gpus_of_a_trial_fixed_like_a_power_cap(tmp_path):
    from analysis.load import load_runs
    from analysis.report_analysis import analyse
    from analysis.synthetic import make_record, write_run

    def on(gpus, batch):
        rec = make_record(engine="torch", device="cuda", source="measured", batch=batch, order_index=10 * gpus + batch)
        rec["trial"]["trial_id"] = f"torch-cuda-bs{batch}-g{gpus}"
        if gpus > 1:  # as the orchestrator writes it (a one-GPU job has no field)
            rec["job"]["gpus"] = gpus
        return rec

    recs = [on(g, b) for g in (1, 2) for b in (1, 4)]
    recs.append(make_record(engine="torch", batch=1, order_index=99))  # a CPU trial: no GPU at all
    run = write_run(recs, tmp_path / "run")
    trials = load_runs(run).trials
    assert sorted(trials["gpus"].dropna()) == [1, 1, 2, 2] and trials["gpus"].isna().sum() == 1
    op = analyse([run], study_csv=None).operating
    assert sorted(op.points["gpus"].dropna().unique()) == [1, 2]
    assert {"engine default", "2 GPUs"} <= set(op.rankings["threads"])  # one GPU and two are never ranked together
