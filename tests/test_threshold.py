"""The agreement threshold: its documented default (0.95) is the one the verdict and the matrix use, and an fp32 row
with 90 % of prompts identical did different work. A lowered default (0.5, 0.9) must fail here."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from orchestrator.matrix import load
from runners.agreement import DEFAULT_THRESHOLD, ReferencePolicy, different_output


def test_the_default_is_the_documented_one():
    readme = (REPO / "README.md").read_text()
    # "`[agreement]` (the token-agreement reference: … `threshold`; default torch fp32, CPU first, 0.95)"
    documented = float(re.search(r"`\[agreement\]` \([^)]*?`threshold`; default[^)]*?(0\.\d+)\)", readme).group(1))
    assert DEFAULT_THRESHOLD == documented == 0.95


def test_a_matrix_without_a_threshold_gets_the_verdicts_default():
    # matrix-smoke.toml has no [agreement] section: every field takes its default
    assert load(REPO / "matrix-smoke.toml").agreement == ReferencePolicy()
    assert ReferencePolicy().threshold == DEFAULT_THRESHOLD


@pytest.mark.parametrize("share", [0.9, 0.94, 0.5])
def test_fp32_below_the_default_did_different_work(share):
    why = different_output(share, "fp32", diverges_at_first_token=False)
    assert why is not None and f"{100 * share:.0f} % of prompts identical" in why and "(< 95 %)" in why


@pytest.mark.parametrize("share", [0.95, 1.0])
def test_fp32_at_or_above_the_default_did_the_same_work(share):
    assert different_output(share, "fp32", diverges_at_first_token=False) is None


def test_a_lower_precision_is_not_judged_by_the_share():
    # fp16 at 90 %: rounding moves near-ties; only a first-token divergence on every prompt is different work
    assert different_output(0.9, "fp16", diverges_at_first_token=False) is None
    assert different_output(0.0, "fp16", diverges_at_first_token=True) is not None


def test_the_verdict_every_reader_calls_uses_the_default_policy():
    verdict = ReferencePolicy().verdict
    ninety = {"status": "compared", "prompts": 10, "share_identical": 0.9, "first_divergence": [None] * 9 + [3]}
    assert "90 % of prompts identical" in verdict([ninety], "fp32")
    assert verdict([{**ninety, "share_identical": 0.95}], "fp32") is None
    # a matrix may ask for a lower one, stored in run.json
    assert ReferencePolicy(threshold=0.9).verdict([ninety], "fp32") is None
