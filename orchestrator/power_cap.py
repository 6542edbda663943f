"""A GPU power cap per trial (issue 24 item 4), set and restored through NVML (nvidia-ml-py).

A setting's ``power_limit_w`` (a sweep axis: ``sweep = { power_limit_w = [175, 250] }``) caps the power management
limit of the trial's GPUs ([host] gpus) before its cooldown and idle baseline, reads back the limit the board
enforces, and restores each GPU's original limit however the trial ends: success, a failed trial, Ctrl-C. Before the
first change a note holding the original limits is written (atomically) into the run's folder, and deleted once they
are restored; an orchestrator that was killed leaves it behind, and the next start of the run (``recover``) restores
those limits, says so, and deletes it.

Setting a limit needs root (NVML answers NoPermission otherwise) on a board that supports it: a host that cannot set
it skips the capped cells with the reason (``problem``), the way CUDA rows are skipped on a host without a GPU —
never failed, never run uncapped. A limit outside a board's constraints is refused, naming the field and the range.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from orchestrator.matrix_table import MatrixError
from runners.meters.nvml import _uuid  # the meters' reading of a board's UUID
from runners.record import write_json_atomic

AXIS = "power_limit_w"


class CapUnavailable(RuntimeError):
    """This host cannot set the cap (no NVML, no permission, a board without power management): the reason."""


class CapFailed(RuntimeError):
    """The cap could not be set for this trial (what was changed is restored): the trial is not run uncapped."""


def requested_w(setting, gpu_runtime: bool) -> int | None:
    """The cap a cell asks for: its setting's power_limit_w, on a GPU runtime (None: uncapped)."""
    return setting.axes.get(AXIS) if gpu_runtime else None


def setting_field(setting) -> str:
    """Where the matrix asked for the cap: a sweep's axis, or the setting's own field."""
    return f"settings.{setting.sweep_of}.sweep.{AXIS}" if setting.sweep_of else f"settings.{setting.name}.{AXIS}"


def note_path(run_root: Path, shard: dict[str, Any] | None) -> Path:
    """This host's note in the run's folder (one per shard: shards on one node cap their own GPUs)."""
    tag = f".shard{shard['index']}of{shard['count']}" if shard else ""
    return Path(run_root) / f"power-cap.{socket.gethostname()}{tag}.json"


def _nvml():
    """nvidia-ml-py, initialised; CapUnavailable with the reason when this host has no NVML."""
    try:
        import pynvml
    except ImportError:
        raise CapUnavailable("nvidia-ml-py (pynvml) is not installed, so no GPU power limit can be set") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise CapUnavailable(f"NVML is not available ({e}): no GPU power limit can be set") from None
    return pynvml


def _unavailable(pynvml, e: Exception, index: int) -> CapUnavailable:
    """An NVML error as the reason the cap cannot be set on gpu<index>."""
    value = getattr(e, "value", None)
    if value == pynvml.NVML_ERROR_NO_PERMISSION:
        return CapUnavailable(f"setting gpu{index}'s power limit through NVML was refused ({e}): it needs root — run "
                              "the orchestrator as root (sudo) to run the power-capped cells")
    if value == pynvml.NVML_ERROR_NOT_SUPPORTED:
        return CapUnavailable(f"gpu{index} does not support setting its power limit through NVML ({e})")
    return CapUnavailable(f"NVML failed on gpu{index}'s power limit ({type(e).__name__}: {e})")


def _w(milliwatts: int) -> float:
    return milliwatts / 1000.0


def problem(indices: list[int], watts: int, src: str, field: str) -> str | None:
    """Why this host cannot cap these GPUs at ``watts`` (the cells are skipped with it), or None when it can.
    A limit outside a GPU's constraints raises MatrixError naming the field and the allowed range. The permission is
    tried by setting each GPU's limit to the value it has (no change)."""
    try:
        pynvml = _nvml()
    except CapUnavailable as e:
        return str(e)
    for i in indices:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            low, high = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            if not low <= watts * 1000 <= high:
                raise MatrixError(src, field, f"{watts} W is outside the power limits gpu{i} accepts: "
                                              f"{_w(low):g}–{_w(high):g} W",
                                  f"give limits within {_w(low):g}–{_w(high):g} W for this host")
            pynvml.nvmlDeviceSetPowerManagementLimit(handle, pynvml.nvmlDeviceGetPowerManagementLimit(handle))
        except pynvml.NVMLError as e:
            return str(_unavailable(pynvml, e, i))
    return None


