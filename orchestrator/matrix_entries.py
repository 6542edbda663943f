"""The named entries of matrix.toml (orchestrator/matrix.py): ``[runtimes.<name>]``, ``[models.<name>]`` and
``[settings.<name>]``, each read and checked into its own type."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.images import Runtime
from orchestrator.matrix_table import CONTAINER_KEYS, MatrixError, Table, container_limits, named_entries
from orchestrator.sweep import overrides, parse_sweep, points

SIZE_GROUPS = ("<1B", "1B–2B", "≥2B")
MODEL_KEYS = ("hub_id", "path", "fixture", "revision", "params_b", "group", "size", "tokenizer", "seed")


@dataclass(frozen=True)
class Setting:
    name: str
    precision: str
    generation: dict[str, Any] = field(default_factory=dict)  # overrides of [generation]
    family: str | None = None  # a named group of settings (e.g. "study", "precision") selectable as one
    devices: tuple[str, ...] | None = None  # only runtimes of these devices run it (None: every runtime offering it)
    # a point of a sweep (orchestrator/sweep.py): the setting it came from and its axis values; the job fields the
    # axes set beyond the generation
    sweep_of: str | None = None
    axes: dict[str, int] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)  # overrides of [workload]
    engine_options: dict[str, Any] = field(default_factory=dict)  # overrides of the runtime's engine_options


@dataclass(frozen=True)
class RuntimeEntry:
    name: str
    spec: Runtime  # what images/<name>/Dockerfile says it can run (engines, device, image tag)
    engines: tuple[str, ...]
    engine_options: dict[str, Any]
    container: dict[str, Any]  # overrides of [container]
    settings: tuple[str, ...] | None = None  # only these settings (or families) for this entry; None: all
    models: tuple[str, ...] | None = None  # only these models for this entry (e.g. those its converter takes)


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


def size_group(params_b: float) -> str:
    return SIZE_GROUPS[0] if params_b < 1 else SIZE_GROUPS[1] if params_b < 2 else SIZE_GROUPS[2]


def family_members(names: list[str] | None, settings: dict[str, Setting]) -> list[str] | None:
    """Setting names, with each family name replaced by its settings (in definition order); None stays None."""
    if names is None:
        return None
    out: list[str] = []
    for n in names:
        members = [n] if n in settings else [s.name for s in settings.values() if n in (s.family, s.sweep_of)]
        out += [m for m in members if m not in out]
    return out


def setting_families(settings: dict[str, Setting]) -> list[str]:
    """The family names the settings declare (a family named like a setting is that setting)."""
    return sorted({g for s in settings.values() for g in (s.family, s.sweep_of) if g} - set(settings))


# --- [runtimes.<name>] ---------------------------------------------------------------------------------------------

def parse_runtimes(src: str, data: Any, known: dict[str, Runtime]) -> dict[str, RuntimeEntry]:
    return named_entries(src, data, "runtimes", lambda key, entry: _runtime(src, key, entry, known))


def _runtime(src: str, key: str, data: Any, known: dict[str, Runtime]) -> RuntimeEntry:
    name = key.split(".", 1)[1]
    # an entry is an image folder by its name, or by `image` (the same image again under another name, with its
    # own engines and options: e.g. OpenVINO with and without its KV cache)
    folder = data.pop("image", name) if isinstance(data, dict) else name
    if not isinstance(folder, str):
        raise MatrixError(src, f"{key}.image", f"must be a string, got {type(folder).__name__} {folder!r}",
                          'name an image folder, e.g. image = "openvino"')
    if folder not in known:
        field_key = f"{key}.image" if folder != name else key
        raise MatrixError(src, field_key, f"no such runtime under images/: {folder!r}",
                          f"use one of: {', '.join(known) or '(none: images/*/Dockerfile missing)'}"
                          " — a new runtime is a folder images/<name>/ with a labelled Dockerfile; another entry "
                          "for an existing folder names it with image = \"<folder>\"")
    rt = known[folder]
    t = Table(src, data, key)
    engines = t.get("engines", list, [rt.engines[0]], what="engines of this image to run")
    for i, e in enumerate(engines):
        if e not in rt.engines:
            raise MatrixError(src, f"{key}.engines[{i}]", f"image {rt.image} has no engine {e!r}",
                              f"use one of: {', '.join(rt.engines)} (its io.slm-matrix.engines label)")
    if not engines:
        raise MatrixError(src, f"{key}.engines", "is empty", f"list at least one of: {', '.join(rt.engines)}")
    opts = t.table("engine_options")
    cont = container_limits(t)
    only = t.get("settings", list, None, what="the settings (or families) this entry runs")
    models = t.get("models", list, None, what="the models this entry runs")
    t.done(["image", "engines", "engine_options", "settings", "models", *CONTAINER_KEYS])
    return RuntimeEntry(name, rt, tuple(engines), dict(opts), cont, tuple(only) if only is not None else None,
                        tuple(models) if models is not None else None)


def check_runtime_settings(src: str, runtimes: dict[str, RuntimeEntry], settings: dict[str, Setting],
                           models: dict[str, ModelEntry]) -> None:
    """An entry's own selections name settings (or families) and models that exist."""
    families = setting_families(settings)
    for r in runtimes.values():
        for i, n in enumerate(r.settings or ()):
            if n not in settings and n not in families:
                raise MatrixError(src, f"runtimes.{r.name}.settings[{i}]", f"unknown setting or family {n!r}",
                                  f"use one of: {', '.join([*settings, *families])}")
        for i, n in enumerate(r.models or ()):
            if n not in models:
                raise MatrixError(src, f"runtimes.{r.name}.models[{i}]", f"unknown model {n!r}",
                                  f"use one of: {', '.join(models)}")


