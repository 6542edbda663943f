"""Facts about records that every reader shares: labels (work, configuration, size group, machine), latency
statistics and the one computation of a trial's metrics, the work key, and the upgrade of older schemas."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from runners.record.build import boundary, joules_per_token, totals
from runners.record.schema import RECORD_SCHEMA_ID

RECORD_SCHEMAS = ("slm-matrix.record/1", RECORD_SCHEMA_ID)
ENERGY_SOURCES = ("measured", "estimated")  # the headline's preference: measured where it exists, never their sum
HOST_WINDOW = "host_container"  # the orchestrator's window around the whole container
SIZE_GROUPS = ("<1B", "1B–2B", "≥2B")  # the study's groups, as orchestrator/matrix.py spells them
# Engine names as the study labels them (it says OV for OpenVINO).
ENGINE_ALIASES = {"openvino": "ov", "pytorch": "torch", "onnxruntime": "onnx", "ort": "onnx", "torchscript": "jit"}


def mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def at(data: Any, *keys: str) -> Any:
    """data[k1][k2]… or None where any level is missing or not a dict."""
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data


# --- facts that are not about one record alone ------------------------------------------------------------------


def work_label(generation: dict) -> str:
    """What a trial was asked to generate, as a comparison boundary: the same work (a fixed token count everywhere)
    or as served (each engine stops at EOS / a stop sequence)."""
    budget = (f"{generation['new_tokens']} new tokens" if generation.get("new_tokens") is not None
              else f"max_length {generation.get('max_length')}")
    sampling = generation.get("sampling")
    if sampling:  # fixed length, other tokens by chance: compared with sampled work only
        return (f"sampled (temperature {sampling.get('temperature'):g}, top-p {sampling.get('top_p', 1.0):g}): "
                f"{budget}")
    if generation.get("fixed_length", True):
        return f"same work: {budget}"
    stops = len(generation.get("stop_sequences") or [])
    return f"as served: ≤ {budget}" + (f", {stops} stop sequence(s)" if stops else "")


def config_label(engine: str, device: str, precision: str | None = "fp32") -> str:
    """The configuration label: engine × device × precision, e.g. ``TORCH-CUDA`` (fp32, as the study writes it) or
    ``ONNX-CPU-int8``."""
    e = ENGINE_ALIASES.get(str(engine).lower(), str(engine).lower()).upper()
    label = f"{e}-{str(device).upper()}"
    if precision and str(precision).lower() != "fp32":
        label += f"-{precision}"
    return label


def size_group(params_b: float | None) -> str | None:
    """The study's size groups: <1B, 1B–2B, ≥2B (parameters in billions)."""
    if params_b is None or (isinstance(params_b, float) and math.isnan(params_b)):
        return None
    if params_b < 1.0:
        return SIZE_GROUPS[0]
    if params_b < 2.0:
        return SIZE_GROUPS[1]
    return SIZE_GROUPS[2]


def hardware_label(env: dict, device: str | None) -> str:
    """The machine a trial was measured on: node and CPU, and for a CUDA trial (device "cuda") its GPUs by serial
    (else UUID). Two machines of one model still differ (chip to chip, cooling): repetitions are one sample only from
    one machine, and configurations are compared only on one machine."""
    label = f"{env.get('hostname') or '?'}: {env.get('cpu_model') or '?'} ×{env.get('cpu_count') or '?'}"
    if device == "cuda":
        gpus = [g for g in env.get("gpus") or [] if isinstance(g, dict)]
        label += "; " + (", ".join(f"{g.get('name')} #{g.get('serial') or g.get('uuid') or g.get('index')}"
                                   for g in gpus) or "GPU ?")
    return label


