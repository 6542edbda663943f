"""A run as one verifiable bundle (orchestrate.py export / verify, orchestrator/bundle.py): what it holds and leaves
out, its manifest, and that a file changed, removed or added after export is named."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import orchestrate

from analysis.synthetic import make_record, write_run
from orchestrator import bundle

IMAGE = "slm-matrix/torch-cpu:latest"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    recs = [make_record(engine="torch", repetition=r, order_index=r) for r in range(2)]
    for rec in recs:
        rec["host"] = {**(rec.get("host") or {}), "image": IMAGE, "image_id": "sha256:" + "ab" * 32,
                       "image_sources": "5" * 16}  # the label of the image that ran: the recipe it was built from
    run = write_run(recs, tmp_path / "results" / "run-a")
    (run / "run.json").write_text(json.dumps({"run_id": "run-a", "invocations": []}))
    (run / "matrix.toml").write_text('[matrix]\nname = "run-a"\n')
    (run / "logs").mkdir()
    (run / "logs" / "trial.log").write_text("[runner +0.1s] generate\n")
    (run / "lock").write_text("pid 1")  # transient: never in a bundle
    (run / "work" / "t1").mkdir(parents=True)
    (run / "work" / "t1" / "job.json").write_text("{}")
    return run


def _rewrite(src: Path, dst: Path, change: dict[str, bytes | None]) -> None:
    """A copy of the bundle with members replaced (bytes), removed (None) or added (a name not in it)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        names = set()
        for m in tin:
            names.add(m.name)
            if m.name in change:
                if change[m.name] is None:
                    continue
                data = change[m.name]
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))
            else:
                tout.addfile(m, tin.extractfile(m))
        for name, data in change.items():
            if name not in names and data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))


def test_the_bundle_holds_the_run_and_its_recipes_with_a_manifest(run_dir, tmp_path):
    b = bundle.export(run_dir, tmp_path / "run-a.tar.gz", say=lambda line: None)
    with tarfile.open(b.path) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile(bundle.MANIFEST).read())
        record_name = next(n for n in names if n.startswith("run/trials/"))
        record = tar.extractfile(record_name).read()
    assert {"run/run.json", "run/matrix.toml", "run/logs/trial.log"} <= names
    assert sum(n.startswith("run/trials/") for n in names) == 2
    assert not any(n in ("run/lock",) or n.startswith("run/work/") for n in names)  # transient parts stay home
    # what the images were built from: the shared base, the runner, the runtime's own folder
    assert {"recipes/images/_base/Dockerfile", "recipes/images/torch-cpu/Dockerfile",
            "recipes/runners/runner.py"} <= names
    assert not any("__pycache__" in n for n in names)
    assert set(manifest["files"]) == names - {bundle.MANIFEST}
    assert manifest["files"][record_name]["sha256"] == bundle.sha256_of(record)
    image = manifest["images"]["torch-cpu"]
    assert image["image"] == IMAGE and image["image_ids"] == ["sha256:" + "ab" * 32]
    assert image["run_sources"] == ["5" * 16]
    assert len(image["recipe_sources"]) == 16  # this checkout's sources hash, as the image's label would say
    assert bundle.verify(b.path) == (manifest, [])


def test_a_file_changed_removed_or_added_after_export_is_named(run_dir, tmp_path):
    b = bundle.export(run_dir, tmp_path / "run-a.tar.gz", say=lambda line: None)
    with tarfile.open(b.path) as tar:
        record_name = next(n for n in tar.getnames() if n.startswith("run/trials/"))
        edited = json.loads(tar.extractfile(record_name).read())
    edited["phases"]["generate"]["duration_s"] *= 0.5  # a figure edited after the run
    bad = tmp_path / "edited.tar.gz"
    _rewrite(b.path, bad, {record_name: json.dumps(edited).encode(), "run/logs/trial.log": None,
                           "run/trials/extra.json": b"{}"})
    _, problems = bundle.verify(bad)
    assert sorted(p.split(":")[0] for p in problems) == sorted([record_name, "run/logs/trial.log",
                                                                "run/trials/extra.json"])
    assert any("changed since export" in p for p in problems) and any("missing" in p for p in problems)
    assert any("added after export" in p for p in problems)
    proc = orchestrate("verify", str(bad))
    assert proc.returncode == 1 and "3 not as exported" in proc.stdout and record_name in proc.stdout


def test_the_cli_exports_verifies_and_refuses_what_is_not_a_run(run_dir, tmp_path):
    out = tmp_path / "b" / "run-a.tar"
    proc = orchestrate("export", "run-a", "--results", str(run_dir.parent), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recipes of 1 image(s)" in proc.stdout and out.is_file() and not out.with_name("run-a.tar.partial").exists()
    ok = orchestrate("verify", str(out))
    assert ok.returncode == 0 and "every one as exported" in ok.stdout
    proc = orchestrate("export", "nope", "--results", str(run_dir.parent), "--out", str(tmp_path / "x.tar"))
    assert proc.returncode == 2 and "not a run folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = orchestrate("verify", str(run_dir / "run.json"))
    assert proc.returncode == 2 and "not a bundle" in proc.stderr