# --- [settings.<name>] ---------------------------------------------------------------------------------------------

def parse_settings(src: str, data: Any) -> dict[str, Setting]:
    """The settings, a swept one replaced by its points (``fp32__bs16__nt128``, in the order of the sweep)."""
    out: dict[str, Setting] = {}
    for name, setting in named_entries(src, data, "settings", lambda key, entry: _setting(src, key, entry)).items():
        for point in setting:
            out[point.name] = point
    return out


FIXED_AXES = ("power_limit_w", "gpus")  # sweep axes a setting may also give as a plain field


def _setting(src: str, key: str, data: Any) -> list[Setting]:
    t = Table(src, data, key)
    devices = t.get("devices", list, None, what="the devices whose runtimes run it, e.g. [\"cuda\"]")
    for i, d in enumerate(devices or ()):
        if d not in ("cpu", "cuda"):
            raise MatrixError(src, f"{key}.devices[{i}]", f"unknown device {d!r}", "use cpu or cuda")
    # the axes a setting may also fix (CUDA runtimes only): the GPU power cap, the GPUs per trial
    fixed = {"power_limit_w": t.get("power_limit_w", int, None, minimum=1,
                                    what="the GPU power cap in watts, CUDA runtimes only"),
             "gpus": t.get("gpus", int, None, minimum=1, what="the GPUs one trial runs on, CUDA runtimes only")}
    fixed = {axis: v for axis, v in fixed.items() if v}
    setting = Setting(key.split(".", 1)[1], t.get("precision", str, what="e.g. \"fp32\""),
                      dict(t.table("generation")), family=t.get("family", str, None),
                      devices=tuple(devices) if devices else None, axes=fixed)
    sweep = parse_sweep(src, key, t.get("sweep", dict, None, what="axes and their values, e.g. "
                                                                "{ batch_size = [1, 4, 16] }"))
    t.done(["precision", "generation", "family", "devices", "sweep", *FIXED_AXES])
    for axis, value in fixed.items() if sweep else ():  # a point's axes are its sweep's: a fixed one is one of them
        raise MatrixError(src, f"{key}.{axis}", "is fixed beside a sweep",
                          f"give it as an axis of the sweep: sweep = {{ …, {axis} = [{value}] }}")
    for axis in sweep:
        if axis in setting.generation:
            raise MatrixError(src, f"{key}.sweep.{axis}", f"is also fixed in {key}.generation",
                              "keep one: the sweep's values or the fixed one")
    if not sweep:
        return [setting]
    return [replace(setting, name=f"{setting.name}__{suffix}", sweep_of=setting.name, axes=point,
                    generation={**setting.generation, **job.get("generation", {})},
                    workload=job.get("workload", {}), engine_options=job.get("engine_options", {}))
            for suffix, point in points(sweep) for job in (overrides(point),)]


# --- [models.<name>] -----------------------------------------------------------------------------------------------

def parse_models(src: str, data: Any, base: Path) -> dict[str, ModelEntry]:
    """``base``: the matrix file's folder, against which a model's ``path`` is resolved."""
    return named_entries(src, data, "models", lambda key, entry: _model(src, key, entry, base))


def _model(src: str, key: str, data: Any, base: Path) -> ModelEntry:
    t = Table(src, data, key)
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
    cont = container_limits(t)
    t.done([*MODEL_KEYS, *CONTAINER_KEYS])
    if fopts and not fixture:
        raise MatrixError(src, f"{key}.{sorted(fopts)[0]}", "only applies to fixture models", "remove it")
    if revision and not hub_id:
        raise MatrixError(src, f"{key}.revision", "only applies to hub models", "remove it or give hub_id")
    if hub_id and params_b is None:
        raise MatrixError(src, f"{key}.params_b", "is missing", "give the parameter count in billions (size group)")
    if fixture:
        _check_fixture(src, key, fixture, fopts)
    path = (base / raw_path).resolve() if raw_path else None
    if group is None and params_b is not None:
        group = size_group(params_b)
    source = "hub" if hub_id else "path" if path else "fixture"
    return ModelEntry(name=key.split(".", 1)[1], source=source, hub_id=hub_id, revision=revision, path=path,
                      fixture=fixture, fixture_options=fopts, params_b=params_b, group=group, container=cont)


def _check_fixture(src: str, key: str, fixture: str, options: dict[str, Any]) -> None:
    from orchestrator import fixtures

    allowed = [*fixtures.ALL_ARCHITECTURES, "smollm2"]
    if fixture not in allowed:
        raise MatrixError(src, f"{key}.fixture", f"unknown fixture {fixture!r}", f"use one of: {', '.join(allowed)}")
    if fixture == "smollm2" and options:
        raise MatrixError(src, f"{key}.{sorted(options)[0]}", "the smollm2 fixture has no options", "remove it")
    for k, choices in (("size", fixtures.SIZES), ("tokenizer", fixtures.TOKENIZERS)):
        if k in options and options[k] not in choices:
            raise MatrixError(src, f"{key}.{k}", f"unknown value {options[k]!r}", f"use one of: {', '.join(choices)}")
