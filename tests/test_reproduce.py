"""orchestrate.py reproduce (orchestrator/reproduce.py): per cell what held between a run and its reproduction —
tokens, time and energy against the original's spread, host and image differences, one verdict — and the refusals
before anything runs (a bundle changed after export, images built from another recipe)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from conftest import orchestrate

from analysis.synthetic import make_record, write_run
from orchestrator import bundle
from orchestrator.images import SOURCES_LABEL
from orchestrator.reproduce import compare_runs

IMAGE = "slm-matrix/torch-cpu:latest"


def _run(durations=(10.0, 10.2, 9.9), energy=100.0, **kw) -> dict[str, dict]:
    recs = [make_record(engine="torch", repetition=i, order_index=i, duration_s=d, energy_j=energy * d / 10, **kw)
            for i, d in enumerate(durations)]
    return {r["trial"]["trial_id"]: r for r in recs}


def _verdicts(original, reproduction, **kw) -> list[dict]:
    rows = compare_runs(original, reproduction, **kw)
    assert len(rows) == 1
    return rows


def test_the_same_figures_are_reproduced():
    row, = _verdicts(_run(), _run(durations=(10.1, 9.95, 10.05)))
    assert row["verdict"] == "reproduced" and row["tokens_identical"] == 1.0
    assert row["time"]["low"] < 1 < row["time"]["high"] and row["time"]["within_original_range"] is True
    assert row["energy"]["ratio"] == pytest.approx(10.05 / 10.0, rel=0.02)
    assert row["host_differences"] == {} and row["trials"] == row["original_trials"] == 3


def test_tokens_that_differ_are_never_called_reproduced():
    row, = _verdicts(_run(), _run(diverge=(2,)))  # one prompt's tokens changed, figures the same
    assert row["tokens_identical"] == 0.75 and row["verdict"] == "tokens differ"


def test_slower_outside_the_interval_and_another_machine_are_said():
    row, = _verdicts(_run(), _run(durations=(15.0, 15.3, 14.8)))
    assert row["time"]["low"] > 1 and row["time"]["within_original_range"] is False and row["verdict"] == "slower"
    other = _run()
    for rec in other.values():
        rec["environment"]["cpu_model"] = "Another CPU"
    row, = _verdicts(_run(), other)
    assert row["verdict"] == "other hardware"
    assert row["host_differences"] == {"cpu_model": {"original": "Synthetic CPU", "reproduction": "Another CPU"}}
    row, = _verdicts(_run(), _run(), images_allowed_to_differ=True)
    assert row["verdict"] == "other image"


def test_energy_of_another_boundary_is_not_compared():
    row, = _verdicts(_run(source="estimated"), _run(source="measured"))
    assert row["energy"]["ratio"] is None and "another energy boundary" in row["energy"]["note"]
    assert row["time"]["ratio"] is not None


def _bundle(tmp_path, recipe_sources: str | None = None):
    """A bundle of a synthetic run; ``recipe_sources``: the recipe its images were built from, per its manifest."""
    recs = list(_run().values())
    for rec in recs:
        rec["host"] = {**(rec.get("host") or {}), "image": IMAGE}
    run = write_run(recs, tmp_path / "results" / "orig")
    (run / "run.json").write_text(json.dumps({"run_id": "orig", "invocations": []}))
    (run / "matrix.toml").write_text('[matrix]\nname = "orig"\nseed = 1\nrepetitions = 1\n[workload]\ncount = 2\n'
                                     '[generation]\nnew_tokens = 4\n[runtimes.torch-cpu]\nengines = ["torch"]\n'
                                     '[models.tiny]\nfixture = "llama"\n')
    b = bundle.export(run, tmp_path / "orig.tar", say=lambda line: None).path
    if recipe_sources is None:
        return b
    out = tmp_path / "other-recipe.tar"
    with tarfile.open(b) as tin, tarfile.open(out, "w") as tout:
        for m in tin:
            data = tin.extractfile(m).read()
            if m.name == bundle.MANIFEST:  # the images were built from another recipe than this checkout's
                manifest = json.loads(data)
                manifest["images"]["torch-cpu"]["run_sources"] = [recipe_sources]
                data = json.dumps(manifest).encode()
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    return out


def test_images_of_another_recipe_or_a_changed_bundle_are_refused_before_anything_runs(tmp_path):
    other = _bundle(tmp_path, recipe_sources="0" * 16)
    proc = orchestrate("reproduce", str(other), "--results", str(tmp_path / "repro"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "other sources" in proc.stderr and "--allow-different-images" in proc.stderr
    assert not (tmp_path / "repro").exists()  # refused before any run folder or container
    changed = tmp_path / "changed.tar"
    with tarfile.open(_bundle(tmp_path / "b")) as tin, tarfile.open(changed, "w") as tout:
        for m in tin:
            data = tin.extractfile(m).read()
            if m.name == "run/matrix.toml":
                data += b"# edited\n"
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    proc = orchestrate("reproduce", str(changed), "--results", str(tmp_path / "repro"))
    assert proc.returncode == 2 and "not as exported" in proc.stderr and "run/matrix.toml" in proc.stderr


def test_the_recipe_check_compares_this_checkout_with_the_image_that_ran():
    from orchestrator.images import discover, sources_hash
    from orchestrator.reproduce import recipe_problems

    rt = discover()["torch-cpu"]

    def manifest(sources):
        return {"images": {"torch-cpu": {"image": rt.image, "run_sources": sources}}}

    assert recipe_problems(manifest([sources_hash(rt)]), [rt]) == ([], [])
    differ, unknown = recipe_problems(manifest(["0" * 16]), [rt])
    assert len(differ) == 1 and "other sources" in differ[0] and not unknown
    differ, unknown = recipe_problems(manifest([]), [rt])  # records from before the image_sources fact
    assert not differ and len(unknown) == 1
    assert recipe_problems(None, [rt]) == ([], [])  # a run folder: nothing recorded to hold it to


def _tiny_image(client, tag: str, sources: str) -> None:
    """A one-file image labelled as built from ``sources`` (built in a second, saved in kilobytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in (("Dockerfile", f'FROM scratch\nCOPY marker /marker\nLABEL {SOURCES_LABEL}="{sources}"\n'),
                           ("marker", sources)):
            info = tarfile.TarInfo(name)
            info.size = len(data.encode())
            t.addfile(info, io.BytesIO(data.encode()))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)


