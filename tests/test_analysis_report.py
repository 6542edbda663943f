"""analysis.report and the CLI: a self-contained HTML report and a Markdown summary, written from the numbers."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.figures import quality_rows
from analysis.report import analyse, build_report, headlines
from analysis.synthetic import make_record, synthetic_run, write_evaluations, write_run

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


def test_mixed_boundaries_never_make_a_cross_boundary_headline(tmp_path):
    """Model m: TORCH-CPU and ONNX-CPU estimated (cpu + ram), TORCH-CUDA measured on its GPU. The GPU row is far
    cheaper, but a GPU-only figure and a CPU estimate are not the same quantity: no headline, saving, test, heatmap
    cell or Pareto front may put them side by side as comparable."""
    recs = []
    for r in range(5):
        recs.append(make_record(model="m", engine="torch", device="cpu", repetition=r, energy_j=100.0 + r))
        recs.append(make_record(model="m", engine="onnx", device="cpu", repetition=r, energy_j=80.0 + r))
        recs.append(make_record(model="m", engine="torch", device="cuda", source="measured",
                                components={"gpu:0": 1.0}, repetition=r, energy_j=10.0 + r))
    a = analyse([write_run(recs, tmp_path / "r")], study_csv=None)
    md = build_report([tmp_path / "r"], tmp_path / "out", study_csv=None)["markdown"].read_text()
    heads = "\n".join(l for l in md.split("## Tables")[0].splitlines() if l.startswith("- "))
    # within the estimated boundary: ONNX-CPU vs TORCH-CPU, (102 − 82) / 102
    assert "ONNX-CPU used the least energy" in heads and "19.6 % less than TORCH-CPU" in heads
    assert "TORCH-CUDA used the least energy" not in heads and "less than TORCH-CUDA" not in heads
    assert "different energy boundaries" in heads and "gpu:0 (measured): TORCH-CUDA" in heads
    # every comparison of energy stays inside one boundary
    for c in a.comparisons:
        if c.metric == "energy_j" and c.scope == "model":
            assert not ({"TORCH-CUDA"} < set(c.groups["config"])), c.name
    assert set(a.best_worst["best"]) == {"ONNX-CPU"}
    heat = a.savings_matrix
    assert heat.notna().sum(axis=1).max() == 2  # no row holds a CPU and the GPU configuration together
    assert "[gpu:0 (measured)] TORCH-CUDA" in md and "[cpu+ram (estimated)] ONNX-CPU, TORCH-CPU" in md
    # time is comparable across boundaries: one test over the three configurations
    time_cmp = next(c for c in a.comparisons if c.metric == "duration_s" and c.scope == "model")
    assert set(time_cmp.groups["config"]) == {"TORCH-CPU", "ONNX-CPU", "TORCH-CUDA"}


def test_a_cpu_trial_never_counts_a_gpu(tmp_path):
    """An old record of a CPU trial run by the process launcher on a GPU box: its only counter was the idle GPU's.
    The analysis drops the GPU from a CPU trial's energy: its boundary is its CPU estimate, never 'measured'."""
    rec = make_record(model="m", engine="torch", device="cpu")
    gen = rec["phases"]["generate"]
    gen["energy"] = [f for f in gen["energy"] if f["component"] != "gpu"]
    gen["energy"].append({"component": "gpu:0", "joules": 300.0, "source": "measured", "meter": "nvml",
                          "reason": None})
    gen["energy_total"]["measured_j"] = 300.0
    a = analyse([write_run([rec], tmp_path / "r")], study_csv=None)
    row = a.ok.iloc[0]
    assert row["energy_source"] == "estimated" and row["energy_boundary"] == "cpu+ram (estimated)"
    assert row["energy_j"] == pytest.approx(100.0)


def test_a_model_without_reference_is_reported_as_such(tmp_path):
    """No torch fp32 record for model n: its agreement is unknown — shown in red, never 'identical'."""
    recs = [make_record(model="m", engine="torch", repetition=0), make_record(model="m", engine="onnx", repetition=0),
            make_record(model="n", engine="onnx", repetition=0), make_record(model="n", engine="openvino",
                                                                           repetition=0)]
    a = analyse([write_run(recs, tmp_path / "r")], study_csv=None)
    paths = build_report([tmp_path / "r"], tmp_path / "out", study_csv=None)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert a.ok.set_index(["model", "config"])["agreement"].isna().to_dict() == {
        ("m", "ONNX-CPU"): False, ("m", "TORCH-CPU"): False, ("n", "OV-CPU"): True, ("n", "ONNX-CPU"): True}
    assert "NO REFERENCE" in md and "n ONNX-CPU" in md
    assert "Every configuration produced token-identical outputs" not in md
    assert "Every configuration that had a reference produced token-identical outputs" in md
    assert "class='banner mixed'>NO REFERENCE" in page  # the red banner


