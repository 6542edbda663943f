"""One reference policy: parsed once from the matrix, stored in run.json, and the one object (with its one verdict
rule) that the orchestrator's summary, the report's agreement flags, the pass@1 comparison and the architectures
table all judge with — here with a non-default threshold, over prompts tokenised to other ids and other lengths."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from analysis.metrics import agreement_spec
from analysis.report import analyse
from analysis.synthetic import make_record, write_evaluations
from benchmarks.archs_table import cells
from orchestrator.agreement import attach
from orchestrator.store import RunStore
from runners.agreement import DEFAULT_THRESHOLD, RUN_KEY, ReferencePolicy
from test_same_input import tokenised  # prompt ids as an image's tokenizer made them

PROMPTS = 10
THRESHOLD = 0.9  # not the default: a reader that falls back to 0.95 judges onnx (9/10 identical) different work
# engine -> how its prompts came out against the reference's (torch fp32 eager): every row fp32, CPU
CASES = {
    "torch": {},
    "onnx": {"diverge": (4,)},  # 90 %: the same work at 0.9, different work at 0.95
    "openvino": {"diverge": (2, 6)},  # 80 %: different work under either threshold, the threshold in its words
    "vllm": {"longer": {1}, "other_ids": {7}},  # its image tokenised one prompt longer and one to other ids
    "llamacpp": {"longer": set(range(PROMPTS))},  # every prompt to another length
}


@dataclass
class StubMatrix:
    """What RunStore.open reads of a matrix; its snapshot text has no [agreement], so only run.json holds 0.9."""
    agreement: dict
    name: str = "policy"
    path: Path = Path("matrix-policy.toml")
    text: str = "# a snapshot without an [agreement] table\n"
    hash: str = "0" * 64
    seed: int = 7


def _run(tmp_path: Path, threshold: float = THRESHOLD) -> tuple[RunStore, list[dict]]:
    """A run started with [agreement] threshold = ``threshold`` (run.json), two repetitions of every engine."""
    store = RunStore(tmp_path, "policy")
    records = []
    for engine, how in CASES.items():
        for rep in range(2):
            rec = make_record(engine=engine, repetition=rep, order_index=len(records), prompts=PROMPTS,
                              diverge=how.get("diverge", ()), diverge_from=0, source="measured",
                              idle_w={"cpu:package-0": 1.0, "cpu:dram-0": 0.5}, run_id=store.run_id)
            records.append(tokenised(rec, how.get("longer", frozenset()), how.get("other_ids", frozenset())))
    store.open(StubMatrix(agreement={"threshold": threshold}), [r["trial"]["trial_id"] for r in records])
    for rec in records:
        store.write_trial(rec["trial"]["trial_id"], rec)
    write_evaluations(records, store.root)
    return store, records


def _verdicts_of_every_reader(store: RunStore) -> dict[str, dict[str, str | None]]:
    """reader -> engine -> the verdict on that engine's configuration (None: the same work)."""
    summary = {r["engine"]: r["different_output"] for r in attach(store)}  # the spec from run.json, not passed
    report = analyse(store.root, study_csv=None)
    judged = pd.concat([report.ok, report.different]).drop_duplicates("config")
    flags = {e: (None if pd.isna(w) else w) for e, w in zip(judged["engine"], judged["different_output"])}
    engine_of = dict(zip(judged["config"], judged["engine"]))
    pairs = report.quality_pairs
    pass1 = {engine_of[c]: (None if pd.isna(w) else w) for c, w in zip(pairs["config"], pairs["different_output"])}
    _, columns, found, facts = cells(store.root)
    archs = {c.split("/")[1]: found[("tiny-a", c)].get("verdict") for c in columns}
    assert facts["policy"].threshold == THRESHOLD and found[("tiny-a", "torch-cpu/torch")]["kind"] == "reference"
    return {"orchestrator summary": summary, "report flags": flags, "pass@1 comparison": pass1,
            "architectures table": archs}


