"""The GPU acceptance kit (benchmarks/gpu_acceptance.py) end to end in its --device cpu mode, as a bare host runs it.

The kit drives the orchestrator's process launcher (no Docker) over three matrices of its own: the seven tiny
architectures × torch fp32/fp16/bf16, the floor model (tiny Llama on CPU, ~1B on a GPU) × torch's precisions with
repetitions, and torch.compile on the floor model in a run of its own. Here it runs with the Docker SDK made
unimportable, as on the GPU host, and with a given memory bandwidth so that the floor fraction is computed and can be
checked against the records. On a GPU host the same command with --device cuda is the acceptance run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import REPO_ROOT, fixtures

BANDWIDTH_GBS = 20.0


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kit")
    blocked = tmp / "blocked"
    for mod in ("docker",):  # a bare GPU host has no Docker SDK: the kit must not need it
        (blocked / mod).mkdir(parents=True)
        (blocked / mod / "__init__.py").write_text(f"raise ImportError('{mod} is blocked: a bare host has none')\n")
    out = tmp / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_acceptance", "--device", "cpu", "--out", str(out),
                           "--cache", str(fixtures.default_root().parent / "gpu-acceptance"),
                           "--bandwidth-gbs", str(BANDWIDTH_GBS)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, json.loads((out / "summary.json").read_text()), proc.stdout


def _rows(summary, run):
    return {(r["model"], r["engine"], r["precision"]): r for r in summary["rows"] if r["run_id"] == run}


def test_every_architecture_and_precision_generates_exact_tokens_with_agreement(kit):
    _, summary, stdout = kit
    rows = _rows(summary, "archs")
    expected = {(f"tiny-{a.replace('_', '-')}", "torch", p) for a in fixtures.ARCHITECTURES
                for p in ("fp32", "fp16", "bf16")}
    assert set(rows) == expected
    for key, r in rows.items():
        assert r["ok"] == r["trials"] == 1, (key, r.get("errors"))
        assert r["tokens_exact"] is True, key
        assert r["agreement_vs_fp32"] is not None, key  # compared, not "no reference"
        if key[2] == "fp32":
            assert r["agreement_vs_fp32"] == 1.0, key  # the reference agrees with itself
    assert "GPU acceptance" in stdout and "tiny-gemma" in stdout


def test_floor_model_repetitions_cv_compile_agreement_and_skipped_engines(kit):
    out, summary, _ = kit
    floor, compiled = _rows(summary, "floor"), _rows(summary, "compile")
    assert {k[2] for k in floor if k[1] == "torch"} == {"fp32", "fp16", "bf16"}
    reps = next(r for r in summary["runs"] if r["name"] == "floor")["reps"]
    for key, r in floor.items():
        assert r["ok"] == r["trials"] == reps and r["tokens_exact"], (key, r.get("errors"))
        if r["energy_source"]:  # a CV needs energy: RAPL here, or codecarbon's estimate, labelled as such
            assert r["energy_cv"] is not None and r["energy_cv"] >= 0
    (key, r), = compiled.items()
    assert key[1] == "torch-compile" and r["ok"] == reps and r["tokens_exact"]
    # compile runs apart from its reference (torch fp32 eager, in the floor run): agreement still compares them
    assert r["agreement_status"] == ["compared"] and r["agreement_vs_fp32"] is not None
    # every engine of the CPU images is either run or skipped with its reason
    seen = {(e["runtime"], e["engine"]) for e in summary["engines"]["run"] + summary["engines"]["skipped"]}
    from orchestrator.images import discover

    assert seen == {(rt.name, e) for rt in discover().values() if rt.device == "cpu" for e in rt.engines}
    assert all(s["reason"] for s in summary["engines"]["skipped"])
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 20e6  # small enough to bring back


def test_bandwidth_floor_fraction_is_weights_over_bandwidth_over_time_per_token(kit):
    out, summary, _ = kit
    assert summary["bandwidth"] == {"bytes_per_s": BANDWIDTH_GBS * 1e9, "source": "given", "detail": "--bandwidth-gbs"}
    r = _rows(summary, "floor")[("floor-llama", "torch", "bf16")]
    records = [json.loads(p.read_text()) for p in (out / "results" / "floor" / "trials").glob("*.json")]
    recs = [x for x in records if x["engine"]["precision"] == "bf16" and x["status"] == "ok"]
    params = recs[0]["model"]["parameters"]
    # the kit takes the median over trials of each trial's median time per output token
    tpot = statistics.median(statistics.median(p["tpot_s"] for p in rec["per_prompt"]) for rec in recs)
    assert r["weight_bytes"] == params * 2
    assert r["bandwidth_fraction"] == pytest.approx(params * 2 / (BANDWIDTH_GBS * 1e9) / tpot, rel=1e-6)
