"""analysis.stats and analysis.study: tests with known answers, equality with scipy/scikit-posthocs, the study's
headline ranges recomputed from its published medians."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from scipy import stats as ss

from analysis.load import load_runs
from analysis.metrics import add_metrics
from analysis.stats import (cliffs_delta, compare_configs, delta_magnitude, median_ci, run_statistics,
                            savings_best_worst, savings_matrix, savings_pair, savings_range)
from analysis.study import DEFAULT_STUDY_CSV, compare_with_study, headline, our_medians, read_medians
from analysis.synthetic import make_record, write_run

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "reference" / "study_2412.15441_medians.csv"


def _frame(groups: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([(g, v) for g, vals in groups.items() for v in vals], columns=["config", "energy_j"])


def _records(energies: dict[str, list[float]], model="m", params_b=0.5):
    """Records whose generate energy is exactly the given values, one config per key (engine-device-precision)."""
    recs = []
    for cfg, values in energies.items():
        engine, device, precision = cfg.split("-")
        for rep, e in enumerate(values):
            recs.append(make_record(model=model, params_b=params_b, engine=engine, device=device,
                                    precision=precision, repetition=rep, energy_j=e, duration_s=e / 10))
    return recs


def test_large_built_in_effect_is_significant_with_large_delta(tmp_path):
    rng = np.random.default_rng(1)
    energies = {"torch-cpu-fp32": list(100 + rng.normal(0, 3, 10)),  # 50 % more energy than onnx
                "onnx-cpu-fp32": list(150 + rng.normal(0, 3, 10))}
    ok = add_metrics(load_runs(write_run(_records(energies), tmp_path / "run")).ok)
    cmp = next(c for c in run_statistics(ok) if c.scope == "model" and c.metric == "energy_j")
    assert cmp.tested and cmp.significant and cmp.kruskal_p < 0.001
    pair = cmp.pairs.iloc[0]
    assert pair["p_holm"] < 0.001 and pair["significant"]
    assert abs(pair["delta"]) == 1.0 and pair["magnitude"] == "large"
    assert cmp.groups.set_index("config").loc["TORCH-CPU", "n"] == 10


def test_no_effect_is_not_significant():
    values = [101.0, 97.5, 103.2, 99.1, 100.4, 98.8, 102.6, 96.9, 100.0, 101.7]
    shuffled = list(np.random.default_rng(0).permutation(values))  # the same values: no effect at all
    cmp = compare_configs(_frame({"A": values, "B": shuffled}), "energy_j")
    assert cmp.tested and not cmp.significant
    assert cmp.kruskal_h == pytest.approx(0.0) and cmp.kruskal_p == pytest.approx(1.0)
    assert cmp.pairs.iloc[0]["delta"] == 0.0 and cmp.pairs.iloc[0]["magnitude"] == "negligible"


def test_dunn_holm_and_delta_equal_scipy_and_scikit_posthocs():
    rng = np.random.default_rng(7)
    groups = {"A": rng.normal(10, 1, 8), "B": rng.normal(11, 1, 9), "C": rng.normal(10.3, 2, 10)}
    df = _frame({k: list(v) for k, v in groups.items()})
    cmp = compare_configs(df, "energy_j")
    h, p = ss.kruskal(*groups.values())
    assert (cmp.kruskal_h, cmp.kruskal_p) == (pytest.approx(h), pytest.approx(p))
    dunn = sp.posthoc_dunn(list(groups.values()), p_adjust="holm")  # groups numbered 1, 2, 3
    names = list(groups)
    for r in cmp.pairs.itertuples():
        i, j = names.index(r.a) + 1, names.index(r.b) + 1
        assert r.p_holm == pytest.approx(dunn.loc[i, j])
        # Cliff's δ = 2U/(n·m) − 1 with scipy's Mann–Whitney U of a against b
        u = ss.mannwhitneyu(groups[r.a], groups[r.b]).statistic
        assert r.delta == pytest.approx(2 * u / (len(groups[r.a]) * len(groups[r.b])) - 1)
    w, pw = ss.shapiro(groups["A"])
    row = cmp.groups.set_index("config").loc["A"]
    assert (row["shapiro_w"], row["shapiro_p"]) == (pytest.approx(w), pytest.approx(pw))


def test_cliffs_delta_and_magnitudes_by_hand():
    assert cliffs_delta([3, 4], [1, 2]) == 1.0
    assert cliffs_delta([1, 2], [3, 4]) == -1.0
    # pairs: (1,1)=0 (1,3)<0 (2,1)>0 (2,3)<0 -> (1 − 2) / 4
    assert cliffs_delta([1, 2], [1, 3]) == -0.25
    # Romano et al.'s thresholds: 0.147, 0.33, 0.474
    assert [delta_magnitude(d) for d in (0.0, 0.146, 0.147, 0.329, 0.33, 0.473, 0.474, -0.9)] == \
        ["negligible", "negligible", "small", "small", "medium", "medium", "large", "large"]


def test_too_few_repetitions_says_so_instead_of_a_p_value():
    cmp = compare_configs(_frame({"A": [1.0, 1.1], "B": [5.0, 5.2]}), "energy_j")
    assert not cmp.tested and cmp.kruskal_p is None and cmp.pairs.empty
    assert "too few repetitions" in cmp.note and "A (n=2)" in cmp.note
    assert "p =" not in cmp.verdict() and "too few repetitions" in cmp.verdict()
    # Shapiro–Wilk needs 3 values: the group says so
    assert cmp.groups["shapiro_note"].str.contains("too few").all()
    # one configuration with enough repetitions left out, the others still tested
    cmp = compare_configs(_frame({"A": [1, 2, 3, 4, 5.0], "B": [6, 7, 8, 9, 10.0], "C": [1.0]}), "energy_j")
    assert cmp.tested and "C (n=1)" in cmp.note and set(cmp.pairs[["a", "b"]].iloc[0]) == {"A", "B"}


def test_mixed_energy_sources_are_not_tested(tmp_path):
    recs = _records({"torch-cpu-fp32": [100.0] * 5})
    recs += [make_record(model="m", engine="torch", device="cuda", source="measured", repetition=r, energy_j=50.0,
                         duration_s=1.0 + r) for r in range(5)]
    ok = add_metrics(load_runs(write_run(recs, tmp_path / "run")).ok)
    by = {(c.scope, c.metric): c for c in run_statistics(ok)}
    assert not by[("model", "energy_j")].tested and "mix" in by[("model", "energy_j")].note
    assert by[("model", "duration_s")].tested  # time is comparable whatever the energy source


def test_identical_values_are_not_tested():
    cmp = compare_configs(_frame({"A": [2.0] * 5, "B": [2.0] * 5}), "energy_j")
    assert not cmp.tested and cmp.kruskal_p is None and "identical" in cmp.note


def test_median_ci():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    ci = median_ci(x)
    assert ci["median"] == 5.5 and ci["ci_low"] <= 5.5 <= ci["ci_high"]
    assert 1.0 <= ci["ci_low"] < ci["ci_high"] <= 10.0
    one = median_ci([3.0])
    assert one["median"] == 3.0 and np.isnan(one["ci_low"]) and "no interval" in one["ci_note"]


def test_median_ci_is_a_bootstrap_interval_not_the_range():
    """200 draws with far outliers: the median's 95 % interval is narrow and well inside [min, max], and it agrees
    with scipy's own BCa bootstrap of the median."""
    from scipy import stats

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(50.0, 2.0, 196), [0.0, 1.0, 500.0, 900.0]])
    ci = median_ci(x, seed=7)
    assert x.min() < ci["ci_low"] < ci["median"] < ci["ci_high"] < x.max()
    assert ci["ci_high"] - ci["ci_low"] < 2.0
    ref = stats.bootstrap((x,), np.median, confidence_level=0.95, n_resamples=2000, method="BCa",
                          rng=np.random.default_rng(7)).confidence_interval
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((ref.low, ref.high))


