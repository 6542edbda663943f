"""Runtime families (analysis/families.py, issue 27 item 5): the engines of one runtime library — ONNX Runtime through
optimum's loop and through its GenAI loop, PyTorch eager and compiled — compared with each other within one model,
boundary, device, precision and operating point, in a section of the report of their own."""

from __future__ import annotations

import pytest

from analysis.families import families, family_of
from analysis.report import analyse, build_report
from analysis.synthetic import make_record, write_run
from runners.engines import ENGINE_NAMES, engine_class


def test_every_engine_declares_the_runtime_library_it_drives():
    assert all(engine_class(e).family for e in ENGINE_NAMES), {e: engine_class(e).family for e in ENGINE_NAMES}
    assert family_of("torch") == family_of("torch-compile") == "PyTorch"
    assert family_of("onnx") == "ONNX Runtime" and family_of("no-such-engine") == "no-such-engine"


def _run(tmp_path, engines: dict[str, float], *, precision="fp32"):
    recs, i = [], 0
    for engine, seconds in engines.items():
        for rep in range(3):
            recs.append(make_record(engine=engine, precision=precision, repetition=rep, order_index=i,
                                    duration_s=seconds * (1 + 0.01 * rep), energy_j=10.0 * seconds * (1 + 0.01 * rep)))
            i += 1
    return write_run(recs, tmp_path / "run")


def test_engines_of_one_family_are_compared_and_other_families_are_not(tmp_path):
    a = analyse([_run(tmp_path, {"torch": 10.0, "torch-compile": 5.0, "onnx": 8.0})], study_csv=None)
    fam = a.families
    assert set(fam["family"]) == {"PyTorch"}  # ONNX Runtime has one engine here: nothing to compare within it
    compiled = fam[fam["engine"] == "torch-compile"].iloc[0]
    assert compiled["against"] == "torch" and compiled["n"] == 3
    assert compiled["j_per_token_ratio"] == pytest.approx(0.5, rel=1e-6)  # half the energy for the same tokens
    assert compiled["tokens_per_s_ratio"] == pytest.approx(2.0, rel=1e-6)
    assert compiled["j_per_token_low"] <= 0.5 <= compiled["j_per_token_high"]
    assert fam[fam["engine"] == "torch"].iloc[0]["j_per_token_ratio"] == pytest.approx(1.0)


def test_different_precisions_are_never_one_comparison(tmp_path):
    recs = [make_record(engine=e, precision=p, repetition=r, order_index=i * 3 + r)
            for i, (e, p) in enumerate((("torch", "fp32"), ("torch-compile", "bf16"))) for r in range(2)]
    assert families(analyse([write_run(recs, tmp_path / "run")], study_csv=None).ok).empty


def test_the_report_says_what_the_path_costs_within_a_family(tmp_path):
    md = build_report([_run(tmp_path, {"torch": 10.0, "torch-compile": 5.0})], tmp_path / "out",
                      study_csv=None)["markdown"].read_text()
    section = md[md.index("## Runtime families"):]
    assert "torch-compile uses 50% less energy per token at 2× the tokens/s of torch" in section, section[:1500]
    assert "| reference |" in section
