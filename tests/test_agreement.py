"""Token agreement: runner-level comparison and the orchestrator's pass over a run's records."""

from __future__ import annotations

import json

from _models import tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)

from orchestrator.agreement import attach
from orchestrator.store import RunStore
from runners.agreement import first_divergence, token_agreement
from runners.job import parse_job
from runners.runner import TrialRun


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def _record(model_dir, precision, trial_id):
    data = {"engine": "torch", "device": "cpu", "precision": precision, "model": {"path": str(model_dir)},
            "workload": {"count": 4}, "generation": {"new_tokens": 10}, "warmup": {"batches": 0},
            "meters": {"codecarbon": False}, "trial": {"trial_id": trial_id}}
    return TrialRun(parse_job(data), data).run()


def test_orchestrator_attaches_agreement_to_every_ok_record(tiny_model_dir, tmp_path):
    store = RunStore(tmp_path, "agree")
    store.trials_dir.mkdir(parents=True, exist_ok=True)
    # the bf16 trial is written first, as a shuffled order may do: the pass must still find the reference
    bf16 = _record(tiny_model_dir, "bf16", "b")
    fp32 = _record(tiny_model_dir, "fp32", "a")
    store.write_trial("b", bf16)
    store.write_trial("a", fp32)
    rows = {r["precision"]: r for r in attach(store)}
    assert rows["bf16"]["no_reference"] is None
    assert rows["fp32"]["share_identical"] == 1.0  # the reference agrees with itself
    stored = store.record("b")["agreement"]
    assert stored["reference"] == "a" and stored["prompts"] == 4
    assert stored == token_agreement(bf16, fp32, "a")
    assert rows["bf16"]["share_identical"] == stored["share_identical"]
    # identical prompts have no divergence position; the others say where the tokens first differ
    assert sum(d is None for d in stored["first_divergence"]) == stored["identical"]


def test_a_run_without_its_reference_says_so(tiny_model_dir, tmp_path):
    store = RunStore(tmp_path, "no-ref")
    store.trials_dir.mkdir(parents=True, exist_ok=True)
    store.write_trial("b", _record(tiny_model_dir, "bf16", "b"))
    row, = attach(store)
    assert row["share_identical"] is None and "torch fp32" in row["no_reference"]
    assert store.record("b")["agreement"]["status"] == "no-reference"


def test_prompts_tokenised_to_other_ids_are_a_different_input_not_identical(tiny_model_dir, tmp_path):
    """Each image tokenises with its own transformers (4.57 in the torch images, 5.x in vllm-cpu): a prompt that became
    other ids of the same length must not be scored as the same input, and the summary must say why."""
    store = RunStore(tmp_path, "ids")
    store.trials_dir.mkdir(parents=True, exist_ok=True)
    ref = _record(tiny_model_dir, "fp32", "a")
    other = _record(tiny_model_dir, "fp32", "b")
    assert all(p["prompt_ids"] and len(p["prompt_ids"]) == p["prompt_tokens"] for p in ref["per_prompt"])
    # same text, same length, another tokenisation (as a tokenizer read differently would make); same output tokens
    other["engine"]["name"] = "vllm"
    other["per_prompt"][0]["prompt_ids"] = [t + 1 for t in other["per_prompt"][0]["prompt_ids"]]
    store.write_trial("a", ref)
    store.write_trial("b", other)
    rows = {r["engine"]: r for r in attach(store)}
    a = store.record("b")["agreement"]
    assert a["other_prompt_ids"] == [other["per_prompt"][0]["index"]] and a["identical"] == 3, a
    assert a["first_divergence"][0] == 0
    assert "tokenised to other ids" in rows["vllm"]["different_output"]
    assert rows["torch"]["different_output"] is None and rows["torch"]["share_identical"] == 1.0


def _entry(index, ids, out=(1, 2, 3)):
    return {"index": index, "task_id": f"HumanEval/{index}", "prompt_tokens": len(ids), "prompt_ids": list(ids),
            "output_ids": list(out)}


