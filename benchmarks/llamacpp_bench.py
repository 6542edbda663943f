"""Harness vs llama.cpp's own llama-bench: same GGUF, same threads, same image, same library (libllama.so).

    python benchmarks/llamacpp_bench.py [--precision q8_0] [--threads 2] [--prompts 8] [--new-tokens 128]
                                        [--model smollm2|PATH] [--out results.json] [--tolerance 0.05]

Steps, all through real containers of the llamacpp-cpu image (the orchestrator's Docker launcher):
  1. prepare: the model's GGUF at --precision into a throw-away engine cache (llama.cpp's converter/quantiser);
  2. the harness: one measured trial (batch 1, --prompts HumanEval fragments, exactly --new-tokens each, greedy);
  3. llama-bench on the same GGUF with the same threads: tg<N> (decode only) and pg<P>,<N> (P = the trial's mean
     prompt length: prefill + N decode steps, what one harness prompt does), 5 repetitions after a warm-up.
Compared: decode tokens/s (harness: 1 / TPOT; llama-bench: tg) and end-to-end new tokens/s per prompt (harness: N /
latency; llama-bench: N / pg time), each as the best of its samples (--stat best, the default: on a shared machine the
fastest sample is the one least disturbed by other load) or their median (--stat median). Exit status 1 when a gap
exceeds --tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", default="q8_0", choices=["fp32", "fp16", "q8_0", "q4_k_m"])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--model", default="smollm2", help="smollm2 (SmolLM2-135M-Instruct) or a HF model folder")
    ap.add_argument("--reps", type=int, default=8, help="llama-bench repetitions")
    ap.add_argument("--stat", choices=["best", "median"], default="best")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--out", type=Path)
    return ap.parse_args(argv)


def harness_figures(rec: dict, new_tokens: int, pick) -> dict:
    """The harness's side: decode and end-to-end tokens/s of the measured trial, by ``pick`` of its prompts."""
    per = rec["per_prompt"]
    return {
        "decode_tok_s": 1 / pick([p["tpot_s"] for p in per]),
        "end_to_end_tok_s": new_tokens / pick([p["latency_s"] for p in per]),
        "decode_tok_s_median": 1 / statistics.median(p["tpot_s"] for p in per),
        "window_tok_s": rec["metrics"]["tokens_per_s"],
        "threads": rec["engine"]["details"]["n_threads"],
        "prompt_tokens_mean": round(statistics.fmean(p["prompt_tokens"] for p in per)),
    }


def llama_bench(client, image: str, cache: Path, gguf: Path, args, prompt_len: int, pick) -> tuple[dict, list]:
    """llama-bench's side, in the same image on the same GGUF and threads: (figures, its raw JSON)."""
    cmd = ["-m", str(gguf), "-t", str(args.threads), "-p", "0", "-n", str(args.new_tokens),
           "-pg", f"{prompt_len},{args.new_tokens}", "-r", str(args.reps), "-o", "json"]
    t0 = time.time()
    out = client.containers.run(image, cmd, entrypoint="llama-bench", remove=True, network_disabled=True,
                                volumes={str(cache): {"bind": "/cache", "mode": "ro"}}, stdout=True, stderr=False)
    tests = json.loads(out)
    tg = next(t for t in tests if t["n_prompt"] == 0 and t["n_gen"] == args.new_tokens)
    pg = next(t for t in tests if t["n_prompt"] == prompt_len and t["n_gen"] == args.new_tokens)
    return {"decode_tok_s": args.new_tokens / (pick(tg["samples_ns"]) / 1e9),
            "end_to_end_tok_s": args.new_tokens / (pick(pg["samples_ns"]) / 1e9),
            "decode_tok_s_avg": tg["avg_ts"],
            "threads": tg["n_threads"], "build": tg.get("build_commit"), "cpu": tg.get("cpu_info"),
            "seconds": round(time.time() - t0, 1)}, tests


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from _containers import Launch, build_image, engine_cache
    from orchestrator.docker_launcher import connect
    from orchestrator.models import _readable
    from orchestrator import fixtures

    model = fixtures.build_smollm2() if args.model == "smollm2" else Path(args.model)
    _readable(model)
    client = connect()
    runtime = build_image(client, "llamacpp-cpu")
    work = Path(tempfile.mkdtemp(prefix="llamacpp-bench-"))
    cache = engine_cache(work / "engines")
    launch = Launch(client, runtime, work, "bench-llamacpp")
    job = {"engine": "llamacpp", "device": "cpu", "precision": args.precision,
           "model": {"name": model.name, "path": str(model)}, "cache_dir": str(cache),
           "workload": {"count": args.prompts, "seed": 2412},
           "generation": {"batch_size": 1, "new_tokens": args.new_tokens}, "warmup": {"batches": 1},
           "meters": {"codecarbon": False, "sample_interval_s": 0.5, "keep_series": False},
           "engine_options": {"threads": args.threads}}
    try:
        prep, _ = launch("prepare", job)
        if prep["status"] != "ok":
            print(f"prepare failed: {prep['error']}", file=sys.stderr)
            return 2
        rec, _ = launch("run", job)
        if rec["status"] != "ok":
            print(f"harness run failed: {rec['error']}", file=sys.stderr)
            return 2
    finally:
        launch.close()

    pick = min if args.stat == "best" else statistics.median  # of times: best = the shortest
    harness = harness_figures(rec, args.new_tokens, pick)
    prompt_len = harness["prompt_tokens_mean"]
    gguf = Path(prep["phases"]["prepare"]["info"]["artifact"])  # /cache/... inside the container
    bench, tests = llama_bench(client, runtime.image, cache, gguf, args, prompt_len, pick)

    gaps = {k: harness[k] / bench[k] - 1 for k in ("decode_tok_s", "end_to_end_tok_s")}
    result = {"model": model.name, "precision": args.precision, "threads": args.threads, "stat": args.stat,
              "new_tokens": args.new_tokens, "prompts": args.prompts, "harness": harness, "llama_bench": bench,
              "gap": gaps, "tolerance": args.tolerance, "gguf_types": prep["phases"]["prepare"]["info"]["tensor_types"],
              "llama_bench_raw": tests}
    print(f"{model.name} {args.precision}, {args.threads} threads, {args.new_tokens} new tokens, "
          f"prompt ≈ {prompt_len} tokens, {args.stat} of {len(rec['per_prompt'])} prompts / {args.reps} llama-bench runs")
    print(f"{'':22}{'harness':>10}{'llama-bench':>13}{'gap':>9}")
    for k, label in (("decode_tok_s", "decode tok/s"), ("end_to_end_tok_s", "end-to-end tok/s")):
        print(f"{label:22}{harness[k]:10.2f}{bench[k]:13.2f}{gaps[k]:+9.1%}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(abs(g) <= args.tolerance for g in gaps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
