"""The budget `plan` prints (orchestrator/budget.py): a trial's fixed part (idle, cooldown, start, imports, load,
warm-up) as this host recorded it, its generate part scaled by the work asked; cells without a record on this host
are unknown, never guessed; a record of another image build does not count."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import matrix_file

from orchestrator.budget import estimate, host_samples
from orchestrator.matrix import load
from orchestrator.plan import expand


def _record(run_id, *, engine="torch", precision="fp32", wall=30.0, generate=10.0, prompts=2, tokens=8,
            image="slm-matrix/torch-cpu:latest", image_id="sha256:a", container_j=300.0, generate_j=100.0,
            host=None, generation=None, model="tiny", parameters=None, options=None):
    return {"schema": "slm-matrix.record/2", "mode": "run", "status": "ok",
            "job": {"generation": generation or {"new_tokens": 4, "fixed_length": True}, "engine_options": options},
            "trial": {"run_id": run_id}, "model": {"name": model, "parameters": parameters},
            "engine": {"name": engine, "precision": precision, "device": "cpu"},
            "environment": {"hostname": host or socket.gethostname()},
            "tokens": {"prompts": prompts, "output": tokens},
            "per_prompt": [{"batch": i, "generated_tokens": tokens // prompts} for i in range(prompts)],
            "phases": {"generate": {"duration_s": generate, "energy_total": {"measured_j": None,
                                                                              "estimated_j": generate_j}}},
            "host": {"image": image, "image_id": image_id, "begin_unix": 1000.0, "recorded_unix": 1000.0 + wall,
                     "idle": {"start_unix": 1000.0},
                     "container": {"duration_s": wall, "energy_total": {"measured_j": None, "estimated_j": container_j}}}}


def _write(results, run_id, records):
    d = results / run_id / "trials"
    d.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(records):
        (d / f"t{i}.json").write_text(json.dumps(r))


def test_fixed_part_as_recorded_generate_part_scaled_by_the_work(tmp_path):
    results = tmp_path / "results"
    # a calibration: 4 prompts × 4 tokens, 10 s generating, 30 s in all, 300 J of which 100 J generating
    _write(results, "calibration-x", [_record("calibration-x", prompts=4, tokens=16),
                                      _record("calibration-x", prompts=4, tokens=16, wall=34.0, container_j=340.0)])
    _write(results, "elsewhere", [_record("elsewhere", host="another-host", wall=1.0)])  # not this host: ignored
    m = load(matrix_file(tmp_path, '[models.tiny]\nfixture = "llama"\n', reps=3))  # 2 prompts × 4 tokens, 3 reps
    plan = expand(m)
    (e,) = estimate(plan, plan.trials, host_samples(results))
    fixed, per_token = 22.0, 10.0 / 16  # medians: (30−10, 34−10) → 22; 10 s / 16 tokens; the matrix asks 2 × 4
    assert e.trials == 3 and e.known
    assert e.wall_s == pytest.approx(3 * (fixed + per_token * 8)) and e.outside_s == pytest.approx(3 * fixed)
    assert e.energy_j == pytest.approx(3 * (220.0 + 100.0 / 16 * 8)) and e.source == "estimated"
    assert e.basis == "calibration-x"


def test_another_models_records_are_scaled_by_parameters_and_said_to_be(tmp_path):
    """A hub model that cannot be fetched here is priced from a 0.1 B model of the same image, engine, precision and
    work: generate time and energy per token × 4 for 0.4 B parameters, the fixed part as recorded — and flagged."""
    results = tmp_path / "results"
    _write(results, "r", [_record("r", model="small", parameters=1e8, prompts=2, tokens=8)])
    m = load(matrix_file(tmp_path, '[models.big]\nfixture = "llama"\nparams_b = 0.4\n'))
    plan = expand(m)
    (e,) = estimate(plan, plan.trials, host_samples(results))
    assert e.known and e.extrapolated and "scaled ×4 from small (parameters)" in e.basis
    assert e.wall_s == pytest.approx(20.0 + 4 * 10.0) and e.outside_s == pytest.approx(20.0)
    assert e.energy_j == pytest.approx(200.0 + 4 * 100.0)
    _write(results, "r2", [_record("r2", engine="onnx", model="small", parameters=1e8)])
    onnx = load(matrix_file(tmp_path, '[models.big]\nfixture = "llama"\nparams_b = 0.4\n',
                            extra='engines = ["torch-compile"]'))
    p2 = expand(onnx)
    assert not estimate(p2, p2.trials, host_samples(results))[0].known  # another engine's records price nothing


def test_engine_options_are_part_of_the_cell(tmp_path):
    """OpenVINO without its KV cache shares image, engine and precision with the stateful row, not its cost."""
    results = tmp_path / "results"
    _write(results, "r", [_record("r", options={"compile_mode": "max-autotune"}, wall=300.0, generate=280.0)])
    m = load(matrix_file(tmp_path, '[models.tiny]\nfixture = "llama"\n'))
    plan = expand(m)
    assert not estimate(plan, plan.trials, host_samples(results))[0].known  # default options: never recorded
    _write(results, "r2", [_record("r2")])
    (e,) = estimate(plan, plan.trials, host_samples(results))
    assert e.known and e.wall_s == pytest.approx(30.0) and e.basis == "r2"


def test_unknown_cells_are_said_and_other_builds_do_not_count(tmp_path):
    results = tmp_path / "results"
    _write(results, "r", [_record("r", image_id="sha256:old")])
    m = load(matrix_file(tmp_path, '[models.tiny]\nfixture = "llama"\n[settings.bf16]\nprecision = "bf16"\n'
                                   '[settings.fp32]\nprecision = "fp32"\n'))
    plan = expand(m)
    (e,) = estimate(plan, plan.trials, host_samples(results))
    assert not e.known and e.wall_s is None and "torch bf16" in e.basis  # bf16 was never recorded here
    fp32 = [t for t in plan.trials if t.cell.setting.name == "fp32"]
    assert estimate(plan, fp32, host_samples(results))[0].known
    (e,) = estimate(plan, fp32, host_samples(results), {"slm-matrix/torch-cpu:latest": "sha256:new"})
    assert not e.known  # the image was rebuilt since: its old records say nothing about it
    # as-served work is not the same work: a same-work record does not price it
    served = load(matrix_file(tmp_path, '[models.tiny]\nfixture = "llama"\n[settings.s]\nprecision = "fp32"\n'
                                        'generation = { fixed_length = false }\n'))
    p2 = expand(served)
    assert not estimate(p2, p2.trials, host_samples(results))[0].known


def test_the_calibration_is_a_matrix_in_memory_that_loads_back_as_itself(tmp_path):
    """`plan --calibrate` builds its matrix in memory (no file, no second CLI): one repetition of every cell on a few
    prompts, named by the matrix's hash; its snapshot text loads back to the same matrix, and an unchanged matrix
    gives the same calibration (its run resumes) while an edited one gets another."""
    from orchestrator.budget import CALIBRATION_PROMPTS
    from orchestrator.calibrate import calibration_matrix

    path = matrix_file(tmp_path, '[models.tiny]\nfixture = "llama"\n', reps=3)
    matrix = load(path)
    cal = calibration_matrix(matrix)
    assert cal.name == f"calibration-{matrix.name}-{matrix.hash[:8]}" and cal.repetitions == 1
    assert cal.job["workload"]["count"] == min(2, CALIBRATION_PROMPTS)
    assert matrix.repetitions == 3 and cal.models == matrix.models  # the matrix itself is left as it was
    assert not list(tmp_path.rglob(".calibration"))
    snapshot = tmp_path / "snapshot" / "matrix.toml"
    snapshot.parent.mkdir()
    snapshot.write_text(cal.text)
    again = load(snapshot)
    assert (again.hash, again.name, again.repetitions, again.job) == (cal.hash, cal.name, 1, cal.job)
    assert [t.id for t in expand(cal).trials] == [t.id for t in expand(again).trials]
    assert calibration_matrix(load(path)).hash == cal.hash
    path.write_text(path.read_text().replace("count = 2", "count = 9"))
    edited = calibration_matrix(load(path))
    assert edited.name != cal.name and edited.job["workload"]["count"] == CALIBRATION_PROMPTS


def test_calibrate_then_plan_then_the_real_run(tmp_path, docker_client):
    """`plan --calibrate` runs each cell once on a few prompts through the same containers and stores it; the next
    `plan` prices the matrix from it; the real run that follows lands near the estimate (printed as a ratio)."""
    from conftest import orchestrate

    results, cache = tmp_path / "results", tmp_path / "cache"
    path = matrix_file(tmp_path, '[models.tiny]\nfixture = "llama"\n', reps=3)
    common = ["--matrix", str(path), "--results", str(results), "--cache", str(cache)]
    cal = orchestrate("plan", "--calibrate", "--quiet", *common, timeout=900)
    assert cal.returncode == 0, cal.stdout + cal.stderr
    assert list(results.glob("calibration-*/trials/*.json"))  # stored as a run of its own
    plan = orchestrate("plan", "--quiet", *common)
    assert "unknown" not in plan.stdout and "CPU: 3 trials" in plan.stdout, plan.stdout
    m = load(path)
    p = expand(m)
    (e,) = estimate(p, p.trials, [s for s in host_samples(results) if s.run_id.startswith("calibration-")])
    run = orchestrate("run", *common, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "expected" in run.stdout  # the budget before the first trial
    actual = [s for s in host_samples(results) if not s.run_id.startswith("calibration-")]
    assert len(actual) == 3
    ratio = sum(s.wall_s for s in actual) / e.wall_s
    print(f"smoke budget: expected {e.wall_s:.1f} s, actual {sum(s.wall_s for s in actual):.1f} s, ratio {ratio:.2f}")
    assert 0.5 < ratio < 2.0