def statistics_of(values: list[float | None]) -> dict[str, float] | None:
    """mean, p50, p90, min, max of the values that exist; None when there are none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    q = statistics.quantiles(vals, n=10) if len(vals) > 1 else [vals[0]] * 9
    return {"mean": statistics.fmean(vals), "p50": statistics.median(vals), "p90": q[8], "min": min(vals),
            "max": max(vals)}


@dataclass(frozen=True)
class Metrics:
    """The generate window's metrics. Latency and TTFT belong to a batch (its prompts share them): each batch counts
    once; TPOT is per prompt. ``latency_per_prompt_mean_s``: each prompt's latency (its batch's), for per-inference
    EDP."""

    tokens_per_s: float | None
    j_per_token: dict[str, float | None]  # {"measured": …, "estimated": …}, gross, never summed together
    latency_s: dict[str, float] | None
    ttft_s: dict[str, float] | None
    tpot_s: dict[str, float] | None
    latency_per_prompt_mean_s: float | None = None

    def median(self, key: str) -> float | None:
        """The median of one statistic (``latency_s``, ``ttft_s``, ``tpot_s``); None when nothing was timed."""
        stats = getattr(self, key)
        return stats["p50"] if stats else None

    def as_dict(self) -> dict[str, Any]:
        """The record's ``metrics`` block."""
        return {"tokens_per_s": self.tokens_per_s, "joules_per_token": self.j_per_token,
                "latency_s": self.latency_s, "ttft_s": self.ttft_s, "tpot_s": self.tpot_s}


def metrics_of(generate: dict | None, per_prompt: list[dict]) -> Metrics:
    """The one computation of a trial's metrics from its generate window and per-prompt rows — the runner stores it,
    the host re-derives it after metering the window with its own counters, readers ask ``Record.metrics()``."""
    generate = mapping(generate)
    out_tokens = sum(int(p.get("generated_tokens") or 0) for p in per_prompt)
    duration = generate.get("duration_s") or 0.0
    energy_total = generate.get("energy_total") or totals(generate.get("energy") or [])
    first_of_batch = list({p.get("batch"): p for p in per_prompt}.values())
    latencies = [p["latency_s"] for p in per_prompt if p.get("latency_s") is not None]
    return Metrics(
        tokens_per_s=out_tokens / duration if duration > 0 else None,
        j_per_token=joules_per_token(energy_total, out_tokens),
        latency_s=statistics_of([p.get("latency_s") for p in first_of_batch]),
        ttft_s=statistics_of([p.get("ttft_s") for p in first_of_batch]),
        tpot_s=statistics_of([p.get("tpot_s") for p in per_prompt]),
        latency_per_prompt_mean_s=statistics.fmean(latencies) if latencies else None)


def work_key(record: dict[str, Any]) -> str | None:
    """Model + workload + generation: records with the same key did (or should have done) the same work."""
    job = mapping(record.get("job"))
    if not job.get("model"):
        return None
    return json.dumps([at(record, "model", "name"), job.get("workload"), job.get("generation")], sort_keys=True)



def batch_key(record: dict[str, Any]) -> str | None:
    """The work key and the whole configuration (runtime, engine, device, precision, options, every other axis) but
    the batch size: records with the same key differ only in how many prompts ran together, so their tokens should
    be the same — batch invariance compares them."""
    job = mapping(record.get("job"))
    if not job.get("model"):
        return None
    config = {k: v for k, v in job.items() if k not in ("schema", "trial", "model", "generation")}
    generation = {k: v for k, v in mapping(job.get("generation")).items() if k != "batch_size"}
    return json.dumps([at(record, "model", "name"), at(record, "trial", "runtime"), config, generation],
                      sort_keys=True, default=str)


def sampled(record: dict[str, Any]) -> bool:
    """The job asked for sampled decoding (generation.sampling): its tokens are chance's, never token-compared."""
    return bool(mapping(mapping(mapping(record.get("job")).get("generation")).get("sampling")))


def batch_size(record: dict[str, Any]) -> int:
    """The batch size the job asked for (1 when it did not say)."""
    value = mapping(mapping(record.get("job")).get("generation")).get("batch_size")
    return value if isinstance(value, int) and value > 0 else 1

def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A record of an older released schema in today's shape (a new dict; the input is left as it was).

    /1 → /2: per_prompt ``new_tokens`` became ``generated_tokens``; windows gained their ``boundary`` (derived from
    their figures). /1 windows have no monotonic marks: they stay without them (nothing can invent them)."""
    if data.get("schema") != "slm-matrix.record/1":
        return data
    out = dict(data)
    out["per_prompt"] = [{**{k: v for k, v in p.items() if k != "new_tokens"},
                          "generated_tokens": p.get("generated_tokens", p.get("new_tokens"))}
                         for p in data.get("per_prompt") or []]
    out["phases"] = {name: ({**w, "boundary": w.get("boundary") or boundary(w.get("energy") or [])}
                            if isinstance(w, dict) else w) for name, w in mapping(data.get("phases")).items()}
    return out