def test_every_reader_gives_the_same_verdict_from_the_stored_policy(tmp_path, monkeypatch):
    store, _ = _run(tmp_path)
    stored = store.policy()
    assert stored == ReferencePolicy(threshold=THRESHOLD)
    judged_by = []  # the policy of every verdict any reader asked for
    original = ReferencePolicy.verdict

    def spy(self, agreements, precision):
        judged_by.append(self)
        return original(self, agreements, precision)

    monkeypatch.setattr(ReferencePolicy, "verdict", spy)
    readers = _verdicts_of_every_reader(store)

    assert judged_by and set(judged_by) == {stored}  # one function, one policy object (run.json's)
    summary = readers["orchestrator summary"]
    assert summary["torch"] is None and summary["onnx"] is None  # 90 % is the same work at 0.9
    assert summary["openvino"] == "80 % of prompts identical to the reference (< 90 %)"
    assert summary["vllm"].startswith("2 prompt(s) tokenised to other ids")  # one longer, one other ids
    assert summary["llamacpp"].startswith(f"{PROMPTS} prompt(s) tokenised to other ids")
    assert readers["report flags"] == readers["architectures table"] == summary
    # the pass@1 comparison pairs every other configuration against the reference
    assert readers["pass@1 comparison"] == {e: w for e, w in summary.items() if e != "torch"}


def test_the_default_threshold_would_judge_otherwise(tmp_path):
    """The fixture needs the stored threshold: under the default, the 90 % row is different work."""
    store, _ = _run(tmp_path, threshold=DEFAULT_THRESHOLD)
    rows = {r["engine"]: r["different_output"] for r in attach(store)}
    assert rows["onnx"] == "90 % of prompts identical to the reference (< 95 %)"


def test_the_policy_round_trips_through_run_json(tmp_path):
    spec = {"engine": "onnx", "precision": "fp32", "devices": ["cuda", "cpu"], "threshold": 0.8}
    store = RunStore(tmp_path, "rt")
    run = store.open(StubMatrix(agreement=spec), [])
    on_disk = json.loads(store.run_file.read_text())[RUN_KEY]
    assert on_disk == run[RUN_KEY] == spec  # JSON as the matrix gave it (devices a list)
    policy = store.policy()
    assert policy == ReferencePolicy.from_spec(spec) == ReferencePolicy.from_spec(policy.as_dict())
    assert policy.devices == ("cuda", "cpu") and policy.threshold == 0.8
    assert policy.describe() == "onnx fp32 on cuda or cpu"
    assert agreement_spec([tmp_path / "no-run-here", store.root]) == policy  # the analysis reads the same copy
    # resuming the run leaves it as it was
    assert store.open(StubMatrix(agreement=spec), [])[RUN_KEY] == spec and store.policy() == policy


def test_older_runs_fall_back_to_their_snapshot_then_the_defaults(tmp_path):
    store = RunStore(tmp_path, "old")
    store.open(StubMatrix(agreement={}, text='[agreement]\nthreshold = 0.7\ndevices = ["cuda"]\n'), [])
    run = json.loads(store.run_file.read_text())
    del run[RUN_KEY]  # as a run.json from before the policy was stored
    store.run_file.write_text(json.dumps(run))
    assert store.policy() == ReferencePolicy(devices=("cuda",), threshold=0.7)
    (store.root / "matrix.toml").unlink()
    assert store.policy() == ReferencePolicy() and store.policy().threshold == DEFAULT_THRESHOLD
    assert agreement_spec([tmp_path / "nothing"]) == ReferencePolicy()


def test_the_policy_is_filled_and_checked():
    p = ReferencePolicy.from_spec({"threshold": 0.9})
    assert (p.engine, p.precision, p.devices) == ("torch", "fp32", ("cpu", "cuda"))
    assert ReferencePolicy.from_spec(None) == ReferencePolicy() and ReferencePolicy.from_spec(p) is p
    with pytest.raises(TypeError):
        ReferencePolicy.from_spec({"treshold": 0.9})  # a misspelt key is not a default in disguise
    assert p.as_dict() == {"engine": "torch", "precision": "fp32", "devices": ["cpu", "cuda"], "threshold": 0.9}
    ok = {"status": "ok", "mode": "run", "engine": {"name": "torch", "precision": "fp32", "device": "cuda"}}
    assert p.is_reference(ok) and not p.is_reference({**ok, "status": "failed"})
    assert not ReferencePolicy(devices=("cpu",)).is_reference(ok)
