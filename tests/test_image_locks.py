"""Every image is locked (issue 25): each distribution installed in a built image is pinned, at that very version, by
its folder's constraints.txt (or, for a library compiled from its source distribution, by the Dockerfile's
``ARG <NAME>_VERSION``). A rebuild that re-resolved a package — as vLLM's transformers once did between two builds —
fails here, naming the package, the pinned and the installed version. Pins of packages the image does not hold are
allowed (pip's constraints only bind what is installed). CUDA images are checked where they are built."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from _containers import build_image
from orchestrator.images import discover

# pip freeze leaves the installer's own tools out; so does the lock
INSTALLER = {"pip", "setuptools", "wheel"}
LISTING = ("import json, importlib.metadata as m; "
           "print(json.dumps(sorted({(d.metadata['Name'], d.version) for d in m.distributions()})))")


def pins(folder: Path) -> dict[str, str]:
    """name -> version the image's recipe pins: constraints.txt's ``name==version`` lines, and the Dockerfile's
    ``ARG NAME_VERSION=x`` for what it builds from source (llama-cpp-python)."""
    out = {}
    for line in (folder / "constraints.txt").read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    for m in re.finditer(r"^ARG ([A-Z0-9_]+)_VERSION=(\S+)", (folder / "Dockerfile").read_text(), re.MULTILINE):
        out.setdefault(canonicalize_name(m.group(1).replace("_", "-")), m.group(2))
    return out


def lock_problems(installed: dict[str, str], pinned: dict[str, str]) -> list[str]:
    """What the image holds that its lock does not say: unpinned packages, and pins at another version."""
    out = []
    for name, version in sorted(installed.items()):
        if name in INSTALLER:
            continue
        if name not in pinned:
            out.append(f"{name} {version} is installed but not pinned")
        elif pinned[name] != version:
            out.append(f"{name} is pinned at {pinned[name]} but {version} is installed")
    return out


def test_the_lock_check_names_what_is_unpinned_or_drifted():
    pinned = {"torch": "2.13.0+cpu", "transformers": "5.19.0", "accelerate": "1.15.0"}
    assert lock_problems({"torch": "2.13.0+cpu", "transformers": "5.19.0", "pip": "25.0"}, pinned) == []
    assert lock_problems({"torch": "2.13.0+cpu", "transformers": "5.18.0", "tokenizers": "0.23.3"}, pinned) == [
        "tokenizers 0.23.3 is installed but not pinned", "transformers is pinned at 5.19.0 but 5.18.0 is installed"]


def test_every_lock_pins_the_versions_it_names_and_the_source_builds(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "constraints.txt").write_text("# a comment==1\nTorch==2.13.0+cpu  # why\nllama_cpp_python==0.1\n")
    (folder / "Dockerfile").write_text("ARG LLAMA_CPP_PYTHON_VERSION=0.3.36\nARG RUNNER_BASE=x\n")
    assert pins(folder) == {"torch": "2.13.0+cpu", "llama-cpp-python": "0.1"}
    (folder / "constraints.txt").write_text("")
    assert pins(folder) == {"llama-cpp-python": "0.3.36"}


def test_an_image_built_from_a_siblings_lock_changes_recipe_when_that_lock_does():
    """openvino installs torch-cpu's requirements and lock (its Dockerfile COPYs them): they are its recipe too, the
    host's build inputs (wheels, CA certificates) are not."""
    from orchestrator import REPO_ROOT
    from orchestrator.images import recipe_paths

    paths = {p.relative_to(REPO_ROOT).as_posix() for p in recipe_paths(discover()["openvino"])}
    assert {"images/torch-cpu/constraints.txt", "images/openvino/constraints.txt", "images/_base/pip-install",
            "runners/runner.py"} <= paths
    assert not any(p.startswith(("images/wheelhouse", "images/extra-ca", "images/onnx-cpu")) for p in paths)


CPU = sorted(name for name, rt in discover().items() if not rt.gpu)


@pytest.mark.parametrize("runtime", CPU)
def test_a_built_image_holds_exactly_what_its_lock_pins(docker_client, runtime):
    rt = build_image(docker_client, runtime)  # this checkout's image (layer-cached)
    listing = docker_client.containers.run(rt.image, ["-c", LISTING], entrypoint=["python"], remove=True,
                                           network_disabled=True)
    installed = {canonicalize_name(n): v for n, v in json.loads(listing)}
    problems = lock_problems(installed, pins(rt.dockerfile.parent))
    assert not problems, (f"{rt.image} does not match images/{rt.dockerfile.parent.name}/constraints.txt: "
                          + "; ".join(problems) + " — pin the image's `pip freeze` (the file's header says how)")
