"""The trial record: what the runner writes for one job. Versioned; validated against RECORD_SCHEMA.

Shape (``slm-matrix.record/1``)::

    schema, mode ("run" | "prepare"), status ("ok" | "failed"), error (null | {phase, type, message}),
    created_unix
    job (the job as run), job_hash, trial (bookkeeping passed through from the job)
    engine  {name, device, precision, details{…what actually ran: provider, threads, batching, versions…}}
    model   {name, source ("path"|"hub"), path, hub_id, model_type, architecture, parameters}
    workload {dataset, style, seed, selection, prompts, task_ids[]}
    phases  {load|prepare|compile|warmup|generate: Window}   (only the phases that ran)
      Window = {start_unix, end_unix, start_mono, end_mono, duration_s, energy: [Figure],
                energy_total{measured_j, estimated_j}, boundary ("cpu:package-0 measured + gpu:0 measured"),
                flags: [{code, component, message}], host_metered?{components, trace_interval_s, boundary_error_j},
                samples{n, interval_s, summary{metric: {mean,min,max}}, series{t_s[], metric[]…} | null}, info{}}
      Figure = {component, joules|null, source ("measured"|"estimated"|"unavailable"), meter, reason|null}
        component: "gpu:<i>" (NVML), "cpu:package-<i>" / "cpu:dram-<i>" (RAPL), "cpu" / "ram" / "gpu" (codecarbon)
    idle    null | {duration_s, power: [{component, watts|null, source, meter, reason}]}
    tokens  {prompts, batches, input, output}
    per_prompt [{index, task_id, batch, prompt_tokens, prompt_ids[], generated_tokens, latency_s, ttft_s, tpot_s,
                output_ids[], output_text, eos_at}]
      (generated_tokens: the count produced; the job's generation.new_tokens is the budget asked for)
    metrics {tokens_per_s, joules_per_token{measured, estimated}, latency_s{…}, ttft_s{…}, tpot_s{…}}
    co2     {intensity_g_per_kwh|null, country_iso_code, source, reason}
    agreement null | {reference, prompts, identical, share_identical, first_divergence[]}
    environment {hostname, platform, python, cpu_model, cpu_count, gpus[], driver, cuda, libraries{}, image_id,
                 image, runner_version}
    host    (added by the orchestrator: its own windows around the container, idle baseline, container facts)

Measured and estimated joules are never added together: ``energy_total`` and ``joules_per_token`` keep them apart.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
import os
import tempfile
from pathlib import Path
from typing import Any

RECORD_SCHEMA_ID = "slm-matrix.record/2"
# /2: windows carry start_mono/end_mono (the host meters by them), their energy boundary and validity flags;
# per_prompt.new_tokens became generated_tokens (the count; the job's generation.new_tokens is the budget)
SOURCES = ("measured", "estimated", "unavailable")
PHASES = ("prepare", "load", "compile", "warmup", "generate")

_num = {"type": "number"}
_num_or_null = {"type": ["number", "null"]}
_str_or_null = {"type": ["string", "null"]}
_stats = {"type": ["object", "null"], "additionalProperties": _num_or_null}

FIGURE_SCHEMA = {
    "type": "object",
    "required": ["component", "joules", "source", "meter", "reason"],
    "properties": {
        "component": {"type": "string"},
        "joules": _num_or_null,
        "source": {"enum": list(SOURCES)},
        "meter": {"type": "string"},
        "reason": _str_or_null,
    },
    # An unavailable figure must carry no number; a number must carry its source.
    "if": {"properties": {"source": {"const": "unavailable"}}},
    "then": {"properties": {"joules": {"type": "null"}, "reason": {"type": "string"}}},
    "else": {"properties": {"joules": _num}},
}

WINDOW_SCHEMA = {
    "type": "object",
    "required": ["start_unix", "end_unix", "start_mono", "end_mono", "duration_s", "energy", "energy_total",
                 "boundary", "flags", "samples", "info"],
    "properties": {
        "start_unix": _num,
        "end_unix": _num,
        "start_mono": _num,
        "end_mono": _num,
        "boundary": {"type": "string"},
        "flags": {"type": "array", "items": {"type": "object", "required": ["code", "component", "message"]}},
        "duration_s": {"type": "number", "minimum": 0},
        "energy": {"type": "array", "items": FIGURE_SCHEMA},
        "energy_total": {
            "type": "object",
            "required": ["measured_j", "estimated_j"],
            "properties": {"measured_j": _num_or_null, "estimated_j": _num_or_null},
        },
        "samples": {
            "type": ["object", "null"],
            "properties": {"n": {"type": "integer"}, "interval_s": _num, "summary": {"type": "object"},
                           "series": {"type": ["object", "null"]}},
        },
        "info": {"type": "object"},
    },
}

PROMPT_SCHEMA = {
    "type": "object",
    "required": ["index", "task_id", "batch", "prompt_tokens", "generated_tokens", "latency_s", "ttft_s", "tpot_s",
                 "output_ids"],
    "properties": {
        "index": {"type": "integer"},
        "task_id": {"type": "string"},
        "batch": {"type": "integer"},
        "prompt_tokens": {"type": "integer", "minimum": 1},
        "generated_tokens": {"type": "integer", "minimum": 0},  # the count produced (job: generation.new_tokens
                                                                 # is the budget asked for)
        "latency_s": _num,
        "ttft_s": _num_or_null,
        "tpot_s": _num_or_null,
        "output_ids": {"type": "array", "items": {"type": "integer"}},
        # the prompt as the engine got it: each image tokenises with its own transformers, so the same text can become
        # other ids (agreement then says so instead of scoring a different input); absent in older records
        "prompt_ids": {"type": "array", "items": {"type": "integer"}},
        # decoded after the measured window, up to the first end-of-sequence token (what a user would see; HumanEval
        # evaluation cuts it further at the stop sequences); absent in records made before it existed
        "output_text": {"type": "string"},
        "eos_at": {"type": ["integer", "null"]},  # index of the first EOS in output_ids, None when there is none
        "decode_steps": {"type": "integer"},  # the engine's steps for this prompt's batch (on_step calls)
        # as served: "eos" | "stop" | "budget", or "<by> expected after N tokens" when the engine ended elsewhere
        "ended_by": {"type": "string"},
    },
}

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": RECORD_SCHEMA_ID,
    "type": "object",
    "required": ["schema", "mode", "status", "error", "created_unix", "job", "job_hash", "trial", "engine", "model",
                 "phases", "environment"],
    "properties": {
        "schema": {"const": RECORD_SCHEMA_ID},
        "mode": {"enum": ["run", "prepare"]},
        "status": {"enum": ["ok", "failed"]},
        "error": {
            "type": ["object", "null"],
            "required": ["phase", "type", "message"],
            "properties": {"phase": {"type": "string"}, "type": {"type": "string"}, "message": {"type": "string"}},
        },
        "created_unix": _num,
        "job": {"type": ["object", "null"]},
        "job_hash": _str_or_null,
        "trial": {"type": "object"},
        "engine": {"type": "object", "properties": {"name": {"type": "string"}, "device": {"type": "string"},
                                                     "precision": {"type": "string"},
                                                     "details": {"type": "object"}}},
        "model": {"type": "object"},
        "workload": {"type": ["object", "null"]},
        "phases": {"type": "object", "propertyNames": {"enum": list(PHASES)},
                   "additionalProperties": WINDOW_SCHEMA},
        "idle": {
            "type": ["object", "null"],
            "properties": {"duration_s": _num, "power": {"type": "array", "items": {
                "type": "object", "required": ["component", "watts", "source", "meter"],
                "properties": {"watts": _num_or_null, "source": {"enum": list(SOURCES)}}}}},
        },
        "tokens": {"type": ["object", "null"], "properties": {
            "prompts": {"type": "integer"}, "batches": {"type": "integer"},
            "input": {"type": "integer"}, "output": {"type": "integer"}}},
        "per_prompt": {"type": "array", "items": PROMPT_SCHEMA},
        "metrics": {"type": ["object", "null"], "properties": {
            "tokens_per_s": _num_or_null,
            "joules_per_token": {"type": "object", "properties": {"measured": _num_or_null,
                                                                  "estimated": _num_or_null}},
            "latency_s": _stats, "ttft_s": _stats, "tpot_s": _stats}},
        "co2": {"type": ["object", "null"]},
        "agreement": {"type": ["object", "null"]},
        "environment": {"type": "object"},
        "host": {"type": ["object", "null"]},
    },
    "allOf": [
        # A failed record says why; a successful one has no error.
        {"if": {"properties": {"status": {"const": "failed"}}},
         "then": {"properties": {"error": {"type": "object"}}},
         "else": {"properties": {"error": {"type": "null"}}}},
        # A successful measured run carries the generate window and the per-prompt outputs.
        {"if": {"properties": {"status": {"const": "ok"}, "mode": {"const": "run"}}},
         "then": {"required": ["tokens", "per_prompt", "metrics"],
                  "properties": {"phases": {"required": ["load", "generate"]}}}},
        {"if": {"properties": {"status": {"const": "ok"}, "mode": {"const": "prepare"}}},
         "then": {"properties": {"phases": {"required": ["prepare"]}}}},
    ],
}


def totals(figures: list[dict]) -> dict[str, float | None]:
    """Measured and estimated joules, each summed on its own — never together."""
    out: dict[str, float | None] = {"measured_j": None, "estimated_j": None}
    for f in figures:
        if f["source"] in ("measured", "estimated") and f["joules"] is not None:
            key = f"{f['source']}_j"
            out[key] = (out[key] or 0.0) + f["joules"]
    return out


def boundary(figures: list[dict]) -> str:
    """What a window's energy covers and how, e.g. 'cpu:dram-0 measured + cpu:package-0 measured + gpu:0 measured'."""
    return " + ".join(sorted(f"{f['component']} {f['source']}" for f in figures
                             if f["source"] != "unavailable" and f["joules"] is not None)) or "none"


