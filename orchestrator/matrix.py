"""matrix.toml: loading and validation.

Every problem is one ``MatrixError`` line naming the file, the key path, what is wrong and what is allowed — checked
on load, before any image is built or any container started. The runner-side sections (workload, generation, warmup,
meters, engine_options, precision) are checked by building each cell's job and handing it to runners.job.parse_job,
so the matrix accepts exactly what the runner accepts and the two cannot drift apart.

Layout (see matrix.toml for the study, matrix-smoke.toml for the smoke run)::

    [matrix]   name, seed, repetitions, runtimes = [...]?, models = [...]?, settings = [...]?
    [workload] [generation] [warmup] [meters]      -> the job's sections, as runners/job.py defines them
    [host]     idle_seconds, idle_reuse_s, idle_check_s, idle_drift, cooldown_max_s, cooldown_margin_c, trace_interval_s, gpus, rapl_root
                                                   (the orchestrator's own measurement)
    [agreement] engine, precision, devices, threshold   (the token-agreement reference, default torch fp32, CPU
                                                   first; below threshold (0.95) an fp32 row did different work)
    [container] timeout_s, mem_limit, cpus, shm_size                (defaults; runtimes and models may override)
    [settings.<name>]  precision, generation = {...}               (default: one setting "fp32")
    [runtimes.<name>]  engines = [...]?, engine_options = {...}, + container overrides
    [models.<name>]    hub_id | path | fixture, revision, params_b, group, size, tokenizer, seed,
                       + container overrides
"""

from __future__ import annotations

import copy
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.images import ImageError, Runtime, discover
from runners.agreement import policy as agreement_policy

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SIZE_RE = re.compile(r"^[0-9]+[bkmgBKMG]?$")  # Docker's memory sizes
SIZE_GROUPS = ("<1B", "1B–2B", "≥2B")
JOB_SECTIONS = ("workload", "generation", "warmup", "meters")
CONTAINER_KEYS = {
    "timeout_s": ((int, float), "wall-clock limit of one trial's container, seconds"),
    "mem_limit": (str, "container memory limit, Docker syntax (\"8g\", \"512m\")"),
    "cpus": ((int, float), "CPU limit of the container (Docker --cpus)"),
    "shm_size": (str, "size of /dev/shm, Docker syntax (\"2g\")"),
}
CONTAINER_DEFAULTS = {"timeout_s": 4 * 3600.0, "mem_limit": None, "cpus": None, "shm_size": "1g"}
HOST_KEYS = {
    "idle_seconds": ((int, float), 10.0, "host idle-power baseline measured before each trial (0 = none)"),
    "idle_reuse_s": ((int, float), 0.0, "re-use an idle baseline for later trials up to this many seconds after it "
                                        "was taken, while a check window finds the host at it (0 = measure before "
                                        "every trial)"),
    "idle_check_s": ((int, float), 2.0, "the check window before a trial that would re-use the baseline"),
    "idle_drift": ((int, float), 0.05, "a component whose idle power in the check moved by more than this share of "
                                       "its baseline (or 0.5 W) makes a new baseline"),
    "cooldown_max_s": ((int, float), 120.0, "longest wait for the GPUs to cool back to their idle temperature"),
    "cooldown_margin_c": ((int, float), 3.0, "a GPU counts as cool within this many °C of its idle temperature"),
    "trace_interval_s": ((int, float), 0.02, "period of the host's energy-counter trace (RAPL, NVML), by which "
                                             "each window the runner marks in its container is metered"),
}
# [host] keys that are not numbers
HOST_GPUS_WHAT = "the host GPU indices a CUDA trial runs on and is metered on, e.g. [0]"
HOST_RAPL_WHAT = "the host's powercap tree (RAPL), e.g. \"/sys/class/powercap\""
# [agreement]: which configuration is the token-agreement reference of every model × workload × generation
AGREEMENT_DEFAULT = agreement_policy()  # the one default (runners/agreement.py)
MODEL_KEYS = ("hub_id", "path", "fixture", "revision", "params_b", "group", "size", "tokenizer", "seed")


