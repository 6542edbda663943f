"""Today's architectures through every CPU runtime (issue 16): the CI subset of `make archs`.

A sliding-window model (Mistral, window 16 < prompt + new tokens) through torch eager and compile, ONNX Runtime,
OpenVINO, llama.cpp and vLLM, and Gemma 3 (local/global layers, QK-norm, scaled embeddings) through vLLM: orchestrate.py
on matrix-archs.toml cut down to those cells, then the table script (benchmarks/archs_table.py) on that run. Every
cell must be token-identical to torch fp32 eager on at least the [agreement] threshold of prompts (the orchestrator's
agreement, attached to the records), or a refusal that carries the runtime's own reason — never a number for
different work, never a crash.
"""

from __future__ import annotations

import tomllib

import pytest
from conftest import REPO, orchestrate

from orchestrator.tomlw import dumps

ARCHS = REPO / "matrix-archs.toml"
# heavy (8.5 min on 2 cores): `make test-all`; `make archs` runs the whole grid
pytestmark = pytest.mark.heavy
CPU_RUNTIMES = ("torch-cpu", "onnx-cpu", "openvino", "llamacpp-cpu", "vllm-cpu")
SLIDING = "mistral"
# what each runtime does with the sliding-window model at fp32 (make archs found the same on the full workload):
# llama.cpp's converter maps Mistral onto its llama architecture, which has no sliding window — the engine refuses
# rather than attend to the whole context (0 % identical past the window before it did)
EXPECTED_SLIDING = {"torch-cpu/torch": "reference", "torch-compile/torch-compile": "same", "onnx-cpu/onnx": "same",
                    "openvino/openvino": "same", "llamacpp-cpu/llamacpp": "refused", "vllm-cpu/vllm": "same"}
REFUSAL_WORDS = {"llamacpp-cpu/llamacpp": "no sliding-window attention"}


def _matrix(folder):
    """matrix-archs.toml on 4 prompts × 20 new tokens (still past the window of 16), two models, torch.compile in an
    entry of its own so that Gemma 3 can run on the reference and vLLM alone."""
    m = tomllib.loads(ARCHS.read_text())
    m["matrix"]["name"] = "archs-ci"
    m["workload"]["count"] = 4
    m["generation"]["new_tokens"] = 20
    m["runtimes"]["torch-cpu"] = {"engines": ["torch"]}
    m["runtimes"]["torch-compile"] = {"image": "torch-cpu", "engines": ["torch-compile"]}
    m["models"] = {name: m["models"][name] for name in (SLIDING, "gemma3")}
    m["runtimes"] = {name: m["runtimes"][name] for name in (*CPU_RUNTIMES, "torch-compile")}
    path = folder / "matrix-archs-ci.toml"
    path.write_text(dumps(m))
    return path


@pytest.fixture(scope="module")
def archs_run(tmp_path_factory, docker_client):
    from _containers import build_image

    for rt in CPU_RUNTIMES:  # this checkout's runners/ in every image (layer-cached)
        build_image(docker_client, rt)
    work = tmp_path_factory.mktemp("archs")
    matrix = _matrix(work)
    common = ["run", "--matrix", str(matrix), "--run-id", "archs-ci", "--results", str(work / "results"),
              "--cache", str(work / "cache")]
    out = []
    for args in (["--model", SLIDING], ["--model", "gemma3", "--runtime", "torch-cpu", "--runtime", "vllm-cpu"]):
        proc = orchestrate(*common, *args, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        out.append(proc.stdout)
    return {"dir": work / "results" / "archs-ci", "stdout": "\n".join(out)}


def test_a_sliding_window_model_through_every_cpu_runtime(archs_run):
    from benchmarks.archs_table import cells

    models, columns, found, facts = cells(archs_run["dir"])
    got = {c: found.get((SLIDING, c)) for c in columns}
    assert set(got) == set(EXPECTED_SLIDING), sorted(got)
    threshold = facts["policy"].threshold
    for column, expected in EXPECTED_SLIDING.items():
        cell = got[column]
        assert cell is not None, f"{column}: no record"
        assert cell["kind"] == expected, f"{SLIDING} × {column}: {cell}"
        if expected == "same":
            assert cell["share"] >= threshold and cell["prompts"] == 4, cell
        if cell["kind"] == "refused":  # the reason in words, with the fix
            assert REFUSAL_WORDS[column] in cell["reason"] and " — " in cell["reason"], cell


def test_gemma3_through_vllm_agrees_with_torch(archs_run):
    from benchmarks.archs_table import cells

    _, _, found, facts = cells(archs_run["dir"])
    cell = found[("gemma3", "vllm-cpu/vllm")]
    assert cell["kind"] == "same", cell
    assert cell["share"] >= facts["policy"].threshold and cell["prompts"] == 4, cell
    # every prompt ran 20 tokens past a 10–15-token prompt: the sliding window (16) was crossed and still identical
    assert all(d is None for d in cell["first_divergence"]), cell


def test_the_table_is_generated_from_the_run(archs_run, tmp_path):
    from benchmarks.archs_table import BEGIN, END, markdown, write_between_markers

    text = markdown(archs_run["dir"])
    assert "| mistral |" in text and "| gemma3 |" in text and "vllm-cpu/vllm" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\nold\n{END}\n\nrest\n")
    write_between_markers(readme, text)
    doc = readme.read_text()
    assert "old" not in doc and text in doc and doc.endswith(f"{END}\n\nrest\n")
    write_between_markers(readme, text)  # regenerating replaces, never appends
    assert readme.read_text() == doc
    assert "agreement" in archs_run["stdout"].lower()  # the orchestrator's own "same work?" summary was printed
