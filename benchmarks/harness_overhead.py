"""Harness overhead: the same greedy generation with the meters, sampler and per-step timing on vs off.

    python benchmarks/harness_overhead.py [--model DIR] [--prompts 4] [--new-tokens 64] [--rounds 3]

Default model: a random-weight ~100M-parameter GPT-2 (orchestrator.fixtures, size bench100m). Rounds alternate off/on so
that drift (thermal, caches) hits both; the ratio of medians is printed. Goal: < 1 % extra time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import fixtures  # noqa: E402
from runners.engines.options import EngineContext  # noqa: E402
from runners.engines.torch_engine import TorchEngine  # noqa: E402
from runners.job import MeterSpec, parse_job  # noqa: E402
from runners.meters import MeterSet  # noqa: E402
from runners.runner import load_tokenizer, work_shape  # noqa: E402
from runners.workload import load_prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.1)
    args = ap.parse_args()

    model_dir = args.model or fixtures.build_tiny("gpt2", fixtures.default_root() / "bench100m-gpt2", size="bench100m")
    job = parse_job({"engine": "torch", "device": "cpu", "model": {"path": str(model_dir)},
                     "workload": {"count": args.prompts}, "generation": {"new_tokens": args.new_tokens}})
    tok = load_tokenizer(model_dir)
    prompts = [tok(p.text)["input_ids"] for p in load_prompts(job.workload, tok)]
    engine = TorchEngine(EngineContext(device="cpu", precision="fp32", model_dir=Path(model_dir),
                                       model_name=job.model.name, cache_dir=None), tok, TorchEngine.check_options({}))
    engine.load(work_shape(job, prompts))
    engine.generate(prompts[:1], 8, True, lambda: None)  # warm-up

    def plain() -> float:
        t0 = time.perf_counter()
        for p in prompts:
            engine.generate([p], args.new_tokens, True, lambda: None)
        return time.perf_counter() - t0

    meters = MeterSet.create(MeterSpec(sample_interval_s=args.interval, codecarbon=True))

    def measured() -> float:
        t0 = time.perf_counter()
        with meters.window("generate"):
            for p in prompts:
                steps: list[float] = []
                engine.generate([p], args.new_tokens, True, lambda: steps.append(time.perf_counter()))
        return time.perf_counter() - t0

    off, on = [], []
    for r in range(args.rounds):
        off.append(plain())
        on.append(measured())
        print(f"round {r}: off {off[-1]:.3f} s   on {on[-1]:.3f} s")
    meters.close()
    m_off, m_on = statistics.median(off), statistics.median(on)
    params = sum(p.numel() for p in engine.model.parameters())
    print(f"model {model_dir.name}: {params / 1e6:.0f} M parameters, {len(prompts)} prompts x {args.new_tokens} tokens")
    print(f"median off {m_off:.3f} s, on {m_on:.3f} s -> overhead {100 * (m_on / m_off - 1):+.2f} % "
          f"(sampler every {args.interval} s, codecarbon on)")


if __name__ == "__main__":
    main()
