"""Tokens/s of every CPU runtime on one model, through the orchestrator and real containers, on the smoke matrix.

    python benchmarks/cpu_runtimes.py [--new-tokens N] [--reps R] [--prompts P] [--out results.json]
                                      [--runtimes torch-cpu onnx-cpu openvino] [--no-compile]

The smoke matrix (matrix-smoke.toml: its workload, generation, warm-up, meters and host sections, with --new-tokens,
--prompts and --reps overriding) on one tiny-but-not-trivial model: a random-weight ~90M-parameter GPT-2
(orchestrator.fixtures size "bench100m", codeparrot-small's shape) — the same model, prompts and token count for every
runtime. Cells: torch eager fp32 (the reference), torch.compile fp32, ONNX Runtime fp32 and int8 (dynamic
quantisation), OpenVINO fp32 and int8 with the stateful KV cache, and OpenVINO fp32 *without* a KV cache (a second
orchestrator run: engine options are per runtime entry) — the study's OpenVINO setting, so the KV-cache claim is
measured, not assumed. Conversions happen in the prepare containers, outside every measured window.

Printed per cell: median tokens/s over repetitions (generate window), median time per output token, TTFT, token
agreement with torch fp32 eager (same prompts), the conversion time (prepare step) and the load/compile times of the
first repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.tomlw import table as toml_table  # noqa: E402
from runners.record import Record  # noqa: E402

MODEL = "gpt2-bench100m"


def matrix_text(name: str, smoke: dict, args, runtimes: dict[str, dict], settings: list[str]) -> str:
    sections = {k: dict(smoke.get(k, {})) for k in ("workload", "generation", "warmup", "meters", "host", "container")}
    if args.new_tokens:
        sections["generation"]["new_tokens"] = args.new_tokens
    if args.prompts:
        sections["workload"]["count"] = args.prompts
    sections["container"]["timeout_s"] = max(float(sections["container"].get("timeout_s", 600)), 1800.0)
    text = toml_table("matrix", {"name": name, "seed": smoke["matrix"]["seed"],
                             "repetitions": args.reps or smoke["matrix"]["repetitions"]})
    for key, values in sections.items():
        text += toml_table(key, values)
    for s in settings:
        text += toml_table(f"settings.{s}", {"precision": s})
    for rt, entry in runtimes.items():
        text += toml_table(f"runtimes.{rt}", entry)
    text += toml_table(f"models.{MODEL}", {"fixture": "gpt2", "size": "bench100m", "params_b": 0.09})
    return text


def run_matrix(path: Path, results: Path, cache: Path) -> None:
    cmd = [sys.executable, str(REPO / "orchestrate.py"), "run", "--matrix", str(path), "--results", str(results),
           "--cache", str(cache), "--build"]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "COLUMNS": "160"})
    if proc.returncode not in (0,):
        raise SystemExit(f"orchestrate.py exited {proc.returncode}")


def records(run_dir: Path) -> list[Record]:
    return [Record.load(p) for p in sorted((run_dir / "trials").glob("*.json"))]


def conversion_seconds(run_dir: Path) -> dict[tuple[str, str], float]:
    """(run id, cell id) -> seconds its conversion took (the cache's conversion.json, kept in the cell's prepare record also
    when the artifact was already cached). A trial's own prepare window only looks the artifact up."""
    out = {}
    for p in (run_dir / "prepare").glob("*.json"):
        rec = Record.load(p)
        seconds = rec.preparation().seconds
        if seconds is not None:
            out[(rec.run_id, rec.trial.get("cell_id"))] = seconds  # one cell id may be in both runs
    return out


def label(rec: Record) -> str:
    details = rec.data["engine"].get("details") or {}
    kv = details.get("kv_cache_mode") or ("kv" if details.get("kv_cache") else "no-kv")
    return f"{rec.runtime}/{rec.engine_name} {rec.precision} {kv}"


