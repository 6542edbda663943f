"""The first decode step of a model folder, compared between Hugging Face transformers and vLLM in one image: the
smallest check of whether two runtimes compute the same model (issue 16: Gemma 3 through vLLM).

Prints, per prompt of the runner's own workload (its fragments, tokenised by this image's transformers), the top-5
log-probabilities of the next token from transformers (fp32, eager attention) and, where vLLM is installed, from
``vllm.LLM`` (fp32, the prompt as token ids, greedy) — and the prompt ids, so that two images' tokenisations can be
compared too. Run it inside an image, the model folder mounted read-only:

    docker run --rm --network none --shm-size 2g -e VLLM_ENABLE_V1_MULTIPROCESSING=0 -v "$PWD":/src:ro -w /src \\
        -v MODEL_DIR:/m:ro --entrypoint python slm-matrix/vllm-cpu:latest -m benchmarks.first_step /m [--eager 0]
    docker run --rm --network none -v "$PWD":/src:ro -w /src -v MODEL_DIR:/m:ro \\
        --entrypoint python slm-matrix/torch-cpu:latest -m benchmarks.first_step /m       # transformers 4.57 only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.first_step", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--prompts", type=int, default=4, help="fragments of the runner's HumanEval workload")
    ap.add_argument("--eager", type=int, default=1, help="vLLM enforce_eager (0: its torch.compile path)")
    ap.add_argument("--no-vllm", action="store_true")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from runners.job import parse_job
    from runners.runner import load_tokenizer
    from runners.workload import load_prompts

    job = parse_job({"engine": "torch", "device": "cpu", "precision": "fp32", "model": {"path": args.model_dir},
                     "workload": {"style": "fragment", "count": args.prompts, "selection": "first"}})
    tok = load_tokenizer(args.model_dir)
    ids = [tok(p.text)["input_ids"] for p in load_prompts(job.workload, tok)]
    out: dict = {"transformers": transformers.__version__, "tokenizer": type(tok).__name__, "prompt_ids": ids}
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.inference_mode():
        out["hf"] = [_top(torch.log_softmax(model.eval()(torch.tensor([p])).logits[0, -1].float(), -1)) for p in ids]
    if not args.no_vllm and importlib.util.find_spec("vllm"):
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        from runners.engines.vllm_engine import cpu_bind_list

        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind_list(len(os.sched_getaffinity(0))))
        llm = LLM(model=args.model_dir, tokenizer=args.model_dir, dtype="float32", max_model_len=64, max_num_seqs=1,
                  enforce_eager=bool(args.eager), generation_config="vllm", seed=0)
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=5, ignore_eos=True)
        out["vllm"] = []
        for p in ids:
            lp = llm.generate([TokensPrompt(prompt_token_ids=p)], params, use_tqdm=False)[0].outputs[0].logprobs[0]
            out["vllm"].append(sorted(([int(k), round(float(v.logprob), 4)] for k, v in lp.items()),
                                      key=lambda x: -x[1]))
        out["vllm_version"] = _version()
    for k, p in enumerate(ids):
        print(f"prompt {k} ids {p}\n  transformers {out['transformers']}: {out['hf'][k]}")
        if "vllm" in out:
            same = out["vllm"][k][0][0] == out["hf"][k][0][0]
            print(f"  vLLM {out['vllm_version']}: {out['vllm'][k]}   same next token: {same}")
    print(json.dumps(out), file=sys.stderr)
    return 0


def _top(logprobs, k: int = 5) -> list[list]:
    values, index = logprobs.topk(k)
    return [[int(i), round(float(v), 4)] for i, v in zip(index, values)]


def _version() -> str:
    from importlib import metadata

    for dist in ("vllm-cpu", "vllm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "?"


if __name__ == "__main__":
    sys.exit(main())
