"""Sweep axes (issue 24 item 1): a setting's ``sweep`` table expands into one setting per operating point, each a
normal cell whose job carries the point; an axis an engine cannot honour leaves its cells out with the reason; a bad
sweep is one line naming the key; and a real run records every point's axis values next to what ran."""

from __future__ import annotations

import json

import pytest
from _models import tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)
from conftest import matrix_file, orchestrate

from orchestrator import cli
from orchestrator.matrix import MatrixError, job_body, load
from orchestrator.plan import expand
from runners.job import parse_job

SWEPT = """
[settings.fp32]
precision = "fp32"
sweep = { batch_size = [1, 2], new_tokens = [2, 3], threads = [1, 2] }
"""


def _matrix(tmp_path, settings: str = SWEPT, runtimes: str = "", models: str = "") -> object:
    models = models or '[models.tiny]\nfixture = "llama"\nparams_b = 0.001\n'
    path = matrix_file(tmp_path, models, extra='engines = ["torch"]\n' + runtimes + settings)
    return path


def test_a_sweep_is_the_product_of_its_axes_each_point_a_setting_whose_job_has_it(tmp_path):
    m = load(_matrix(tmp_path))
    names = list(m.settings)
    assert len(names) == 8 and names[0] == "fp32__bs1__nt2__th1" and names[-1] == "fp32__bs2__nt3__th2"
    point = m.settings["fp32__bs2__nt3__th1"]
    assert point.sweep_of == "fp32" and point.axes == {"batch_size": 2, "new_tokens": 3, "threads": 1}
    job = parse_job(job_body(m, m.runtimes["torch-cpu"], "torch", m.models["tiny"], point,
                             {"name": "tiny", "path": "/models/x"}))
    assert (job.generation.batch_size, job.generation.new_tokens, job.engine_options["threads"]) == (2, 3, 1)
    plan = expand(m)
    assert len(plan.cells) == 8 and {c.id for c in plan.cells} >= {"torch-cpu__torch__tiny__fp32__bs2__nt3__th1"}
    # the setting's name selects every point of its sweep
    assert len(plan.select(settings=["fp32"])) == 8
    assert [t.cell.setting.name for t in plan.select(settings=["fp32__bs1__nt2__th2"])] == ["fp32__bs1__nt2__th2"]


def test_prompt_tokens_makes_prompts_of_that_length(tmp_path):
    m = load(_matrix(tmp_path, '[settings.fp32]\nprecision = "fp32"\nsweep = { prompt_tokens = [16, 64] }\n'))
    point = m.settings["fp32__pt64"]
    job = parse_job(job_body(m, m.runtimes["torch-cpu"], "torch", m.models["tiny"], point,
                             {"name": "tiny", "path": "/models/x"}))
    assert (job.workload.style, job.workload.prompt_tokens) == ("length", 64)


def test_an_axis_a_cuda_engine_cannot_honour_leaves_its_cells_out_with_the_reason(tmp_path):
    m = load(_matrix(tmp_path, runtimes='[runtimes.torch-cuda]\nengines = ["torch"]\n'))
    plan = expand(m)
    assert {c.runtime.name for c in plan.cells} == {"torch-cpu"}  # never a CUDA cell with threads ignored
    (line,) = [x for x in plan.excluded if x.startswith("torch-cuda/torch")]
    assert "fp32 (sweep, 8 points)" in line and "threads sets a CPU engine's threads" in line


def test_a_power_cap_is_a_cuda_axis_and_a_cpu_runtime_leaves_its_cells_out_with_the_reason(tmp_path):
    """power_limit_w is the host's (orchestrator/power_cap.py, tests/test_power_cap.py): it names the point, never a
    job field; a CPU runtime never runs the point with the cap ignored."""
    m = load(_matrix(tmp_path, '[settings.fp32]\nprecision = "fp32"\nsweep = { power_limit_w = [175, 250], '
                                'batch_size = [1, 4] }\n', runtimes='[runtimes.torch-cuda]\nengines = ["torch"]\n'))
    assert list(m.settings) == ["fp32__bs1__pl175", "fp32__bs1__pl250", "fp32__bs4__pl175", "fp32__bs4__pl250"]
    point = m.settings["fp32__bs4__pl175"]
    assert point.axes == {"batch_size": 4, "power_limit_w": 175}
    job = job_body(m, m.runtimes["torch-cuda"], "torch", m.models["tiny"], point, {"name": "tiny", "path": "/m"})
    assert "power_limit_w" not in json.dumps(job) and job["generation"]["batch_size"] == 4
    plan = expand(m)
    assert {c.runtime.name for c in plan.cells} == {"torch-cuda"} and len(plan.cells) == 4
    (line,) = [x for x in plan.excluded if x.startswith("torch-cpu/torch")]
    assert "fp32 (sweep, 4 points)" in line and "power_limit_w caps a GPU's power" in line


