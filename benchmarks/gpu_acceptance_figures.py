"""The GPU acceptance kit's outputs: one row per run × model × engine × device × precision from the records, the goals,
the printed table and the archive of every record. See benchmarks/gpu_acceptance.py.
"""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path
from typing import Any

WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}  # bytes per parameter read per decode step
GOALS = {"bandwidth_fraction_min": 0.70, "energy_cv_max": 0.02}


def _cv(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var) / mean if mean else None


def _median(values: list[float]) -> float | None:
    vals = sorted(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v)))
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def rows_from(results: Path, runs: list[str], bw: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict]]:
    """One row per run × model × engine × device × precision × batch size, from the records of the kit's runs."""
    from analysis.load import load_runs
    from analysis.metrics import add_metrics
    from runners.agreement import ReferencePolicy, attach_all
    from runners.record import Record

    dirs = [results / r for r in runs if (results / r).is_dir()]
    if not dirs:
        return [], []
    try:  # the schema check needs jsonschema, which a bare GPU host may lack: then records load unchecked
        import jsonschema  # noqa: F401
        validate = True
    except ImportError:
        validate = False
    tables = load_runs(dirs, validate=validate)
    trials = add_metrics(tables.trials)
    # agreement over all the kit's runs together (compile is a run of its own): the same function as a matrix run
    records = {str(p): json.loads(Path(p).read_text()) for p in trials["record"]}
    attach_all(records, ReferencePolicy(devices=("cuda", "cpu")))
    out = []
    keys = ["run_id", "model", "engine", "device", "precision", "batch_size"]
    runs_ = trials[trials["mode"] == "run"].assign(batch_size=lambda t: t["batch_size"].fillna(1).astype(int))
    for key, g in runs_.groupby(keys, sort=True):
        ok = g[g["status"] == "ok"]
        recs = [Record(records[p]) for p in ok["record"]]
        row = dict(zip(keys, key))
        row["batch_size"] = int(row["batch_size"])
        row.update({"trials": len(g), "ok": len(ok), "failed": int((g["status"] == "failed").sum()),
                    "errors": sorted({f"{t}: {m}"[:300] for t, m in zip(g["error_type"], g["error_message"])
                                      if isinstance(t, str)})})
        if ok.empty:
            out.append(row)
            continue
        exact = all(p.get("generated_tokens") == r.generation.get("new_tokens") for r in recs for p in r.per_prompt)
        shares = [r.agreement.get("share_identical") for r in recs]
        tpot = _median(list(ok["tpot_s_median"]))
        params = recs[0].parameters
        weight_bytes = params * WEIGHT_BYTES[row["precision"]] if params and row["precision"] in WEIGHT_BYTES else None
        floor_s = weight_bytes / bw["bytes_per_s"] if weight_bytes and bw.get("bytes_per_s") else None
        energy = [float(e) for e in ok["energy_j"] if e is not None and not math.isnan(e)]
        row.update({
            "parameters": params,
            "tokens_exact": exact,
            "tokens_per_s": _median(list(ok["tokens_per_s"])),
            "decode_tokens_per_s": 1.0 / tpot if tpot else None,
            "j_per_token": _median(list(ok["j_per_token"])),
            "j_per_token_net": _median(list(ok["j_per_token_net"])),
            "energy_source": "+".join(sorted({s for s in ok["energy_source"] if isinstance(s, str)})) or None,
            "energy_boundary": "; ".join(sorted({b for b in ok["energy_boundary"] if isinstance(b, str)})) or None,
            "energy_cv": _cv(energy) if len(energy) == len(ok) else None,
            "agreement_vs_fp32": (None if any(s is None for s in shares) else min(shares)),
            "agreement_status": sorted({r.agreement.get("status") for r in recs} - {None}),
            # at batch > 1: the worst trial's share of prompts identical to the same engine at batch 1
            "batch_invariance": min((r.batch_invariance for r in recs if r.batch_invariance is not None),
                                    default=None),
            "weight_bytes": weight_bytes,
            "floor_s_per_token": floor_s,
            "bandwidth_fraction": floor_s / tpot if floor_s and tpot else None,
            "meter_flags": sorted({f for f in ok["meter_flags"] if isinstance(f, str)}),
        })
        out.append(row)
    return out, tables.failures.to_dict("records") if not tables.failures.empty else []


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    floor = [r for r in rows if r["run_id"] in ("floor", "compile") and r.get("ok")]
    best = max((r for r in floor if r.get("bandwidth_fraction")), key=lambda r: r["bandwidth_fraction"], default=None)
    cvs = [r["energy_cv"] for r in floor if r.get("energy_cv") is not None]
    return {
        "best_bandwidth_fraction": best and {"engine": best["engine"], "precision": best["precision"],
                                             "fraction": best["bandwidth_fraction"],
                                             "met": best["bandwidth_fraction"] >= GOALS["bandwidth_fraction_min"]},
        "worst_energy_cv": max(cvs) if cvs else None,
        "energy_cv_met": (max(cvs) <= GOALS["energy_cv_max"]) if cvs else None,
        "targets": GOALS,
    }