class MatrixError(ValueError):
    """One line: file, key path, problem, fix."""

    def __init__(self, source: str, key: str, problem: str, fix: str):
        self.key = key
        super().__init__(f"{source}: {key}: {problem} — {fix}")


@dataclass(frozen=True)
class Setting:
    name: str
    precision: str
    generation: dict[str, Any] = field(default_factory=dict)  # overrides of [generation]
    family: str | None = None  # a named group of settings (e.g. "study", "precision") selectable as one
    devices: tuple[str, ...] | None = None  # only runtimes of these devices run it (None: every runtime offering it)


@dataclass(frozen=True)
class RuntimeEntry:
    name: str
    spec: Runtime  # what images/<name>/Dockerfile says it can run (engines, device, image tag)
    engines: tuple[str, ...]
    engine_options: dict[str, Any]
    container: dict[str, Any]  # overrides of [container]
    settings: tuple[str, ...] | None = None  # only these settings (or families) for this entry; None: all


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # "hub" | "path" | "fixture"
    hub_id: str | None = None
    revision: str | None = None
    path: Path | None = None  # resolved against the matrix file's folder
    fixture: str | None = None
    fixture_options: dict[str, Any] = field(default_factory=dict)  # size, tokenizer, seed
    params_b: float | None = None
    group: str | None = None
    container: dict[str, Any] = field(default_factory=dict)


@dataclass
class Matrix:
    path: Path
    text: str
    hash: str
    name: str
    seed: int
    repetitions: int
    job: dict[str, dict[str, Any]]  # workload, generation, warmup, meters: as written
    host: dict[str, Any]
    agreement: dict[str, Any]  # the token-agreement reference: engine, precision, devices in order of preference
    container: dict[str, Any]
    settings: dict[str, Setting]
    runtimes: dict[str, RuntimeEntry]  # selected ones, in matrix order
    models: dict[str, ModelEntry]  # selected ones, in matrix order

    def container_for(self, runtime: RuntimeEntry, model: ModelEntry) -> dict[str, Any]:
        """Container limits of one cell: [container] < the image's labels < runtime entry < model entry (a big model
        needs more time and memory)."""
        return {**self.runtime_container(runtime), **model.container}

    def runtime_container(self, runtime: RuntimeEntry) -> dict[str, Any]:
        """Container limits of a runtime's steps that are not a model's trial (e.g. tokenising the shared prompts):
        a model entry's limits bound its load and generation, not the tokenizer."""
        return {**self.container, **dict(runtime.spec.container), **runtime.container}


def size_group(params_b: float) -> str:
    return SIZE_GROUPS[0] if params_b < 1 else SIZE_GROUPS[1] if params_b < 2 else SIZE_GROUPS[2]


class _Table:
    """Typed reads from one TOML table; keys left over at the end are reported as unknown, with the allowed ones."""

    def __init__(self, src: str, data: Any, path: str):
        if not isinstance(data, dict):
            raise MatrixError(src, path, f"must be a table, got {_tname(data)}", f"write it as [{path}] or {{…}}")
        self.src, self.data, self.path = src, dict(data), path

    def key(self, k: str) -> str:
        return f"{self.path}.{k}" if self.path else k

    def get(self, k: str, kind, default: Any = ..., *, choices=None, minimum=None, what: str = "") -> Any:
        if k not in self.data:
            if default is ...:
                raise MatrixError(self.src, self.key(k), "is missing", f"add {k} = … ({what or _kname(kind)})")
            return default
        v = self.data.pop(k)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
            raise MatrixError(self.src, self.key(k), f"must be {_kname(kind)}, got {_tname(v)} {v!r}",
                              f"give {k} {_kname(kind)} value{f' ({what})' if what else ''}")
        if choices is not None and v not in choices:
            raise MatrixError(self.src, self.key(k), f"unknown value {v!r}", f"use one of: {', '.join(choices)}")
        if minimum is not None and v < minimum:
            raise MatrixError(self.src, self.key(k), f"must be ≥ {minimum}, got {v!r}", f"set it to {minimum} or more")
        return float(v) if float in kinds and not isinstance(v, bool) and isinstance(v, int) else v

    def names(self, k: str, allowed: list[str], what: str) -> list[str] | None:
        """An optional list selecting some of ``allowed`` (None: all)."""
        v = self.get(k, list, None)
        if v is None:
            return None
        for i, item in enumerate(v):
            if item not in allowed:
                raise MatrixError(self.src, f"{self.key(k)}[{i}]", f"unknown {what} {item!r}",
                                  f"use one of: {', '.join(allowed) or '(none defined)'}")
        if len(set(v)) != len(v):
            raise MatrixError(self.src, self.key(k), "lists a name twice", "list each once")
        return v

    def table(self, k: str, default: Any = ...) -> dict:
        v = self.get(k, dict, {} if default is ... else default)
        return v

    def done(self, allowed) -> None:
        if self.data:
            k = sorted(self.data)[0]
            raise MatrixError(self.src, self.key(k), "unknown key",
                              f"remove it; allowed keys here: {', '.join(allowed)}")