class PowerCap:
    """One trial's cap: ``with PowerCap(...)`` sets it (note first) and restores the original limits on the way out,
    whatever ended the trial. ``watts`` None: an uncapped trial (nothing is done). ``block()``: the record's facts."""

    def __init__(self, note: Path, indices: list[int], watts: int | None, trial_id: str):
        self.note, self.indices, self.watts, self.trial_id = Path(note), list(indices), watts, trial_id
        self.gpus: list[dict[str, Any]] = []  # per GPU: component, uuid, requested, original, enforced, restored (W)
        self.restore_error: str | None = None
        self._handles: list[Any] = []
        self._nvml: Any = None

    def __enter__(self) -> PowerCap:
        if self.watts is None:
            return self
        try:
            self._nvml = pynvml = _nvml()
        except CapUnavailable as e:
            raise CapFailed(f"the power cap of {self.watts} W could not be set: {e}") from None
        try:
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in self.indices]
            self.gpus = [{"component": f"gpu:{i}", "uuid": _uuid(pynvml, h), "requested_w": self.watts,
                          "original_w": _w(pynvml.nvmlDeviceGetPowerManagementLimit(h)), "enforced_w": None,
                          "restored_w": None} for i, h in zip(self.indices, self._handles)]
        except pynvml.NVMLError as e:  # nothing changed yet
            raise CapFailed(f"the power cap of {self.watts} W could not be set: {e}") from None
        write_json_atomic(self.note, {"hostname": socket.gethostname(), "pid": os.getpid(), "trial_id": self.trial_id,
                                      "written_unix": time.time(), "gpus": self.gpus})
        try:
            for g, h in zip(self.gpus, self._handles):
                pynvml.nvmlDeviceSetPowerManagementLimit(h, self.watts * 1000)
                g["enforced_w"] = _w(pynvml.nvmlDeviceGetEnforcedPowerLimit(h))
        except BaseException as e:  # a refusal, or Ctrl-C between two GPUs: what changed goes back first
            self._restore(pynvml)
            if isinstance(e, pynvml.NVMLError):
                raise CapFailed(f"the power cap of {self.watts} W could not be set: {e}") from None
            raise
        return self

    def __exit__(self, *exc) -> bool:
        if self.watts is not None:
            self._restore(self._nvml)
        return False  # whatever ended the trial goes on

    def _restore(self, pynvml) -> None:
        """Every GPU back to its original limit (one never changed is left alone); the note is deleted once all are
        (kept for the next start if not)."""
        errors = []
        for g, h in zip(self.gpus, self._handles):
            try:
                if g["enforced_w"] is not None:  # still the cap at the end? (a driver reload would have reset it)
                    g["enforced_at_end_w"] = _w(pynvml.nvmlDeviceGetEnforcedPowerLimit(h))
                original = round(g["original_w"] * 1000)
                if pynvml.nvmlDeviceGetPowerManagementLimit(h) != original:
                    pynvml.nvmlDeviceSetPowerManagementLimit(h, original)
                g["restored_w"] = _w(pynvml.nvmlDeviceGetPowerManagementLimit(h))
            except pynvml.NVMLError as e:
                errors.append(f"{g['component']}: {e}")
        self.restore_error = "; ".join(errors) or None
        if not errors:
            self.note.unlink(missing_ok=True)

    def block(self) -> dict[str, Any]:
        """The record's ``host.power_cap`` (empty for an uncapped trial)."""
        if self.watts is None:
            return {}
        return {"power_cap": {"requested_w": self.watts, "gpus": self.gpus, "restore_error": self.restore_error,
                              "note": None if self.restore_error is None else self.note.name}}


def recover(note: Path) -> list[str]:
    """At start-up: the limits a killed orchestrator's note holds, restored; one line each to say so (and the note
    deleted), or why they could not be (the note is kept for the next start). Nothing without a note."""
    if not note.exists():
        return []
    try:
        data = json.loads(note.read_text())
        pynvml = _nvml()
    except (OSError, ValueError, CapUnavailable) as e:
        return [f"{note} holds GPU power limits to restore, left by an orchestrator that stopped while a trial was "
                f"capped, but they cannot be restored now ({e}); it is kept for the next start"]
    lines, failed = [], False
    for g in data["gpus"]:
        index = g["component"].split(":")[1]
        try:
            h = pynvml.nvmlDeviceGetHandleByUUID(g["uuid"]) if g.get("uuid") else \
                pynvml.nvmlDeviceGetHandleByIndex(int(index))
            was = _w(pynvml.nvmlDeviceGetPowerManagementLimit(h))
            pynvml.nvmlDeviceSetPowerManagementLimit(h, round(g["original_w"] * 1000))
            lines.append(f"gpu{index}: power limit restored to {g['original_w']:g} W (it was {was:g} W): an "
                         f"orchestrator (pid {data.get('pid')}) stopped during {data.get('trial_id')} without "
                         "restoring it")
        except pynvml.NVMLError as e:
            failed = True
            lines.append(f"gpu{index}: its power limit could not be restored to {g['original_w']:g} W ({e}) — as "
                         f"root: nvidia-smi -i {index} -pl {g['original_w']:g}; {note} is kept for the next start")
    if not failed:
        note.unlink()
        lines.append(f"deleted {note.name}")
    return lines
