"""What the report says, computed: the tables of the runs, their metrics, statistics, savings, the study's figures,
pass@1 and the warnings — everything ``analysis.report`` renders, nothing about how it is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.families import families
from analysis.load import Tables, load_runs
from analysis.metrics import (add_metrics, agreement_spec, comparison_groups, flag_different_output,
                              flag_mixed_hardware, model_config_medians, with_agreement)
from analysis.operating_points import OperatingPoints, applies, operating_points
from analysis.quality import add_quality, load_evaluations, paired_vs_reference, quality_table
from analysis.report_reproduction import load as load_reproductions
from analysis.stats import MIN_N_TEST, Comparison, run_statistics, savings_best_worst, savings_matrix, savings_pair
from analysis.study import DEFAULT_STUDY_CSV, STUDY_PAIR, compare_with_study, headline, our_medians, read_medians
from runners.agreement import ReferencePolicy

DEFAULT_PAIRS = (STUDY_PAIR, ("TORCH-CPU", "ONNX-CPU"))


@dataclass
class Analysis:
    tables: Tables
    ok: pd.DataFrame
    medians: pd.DataFrame
    comparisons: list[Comparison]
    best_worst: pd.DataFrame
    pairs: dict[tuple[str, str], pd.DataFrame]
    savings_matrix: pd.DataFrame
    study: dict | None = None  # the study's headline recomputed from its medians
    study_comparison: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)
    min_n: int = MIN_N_TEST
    # HumanEval evaluations (orchestrate.py evaluate): per trial, per model × configuration, paired vs the reference
    quality: pd.DataFrame = field(default_factory=pd.DataFrame)
    quality_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    quality_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    # trials of configurations that did not do the reference's work (kept out of every comparison), and the rule
    different: pd.DataFrame = field(default_factory=pd.DataFrame)
    agreement: ReferencePolicy = field(default_factory=ReferencePolicy)  # the run's reference policy (run.json)
    # trials of configurations whose repetitions came from more than one machine (kept out of every comparison)
    mixed_hardware: pd.DataFrame = field(default_factory=pd.DataFrame)
    # the curves against batch size and the other axes (analysis/operating_points.py); None without a sweep
    operating: OperatingPoints | None = None
    reproductions: list = field(default_factory=list)  # reproduction.json of a reproduce run
    families: pd.DataFrame = field(default_factory=pd.DataFrame)  # engines of one runtime library compared

    @property
    def sources(self) -> list[str]:
        return sorted(set(self.ok["energy_source"].dropna()))

    @property
    def every(self) -> pd.DataFrame:
        """Every successful trial: those compared and those kept out (different work, several machines)."""
        parts = [p for p in (self.ok, self.different, self.mixed_hardware) if not p.empty]
        return pd.concat(parts, ignore_index=True) if parts else self.ok


def analyse(run_dirs, *, study_csv: str | Path | None = DEFAULT_STUDY_CSV, pairs=DEFAULT_PAIRS,
            min_n: int = MIN_N_TEST, seed: int = 0) -> Analysis:
    tables = load_runs(run_dirs)
    if tables.trials.empty:
        raise ValueError(f"no records (schema slm-matrix.record/1 or /2) under {', '.join(map(str, tables.run_dirs))}")
    spec = agreement_spec(tables.run_dirs)
    every = flag_mixed_hardware(flag_different_output(comparison_groups(with_agreement(add_metrics(tables.ok))), spec))
    # Different work is never compared as the same work: such configurations stay out of statistics, savings,
    # winners, Pareto fronts and headlines (listed apart, with the reason); nor are repetitions from several machines
    different = every[every["different_output"].notna()] if not every.empty else every
    mixed = every[every["different_output"].isna() & every["mixed_hardware"].notna()] if not every.empty else every
    ok = every[every["different_output"].isna() & every["mixed_hardware"].isna()] if not every.empty else every
    medians = model_config_medians(ok) if not ok.empty else pd.DataFrame()
    metrics = [m for m in ("energy_j", "net_energy_j", "duration_s") if not ok.empty and ok[m].notna().any()]
    # a group with no finite figure (no energy counter) is no comparison, not "one configuration"
    comparisons = [c for c in run_statistics(ok, metrics, min_n=min_n, seed=seed) if not c.groups.empty]
    a = Analysis(tables=tables, ok=ok, medians=medians, comparisons=comparisons,
                 best_worst=savings_best_worst(medians, "energy_j", by="group") if not medians.empty
                 else pd.DataFrame(),
                 pairs={p: savings_pair(medians, *p, "energy_j", by="group") for p in pairs} if not medians.empty
                 else {},
                 savings_matrix=savings_matrix(medians, "energy_j", by="group") if not medians.empty
                 else pd.DataFrame(),
                 min_n=min_n, different=different, agreement=spec, mixed_hardware=mixed)
    if study_csv is not None and Path(study_csv).is_file():
        study = read_medians(study_csv)
        a.study = headline(study)
        a.study_comparison = compare_with_study(our_medians(ok), study) if not ok.empty else None
    if applies(tables.trials[tables.trials["mode"] == "run"]):
        a.operating = operating_points(ok)
    a.reproductions = load_reproductions(tables.run_dirs)
    a.families = families(ok, seed=seed)
    evaluations, eval_tasks = load_evaluations(tables.run_dirs)
    if not evaluations.empty:
        a.quality = add_quality(every, evaluations)  # whether answers work is shown for every configuration
        a.quality_table = quality_table(a.quality)
        a.quality_pairs = paired_vs_reference(a.quality, eval_tasks, spec)  # the run's [agreement] policy
    a.warnings = _warnings(a)
    return a


def _warnings(a: Analysis) -> list[str]:
    out = []
    ok = a.ok
    if not a.mixed_hardware.empty:
        for (model, config), g in a.mixed_hardware.groupby(["model", "config"]):
            out.append(f"{model} · {config}: {g['mixed_hardware'].iloc[0]} — kept out of every test, saving and "
                       "headline; run a model's repetitions on one machine (orchestrate.py submit keeps models whole "
                       "per node).")
    if not a.tables.problems.empty:
        out.append(f"{len(a.tables.problems)} record(s) do not match the runner's schema (listed under Failures).")
    if ok.empty:
        return out + ["No successful trial: nothing to measure."]
    cuda_cpu = ok[(ok["device"] == "cuda") & ok["provider"].astype(str).str.contains("CPU", case=False)]
    for cfg, provider in cuda_cpu.groupby("config")["provider"].first().items():
        out.append(f"{cfg}: asked for CUDA but the provider was {provider} — the runtime fell back to the CPU.")
    work = ok.groupby("model")[["prompts", "tokens_output"]].nunique()
    for model in work[(work > 1).any(axis=1)].index:
        out.append(f"{model}: configurations ran different workloads (prompt or token counts differ).")
    nonpositive = ok[pd.to_numeric(ok["net_energy_j"], errors="coerce") <= 0]
    if len(nonpositive):
        kinds = "+".join(sorted(set(nonpositive["energy_source"].dropna())))
        out.append(f"{len(nonpositive)} trial(s) have net energy ≤ 0 ({kinds}): the idle baseline draws as much "
                   "power as the work does" + (" — an estimate that barely tells load from idle; compare raw energy "
                   "and time instead." if kinds == "estimated" else "."))
    flagged = ok[ok["meter_flags"].notna()] if "meter_flags" in ok else ok.iloc[:0]
    if len(flagged):
        out.append(f"{len(flagged)} trial(s) carry meter-validity flags (short windows, counters the meters could "
                   "not trust, host trace problems): listed under Meter validity.")
    none = ok[ok["energy_j"].isna()].groupby(["model", "config"]).size()
    if len(none):
        which = "; ".join(f"{m} · {c}" for m, c in none.index)
        out.append(f"{int(none.sum())} trial(s) have no energy figure ({which}): left out of every energy table, plot, "
                   "saving and test; their time and output are shown.")
    missing_net = ok[ok["net_energy_j"].isna() & ok["energy_j"].notna()]
    if len(missing_net):
        out.append(f"{len(missing_net)} trial(s) have no idle baseline for every component of their energy source:"
                   " their net energy is missing (raw kept).")
    return out
