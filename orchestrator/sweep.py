"""Sweep axes: one setting, many operating points (issue 24).

A setting may sweep the operating point instead of fixing it::

    [settings.fp32]
    precision = "fp32"
    sweep = { batch_size = [1, 2, 4, 8, 16], new_tokens = [32, 128] }

The matrix expands the product into one setting per point, named ``fp32__bs16__nt128``: each point is a normal setting
(its own cells, records, budget, resume) that remembers the setting it came from (``sweep_of``, so ``--setting fp32``
selects them all) and its axis values (``axes``, in every record's trial block). An axis sets the job field a fixed
setting would: ``batch_size`` and ``new_tokens`` the generation, ``prompt_tokens`` the workload (prompts of exactly N
input ids: style "length"), ``threads`` the engine's CPU threads (CPU runtimes only: a CUDA runtime's cells of that
setting are left out with the reason, never run with the axis ignored). ``power_limit_w`` sets no job field: the host
caps the trial's GPUs at that many watts (orchestrator/power_cap.py; CUDA runtimes only, a CPU runtime's cells are
left out with the reason). ``gpus`` gives the trial the first N GPUs of ``[host] gpus`` (the job's ``gpus``: its
engine spreads the model over them, its energy boundary holds exactly them; CUDA runtimes only, and engines that can
spread a model: others' cells are left out with the reason).
"""

from __future__ import annotations

import itertools
from typing import Any

from orchestrator.matrix_table import MatrixError

# axis -> (the job section it sets, its short name in a point's setting name)
AXES: dict[str, tuple[str, str]] = {
    "batch_size": ("generation", "bs"),
    "new_tokens": ("generation", "nt"),
    "prompt_tokens": ("workload", "pt"),
    "threads": ("engine_options", "th"),
    "power_limit_w": ("host", "pl"),  # the host sets it around the trial (orchestrator/power_cap.py), not the job
    "gpus": ("job", "g"),  # the job's own gpus field (orchestrator/matrix.py job_body), and the launcher's devices
}
# axes only a CPU engine can honour, and why
CPU_ONLY = {"threads": "threads sets a CPU engine's threads; a CUDA engine's decode does not run on them"}
# axes only a GPU engine can honour, and why
GPU_ONLY = {"power_limit_w": "power_limit_w caps a GPU's power through NVML; a CPU engine runs on no GPU",
            "gpus": "gpus gives a trial several GPUs; a CPU engine runs on no GPU"}


def parse_sweep(src: str, key: str, data: Any) -> dict[str, tuple[int, ...]]:
    """A setting's ``sweep`` table: axis -> its values (distinct positive integers, in the order given)."""
    if data is None:
        return {}
    if not isinstance(data, dict) or not data:
        raise MatrixError(src, f"{key}.sweep", f"must be a table of axes, got {data!r}",
                          f"e.g. sweep = {{ batch_size = [1, 4, 16] }}; axes: {', '.join(AXES)}")
    axes = {}
    for axis, values in data.items():
        where = f"{key}.sweep.{axis}"
        if axis not in AXES:
            raise MatrixError(src, where, "is not a sweep axis", f"use one of: {', '.join(AXES)}")
        if not isinstance(values, list) or not values:
            raise MatrixError(src, where, f"must be a non-empty list of values, got {values!r}",
                              f"e.g. {axis} = [1, 4, 16]")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MatrixError(src, f"{where}[{i}]", f"must be an integer ≥ 1, got {v!r}", "give a positive integer")
        if len(set(values)) != len(values):
            raise MatrixError(src, where, f"repeats a value: {values}", "give each value once")
        axes[axis] = tuple(values)
    return axes


def points(sweep: dict[str, tuple[int, ...]]) -> list[tuple[str, dict[str, int]]]:
    """The operating points of a sweep, in the axes' canonical order: (name suffix, {axis: value})."""
    names = [a for a in AXES if a in sweep]
    out = []
    for values in itertools.product(*(sweep[a] for a in names)):
        point = dict(zip(names, values))
        out.append(("__".join(f"{AXES[a][1]}{v}" for a, v in point.items()), point))
    return out


def overrides(point: dict[str, int]) -> dict[str, dict[str, Any]]:
    """What a point sets in the job: {section: {field: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for axis, value in point.items():
        if AXES[axis][0] not in ("host", "job"):  # set around the trial, or a field of the job itself
            out.setdefault(AXES[axis][0], {})[axis] = value
    if "prompt_tokens" in point:
        out["workload"]["style"] = "length"
    return out


def unhonoured(point: dict[str, int], device: str) -> str | None:
    """Why a runtime of this device cannot honour the point's axes (None: it can)."""
    refused = GPU_ONLY if device == "cpu" else CPU_ONLY
    return next((refused[axis] for axis in point if axis in refused), None)


def compact(sweep: dict[str, tuple[int, ...]]) -> str:
    """One line for the plan: 'batch_size 1,2,4 × new_tokens 32,128 (6 points)'."""
    n = 1
    for values in sweep.values():
        n *= len(values)
    return " × ".join(f"{a} {','.join(map(str, v))}" for a, v in sweep.items()) + f" ({n} points)"


def sweeps_of(settings) -> dict[str, str]:
    """Each swept setting's axes in one line (``compact``), from its points: {setting: line}."""
    axes: dict[str, dict[str, list[int]]] = {}
    for s in settings:
        if s.sweep_of:
            for axis, value in s.axes.items():
                values = axes.setdefault(s.sweep_of, {}).setdefault(axis, [])
                if value not in values:
                    values.append(value)
    return {name: compact({a: tuple(v) for a, v in found.items()}) for name, found in axes.items()}


def compact_names(names: list[str], settings) -> list[str]:
    """Setting names with every complete sweep written once: 'fp32 (sweep, 8 points)' for its eight points."""
    by_sweep: dict[str, list[str]] = {}
    for s in settings:
        if s.sweep_of:
            by_sweep.setdefault(s.sweep_of, []).append(s.name)
    out: list[str] = []
    for n in names:
        base = next((b for b, members in by_sweep.items() if n in members), None)
        if base is not None and set(by_sweep[base]) <= set(names):
            label = f"{base} (sweep, {len(by_sweep[base])} points)"
            if label not in out:
                out.append(label)
        else:
            out.append(n)
    return out
