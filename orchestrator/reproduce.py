"""Which results of a recorded run held when it ran again (issue 25): `orchestrate.py reproduce BUNDLE_OR_RUN`.

The original is a bundle (``orchestrate.py export``; its manifest is verified first, and a changed file refuses it) or
a run folder. Its matrix snapshot runs again as a new run linked to it (``--cells``, ``--repetitions N``, default one
per cell). Each image must be built from the recipe the original's was: this checkout's sources hash of the image's
folder, the base and the runner against the one the bundle recorded — another recipe is refused unless
``--allow-different-images``, which the result records. Then, per cell, ``compare`` says what held: tokens identical
(share of prompts, against the original's first repetition), the generate window's time and energy as the ratio of
medians with a bootstrap interval and whether the new median falls inside the original's range, energy only within
one boundary, every difference of host, and a verdict: reproduced / tokens differ / slower / faster / other hardware /
other image.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from analysis.stats import median_ratio_ci
from runners.agreement import token_agreement
from runners.record import Record
from runners.record.facts import mapping

SCHEMA = "slm-matrix.reproduction/1"
HOST_FACTS = ("hostname", "cpu_model", "cpu_count", "kernel", "driver", "gpu")


def host_of(r: Record) -> dict[str, Any]:
    """The facts of the machine a trial ran on that a reproduction compares."""
    env = r.environment
    return {"hostname": env.get("hostname"), "cpu_model": env.get("cpu_model"), "cpu_count": env.get("cpu_count"),
            "kernel": env.get("kernel") or env.get("platform"), "driver": env.get("driver_version"),
            "gpu": r.gpu_model if r.device == "cuda" else None}


def _figure(rs: list[Record], what: str) -> tuple[list[float], set]:
    """Per trial: the generate window's seconds, or joules (with the set of boundaries they were measured on)."""
    values, boundaries = [], set()
    for r in rs:
        e = r.energy("generate")
        if e is None:
            continue
        if what == "time":
            values.append(e.duration_s)
        elif e.joules is not None:
            values.append(e.joules)
            boundaries.add((e.source, e.boundary))
    return values, boundaries


def _spread(new: list[float], old: list[float]) -> bool | None:
    """Whether the new median lies within the original repetitions' range."""
    return None if not new or not old else bool(min(old) <= float(np.median(new)) <= max(old))


def compare_cell(old: list[Record], new: list[Record], images_allowed_to_differ: bool = False) -> dict[str, Any]:
    """One cell: what held between the original's ok trials and the reproduction's."""
    first = min(old, key=lambda r: r.repetition or 0)
    shares = [token_agreement(n.data, first.data, first.trial_id).get("share_identical") for n in new]
    time_new, _ = _figure(new, "time")
    time_old, _ = _figure(old, "time")
    e_new, b_new = _figure(new, "energy")
    e_old, b_old = _figure(old, "energy")
    same_boundary = bool(b_new) and b_new == b_old
    hosts = [(k, host_of(first).get(k), host_of(new[0]).get(k)) for k in HOST_FACTS]
    differ = {k: {"original": a, "reproduction": b} for k, a, b in hosts if a != b}
    image = {"original": sorted({r.image_id for r in old if r.image_id}),
             "reproduction": sorted({r.image_id for r in new if r.image_id})}
    row = {"cell": first.trial.get("cell_id"), "model": first.model_name, "runtime": first.runtime,
           "engine": first.engine_name, "precision": first.precision, "original_trials": len(old),
           "trials": len(new),
           "tokens_identical": None if any(s is None for s in shares) else min(shares),
           "time": {**median_ratio_ci(time_new, time_old), "within_original_range": _spread(time_new, time_old)},
           "energy": ({**median_ratio_ci(e_new, e_old), "within_original_range": _spread(e_new, e_old),
                       "measured_on": sorted(f"{source} · {boundary}" for source, boundary in b_new)} if same_boundary
                      else {"ratio": None, "note": "not compared: another energy boundary or source "
                                                   f"({sorted(map(str, b_old))} → {sorted(map(str, b_new))})"}),
           "host_differences": differ, "image_ids": image, "images_allowed_to_differ": images_allowed_to_differ}
    row["verdict"] = verdict(row)
    return row


def verdict(row: dict[str, Any]) -> str:
    """The one word on a cell, most serious first: tokens differ, other hardware, other image, slower, faster,
    reproduced. Time decides only where its interval excludes 1 (or, without one, outside the original's range)."""
    if row["tokens_identical"] is None or row["tokens_identical"] < 1:
        return "tokens differ"
    if set(row["host_differences"]) - {"hostname"}:
        return "other hardware"
    if row["images_allowed_to_differ"]:
        return "other image"
    t = row["time"]
    if t.get("low") is not None:
        off = 1 if t["low"] > 1 else -1 if t["high"] < 1 else 0
    else:
        off = 0 if t.get("within_original_range") in (True, None) else (1 if (t.get("ratio") or 1) > 1 else -1)
    return {1: "slower", -1: "faster", 0: "reproduced"}[off]


def compare_runs(original: dict[str, dict], reproduction: dict[str, dict], images_allowed_to_differ: bool = False
                 ) -> list[dict[str, Any]]:
    """Per cell of the reproduction: compare_cell against the original's ok trials of the same cell."""
    def by_cell(records: dict[str, dict]) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {}
        for rec in records.values():
            r = Record(rec)
            if r.is_ok_run:
                out.setdefault(r.trial.get("cell_id"), []).append(r)
        return out

    old, new = by_cell(original), by_cell(reproduction)
    return [compare_cell(old[c], new[c], images_allowed_to_differ) for c in sorted(new) if c in old]


