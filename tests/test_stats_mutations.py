"""analysis.stats: the figures the other stats tests let change unnoticed (mutation testing: `make mutation
MUTATE=analysis/stats.py`). Each test pins one figure a reader sees — the multiple-comparison correction, an interval,
a boundary of a rule, a savings row — against a library's answer or one worked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from scipy import stats as ss
from statsmodels.stats.multitest import multipletests

from analysis.stats import (Comparison, compare_configs, fmt_p, median_ci, p_words, run_statistics, savings_best_worst,
                            savings_matrix, savings_pair, savings_range, shapiro)

# Four configurations, six repetitions each, spread so that Dunn's six raw p-values are distinct and small enough
# for the correction to matter: Holm makes A–C significant (p = 0.040), Bonferroni would not (p = 0.061).
FOUR = {"A": np.arange(1, 7.0), "B": np.arange(3, 9.0) + 0.5, "C": np.arange(6, 12.0) + 0.25,
        "D": np.arange(9, 15.0) + 0.75}


def _frame(groups) -> pd.DataFrame:
    return pd.DataFrame([(g, v) for g, vals in groups.items() for v in vals], columns=["config", "energy_j"])


def test_pairs_are_holm_corrected_over_every_pair_not_bonferroni():
    df = _frame(FOUR)
    cmp = compare_configs(df, "energy_j")
    raw = sp.posthoc_dunn(df, val_col="energy_j", group_col="config", p_adjust=None)
    pairs = list(zip(cmp.pairs["a"], cmp.pairs["b"]))
    assert len(pairs) == 6
    p_raw = np.array([raw.loc[a, b] for a, b in pairs])
    holm = multipletests(p_raw, method="holm")[1]
    bonferroni = multipletests(p_raw, method="bonferroni")[1]
    assert np.max(np.abs(holm - bonferroni)) > 0.1  # the data tell the two corrections apart
    assert cmp.pairs["p_holm"].to_numpy() == pytest.approx(holm, rel=1e-12)
    ac = cmp.pairs.set_index(["a", "b"]).loc[("A", "C")]
    assert ac["p_holm"] == pytest.approx(0.0404, abs=1e-4) and bool(ac["significant"])


# --- median and its bootstrap interval ------------------------------------------------------------------------------

def _scipy_ci(x, method, seed=0, n_resamples=2000, confidence=0.95):
    return tuple(ss.bootstrap((np.asarray(x, float),), np.median, confidence_level=confidence, method=method,
                              n_resamples=n_resamples, rng=np.random.default_rng(seed)).confidence_interval)


def test_median_ci_defaults_are_bca_95_2000_resamples_seed_0():
    x = np.random.default_rng(11).lognormal(3.0, 0.4, 30)  # continuous: every seed gives another interval
    ci = median_ci(x)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx(_scipy_ci(x, "BCa"), rel=1e-12)
    assert ci == {"n": 30, "median": pytest.approx(float(np.median(x))), "ci_low": ci["ci_low"],
                  "ci_high": ci["ci_high"], "ci_note": None}
    assert (ci["ci_low"], ci["ci_high"]) != pytest.approx(_scipy_ci(x, "BCa", seed=1), rel=1e-6)
    ninety = median_ci(x, confidence=0.9, n_resamples=500, seed=4)
    assert (ninety["ci_low"], ninety["ci_high"]) == pytest.approx(
        _scipy_ci(x, "BCa", seed=4, n_resamples=500, confidence=0.9), rel=1e-12)


def test_median_ci_falls_back_to_percentile_where_bca_degenerates_and_says_so():
    x = [5.0, 5.0, 5.0, 5.0, 6.0]  # ties: BCa's acceleration is undefined
    with np.errstate(all="ignore"), pytest.warns(Warning):
        assert not np.isfinite(_scipy_ci(x, "BCa")).all()
    ci = median_ci(x)
    assert (ci["ci_low"], ci["ci_high"], ci["ci_note"]) == (*_scipy_ci(x, "percentile"), "percentile")


def test_median_ci_edges_two_values_one_value_all_equal_and_unreadable_values():
    assert median_ci([1.0, 3.0]) == {"n": 2, "median": 2.0, "ci_low": 1.0, "ci_high": 3.0, "ci_note": None}
    one = median_ci([4.0])
    assert (one["n"], one["median"], one["ci_note"]) == (1, 4.0, "n=1: no interval")
    assert np.isnan(one["ci_low"]) and np.isnan(one["ci_high"])
    none = median_ci([])
    assert none["n"] == 0 and np.isnan(none["median"]) and none["ci_note"] == "n=0: no interval"
    # all equal: the interval is the value itself, no bootstrap (and so no "percentile" note)
    assert median_ci([2.0] * 5) == {"n": 5, "median": 2.0, "ci_low": 2.0, "ci_high": 2.0, "ci_note": None}
    # what is not a number is left out, never counted
    assert median_ci([1.0, "x", None, 3.0, float("nan")])["n"] == 2


# --- words a reader sees ----------------------------------------------------------------------------------------------

def test_p_values_in_words():
    assert [fmt_p(p) for p in (None, float("nan"), 0.0009, 0.001, 0.01234, 0.5)] == \
        ["–", "–", "< 0.001", "0.001", "0.012", "0.500"]
    assert (p_words(0.0002), p_words(0.05), p_words(None)) == ("p < 0.001", "p = 0.050", "p = –")


def test_significance_is_strictly_below_alpha_and_the_verdict_says_it():
    def cmp(p, tested=True, note=None):
        return Comparison("model", "m", "energy_j", pd.DataFrame(), tested=tested, note=note, kruskal_h=3.214,
                          kruskal_p=p)

    assert cmp(0.05).significant is False and cmp(0.0499).significant is True
    assert Comparison("model", "m", "energy_j", pd.DataFrame()).significant is None
    assert cmp(0.012).verdict() == "Kruskal–Wallis H = 3.21, p = 0.012: configurations differ significantly"
    assert cmp(0.2).verdict() == "Kruskal–Wallis H = 3.21, p = 0.200: configurations show no significant difference"
    assert cmp(None, tested=False, note="too few").verdict() == "too few"
    assert cmp(None, tested=False).verdict() == "no test"


def test_shapiro_needs_three_values_and_some_spread():
    assert shapiro([1.0, 2.0]) == (None, None, "n=2 < 3: too few for Shapiro–Wilk")
    assert shapiro([3.0, 3.0, 3.0]) == (None, None, "all values equal")
    w, p = ss.shapiro([1.0, 2.0, 4.0])
    assert shapiro([1.0, 2.0, 4.0]) == (pytest.approx(w), pytest.approx(p), None)


# --- one comparison ------------------------------------------------------------------------------------------------

def test_groups_table_is_per_configuration_sorted_with_its_interval_and_normality():
    rng = np.random.default_rng(5)
    vals = {"B": list(rng.normal(10, 1, 6)), "A": [1.0] * 9 + [2.0, 50.0, 100.0], "C": [7.0, 7.0]}
    cmp = compare_configs(_frame(vals), "energy_j", seed=3, alpha=0.2)
    g = cmp.groups.set_index("config")
    assert list(g.index) == ["A", "B", "C"]
    for name in ("A", "B"):
        ci = median_ci(vals[name], seed=3)
        w, p = ss.shapiro(vals[name])
        assert g.loc[name, ["n", "median", "ci_low", "ci_high"]].tolist() == \
            pytest.approx([ci["n"], ci["median"], ci["ci_low"], ci["ci_high"]])
        assert (g.loc[name, "shapiro_w"], g.loc[name, "shapiro_p"]) == (pytest.approx(w), pytest.approx(p))
        assert bool(g.loc[name, "normal"]) == (p >= 0.2) and pd.isna(g.loc[name, "shapiro_note"])
    assert [bool(g.loc[n, "normal"]) for n in ("A", "B")] == [False, True]  # far outliers, normal draws
    assert g.loc["C", "n"] == 2 and g.loc["C", "shapiro_note"].startswith("n=2")
    assert pd.isna(g.loc["C", "normal"]) and pd.isna(g.loc["C", "shapiro_p"])


def test_normal_means_p_at_or_above_alpha():
    x = [1.0, 2.0, 4.0]
    p = ss.shapiro(x).pvalue
    at = compare_configs(_frame({"A": x, "B": [1.0, 2.0, 3.0]}), "energy_j", alpha=p)
    assert bool(at.groups.set_index("config").loc["A", "normal"])


def test_five_repetitions_are_enough_four_are_not_and_the_note_names_them():
    five, four = [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0]
    cmp = compare_configs(_frame({"A": five, "B": [x + 5 for x in five], "C": four}), "energy_j")
    assert cmp.tested and cmp.note == "too few repetitions for a test (n < 5): C (n=4)"
    h, p = ss.kruskal(five, [x + 5 for x in five])  # C is left out of the test itself
    assert (cmp.kruskal_h, cmp.kruskal_p) == (pytest.approx(h), pytest.approx(p))
    assert cmp.pairs[["a", "b", "n_a", "n_b"]].values.tolist() == [["A", "B", 5, 5]]
    low = compare_configs(_frame({"A": five, "B": four}), "energy_j", min_n=4)
    assert low.tested and low.note is None
    none = compare_configs(_frame({"A": four, "B": four}), "energy_j")
    assert not none.tested and none.note == "too few repetitions for a test (n < 5): A (n=4), B (n=4)"
    one = compare_configs(_frame({"A": five}), "energy_j")
    assert not one.tested and one.note == "only one configuration: nothing to compare"
    assert compare_configs(_frame({"A": five, "B": five}), "energy_j", skip="why not").note == "why not"


def test_no_number_at_all_gives_an_empty_table_with_its_columns():
    cmp = compare_configs(_frame({"A": ["x", None]}), "energy_j")
    assert cmp.groups.empty and list(cmp.groups.columns) == ["config", "n", "median", "ci_low", "ci_high", "shapiro_w",
                                                             "shapiro_p", "normal", "shapiro_note"]
    assert not cmp.tested and cmp.name == "" and cmp.scope == "model" and cmp.metric == "energy_j"


def test_identical_values_note_keeps_the_too_few_note():
    cmp = compare_configs(_frame({"A": [2.0] * 5, "B": [2.0] * 5, "C": [1.0]}), "energy_j")
    assert not cmp.tested and cmp.pairs.empty
    assert cmp.note == "no test: all values are identical; too few repetitions for a test (n < 5): C (n=1)"


def test_pair_rows_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 6.0, 7.0, 8.0, 9.0]
    df = _frame({"B": b, "A": a, "bad": ["x"] * 5})  # values that are not numbers are no configuration
    cmp = compare_configs(df, "energy_j", alpha=0.5)
    assert list(cmp.groups["config"]) == ["A", "B"]
    row = cmp.pairs.iloc[0]
    p = sp.posthoc_dunn([a, b], p_adjust="holm").loc[1, 2]
    assert (row["a"], row["b"], row["n_a"], row["n_b"], row["median_a"], row["median_b"]) == ("A", "B", 5, 6, 3.0, 6.5)
    assert row["p_holm"] == pytest.approx(p) and row["significant"] == (p < 0.5)
    # δ: of 30 pairs, a > b in 0, a < b in 27, 3 ties (3-3, 4-4 … ) -> −27/30
    assert row["delta"] == pytest.approx(np.sign(np.subtract.outer(a, b)).mean()) and row["magnitude"] == "large"
    strict = compare_configs(df, "energy_j", alpha=p)
    assert not strict.pairs.iloc[0]["significant"]


# --- every comparison of a table -------------------------------------------------------------------------------------

def _table() -> pd.DataFrame:
    """Two boundaries in one model (energy compared within each, time across both), one size group."""
    rows = []
    for cfg, boundary, source, base in (("A", "cpu", "measured", 10.0), ("B", "cpu", "measured", 20.0),
                                        ("C", "gpu", "measured", 30.0), ("D", "gpu", "measured", 40.0)):
        for r in range(5):
            rows.append({"config": cfg, "model": "m", "size_group": "small", "energy_source": source,
                         "group": f"m ⟨{boundary}⟩", "size_scope": f"small ⟨{boundary}⟩", "time_group": "m ⟨h1⟩",
                         "time_size_scope": "small ⟨h1⟩", "energy_j": base + r, "duration_s": base / 10 + r / 100})
    return pd.DataFrame(rows)


def test_energy_within_each_boundary_time_across_all():
    out = run_statistics(_table().iloc[::-1])  # rows in any order: comparisons come sorted by name
    got = [(c.scope, c.metric, c.name, sorted(c.groups["config"])) for c in out]
    assert got == [("model", "energy_j", "m ⟨cpu⟩", ["A", "B"]), ("model", "energy_j", "m ⟨gpu⟩", ["C", "D"]),
                   ("model", "duration_s", "m ⟨h1⟩", ["A", "B", "C", "D"]),
                   ("size group", "energy_j", "small ⟨cpu⟩", ["A", "B"]),
                   ("size group", "energy_j", "small ⟨gpu⟩", ["C", "D"]),
                   ("size group", "duration_s", "small ⟨h1⟩", ["A", "B", "C", "D"])]
    assert all(c.tested for c in out)


def test_tables_without_boundary_groups_compare_per_model_and_size_group_and_refuse_mixed_sources():
    t = _table().drop(columns=["group", "size_scope", "time_group", "time_size_scope"])
    t.loc[t["config"] == "D", "energy_source"] = "estimated"
    out = run_statistics(t, metrics=("not_a_column", "energy_j", "duration_s"))
    by = {(c.scope, c.metric): c for c in out}
    assert set(by) == {("model", "energy_j"), ("model", "duration_s"), ("size group", "energy_j"),
                       ("size group", "duration_s")}
    assert (by[("model", "energy_j")].name, by[("size group", "energy_j")].name) == ("m", "small")
    for scope in ("model", "size group"):
        assert not by[(scope, "energy_j")].tested
        assert by[(scope, "energy_j")].note == "no test: configurations mix estimated and measured energy " \
                                               "(not comparable)"
        assert by[(scope, "duration_s")].tested  # time is comparable whatever the energy source


def test_min_n_reaches_every_comparison():
    few = run_statistics(_table(), min_n=6)
    assert not any(c.tested for c in few) and all("(n < 6)" in c.note for c in few)


# Eight values whose 95 % upper bound depends on the bootstrap's seed: 32.58 with seed 0, 35.59 with seed 9 (a median's
# bootstrap distribution is discrete, so most samples give the same interval whatever the seed)
SEEDED = [22.077, 15.466, 16.338, 5.926, 49.395, 35.591, 17.069, 29.574]


def test_the_seed_reaches_every_interval_and_defaults_to_0():
    assert median_ci(SEEDED)["ci_high"] == pytest.approx(32.5825) == _scipy_ci(SEEDED, "BCa", seed=0)[1]
    assert median_ci(SEEDED, seed=9)["ci_high"] == pytest.approx(35.591)
    df = _frame({"A": SEEDED, "B": [v + 10 for v in SEEDED]})
    for kwargs, high in (({}, 32.5825), ({"seed": 9}, 35.591)):
        assert compare_configs(df, "energy_j", **kwargs).groups["ci_high"].iloc[0] == pytest.approx(high)
        t = df.assign(model="m", size_group="s", energy_source="measured")
        assert all(c.groups["ci_high"].iloc[0] == pytest.approx(high)
                   for c in run_statistics(t, ("energy_j",), min_n=8, **kwargs))


# --- savings, the headline figures ---------------------------------------------------------------------------------

def _medians() -> pd.DataFrame:
    """Models l and o have one configuration, p one with a figure; a missing figure in another column counts not."""
    return pd.DataFrame({"model": ["l", "m", "m", "m", "n", "n", "o", "p", "p"],
                         "config": ["A", "A", "B", "C", "A", "B", "A", "A", "B"],
                         "energy_j": [5.0, 50.0, 100.0, 80.0, 30.0, 20.0, 7.0, 4.0, np.nan],
                         "duration_s": [1.0, 1.0, np.nan, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]})


def test_best_worst_rows_in_full():
    bw = savings_best_worst(_medians().iloc[::-1], "energy_j")  # rows come sorted by model
    assert list(bw.columns) == ["model", "best", "best_value", "worst", "worst_value", "n_configs", "savings_pct"]
    # l, o and p have one configuration with a figure (p's B has none): nothing to save against
    assert bw.values.tolist() == [["m", "A", 50.0, "B", 100.0, 3, 50.0], ["n", "B", 20.0, "A", 30.0, 2,
                                                                            pytest.approx(100 / 3)]]
    named = savings_best_worst(_medians().rename(columns={"model": "mm", "config": "cc"}), "energy_j", by="mm",
                               config="cc")
    assert named["mm"].tolist() == ["m", "n"] and named["best"].tolist() == ["A", "B"]
    empty = savings_best_worst(_medians().iloc[6:], "energy_j")
    assert empty.empty and list(empty.columns) == list(bw.columns)


def test_pair_rows_in_full():
    pair = savings_pair(_medians(), "A", "B", "energy_j")
    assert list(pair.columns) == ["model", "a", "b", "a_value", "b_value", "savings_pct"]
    assert pair.values.tolist() == [["m", "A", "B", 50.0, 100.0, 50.0], ["n", "A", "B", 30.0, 20.0, -50.0]]
    assert list(pair.index) == [0, 1]
    named = savings_pair(_medians().rename(columns={"model": "mm", "config": "cc"}), "A", "B", "energy_j", by="mm",
                         config="cc")
    assert named["mm"].tolist() == ["m", "n"]
    absent = savings_pair(_medians(), "A", "Z", "energy_j")
    assert absent.empty and list(absent.columns) == list(pair.columns)
    assert savings_pair(_medians(), "Z", "A", "energy_j").empty


def test_matrix_and_range_in_full():
    mat = savings_matrix(_medians(), "energy_j")
    assert mat.loc["m"].tolist() == pytest.approx([50.0, 0.0, 20.0])
    assert mat.loc["n", "A"] == 0.0 and mat.loc["n", "B"] == pytest.approx(100 / 3) and mat.loc["o", "A"] == 0.0
    named = savings_matrix(_medians().rename(columns={"model": "mm", "config": "cc"}), "energy_j", by="mm",
                           config="cc")
    assert named.loc["m", "A"] == pytest.approx(50.0)
    s = pd.DataFrame({"mm": ["m", "n", "o"], "savings_pct": [12.5, np.nan, -3.0], "note": [None, None, "x"]})
    assert savings_range(s, by="mm") == {"low": -3.0, "low_model": "o", "high": 12.5, "high_model": "m",
                                         "n_models": 2}
    assert savings_range(s.iloc[1:2], by="mm") is None
