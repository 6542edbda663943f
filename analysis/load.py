"""Records -> tidy tables.

``load_runs(paths)`` reads every record of one or several runs (``results/<run-id>/``: every ``**/*.json`` whose
``schema`` is ``slm-matrix.record/1`` or ``/2``) and returns a ``Tables`` with:

- ``trials``   one row per trial record (failed ones included, with their reasons), with its operating point
               (``sweep_of`` and one column per axis: batch_size, new_tokens, prompt_tokens, threads)
- ``prompts``  one row per prompt of every successful run trial
- ``energy``   one row per trial × window × component figure: source, raw joules, idle watts, net joules
- ``failures`` every failed trial and every unreadable record file, with the reason
- ``problems`` records that loaded but do not match the runner's schema (kept, flagged)
- ``series``   trial_id -> the sampled time series of the generate window (power, utilisation, memory)

Measured and estimated joules are never added together: every energy column names its source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from runners.agreement import at_first_token
from runners.record import (ENERGY_SOURCES, HOST_WINDOW, RECORD_SCHEMA_ID, RECORD_SCHEMAS, SIZE_GROUPS,  # noqa: F401
                            Record, config_label, size_group)
from runners.record import PHASES as _PHASES

PHASES = (*_PHASES, HOST_WINDOW)
SOURCES = ENERGY_SOURCES
NUMERIC_SUFFIXES = ("_j", "_s", "_b", "_kwh", "_median", "_mean", "_max", "_identical", "_per_token", "_per_token_net")
# the operating point's axes, one column each (threads_asked: None where the engine chose its own)
OPERATING_AXES = ("batch_size", "new_tokens", "prompt_tokens", "threads", "threads_asked", "power_limit_w",
                  "power_enforced_w", "gpus")
SKIP_DIRS = {"work"}  # results/<run>/work/<trial>/: the trial in flight, not yet judged by the orchestrator


@dataclass
class Tables:
    trials: pd.DataFrame
    prompts: pd.DataFrame
    energy: pd.DataFrame
    failures: pd.DataFrame
    problems: pd.DataFrame = field(default_factory=pd.DataFrame)
    series: dict[str, dict[str, list]] = field(default_factory=dict)  # trial_id -> sampled series of generate
    run_dirs: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        """Successful measured-run trials: what metrics and statistics use."""
        t = self.trials
        return t[(t["status"] == "ok") & (t["mode"] == "run")]

    def export(self, out_dir: str | Path) -> list[Path]:
        """Write every table as parquet and CSV; list columns (token ids) become JSON strings in the CSV."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("trials", "prompts", "energy", "failures", "problems"):
            df = getattr(self, name)
            df.to_parquet(out / f"{name}.parquet", index=False)
            csv = df.copy()
            for col in csv.columns:
                if csv[col].map(lambda v: isinstance(v, (list, np.ndarray))).any():
                    csv[col] = csv[col].map(lambda v: json.dumps(list(map(int, v))) if v is not None else None)
            csv.to_csv(out / f"{name}.csv", index=False)
            written += [out / f"{name}.parquet", out / f"{name}.csv"]
        return written


# --- reading ---------------------------------------------------------------------------------------------------


def iter_record_files(run_dir: Path) -> Iterable[Path]:
    """Every JSON file under the run (trials/, prepare/, or any layout), except temp files and work folders."""
    root = Path(run_dir)
    return sorted(p for p in root.rglob("*.json") if p.is_file() and not p.name.startswith(".")
                  and not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))


def _validator():
    """The runner's own record check (one compiled validator); None when the runners package is not importable."""
    try:
        from runners.record import validate_record
    except Exception:  # pragma: no cover - analysis may run on a copy of results without the runners
        return None
    return validate_record


