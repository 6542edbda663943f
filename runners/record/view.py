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
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.record.build import boundary, joules_per_token, per_token, totals
from runners.record.schema import PHASES, RECORD_SCHEMA_ID

RECORD_SCHEMAS = ("slm-matrix.record/1", RECORD_SCHEMA_ID)
ENERGY_SOURCES = ("measured", "estimated")  # the headline's preference: measured where it exists, never their sum
HOST_WINDOW = "host_container"  # the orchestrator's window around the whole container
SIZE_GROUPS = ("<1B", "1B–2B", "≥2B")  # the study's groups, as orchestrator/matrix.py spells them
# Engine names as the study labels them (it says OV for OpenVINO).
ENGINE_ALIASES = {"openvino": "ov", "pytorch": "torch", "onnxruntime": "onnx", "ort": "onnx", "torchscript": "jit"}


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _at(data: Any, *keys: str) -> Any:
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

    def as_dict(self) -> dict[str, Any]:
        """The record's ``metrics`` block."""
        return {"tokens_per_s": self.tokens_per_s, "joules_per_token": self.j_per_token,
                "latency_s": self.latency_s, "ttft_s": self.ttft_s, "tpot_s": self.tpot_s}


def metrics_of(generate: dict | None, per_prompt: list[dict]) -> Metrics:
    """The one computation of a trial's metrics from its generate window and per-prompt rows — the runner stores it,
    the host re-derives it after metering the window with its own counters, readers ask ``Record.metrics()``."""
    generate = _dict(generate)
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
    job = _dict(record.get("job"))
    if not job.get("model"):
        return None
    return json.dumps([_at(record, "model", "name"), job.get("workload"), job.get("generation")], sort_keys=True)


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
                            if isinstance(w, dict) else w) for name, w in _dict(data.get("phases")).items()}
    return out


# --- energy ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdlePower:
    watts: float
    source: str | None
    origin: str  # "runner" (its own baseline) | "host" (the orchestrator's)


@dataclass(frozen=True)
class Energy:
    """One window's energy: raw and idle-subtracted joules per source kind, never summed across kinds.

    net = raw − Σ idle_W × duration over the window's components of that source; None unless every component has an
    idle figure of the same source kind (a partial subtraction would mix baselines). A figure the meters marked
    invalid (read error, trace gap, reset, impossible rise) makes the window no figure: ``invalid`` says why."""

    duration_s: float
    measured_j: float | None = None
    estimated_j: float | None = None
    net_measured_j: float | None = None
    net_estimated_j: float | None = None
    measured_components: str | None = None
    estimated_components: str | None = None
    invalid: str | None = None
    boundary_error_j: float | None = None  # the host meter's error at the window's edges (counter steps)

    @property
    def source(self) -> str | None:
        """The headline's source: measured where the window has it, otherwise estimated."""
        return next((s for s in ENERGY_SOURCES if getattr(self, f"{s}_j") is not None), None)

    @property
    def joules(self) -> float | None:
        return getattr(self, f"{self.source}_j") if self.source else None

    @property
    def net_joules(self) -> float | None:
        return getattr(self, f"net_{self.source}_j") if self.source else None

    @property
    def components(self) -> str | None:
        return getattr(self, f"{self.source}_components") if self.source else None

    @property
    def boundary(self) -> str | None:
        """What the headline covers and how, e.g. ``cpu:package-0+gpu:0 (measured)``: only one boundary compares."""
        return f"{self.components} ({self.source})" if self.source else None


def window_energy(window: dict, idle: dict[str, IdlePower]) -> Energy:
    """A window's Energy, given the idle power per component."""
    duration = float(window.get("duration_s") or 0.0)
    figures = [f for f in window.get("energy") or [] if isinstance(f, dict)]
    invalid = "; ".join(f"{f.get('component')}: {f.get('invalid_reason')}" for f in figures
                        if f.get("valid") is False) or None
    values: dict[str, Any] = {}
    for source in ENERGY_SOURCES:
        figs = [f for f in figures if f.get("source") == source and f.get("joules") is not None]
        raw = _at(window, "energy_total", f"{source}_j")
        if raw is None and figs:
            raw = float(sum(f["joules"] for f in figs))
        net = None
        if raw is not None and figs:
            idles = [idle.get(f["component"]) for f in figs]
            if all(i is not None and i.source == source for i in idles):
                net = float(raw) - sum(i.watts for i in idles) * duration
        values[f"{source}_j"] = None if raw is None or invalid else float(raw)
        values[f"net_{source}_j"] = None if invalid else net
        values[f"{source}_components"] = "+".join(sorted(f["component"] for f in figs)) or None
    errors = [f["boundary_error_j"] for f in figures
              if f.get("source") == "measured" and f.get("boundary_error_j") is not None]
    edge = sum(errors) if errors else _at(window, "host_metered", "boundary_error_j")
    return Energy(duration_s=duration, invalid=invalid, boundary_error_j=edge, **values)


