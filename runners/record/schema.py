"""The record's JSON schema (``slm-matrix.record/2``) and its one validator; the shape is described in
runners/record/__init__.py."""

from __future__ import annotations

import functools
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

# environment.privileges (runners/privileges.py), read by the runner from inside; absent in older records
PRIVILEGES_SCHEMA = {
    "type": "object",
    "required": ["uid", "cap_eff", "cap_bnd", "no_new_privs", "root_read_only", "pids_max"],
    "properties": {
        "uid": {"type": "integer"},
        "gid": {"type": "integer"},
        "cap_eff": _str_or_null,
        "cap_bnd": _str_or_null,
        "no_new_privs": {"type": ["boolean", "null"]},
        "root_read_only": {"type": ["boolean", "null"]},
        "pids_max": {"anyOf": [{"type": ["integer", "null"]}, {"const": "max"}]},  # "max": no limit
    },
}

# host.power_cap (orchestrator/power_cap.py): the GPU power cap a trial ran under; absent in uncapped and older records
POWER_CAP_SCHEMA = {
    "type": "object",
    "required": ["requested_w", "gpus"],
    "properties": {
        "requested_w": {"type": "integer", "minimum": 1},
        "gpus": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["component", "requested_w", "enforced_w", "original_w", "restored_w"],
            "properties": {"component": {"type": "string"}, "uuid": _str_or_null, "requested_w": _num,
                           "enforced_w": _num, "enforced_at_end_w": _num, "original_w": _num,
                           "restored_w": _num_or_null}}},
        "restore_error": _str_or_null,  # why a limit could not be restored (the next start restores it from the note)
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
        "environment": {"type": "object", "properties": {"privileges": PRIVILEGES_SCHEMA}},
        "host": {"type": ["object", "null"], "properties": {"power_cap": POWER_CAP_SCHEMA}},
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
