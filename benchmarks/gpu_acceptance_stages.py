"""The GPU acceptance kit's stages: what each runs (PER_DEVICE), the time budget (COST), each stage's matrix and its
run as one orchestrator process, stopped cleanly at the deadline. See benchmarks/gpu_acceptance.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.tomlw import table as toml_table

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "bf16")
STAGES = ("floor", "batch", "compile", "archs")  # in order of value: a deadline cuts the tail, never the floor
PER_DEVICE = {
    # floor model size, precisions, repetitions, prompts, new tokens (floor), new tokens (archs), idle baseline s,
    # compile precision and repetitions, the tiny architectures' precisions (fp32: each loads and generates on the
    # device; precision agreement is the floor model's), the batch sweep of the floor model (batch sizes, one
    # precision, new tokens; as many prompts as the largest batch, so every batch is full), and the deadline: the
    # default CUDA run fits one 10-minute command with a minute left to write and bring its files back
    "cuda": {"size": "bench1b", "floor_precisions": PRECISIONS, "reps": 2, "prompts": 3, "new_tokens": 64,
             "arch_new_tokens": 16, "idle_s": 2.0, "compile_precision": "bf16", "compile_reps": 1,
             "arch_precisions": ("fp32",), "batch_sizes": (1, 8, 32), "batch_precision": "bf16",
             "batch_new_tokens": 32, "deadline_s": 540},
    "cpu": {"size": "tiny", "floor_precisions": ("fp32", "bf16"), "reps": 2, "prompts": 2, "new_tokens": 16,
            "arch_new_tokens": 8, "idle_s": 1.0, "compile_precision": "fp32", "compile_reps": 1,
            "arch_precisions": ("fp32",), "batch_sizes": (1, 4), "batch_precision": "fp32", "batch_new_tokens": 8,
            "deadline_s": 600},
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


def matrix_text(name: str, device: str, models: dict[str, dict], runtimes: dict[str, list[str]],
                precisions: list[str], reps: int, prompts: int, new_tokens: int, idle_s: float,
                timeout_s: float, cooldown_s: float = 5.0, batch_sizes: tuple[int, ...] = ()) -> str:
    from runners.engines.base import module_found

    text = toml_table("matrix", {"name": name, "seed": 11, "repetitions": reps})
    text += toml_table("workload", {"style": "fragment", "count": prompts, "selection": "first"})
    text += toml_table("generation", {"new_tokens": new_tokens, "fixed_length": True})
    text += toml_table("warmup", {"batches": 1})
    # codecarbon only where it is installed and useful: the estimated fallback of a CPU host without RAPL
    text += toml_table("meters", {"sample_interval_s": 0.1,
                                  "codecarbon": device == "cpu" and module_found("codecarbon")})
    # a short cooldown cap: the kit's budget is minutes; each record says whether the GPU was back within margin
    text += toml_table("host", {"idle_seconds": idle_s, "cooldown_max_s": cooldown_s, "gpus": [0]})
    text += toml_table("agreement", {"engine": "torch", "precision": "fp32", "devices": [device]})
    text += toml_table("container", {"timeout_s": timeout_s})
    for p in precisions:  # batch 1, or a sweep of batch sizes (points fp32__bs8, …)
        text += toml_table(f"settings.{p}", {"precision": p, **({"sweep": {"batch_size": list(batch_sizes)}}
                                                                   if batch_sizes else {})})
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
    # batching, where it matters: torch (the reference) and vLLM's scheduler when it runs here, one precision
    batched = {rt: [e for e in es if e in ("torch", "vllm")] for rt, es in engines.items()}
    runs["batch"] = {"name": "batch", "models": floor_model, "runtimes": {rt: es for rt, es in batched.items() if es},
                     "precisions": [d["batch_precision"]], "reps": 1, "prompts": max(d["batch_sizes"]),
                     "new_tokens": d["batch_new_tokens"], "batch_sizes": tuple(d["batch_sizes"])}
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
    points = len(run.get("batch_sizes") or (1,))
    return len(run["models"]) * engines * len(run["precisions"]) * points * run["reps"]


def estimate(device: str, run: dict[str, Any], built: bool) -> float:
    """Seconds one stage takes by the budget model (COST): its fixed costs per trial × trials, plus generation."""
    c, d = COST[device], PER_DEVICE[device]
    fixed = c["tiny_trial_s"] if run["name"] == "archs" else c["trial_s"]
    per_trial = fixed + run.get("idle_s", d["idle_s"]) + min(c["cooldown_s"], run.get("cooldown_s", 5.0))
    # decode steps: each batch (+ 1: the warm-up batch) takes new_tokens steps, about one batch-1 step's time each
    steps = sum((-(-run["prompts"] // b) + 1) * run["new_tokens"] for b in run.get("batch_sizes") or (1,))
    total = (c["stage_s"] + trials_of(run) * per_trial + steps * c["tpot_s"] * trials_of(run)
             / len(run.get("batch_sizes") or (1,)) + (0 if built else c["first_build_s"]))
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
                                args.timeout, run.get("cooldown_s", 5.0), run.get("batch_sizes", ())))
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


def measured_costs(runs: list[dict[str, Any]], walls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stage's wall time over its trials: the per-trial fixed cost the budget model is calibrated from."""
    return [{"stage": r["name"], "trials": trials_of(r), "wall_s": w["wall_s"],
             "wall_per_trial_s": round(w["wall_s"] / trials_of(r), 2)} for r, w in zip(runs, walls)]
