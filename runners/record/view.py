"""The read side of the record: one typed view that every reader uses, and every fact derived from a record.

``Record(data)`` takes a record of any released schema (``/1`` or ``/2``), upgrades it once (in memory, the file is
never rewritten) and answers: what ran (configuration, work, model, machine), the energy of each phase with its source,
components, boundary and idle-subtracted net, the idle power, the metrics (J/token, tokens/s, latency statistics with
latency counted once per batch), the preparation, the host's facts. Every reader — runner, orchestrator, budget,
status, analysis, evaluation, benchmarks — reads through it, so each of these facts is computed here and only here.

A missing part of a record (a failed trial has no tokens, an old one no boundary) reads as None / {} / [], never a
KeyError: a reader decides what a missing fact means, the view does not guess it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.record.build import per_token
from runners.record.energy import Energy, IdlePower, window_energy, without_gpus
from runners.record.facts import (HOST_WINDOW, RECORD_SCHEMAS, Metrics, at, hardware_label, mapping, metrics_of,
                                  upgrade, work_key, work_label)
from runners.record.facts import config_label, size_group


@dataclass(frozen=True)
class Preparation:
    """The prepare window's facts: ``cached`` True when the conversion existed already (its cost was paid before)."""

    duration_s: float | None
    cached: bool | None
    conversion: str | None  # llama.cpp names its step ("conversion"); the optimum exporters name their tool
    seconds: float | None  # the converting tool's own timing


# --- the view -------------------------------------------------------------------------------------------------------


