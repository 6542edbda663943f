"""Records -> tidy tables.

``load_runs(paths)`` reads every record of one or several runs (``results/<run-id>/``: every ``**/*.json`` whose
``schema`` is ``slm-matrix.record/1`` or ``/2``) and returns a ``Tables`` with:

- ``trials``   one row per trial record (failed ones included, with their reasons)
- ``prompts``  one row per prompt of every successful run trial
- ``energy``   one row per trial × window × component figure: source, raw joules, idle watts, net joules
- ``failures`` every failed trial and every unreadable record file, with the reason
- ``problems`` records that loaded but do not match the runner's schema (kept, flagged)
- ``series``   trial_id -> the sampled time series of the generate window (power, utilisation, memory)

Measured and estimated joules are never added together: every energy column names its source.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from runners.agreement import at_first_token
from runners.job import work_label

RECORD_SCHEMA_ID = "slm-matrix.record/2"
# /1 records (no monotonic window marks, no boundary field) still load: their boundary is derived from the figures
RECORD_SCHEMAS = ("slm-matrix.record/1", RECORD_SCHEMA_ID)
PHASES = ("prepare", "load", "compile", "warmup", "generate")
SOURCES = ("measured", "estimated")
SIZE_GROUPS = ("<1B", "1B–2B", "≥2B")  # the study's groups, spelt as orchestrator/matrix.py spells them
NUMERIC_SUFFIXES = ("_j", "_s", "_b", "_kwh", "_median", "_mean", "_max", "_identical")
SKIP_DIRS = {"work"}  # results/<run>/work/<trial>/: the trial in flight, not yet judged by the orchestrator
# Engine names as the study labels them (it says OV for OpenVINO).
ENGINE_ALIASES = {"openvino": "ov", "pytorch": "torch", "onnxruntime": "onnx", "ort": "onnx", "torchscript": "jit"}


def config_label(engine: str, device: str, precision: str | None = "fp32") -> str:
    """The configuration label: engine × device × precision, e.g. ``TORCH-CUDA`` (fp32, as the study writes it) or
    ``ONNX-CPU-int8``."""
    e = ENGINE_ALIASES.get(str(engine).lower(), str(engine).lower()).upper()
    label = f"{e}-{str(device).upper()}"
    if precision and str(precision).lower() != "fp32":
        label += f"-{precision}"
    return label


def size_group(params_b: float | None) -> str | None:
    """The study's size groups: <1B, 1B–2B, ≥2B (parameters in billions)."""
    if params_b is None or (isinstance(params_b, float) and math.isnan(params_b)):
        return None
    if params_b < 1.0:
        return SIZE_GROUPS[0]
    if params_b < 2.0:
        return SIZE_GROUPS[1]
    return SIZE_GROUPS[2]


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


def read_records(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, Path, dict]], list[dict]]:
    """(run_dir, file, record) for every record under the given run folders, and a row per unreadable file."""
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
                found.append((run_dir if run_dir.is_dir() else f.parent, f, data))
    return found, unreadable


# --- one record -> rows ------------------------------------------------------------------------------------------