def test_different_work_never_reaches_a_headline_or_a_comparison(tmp_path):
    """vLLM fp32 diverging from torch fp32 at the first token on every prompt (the Gemma 3 case) and far cheaper: it
    must not be named the winner, nor sit on a Pareto front, nor enter the statistics — it is listed apart. An int8
    row that diverges half way is a lower precision doing what rounding does: it stays in the comparison."""
    recs = []
    for r in range(5):
        recs += [make_record(model="m", engine="torch", repetition=r, energy_j=100.0 + r, duration_s=10.0),
                 make_record(model="m", engine="onnx", repetition=r, energy_j=80.0 + r, duration_s=8.0),
                 make_record(model="m", engine="onnx", precision="int8", repetition=r, energy_j=60.0 + r,
                             duration_s=7.0, diverge=(0, 1)),
                 make_record(model="m", engine="vllm", repetition=r, energy_j=10.0 + r, duration_s=1.0,
                             diverge=range(4), diverge_from=0)]
    run = write_run(recs, tmp_path / "r")
    a = analyse([run], study_csv=None)
    assert set(a.different["config"]) == {"VLLM-CPU"}
    assert "first" not in a.different["different_output"].iloc[0]  # fp32: judged by the threshold
    assert "0 % of prompts identical" in a.different["different_output"].iloc[0]
    assert "VLLM-CPU" not in set(a.ok["config"]) and "VLLM-CPU" not in set(a.medians["config"])
    assert all("VLLM-CPU" not in set(c.groups["config"]) for c in a.comparisons if not c.groups.empty)
    assert "ONNX-CPU-int8" in set(a.medians["config"])  # a lower precision that diverges late is compared
    heads = headlines(a)
    claims = [h for h in heads if not h.startswith("NOT THE SAME OUTPUT")]
    assert not [h for h in claims if "VLLM" in h], claims
    assert any(h.startswith("NOT THE SAME OUTPUT") and "m VLLM-CPU" in h for h in heads)
    assert a.best_worst.set_index("group").loc["m", "best"] == "ONNX-CPU-int8"
    paths = build_report([run], tmp_path / "out", study_csv=None)
    md = paths["markdown"].read_text()
    assert "Not the same output (kept out of every comparison)" in md
    # the same rule in the orchestrator's summary
    from orchestrator.agreement import attach
    from orchestrator.store import RunStore

    rows = {(r["engine"], r["precision"]): r for r in attach(RunStore(tmp_path, "r"))}
    assert rows[("vllm", "fp32")]["different_output"] and rows[("onnx", "int8")]["different_output"] is None
    assert rows[("torch", "fp32")]["different_output"] is None


def test_repetitions_from_several_machines_are_never_one_sample(tmp_path):
    """Cluster runs: model m's ONNX repetitions split over two nodes (not one sample: kept out, said why); model n's
    torch measured on node-a and its ONNX on node-b (each one sample, but never compared with each other — in
    energy nor in time)."""
    def on(node, rec):
        rec["environment"]["hostname"] = node
        return rec

    recs = []
    for r in range(5):
        recs += [on("node-a", make_record(model="m", engine="torch", repetition=r, energy_j=100.0 + r)),
                 on("node-a" if r < 3 else "node-b", make_record(model="m", engine="onnx", repetition=r,
                                                                 energy_j=50.0 + r)),
                 on("node-a", make_record(model="n", engine="torch", repetition=r, energy_j=100.0 + r)),
                 on("node-b", make_record(model="n", engine="onnx", repetition=r, energy_j=80.0 + r))]
    a = analyse([write_run(recs, tmp_path / "r")], study_csv=None)
    assert set(zip(a.mixed_hardware["model"], a.mixed_hardware["config"])) == {("m", "ONNX-CPU")}
    assert "measured on 2 machines" in a.mixed_hardware["mixed_hardware"].iloc[0]
    assert ("m", "ONNX-CPU") not in set(zip(a.medians["model"], a.medians["config"]))
    assert any("m · ONNX-CPU" in w and "2 machines" in w for w in a.warnings)
    for c in a.comparisons:  # no test holds configurations of two machines, nor the mixed one
        if not c.groups.empty and (c.name.startswith("n") or c.name.startswith("m")):
            assert len(c.groups) == 1, (c.metric, c.name, list(c.groups["config"]))
    assert {c.name for c in a.comparisons if c.metric == "duration_s" and c.scope == "model"} >= {
        "n ⟨node-a: Synthetic CPU ×2⟩", "n ⟨node-b: Synthetic CPU ×2⟩"}
    assert a.best_worst.empty or not (a.best_worst["best"] != a.best_worst["worst"]).any()  # no saving across
    assert "less energy than" not in "\n".join(headlines(a))