def test_prompts_are_matched_by_workload_index_and_another_length_is_another_input():
    """A prompt another image tokenised to another length used to be dropped as "unmatched" (matched on task and
    length): it is now a different input — counted, never identical, listed with why."""
    ref = {"per_prompt": [_entry(0, [5, 6]), _entry(1, [7, 8]), _entry(2, [9, 10]), _entry(3, [11])]}
    rec = {"per_prompt": [_entry(0, [5, 6]), _entry(1, [7, 8, 8]), _entry(2, [9, 99])]}  # 3: missing
    a = token_agreement(rec, ref, "r")
    assert a["prompts"] == 4 and a["identical"] == 1 and a["share_identical"] == 0.25
    assert a["other_prompt_ids"] == [1, 2, 3] and a["first_divergence"] == [None, 0, 0, 0]
    assert a["other_inputs_by"] == {"length": 1, "ids": 1, "unmatched": 1} and a["unmatched_prompts"] == 1
    # records without prompt ids (older ones) are compared by task and length
    old = {"per_prompt": [{k: v for k, v in p.items() if k != "prompt_ids"} for p in ref["per_prompt"]]}
    b = token_agreement(old, ref, "r")
    assert b["share_identical"] == 1.0 and "task and length" in b["matched_by"]


def test_the_verdict_reads_a_records_agreement_and_the_reports_columns_alike():
    """verdict() reads one trial's agreement either as the record stores it (status, first_divergence,
    other_prompt_ids) or as the report's columns carry it (no status but a prompt count, at_first_token,
    other_inputs): the same facts give the same verdict, and what was not compared is never judged."""
    from runners.agreement import ReferencePolicy

    verdict = ReferencePolicy().verdict

    record_style = {"status": "compared", "prompts": 4, "share_identical": 0.5, "first_divergence": [None, 3, None, 7],
                    "other_prompt_ids": []}
    column_style = {"prompts": 4, "share_identical": 0.5, "at_first_token": False, "other_inputs": 0}
    assert verdict([record_style], "fp32") == verdict([column_style], "fp32") is not None
    assert "50 % of prompts identical" in verdict([column_style], "fp32")
    # a row without status and without prompts was not compared: no verdict (unknown, never "different")
    assert verdict([{"share_identical": 0.1}], "fp32") is None
    assert verdict([{"status": "no-reference", "prompts": 4, "share_identical": 0.1}], "fp32") is None
    # compared but no share: nothing to judge
    assert verdict([{"status": "compared", "prompts": 4, "share_identical": None}], "fp32") is None
    # another input counted from the record's list or given as the report's count: the same verdict
    listed = {**record_style, "share_identical": 1.0, "first_divergence": [None] * 4, "other_prompt_ids": [2]}
    counted = {**column_style, "share_identical": 1.0, "other_inputs": 1}
    assert verdict([listed], "fp32") == verdict([counted], "fp32") is not None
    assert "1 prompt(s)" in verdict([counted], "fp32")
    # at_first_token given or computed from first_divergence: a lower precision diverging at token 0 everywhere
    zero = {"status": "compared", "prompts": 2, "share_identical": 0.0, "first_divergence": [0, 0]}
    assert verdict([zero], "int8") == verdict([{"prompts": 2, "share_identical": 0.0, "at_first_token": True}],
                                              "int8") is not None
    assert verdict([{"prompts": 2, "share_identical": 0.0, "at_first_token": False}], "int8") is None
    # the worst trial speaks, and another input in any trial counts
    assert verdict([{**column_style, "share_identical": 1.0}, column_style], "fp32") is not None
    assert verdict([{**column_style, "share_identical": 1.0}, {**counted, "share_identical": 1.0}], "fp32") is not None


def test_a_trial_at_batch_4_is_compared_with_its_own_configuration_at_batch_1():
    """Batch invariance: the share of prompts whose tokens batching left unchanged, against the same runtime,
    engine, precision and work at batch 1 — never another runtime's or precision's batch-1 trial."""
    from analysis.synthetic import make_record
    from runners.agreement import attach_all
    from runners.record import Record

    records = {
        "bs1": make_record(batch=1, order_index=0),
        "bs4": make_record(batch=4, order_index=1, diverge=(1,)),  # prompt 1 changed by batching
        "bs2": make_record(batch=2, order_index=2),
        # the same engine and precision at batch 1, but another runtime (image) or precision: not its reference
        "other-rt-bs4": make_record(batch=4, runtime="torch-cpu-1t", order_index=3),
        "bf16-bs1": make_record(batch=1, precision="bf16", order_index=4),
        "bf16-bs4": make_record(batch=4, precision="bf16", order_index=5, diverge=(0, 2)),
    }
    # the cell's prepare record (same job, no outputs; its id sorts first) is never the batch-1 reference
    records["a-prepare"] = {**make_record(batch=1, order_index=6), "mode": "prepare", "per_prompt": []}
    attach_all(records)
    inv = {rid: rec["agreement"].get("batch_invariance") for rid, rec in records.items() if rec["mode"] == "run"}
    assert inv["bs1"] is None and inv["bf16-bs1"] is None  # batch 1 is the reference, not a figure
    assert inv["bs4"]["reference"] == "bs1" and inv["bs4"]["prompts"] == 4
    assert inv["bs4"]["share_identical"] == 0.75 and inv["bs4"]["first_divergence"][1] is not None
    assert inv["bs2"]["share_identical"] == 1.0
    assert inv["bf16-bs4"]["reference"] == "bf16-bs1" and inv["bf16-bs4"]["share_identical"] == 0.5
    assert inv["other-rt-bs4"]["status"] == "no-reference" and "batch size 1" in inv["other-rt-bs4"]["reason"]
    # agreement with the reference configuration stays what it was: torch fp32 at the same point (batch 4)
    assert records["bs4"]["agreement"]["reference"] == records["other-rt-bs4"]["agreement"]["reference"] == "bs4"
    assert Record(records["bs4"]).batch_invariance == 0.75 and Record(records["bs1"]).batch_invariance is None