def print_table(rows: list[dict[str, Any]], console) -> None:
    from rich.table import Table

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    t = Table(title="GPU acceptance: engine × precision (medians over repetitions)")
    for col in ("run", "model", "engine", "dev", "prec", "batch", "ok", "tok/s", "decode tok/s", "J/tok",
                "J/tok net", "energy", "CV", "agree fp32", "as bs1", "exact", "floor %"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["run_id"], r["model"], r["engine"], r["device"], r["precision"], str(r.get("batch_size", 1)),
                  f"{r.get('ok', 0)}/{r['trials']}",
                  f(r.get("tokens_per_s"), ".1f"), f(r.get("decode_tokens_per_s"), ".1f"),
                  f(r.get("j_per_token"), ".4g"), f(r.get("j_per_token_net"), ".4g"), r.get("energy_source") or "—",
                  "—" if r.get("energy_cv") is None else f"{100 * r['energy_cv']:.2f} %",
                  "—" if r.get("agreement_vs_fp32") is None else f"{100 * r['agreement_vs_fp32']:.0f} %",
                  "—" if r.get("batch_invariance") is None else f"{100 * r['batch_invariance']:.0f} %",
                  {True: "yes", False: "NO", None: "—"}[r.get("tokens_exact")],
                  "—" if r.get("bandwidth_fraction") is None else f"{100 * r['bandwidth_fraction']:.1f} %")
    console.print(t)
    for r in rows:
        for e in r.get("errors") or []:
            console.print(f"  [red]failed[/] {r['run_id']} {r['model']} {r['engine']} {r['precision']}: {e}")


def print_power_limit(gpu: dict[str, Any], console) -> None:
    """The board's power limit as it was during the run — read, never set (the kit leaves the device's settings)."""
    if "power_limit_enforced_w" in gpu:
        console.print(f"GPU power limit (read only): enforced {gpu['power_limit_enforced_w']} W, board maximum "
                      f"{gpu.get('power_limit_max_w')} W")


def print_goals(g: dict[str, Any], console) -> None:
    best = g["best_bandwidth_fraction"]
    console.print(f"goals: best bandwidth-floor fraction "
                  + (f"{100 * best['fraction']:.1f} % ({best['engine']} {best['precision']}; target ≥ "
                     f"{100 * GOALS['bandwidth_fraction_min']:.0f} %)" if best else "unknown")
                  + "; worst CV of energy "
                  + (f"{100 * g['worst_energy_cv']:.2f} % (target ≤ {100 * GOALS['energy_cv_max']:.0f} %)"
                     if g["worst_energy_cv"] is not None else "unknown"))


def pack_records(out: Path) -> Path:
    """One archive of every record and matrix the kit wrote: a single file to bring back."""
    archive = out / "records.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("results", "matrices"):
            if (out / name).is_dir():
                tar.add(out / name, arcname=name)
    return archive
