"""The job contract: what the orchestrator hands the runner, validated into the plain types of runners/job_spec.py.

A job is a JSON file. Every field is validated here, once, and every problem is reported as one line that names the
field and the fix (``JobError``), so that a bad cell of the matrix fails with a reason a person can act on.

Example (all keys but engine/device/model optional)::

    {"schema": "slm-matrix.job/1",
     "engine": "torch", "device": "cpu", "precision": "fp32",
     "model": {"name": "tiny-llama", "path": "/models/tiny-llama"},
     "workload": {"style": "fragment", "count": 8, "selection": "first", "seed": 2412},
     "generation": {"batch_size": 1, "new_tokens": 32, "fixed_length": true},
     "warmup": {"batches": 1},
     "meters": {"sample_interval_s": 0.1, "idle_seconds": 0, "codecarbon": true},
     "engine_options": {"threads": 2},
     "cache_dir": "/cache", "inputs": "inputs/tiny-llama/3f2a….json", "seed": 0,
     "trial": {"run_id": "smoke", "trial_id": "…", "repetition": 0}}
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runners import engines
from runners.errors import JobError  # noqa: F401  (raised here, imported from here by callers)
# the contract's types, importable from here as they always were
from runners.job_spec import (DATASETS, DEVICES, JOB_SCHEMA, PROMPT_STYLES, SELECTIONS,  # noqa: F401
                              GenerationSpec, Job, MeterSpec, ModelSpec, SamplingSpec, WarmupSpec, WorkloadSpec)


# --- parsing -----------------------------------------------------------------------------------------------------


class _Reader:
    """Pops typed fields off one JSON object; whatever is left over is an unknown key."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, dict):
            raise JobError(path or "(root)", f"must be a JSON object, got {type(data).__name__}",
                           "write it as {\"key\": value, …}")
        self.data = dict(data)
        self.path = path

    def _p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, choices=None, minimum=None,
            nullable: bool = False) -> Any:
        if key not in self.data:
            if default is ...:
                raise JobError(self._p(key), "is missing", f"add \"{key}\" to the job")
            return default
        value = self.data.pop(key)
        if value is None and nullable:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a job saying `"batch_size": true` is a mistake, not 1.
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int):
            ok = True
            value = float(value)
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise JobError(self._p(key), f"must be {names}, got {value!r}", f"give \"{key}\" a {names} value")
        if choices is not None and value not in choices:
            raise JobError(self._p(key), f"unknown value {value!r}", f"use one of: {', '.join(map(str, choices))}")
        if minimum is not None and value < minimum:
            raise JobError(self._p(key), f"must be ≥ {minimum}, got {value!r}", f"set \"{key}\" to {minimum} or more")
        return value

    def sub(self, key: str) -> "_Reader":
        return _Reader(self.data.pop(key, {}), self._p(key))

    def done(self, allowed: list[str]) -> None:
        if self.data:
            key = sorted(self.data)[0]
            raise JobError(self._p(key), "unknown key", f"remove it; allowed keys here: {', '.join(allowed)}")


def _engine(r: _Reader) -> tuple[str, str, str]:
    """(engine, device, precision), checked against what the engine registry says each engine supports."""
    engine = r.get("engine", str, choices=engines.ENGINE_NAMES)
    device = r.get("device", str, choices=DEVICES)
    precision = r.get("precision", str, "fp32")
    precisions = engines.engine_class(engine).precisions
    supported = precisions.get(device, ())
    if not supported:
        raise JobError("device", f"engine {engine!r} does not run on {device!r}",
                       f"use device {' or '.join(precisions)} with this engine")
    if precision not in supported:
        raise JobError("precision", f"engine {engine!r} on {device} has no precision {precision!r}",
                       f"use one of: {', '.join(supported)}")
    return engine, device, precision


def _model(r: _Reader) -> ModelSpec:
    m = r.sub("model")
    model = ModelSpec(
        name=m.get("name", str, None, nullable=True) or "",
        path=m.get("path", str, None, nullable=True),
        hub_id=m.get("hub_id", str, None, nullable=True),
        revision=m.get("revision", str, None, nullable=True),
        hf_cache=m.get("hf_cache", str, None, nullable=True),
    )
    m.done(["name", "path", "hub_id", "revision", "hf_cache"])
    if not model.path and not model.hub_id:
        raise JobError("model", "names no model", "give model.path (a local HF directory) or model.hub_id")
    if model.path and model.hub_id:
        raise JobError("model", "gives both path and hub_id", "keep one of model.path or model.hub_id")
    if not model.name:
        model = ModelSpec(**{**asdict(model), "name": model.hub_id or Path(model.path or "").name})
    return model


