"""The evaluated smoke slice end to end (matrix-smoke-eval.toml): the real SmolLM2-135M-Instruct on HumanEval's full
prompts through torch fp32 and llama.cpp fp32 and q4_k_m in their containers, same work and as served, then
`orchestrate.py evaluate` — every completion's tests in the locked-down sandbox, one evaluation file per trial,
resumable — and the report's pass@1 section."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, orchestrate

from evaluation import humaneval as he

MATRIX = REPO / "matrix-smoke-eval.toml"
# heavy (11 min on 2 cores): `make test-all` or `make smoke`; CI covers the sandbox, the executor and pass@1 apart
pytestmark = [pytest.mark.usefixtures("docker_client"), pytest.mark.heavy]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, model_cache):
    results = tmp_path_factory.mktemp("eval-results")
    common = ["--results", str(results), "--cache", str(model_cache)]
    run = orchestrate("run", "--matrix", str(MATRIX), "--run-id", "smoke-eval", "--build", "--strict", *common,
                      timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    first = orchestrate("evaluate", "--run-id", "smoke-eval", "--build", *common, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = orchestrate("evaluate", "--run-id", "smoke-eval", *common, timeout=600)
    return results / "smoke-eval", first, again


def test_every_trial_is_evaluated_once_from_its_own_record(evaluated):
    run_dir, first, again = evaluated
    records = {p.stem: json.loads(p.read_text()) for p in (run_dir / "trials").glob("*.json")}
    evaluations = {p.stem: json.loads(p.read_text()) for p in (run_dir / "evaluations").glob("*.json")}
    assert set(evaluations) == set(records) and len(records) == 10
    assert "10 evaluated" in first.stdout and "0 evaluated, 10 were already" in again.stdout  # resumable, no repeats
    for tid, ev in evaluations.items():
        rec = records[tid]
        served = rec["trial"]["setting"].startswith("served")
        assert ev["mode"] == ("as-served" if served else "same-work")
        assert ev["total"] == 6 and ev["sandbox"]["network"] == "none"
        if served:  # every engine stopped where the runner's rule says, and not a decode step later
            assert rec["stopping"]["inconsistent"] == 0, [p["ended_by"] for p in rec["per_prompt"]]
            assert rec["tokens"]["output"] < 6 * 96
        assert [t["task_id"] for t in ev["tasks"]] == [p["task_id"] for p in rec["per_prompt"]]
        assert ev["passed"] == sum(t["outcome"] == "passed" for t in ev["tasks"])
        assert {t["outcome"] for t in ev["tasks"]} <= {"passed", "failed", "error", "timeout"}
        for t, p in zip(ev["tasks"], rec["per_prompt"]):  # the completion evaluated is the record's, cut the same way
            text, stop = he.split(p["output_text"])
            assert t["completion_chars"] == len(text) and t["stop"] == stop
    # greedy decoding: repetitions of a configuration give the same answers, hence the same outcomes
    by_cell: dict[str, set] = {}
    for tid, ev in evaluations.items():
        by_cell.setdefault(records[tid]["trial"]["cell_id"], set()).add(
            tuple(t["outcome"] for t in ev["tasks"]))
    assert all(len(outcomes) == 1 for outcomes in by_cell.values()), by_cell


def test_report_has_pass_at_1_energy_per_solved_task_and_the_paired_comparison(evaluated, tmp_path):
    from analysis.report import analyse, write_report

    run_dir, _, _ = evaluated
    a = analyse([run_dir])
    table = a.quality_table.set_index("config")
    assert set(table.index) == {"TORCH-CPU[fp32]", "LLAMACPP-CPU[fp32]", "LLAMACPP-CPU-q4_k_m",
                                "TORCH-CPU[served-fp32]", "LLAMACPP-CPU[served-fp32]"}
    for cfg, r in table.iterrows():
        assert r["tasks"] == 6 and r["trials"] == 2 and r["ci_low"] <= r["pass@1"] <= r["ci_high"]
        assert (r["j_per_solved_note"] == "none solved") if r["pass@1"] == 0 else r["j_per_solved"] > 0
    pairs = a.quality_pairs.set_index("config")
    assert set(pairs.index) == {"LLAMACPP-CPU[fp32]", "LLAMACPP-CPU-q4_k_m", "LLAMACPP-CPU[served-fp32]"}
    # each mode against its own reference: torch fp32 that did the same (same-work or as-served) work
    assert pairs.loc["LLAMACPP-CPU[served-fp32]", "reference"] == "TORCH-CPU[served-fp32]"
    assert pairs.loc["LLAMACPP-CPU-q4_k_m", "reference"] == "TORCH-CPU[fp32]"
    assert pairs["p_holm"].between(0, 1).all()
    # same work and as served are different work: their energies are compared within each, never across
    groups = a.ok.groupby("group")["config"].agg(set)
    assert len(groups) == 2 and {frozenset(g) for g in groups} == {
        frozenset({"TORCH-CPU[fp32]", "LLAMACPP-CPU[fp32]", "LLAMACPP-CPU-q4_k_m"}),
        frozenset({"TORCH-CPU[served-fp32]", "LLAMACPP-CPU[served-fp32]"})}
    paths = write_report(a, tmp_path / "report")
    page = paths["html"].read_text()
    assert "HumanEval pass@1 and energy per solved task" in page and "Tasks gained and lost" in page
    assert (tmp_path / "report" / "plots" / "quality.png").stat().st_size > 10_000