def test_savings_by_hand():
    med = pd.DataFrame({"model": ["m"] * 3 + ["n"] * 2, "config": ["A", "B", "C", "A", "B"],
                        "energy_j": [50.0, 100.0, 80.0, 30.0, 20.0]})
    bw = savings_best_worst(med, "energy_j").set_index("model")
    assert (bw.loc["m", "best"], bw.loc["m", "worst"], bw.loc["m", "savings_pct"]) == ("A", "B", 50.0)
    pair = savings_pair(med, "A", "B", "energy_j").set_index("model")["savings_pct"]
    assert pair.to_dict() == {"m": 50.0, "n": pytest.approx(-50.0)}  # A used 50 % more than B on n
    r = savings_range(savings_pair(med, "A", "B", "energy_j"))
    assert (r["low"], r["low_model"], r["high"], r["high_model"]) == (pytest.approx(-50.0), "n", 50.0, "m")
    mat = savings_matrix(med, "energy_j")
    assert mat.loc["m", "C"] == pytest.approx(20.0) and mat.loc["n", "B"] == pytest.approx(100 / 3)


def test_study_headline_ranges_recomputed_from_the_reference_medians():
    h = headline(read_medians(DEFAULT_STUDY_CSV))
    pair = h["pair_savings_range"]
    assert h["pair"] == ("TORCH-CUDA", "ONNX-CUDA") and pair["n_models"] == 12
    # the study: TORCH-CUDA saved 37.99 %–89.16 % against ONNX-CUDA (the table is rounded: within 0.1 pp)
    assert pair["low"] == pytest.approx(37.99, abs=0.1) and pair["high"] == pytest.approx(89.16, abs=0.1)
    cpu = h["cpu_best_worst_range"]
    assert cpu["high"] == pytest.approx(72.04, abs=0.1) and cpu["high_model"] == "stablecode-3b"
    assert cpu["low"] == pytest.approx(8.91, abs=0.1)  # the study typed 8.98 by hand; its table gives 8.91
    # JIT (one forward pass, not generation) is left out, as in the study
    assert "JIT-CPU" not in set(h["cpu_best_worst"]["best"])
    assert len(read_medians(DEFAULT_STUDY_CSV, include_jit=True)) == 84


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="no shared reference folder beside this checkout")
def test_packaged_reference_is_the_shared_one():
    assert DEFAULT_STUDY_CSV.read_bytes() == SHARED_CSV.read_bytes()