def test_an_image_comes_from_the_bundle_when_the_local_one_is_of_another_recipe(tmp_path, docker_client):
    """ready_images with a real Docker engine: the bundle's saved image (export --images) is loaded when the local
    image was built from another recipe; then the local image is used as it is; a recipe nobody has is refused
    without building anything."""
    from orchestrator import REPO_ROOT
    from orchestrator.images import Runtime
    from orchestrator.reproduce import ready_images

    # torch-cpu's recipe under a tag of its own: the test never touches the real image
    rt = Runtime(name=f"repro-load-{tmp_path.name[-8:].lower()}", engines=("torch",), device="cpu",
                 dockerfile=REPO_ROOT / "images" / "torch-cpu" / "Dockerfile")
    try:
        _tiny_image(docker_client, rt.image, "a" * 16)  # the image that ran the original
        saved = tmp_path / "saved.tar.gz"
        bundle._save_image(docker_client, rt.image, saved)
        _tiny_image(docker_client, rt.image, "b" * 16)  # this host's image under the same tag: another recipe
        member = f"images/{rt.dockerfile.parent.name}.tar.gz"
        source = tmp_path / "bundle.tar"
        with tarfile.open(source, "w") as tar:
            tar.add(saved, arcname=member)
        manifest = {"images": {rt.dockerfile.parent.name: {"image": rt.image, "run_sources": ["a" * 16]}},
                    "files": {member: {}}}
        said: list[str] = []
        assert ready_images(docker_client, source, manifest, [rt], said.append) == (
            [], [], {rt.image: f"loaded from the bundle ({member})"})
        assert docker_client.images.get(rt.image).labels[SOURCES_LABEL] == "a" * 16 and said
        problems, _, how = ready_images(docker_client, source, manifest, [rt], said.append)
        assert not problems and how[rt.image].startswith("local image")
        # neither local nor in the bundle, and this checkout cannot build that recipe: refused, nothing built
        manifest["images"][rt.dockerfile.parent.name]["run_sources"] = ["c" * 16]
        problems, _, how = ready_images(docker_client, tmp_path / "no-images.tar", {**manifest, "files": {}}, [rt],
                                        said.append)
        assert len(problems) == 1 and "other sources" in problems[0] and how == {}
    finally:
        docker_client.images.remove(rt.image, force=True)


def test_the_report_of_a_reproduction_shows_the_originals_figures_beside_its_own(tmp_path):
    from analysis.report import build_report
    from orchestrator.reproduce import write

    original = _run()
    repro = _run(durations=(12.0, 12.4, 12.2))
    run = write_run(list(repro.values()), tmp_path / "repro")
    write(compare_runs(original, repro), run, "orig.tar", False, {IMAGE: "loaded from the bundle (images/x.tar.gz)"})
    md = build_report([run], tmp_path / "report")["markdown"].read_text()
    section = md[md.index("## Reproduction"):md.index("## Tables")]
    assert "Reproduction of orig.tar: 1 cell(s) — 1 slower." in section
    assert "loaded from the bundle" in section
    # the original's median time (10.0 s of 10, 10.2, 9.9) and the reproduction's (12.2 s), each with its n
    assert "10 (n=3)" in section and "12.2 (n=3)" in section and "×1.22" in section
    assert "| slower |" in section