@dataclass
class Record:
    """A trial record, read. ``data`` is the upgraded record (today's shape); the file is never rewritten."""

    data: dict[str, Any]
    path: Path | None = None
    _windows: dict[str, dict] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, dict):
            raise ValueError(f"a record is a JSON object, got {type(self.data).__name__}")
        self.data = upgrade(self.data)

    @classmethod
    def load(cls, path: str | Path) -> Record:
        """Read a record file; OSError / ValueError when it is missing or not a record of a known schema."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("schema") not in RECORD_SCHEMAS:
            raise ValueError(f"{path}: not a trial record (schema {at(data, 'schema')!r})")
        return cls(data, Path(path))

    @classmethod
    def read(cls, path: str | Path) -> Record | None:
        """Like load, but None for a file that is missing, unreadable or not a record."""
        try:
            return cls.load(path)
        except (OSError, UnicodeDecodeError, ValueError):
            return None

    # --- what ran ---
    @property
    def schema(self) -> str | None:
        return self.data.get("schema")

    @property
    def mode(self) -> str:
        return self.data.get("mode") or "run"

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    @property
    def is_ok(self) -> bool:
        return self.status == "ok"

    @property
    def is_ok_run(self) -> bool:
        return self.is_ok and self.mode == "run"

    @property
    def error(self) -> dict | None:
        return self.data.get("error") if isinstance(self.data.get("error"), dict) else None

    @property
    def error_message(self) -> str | None:
        return (self.error or {}).get("message")

    @property
    def trial(self) -> dict:
        return mapping(self.data.get("trial"))

    @property
    def trial_id(self) -> str | None:
        return self.trial.get("trial_id") or (self.path.stem if self.path else None)

    @property
    def run_id(self) -> str | None:
        return self.trial.get("run_id")

    @property
    def repetition(self) -> int | None:
        return self.trial.get("repetition")

    @property
    def job(self) -> dict:
        return mapping(self.data.get("job"))

    @property
    def generation(self) -> dict:
        return mapping(self.job.get("generation"))

    @property
    def workload(self) -> dict:
        """The workload the job asked for (the record's ``workload`` block says what was loaded)."""
        return mapping(self.job.get("workload"))

    @property
    def loaded_workload(self) -> dict:
        """What the runner loaded: dataset, style, seed, selection, prompts, task ids."""
        return mapping(self.data.get("workload"))

    @property
    def work(self) -> str:
        return work_label(self.generation)

    @property
    def work_key(self) -> str | None:
        return work_key(self.data)

    @property
    def fixed_length(self) -> bool:
        return bool(self.generation.get("fixed_length", True))

    @property
    def sweep_of(self) -> str | None:
        """The swept setting this trial's operating point came from (None: a fixed setting)."""
        return self.trial.get("sweep_of")

    @property
    def swept_axes(self) -> dict[str, int]:
        """The axes the sweep set for this point ({} for a fixed setting)."""
        return {k: v for k, v in mapping(self.trial.get("axes")).items() if isinstance(v, int)}

    def operating_point(self) -> dict[str, int | None]:
        """Where the trial ran, swept or not: batch size, new tokens, prompt tokens (only when the workload fixed
        them: style "length"), threads asked for (None: the engine's default) and threads the engine says it ran.
        Non-swept runs at different points compare on the same axes."""
        details = mapping(at(self.data, "engine", "details"))
        asked = self.swept_axes.get("threads", self.engine_options.get("threads"))
        ran = next((details[k] for k in ("threads", "torch_threads", "intra_op_threads")
                    if isinstance(details.get(k), int)), None)
        return {"batch_size": self.generation.get("batch_size"), "new_tokens": self.generation.get("new_tokens"),
                "prompt_tokens": self.workload.get("prompt_tokens"), "threads_asked": asked,
                "threads": asked if asked is not None else ran}

    @property
    def engine_options(self) -> dict:
        return mapping(self.job.get("engine_options"))

    @property
    def engine_name(self) -> str | None:
        return at(self.data, "engine", "name") or self.job.get("engine") or self.trial.get("engine")

    @property
    def device(self) -> str | None:
        return at(self.data, "engine", "device") or self.job.get("device")

    @property
    def precision(self) -> str:
        return at(self.data, "engine", "precision") or self.job.get("precision") or "fp32"

    @property
    def provider(self) -> str | None:
        return at(self.data, "engine", "details", "provider") or self.device

    @property
    def runtime(self) -> str:
        """The runtime (image folder) the trial ran in; engine-device for records made outside a matrix."""
        return self.trial.get("runtime") or f"{self.engine_name or '?'}-{self.device or '?'}"

    @property
    def setting(self) -> str | None:
        return self.trial.get("setting")

    @property
    def config(self) -> str:
        return config_label(self.engine_name or "?", self.device or "?", self.precision)

    @property
    def model(self) -> dict:
        return mapping(self.data.get("model"))

    @property
    def model_name(self) -> str | None:
        return self.model.get("name") or at(self.job, "model", "name") or self.trial.get("model")

    @property
    def hub_id(self) -> str | None:
        return self.model.get("hub_id")

    @property
    def architecture(self) -> str | None:
        return self.model.get("architecture")

    @property
    def parameters(self) -> int | None:
        return self.model.get("parameters")

    @property
    def params_b(self) -> float | None:
        """Billions of parameters: the matrix's figure when it set one, else the record's count."""
        if self.trial.get("model_params_b") is not None:
            return float(self.trial["model_params_b"])
        return self.parameters / 1e9 if self.parameters else None

    @property
    def size_group(self) -> str | None:
        return self.trial.get("size_group") or size_group(self.params_b)  # the matrix may set the group

    # --- where it ran ---
    @property
    def environment(self) -> dict:
        return mapping(self.data.get("environment"))

    @property
    def host(self) -> dict:
        return mapping(self.data.get("host"))

    @property
    def hostname(self) -> str | None:
        """The node: the orchestrator's view of it (a cluster node) first, else the runner's."""
        return at(self.host, "node", "hostname") or self.environment.get("hostname")

    @property
    def power_cap(self) -> dict:
        """The GPU power cap it ran under: requested_w; per GPU requested, enforced, original, restored W ({}: none)"""
        return mapping(self.host.get("power_cap"))

    @property
    def image(self) -> str | None:
        return self.host.get("image") or self.trial.get("image") or self.environment.get("image")

    @property
    def image_id(self) -> str | None:
        return self.host.get("image_id") or self.trial.get("image_id") or self.environment.get("image_id")

    def hardware(self) -> str:
        return hardware_label(self.environment, self.device)

    def machine(self) -> str:
        return hardware_label(self.environment, None)

    @property
    def gpu_model(self) -> str | None:
        gpus = self.environment.get("gpus") or []
        if not gpus:
            return None
        return gpus[0].get("name") if isinstance(gpus[0], dict) else gpus[0]

    def wall_s(self) -> float | None:
        """The trial's wall time on the host: from its start (cooldown and idle baseline included) to its record."""
        h = self.host
        start = h.get("trial_start_unix") or at(h, "idle", "start_unix") or h.get("begin_unix")
        return float(h["recorded_unix"] - start) if start and h.get("recorded_unix") else None

    # --- what it did ---
    @property
    def tokens(self) -> dict:
        return mapping(self.data.get("tokens"))

    @property
    def output_tokens(self) -> int:
        return int(self.tokens.get("output") or 0)

    @property
    def prompt_count(self) -> int:
        return int(self.tokens.get("prompts") or 0)

    @property
    def per_prompt(self) -> list[dict]:
        return [p for p in self.data.get("per_prompt") or [] if isinstance(p, dict)]

    @property
    def agreement(self) -> dict:
        return mapping(self.data.get("agreement"))

    @property
    def batch_invariance(self) -> float | None:
        """Share of prompts identical to this configuration's own at batch size 1 (trials at batch > 1 that had
        one in their run; None otherwise)."""
        return mapping(self.agreement.get("batch_invariance")).get("share_identical")

    @property
    def co2(self) -> dict:
        return mapping(self.data.get("co2"))

    # --- windows and energy ---
    def windows(self) -> dict[str, dict]:
        """Every window: the runner's phases and the host's container window. A CPU trial never counts a GPU (older
        records summed the host's idle GPUs into its "measured" energy)."""
        if self._windows is None:
            wins = {p: w for p, w in mapping(self.data.get("phases")).items() if isinstance(w, dict)}
            container = self.host.get("container")
            if isinstance(container, dict) and "duration_s" in container:
                wins[HOST_WINDOW] = container
            if self.device == "cpu":
                wins = {p: without_gpus(w) for p, w in wins.items()}
            self._windows = wins
        return self._windows

    def window(self, phase: str) -> dict | None:
        return self.windows().get(phase)

    def duration(self, phase: str) -> float | None:
        w = self.window(phase)
        return None if w is None or w.get("duration_s") is None else float(w["duration_s"])

    def idle_power(self) -> dict[str, IdlePower]:
        """component -> idle power: the runner's own idle baseline first, the host's for the rest."""
        out: dict[str, IdlePower] = {}
        for origin, idle in (("runner", self.data.get("idle")), ("host", self.host.get("idle"))):
            for p in mapping(idle).get("power") or []:
                if p.get("watts") is None or p.get("component") in out:
                    continue
                out[p["component"]] = IdlePower(float(p["watts"]), p.get("source"), origin)
        return out

    def energy(self, phase: str) -> Energy | None:
        """The window's energy (None when the trial has no such window)."""
        w = self.window(phase)
        return window_energy(w, self.idle_power()) if w is not None else None

    def figures(self) -> list[dict]:
        """Every energy figure of every window, with its phase, duration and idle-subtracted net: one row each."""
        idle = self.idle_power()
        rows = []
        for phase, w in self.windows().items():
            duration = float(w.get("duration_s") or 0.0)
            for f in w.get("energy") or []:
                i = idle.get(f.get("component"))
                valid = f.get("valid") is not False
                same = i is not None and i.source == f.get("source") and f.get("joules") is not None and valid
                rows.append({"phase": phase, "component": f.get("component"), "source": f.get("source"),
                             "meter": f.get("meter"), "reason": f.get("reason"), "duration_s": duration,
                             "joules": f.get("joules") if valid else None, "invalid_reason": f.get("invalid_reason"),
                             "idle_w": i.watts if same else None, "idle_origin": i.origin if same else None,
                             "net_joules": f["joules"] - i.watts * duration if same else None})
        return rows

    def meter_flags(self) -> list[dict]:
        """What the meters flagged about the generate window and the idle baselines (an invalid figure included)."""
        gen = self.window("generate") or {}
        flags = [*(gen.get("flags") or []), *(at(self.data, "idle", "flags") or []),
                 *(at(self.host, "idle", "flags") or [])]
        invalid = self.energy("generate").invalid if gen else None
        if invalid and not any(f.get("code") == "invalid-figure" for f in flags):
            flags.append({"code": "invalid-figure", "component": None, "message": invalid})
        return flags

    def samples_summary(self, phase: str = "generate") -> dict[str, dict]:
        """The sampler's summary of a window (utilisation, memory, power, temperature): metric -> {mean, max, …}."""
        summary = at(self.window(phase), "samples", "summary")
        return {k: v for k, v in mapping(summary).items() if isinstance(v, dict)}

    def series(self, phase: str = "generate") -> dict | None:
        """The sampled time series of a window, when the sampler kept it."""
        s = at(self.data, "phases", phase, "samples", "series")
        return s if isinstance(s, dict) and s.get("t_s") else None

    def metrics(self) -> Metrics:
        return metrics_of(self.window("generate"), self.per_prompt)

    def headline_per_token(self) -> tuple[float | None, float | None]:
        """The generate window's headline J/token, gross and net of idle (one source: the headline's)."""
        e = self.energy("generate")
        tokens = sum(int(p.get("generated_tokens") or 0) for p in self.per_prompt)
        return (per_token(e.joules, tokens), per_token(e.net_joules, tokens)) if e else (None, None)

    def preparation(self) -> Preparation:
        w = self.window("prepare")
        info = mapping(at(w, "info"))
        return Preparation(duration_s=self.duration("prepare"), cached=info.get("cached"),
                           conversion=info.get("conversion") or at(info, "exporter", "tool"),
                           seconds=info.get("seconds"))

    def with_host(self, block: dict[str, Any]) -> dict[str, Any]:
        """The record with the orchestrator's additions merged in once (a new dict)."""
        return {**self.data, "host": {**self.host, **block}}


