"""Each engine against its runtime's own benchmark: decode tokens/s through the harness and through the native tool,
in the same image, on the same model, prompt length, new tokens and threads.

    python -m benchmarks.native_tools [--engines torch llamacpp ...] [--model smollm2|PATH] [--prompt-tokens 16]
                                      [--new-tokens 64] [--threads T] [--reps 3] [--prompts 3] [--precision fp32]
                                      [--tolerance 0.05] [--cache DIR] [--out FILE] [--no-fail]

Per engine, through real containers of its image: `prepare` once (the orchestrator's Docker launcher, a throw-away
engine cache unless --cache), then --reps rounds, each one harness trial (batch 1, --prompts prompts of exactly
--prompt-tokens ids, exactly --new-tokens each, greedy, one warm-up batch; decode tokens/s = 1 / the record's median
TPOT) and one native run on the same prompt ids, in alternating order (H N, N H, …) so that drift hits both. Native:
  llamacpp        llama-bench tg<N> on the prepared GGUF (benchmarks/llamacpp_bench.py), --prompts repetitions
  torch           plain model.generate, each new token timed by a streamer: (N − 1) / (last − first token)
  vllm            LLM.generate timed as `vllm bench latency` times it (its Python equivalent: one engine start-up
                  for both lengths), at N and at 1 new tokens: (N − 1) / (latency N − latency 1); enforce_eager, as
                  the tests run it
  openvino-genai, onnx-genai, ctranslate2: the engine module's own native_decode(artifact, prompt_ids, new_tokens,
                  threads): the runtime's generate loop with no harness — OpenVINO GenAI's perf_metrics TPOT, ONNX
                  Runtime GenAI's generate_next_token steps, CTranslate2's per-token callback
The table: per engine, each side's median [min–max] over the rounds, harness / native as the ratio of medians with a
bootstrap interval (analysis.stats.median_ratio_ci), and whether it meets the goal (≥ 0.95×). Exit 1 when an engine
is below the goal (0 with --no-fail), 2 when one could not be measured; an engine whose native_decode does not exist
yet is listed as not available and fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The harness may cost at most this share of the native tool's decode rate (issue 27's goal: ≥ 0.95×; the same
# default as benchmarks/llamacpp_bench.py --tolerance).
TOLERANCE = 0.05
INSIDE_PATH = "/native/native_tools.py"  # this file, mounted read-only into the native container


@dataclass(frozen=True)
class Tool:
    engine: str
    image: str
    native: str  # what times the native side, for the table
    options: dict = field(default_factory=dict)  # engine_options beyond threads, on both sides


TOOLS = {t.engine: t for t in (
    Tool("torch", "torch-cpu", "generate + streamer"),
    Tool("llamacpp", "llamacpp-cpu", "llama-bench tg"),
    Tool("vllm", "vllm-cpu", "LLM.generate (bench latency)", {"enforce_eager": True}),
    Tool("openvino-genai", "openvino-genai", "perf_metrics TPOT"),
    Tool("onnx-genai", "onnx-genai-cpu", "generate_next_token steps"),
    Tool("ctranslate2", "ctranslate2-cpu", "generate_batch callback"))}


# --- inside the image: stdlib, the runtime and runners/ only -----------------------------------------------------

def _torch_rate(spec: dict) -> dict:
    """transformers' plain generate, greedy, each new token timed as the streamer receives it."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(spec["threads"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # exactly N new tokens, the harness's fixed-length work

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []

        def put(self, value):  # first the prompt, then each new token
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def rate(ids: list[int]) -> float:
        clock, x = Clock(), torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=spec["new_tokens"],
                             do_sample=False, pad_token_id=0, streamer=clock)
        assert out.shape[1] - len(ids) == spec["new_tokens"], out.shape
        tokens = clock.times[1:]
        return (len(tokens) - 1) / (tokens[-1] - tokens[0])

    return _timed(rate, spec)