def read_records(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, Record]], list[dict]]:
    """(run_dir, record) for every record under the given run folders, and a row per unreadable file."""
    found, unreadable = [], []
    for run_dir in map(Path, paths):
        if not run_dir.exists():
            raise FileNotFoundError(f"no run folder at {run_dir}")
        files = [run_dir] if run_dir.is_file() else iter_record_files(run_dir)
        for f in files:
            try:
                data = json.loads(f.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                # A record file the orchestrator wrote atomically should never be half-written: say so, don't skip.
                unreadable.append({"run_id": run_dir.name, "record": str(f), "status": "unreadable",
                                   "error_phase": "analysis", "error_type": type(e).__name__,
                                   "error_message": str(e)})
                continue
            if isinstance(data, dict) and data.get("schema") in RECORD_SCHEMAS:
                found.append((run_dir if run_dir.is_dir() else f.parent, Record(data, f)))
    return found, unreadable


# --- one record -> rows ------------------------------------------------------------------------------------------


def _identity(r: Record, run_dir: Path, problem: str | None) -> dict[str, Any]:
    """What the trial was: its run, configuration, model, work, machine and bookkeeping."""
    t, err = r.trial, r.error or {}
    return {
        "run_id": r.run_id or run_dir.name, "trial_id": r.trial_id, "cell_id": t.get("cell_id"),
        "record": str(r.path), "mode": r.data.get("mode"), "status": r.status,
        "error_phase": err.get("phase"), "error_type": err.get("type"), "error_message": err.get("message"),
        "schema_problem": problem,
        "model": r.model_name, "hf_id": r.hub_id, "architecture": r.architecture, "model_params_b": r.params_b,
        "size_group": r.size_group,
        "engine": r.engine_name or "?", "device": r.device or "?", "precision": r.precision,
        "runtime": r.runtime, "provider": r.provider, "config": r.config, "setting": r.setting,
        "batch": r.generation.get("batch_size"), "new_tokens_budget": r.generation.get("new_tokens"),
        # the operating point (issue 24): the sweep it belongs to, its axis values (the job's where not swept)
        "sweep_of": r.sweep_of, "swept_axes": ",".join(r.swept_axes) or None, **r.operating_point(),
        # the GPU power cap it ran under (None: uncapped): asked, and the least any of its GPUs enforced
        "power_limit_w": r.power_cap.get("requested_w"),
        "power_enforced_w": min((g["enforced_w"] for g in r.power_cap.get("gpus") or () if g.get("enforced_w")),
                                default=None),
        # the GPUs it ran on (a CUDA job without the field had one; None: a CPU trial)
        "gpus": r.job.get("gpus", 1) if r.device == "cuda" else None,
        "work": r.work, "repetition": r.repetition, "order_index": t.get("order_index"),
        "matrix_name": t.get("matrix_name"), "seed": t.get("seed"), "matrix_hash": t.get("matrix_hash"),
        "dataset": r.loaded_workload.get("dataset"), "workload_seed": r.loaded_workload.get("seed"),
        "prompts": r.tokens.get("prompts"), "batches": r.tokens.get("batches"),
        "tokens_input": r.tokens.get("input"), "tokens_output": r.tokens.get("output"),
        "co2_intensity_g_per_kwh": r.co2.get("intensity_g_per_kwh"), "co2_source": r.co2.get("source"),
        "agreement_reference": r.agreement.get("reference"),
        "agreement_share_identical": r.agreement.get("share_identical"),
        "batch_invariance": r.batch_invariance,
        "hostname": r.environment.get("hostname"), "cpu_model": r.environment.get("cpu_model"),
        "machine": r.machine(), "hardware": r.hardware(), "gpu_model": r.gpu_model,
        "image": r.environment.get("image"), "runner_version": r.environment.get("runner_version"),
        "created_unix": r.data.get("created_unix"),
    }


def _energy_columns(r: Record) -> dict[str, Any]:
    """Per window: its duration and, per source, raw and net joules; the generate window's headline and boundary."""
    row: dict[str, Any] = {"idle_origin": "+".join(sorted({i.origin for i in r.idle_power().values()})) or None}
    for phase in PHASES:
        prefix = "" if phase == "generate" else f"{phase}_"
        e = r.energy(phase)
        row[f"{phase}_duration_s"] = e.duration_s if e else None
        for source in SOURCES:
            row[f"{prefix}energy_{source}_j"] = getattr(e, f"{source}_j") if e else None
            row[f"{prefix}net_energy_{source}_j"] = getattr(e, f"net_{source}_j") if e else None
            if phase == "generate":
                row[f"energy_{source}_components"] = getattr(e, f"{source}_components") if e else None
    gen = r.energy("generate")
    row["duration_s"] = row["generate_duration_s"]
    # The headline figure (Energy: measured where the record has it, otherwise estimated — never their sum) and its
    # boundary: what it covers and how. Only rows of one boundary are ever compared.
    row.update(energy_source=gen.source if gen else None, energy_j=gen.joules if gen else None,
               net_energy_j=gen.net_joules if gen else None, energy_components=gen.components if gen else None,
               energy_boundary=gen.boundary if gen else None, boundary_error_j=gen.boundary_error_j if gen else None,
               # an invalid figure makes the headline no figure (NaN): kept out of statistics and comparisons
               energy_invalid=gen.invalid if gen else None)
    row["j_per_token"], row["j_per_token_net"] = r.headline_per_token()
    prep = r.preparation()
    row["prepare_cached"] = prep.cached
    row["prepare_conversion"] = prep.conversion
    return row


def trial_row(r: Record, run_dir: Path, problem: str | None = None) -> dict[str, Any]:
    row = _identity(r, run_dir, problem)
    row.update(_energy_columns(r))
    row["meter_flags"] = "; ".join(f"{f.get('component') or 'all'} {f.get('code')}: {f.get('message')}"
                                   for f in r.meter_flags()) or None
    a = r.agreement
    row["agreement_status"] = a.get("status") or ("compared" if a.get("prompts") else None)
    row["agreement_note"] = a.get("reason")
    row["agreement_at_first_token"] = at_first_token(a.get("first_divergence"))
    # prompts that were another input than the reference's (other ids, another length): read by the one verdict
    row["agreement_other_inputs"] = len(a.get("other_prompt_ids") or ())
    m = r.metrics()
    for key in ("latency_s", "ttft_s", "tpot_s"):
        row[f"{key}_median"] = m.median(key)
    row["latency_s_mean"] = m.latency_per_prompt_mean_s
    for metric, s in r.samples_summary("generate").items():
        for stat in ("mean", "max"):
            if isinstance(s.get(stat), (int, float)):
                row[f"sampled_{metric}_{stat}"] = float(s[stat])
    return row


def prompt_rows(r: Record, trial: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("run_id", "trial_id", "model", "config", "runtime", "precision", "batch", "repetition")
    base = {k: trial[k] for k in keys}
    return [{**base, "index": p.get("index"), "task_id": p.get("task_id"), "batch_index": p.get("batch"),
             "prompt_tokens": p.get("prompt_tokens"), "generated_tokens": p.get("generated_tokens"),
             "latency_s": p.get("latency_s"), "ttft_s": p.get("ttft_s"), "tpot_s": p.get("tpot_s"),
             "output_ids": [int(i) for i in p.get("output_ids") or []]} for p in r.per_prompt]


def energy_rows(r: Record, trial: dict[str, Any]) -> list[dict[str, Any]]:
    base = {k: trial[k] for k in ("run_id", "trial_id", "model", "config", "repetition", "status")}
    return [{**base, **f} for f in r.figures()]


# --- tables ------------------------------------------------------------------------------------------------------


def _disambiguate_configs(trials: pd.DataFrame) -> pd.DataFrame:
    """Two runtimes with the same engine × device × precision (e.g. two CUDA builds), or two matrix settings of it
    (e.g. batch 1 and batch 8), must not merge into one configuration: their labels get the runtime (image folder)
    or the setting appended."""
    if trials.empty:
        return trials
    for key in ("runtime", "setting"):
        n = trials.groupby("config")[key].nunique()  # missing values (prepare records have no setting) don't count
        mask = trials["config"].isin(n[n > 1].index) & trials[key].notna()
        trials.loc[mask, "config"] = trials.loc[mask, "config"] + "[" + trials.loc[mask, key] + "]"
    return trials


def _agreement_as_now(found: list[tuple[Path, Record]]) -> None:
    """Every run's agreement as the orchestrator's pass computes it today (runners.agreement.attach_all with the
    run's [agreement] policy), in memory: records written before a fix of that computation (e.g. prompts of another
    length skipped as unmatched) are judged as the orchestrator judges them, never by what they stored."""
    from analysis.metrics import agreement_spec
    from runners.agreement import attach_all

    runs: dict[Path, dict[str, dict]] = {}
    for run_dir, r in found:  # keyed as the orchestrator keys them (a trial's id), so "reference" reads alike
        records = runs.setdefault(run_dir, {})
        records[r.trial_id if r.trial_id not in records else str(r.path)] = r.data
    for run_dir, records in runs.items():
        attach_all(records, agreement_spec([run_dir]))


def load_runs(paths: Iterable[str | Path] | str | Path, *, validate: bool = True) -> Tables:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    found, unreadable = read_records(paths)
    _agreement_as_now(found)
    check = _validator() if validate else None
    trials, prompts, energy, problems, series = [], [], [], [], {}
    for run_dir, r in found:
        problem = None
        if check is not None and r.schema == RECORD_SCHEMA_ID:  # older records: the schema of their day
            try:
                check(r.data)
            except Exception as e:  # jsonschema.ValidationError: keep the record, flag it
                problem = str(getattr(e, "message", e))[:300]
                problems.append({"record": str(r.path), "problem": problem})
        row = trial_row(r, run_dir, problem)
        trials.append(row)
        energy += energy_rows(r, row)
        if r.is_ok:
            prompts += prompt_rows(r, row)
            if r.series("generate"):
                series[row["trial_id"]] = r.series("generate")
    tdf = pd.DataFrame(trials)
    for col in tdf.columns:  # a figure missing in every record is still a number column (NaN), not an object one
        if col.endswith(NUMERIC_SUFFIXES):
            tdf[col] = pd.to_numeric(tdf[col], errors="coerce").astype(float)
    for col in OPERATING_AXES:  # an axis no record knows is NaN, never an object column of Nones
        if col in tdf:
            tdf[col] = pd.to_numeric(tdf[col], errors="coerce").astype(float)
    if not tdf.empty:
        tdf = _disambiguate_configs(tdf).sort_values(["run_id", "model", "config", "repetition"],
                                                     na_position="last").reset_index(drop=True)
        labels = tdf.set_index("trial_id")["config"]
    pdf = pd.DataFrame(prompts)
    edf = pd.DataFrame(energy)
    for df in (pdf, edf):  # carry the disambiguated labels over
        if not df.empty:
            df["config"] = df["trial_id"].map(labels)
    fail_cols = ["run_id", "trial_id", "mode", "model", "config", "repetition", "record", "status", "error_phase",
                 "error_type", "error_message"]
    failed = tdf[tdf["status"] != "ok"].reindex(columns=fail_cols) if not tdf.empty else pd.DataFrame(columns=fail_cols)
    failures = failed.reset_index(drop=True)
    if unreadable:
        failures = pd.concat([failures, pd.DataFrame(unreadable, columns=fail_cols)], ignore_index=True)
    return Tables(trials=tdf, prompts=pdf, energy=edf, failures=failures,
                  problems=pd.DataFrame(problems, columns=["record", "problem"]), series=series, run_dirs=paths)
