"""One trial: load the job → (idle) → prepare → load → (compile) → warm-up → measured generation → record.

Each phase is its own meter window; time and energy of a window come from the same two instants. Whatever happens,
a record is written (status "failed" with the phase and the reason when something breaks).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from runners import environment
from runners.agreement import token_agreement
from runners.engines import engine_class
from runners.engines.base import Engine, Shape
from runners.engines.options import EngineContext
from runners.job import Job, JobError, ModelSpec
from runners.meters import MeterSet
from runners.record import metrics_of, new_record, write_json_atomic
from runners.stopping import StopRule, check, eos_ids
from runners.workload import encode, inputs_document, load_prompts, read_inputs, tokenizer_identity


def resolve_model(spec: ModelSpec) -> Path:
    """The local directory of the model. Hub ids are looked up in the (mounted) HF cache only, never downloaded."""
    if spec.path:
        path = Path(spec.path)
        if not (path / "config.json").is_file():
            raise JobError("model.path", f"{path} is not a Hugging Face model folder (no config.json)",
                           "point model.path at a folder made by save_pretrained, or prepare the model first")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec.hub_id, revision=spec.revision, cache_dir=spec.hf_cache,
                                      local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
        raise JobError("model.hub_id", f"{spec.hub_id} is not in the model cache {spec.hf_cache or '(default)'}"
                       f" ({type(e).__name__})",
                       "run `orchestrate.py prepare` on a host with internet, or mount the cache holding it") from e


def open_device_context(device: str) -> str:
    """Create the CUDA context before the idle baseline: a GPU with a context draws more than one without, and the
    trial's windows all run with it. Says what it did, for the record."""
    if device != "cuda":
        return "none needed (CPU)"
    try:
        import torch
    except ImportError:
        return "not created: torch is not in this image (the engine creates it when loading)"
    try:
        torch.cuda.init()
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
    except Exception as e:  # no usable GPU: the engine's own check says so in its phase
        return f"not created: {type(e).__name__}: {e}"
    return "created (torch)"


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    return tok


def work_shape(job: Job, encoded: list[list[int]]) -> Shape:
    """The work's dimensions, before any window: what engines size their context, caches and graphs by."""
    lengths = [len(ids) for ids in encoded]
    return Shape(batch_size=job.generation.batch_size, prompts=len(encoded), shortest_prompt=min(lengths),
                 longest_prompt=max(lengths), max_new_tokens=job.generation.budget(max(lengths)))


def engine_context(job: Job, model_dir: Path, eos: frozenset[int]) -> EngineContext:
    """What the job's engine may know of it (runners/engines/options.py EngineContext)."""
    return EngineContext(device=job.device, precision=job.precision, model_dir=model_dir, model_name=job.model.name,
                         cache_dir=Path(job.cache_dir) if job.cache_dir else None, seed=job.seed, eos_ids=eos,
                         sampling=job.generation.sampling, gpus=job.gpus)


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class SerialisedBatch(RuntimeError):
    """An engine ran a batch's prompts one after another while saying it batched them."""


