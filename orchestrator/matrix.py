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
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.images import ImageError, Runtime, discover
from orchestrator.matrix_entries import (ModelEntry, RuntimeEntry, Setting, check_runtime_settings, family_members,
                                         parse_models, parse_runtimes, parse_settings, setting_families)
from orchestrator.matrix_table import CONTAINER_KEYS, MatrixError, Table, container_limits
from orchestrator.sweep import unhonoured
from runners.agreement import ReferencePolicy

JOB_SECTIONS = ("workload", "generation", "warmup", "meters")
MAX_REPETITIONS = 10_000
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
HOST_GPUS_WHAT = ("the host GPU indices CUDA trials run on and are metered on, in order: a trial of gpus = N takes the "
                  "first N, e.g. [0]")
HOST_RAPL_WHAT = "the host's powercap tree (RAPL), e.g. \"/sys/class/powercap\""
# [agreement]: which configuration is the token-agreement reference of every model × workload × generation
AGREEMENT_DEFAULT = ReferencePolicy()  # the one default (runners/agreement.py)


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
    agreement: ReferencePolicy  # the token-agreement reference: engine, precision, devices in order of preference
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


@dataclass(frozen=True)
class _Selection:
    """What [matrix] names and selects."""
    name: str
    seed: int
    repetitions: int
    runtimes: list[str]
    models: list[str]
    settings: list[str]


def load(path: str | Path, *, images_dir: Path | None = None) -> Matrix:
    """Load and validate a matrix file."""
    path = Path(path)
    src = str(path)
    text, data = _read(path)
    known_runtimes = _discover(src, images_dir)
    top = Table(src, data, "")
    # the definitions, every one checked whether selected or not
    runtimes = parse_runtimes(src, top.table("runtimes"), known_runtimes)
    models = parse_models(src, top.table("models"), path.parent)
    settings = parse_settings(src, top.table("settings", {"fp32": {"precision": "fp32"}}))
    check_runtime_settings(src, runtimes, settings, models)
    selected = _selection(src, top.table("matrix"), path.stem, runtimes, models, settings)
    _check_offered(src, selected, runtimes, settings)
    job_sections = {s: dict(top.table(s)) for s in JOB_SECTIONS}
    host = _host(src, top.table("host"))
    agreement = _agreement(src, top.table("agreement"))
    container = _container_defaults(src, top.table("container"))
    top.done(["matrix", *JOB_SECTIONS, "host", "agreement", "container", "settings", "runtimes", "models"])

    matrix = Matrix(path=path, text=text, hash=hashlib.sha256(text.encode()).hexdigest(), name=selected.name,
                    seed=selected.seed, repetitions=selected.repetitions, job=job_sections, host=host,
                    agreement=agreement, container=container,
                    settings={s: settings[s] for s in selected.settings},
                    runtimes={r: runtimes[r] for r in selected.runtimes},
                    models={m: models[m] for m in selected.models})
    _check_host_gpus(src, host, settings)
    _check_jobs(matrix, runtimes, models, settings)
    return matrix


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    src = str(path)
    if not path.is_file():
        raise MatrixError(src, "(file)", "no such file", "pass --matrix with the path of a matrix TOML file")
    text = path.read_text()
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MatrixError(src, "(syntax)", f"not valid TOML: {e}", "fix the TOML syntax") from e


def _discover(src: str, images_dir: Path | None) -> dict[str, Runtime]:
    try:
        return discover(images_dir)
    except ImageError as e:
        raise MatrixError(src, "runtimes", str(e), "fix the Dockerfile's LABEL lines") from e


def _selection(src: str, data: Any, default_name: str, runtimes: dict[str, RuntimeEntry],
               models: dict[str, ModelEntry], settings: dict[str, Setting]) -> _Selection:
    mt = Table(src, data, "matrix")
    name = mt.get("name", str, default_name)
    seed = mt.get("seed", int, what="orders the trials; recorded in every record")
    # the plan holds every trial: a typo like 10**9 repetitions would fill the memory instead of failing
    reps = mt.get("repetitions", int, minimum=1, maximum=MAX_REPETITIONS)
    sel_rt = mt.names("runtimes", list(runtimes), "runtime") or list(runtimes)
    sel_m = mt.names("models", list(models), "model") or list(models)
    sel_s = family_members(mt.names("settings", [*settings, *setting_families(settings)], "setting or family"),
                           settings) or list(settings)
    mt.done(["name", "seed", "repetitions", "runtimes", "models", "settings"])
    if not sel_rt or not sel_m:
        raise MatrixError(src, "matrix", "selects no runtime or no model",
                          "define [runtimes.<name>] and [models.<name>] entries")
    return _Selection(name, seed, reps, sel_rt, sel_m, sel_s)


