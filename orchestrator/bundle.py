"""A run as one verifiable artifact a reviewer can take away (issue 25): `orchestrate.py export RUN --out FILE`.

The bundle (a tar archive, gzip-compressed when FILE ends in .gz) holds, under ``run/``, everything the run folder
keeps — records, run.json with its invocations, the matrix snapshot, prepare records, evaluations, logs, a report
written there — but not its transient parts (the lock, the work folders of trials in flight, records moved aside as
invalid); under ``recipes/``, what every image the run used was built from (images/_base, each runtime's folder:
Dockerfile, pins, constraints; and runners/, the runner every image carries), so a reviewer can rebuild them; with
``--images``, the images themselves (``docker save``, gzip) for a fully offline reproduction; and ``manifest.json``:
the sha256 and size of every other file, the run's images (tag, the ids its records name, the sources hash the
orchestrator labels an image with) and the checkout's commit. ``verify`` names every file that was changed, is
missing or was added since.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from orchestrator import REPO_ROOT
from orchestrator.fixtures_cache import sha256_file
from orchestrator.images import SOURCES_LABEL, Runtime, discover, recipe_paths, sources_hash
from runners.record import Record

BUNDLE_SCHEMA = "slm-matrix.bundle/1"
MANIFEST = "manifest.json"
# the run folder's transient parts: never results
SKIP = ("lock", "work", "trials/.invalid")


class BundleError(ValueError):
    """A bundle that cannot be used as it is: what is wrong and what to do."""


@dataclass
class Bundle:
    """What export wrote: the file, its size, and the parts it holds with their sizes."""
    path: Path
    size: int
    parts: dict[str, int] = field(default_factory=dict)  # part -> bytes (run, recipes, images/<runtime>)
    manifest: dict[str, Any] = field(default_factory=dict)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_files(run_dir: Path) -> list[Path]:
    """The run folder's files a bundle keeps (relative paths), sorted."""
    out = []
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if p.is_file() and not any(rel.as_posix() == s or rel.as_posix().startswith(s + "/") for s in SKIP):
            out.append(rel)
    return out


def images_used(run_dir: Path) -> dict[str, dict[str, Any]]:
    """runtime folder -> {image, image_ids}: the images the run's records say their trials ran in."""
    by_tag = {rt.image: rt for rt in discover().values()}
    used: dict[str, dict[str, Any]] = {}
    for p in sorted((run_dir / "trials").glob("*.json")):
        r = Record.read(p)
        if r is None or not r.image:
            continue
        rt = by_tag.get(r.image)
        folder = rt.dockerfile.parent.name if rt else r.runtime
        entry = used.setdefault(folder, {"image": r.image, "image_ids": [], "run_sources": []})
        if r.image_id and r.image_id not in entry["image_ids"]:
            entry["image_ids"].append(r.image_id)
        sources = r.host.get("image_sources")  # the recipe the image that ran was built from (its label)
        if sources and sources not in entry["run_sources"]:
            entry["run_sources"].append(sources)
        base = r.host.get("image_base")  # and the base image it was built FROM
        if base and base not in entry.setdefault("run_bases", []):
            entry["run_bases"].append(base)
    return used


def recipe_files(folders: Iterable[str]) -> list[Path]:
    """Everything the images of these runtime folders are built from (relative to the checkout): recipe_paths."""
    runtimes = {rt.dockerfile.parent.name: rt for rt in discover().values()}
    files = {p for f in set(folders) if f in runtimes for p in recipe_paths(runtimes[f])}
    return sorted(p.relative_to(REPO_ROOT) for p in files)


def _commit() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _image_facts(used: dict[str, dict[str, Any]], client) -> None:
    """Beside the ids and recipes the records name: the local image of each tag now (id, size, the sources it was
    built from) and this checkout's sources hash of its recipe. Records older than the image_sources fact: the
    local image's label stands for the run's recipe when it is the very image that ran."""
    runtimes = {rt.dockerfile.parent.name: rt for rt in discover().values()}
    for folder, entry in used.items():
        rt: Runtime | None = runtimes.get(folder)
        entry["recipe_sources"] = sources_hash(rt) if rt else None
        img = None
        if client is not None:
            from orchestrator.docker_layer import local_image

            img = local_image(client, entry["image"])
        entry["local"] = None if img is None else {
            # the SDK's labels are {} when an image has none
            "id": img.id, "size_bytes": img.attrs.get("Size"), "sources": img.labels.get(SOURCES_LABEL),
            "ran_the_run": img.id in entry["image_ids"]}
        if not entry["run_sources"] and entry["local"] and entry["local"]["ran_the_run"] and entry["local"]["sources"]:
            entry["run_sources"] = [entry["local"]["sources"]]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