@dataclass
class WindowResult:
    """One measured window, as the record stores it (WINDOW_SCHEMA): its two instants on both clocks, its figures,
    and what is derived from them — the totals per source and the boundary — computed here, once."""

    start_unix: float
    end_unix: float
    start_mono: float
    end_mono: float
    duration_s: float
    energy: list[dict]  # Figures: {component, joules, source, meter, reason, …}
    samples: dict | None = None
    info: dict = field(default_factory=dict)
    flags: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"start_unix": self.start_unix, "end_unix": self.end_unix, "start_mono": self.start_mono,
                "end_mono": self.end_mono, "duration_s": self.duration_s, "energy": self.energy,
                "energy_total": totals(self.energy), "boundary": boundary(self.energy), "flags": self.flags,
                "samples": self.samples, "info": self.info}


def new_record(job: dict[str, Any] | None, *, mode: str = "run", job_hash: str | None = None,
               created_unix: float | None = None) -> dict[str, Any]:
    """The one author of a record's shape: every key of RECORD_SCHEMA, filled from the job (a dict in the job
    contract's form, or None when even that could not be read), status "failed" until the runner says otherwise.
    The runner, the orchestrator's records of runners that wrote none, and the synthetic records all start here."""
    import time

    job = job if isinstance(job, dict) else None
    model = (job or {}).get("model") or {}
    return {
        "schema": RECORD_SCHEMA_ID, "mode": mode, "status": "failed", "error": None,
        "created_unix": time.time() if created_unix is None else created_unix,
        "job": job, "job_hash": job_hash, "trial": dict((job or {}).get("trial") or {}),
        # from a job that failed validation, only the values that are what they should be
        "engine": {**{k: job[f] for k, f in (("name", "engine"), ("device", "device"), ("precision", "precision"))
                      if isinstance(job.get(f), str)}, "details": {}} if job else {},
        "model": {"name": model.get("name"), "path": model.get("path"), "hub_id": model.get("hub_id"),
                  "source": "path" if model.get("path") else "hub"} if job else {},
        "workload": None, "phases": {}, "idle": None, "tokens": None, "per_prompt": [], "metrics": None,
        "co2": None, "agreement": None, "environment": {}, "host": None,
    }


def joules_per_token(energy_total: dict[str, float | None], out_tokens: int) -> dict[str, float | None]:
    """J/token of a window, per source kind (measured and estimated apart)."""
    return {k: (energy_total[f"{k}_j"] / out_tokens if energy_total[f"{k}_j"] is not None and out_tokens else None)
            for k in ("measured", "estimated")}


@functools.cache
def record_validator():
    """One validator for the process: checking the schema itself costs ~0.4 s, far more than a record."""
    import jsonschema

    cls = jsonschema.validators.validator_for(RECORD_SCHEMA)
    cls.check_schema(RECORD_SCHEMA)
    return cls(RECORD_SCHEMA)


def validate_record(record: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when the record does not match RECORD_SCHEMA."""
    import jsonschema

    error = jsonschema.exceptions.best_match(record_validator().iter_errors(record))
    if error is not None:
        raise error


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON so that a reader never sees half a file: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; records are read by other users (host vs container uid)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