def test_a_run_without_any_energy_figure_renders(tmp_path):
    """Five CPU runtimes on a host without RAPL, codecarbon off (issue 22): no trial has an energy figure. The report
    used to crash in seaborn's box plot ('boxprops'), the Pareto scatter and the typical-trial trace; it renders,
    says there is no energy, compares time only and names what each energy figure leaves out."""
    recs = [make_record(model="m", engine=e, precision=p, source="unavailable", repetition=r, order_index=5 * r + i,
                        duration_s=5.0 + i + r / 10)
            for r in range(5) for i, (e, p) in enumerate((("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32"),
                                                          ("onnx", "int8"), ("llamacpp", "q4_k_m")))]
    paths = build_report([write_run(recs, tmp_path / "r")], tmp_path / "out", study_csv=None)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "NO ENERGY FIGURE" in md.split("## Headline")[0] and "class='banner mixed'>NO ENERGY FIGURE" in page
    heads = md.split("## Headline")[1].split("## Tables")[0]
    assert "less energy" not in heads and "Pareto-optimal" not in heads and "Energy figures are absent" in heads
    assert "25 trial(s) have no energy figure" in heads
    assert "left out, no energy figure: m · LLAMACPP-CPU-q4_k_m; m · ONNX-CPU" in md  # the energy table's caption
    plots = md.split("## Plots")[1]
    assert "Not drawn: no trial has a finite figure. Left out (no energy figure): m · LLAMACPP-CPU-q4_k_m" in plots
    assert "Not drawn: no configuration has both figures" in plots
    assert {p.name for p in (tmp_path / "out" / "plots").iterdir()} == {"box_time.png", "power.png"}
    assert "CPU utilisation instead" in plots  # no power series without a counter
    stats = md.split("## Statistics")[1].split("## ")[0]
    assert "duration_s" in stats and "energy_j" not in stats  # time is tested; energy is not pretended


def test_the_quality_front_stays_within_one_boundary_over_comparable_rows(tmp_path):
    """Model m: TORCH-CPU and ONNX-CPU estimated (cpu + ram), TORCH-CUDA measured on its GPU, VLLM-CPU cheaper and
    solving everything but diverging at the first token (different work). The pass@1 vs J/token front holds only the
    two CPU rows; the GPU row is alone in its boundary (no front of one), vLLM is kept out; J/token and J per solved
    task are both net: (E − 1.5 W × 10 s) over 32 tokens and over the tasks passed."""
    cells = (("torch", "cpu", 100.0, {}), ("onnx", "cpu", 80.0, {}), ("vllm", "cpu", 10.0, {"diverge": range(4),
                                                                                            "diverge_from": 0}),
             ("torch", "cuda", 20.0, {"source": "measured", "components": {"gpu:0": 1.0}, "idle_w": {"gpu:0": 1.0}}))
    recs = [make_record(model="m", engine=e, device=d, repetition=r, energy_j=j, duration_s=10.0,
                        **{"idle_w": {"cpu": 1.0, "ram": 0.5}, **kw}) for r in range(2) for e, d, j, kw in cells]
    solved = {"torch": {0, 1}, "onnx": {0}, "vllm": {0, 1, 2, 3}}
    run = write_run(recs, tmp_path / "r")
    write_evaluations(recs, run, passed=lambda rec, i: i in solved.get(rec["engine"]["name"], {0, 1, 2, 3})
                      if rec["engine"]["device"] == "cpu" else True)
    a = analyse([run], study_csv=None)
    q = quality_rows(a.quality_table).set_index("config")
    assert q.loc["TORCH-CPU", "j_per_token"] == pytest.approx(85.0 / 32)
    assert q.loc["TORCH-CPU", "j_per_solved"] == pytest.approx(85.0 / 2)
    assert q.loc["ONNX-CPU", "j_per_token"] == pytest.approx(65.0 / 32) and q.loc["ONNX-CPU", "j_per_solved"] == 65.0
    assert q.loc["TORCH-CUDA", "j_per_token"] == pytest.approx(10.0 / 32)
    assert "0 % of prompts identical" in q.loc["VLLM-CPU", "excluded"]
    assert set(q.index[q["front"]]) == {"TORCH-CPU", "ONNX-CPU"}
    heads = [h for h in headlines(a) if h.startswith("Pareto-optimal in pass@1")]
    assert heads == ["Pareto-optimal in pass@1 and net J/token (nothing solves more for less), within each model and "
                     "energy boundary: m ⟨cpu+ram (estimated)⟩: ONNX-CPU, TORCH-CPU."]
    md = build_report([run], tmp_path / "out", study_csv=None)["markdown"].read_text()
    quality = md.split("## Does it work?")[1].split("## ")[0]
    assert "| net J/token | net J per solved task |" in quality and "kept out of comparisons" in quality
    caption = next(line for line in md.splitlines() if "HumanEval pass@1 (Wilson" in line)
    assert "Left out (kept out of every comparison): m ⟨cpu+ram (estimated)⟩ · VLLM-CPU" in caption