def _without_gpus(window: dict) -> dict:
    figures = [f for f in window.get("energy") or [] if not str(f.get("component", "")).startswith("gpu")]
    if len(figures) == len(window.get("energy") or []):
        return window
    return {**window, "energy": figures, "energy_total": None}  # totals re-summed from the figures that remain


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
            raise ValueError(f"{path}: not a trial record (schema {_at(data, 'schema')!r})")
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
        return _dict(self.data.get("trial"))

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
        return _dict(self.data.get("job"))

    @property
    def generation(self) -> dict:
        return _dict(self.job.get("generation"))

    @property
    def workload(self) -> dict:
        """The workload the job asked for (the record's ``workload`` block says what was loaded)."""
        return _dict(self.job.get("workload"))

    @property
    def loaded_workload(self) -> dict:
        """What the runner loaded: dataset, style, seed, selection, prompts, task ids."""
        return _dict(self.data.get("workload"))

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
    def engine_options(self) -> dict:
        return _dict(self.job.get("engine_options"))

    @property
    def engine_name(self) -> str | None:
        return _at(self.data, "engine", "name") or self.job.get("engine") or self.trial.get("engine")

    @property
    def device(self) -> str | None:
        return _at(self.data, "engine", "device") or self.job.get("device")

    @property
    def precision(self) -> str:
        return _at(self.data, "engine", "precision") or self.job.get("precision") or "fp32"

    @property
    def provider(self) -> str | None:
        return _at(self.data, "engine", "details", "provider") or self.device

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
        return _dict(self.data.get("model"))

    @property
    def model_name(self) -> str | None:
        return self.model.get("name") or _at(self.job, "model", "name") or self.trial.get("model")

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
        return _dict(self.data.get("environment"))

    @property
    def host(self) -> dict:
        return _dict(self.data.get("host"))

    @property
    def hostname(self) -> str | None:
        """The node: the orchestrator's view of it (a cluster node) first, else the runner's."""
        return _at(self.host, "node", "hostname") or self.environment.get("hostname")

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
        start = h.get("trial_start_unix") or _at(h, "idle", "start_unix") or h.get("begin_unix")
        return float(h["recorded_unix"] - start) if start and h.get("recorded_unix") else None

    # --- what it did ---
    @property
    def tokens(self) -> dict:
        return _dict(self.data.get("tokens"))

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
        return _dict(self.data.get("agreement"))

    @property
    def co2(self) -> dict:
        return _dict(self.data.get("co2"))

    # --- windows and energy ---
    def windows(self) -> dict[str, dict]:
        """Every window: the runner's phases and the host's container window. A CPU trial never counts a GPU (older
        records summed the host's idle GPUs into its "measured" energy)."""
        if self._windows is None:
            wins = {p: w for p, w in _dict(self.data.get("phases")).items() if isinstance(w, dict)}
            container = self.host.get("container")
            if isinstance(container, dict) and "duration_s" in container:
                wins[HOST_WINDOW] = container
            if self.device == "cpu":
                wins = {p: _without_gpus(w) for p, w in wins.items()}
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
            for p in _dict(idle).get("power") or []:
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
        flags = [*(gen.get("flags") or []), *(_at(self.data, "idle", "flags") or []),
                 *(_at(self.host, "idle", "flags") or [])]
        invalid = self.energy("generate").invalid if gen else None
        if invalid and not any(f.get("code") == "invalid-figure" for f in flags):
            flags.append({"code": "invalid-figure", "component": None, "message": invalid})
        return flags

    def samples_summary(self, phase: str = "generate") -> dict[str, dict]:
        """The sampler's summary of a window (utilisation, memory, power, temperature): metric -> {mean, max, …}."""
        summary = _at(self.window(phase), "samples", "summary")
        return {k: v for k, v in _dict(summary).items() if isinstance(v, dict)}

    def series(self, phase: str = "generate") -> dict | None:
        """The sampled time series of a window, when the sampler kept it."""
        s = _at(self.data, "phases", phase, "samples", "series")
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
        info = _dict(_at(w, "info"))
        return Preparation(duration_s=self.duration("prepare"), cached=info.get("cached"),
                           conversion=info.get("conversion") or _at(info, "exporter", "tool"),
                           seconds=info.get("seconds"))

    def with_host(self, block: dict[str, Any]) -> dict[str, Any]:
        """The record with the orchestrator's additions merged in once (a new dict)."""
        return {**self.data, "host": {**self.host, **block}}


# PHASES is re-exported for readers that iterate the runner's windows in order
__all__ = ["Energy", "ENERGY_SOURCES", "HOST_WINDOW", "IdlePower", "Metrics", "PHASES", "Preparation", "Record",
           "RECORD_SCHEMAS", "SIZE_GROUPS", "config_label", "hardware_label", "metrics_of", "size_group",
           "statistics_of", "upgrade", "window_energy", "work_key", "work_label"]
