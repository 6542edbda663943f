"""analysis.report and the CLI: a self-contained HTML report and a Markdown summary, written from the numbers."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.report import analyse, build_report
from analysis.synthetic import make_record, synthetic_run, write_run

REAL_RUN = Path(os.environ.get("ANALYSIS_REAL_RUN") or Path(__file__).resolve().parents[1] / "results" / "smoke")
MODELS = (("tiny-135m", None, 0.135), ("mid-1.1b", None, 1.1))
CONFIGS = (("torch", "cpu", "fp32", 1.0, 1.0), ("onnx", "cpu", "fp32", 0.7, 0.8), ("openvino", "cpu", "fp32", 0.5, 0.6))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = write_run(synthetic_run(run_id="syn", models=MODELS, configs=CONFIGS, repetitions=6, failed=1),
                    root / "syn")
    paths = build_report([run], root / "out")
    return {"run": run, "out": root / "out", "html": paths["html"].read_text(), "md": paths["markdown"].read_text()}


def test_html_is_self_contained_with_plots(report):
    page = report["html"]
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # every plot embedded; nothing fetched from elsewhere
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 5
    assert not re.search(r"""(src|href)=['"]https?://""", page) and "<link" not in page
    assert all((report["out"] / "plots" / f"{n}.png").is_file() for n in ("box_energy", "box_time", "pareto",
                                                                        "savings", "power"))


def test_estimated_energy_is_said_prominently(report):
    assert "class='banner estimated'" in report["html"]
    assert "ESTIMATED, not measured" in report["md"].split("## Headline")[0]
    assert "Energy figures are estimated." in report["md"]


def test_headline_sentences_come_from_the_numbers(report):
    ok = pd.read_parquet(report["out"] / "tables" / "trials_metrics.parquet")
    med = ok.groupby(["model", "config"])["energy_j"].median().unstack()
    saved = (med.max(axis=1) - med.min(axis=1)) / med.max(axis=1) * 100
    md = report["md"]
    assert f"best configuration used {saved.min():.1f} %–{saved.max():.1f} % less energy than the worst" in md
    assert "the best was OV-CPU for 2 of 2 model(s); the configurations differed significantly (Kruskal–Wallis, " \
        "α = 0.05) for 2 of 2 model(s)" in md
    assert "35 successful trials of 2 model(s) × 3 configuration(s), 5–6 repetition(s) per cell; 1 trial(s) " \
        "failed" in md
    pair = (med["ONNX-CPU"] - med["TORCH-CPU"]) / med["ONNX-CPU"] * 100  # TORCH-CPU saves this against ONNX-CPU
    assert f"TORCH-CPU used {-pair.max():.1f} %–{-pair.min():.1f} % more energy than ONNX-CPU" in md
    assert "TORCH-CUDA vs ONNX-CUDA" in md and "Not in this run" in md  # the study's pair, absent here
    assert re.search(r"tiny-135m: OV-CPU used the least energy .*Kruskal–Wallis H = [\d.]+, p < 0\.001: "
                     r"configurations differ significantly; best vs worst: Dunn–Holm p [<=] [\d.]+, "
                     r"Cliff's \|δ\| = 1\.00 \(large\)", md)


def test_failures_and_tables(report):
    assert "## Failures (1)" in report["md"] and "synthetic: out of memory while loading" in report["md"]
    assert "synthetic: out of memory while loading" in report["html"]
    tables = report["out"] / "tables"
    for name in ("trials", "prompts", "energy", "failures"):
        assert (tables / f"{name}.parquet").is_file() and (tables / f"{name}.csv").is_file()
    assert len(pd.read_parquet(tables / "trials.parquet")) == 2 * 3 * 6
    posthoc = pd.read_csv(tables / "posthoc.csv")
    assert set(posthoc["magnitude"]) <= {"negligible", "small", "medium", "large"} and len(posthoc) > 0


def test_long_text_cells_wrap_and_names_stay_whole():
    from analysis.report import html_table

    reason = "too few repetitions for a test (n < 5): ONNX-CPU (n=2), OV-CPU (n=2), TORCH-CPU (n=2)"
    page = html_table(pd.DataFrame({"name": ["smollm2-135m"], "n": [2], "result": [reason]}))
    assert f"<td class=w>{reason.replace('<', '&lt;')}</td>" in page
    assert "<td>smollm2-135m</td>" in page and "<td class='n'>2</td>" in page


def test_study_ranges_are_in_the_report(report):
    md = report["md"]
    assert "TORCH-CUDA used 38.02 %–89.15 % less energy than ONNX-CUDA" in md
    assert "8.91 %–72.04 %" in md


def test_too_few_repetitions_give_no_p_value(tmp_path):
    run = write_run(synthetic_run(models=MODELS[:1], configs=CONFIGS[:2], repetitions=2, failed=0), tmp_path / "r")
    md = build_report([run], tmp_path / "out")["markdown"].read_text()
    assert "too few repetitions for a test (n < 5)" in md
    assert "Kruskal–Wallis H =" not in md and "Dunn–Holm p" not in md


def test_measured_run_and_study_comparison(tmp_path):
    recs = [make_record(model="codeparrot-small", hub_id="codeparrot/codeparrot-small", params_b=0.11,
                        engine=e, device="cuda", source="measured", repetition=r, energy_j=j * (1 + r / 100),
                        duration_s=5.0, idle_w={"gpu:0": 20.0, "cpu:package-0": 5.0}, prompts=4)
            for r in range(3) for e, j in (("torch", 300.0), ("onnx", 600.0))]
    run = write_run(recs, tmp_path / "gpu")
    a = analyse([run])
    assert a.sources == ["measured"]
    md = build_report([run], tmp_path / "out")["markdown"].read_text()
    assert "All energy figures are measured by hardware counters" in md and "ESTIMATED" not in md
    assert "TORCH-CUDA used 50.0 % less energy than ONNX-CUDA" in md  # one model: one figure, not a range
    assert "Within CUDA alone" not in md  # one device: the overall best-vs-worst already says it
    study = md.split("## Comparison with the study")[1].split("## Plots")[0]
    assert "DIFFERENT HARDWARE" in study
    # ours 300 J / 4 prompts vs the study's 12.8 kJ / 164 prompts for codeparrot-small TORCH-CUDA
    row = a.study_comparison.set_index("config").loc["TORCH-CUDA"]
    assert row["energy_ratio"] == pytest.approx(75.0 / (12800 / 164), rel=0.02)
    assert "codeparrot-small | codeparrot-small | TORCH-CUDA" in study


def test_best_vs_worst_within_each_device(tmp_path):
    # CPU: 100 vs 80 J (20 % saved); CUDA: 40 vs 10 J (75 % saved); 3 repetitions each
    energies = {("torch", "cpu"): 100.0, ("onnx", "cpu"): 80.0, ("torch", "cuda"): 40.0, ("onnx", "cuda"): 10.0}
    recs = [make_record(model="m", engine=e, device=d, repetition=r, energy_j=j) for (e, d), j in energies.items()
            for r in range(3)]
    md = build_report([write_run(recs, tmp_path / "r")], tmp_path / "out")["markdown"].read_text()
    assert "Within CPU alone the best configuration used 20.0 % less energy than the worst" in md
    assert "Within CUDA alone the best configuration used 75.0 % less energy than the worst" in md
    assert "the best configuration used 90.0 % less energy than the worst" in md  # overall: 10 vs 100 J


@pytest.mark.skipif(not (REAL_RUN / "trials").is_dir(),
                    reason=f"no real run at {REAL_RUN} (`make smoke` writes one; ANALYSIS_REAL_RUN=DIR names another)")
def test_report_from_a_real_run(tmp_path):
    """Records the runner and the orchestrator really wrote: every one loads, matches the schema, has its figures."""
    a = analyse([REAL_RUN])
    assert a.tables.problems.empty
    runs = a.tables.trials[a.tables.trials["mode"] == "run"]
    assert len(runs) == len(list((REAL_RUN / "trials").glob("*.json")))
    assert len(a.ok) + len(a.tables.failures[a.tables.failures["mode"] == "run"]) == len(runs)
    assert set(a.ok["energy_source"]) <= {"measured", "estimated"} and (a.ok["energy_j"] > 0).all()
    assert (a.ok["duration_s"] > 0).all() and (a.ok["tokens_output"] > 0).all() and a.ok["j_per_token"].notna().all()
    page = build_report([REAL_RUN], tmp_path / "out")["html"].read_text()
    assert page.count("data:image/png;base64,") >= 3 and "class='banner" in page


def test_no_records_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no records"):
        analyse([tmp_path / "empty"])


def test_cli(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "demo"), "--repetitions", "2"]) == 0
    assert len(list((tmp_path / "demo" / "trials").glob("*.json"))) == 3 * 4 * 2
    assert main(["tables", str(tmp_path / "demo"), "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "trials.parquet").is_file()
    assert main(["study"]) == 0
    out = capsys.readouterr().out
    assert "TORCH-CUDA saves against ONNX-CUDA: 38.02 %–89.15 %" in out and "8.91 %–72.04 %" in out
    assert main(["report", str(tmp_path / "demo"), "--no-study", "--pair", "OV-CPU:TORCH-CPU"]) == 0
    md = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert "### OV-CPU vs TORCH-CPU" in md and "_No study medians table given._" in md