def original_run(source: Path, scratch: Path) -> tuple[Path, dict[str, Any] | None]:
    """The original's run folder and the bundle's manifest (None for a run folder): a bundle is verified, then its
    run/ extracted into ``scratch``."""
    from orchestrator.bundle import BundleError, verify

    if source.is_dir():
        if not (source / "run.json").is_file():
            raise BundleError(f"{source} is not a run folder (no run.json) — give a run folder or a bundle")
        return source, None
    manifest, problems = verify(source)
    if problems:
        raise BundleError(f"{source} is not as exported — {'; '.join(problems[:5])} — a reproduction needs the "
                          "bundle as it was written")
    with tarfile.open(source) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("run/")]
        for m in members:
            m.name = m.name[len("run/"):]
        tar.extractall(scratch, members=members, filter="data")
    return scratch, manifest


def recipe_problems(manifest: dict[str, Any] | None, runtimes: list) -> tuple[list[str], list[str]]:
    """(images this checkout builds from another recipe than the one the original's images were built from, images
    whose original recipe the bundle does not know — records older than the image_sources fact)."""
    from orchestrator.images import sources_hash

    if manifest is None:
        return [], []
    recorded = _recorded_sources(manifest)
    differ, unknown = [], []
    for rt in runtimes:
        want = recorded.get(rt.image)
        if not want:
            unknown.append(f"{rt.image}: the bundle does not say which recipe its image was built from")
        elif sources_hash(rt) not in want:
            differ.append(f"{rt.image}: this checkout builds it from other sources ({sources_hash(rt)}) than the "
                          f"original's ({', '.join(want)})")
    return differ, unknown


def _recorded_sources(manifest: dict[str, Any]) -> dict[str, list[str]]:
    return {e["image"]: e.get("run_sources") or [] for e in mapping(manifest.get("images")).values()}


def prepare_images(launcher: str, source: Path, manifest: dict[str, Any] | None, runtimes: list, log,
                   allow_different: bool = False) -> tuple[list[str], list[str], dict[str, str]]:
    """ready_images through the Docker engine; with the process launcher there are no images to load, and this
    checkout's recipes are what would run."""
    if launcher != "docker":
        return (*recipe_problems(manifest, runtimes), {})
    from orchestrator.docker_layer import connected

    return ready_images(connected(), source, manifest, runtimes, log, allow_different)


def ready_images(client, source: Path, manifest: dict[str, Any] | None, runtimes: list, log,
                 allow_different: bool = False) -> tuple[list[str], list[str], dict[str, str]]:
    """Each image the reproduction needs, built from the original's recipe, in the cheapest way: the local image when
    its sources label is the recorded one; else the bundle's saved image (``export --images``: docker load); else
    built from this checkout's recipe, said so. Returns (images whose recipe differs from the original's, images
    whose original recipe is unknown, {image: how it was made ready}) — recipe_problems' answer for the images that
    will really run, not for this checkout's recipe."""
    from orchestrator.images import build, image_info, sources_hash

    recorded = _recorded_sources(manifest) if manifest is not None else {}
    saved = _saved_images(source, manifest)
    how: dict[str, str] = {}
    rebuilt: list = []
    for rt in runtimes:
        want = recorded.get(rt.image) or []
        local = image_info(client, rt)
        if local is not None and local["sources"] and (local["sources"] in want or manifest is None
                                                      and local["sources"] == sources_hash(rt)):
            how[rt.image] = f"local image {local['id'][7:19]} (built from the {'original' if want else 'same'} recipe)"
            continue
        folder = rt.dockerfile.parent.name
        if want and folder in saved:
            loaded = _load_saved(client, source, saved[folder], rt.image)
            if loaded in want:
                how[rt.image] = f"loaded from the bundle ({saved[folder]})"
                continue
            log(f"{rt.image}: the bundle's saved image was built from {loaded}, not the recorded {', '.join(want)}")
        rebuilt.append(rt)
    differ, unknown = recipe_problems(manifest, rebuilt)
    if not differ or allow_different:  # never build an image whose figures would be refused
        for rt in rebuilt:
            build(client, rt, log=lambda line: None)
            how[rt.image] = f"rebuilt from this checkout's recipe ({sources_hash(rt)})"
    for image, what in how.items():
        log(f"{image}: {what}")
    return differ, unknown, how


def _saved_images(source: Path, manifest: dict[str, Any] | None) -> dict[str, str]:
    """runtime folder -> the bundle member holding its saved image (``images/<folder>.tar.gz``)."""
    if manifest is None or source.is_dir():
        return {}
    names = [n for n in mapping(manifest.get("files")) if n.startswith("images/") and n.endswith(".tar.gz")]
    return {n[len("images/"):-len(".tar.gz")]: n for n in names}


def _load_saved(client, source: Path, member: str, tag: str) -> str | None:
    """docker load of one saved image from the bundle (streamed, never whole in memory); the sources label of the
    image now under ``tag``."""
    from orchestrator.images import SOURCES_LABEL

    with tarfile.open(source) as tar:
        f = tar.extractfile(member)
        if f is None:
            return None
        client.images.load(f)
    return mapping(client.images.get(tag).labels).get(SOURCES_LABEL)


def write(rows: list[dict[str, Any]], run_root: Path, original: str, allowed: bool,
          images: dict[str, str] | None = None) -> Path:
    path = run_root / "reproduction.json"
    path.write_text(json.dumps({"schema": SCHEMA, "original": original, "allow_different_images": allowed,
                                "images": images or {}, "cells": rows}, indent=1, default=str))
    return path