def summarise(recs: list[Record], conversions: dict[tuple[str, str], float]) -> list[dict]:
    from runners.agreement import token_agreement

    groups: dict[str, list[Record]] = {}
    for r in recs:
        key = label(r) if r.is_ok else f"{r.runtime}/{r.engine_name} {r.precision} FAILED"
        groups.setdefault(key, []).append(r)
    reference = next((g[0] for k, g in groups.items() if k.startswith("torch-cpu/torch fp32")), None)
    rows = []
    for key, g in sorted(groups.items()):
        ok = [r for r in g if r.is_ok]
        if not ok:
            rows.append({"cell": key, "error": (g[0].error_message or "")[:300]})
            continue
        first = min(ok, key=lambda r: r.repetition or 0)
        metrics = [r.metrics() for r in ok]
        row = {
            "cell": key, "reps": len(ok),
            "tokens_per_s": statistics.median(m.tokens_per_s for m in metrics),
            "tpot_ms": 1e3 * statistics.median(m.tpot_s["p50"] for m in metrics),
            "ttft_ms": 1e3 * statistics.median(m.ttft_s["p50"] for m in metrics),
            "output_tokens": first.output_tokens,
            "conversion_s": conversions.get((first.run_id, first.trial.get("cell_id"))),
            "load_s": first.duration("load"),
            "compile_s": first.duration("compile"),
        }
        if reference is not None:
            a = token_agreement(first.data, reference.data)
            row["agreement"] = f"{a['identical']}/{a['prompts']}"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, help="new tokens per prompt (default: the smoke matrix's)")
    ap.add_argument("--prompts", type=int, help="prompts (default: the smoke matrix's)")
    ap.add_argument("--reps", type=int, help="repetitions (default: the smoke matrix's)")
    ap.add_argument("--runtimes", nargs="+", default=["torch-cpu", "onnx-cpu", "openvino"])
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile (minutes of compile on 2 cores)")
    ap.add_argument("--work", type=Path, help="results and cache folder (default: a temp folder)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    smoke = tomllib.loads((REPO / "matrix-smoke.toml").read_text())
    work = args.work or Path(tempfile.mkdtemp(prefix="cpu-runtimes-"))
    work.mkdir(parents=True, exist_ok=True)
    results, cache = work / "results", work / "cache"

    runtimes: dict[str, dict] = {}
    if "torch-cpu" in args.runtimes:
        runtimes["torch-cpu"] = {"engines": ["torch"] if args.no_compile else ["torch", "torch-compile"]}
    if "onnx-cpu" in args.runtimes:
        runtimes["onnx-cpu"] = {"engines": ["onnx"]}
    if "openvino" in args.runtimes:
        runtimes["openvino"] = {"engines": ["openvino"], "engine_options": {"kv_cache": "stateful"}}
    main_matrix = work / "matrix-cpu-runtimes.toml"
    main_matrix.write_text(matrix_text("cpu-runtimes", smoke, args, runtimes, ["fp32", "int8"]))
    run_matrix(main_matrix, results, cache)
    recs = records(results / "cpu-runtimes")
    conversions = conversion_seconds(results / "cpu-runtimes")
    if "openvino" in args.runtimes:
        nokv = work / "matrix-cpu-runtimes-ov-nokv.toml"
        nokv.write_text(matrix_text("cpu-runtimes-ov-nokv", smoke, args,
                                    {"openvino": {"engines": ["openvino"], "engine_options": {"kv_cache": "none"}}},
                                    ["fp32"]))
        run_matrix(nokv, results, cache)
        recs += records(results / "cpu-runtimes-ov-nokv")
        conversions.update(conversion_seconds(results / "cpu-runtimes-ov-nokv"))

    rows = summarise(recs, conversions)
    print(f"\nCPU runtimes on {MODEL} (random-weight GPT-2, ~90M parameters), "
          f"{recs[0]['tokens']['prompts'] if recs and recs[0].get('tokens') else '?'} prompts × "
          f"{recs[0]['job']['generation']['new_tokens'] if recs else '?'} new tokens, batch 1, "
          f"{os.cpu_count()} CPUs ({recs[0]['environment'].get('cpu_model') if recs else '?'})")
    head = (f"{'cell':<42} {'tok/s':>8} {'TPOT ms':>8} {'TTFT ms':>8} {'agree':>6} {'conv s':>7} {'load s':>7} "
            f"{'comp s':>7}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['cell']:<42} {r['error']}")
            continue
        fmt = lambda v: f"{v:7.1f}" if isinstance(v, (int, float)) else f"{'-':>7}"  # noqa: E731
        print(f"{r['cell']:<42} {r['tokens_per_s']:8.1f} {r['tpot_ms']:8.1f} {r['ttft_ms']:8.1f} "
              f"{r.get('agreement', '-'):>6} {fmt(r['conversion_s'])} {fmt(r['load_s'])} {fmt(r['compile_s'])}")
    kv = {r["cell"]: r for r in rows if r["cell"].startswith("openvino/openvino fp32")}
    with_kv = next((r for k, r in kv.items() if k.endswith("stateful")), None)
    without = next((r for k, r in kv.items() if k.endswith("none")), None)
    if with_kv and without:
        print(f"\nOpenVINO fp32: stateful KV cache {with_kv['tokens_per_s']:.1f} tok/s vs no KV cache "
              f"{without['tokens_per_s']:.1f} tok/s → ×{with_kv['tokens_per_s'] / without['tokens_per_s']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(f"\nrecords: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