def _vllm_rate(spec: dict) -> dict:
    """vLLM's offline engine timed as `vllm bench latency` does (perf_counter around LLM.generate), at N and at 1
    new tokens: the difference is N − 1 decode steps."""
    from runners.engines.vllm_engine import cpu_bind_list

    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind_list(spec["threads"])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    n = spec["new_tokens"]
    context = len(spec["prompts"][0]) + n + 1
    llm = LLM(model=spec["model"], tokenizer=spec["model"], dtype="float32", enforce_eager=True, seed=0,
              max_model_len=64 * -(-context // 64), max_num_seqs=1, generation_config="vllm")

    def latency(ids: list[int], tokens: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        t0 = time.perf_counter()
        llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
        return time.perf_counter() - t0

    return _timed(lambda ids: (n - 1) / (latency(ids, n) - latency(ids, 1)), spec)


def _module_rate(spec: dict) -> dict:
    """The engine module's native_decode: its runtime's own generate loop, no harness, at the job's precision."""
    from runners.engines import engine_class

    native_decode = sys.modules[engine_class(spec["engine"]).__module__].native_decode
    extra = precision_argument(native_decode, spec["precision"])
    return _timed(lambda ids: decode_rate(native_decode(spec["artifact"], ids, spec["new_tokens"], spec["threads"],
                                                        **extra), spec["new_tokens"]), spec)


def precision_argument(native_decode, precision: str) -> dict:
    """The precision keyword for a native_decode that takes one; one that does not runs fp32 only, and any other
    precision is refused rather than measured as fp32."""
    import inspect

    if "precision" in inspect.signature(native_decode).parameters:
        return {"precision": precision}
    if precision != "fp32":
        raise ValueError(f"{native_decode.__module__}.native_decode takes no precision: it measures fp32 only")
    return {}


def decode_rate(result: dict, new_tokens: int) -> float:
    """Decode tokens/s of one native_decode result: the runtime's own figure where it gives one (TPOT, decode
    tokens/s, per-token intervals), else (N − 1) / (seconds − time to the first token). Whose is which: OpenVINO
    GenAI's perf metrics give tpot_ms; ONNX Runtime GenAI and CTranslate2 time each step of their loop."""
    if result.get("tpot_s"):
        return 1 / result["tpot_s"]
    if result.get("tpot_ms"):  # OpenVINO GenAI's perf metrics: [mean, std] over its repetitions
        return 1000 / result["tpot_ms"][0]
    if result.get("decode_tokens_per_s"):
        return result["decode_tokens_per_s"]
    if result.get("per_token_s"):  # intervals between consecutive new tokens
        return len(result["per_token_s"]) / sum(result["per_token_s"])
    first = result.get("first_token_s", result.get("ttft_s"))
    if first is not None:
        return (new_tokens - 1) / (result["seconds"] - first)
    raise ValueError(f"native_decode gave no decode timing (tpot_s, decode_tokens_per_s, per_token_s or "
                     f"first_token_s): {sorted(result)}")


def _timed(rate, spec: dict) -> dict:
    """One warm-up generation, then each prompt once, as the harness trial does: the median decode rate (and each
    call's rate and seconds, which bound it)."""
    rate(spec["prompts"][0])
    rates, seconds = [], []
    for ids in spec["prompts"]:
        t0 = time.perf_counter()
        rates.append(rate(ids))
        seconds.append(time.perf_counter() - t0)
    return {"decode_tok_s": statistics.median(rates), "rates": rates, "call_s": seconds}


INSIDE = {"torch": _torch_rate, "vllm": _vllm_rate}


# --- the host ---------------------------------------------------------------------------------------------------

def spread(samples: list[float]) -> dict:
    return {"n": len(samples), "median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples}


def summarise(tool: Tool, harness: list[float], native: list[float], tolerance: float = TOLERANCE) -> dict:
    """One row: each side's median and spread, harness / native with its bootstrap interval, the goal."""
    from analysis.stats import median_ratio_ci

    ratio = median_ratio_ci(harness, native)
    return {"engine": tool.engine, "image": tool.image, "native_tool": tool.native, "status": "measured",
            "harness": spread(harness), "native": spread(native), "ratio": ratio,
            "goal": 1 - tolerance, "meets_goal": ratio["ratio"] is not None and ratio["ratio"] >= 1 - tolerance}


def not_measured(tool: Tool, status: str) -> dict:
    return {"engine": tool.engine, "image": tool.image, "native_tool": tool.native, "status": status}


def _cell(side: dict) -> str:
    return f"{side['median']:.1f} [{side['min']:.1f}–{side['max']:.1f}]"


def table(rows: list[dict]) -> str:
    widths = (15, 16, 28, 20, 20, 23)
    lines = ["  ".join(f"{h:{w}}" for h, w in zip(("engine", "image", "native tool", "harness tok/s",
                                                   "native tok/s", "harness/native [95 % CI]"), widths))
             + "  meets the goal"]
    for r in rows:
        cells = [r["engine"], r["image"], r["native_tool"]]
        if r["status"] != "measured":
            lines.append("  ".join(f"{c:{w}}" for c, w in zip(cells, widths)) + "  " + r["status"])
            continue
        ratio = r["ratio"]
        ci = f"[{ratio['low']:.3f}–{ratio['high']:.3f}]" if ratio["low"] is not None else "(no interval)"
        cells += [_cell(r["harness"]), _cell(r["native"]), f"{ratio['ratio']:.3f} {ci}"]
        verdict = f"yes (≥ {r['goal']:.2f}×)" if r["meets_goal"] else f"NO (< {r['goal']:.2f}×)"
        if r["meets_goal"] and ratio["low"] is not None and ratio["low"] < r["goal"]:  # the median meets it, not all
            verdict += f", not certain: the interval reaches {ratio['low']:.2f}"
        lines.append("  ".join(f"{c:{w}}" for c, w in zip(cells, widths)) + "  " + verdict)
    return "\n".join(lines)


def exit_status(rows: list[dict], no_fail: bool) -> int:
    if any(r["status"].startswith("failed") for r in rows):
        return 2
    return 0 if no_fail or all(r.get("meets_goal", True) for r in rows) else 1


def unavailable(tool: Tool) -> str | None:
    """Why this engine has no native side here yet (no module, or no native_decode in it), else None."""
    if tool.engine in INSIDE or tool.engine == "llamacpp":
        return None
    from orchestrator.images import discover
    from runners.engines import engine_class

    try:
        module = sys.modules[engine_class(tool.engine).__module__]
    except KeyError:
        return f"not available yet: no engine {tool.engine!r} in runners/engines"
    if not hasattr(module, "native_decode"):
        return f"not available yet: {module.__name__} has no native_decode"
    if tool.image not in discover():
        return f"not available yet: no image folder images/{tool.image}"
    return None


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", nargs="+", default=list(TOOLS), choices=list(TOOLS), metavar="ENGINE",
                    help=f"of: {', '.join(TOOLS)} (default: all)")
    ap.add_argument("--model", default="smollm2", help="smollm2 (SmolLM2-135M-Instruct, fp32) or a HF model folder")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--reps", type=int, default=3, help="rounds of one harness trial and one native run")
    ap.add_argument("--prompts", type=int, default=3, help="prompts per harness trial and per native run")
    ap.add_argument("--cache", type=Path, help="engine cache to keep conversions in (default: a throw-away one)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE,
                    help="the goal is harness ≥ (1 − tolerance) × native (default %(default)s)")
    ap.add_argument("--no-fail", action="store_true", help="exit 0 even when an engine is below the goal")
    args = ap.parse_args(argv)
    for name, least in (("prompt_tokens", 1), ("new_tokens", 2), ("threads", 1), ("reps", 1), ("prompts", 1)):
        if getattr(args, name) < least:  # decode tokens/s needs two new tokens: the first one is prefill's
            ap.error(f"--{name.replace('_', '-')} is {getattr(args, name)}: give at least {least}")
    return args


def harness_job(tool: Tool, args: argparse.Namespace, model: Path, cache: Path) -> dict:
    return {"engine": tool.engine, "device": "cpu", "precision": args.precision,
            "model": {"name": model.name, "path": str(model)}, "cache_dir": str(cache),
            "workload": {"style": "length", "prompt_tokens": args.prompt_tokens, "count": args.prompts},
            "generation": {"batch_size": 1, "new_tokens": args.new_tokens, "fixed_length": True},
            "warmup": {"batches": 1}, "meters": {"codecarbon": False, "sample_interval_s": 0.5, "keep_series": False},
            "engine_options": {"threads": args.threads, **tool.options}}


def _ok(record: dict, what: str) -> dict:
    """The record of a run that went well (Launch fails on none at all); RuntimeError with the runner's error."""
    if record.get("status") != "ok":
        raise RuntimeError(f"{what}: {record.get('error')}")
    return record


def native_rate(client, runtime, tool: Tool, args, model: Path, cache: Path, prep: dict, prompts: list) -> float:
    """One native run in a container of the same image: its decode tokens/s (median over the prompts)."""
    artifact = prep["phases"]["prepare"]["info"].get("artifact")
    if tool.engine == "llamacpp":
        from benchmarks.llamacpp_bench import llama_bench

        bench_args = argparse.Namespace(threads=args.threads, new_tokens=args.new_tokens, reps=args.prompts)
        return llama_bench(client, runtime.image, cache, Path(artifact), bench_args, args.prompt_tokens,
                           statistics.median)[0]["decode_tok_s"]
    from orchestrator.docker_layer import measured_lock_down

    spec = {"engine": tool.engine, "model": f"/models/{model.name}", "artifact": artifact, "prompts": prompts,
            "new_tokens": args.new_tokens, "threads": args.threads, "precision": args.precision}
    volumes = {str(model.resolve()): {"bind": spec["model"], "mode": "ro"},
               str(cache.resolve()): {"bind": "/cache", "mode": "ro"},
               str(Path(__file__).resolve()): {"bind": INSIDE_PATH, "mode": "ro"}}
    container = dict(getattr(runtime, "container", ()) or ())
    out = client.containers.run(runtime.image, [INSIDE_PATH, "--inside", json.dumps(spec)], entrypoint="python",
                                remove=True, stdout=True, stderr=False, volumes=volumes,
                                labels={"io.slm-matrix.test": f"native-tools-{tool.engine}"},
                                shm_size=container.get("shm_size"), **measured_lock_down())
    return json.loads(out.decode().strip().splitlines()[-1])["decode_tok_s"]


def measure(client, tool: Tool, args, model: Path, cache: Path, work: Path) -> dict:
    """prepare, then --reps rounds of a harness trial and a native run, alternating which goes first."""
    from _containers import Launch, build_image
    from runners.record import Record

    runtime = build_image(client, tool.image)
    launch = Launch(client, runtime, work / tool.engine, f"native-tools-{tool.engine}")
    job = harness_job(tool, args, model, cache)
    prompts: list = []  # the harness trial's prompt ids, which the native runs get
    try:
        prep = _ok(launch("prepare", job)[0], "prepare")

        def harness_trial() -> float:
            rec = _ok(launch("run", job)[0], "harness trial")
            prompts[:] = [p["prompt_ids"] for p in rec["per_prompt"]]
            return 1 / Record(rec).metrics().median("tpot_s")

        sides = {"harness": (harness_trial, []),
                 "native": (lambda: native_rate(client, runtime, tool, args, model, cache, prep, prompts), [])}
        for rep in range(args.reps):
            took = {}
            for side in ("harness", "native") if rep % 2 == 0 else ("native", "harness"):
                t0 = time.monotonic()
                sides[side][1].append(sides[side][0]())
                took[side] = time.monotonic() - t0
            print(f"  {tool.engine} round {rep + 1}: " + ", ".join(
                f"{side} {sides[side][1][-1]:.1f} tok/s ({took[side]:.0f} s)" for side in sides), flush=True)
    finally:
        launch.close()
    return summarise(tool, sides["harness"][1], sides["native"][1], args.tolerance)


def _row(tool: Tool, client, args, model: Path, cache: Path, work: Path) -> dict:
    """The engine's row: measured, not available yet, or failed with the cause (one engine's failure is its row)."""
    import pytest

    reason = unavailable(tool)
    if reason:
        return not_measured(tool, reason)
    try:
        return measure(client, tool, args, model, cache, work)
    except (Exception, pytest.fail.Exception) as e:  # noqa: BLE001 — Launch fails through pytest.fail
        return not_measured(tool, f"failed: {type(e).__name__}: …{str(e)[-400:]}")  # the cause is last


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from orchestrator import fixtures
    from orchestrator.docker_launcher import connect
    from orchestrator.models import _readable

    model = fixtures.build_smollm2() if args.model == "smollm2" else Path(args.model)
    _readable(model)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="native-tools-cache-"))
    from _containers import engine_cache

    engine_cache(cache)
    work = Path(tempfile.mkdtemp(prefix="native-tools-"))
    client = connect()
    print(f"{model.name} {args.precision}: {args.prompt_tokens} prompt tokens, {args.new_tokens} new tokens, "
          f"{args.threads} threads, {args.reps} rounds × {args.prompts} prompts; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows: list[dict] = []
    try:
        for name in args.engines:
            rows.append(_row(TOOLS[name], client, args, model, cache, work))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            if args.out:  # after every engine: a long run stopped half-way keeps what it measured
                args.out.write_text(json.dumps({"model": model.name, "args": {k: str(v) for k, v in vars(args).items()},
                                                "rows": rows}, indent=2) + "\n")
    finally:
        if not args.cache:  # conversions of a throw-away cache (a GGUF of the model, …) are not worth the disk
            shutil.rmtree(cache, ignore_errors=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}; records and container logs in {work}")
    print(table(rows))
    return exit_status(rows, args.no_fail)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:  # in the native container
        spec = json.loads(sys.argv[2])
        print(json.dumps(INSIDE.get(spec["engine"], _module_rate)(spec)))
        sys.exit(0)
    sys.exit(main())