def test_meter_flags_reach_the_report(tmp_path):
    """A window the meters flagged (here: shorter than the counter can resolve) is listed under Meter validity with
    its message, and the headline warns of it."""
    recs = [make_record(model="m", engine=e, repetition=0) for e in ("torch", "onnx")]
    recs[1]["phases"]["generate"]["flags"] = [{"code": "short-window", "component": "cpu", "message":
                                               "0.4 s window: under the 5 s the rule asks for"}]
    md = build_report([write_run(recs, tmp_path / "r")], tmp_path / "out", study_csv=None)["markdown"].read_text()
    validity = md.split("## Meter validity (1 flagged trial(s))")[1].split("## ")[0]
    assert "ONNX-CPU" in validity and "cpu short-window: 0.4 s window: under the 5 s the rule asks for" in validity
    assert "1 trial(s) carry meter-validity flags" in md
    # the method text says what NVML's counter does not see, so a reader knows what an external meter would add
    method = md.split("### What the counters measure")[1]
    assert "wall meter would add" in method and "about 25 %" in method


def test_the_agreement_table_names_each_runtime_image(tmp_path):
    """Two images of one engine (ONNX Runtime 1.17 and 1.20, both onnx · cpu · fp32): one matches the reference, the
    other diverges at the first token on every prompt. The agreement table names the runtime as well as the engine,
    so they are two rows with their own verdicts — never one onnx row that hides which image did different work."""
    images = (("onnx-cpu-1.17", {}), ("onnx-cpu-1.20", {"diverge": range(4), "diverge_from": 0}))
    recs = [make_record(model="m", engine="torch", repetition=r) for r in range(2)]
    recs += [make_record(model="m", engine="onnx", runtime=image, repetition=r, **kw)
             for r in range(2) for image, kw in images]
    run = write_run(recs, tmp_path / "r")
    md = build_report([run], tmp_path / "out", study_csv=None)["markdown"].read_text()
    section = md.split("### Agreement with the reference")[1].split("### ")[0]
    assert "| model | engine | runtime | precision |" in section
    table = pd.read_csv(tmp_path / "out" / "tables" / "agreement.csv")
    onnx = table[table["engine"] == "onnx"].set_index("runtime")
    assert sorted(onnx.index) == ["onnx-cpu-1.17", "onnx-cpu-1.20"]
    assert onnx.loc["onnx-cpu-1.17", "verdict"] == "same work"
    assert onnx.loc["onnx-cpu-1.20", "verdict"].startswith("different work: 0 % of prompts identical")
    assert list(onnx["trials"]) == [2, 2]
    rows = [line for line in section.splitlines() if line.startswith("| m | onnx |")]
    assert [row.split(" | ")[2] for row in rows] == ["onnx-cpu-1.17", "onnx-cpu-1.20"]
