"""The write side of the record: the one author of its shape (``new_record``), a window as it is stored
(``WindowResult``, with its totals and boundary computed once), and the atomic write."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.record.schema import RECORD_SCHEMA_ID

def totals(figures: list[dict]) -> dict[str, float | None]:
    """Measured and estimated joules, each summed on its own — never together."""
    out: dict[str, float | None] = {"measured_j": None, "estimated_j": None}
    for f in figures:
        if f["source"] in ("measured", "estimated") and f["joules"] is not None:
            key = f"{f['source']}_j"
            out[key] = (out[key] or 0.0) + f["joules"]
    return out


def boundary(figures: list[dict]) -> str:
    """What a window's energy covers and how, e.g. 'cpu:dram-0 measured + cpu:package-0 measured + gpu:0 measured'."""
    return " + ".join(sorted(f"{f['component']} {f['source']}" for f in figures
                             if f["source"] != "unavailable" and f["joules"] is not None)) or "none"


@dataclass
class WindowResult:
    """One measured window, as the record stores it (WINDOW_SCHEMA): its two instants on both clocks, its figures,
    and what is derived from them — the totals per source and the boundary — computed here, once."""

    start_unix: float
    end_unix: float
    start_mono: float
    end_mono: float
    duration_s: float
    energy: list[dict]  # Figures: {component, joules, source, meter, reason, …}
    samples: dict | None = None
    info: dict = field(default_factory=dict)
    flags: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"start_unix": self.start_unix, "end_unix": self.end_unix, "start_mono": self.start_mono,
                "end_mono": self.end_mono, "duration_s": self.duration_s, "energy": self.energy,
                "energy_total": totals(self.energy), "boundary": boundary(self.energy), "flags": self.flags,
                "samples": self.samples, "info": self.info}


def new_record(job: dict[str, Any] | None, *, mode: str = "run", job_hash: str | None = None,
               created_unix: float | None = None) -> dict[str, Any]:
    """The one author of a record's shape: every key of RECORD_SCHEMA, filled from the job (a dict in the job
    contract's form, or None when even that could not be read), status "failed" until the runner says otherwise.
    The runner, the orchestrator's records of runners that wrote none, and the synthetic records all start here."""
    import time

    job = job if isinstance(job, dict) else None
    model = (job or {}).get("model") or {}
    return {
        "schema": RECORD_SCHEMA_ID, "mode": mode, "status": "failed", "error": None,
        "created_unix": time.time() if created_unix is None else created_unix,
        "job": job, "job_hash": job_hash, "trial": dict((job or {}).get("trial") or {}),
        # from a job that failed validation, only the values that are what they should be
        "engine": {**{k: job[f] for k, f in (("name", "engine"), ("device", "device"), ("precision", "precision"))
                      if isinstance(job.get(f), str)}, "details": {}} if job else {},
        "model": {"name": model.get("name"), "path": model.get("path"), "hub_id": model.get("hub_id"),
                  "source": "path" if model.get("path") else "hub"} if job else {},
        "workload": None, "phases": {}, "idle": None, "tokens": None, "per_prompt": [], "metrics": None,
        "co2": None, "agreement": None, "environment": {}, "host": None,
    }


def per_token(joules: float | None, out_tokens: int | None) -> float | None:
    """The one J/token: joules over the tokens generated; None without a figure or without tokens."""
    return joules / out_tokens if joules is not None and out_tokens else None


def joules_per_token(energy_total: dict[str, float | None], out_tokens: int) -> dict[str, float | None]:
    """J/token of a window, per source kind (measured and estimated apart)."""
    return {k: per_token(energy_total[f"{k}_j"], out_tokens) for k in ("measured", "estimated")}


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON so that a reader never sees half a file: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; records are read by other users (host vs container uid)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