def _workload(r: _Reader) -> WorkloadSpec:
    w = r.sub("workload")
    workload = WorkloadSpec(
        dataset=w.get("dataset", str, "humaneval", choices=DATASETS),
        style=w.get("style", str, "fragment", choices=PROMPT_STYLES),
        count=w.get("count", int, None, minimum=1, nullable=True),
        selection=w.get("selection", str, "first", choices=SELECTIONS),
        seed=w.get("seed", int, 2412),
        min_tokens=w.get("min_tokens", int, 10, minimum=1),
        max_tokens=w.get("max_tokens", int, 15, minimum=1),
        prompt_tokens=w.get("prompt_tokens", int, None, minimum=1, nullable=True),
    )
    w.done(["dataset", "style", "count", "selection", "seed", "min_tokens", "max_tokens", "prompt_tokens"])
    if workload.max_tokens < workload.min_tokens:
        raise JobError("workload.max_tokens", "is below min_tokens", "make max_tokens ≥ min_tokens")
    if (workload.style == "length") != (workload.prompt_tokens is not None):
        raise JobError("workload.prompt_tokens", f"is {workload.prompt_tokens} with style {workload.style!r}",
                       'give prompt_tokens = N together with style = "length" (prompts of exactly N tokens), and '
                       "only then")
    return workload


def _generation(r: _Reader) -> GenerationSpec:
    g = r.sub("generation")
    has_max_length = "max_length" in g.data and g.data["max_length"] is not None
    generation = GenerationSpec(
        batch_size=g.get("batch_size", int, 1, minimum=1),
        new_tokens=g.get("new_tokens", int, None if has_max_length else 128, minimum=1, nullable=True),
        max_length=g.get("max_length", int, None, minimum=2, nullable=True),
        fixed_length=g.get("fixed_length", bool, True),
        stop_sequences=tuple(g.get("stop_sequences", list, [])),
        sampling=_sampling(g) if g.data.get("sampling") is not None else g.data.pop("sampling", None),
    )
    g.done(["batch_size", "new_tokens", "max_length", "fixed_length", "stop_sequences", "sampling"])
    if generation.sampling is not None and not generation.fixed_length:
        raise JobError("generation.sampling", "is only compared at fixed length: sampled outputs as served end where "
                       "chance puts their EOS, so their energies would be of different work",
                       "set fixed_length = true, or remove sampling")
    if any(not isinstance(s, str) or not s for s in generation.stop_sequences):
        raise JobError("generation.stop_sequences", "must be a list of non-empty strings",
                       'write it as stop_sequences = ["\\ndef", "\\nclass"]')
    if generation.stop_sequences and generation.fixed_length:
        raise JobError("generation.stop_sequences", "only apply as served (fixed_length = false): a same-work run "
                       "generates the whole budget everywhere, and the evaluation cuts completions at the stop "
                       "sequences", "set fixed_length = false, or remove stop_sequences")
    if generation.new_tokens is not None and generation.max_length is not None:
        raise JobError("generation", "gives both new_tokens and max_length", "keep one of them")
    if generation.new_tokens is None and generation.max_length is None:
        raise JobError("generation.new_tokens", "is missing", "give new_tokens (or the study's max_length)")
    return generation


def _sampling(g: _Reader) -> SamplingSpec:
    sm = g.sub("sampling")
    sampling = SamplingSpec(temperature=sm.get("temperature", float), top_p=sm.get("top_p", float, 1.0),
                            seed=sm.get("seed", int, None, nullable=True))
    sm.done(["temperature", "top_p", "seed"])
    if not sampling.temperature > 0:
        raise JobError("generation.sampling.temperature", f"must be > 0, got {sampling.temperature!r}",
                       "give a temperature such as 0.8 (greedy decoding is the default: remove sampling for it)")
    if not 0 < sampling.top_p <= 1:
        raise JobError("generation.sampling.top_p", f"must be in (0, 1], got {sampling.top_p!r}",
                       "give top_p such as 0.95 (1 keeps every token)")
    return sampling


