"""Engine options as typed dataclasses that validate themselves, and the small context an engine works in.

Each engine declares ``class Options(<parent>.Options)`` with one ``option(...)`` field per option: its default, its
one-line meaning, and its bounds or choices. ``Options.parse(job.engine_options)`` checks unknown keys, types,
choices and bounds, and answers with the job's one-line error (field and fix); cross-field rules go in
``__post_init__``. Engines then read ``self.options.<name>`` — the default is written once, in the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.errors import JobError


def option(default: Any, help: str, *, choices: tuple | dict | None = None, minimum: float | None = None,
           maximum: float | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None,
                                            "minimum": minimum, "maximum": maximum})


def _kinds(annotation: Any) -> tuple[type, ...]:
    """The accepted Python types of a field annotation (``int | None`` -> (int,)); None is always the default."""
    args = typing.get_args(annotation) or (annotation,)
    return tuple(a for a in args if a is not type(None))


@dataclass(frozen=True)
class Options:
    threads: int | None = option(None, "CPU threads for the runtime (default: all visible cores)", minimum=1)

    @classmethod
    def parse(cls, data: dict[str, Any], engine: str = "") -> "Options":
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in fields:
                raise JobError(f"engine_options.{key}", f"engine {engine!r} has no such option",
                               f"remove it; options of {engine!r}: {', '.join(sorted(fields))}")
            kinds = _kinds(hints[key])
            if float in kinds and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # 1 where a share is asked means 1.0
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = " or ".join(k.__name__ for k in kinds)
                raise JobError(f"engine_options.{key}", f"must be {names}, got {value!r}", f"give it a {names} value")
            meta = fields[key].metadata
            if meta.get("choices") and value not in meta["choices"]:
                raise JobError(f"engine_options.{key}", f"unknown value {value!r}",
                               f"use one of: {', '.join(map(str, meta['choices']))}")
            if meta.get("minimum") is not None and value < meta["minimum"]:
                raise JobError(f"engine_options.{key}", f"must be ≥ {meta['minimum']}, got {value}",
                               f"set {key} to {meta['minimum']} or more")
            if meta.get("maximum") is not None and value > meta["maximum"]:
                raise JobError(f"engine_options.{key}", f"must be ≤ {meta['maximum']}, got {value}",
                               f"set {key} to {meta['maximum']} or less")
            values[key] = value
        return cls(**values)

    @classmethod
    def described(cls) -> dict[str, tuple[type, str]]:
        """name -> (type, one-line meaning): for help texts and the matrix's error messages."""
        hints = typing.get_type_hints(cls)
        return {f.name: (_kinds(hints[f.name])[0], f.metadata.get("help", "")) for f in dataclasses.fields(cls)}

    def given(self) -> dict[str, Any]:
        """The options that differ from their defaults (what the job asked for)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class EngineContext:
    """What an engine may know of the job: where the model is, on what device and in what precision, and which ids
    end a sequence — nothing of the workload (that comes as a Shape) or of the trial's bookkeeping."""

    device: str
    precision: str
    model_dir: Path
    model_name: str
    cache_dir: Path | None
    seed: int = 0
    # the end-of-sequence ids, computed once by the runner (runners/stopping.py eos_ids): every engine stops on
    # these and the record's eos_at is read with them, so no engine derives its own set
    eos_ids: frozenset[int] = frozenset()
    # sampled decoding (runners/job_spec.SamplingSpec: temperature, top_p, seed) or None: greedy
    sampling: Any = None
    # the GPUs the trial runs on (job.gpus, CUDA): an engine that can spreads the model over them (Engine.multi_gpu)
    gpus: int = 1

    def sampling_seed(self, *prompts: list[int]) -> int:
        """The sampler's seed for these prompts: the job's sampling seed (else the job's) mixed with the prompts'
        ids — the same draw for the same prompt whatever ran before it (warm-up, other batches), and not the same
        random numbers for every prompt."""
        seed = self.seed if self.sampling is None or self.sampling.seed is None else self.sampling.seed
        return (seed * 1_000_003 + zlib.crc32(json.dumps(prompts).encode())) % 2**32

    @staticmethod
    def visible_cpus() -> int:
        return len(os.sched_getaffinity(0))
