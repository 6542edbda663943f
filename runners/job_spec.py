"""The job contract's plain types: what a parsed job holds (runners/job.py validates and builds them).

A leaf: standard library only, no other runner module. The meters, the workload and the record's reader depend on these
types without depending on the parser, which consults the engine registry (runners/engines) to check a job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

JOB_SCHEMA = "slm-matrix.job/1"

DEVICES = ("cpu", "cuda")
PROMPT_STYLES = ("fragment", "full", "length")
SELECTIONS = ("first", "sample")
DATASETS = ("humaneval",)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str | None = None  # a local directory in Hugging Face layout
    hub_id: str | None = None  # resolved from a mounted HF cache, never downloaded here
    revision: str | None = None
    hf_cache: str | None = None  # HF_HUB_CACHE-style folder holding hub_id (read-only mount)


@dataclass(frozen=True)
class WorkloadSpec:
    dataset: str = "humaneval"
    style: str = "fragment"
    count: int | None = None  # None: every task (164)
    selection: str = "first"
    seed: int = 2412
    min_tokens: int = 10  # the study's fragment length window, in tokens of the model's tokenizer
    max_tokens: int = 15
    # style "length": every prompt exactly this many input ids (special tokens included), prompt length as a
    # controlled variable of the sweep
    prompt_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The spec as stored (inputs files, records); prompt_tokens only when set, so files made before it existed
        still match."""
        d = asdict(self)
        if d["prompt_tokens"] is None:
            del d["prompt_tokens"]
        return d


@dataclass(frozen=True)
class SamplingSpec:
    """Sampled decoding (the words-to-watts study's setting): temperature and nucleus (top-p), seeded. Its tokens are
    chance's, so sampled work is never token-compared; it runs at fixed length, so energy still compares."""
    temperature: float
    top_p: float = 1.0
    seed: int | None = None  # None: the job's seed

    def describe(self) -> str:
        return f"sampled (temperature {self.temperature:g}, top-p {self.top_p:g})"


@dataclass(frozen=True)
class GenerationSpec:
    batch_size: int = 1
    new_tokens: int | None = 128  # exactly this many when fixed_length
    max_length: int | None = None  # the study's `max_length` (prompt + new); exclusive with new_tokens
    fixed_length: bool = True  # ignore EOS and produce the whole budget
    # as served (fixed_length false): also stop after the token that completes one of these (runners/stopping.py)
    stop_sequences: tuple[str, ...] = ()
    sampling: SamplingSpec | None = None  # None: greedy (the default: token agreement needs it)

    def budget(self, padded_prompt_len: int) -> int:
        """New-token budget of one batch whose (left-padded) prompt length is given."""
        if self.max_length is not None:
            return max(1, self.max_length - padded_prompt_len)
        assert self.new_tokens is not None
        return self.new_tokens


@dataclass(frozen=True)
class WarmupSpec:
    batches: int = 1  # warm-up batches run before the measured window, on prompts outside the measured set order


@dataclass(frozen=True)
class MeterSpec:
    sample_interval_s: float = 0.1
    idle_seconds: float = 0.0  # measured inside the runner before loading, when > 0
    codecarbon: bool = True  # CO2 intensity, and the *estimated* fallback where no counter exists
    country_iso_code: str = "USA"  # codecarbon offline mode: grid intensity of this country
    keep_series: bool = True  # keep the sampled time series of the generate window in the record
    rapl_root: str = "/sys/class/powercap"
    # The GPUs this trial's energy boundary holds, {NVML UUID or index: the host's index}; None: the one cuda:0 is
    gpus: dict[str, int] | None = None
    trace_interval_s: float = 0.02  # the host's counter trace, for windows marked inside containers


@dataclass(frozen=True)
class Job:
    engine: str
    device: str
    model: ModelSpec
    precision: str = "fp32"
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    warmup: WarmupSpec = field(default_factory=WarmupSpec)
    meters: MeterSpec = field(default_factory=MeterSpec)
    engine_options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None  # prepared (converted) models live here, keyed by engine/model/precision
    reference: str | None = None  # a record of the torch fp32 reference, for token agreement
    # same-work mode: the workload's prompt ids, made once per model by the reference's image (an inputs file,
    # runners/workload.py; relative to cache_dir unless absolute). None: this image tokenises (as served, or by hand)
    inputs: str | None = None
    seed: int = 0
    # the GPUs the trial runs on (CUDA): the engine spreads the model over them, meters.gpus holds exactly them
    gpus: int = 1
    trial: dict[str, Any] = field(default_factory=dict)  # passed through to the record (run id, repetition, image)
    schema: str = JOB_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """The job as stored; generation.sampling only when sampled and gpus only when several, so other jobs read
        as before these existed (their hash, their work key)."""
        d = asdict(self)
        if d["generation"]["sampling"] is None:
            del d["generation"]["sampling"]
        if d["gpus"] == 1:
            del d["gpus"]
        return d

    @property
    def hash(self) -> str:
        """Identity of the work: everything but the trial bookkeeping."""
        body = {k: v for k, v in self.to_dict().items() if k != "trial" and not (k == "inputs" and v is None)}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