def test_a_medians_table_like_the_study_is_read(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("model,hf_id,engine,provider,median_energy_kj,median_time_s\n"
                   "x,org/x,torch,cuda,10,1\nx,org/x,onnx,cuda,40,2\nx,org/x,jit,cuda,1,1\n"
                   "x,org/x,torch,cpu,30,3\nx,org/x,ov,cpu,20,2\n")
    h = headline(read_medians(csv))
    assert h["pair_savings_range"]["low"] == pytest.approx(75.0)
    assert h["cpu_best_worst"].iloc[0][["best", "worst"]].tolist() == ["OV-CPU", "TORCH-CPU"]
    assert h["cpu_best_worst_range"]["high"] == pytest.approx(100 / 3)


def test_our_figures_next_to_the_study_per_prompt(tmp_path):
    # codeparrot-small TORCH-CPU in the study: 38.9 kJ and 472 s for 164 prompts
    rec = make_record(model="codeparrot-small", hub_id="codeparrot/codeparrot-small", params_b=0.11,
                      engine="torch", device="cpu", energy_j=100.0, duration_s=8.0, prompts=4)
    ok = add_metrics(load_runs(write_run([rec], tmp_path / "run")).ok)
    cmp = compare_with_study(our_medians(ok), read_medians()).set_index("config")
    row = cmp.loc["TORCH-CPU"]
    assert row["our_j_per_prompt"] == pytest.approx(25.0)
    assert row["study_j_per_prompt"] == pytest.approx(38900 / 164)
    assert row["energy_ratio"] == pytest.approx(25.0 / (38900 / 164))
    assert row["time_ratio"] == pytest.approx(2.0 / (472 / 164))
    assert row["our_source"] == "estimated"