def _meters(r: _Reader) -> MeterSpec:
    mt = r.sub("meters")
    meters = MeterSpec(
        sample_interval_s=mt.get("sample_interval_s", float, 0.1, minimum=0.005),
        idle_seconds=mt.get("idle_seconds", float, 0.0, minimum=0.0),
        codecarbon=mt.get("codecarbon", bool, True),
        country_iso_code=mt.get("country_iso_code", str, "USA"),
        keep_series=mt.get("keep_series", bool, True),
        rapl_root=mt.get("rapl_root", str, "/sys/class/powercap"),
        gpus=mt.get("gpus", dict, None, nullable=True),
        trace_interval_s=mt.get("trace_interval_s", float, 0.02, minimum=0.001),
    )
    mt.done(["sample_interval_s", "idle_seconds", "codecarbon", "country_iso_code", "keep_series", "rapl_root",
             "gpus", "trace_interval_s"])
    for key, index in (meters.gpus.items() if meters.gpus else ()):
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise JobError(f"meters.gpus.{key}", f"must map a GPU UUID or index to the host's GPU index, got {index!r}",
                           'write it as {"GPU-…": 0}')
    return meters


def _gpus(r: _Reader, engine: str, device: str, options, meters: MeterSpec) -> int:
    """The job's GPUs per trial: CUDA only, an engine that can spread the model over them, and a boundary
    (meters.gpus, where given) of exactly that many."""
    gpus = r.get("gpus", int, 1, minimum=1)
    if gpus > 1 and device != "cuda":
        raise JobError("gpus", f"is {gpus} on device {device!r}: a CPU trial runs on no GPU",
                       "remove gpus (or set it to 1), or run the job on cuda")
    engines.engine_class(engine).check_gpus(gpus, options)
    if meters.gpus is not None and len(meters.gpus) != gpus:
        raise JobError("meters.gpus", f"holds {len(meters.gpus)} GPU(s) but the trial has gpus = {gpus}",
                       "meter exactly the trial's GPUs: one meters.gpus entry per GPU it runs on")
    return gpus


def parse_job(data: Any) -> Job:
    """Validate a job given as a JSON-like dict; raise JobError naming the first bad field."""
    r = _Reader(data, "")
    schema = r.get("schema", str, JOB_SCHEMA)
    if schema != JOB_SCHEMA:
        raise JobError("schema", f"unsupported job schema {schema!r}", f"write jobs for {JOB_SCHEMA!r}")
    engine, device, precision = _engine(r)
    model, workload, generation = _model(r), _workload(r), _generation(r)
    wu = r.sub("warmup")
    warmup = WarmupSpec(batches=wu.get("batches", int, 1, minimum=0))
    wu.done(["batches"])
    meters = _meters(r)
    engine_options = r.get("engine_options", dict, {})
    gpus = _gpus(r, engine, device, engines.engine_class(engine).check_options(engine_options), meters)
    greedy_only = engines.engine_class(engine).greedy_only
    if generation.sampling is not None and greedy_only:
        raise JobError("generation.sampling", f"engine {engine!r} decodes greedily only ({greedy_only})",
                       "remove sampling for this runtime, or sample with " + ", ".join(
                           n for n in engines.ENGINE_NAMES if not engines.engine_class(n).greedy_only))
    job = Job(
        engine=engine, device=device, precision=precision, model=model, workload=workload,
        generation=generation, warmup=warmup, meters=meters, engine_options=engine_options,
        cache_dir=r.get("cache_dir", str, None, nullable=True),
        reference=r.get("reference", str, None, nullable=True),
        inputs=r.get("inputs", str, None, nullable=True),
        seed=r.get("seed", int, 0), gpus=gpus,
        trial=r.get("trial", dict, {}),
    )
    r.done(["schema", "engine", "device", "precision", "model", "workload", "generation", "warmup", "meters",
            "engine_options", "cache_dir", "reference", "inputs", "seed", "gpus", "trial"])
    if job.inputs and not Path(job.inputs).is_absolute() and not job.cache_dir:
        raise JobError("inputs", f"is a relative path ({job.inputs}) but the job has no cache_dir",
                       "give cache_dir (the inputs file lives in the model cache) or an absolute inputs path")
    return job


def load_job(path: str | Path) -> Job:
    p = Path(path)
    if not p.is_file():
        raise JobError("(file)", f"no job file at {p}", "pass the path of a job JSON file")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise JobError("(file)", f"{p} is not valid JSON ({e.msg} at line {e.lineno})", "fix the JSON syntax") from e
    return parse_job(data)