def _save_image(client, tag: str, dest: Path) -> int:
    """``docker save`` of one image, gzip-compressed into ``dest``; its size."""
    with gzip.open(dest, "wb", compresslevel=1) as out:  # level 1: an image's layers are mostly compressed already
        for chunk in client.images.get(tag).save(named=True):
            out.write(chunk)
    return dest.stat().st_size


def export(run_dir: Path, out: Path, *, client=None, with_images: bool = False,
           say: Callable[[str], None] = print) -> Bundle:
    """Write the bundle of ``run_dir`` to ``out``; what it holds is said (with sizes) before the large parts."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "run.json").is_file():
        raise BundleError(f"{run_dir} is not a run folder (no run.json) — give the run id of a run under --results")
    used = images_used(run_dir)
    _image_facts(used, client)
    files = {f"run/{rel.as_posix()}": (run_dir / rel).read_bytes() for rel in run_files(run_dir)}
    recipes = {f"recipes/{rel.as_posix()}": (REPO_ROOT / rel).read_bytes() for rel in recipe_files(used)}
    parts = {"run": sum(map(len, files.values())), "recipes": sum(map(len, recipes.values()))}
    say(f"bundle of run {run_dir.name}: {len(files)} run files ({parts['run'] / 1e6:.1f} MB), recipes of "
        f"{len(used)} image(s) ({parts['recipes'] / 1e6:.1f} MB)")
    if with_images:
        if client is None:
            raise BundleError("--images needs the Docker engine (the images are saved from it) — start dockerd, or "
                              "export without --images")
        missing = [e["image"] for e in used.values() if e["local"] is None]
        if missing:
            raise BundleError(f"--images: {', '.join(missing)} not on this host — build them, or export without "
                              "--images (the recipes rebuild them)")
        for folder, e in used.items():
            say(f"  + image {e['image']} ({e['local']['size_bytes'] / 1e9:.2f} GB before compression)"
                + ("" if e["local"]["ran_the_run"] else " — NOT the image id the run's records name: rebuilt since"))
    manifest = {"schema": BUNDLE_SCHEMA, "run_id": run_dir.name, "created_unix": time.time(), "commit": _commit(),
                "images": used, "files": {name: {"sha256": sha256_of(data), "size": len(data)}
                                          for name, data in sorted({**files, **recipes}.items())}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    now = time.time()
    with tarfile.open(tmp, "w:gz" if out.suffix == ".gz" else "w") as tar, tempfile.TemporaryDirectory() as scratch:
        for name, data in sorted({**files, **recipes}.items()):
            _add_bytes(tar, name, data, now)
        if with_images:
            for folder, e in sorted(used.items()):
                saved = Path(scratch) / f"{folder}.tar.gz"
                parts[f"images/{folder}"] = _save_image(client, e["image"], saved)
                manifest["files"][f"images/{folder}.tar.gz"] = {"sha256": sha256_file(saved),
                                                               "size": parts[f"images/{folder}"]}
                tar.add(saved, arcname=f"images/{folder}.tar.gz")
                saved.unlink()
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode(), now)
    shutil.move(tmp, out)
    return Bundle(out, out.stat().st_size, parts, manifest)


def verify(bundle: Path) -> tuple[dict[str, Any], list[str]]:
    """The bundle's manifest and what does not match it: each changed, missing or added file named ([] when whole)."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise BundleError(f"no bundle at {bundle} — give the file `orchestrate.py export` wrote")
    try:
        tar = tarfile.open(bundle)
    except tarfile.TarError as e:
        raise BundleError(f"{bundle} is not a bundle (not a tar archive: {e})") from e
    with tar:
        try:
            manifest = json.loads(tar.extractfile(MANIFEST).read())
        except (KeyError, AttributeError, json.JSONDecodeError) as e:
            raise BundleError(f"{bundle} has no readable {MANIFEST}: not a bundle of this tool") from e
        if manifest.get("schema") != BUNDLE_SCHEMA:
            raise BundleError(f"{bundle}: manifest schema {manifest.get('schema')!r}, this tool reads {BUNDLE_SCHEMA}")
        expected = manifest.get("files") or {}
        problems, seen = [], set()
        for member in tar:
            if not member.isfile() or member.name == MANIFEST:
                continue
            seen.add(member.name)
            want = expected.get(member.name)
            if want is None:
                problems.append(f"{member.name}: not in the manifest (added after export)")
                continue
            h = hashlib.file_digest(tar.extractfile(member), "sha256")
            if h.hexdigest() != want["sha256"]:
                problems.append(f"{member.name}: changed since export (sha256 {h.hexdigest()[:12]}, manifest "
                                f"{want['sha256'][:12]})")
        problems += [f"{name}: missing (in the manifest, not in the bundle)" for name in sorted(set(expected) - seen)]
    return manifest, problems