def _kname(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds if not (k is int and float in kinds))


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(
        type(v), type(v).__name__)


def _check_name(src: str, key: str, name: str) -> None:
    # names become file names and container labels
    if not NAME_RE.match(name):
        raise MatrixError(src, key, f"name {name!r} has characters a file name cannot carry",
                          "use letters, digits, '.', '_' and '-' only")


def _container(t: _Table) -> dict[str, Any]:
    out = {}
    for k, (kind, what) in CONTAINER_KEYS.items():
        if k in t.data:
            out[k] = t.get(k, kind, minimum=0.001 if kind != str else None, what=what)
            if kind is str and not SIZE_RE.match(out[k]):
                raise MatrixError(t.src, t.key(k), f"{out[k]!r} is not a size", "write it like \"512m\" or \"8g\"")
    return out


def family_members(names: list[str] | None, settings: dict[str, Setting]) -> list[str] | None:
    """Setting names, with each family name replaced by its settings (in definition order); None stays None."""
    if names is None:
        return None
    out: list[str] = []
    for n in names:
        members = [n] if n in settings else [s.name for s in settings.values() if s.family == n]
        out += [m for m in members if m not in out]
    return out


def load(path: str | Path, *, images_dir: Path | None = None) -> Matrix:
    """Load and validate a matrix file."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise MatrixError(src, "(file)", "no such file", "pass --matrix with the path of a matrix TOML file")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MatrixError(src, "(syntax)", f"not valid TOML: {e}", "fix the TOML syntax") from e
    try:
        known_runtimes = discover(images_dir)
    except ImageError as e:
        raise MatrixError(src, "runtimes", str(e), "fix the Dockerfile's LABEL lines") from e

    top = _Table(src, data, "")
    sections = ["matrix", *JOB_SECTIONS, "host", "agreement", "container", "settings", "runtimes", "models"]

    # --- definitions ------------------------------------------------------------------------------------------
    rt_defs = _Table(src, top.table("runtimes"), "runtimes")
    runtime_entries: dict[str, RuntimeEntry] = {}
    for name in list(rt_defs.data):
        key = f"runtimes.{name}"
        _check_name(src, key, name)
        data = rt_defs.data.pop(name)
        # an entry is an image folder by its name, or by `image` (the same image again under another name, with its
        # own engines and options: e.g. OpenVINO with and without its KV cache)
        folder = data.pop("image", name) if isinstance(data, dict) else name
        if folder not in known_runtimes:
            field_key = f"{key}.image" if folder != name else key
            raise MatrixError(src, field_key, f"no such runtime under images/: {folder!r}",
                              f"use one of: {', '.join(known_runtimes) or '(none: images/*/Dockerfile missing)'}"
                              " — a new runtime is a folder images/<name>/ with a labelled Dockerfile; another entry "
                              "for an existing folder names it with image = \"<folder>\"")
        rt = known_runtimes[folder]
        t = _Table(src, data, key)
        engines = t.get("engines", list, [rt.engines[0]], what="engines of this image to run")
        for i, e in enumerate(engines):
            if e not in rt.engines:
                raise MatrixError(src, f"{key}.engines[{i}]", f"image {rt.image} has no engine {e!r}",
                                  f"use one of: {', '.join(rt.engines)} (its io.slm-matrix.engines label)")
        if not engines:
            raise MatrixError(src, f"{key}.engines", "is empty", f"list at least one of: {', '.join(rt.engines)}")
        opts = t.table("engine_options")
        cont = _container(t)
        only = t.get("settings", list, None, what="the settings (or families) this entry runs")
        t.done(["image", "engines", "engine_options", "settings", *CONTAINER_KEYS])
        runtime_entries[name] = RuntimeEntry(name, rt, tuple(engines), dict(opts), cont,
                                             tuple(only) if only is not None else None)

    m_defs = _Table(src, top.table("models"), "models")
    model_entries: dict[str, ModelEntry] = {}
    for name in list(m_defs.data):
        key = f"models.{name}"
        _check_name(src, key, name)
        model_entries[name] = _model(src, key, m_defs.data.pop(name), path.parent)

    s_defs = _Table(src, top.table("settings", {"fp32": {"precision": "fp32"}}), "settings")
    settings_all: dict[str, Setting] = {}
    for name in list(s_defs.data):
        key = f"settings.{name}"
        _check_name(src, key, name)
        t = _Table(src, s_defs.data.pop(name), key)
        devices = t.get("devices", list, None, what="the devices whose runtimes run it, e.g. [\"cuda\"]")
        for i, d in enumerate(devices or ()):
            if d not in ("cpu", "cuda"):
                raise MatrixError(src, f"{key}.devices[{i}]", f"unknown device {d!r}", "use cpu or cuda")
        settings_all[name] = Setting(name, t.get("precision", str, what="e.g. \"fp32\""),
                                     dict(t.table("generation")), family=t.get("family", str, None),
                                     devices=tuple(devices) if devices else None)
        t.done(["precision", "generation", "family", "devices"])
    families = sorted({s.family for s in settings_all.values() if s.family} - set(settings_all))
    for r in runtime_entries.values():  # an entry's own selection names settings or families that exist
        for i, n in enumerate(r.settings or ()):
            if n not in settings_all and n not in families:
                raise MatrixError(src, f"runtimes.{r.name}.settings[{i}]", f"unknown setting or family {n!r}",
                                  f"use one of: {', '.join([*settings_all, *families])}")

    # --- selection ------------------------------------------------------------------------------------------------
    mt = _Table(src, top.table("matrix"), "matrix")
    name = mt.get("name", str, path.stem)
    seed = mt.get("seed", int, what="orders the trials; recorded in every record")
    reps = mt.get("repetitions", int, minimum=1)
    sel_rt = mt.names("runtimes", list(runtime_entries), "runtime") or list(runtime_entries)
    sel_m = mt.names("models", list(model_entries), "model") or list(model_entries)
    sel_s = family_members(mt.names("settings", [*settings_all, *families], "setting or family"),
                           settings_all) or list(settings_all)
    mt.done(["name", "seed", "repetitions", "runtimes", "models", "settings"])
    if not sel_rt or not sel_m:
        raise MatrixError(src, "matrix", "selects no runtime or no model",
                          "define [runtimes.<name>] and [models.<name>] entries")

    for s in sel_s:  # a setting no selected image offers would silently never run
        offered = sorted({p for r in sel_rt for p in runtime_entries[r].spec.precisions
                          if settings_all[s].devices is None or runtime_entries[r].spec.device in settings_all[s].devices})
        if settings_all[s].precision not in offered:
            raise MatrixError(src, f"settings.{s}.precision",
                              f"no selected runtime offers {settings_all[s].precision!r}",
                              f"use one of: {', '.join(offered)} (what the selected runtimes' engines offer on their device)")
    job_sections = {s: dict(top.table(s)) for s in JOB_SECTIONS}
    ht = _Table(src, top.table("host"), "host")
    host: dict[str, Any] = {k: ht.get(k, kind, default, minimum=0, what=what)
                            for k, (kind, default, what) in HOST_KEYS.items()}
    if host["idle_reuse_s"] > 0 and not 0 < host["idle_check_s"] < host["idle_seconds"]:
        raise MatrixError(src, "host.idle_check_s", f"must be above 0 and below idle_seconds = {host['idle_seconds']:g} "
                          f"when idle baselines are re-used (idle_reuse_s = {host['idle_reuse_s']:g}), got "
                          f"{host['idle_check_s']:g}",
                          "shorten the check (e.g. idle_check_s = 2 with idle_seconds = 10), or set idle_reuse_s = 0 "
                          "to measure a full baseline before every trial")
    host["gpus"] = ht.get("gpus", list, [0], what=HOST_GPUS_WHAT)
    for i, g in enumerate(host["gpus"]):
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise MatrixError(src, f"host.gpus[{i}]", f"must be a GPU index (an integer ≥ 0), got {g!r}",
                              f"write it as gpus = [0] ({HOST_GPUS_WHAT})")
    if not host["gpus"] or len(set(host["gpus"])) != len(host["gpus"]):
        raise MatrixError(src, "host.gpus", "must list at least one GPU index, each once", "write it as gpus = [0]")
    host["rapl_root"] = ht.get("rapl_root", str, "/sys/class/powercap", what=HOST_RAPL_WHAT)
    ht.done([*HOST_KEYS, "gpus", "rapl_root"])
    at = _Table(src, top.table("agreement"), "agreement")
    agreement = {"engine": at.get("engine", str, AGREEMENT_DEFAULT["engine"], what="the reference engine"),
                 "precision": at.get("precision", str, AGREEMENT_DEFAULT["precision"], what="its precision"),
                 "devices": at.get("devices", list, AGREEMENT_DEFAULT["devices"],
                                   what="its devices, in order of preference"),
                 "threshold": at.get("threshold", (int, float), AGREEMENT_DEFAULT["threshold"],
                                     what="the share of prompts identical to the reference below which a "
                                          "configuration in its precision did different work (0–1)")}
    if not 0 <= agreement["threshold"] <= 1:
        raise MatrixError(src, "agreement.threshold", f"must be a share between 0 and 1, got {agreement['threshold']}",
                          "write it as threshold = 0.95")
    at.done(list(AGREEMENT_DEFAULT))
    ct = _Table(src, top.table("container"), "container")
    container = {**CONTAINER_DEFAULTS, **_container(ct)}
    ct.done(list(CONTAINER_KEYS))
    top.done(sections)

    matrix = Matrix(path=path, text=text, hash=hashlib.sha256(text.encode()).hexdigest(), name=name, seed=seed,
                    repetitions=reps, job=job_sections, host=host, agreement=agreement, container=container,
                    settings={s: settings_all[s] for s in sel_s},
                    runtimes={r: runtime_entries[r] for r in sel_rt},
                    models={m: model_entries[m] for m in sel_m})
    _check_jobs(matrix, {**runtime_entries}, {**model_entries}, settings_all)
    return matrix


def _model(src: str, key: str, data: Any, base: Path) -> ModelEntry:
    t = _Table(src, data, key)
    given = [k for k in ("hub_id", "path", "fixture") if k in t.data]
    if len(given) != 1:
        raise MatrixError(src, key, f"gives {' and '.join(given) if given else 'no source'}",
                          "give exactly one of hub_id (Hugging Face id), path (a local HF folder) or fixture")
    hub_id = t.get("hub_id", str, None)
    revision = t.get("revision", str, None)
    raw_path = t.get("path", str, None)
    fixture = t.get("fixture", str, None)
    params_b = t.get("params_b", (int, float), None, minimum=0, what="parameter count in billions")
    group = t.get("group", str, None, choices=SIZE_GROUPS)
    fopts = {k: t.get(k, kind, None) for k, kind in (("size", str), ("tokenizer", str), ("seed", int))}
    fopts = {k: v for k, v in fopts.items() if v is not None}
    cont = _container(t)
    t.done([*MODEL_KEYS, *CONTAINER_KEYS])
    if fopts and not fixture:
        raise MatrixError(src, f"{key}.{sorted(fopts)[0]}", "only applies to fixture models", "remove it")
    if revision and not hub_id:
        raise MatrixError(src, f"{key}.revision", "only applies to hub models", "remove it or give hub_id")
    if hub_id and params_b is None:
        raise MatrixError(src, f"{key}.params_b", "is missing", "give the parameter count in billions (size group)")
    if fixture:
        from orchestrator import fixtures

        allowed = [*fixtures.ALL_ARCHITECTURES, "smollm2"]
        if fixture not in allowed:
            raise MatrixError(src, f"{key}.fixture", f"unknown fixture {fixture!r}", f"use one of: {', '.join(allowed)}")
        if fixture == "smollm2" and fopts:
            raise MatrixError(src, f"{key}.{sorted(fopts)[0]}", "the smollm2 fixture has no options", "remove it")
        for k, choices in (("size", fixtures.SIZES), ("tokenizer", fixtures.TOKENIZERS)):
            if k in fopts and fopts[k] not in choices:
                raise MatrixError(src, f"{key}.{k}", f"unknown value {fopts[k]!r}", f"use one of: {', '.join(choices)}")
    path = (base / raw_path).resolve() if raw_path else None
    if group is None and params_b is not None:
        group = size_group(params_b)
    source = "hub" if hub_id else "path" if path else "fixture"
    return ModelEntry(name=key.split(".", 1)[1], source=source, hub_id=hub_id, revision=revision, path=path,
                      fixture=fixture, fixture_options=fopts, params_b=params_b, group=group, container=cont)


# --- the runner's own validation, mapped back onto matrix keys -----------------------------------------------------


def job_body(matrix: Matrix, runtime: RuntimeEntry, engine: str, model: ModelEntry, setting: Setting,
             model_spec: dict[str, Any]) -> dict[str, Any]:
    """The job of one cell, without the trial bookkeeping and with ``model_spec`` as the launcher sees the model."""
    generation = {**matrix.job["generation"], **setting.generation}
    # new_tokens and max_length exclude each other: a setting giving one replaces the matrix's other
    if "new_tokens" in setting.generation:
        generation.pop("max_length", None)
    if "max_length" in setting.generation:
        generation.pop("new_tokens", None)
    return {
        "engine": engine, "device": runtime.spec.device, "precision": setting.precision,
        "model": model_spec,
        "workload": copy.deepcopy(matrix.job["workload"]), "generation": generation,
        "warmup": copy.deepcopy(matrix.job["warmup"]), "meters": copy.deepcopy(matrix.job["meters"]),
        "engine_options": copy.deepcopy(runtime.engine_options),
    }


def _check_jobs(matrix: Matrix, runtimes: dict[str, RuntimeEntry], models: dict[str, ModelEntry],
                settings: dict[str, Setting]) -> None:
    from runners.job import JobError, parse_job

    src = str(matrix.path)
    # Every defined entry is checked, selected or not: a broken entry should not wait for the day it is selected.
    for m in models.values():
        for r in runtimes.values():
            for s in settings.values():
                for e in r.engines:
                    if s.precision not in r.spec.engine_precisions(e):
                        continue  # not a cell: this engine does not offer that precision
                    spec = {"name": m.name, "path": "/models/x"} if m.source != "hub" else {
                        "name": m.name, "hub_id": m.hub_id, "revision": m.revision, "hf_cache": "/hf-cache"}
                    try:
                        parse_job(job_body(matrix, r, e, m, s, spec))
                    except JobError as err:
                        raise MatrixError(src, _matrix_key(err.field, r, e, s), f"{err.problem}",
                                          f"{err.fix} (checked as the job of {r.name}/{e}/{m.name}/{s.name})") \
                            from err


def _matrix_key(job_field: str, r: RuntimeEntry, engine: str, s: Setting) -> str:
    head, _, rest = job_field.partition(".")
    if head == "engine_options":
        return f"runtimes.{r.name}.engine_options{'.' + rest if rest else ''}"
    if head in ("engine", "device"):
        return f"runtimes.{r.name}.engines ({engine})"
    if head == "precision":
        return f"settings.{s.name}.precision"
    if head == "generation" and rest in s.generation:
        return f"settings.{s.name}.generation.{rest}"
    return job_field
