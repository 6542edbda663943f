"""HumanEval quality figures (analysis/quality.py): pass@k, Wilson intervals, energy per solved task, and the paired
comparison with the reference (McNemar exact, Holm) — on hand-made evaluations whose answers are known."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.quality import (NO_NET, NONE_SOLVED, add_quality, paired_vs_reference, pass_at_k, quality_table,
                              wilson)
from runners.agreement import DEFAULT_REFERENCE

TASKS = [f"HumanEval/{i}" for i in range(20)]


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the share correct
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 − C(3,2)/C(5,2)
    assert pass_at_k(4, 3, 2) == 1.0  # fewer wrong samples than k: every draw has a right one


def test_wilson_interval_matches_its_formula():
    lo, hi = wilson(8, 20)
    # Wilson 95 %: (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)
    z, n, p = 1.959963984540054, 20, 0.4
    centre, half = p + z * z / (2 * n), z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5)
    assert lo == pytest.approx((centre - half) / (1 + z * z / n)) and hi == pytest.approx((centre + half) / (1 + z * z / n))
    assert wilson(0, 20)[0] == 0.0 and wilson(0, 20)[1] > 0  # none passed still has an upper bound


def _trials(rows):
    base = {"device": "cpu", "eval_mode": "same-work", "tasks_total": len(TASKS), "energy_boundary": "cpu (measured)"}
    return pd.DataFrame([{**base, **r} for r in rows])


def _tasks(trial_id, passed):
    return [{"trial_id": trial_id, "task_id": t, "outcome": "passed" if i in passed else "failed"}
            for i, t in enumerate(TASKS)]


def test_energy_per_solved_task_and_none_solved():
    ok = _trials([
        {"trial_id": "ref", "model": "m", "config": "TORCH-CPU", "engine": "torch", "precision": "fp32",
         "net_energy_j": 100.0, "j_per_token_net": 0.5},
        {"trial_id": "q4", "model": "m", "config": "LLAMACPP-CPU-q4_k_m", "engine": "llamacpp", "precision": "q4_k_m",
         "net_energy_j": 40.0, "j_per_token_net": 0.2},
    ]).drop(columns=["eval_mode", "tasks_total"])
    evaluations = pd.DataFrame([{"trial_id": "ref", "eval_mode": "same-work", "tasks_passed": 8, "tasks_total": 20},
                                {"trial_id": "q4", "eval_mode": "same-work", "tasks_passed": 0, "tasks_total": 20}])
    q = add_quality(ok, evaluations)
    by = q.set_index("trial_id")
    assert by.loc["ref", "pass_at_1"] == 0.4 and by.loc["ref", "j_per_solved"] == 100.0 / 8
    assert pd.isna(by.loc["q4", "j_per_solved"])  # never infinity, never a division error
    table = quality_table(q).set_index("config")
    assert table.loc["TORCH-CPU", "j_per_solved"] == 12.5 and pd.isna(table.loc["TORCH-CPU", "j_per_solved_note"])
    assert table.loc["LLAMACPP-CPU-q4_k_m", "j_per_solved_note"] == NONE_SOLVED
    assert table.loc["TORCH-CPU", "ci_low"] < 0.4 < table.loc["TORCH-CPU", "ci_high"]


def test_tasks_gained_and_lost_with_mcnemar_exact_and_holm():
    rows = [{"trial_id": f"{c}-{r}", "model": "m", "config": c, "engine": e, "precision": p}
            for c, e, p in (("TORCH-CPU", "torch", "fp32"), ("ONNX-CPU-int8", "onnx", "int8"),
                            ("OV-CPU", "openvino", "fp32")) for r in range(2)]
    q = _trials(rows)
    ref_pass = set(range(10))
    tasks = []
    for r in range(2):
        tasks += _tasks(f"TORCH-CPU-{r}", ref_pass)
        tasks += _tasks(f"ONNX-CPU-int8-{r}", set(range(5)) | {10})  # loses 5..9, gains 10
        tasks += _tasks(f"OV-CPU-{r}", ref_pass)  # the same answers
    pairs = paired_vs_reference(q, pd.DataFrame(tasks), DEFAULT_REFERENCE).set_index("config")
    assert set(pairs.index) == {"ONNX-CPU-int8", "OV-CPU"}
    int8 = pairs.loc["ONNX-CPU-int8"]
    assert (int8["gained"], int8["lost"], int8["reference"]) == (1, 5, "TORCH-CPU")
    assert int8["lost_tasks"] == ", ".join(TASKS[5:10])
    # exact McNemar = two-sided binomial on the 6 discordant tasks: 2 × P(X ≤ 1 | n=6, ½) = 2 × 7/64
    assert int8["mcnemar_p"] == pytest.approx(14 / 64)
    assert pairs.loc["OV-CPU", "mcnemar_p"] == 1.0 and pairs.loc["OV-CPU", "gained"] == 0
    # Holm over the two: the smaller p times 2, the larger kept at least as large
    assert int8["p_holm"] == pytest.approx(min(1.0, 2 * 14 / 64))
    assert pairs.loc["OV-CPU", "p_holm"] == 1.0


def test_wilson_counts_tasks_not_repetitions():
    """Two greedy repetitions of 20 tasks (10 and 12 passed) are 20 samples at the mean pass@1 (0.55), not 40:
    repeating greedy decoding repeats the same answers."""
    ok = _trials([{"trial_id": f"t{r}", "model": "m", "config": "TORCH-CPU", "engine": "torch", "precision": "fp32",
                   "net_energy_j": 50.0 + r, "j_per_token_net": 0.1 * (r + 1), "group": "m"} for r in range(2)])
    evaluations = pd.DataFrame([{"trial_id": "t0", "eval_mode": "same-work", "tasks_passed": 10, "tasks_total": 20},
                                {"trial_id": "t1", "eval_mode": "same-work", "tasks_passed": 12, "tasks_total": 20}])
    row = quality_table(add_quality(ok.drop(columns=["eval_mode", "tasks_total"]), evaluations)).iloc[0]
    assert (row["trials"], row["tasks"], row["pass@1"]) == (2, 20, pytest.approx(0.55))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson(11, 20))
    assert (row["ci_low"], row["ci_high"]) != pytest.approx(wilson(22, 40))
    # J/token and J per solved task from the same net energy: medians of 0.1, 0.2 and of 50/10, 51/12
    assert row["j_per_token"] == pytest.approx(0.15)
    assert row["j_per_solved"] == pytest.approx((50 / 10 + 51 / 12) / 2)


def test_no_net_energy_gives_no_energy_per_solved_task():
    ok = _trials([{"trial_id": "t", "model": "m", "config": "TORCH-CPU", "engine": "torch", "precision": "fp32",
                   "net_energy_j": None, "j_per_token_net": None, "group": "m"}])
    evaluations = pd.DataFrame([{"trial_id": "t", "eval_mode": "same-work", "tasks_passed": 5, "tasks_total": 20}])
    row = quality_table(add_quality(ok.drop(columns=["eval_mode", "tasks_total"]), evaluations)).iloc[0]
    assert pd.isna(row["j_per_token"]) and pd.isna(row["j_per_solved"]) and row["j_per_solved_note"] == NO_NET


def test_holm_not_bonferroni_over_three_configurations():
    """Three configurations against the reference, with discordant counts chosen so that Holm and Bonferroni
    differ: Holm multiplies the k-th smallest of m p-values by (m − k + 1) and keeps them monotone, Bonferroni
    multiplies every one by m."""
    ref_pass = set(range(12))
    answers = {"A-CPU": set(range(4)),  # loses 8, gains 0: p = 2 × ½⁸
               "B-CPU": set(range(7)),  # loses 5, gains 0: p = 2 × ½⁵
               "C-CPU": set(range(6)) | {12}}  # loses 6, gains 1: p = 2 × P(X ≤ 1 | 7, ½) = 2 × 8/128
    rows = [{"trial_id": "ref", "model": "m", "config": "TORCH-CPU", "engine": "torch", "precision": "fp32"}]
    rows += [{"trial_id": c, "model": "m", "config": c, "engine": c[0].lower(), "precision": "fp32"} for c in answers]
    tasks = _tasks("ref", ref_pass) + [t for c, passed in answers.items() for t in _tasks(c, passed)]
    pairs = paired_vs_reference(_trials(rows), pd.DataFrame(tasks), DEFAULT_REFERENCE).set_index("config")
    assert pairs["mcnemar_p"].to_dict() == pytest.approx({"A-CPU": 2 / 256, "B-CPU": 2 / 32, "C-CPU": 16 / 128})
    assert pairs["p_holm"].to_dict() == pytest.approx({"A-CPU": 3 * 2 / 256, "B-CPU": 2 * 2 / 32,
                                                       "C-CPU": max(2 * 2 / 32, 16 / 128)})


def test_a_trial_without_a_net_figure_leaves_the_others_to_speak():
    """One of three repetitions lost its figure (the meters marked it invalid, so it sits in the 'no energy figure'
    group): J/token and J per solved task come from the other two, and the configuration keeps its energy group."""
    ok = _trials([{"trial_id": f"t{r}", "model": "m", "config": "TORCH-CPU", "engine": "torch", "precision": "fp32",
                   "net_energy_j": [40.0, None, 60.0][r], "j_per_token_net": [0.4, None, 0.6][r],
                   "group": ["m ⟨cpu (measured)⟩", "m ⟨no energy figure⟩", "m ⟨cpu (measured)⟩"][r]}
                  for r in range(3)])
    evaluations = pd.DataFrame([{"trial_id": f"t{r}", "eval_mode": "same-work", "tasks_passed": 10,
                                 "tasks_total": 20} for r in range(3)])
    row = quality_table(add_quality(ok.drop(columns=["eval_mode", "tasks_total"]), evaluations)).iloc[0]
    assert row["j_per_token"] == pytest.approx(0.5) and row["j_per_solved"] == pytest.approx(5.0)
    assert row["j_per_solved_note"] is None and row["group"] == "m ⟨cpu (measured)⟩"