class TrialRun:
    """One runner invocation of a job (the orchestrator's plan.Trial is a place in the matrix; this is its run)."""

    def __init__(self, job: Job | None, raw_job: Any, mode: str = "run"):
        self.job = job
        self.mode = mode
        self.phase = "job"
        self.record = new_record(job.to_dict() if job else raw_job, mode=mode, job_hash=job.hash if job else None)

    def enter(self, phase: str) -> None:
        """Start a phase; one progress line on stderr, so a container log says how far a killed trial got."""
        self.phase = phase
        print(f"[runner +{time.time() - self.record['created_unix']:.1f}s] {phase}", file=sys.stderr, flush=True)

    def fail(self, error: BaseException) -> None:
        self.record["status"] = "failed"
        message = str(error) if isinstance(error, JobError) else f"{type(error).__name__}: {error}"
        self.record["error"] = {"phase": self.phase, "type": type(error).__name__, "message": message,
                                "traceback": None if isinstance(error, JobError) else traceback.format_exc(limit=8)}

    def run(self) -> dict[str, Any]:
        """The phases in order; each measured one in its own window. Whatever breaks, the record says where."""
        job = self.job
        assert job is not None
        rec = self.record
        rec["environment"] = environment.collect(job.trial)
        self.enter("meters")
        self.meters = MeterSet.create(job.meters, job.device)
        self.engine: Engine | None = None
        try:
            rec["environment"]["meters"] = self.meters.describe()
            if job.meters.idle_seconds > 0:
                self._idle()
            self._model_and_workload()
            self._engine()
            self._window("prepare", lambda: self.engine.prepare(self.prompts))
            if self.mode == "run":
                self._window("load", lambda: self.engine.load(self.shape))
                if "compile" in self.engine.optional_phases:
                    self._window("compile", lambda: self.engine.compile(self.shape))
                if job.warmup.batches:
                    self._window("warmup", self._warmup, {"batches": job.warmup.batches})
                self._generate()
                if job.reference and job.generation.sampling is None:  # sampled tokens are chance's
                    self.enter("agreement")
                    reference = json.loads(Path(job.reference).read_text())
                    rec["agreement"] = token_agreement(rec, reference, job.reference)
            rec["engine"]["details"] = self.engine.describe()
            rec["status"] = "ok"
            rec["error"] = None
        except BaseException as e:  # noqa: BLE001 — every failure becomes a record; KeyboardInterrupt too
            self.fail(e)
            if self.engine is not None:
                try:
                    rec["engine"]["details"] = self.engine.describe()
                except Exception:
                    pass
            if isinstance(e, KeyboardInterrupt):
                raise
        finally:
            if self.engine is not None:
                self.engine.close()
            self.meters.close()
        return rec

    # --- the phases ---------------------------------------------------------------------------------------------------
    def _idle(self) -> None:
        self.enter("idle")
        context = open_device_context(self.job.device)  # idle as the trial will idle: its device context open
        self.record["idle"] = {**self.meters.idle(self.job.meters.idle_seconds), "device_context": context}

    def _model_and_workload(self) -> None:
        """The model folder, its tokenizer, the prompts tokenised once, and the Shape engines size themselves by —
        all before any window."""
        job = self.job
        self.enter("model")
        self.model_dir = resolve_model(job.model)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.eos = eos_ids(self.tokenizer, self.model_dir)  # once: the engines stop on it, the record reads it
        self._model_facts(self.model_dir)
        self.enter("workload")
        self.prompts, input_ids = self._inputs()
        self.encoded = [list(p.ids or ()) for p in self.prompts]
        self.batches = _batches(list(range(len(self.prompts))), job.generation.batch_size)
        self.shape = work_shape(job, self.encoded)
        self.record["workload"] = {
            "dataset": job.workload.dataset, "style": job.workload.style, "seed": job.workload.seed,
            "selection": job.workload.selection, "prompts": len(self.prompts),
            "task_ids": [p.task_id for p in self.prompts], "texts": [p.text for p in self.prompts],
            "methods": [p.method for p in self.prompts], "shape": asdict(self.shape), "input_ids": input_ids}

    def _inputs(self) -> tuple[list, dict[str, Any]]:
        """The prompts with the ids every engine gets, and how they were made (for the record): the job's inputs
        file (same work: tokenised once per model by the reference's image), else this image's own tokenizer."""
        job = self.job
        own = tokenizer_identity(self.tokenizer, self.model_dir)
        if not job.inputs:
            prompts = encode(load_prompts(job.workload, self.tokenizer), self.tokenizer)
            return prompts, {"source": "this image's tokenizer", "tokenizer": own,
                             "why": "as served (each runtime reads the prompt itself)" if not
                             job.generation.fixed_length else "the job names no inputs file"}
        path = Path(job.inputs) if Path(job.inputs).is_absolute() else Path(job.cache_dir or ".") / job.inputs
        prompts, facts = read_inputs(path, job.workload, self.model_dir)
        # what this image's tokenizer would have made of the same texts: the difference the shared ids remove
        mine = encode(prompts, self.tokenizer)
        differ = [p.index for p, q in zip(prompts, mine) if p.ids != q.ids]
        return prompts, {"source": "inputs file", "path": job.inputs, **facts, "this_image_tokenizer": own,
                         "this_image_would_differ": differ}

    def _engine(self) -> None:
        job = self.job
        self.enter("host")
        cls = engine_class(job.engine)
        self.engine = cls(engine_context(job, self.model_dir, self.eos), self.tokenizer,
                          cls.check_options(job.engine_options))
        self.engine.check_host()

    def _window(self, phase: str, work: Callable[[], dict[str, Any] | None], info: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """One measured phase: the work, then the device synchronised, inside the same window."""
        self.enter(phase)
        with self.meters.window(phase, info) as w:
            facts = work()  # what the phase says of itself (a conversion's facts, compile timings), or None
            if facts:
                w.info.update(facts)
            self.engine.synchronize()
        self.record["phases"][phase] = w.result
        return w.result

    def _stop_rule(self) -> StopRule | None:
        sequences = self.job.generation.stop_sequences
        return StopRule(self.tokenizer, sequences) if sequences else None

    def _warmup(self) -> None:
        ignore_eos = self.job.generation.fixed_length
        for k in range(self.job.warmup.batches):
            batch = [self.encoded[i] for i in self.batches[k % len(self.batches)]]
            self.engine.generate(batch, self._budget(batch), ignore_eos, lambda: None, self._stop_rule())

    def _generate(self) -> None:
        """The measured generation: every batch, with per-prompt latency, TTFT and TPOT from the engine's steps."""
        engine, encoded, ignore_eos = self.engine, self.encoded, self.job.generation.fixed_length
        stop = self._stop_rule()
        per_prompt = []
        self.enter("generate")
        with self.meters.window("generate", {"batches": len(self.batches)}) as w:
            for b, members in enumerate(self.batches):
                batch = [encoded[i] for i in members]
                steps: list[float] = []

                def on_step(steps=steps):
                    engine.synchronize()
                    steps.append(time.perf_counter())

                engine.synchronize()
                t0 = time.perf_counter()
                outputs = engine.generate(batch, self._budget(batch), ignore_eos, on_step, stop)
                engine.synchronize()
                t1 = time.perf_counter()
                ttft = (steps[0] - t0) if steps else None
                for i, out in zip(members, outputs):
                    n = len(out)
                    tpot = ((t1 - steps[0]) / (n - 1)) if steps and n > 1 else None
                    per_prompt.append({"index": i, "task_id": self.prompts[i].task_id, "batch": b,
                                       "prompt_tokens": len(encoded[i]), "prompt_ids": list(encoded[i]),
                                       "generated_tokens": n,
                                       "latency_s": t1 - t0, "ttft_s": ttft, "tpot_s": tpot,
                                       "decode_steps": len(steps),
                                       "output_ids": [int(t) for t in out]})
        self.record["phases"]["generate"] = w.result
        if ignore_eos:
            self._check_batched(per_prompt)
        self._decode(per_prompt)
        if not ignore_eos:
            self._check_stopping(per_prompt, stop)
        self.record["per_prompt"] = per_prompt
        self._summarise(w.result, per_prompt, len(self.batches), w.intensity_g_per_kwh)

    def _check_batched(self, per_prompt: list[dict]) -> None:
        """At fixed length a batch of B prompts is one decode step per token for all of them; an engine that stepped
        through them in turn (B × N steps) ran batch 1 B times, and its figures would be batch 1's under batch B's
        name. It must say so (its batching mode "sequential …", e.g. llama.cpp's option) or the trial fails."""
        if str(self.engine.describe().get("batching") or "").startswith("sequential"):
            return
        for b, members in enumerate(self.batches):
            entries = [p for p in per_prompt if p["batch"] == b]
            lengths = [p["generated_tokens"] for p in entries]
            steps = max((p["decode_steps"] for p in entries), default=0) - self._prompt_tail(entries)
            # a scheduler may take a step or two more than the longest output; prompts in turn take their sum
            if len(members) > 1 and steps > max(lengths) + 1 and steps >= sum(lengths):
                raise SerialisedBatch(
                    f"batch {b}: {steps} decode steps for {len(members)} prompts of {max(lengths)} tokens — the "
                    f"engine ran them one after another while it says {self.engine.describe().get('batching')!r}; "
                    "a serialised batch is not batch " f"{len(members)}: make the engine batch, or declare its "
                    "batching sequential")

    def _prompt_tail(self, entries: list[dict]) -> int:
        """Decode steps a batch spends on prompt tokens: an engine that feeds the longer prompts' last tokens inside
        its decode loop (CTranslate2 forwards the common length at once) declares it, and takes one step more per
        token of length difference — real batching, not a serialised batch nor steps past the end."""
        if not entries or not self.engine.describe().get("prompt_tail_in_decode_loop"):
            return 0
        return max(p["prompt_tokens"] for p in entries) - min(p["prompt_tokens"] for p in entries)

    def _decode(self, per_prompt: list[dict]) -> None:
        """The text of every output, after the measured window (decoding is not serving work): up to the first EOS,
        as a user would see it — a fixed-length run keeps generating past it, and that tail is not the answer."""
        for p in per_prompt:
            ids = p["output_ids"]
            p["eos_at"] = next((i for i, t in enumerate(ids) if t in self.eos), None)
            p["output_text"] = self.tokenizer.decode(ids[: p["eos_at"]] if p["eos_at"] is not None else ids,
                                                     skip_special_tokens=True)

    def _check_stopping(self, per_prompt: list[dict], stop: StopRule | None) -> None:
        """As served: did each output end where the rule says (EOS, the stop rule, the budget)? An engine that stopped
        a token late or early is recorded, not averaged in."""
        longest: dict[int, int] = {}
        for p in per_prompt:
            longest[p["batch"]] = max(longest.get(p["batch"], 0), p["generated_tokens"])
        tails = {b: self._prompt_tail([p for p in per_prompt if p["batch"] == b]) for b in longest}
        ends = []
        past_end: dict[int, int] = {}
        for p in per_prompt:
            budget = self._budget([self.encoded[i] for i in self.batches[p["batch"]]])
            c = check(p["output_ids"], self.eos, stop, budget)
            p["ended_by"] = c["by"] if c["consistent"] else f"{c['by']} expected after {c['expected_tokens']} tokens"
            # decode steps beyond the batch's longest output: work paid for that nobody gets (e.g. an engine that
            # matches stop strings only after the step that completed them) — recorded, apart from wrong tokens
            steps = p["decode_steps"] - tails[p["batch"]]
            if steps > longest[p["batch"]]:
                past_end[p["batch"]] = steps - longest[p["batch"]]
            ends.append(c)
        self.record["stopping"] = {
            "rule": "runner (runners/stopping.py)", "sequences": list(stop.sequences) if stop else [],
            "ended_by": dict(Counter(c["by"] for c in ends)),
            "inconsistent": sum(not c["consistent"] for c in ends),  # outputs not ending where the rule says
            "steps_past_end": sum(past_end.values()),  # decode steps after every output of their batch had ended
            "batches_past_end": len(past_end)}

    def _budget(self, batch: list[list[int]]) -> int:
        assert self.job is not None
        return self.job.generation.budget(max(len(p) for p in batch))

    def _model_facts(self, model_dir: Path) -> None:
        try:
            config = json.loads((model_dir / "config.json").read_text())
        except (OSError, ValueError):
            return
        self.record["model"].update({"model_type": config.get("model_type"),
                                     "architecture": (config.get("architectures") or [None])[0],
                                     "resolved_path": str(model_dir),
                                     "parameters": count_parameters(model_dir)})

    def _summarise(self, gen: dict, per_prompt: list[dict], n_batches: int, intensity: float | None) -> None:
        rec = self.record
        out_tokens = sum(p["generated_tokens"] for p in per_prompt)
        rec["tokens"] = {"prompts": len(per_prompt), "batches": n_batches,
                         "input": sum(p["prompt_tokens"] for p in per_prompt), "output": out_tokens}
        rec["metrics"] = metrics_of(gen, per_prompt).as_dict()  # the record's one computation (latency per batch)
        rec["co2"] = {"intensity_g_per_kwh": intensity, "country_iso_code": self.job.meters.country_iso_code,
                      "source": "codecarbon" if intensity is not None else None,
                      "reason": None if intensity is not None else "codecarbon disabled or unavailable"}

    def write(self, out: Path) -> None:
        write_json_atomic(out, self.record)


def make_inputs(job: Job) -> dict[str, Any]:
    """``python -m runners tokenize``: the workload tokenised by this image — the inputs file of same-work mode."""
    model_dir = resolve_model(job.model)
    tokenizer = load_tokenizer(model_dir)
    prompts = encode(load_prompts(job.workload, tokenizer), tokenizer)
    made_in = {k: job.trial.get(k) for k in ("runtime", "image", "image_id", "run_id") if job.trial.get(k)}
    made_in.update(engine=job.engine, device=job.device, created_unix=time.time())
    return inputs_document(job.workload, prompts, tokenizer_identity(tokenizer, model_dir), made_in)


def count_parameters(model_dir: Path) -> int | None:
    """Parameters stored in the model's safetensors files, read from their headers (no weights loaded)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():
                n = 1
                for dim in st.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total