def _check_offered(src: str, selected: _Selection, runtimes: dict[str, RuntimeEntry],
                   settings: dict[str, Setting]) -> None:
    """A setting no selected image offers would silently never run."""
    for s in selected.settings:
        setting = settings[s]
        offered = sorted({p for r in selected.runtimes for p in runtimes[r].spec.precisions
                          if setting.devices is None or runtimes[r].spec.device in setting.devices})
        if setting.precision not in offered:
            raise MatrixError(src, f"settings.{s}.precision",
                              f"no selected runtime offers {setting.precision!r}",
                              f"use one of: {', '.join(offered)} (what the selected runtimes' engines offer on their device)")


def _host(src: str, data: Any) -> dict[str, Any]:
    ht = Table(src, data, "host")
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
    return host


def _check_host_gpus(src: str, host: dict[str, Any], settings: dict[str, Setting]) -> None:
    """A trial of gpus = N runs on the first N of [host] gpus: a setting asking more than the list holds could never
    run anywhere."""
    for s in settings.values():
        n = s.axes.get("gpus", 1)
        if n > len(host["gpus"]):
            raise MatrixError(src, f"settings.{s.sweep_of}.sweep.gpus" if s.sweep_of else f"settings.{s.name}.gpus",
                              f"asks {n} GPUs per trial but [host] gpus lists {len(host['gpus'])}",
                              f"list the host GPUs a trial may take, e.g. [host] gpus = {list(range(n))}")


def _agreement(src: str, data: Any) -> ReferencePolicy:
    at = Table(src, data, "agreement")
    agreement = {"engine": at.get("engine", str, AGREEMENT_DEFAULT.engine, what="the reference engine"),
                 "precision": at.get("precision", str, AGREEMENT_DEFAULT.precision, what="its precision"),
                 "devices": at.get("devices", list, list(AGREEMENT_DEFAULT.devices),
                                   what="its devices, in order of preference"),
                 "threshold": at.get("threshold", (int, float), AGREEMENT_DEFAULT.threshold,
                                     what="the share of prompts identical to the reference below which a "
                                          "configuration in its precision did different work (0–1)")}
    if not 0 <= agreement["threshold"] <= 1:
        raise MatrixError(src, "agreement.threshold", f"must be a share between 0 and 1, got {agreement['threshold']}",
                          "write it as threshold = 0.95")
    at.done(list(AGREEMENT_DEFAULT.as_dict()))
    return ReferencePolicy.from_spec(agreement)


def _container_defaults(src: str, data: Any) -> dict[str, Any]:
    ct = Table(src, data, "container")
    container = {**CONTAINER_DEFAULTS, **container_limits(ct)}
    ct.done(list(CONTAINER_KEYS))
    return container


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
        "workload": {**copy.deepcopy(matrix.job["workload"]), **setting.workload}, "generation": generation,
        "warmup": copy.deepcopy(matrix.job["warmup"]), "meters": copy.deepcopy(matrix.job["meters"]),
        "engine_options": {**copy.deepcopy(runtime.engine_options), **setting.engine_options},
        # GPUs per trial (CUDA); one is the default, left out so a one-GPU job reads as before the field existed
        **({"gpus": setting.axes["gpus"]} if setting.axes.get("gpus", 1) > 1 else {}),
    }


def greedy_only(engine: str, setting: Setting) -> str | None:
    """Why a sampled setting is no cell of this engine (it decodes greedily only: the plan lists it as left out),
    or None."""
    from runners.engines import engine_class

    why = engine_class(engine).greedy_only
    return f"sampled decoding not offered: {why}" if why and setting.generation.get("sampling") else None


def single_gpu(engine: str, setting: Setting) -> str | None:
    """Why a setting of several GPUs per trial is no cell of this engine (it runs a model on one GPU: the plan lists
    it as left out), or None."""
    from runners.engines import engine_class

    why = engine_class(engine).multi_gpu
    n = setting.axes.get("gpus", 1)
    return f"{n} GPUs per trial not offered: {why}" if why and n > 1 else None


def _check_jobs(matrix: Matrix, runtimes: dict[str, RuntimeEntry], models: dict[str, ModelEntry],
                settings: dict[str, Setting]) -> None:
    from runners.job import JobError, parse_job

    src = str(matrix.path)
    # Every defined entry is checked, selected or not: a broken entry should not wait for the day it is selected.
    for m in models.values():
        for r in runtimes.values():
            for s in settings.values():
                for e in r.engines:
                    if s.precision not in r.spec.engine_precisions(e) or greedy_only(e, s) or single_gpu(e, s) \
                            or unhonoured(s.axes, r.spec.device):
                        continue  # not a cell: this engine does not offer that precision, sampling, GPUs or axis
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
    if rest in s.axes:  # a sweep's point: the axis of the setting it came from
        return f"settings.{s.sweep_of}.sweep.{rest}"
    if head == "generation" and rest.partition(".")[0] in s.generation:  # e.g. sampling.temperature
        return f"settings.{s.name}.generation.{rest}"
    return job_field