@pytest.mark.parametrize("sweep, key, words", [
    ("{ batch_sizes = [1, 2] }", "settings.fp32.sweep.batch_sizes", "not a sweep axis"),
    ("{ gpus = [1, 2] }", "settings.fp32.sweep.gpus", "[host] gpus lists 1"),  # more than the host list gives
    ("{ gpus = [0] }", "settings.fp32.sweep.gpus[0]", "integer ≥ 1"),
    ("{ power_limit_w = [150, 0] }", "settings.fp32.sweep.power_limit_w[1]", "integer ≥ 1"),
    ("{ batch_size = 4 }", "settings.fp32.sweep.batch_size", "non-empty list"),
    ("{ batch_size = [] }", "settings.fp32.sweep.batch_size", "non-empty list"),
    ("{ batch_size = [1, 0] }", "settings.fp32.sweep.batch_size[1]", "integer ≥ 1"),
    ("{ batch_size = [1, true] }", "settings.fp32.sweep.batch_size[1]", "integer ≥ 1"),
    ("{ batch_size = [2, 2] }", "settings.fp32.sweep.batch_size", "repeats a value"),
    ("[1, 2]", "settings.fp32.sweep", "must be a table"),
])
def test_a_bad_sweep_is_one_line_naming_the_key(tmp_path, sweep, key, words):
    with pytest.raises(MatrixError) as e:
        load(_matrix(tmp_path, f'[settings.fp32]\nprecision = "fp32"\nsweep = {sweep}\n'))
    assert e.value.key == key and words in str(e.value), str(e.value)


def test_an_axis_also_fixed_in_the_generation_is_refused(tmp_path, capsys):
    path = _matrix(tmp_path, '[settings.fp32]\nprecision = "fp32"\ngeneration = { batch_size = 4 }\n'
                             'sweep = { batch_size = [1, 2] }\n')
    assert cli.main(["plan", "--matrix", str(path), "--launcher", "process", "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "settings.fp32.sweep.batch_size" in line and "also fixed in settings.fp32.generation" in line


def test_a_swept_run_records_each_points_axes_and_runs_its_batch_together(tmp_path, tiny_model_dir):
    """Through the real runner (process launcher): batch 1 and 2 × 3 new tokens on the tiny llama."""
    path = _matrix(tmp_path, '[settings.fp32]\nprecision = "fp32"\nsweep = { batch_size = [1, 2], new_tokens = [3] }\n',
                   models=f'[models.tiny]\npath = "{tiny_model_dir}"\n')
    proc = orchestrate("run", "--matrix", str(path), "--results", str(tmp_path / "results"), "--cache",
                       str(tmp_path / "cache"), "--launcher", "process", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / tmp_path.name / "trials").glob("*.json")]
    assert len(records) == 2
    for rec in records:
        axes = rec["trial"]["axes"]
        assert rec["status"] == "ok" and rec["trial"]["sweep_of"] == "fp32"
        assert rec["trial"]["setting"] == f"fp32__bs{axes['batch_size']}__nt{axes['new_tokens']}"
        assert rec["job"]["generation"]["batch_size"] == axes["batch_size"]
        assert [p["generated_tokens"] for p in rec["per_prompt"]] == [axes["new_tokens"]] * 2
        # two prompts: one batch of two, or two batches of one — run together, not one after the other: a batch takes
        # as many decode steps as it has new tokens (an engine that ran its prompts in turn would take twice as many)
        assert rec["tokens"]["batches"] == 2 // axes["batch_size"]
        assert [p["decode_steps"] for p in rec["per_prompt"]] == [axes["new_tokens"]] * 2
        assert "padded batch" in rec["engine"]["details"]["batching"]


def test_the_plan_of_a_sweep_stays_readable_in_80_columns(tmp_path):
    """The budget table never cuts a runtime or model name ('llamacp…', 'bloomz-…' before): other columns give way."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    path = tmp_path / "matrix.toml"
    path.write_text('[matrix]\nname = "wide"\nseed = 1\nrepetitions = 3\n[workload]\ncount = 2\n'
                    '[settings.fp32]\nprecision = "fp32"\nsweep = { batch_size = [1, 2, 4, 8, 16], new_tokens = [32, 128] }\n'
                    '[runtimes.llamacpp-cpu]\n[runtimes.torch-cpu]\n'
                    '[models.deepseek-coder-instruct-1b3]\nfixture = "bloom"\nparams_b = 0.56\n')
    out = subprocess.run([sys.executable, "orchestrate.py", "plan", "--matrix", str(path), "--launcher", "process",
                          "--results", str(tmp_path / "results")], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80"}, timeout=300)
    assert out.returncode == 0, out.stderr
    table = [line for line in out.stdout.splitlines() if "deepseek" in line and "__" not in line]
    assert len(table) == 2 and all(len(line) <= 80 for line in table), table
    assert any("llamacpp-cpu" in line and "deepseek-coder-instruct-1b3" in line for line in table), table
    assert "fp32: batch_size 1,2,4,8,16 × new_tokens 32,128 (10 points)" in out.stdout