def _get(d: Any, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return default
        d = d[k]
    return d


def hardware_label(env: dict, device: str | None) -> str:
    """The machine a trial was measured on: node and CPU, and for a CUDA trial (device "cuda") its GPUs by serial
    (else UUID). Two machines of one model still differ (chip to chip, cooling): repetitions are one sample only from
    one machine, and configurations are compared only on one machine."""
    label = f"{env.get('hostname') or '?'}: {env.get('cpu_model') or '?'} ×{env.get('cpu_count') or '?'}"
    if device == "cuda":
        gpus = [g for g in env.get("gpus") or [] if isinstance(g, dict)]
        label += "; " + (", ".join(f"{g.get('name')} #{g.get('serial') or g.get('uuid') or g.get('index')}"
                                   for g in gpus) or "GPU ?")
    return label


def idle_power(record: dict) -> dict[str, dict[str, Any]]:
    """component -> {watts, source, origin}: the runner's own idle baseline first, the host's for the rest."""
    out: dict[str, dict[str, Any]] = {}
    for origin, idle in (("runner", record.get("idle")), ("host", _get(record, "host", "idle"))):
        for p in (idle or {}).get("power") or []:
            if p.get("watts") is None or p.get("component") in out:
                continue
            out[p["component"]] = {"watts": float(p["watts"]), "source": p.get("source"), "origin": origin}
    return out


def window_energy(window: dict, idle: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Raw and idle-subtracted energy of one window, per source kind.

    net = raw − Σ idle_W × duration over the window's components of that source; it is None unless every component
    has an idle figure of the same source kind (a partial subtraction would mix baselines)."""
    duration = float(window.get("duration_s") or 0.0)
    out: dict[str, Any] = {"duration_s": duration}
    # a figure the meters marked invalid (read error, trace gap, reset, impossible rise) makes the window no figure
    invalid = [f for f in window.get("energy") or [] if f.get("valid") is False]
    out["invalid"] = "; ".join(f"{f.get('component')}: {f.get('invalid_reason')}" for f in invalid) or None
    for source in SOURCES:
        figs = [f for f in window.get("energy") or [] if f.get("source") == source and f.get("joules") is not None]
        raw = _get(window, "energy_total", f"{source}_j")
        if raw is None and figs:
            raw = float(sum(f["joules"] for f in figs))
        net = None
        if raw is not None and figs:
            idles = [idle.get(f["component"]) for f in figs]
            if all(i is not None and i["source"] == source for i in idles):
                net = float(raw) - sum(i["watts"] for i in idles) * duration
        out[f"{source}_j"] = None if raw is None or invalid else float(raw)
        out[f"net_{source}_j"] = None if invalid else net
        out[f"{source}_components"] = "+".join(sorted(f["component"] for f in figs)) or None
    return out


def _windows(record: dict) -> dict[str, dict]:
    wins = {p: w for p, w in (record.get("phases") or {}).items() if isinstance(w, dict)}
    host_container = _get(record, "host", "container")
    if isinstance(host_container, dict) and "duration_s" in host_container:
        wins["host_container"] = host_container  # the orchestrator's window around the whole container
    if _get(record, "engine", "device") == "cpu":
        # A CPU trial never counts a GPU (older records summed the idle GPUs of the host into its "measured" energy)
        wins = {p: _without_gpus(w) for p, w in wins.items()}
    return wins


def _without_gpus(window: dict) -> dict:
    figures = [f for f in window.get("energy") or [] if not str(f.get("component", "")).startswith("gpu")]
    if len(figures) == len(window.get("energy") or []):
        return window
    return {**window, "energy": figures, "energy_total": None}  # totals re-summed from the figures that remain


def _summary_columns(window: dict | None) -> dict[str, float]:
    """Sampler summary of the generate window (utilisation, memory, power, temperature), flattened."""
    out = {}
    for metric, s in (_get(window, "samples", "summary") or {}).items():
        if not isinstance(s, dict):
            continue
        for stat in ("mean", "max"):
            if isinstance(s.get(stat), (int, float)):
                out[f"sampled_{metric}_{stat}"] = float(s[stat])
    return out


def trial_row(record: dict, path: Path, run_dir: Path, problem: str | None = None) -> dict[str, Any]:
    trial = record.get("trial") or {}
    engine = record.get("engine") or {}
    model = record.get("model") or {}
    job = record.get("job") or {}
    env = record.get("environment") or {}
    err = record.get("error") or {}
    params_b = trial.get("model_params_b")
    if params_b is None and model.get("parameters"):
        params_b = model["parameters"] / 1e9
    precision = engine.get("precision") or job.get("precision") or "fp32"
    device = engine.get("device") or job.get("device") or "?"
    engine_name = engine.get("name") or job.get("engine") or trial.get("engine") or "?"
    gpus = env.get("gpus") or []
    row: dict[str, Any] = {
        "run_id": trial.get("run_id") or run_dir.name,
        "trial_id": trial.get("trial_id") or path.stem,
        "cell_id": trial.get("cell_id"),
        "record": str(path),
        "mode": record.get("mode"),
        "status": record.get("status"),
        "error_phase": err.get("phase"), "error_type": err.get("type"), "error_message": err.get("message"),
        "schema_problem": problem,
        "model": model.get("name") or _get(job, "model", "name") or trial.get("model"),
        "hf_id": model.get("hub_id"),
        "architecture": model.get("architecture"),
        "model_params_b": None if params_b is None else float(params_b),
        "size_group": trial.get("size_group") or size_group(params_b),  # the matrix may set the group
        "engine": engine_name, "device": device, "precision": precision,
        "runtime": trial.get("runtime") or f"{engine_name}-{device}",
        "provider": _get(engine, "details", "provider") or device,
        "config": config_label(engine_name, device, precision),
        "setting": trial.get("setting"),
        "batch": _get(job, "generation", "batch_size"),
        "new_tokens_budget": _get(job, "generation", "new_tokens"),
        "work": work_label(job.get("generation") or {}),
        "repetition": trial.get("repetition"), "order_index": trial.get("order_index"),
        "matrix_name": trial.get("matrix_name"),
        "seed": trial.get("seed"), "matrix_hash": trial.get("matrix_hash"),
        "dataset": _get(record, "workload", "dataset"), "workload_seed": _get(record, "workload", "seed"),
        "prompts": _get(record, "tokens", "prompts"), "batches": _get(record, "tokens", "batches"),
        "tokens_input": _get(record, "tokens", "input"), "tokens_output": _get(record, "tokens", "output"),
        "co2_intensity_g_per_kwh": _get(record, "co2", "intensity_g_per_kwh"),
        "co2_source": _get(record, "co2", "source"),
        "agreement_reference": _get(record, "agreement", "reference"),
        "agreement_share_identical": _get(record, "agreement", "share_identical"),
        "hostname": env.get("hostname"), "cpu_model": env.get("cpu_model"),
        "machine": hardware_label(env, None), "hardware": hardware_label(env, device),
        "gpu_model": (gpus[0].get("name") if gpus and isinstance(gpus[0], dict) else (gpus[0] if gpus else None)),
        "image": env.get("image"), "runner_version": env.get("runner_version"),
        "created_unix": record.get("created_unix"),
    }
    idle = idle_power(record)
    row["idle_origin"] = "+".join(sorted({i["origin"] for i in idle.values()})) or None
    wins = _windows(record)
    for phase in (*PHASES, "host_container"):
        prefix = "" if phase == "generate" else f"{phase}_"
        w = wins.get(phase)
        e = window_energy(w, idle) if w else {}
        row[f"{phase}_duration_s"] = e.get("duration_s")
        for source in SOURCES:
            row[f"{prefix}energy_{source}_j"] = e.get(f"{source}_j")
            row[f"{prefix}net_energy_{source}_j"] = e.get(f"net_{source}_j")
            if phase == "generate":
                row[f"energy_{source}_components"] = e.get(f"{source}_components")
    prep_info = _get(wins.get("prepare"), "info") or {}
    row["prepare_cached"] = prep_info.get("cached")  # True: the conversion existed already (its cost was paid before)
    # what made the artifact: llama.cpp names its step ("conversion"); the optimum exporters name their tool
    row["prepare_conversion"] = prep_info.get("conversion") or _get(prep_info.get("exporter"), "tool")
    row["duration_s"] = row["generate_duration_s"]
    # The headline figure: measured where the record has it, otherwise estimated — never their sum.
    source = next((s for s in SOURCES if row[f"energy_{s}_j"] is not None), None)
    row["energy_source"] = source
    row["energy_j"] = row[f"energy_{source}_j"] if source else None
    row["net_energy_j"] = row[f"net_energy_{source}_j"] if source else None
    row["energy_components"] = row[f"energy_{source}_components"] if source else None
    # The figure's boundary: what it covers and how. Only rows of one boundary are ever compared.
    row["energy_boundary"] = f"{row['energy_components']} ({source})" if source else None
    gen = wins.get("generate") or {}
    errors = [f["boundary_error_j"] for f in gen.get("energy") or []
              if f.get("source") == "measured" and f.get("boundary_error_j") is not None]
    row["boundary_error_j"] = sum(errors) if errors else _get(gen, "host_metered", "boundary_error_j")
    invalid = window_energy(gen, idle).get("invalid") if gen else None
    row["energy_invalid"] = invalid  # the headline is then no figure (NaN): kept out of statistics and comparisons
    flags = [*(gen.get("flags") or []), *(_get(record, "idle", "flags") or []),
             *(_get(record, "host", "idle", "flags") or [])]
    if invalid and not any(f.get("code") == "invalid-figure" for f in flags):
        flags.append({"code": "invalid-figure", "component": None, "message": invalid})
    row["meter_flags"] = "; ".join(f"{f.get('component') or 'all'} {f.get('code')}: {f.get('message')}"
                                   for f in flags) or None
    agreement = record.get("agreement") or {}
    row["agreement_status"] = agreement.get("status") or ("compared" if agreement.get("prompts") else None)
    row["agreement_note"] = agreement.get("reason")
    row["agreement_at_first_token"] = at_first_token(agreement.get("first_divergence"))
    # prompts that were another input than the reference's (other ids, another length): read by the one verdict
    row["agreement_other_inputs"] = len(agreement.get("other_prompt_ids") or ())
    pp = record.get("per_prompt") or []
    # Latency and TTFT belong to a batch (every prompt of it shares them): count each batch once, as the runner does.
    first_of_batch = list({p.get("batch"): p for p in pp}.values())
    for key, rows in (("latency_s", first_of_batch), ("ttft_s", first_of_batch), ("tpot_s", pp)):
        vals = [p[key] for p in rows if p.get(key) is not None]
        row[f"{key}_median"] = float(np.median(vals)) if vals else None
    # per inference: each prompt's latency (its batch's), for the per-inference EDP
    lat = [p["latency_s"] for p in pp if p.get("latency_s") is not None]
    row["latency_s_mean"] = float(np.mean(lat)) if lat else None
    row.update(_summary_columns(wins.get("generate")))
    return row


def prompt_rows(record: dict, trial: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("run_id", "trial_id", "model", "config", "runtime", "precision", "batch", "repetition")
    base = {k: trial[k] for k in keys}
    rows = []
    for p in record.get("per_prompt") or []:
        ids = [int(i) for i in p.get("output_ids") or []]
        rows.append({**base, "index": p.get("index"), "task_id": p.get("task_id"), "batch_index": p.get("batch"),
                     "prompt_tokens": p.get("prompt_tokens"),
                     "generated_tokens": p.get("generated_tokens", p.get("new_tokens")),  # /1 records: new_tokens
                     "latency_s": p.get("latency_s"), "ttft_s": p.get("ttft_s"), "tpot_s": p.get("tpot_s"),
                     "output_ids": ids})
    return rows


def energy_rows(record: dict, trial: dict[str, Any]) -> list[dict[str, Any]]:
    idle = idle_power(record)
    base = {k: trial[k] for k in ("run_id", "trial_id", "model", "config", "repetition", "status")}
    rows = []
    for phase, w in _windows(record).items():
        duration = float(w.get("duration_s") or 0.0)
        for f in w.get("energy") or []:
            i = idle.get(f.get("component"))
            valid = f.get("valid") is not False
            same = i is not None and i["source"] == f.get("source") and f.get("joules") is not None and valid
            rows.append({**base, "phase": phase, "component": f.get("component"), "source": f.get("source"),
                         "meter": f.get("meter"), "reason": f.get("reason"), "duration_s": duration,
                         "joules": f.get("joules") if valid else None, "invalid_reason": f.get("invalid_reason"),
                         "idle_w": i["watts"] if same else None,
                         "idle_origin": i["origin"] if same else None,
                         "net_joules": f["joules"] - i["watts"] * duration if same else None})
    return rows


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


def _agreement_as_now(found: list[tuple[Path, Path, dict]]) -> None:
    """Every run's agreement as the orchestrator's pass computes it today (runners.agreement.attach_all with the
    run's [agreement] policy), in memory: records written before a fix of that computation (e.g. prompts of another
    length skipped as unmatched) are judged as the orchestrator judges them, never by what they stored."""
    from analysis.metrics import agreement_spec
    from runners.agreement import attach_all

    runs: dict[Path, dict[str, dict]] = {}
    for run_dir, path, rec in found:  # keyed as the orchestrator keys them (a trial's id), so "reference" reads alike
        records = runs.setdefault(run_dir, {})
        key = (rec.get("trial") or {}).get("trial_id") or path.stem
        records[key if key not in records else str(path)] = rec
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
    for run_dir, path, rec in found:
        problem = None
        if check is not None and rec.get("schema") == RECORD_SCHEMA_ID:  # older records: the schema of their day
            try:
                check(rec)
            except Exception as e:  # jsonschema.ValidationError: keep the record, flag it
                problem = str(getattr(e, "message", e))[:300]
                problems.append({"record": str(path), "problem": problem})
        row = trial_row(rec, path, run_dir, problem)
        trials.append(row)
        energy += energy_rows(rec, row)
        if row["status"] == "ok":
            prompts += prompt_rows(rec, row)
            sampled = _get(rec, "phases", "generate", "samples", "series")
            if isinstance(sampled, dict) and sampled.get("t_s"):
                series[row["trial_id"]] = sampled
    tdf = pd.DataFrame(trials)
    for col in tdf.columns:  # a figure missing in every record is still a number column (NaN), not an object one
        if col.endswith(NUMERIC_SUFFIXES):
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