def test_the_runs_agreement_summary_gives_each_configurations_worst_batch_invariance(tmp_path):
    from rich.console import Console

    from analysis.synthetic import make_record
    from orchestrator.summary import print_agreement

    store = RunStore(tmp_path, "batches")
    store.trials_dir.mkdir(parents=True, exist_ok=True)
    for rid, rec in {"a1": make_record(batch=1), "b4": make_record(batch=4, order_index=1, diverge=(3,)),
                     "c4": make_record(batch=4, order_index=2, repetition=1, diverge=(2, 3))}.items():
        store.write_trial(rid, rec)
    row, = attach(store)  # one configuration (not a sweep: one setting), three trials
    assert row["trials"] == 3 and row["batch_invariance"] == 0.5  # the worse of 3/4 and 2/4; batch 1 has none
    console = Console(record=True, width=200)
    print_agreement(console, store)
    text = console.export_text()
    assert "as at batch 1" in text and "50 %" in text


def test_sampled_work_is_never_token_compared_nor_in_the_agreement_table(tmp_path):
    """generation.sampling: its agreement is "not applicable" (never a share, never a reference), the run's
    summary and the report say so in words, and no sampled row reaches the agreement table."""
    from analysis.report import build_report
    from analysis.report_analysis import analyse
    from analysis.report_tables import agreement_table
    from analysis.synthetic import make_record, write_run

    def sampled(rec):
        rec["job"]["generation"]["sampling"] = {"temperature": 0.8, "top_p": 0.95, "seed": 1}
        rec["trial"]["setting"] = "sampled"
        rec["trial"]["trial_id"] += "-sampled"
        return rec

    recs = [make_record(engine=e, order_index=i, repetition=r, diverge=(1,) if e == "onnx" else ())
            for i, (e, r) in enumerate((e, r) for e in ("torch", "onnx") for r in range(2))]
    recs += [sampled(make_record(engine=e, order_index=10 + i, repetition=r, diverge=(0, 1, 2, 3)))
             for i, (e, r) in enumerate((e, r) for e in ("torch", "onnx") for r in range(2))]
    run = write_run(recs, tmp_path / "run")
    stored = [json.loads(p.read_text()) for p in sorted((run / "trials").glob("*.json"))]
    for rec in stored:
        a = rec["agreement"]
        if rec["job"]["generation"].get("sampling"):
            assert a["status"] == "not-applicable" and a["share_identical"] is None and "sampled" in a["reason"]
        else:  # the greedy onnx trials are compared with greedy torch, never with a sampled trial
            assert a["status"] == "compared" and a["reference"] and "sampled" not in a["reference"]
            assert a["share_identical"] == (0.75 if rec["engine"]["name"] == "onnx" else 1.0)
    table = agreement_table(analyse([run], study_csv=None))
    assert len(table) == 2 and table["trials"].tolist() == [2, 2]  # the greedy torch and onnx rows only
    md = build_report([run], tmp_path / "out", study_csv=None)["markdown"].read_text()
    assert "SAMPLED — token agreement not applicable" in md and "TORCH-CPU" in md.split("SAMPLED")[1][:400]

    store = RunStore(run.parent, run.name)
    rows = attach(store)
    assert {(r["engine"], r["sampled"], r["share_identical"]) for r in rows} == {
        ("torch", False, 1.0), ("onnx", False, 0.75), ("torch", True, None), ("onnx", True, None)}
