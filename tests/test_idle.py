"""The idle baseline re-used for a block of trials (orchestrator/idle.py), against a RAPL tree whose counters advance
at known, changeable rates: re-used while the host stays at it, re-measured when it drifts or ages, and every
trial told which baseline it got."""

from __future__ import annotations

import time

import pytest

from orchestrator.idle import IdleBaseline
from runners.job import MeterSpec
from runners.meters import MeterSet
from test_meters import RaplWriter

HOST = {"idle_seconds": 1.0, "idle_reuse_s": 60.0, "idle_check_s": 0.5, "idle_drift": 0.1, "cooldown_margin_c": 3.0}


def _watts(idle: dict, component: str) -> float:
    return next(p["watts"] for p in idle["power"] if p["component"] == component)


@pytest.fixture
def powered(tmp_path):
    with RaplWriter(tmp_path, package_w=20.0, dram_w=4.0) as writer:
        meters = MeterSet.create(MeterSpec(rapl_root=str(tmp_path), codecarbon=False, sample_interval_s=0.05))
        try:
            yield writer, meters
        finally:
            meters.close()


def test_a_baseline_is_reused_while_the_host_stays_at_it_and_remeasured_when_it_drifts(powered):
    writer, meters = powered
    idle = IdleBaseline(meters, HOST)
    first = idle.for_trial()
    assert first["baseline"]["reused"] is False and "first" in first["baseline"]["why"]
    assert first["duration_s"] == pytest.approx(1.0, abs=0.2)
    assert _watts(first, "cpu:package-0") == pytest.approx(20.0, rel=0.05)

    second = idle.for_trial()
    b = second["baseline"]
    assert b["reused"] is True and b["taken_unix"] == first["start_unix"] and b["age_s"] > 0
    assert second["start_unix"] == first["start_unix"]  # the very baseline, not the short check
    assert b["check"]["duration_s"] == pytest.approx(0.5, abs=0.15) and b["check"]["moved"] == []
    assert _watts(second, "cpu:package-0") == _watts(first, "cpu:package-0")

    writer.set_rates(package_w=28.0, dram_w=4.0)  # the host idles 40 % higher now: the old baseline is wrong
    third = idle.for_trial()
    b = third["baseline"]
    assert b["reused"] is False and "drifted" in b["why"] and "cpu:package-0" in b["why"]
    assert b["check"]["moved"] and third["start_unix"] > first["start_unix"]
    assert _watts(third, "cpu:package-0") == pytest.approx(28.0, rel=0.05)
    assert idle.for_trial()["baseline"]["reused"] is True  # at the new level again


def test_a_baseline_ages_out_and_reuse_off_measures_every_trial(powered):
    _, meters = powered
    idle = IdleBaseline(meters, {**HOST, "idle_reuse_s": 1.6})
    idle.for_trial()
    time.sleep(0.8)  # the baseline (1 s) is now 1.8 s old
    aged = idle.for_trial()["baseline"]
    assert aged["reused"] is False and "old" in aged["why"]

    every = IdleBaseline(meters, {**HOST, "idle_reuse_s": 0})
    assert [every.for_trial()["baseline"]["reused"] for _ in range(2)] == [False, False]
    assert IdleBaseline(meters, {**HOST, "idle_seconds": 0}).for_trial() is None
