"""ONNX Runtime and OpenVINO on the smoke matrix, end to end through orchestrate.py: one prepare container per
conversion cell (cache read-write), then the measured trials of both repetitions in their seeded order (cache
read-only, no network) — the conversion made once is the one both repetitions use, and a second invocation converts
and runs nothing. The torch-cpu trials of the same model are the fp32 reference for token agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, orchestrate

from runners.agreement import token_agreement
from runners.record import validate_record

SMOKE = REPO / "matrix-smoke.toml"
RUNTIMES = ("onnx-cpu", "openvino", "torch-cpu")
MODEL = "tiny-llama"


def _records(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, docker_client):
    from _containers import build_image

    for rt in RUNTIMES:  # this checkout's runners/ in every image (layer-cached)
        build_image(docker_client, rt)
    results, cache = tmp_path_factory.mktemp("smoke-results"), tmp_path_factory.mktemp("smoke-cache")
    args = ["run", "--matrix", str(SMOKE), "--run-id", "smoke-conv", "--results", str(results), "--cache",
            str(cache), "--model", MODEL]
    for rt in RUNTIMES:
        args += ["--runtime", rt]
    first = orchestrate(*args, timeout=1800)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    run_dir = results / "smoke-conv"
    return {"dir": run_dir, "args": args, "first": first, "trials": _records(run_dir / "trials"),
            "prepare": _records(run_dir / "prepare")}


def test_each_conversion_ran_once_in_its_own_prepare_container(smoke_run):
    prep = {k: v for k, v in smoke_run["prepare"].items() if not k.startswith("model__")}
    convert = {k: v for k, v in prep.items() if k.split("__")[0] in ("onnx-cpu", "openvino")}
    assert sorted(k.split("__")[0] for k in convert) == ["onnx-cpu", "openvino"], sorted(prep)
    for cell, rec in convert.items():
        validate_record(rec)
        assert rec["status"] == "ok" and rec["mode"] == "prepare", (cell, rec.get("error"))
        info = rec["phases"]["prepare"]["info"]
        assert info["cached"] is False and info["seconds"] > 0, info  # converted here, timed in its own window
        assert rec["phases"]["prepare"]["energy_total"]["estimated_j"] is not None or \
            rec["phases"]["prepare"]["energy_total"]["measured_j"] is not None
        assert rec["host"]["limits"]["network"] == "none"


def test_both_repetitions_reuse_that_conversion(smoke_run):
    prep = {k.split("__")[0]: v["phases"]["prepare"]["info"] for k, v in smoke_run["prepare"].items()
            if not k.startswith("model__") and k.split("__")[0] in ("onnx-cpu", "openvino")}
    trials = smoke_run["trials"]
    for rt in ("onnx-cpu", "openvino"):
        mine = sorted((r for r in trials.values() if r["trial"]["runtime"] == rt),
                      key=lambda r: r["trial"]["repetition"])
        assert [r["trial"]["repetition"] for r in mine] == [0, 1]
        for rec in mine:
            assert rec["status"] == "ok", rec["error"]
            info = rec["phases"]["prepare"]["info"]
            assert info["cached"] is True  # found, not converted: the measured containers mount the cache read-only
            assert info["artifact"] == prep[rt]["artifact"] and info["created_unix"] == prep[rt]["created_unix"]
            assert rec["phases"]["prepare"]["duration_s"] < 5


def test_exact_tokens_and_agreement_with_torch_fp32(smoke_run):
    """The orchestrator attaches each record's agreement with the torch fp32 trial of the same model and work."""
    import tomllib

    smoke = tomllib.loads(SMOKE.read_text())
    n, count = smoke["generation"]["new_tokens"], smoke["workload"]["count"]
    trials = smoke_run["trials"]
    lines = []
    for tid, rec in trials.items():
        validate_record(rec)
        assert rec["status"] == "ok", rec["error"]
        assert [p["generated_tokens"] for p in rec["per_prompt"]] == [n] * count
        if rec["trial"]["runtime"] == "torch-cpu":
            continue
        a = rec["agreement"]
        assert a["reference"].startswith("torch-cpu__torch__") and a["reference_engine"]["precision"] == "fp32"
        assert a == token_agreement(rec, trials[a["reference"]], a["reference"])  # what the runner module computes
        lines.append(f"{tid}: {a['identical']}/{a['prompts']} identical, first divergence {a['first_divergence']}")
        assert a["prompts"] == count and a["share_identical"] >= 0.75, lines[-1]
    print("\nsmoke, tiny-llama, agreement with torch fp32:\n  " + "\n  ".join(sorted(lines)))
    assert "agreement" in smoke_run["first"].stdout.lower()  # and the run summary shows it
    details = {r["trial"]["runtime"]: r["engine"]["details"] for r in trials.values()}
    assert details["onnx-cpu"]["provider"] == "CPUExecutionProvider"
    assert details["openvino"]["kv_cache_mode"] == "stateful"
    assert details["openvino"]["compiled"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_a_second_invocation_converts_and_runs_nothing(smoke_run):
    before = {p.name: p.stat().st_mtime_ns for p in (smoke_run["dir"] / "prepare").glob("*.json")}
    again = orchestrate(*smoke_run["args"], timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (smoke_run["dir"] / "prepare").glob("*.json")} == before
    assert _records(smoke_run["dir"] / "trials").keys() == smoke_run["trials"].keys()
    assert "prepared onnx-cpu" not in again.stdout and "prepared openvino" not in again.stdout
