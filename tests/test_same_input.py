"""The same input everywhere, and one verdict on different work.

Records made before prompts were matched by their workload index (each image tokenised the text with its own
transformers; the agreement stored then skipped prompts of another length as "unmatched"): the report must judge
them exactly as the orchestrator's summary does — one function, runners.agreement.ReferencePolicy.verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from _models import tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)
from analysis.report import analyse
from analysis.synthetic import make_record, write_run
from orchestrator.agreement import attach
from orchestrator.store import RunStore
from runners.agreement import first_divergence

PROMPTS = 8


def old_token_agreement(record: dict, reference: dict, reference_name: str) -> dict:
    """The agreement as records before this change stored it: prompts matched on (task, prompt length), so a prompt
    of another length was dropped as unmatched; other ids of the same length were listed."""
    ref = {(p["task_id"], p["prompt_tokens"]): p for p in reference["per_prompt"]}
    divergences, other_ids, skipped = [], [], 0
    for p in record["per_prompt"]:
        key = (p["task_id"], p["prompt_tokens"])
        if key not in ref:
            skipped += 1
            continue
        if p.get("prompt_ids") is not None and ref[key].get("prompt_ids") not in (None, p["prompt_ids"]):
            other_ids.append(p["index"])
            divergences.append(0)
            continue
        divergences.append(first_divergence(p["output_ids"], ref[key]["output_ids"]))
    identical = sum(d is None for d in divergences)
    return {"status": "compared" if divergences else "no-reference",
            "reason": None if divergences else "the reference has none of these prompts",
            "reference": reference_name, "prompts": len(divergences), "identical": identical,
            "share_identical": identical / len(divergences) if divergences else None,
            "first_divergence": divergences, "unmatched_prompts": skipped, "other_prompt_ids": other_ids}


def tokenised(rec: dict, longer: set[int] = frozenset(), other_ids: set[int] = frozenset()) -> dict:
    """The record's prompts as an image's tokenizer made them: 12 ids each, one more for ``longer``, the same length
    but other ids for ``other_ids``; the output tokens stay the reference's (the engine is not at fault)."""
    for p in rec["per_prompt"]:
        ids = [1000 + 13 * p["index"] + k for k in range(12)]
        if p["index"] in longer:
            ids = ids[:11] + [7, 8]
        elif p["index"] in other_ids:
            ids = ids[:11] + [9]
        p["prompt_ids"], p["prompt_tokens"] = ids, len(ids)
    return rec


def old_run(tmp_path):
    """torch fp32 (the reference), OpenVINO (the same input), vLLM (7 prompts to another length and 1 to other ids,
    as the vllm-cpu image did) and llama.cpp (every prompt to another length), two repetitions each, with the
    agreement stored the old way."""
    cells = {"torch": ({}, 1.0), "openvino": ({}, 0.9),
             "vllm": ({"longer": set(range(7)), "other_ids": {7}}, 0.5),
             "llamacpp": ({"longer": set(range(PROMPTS))}, 0.6)}
    records = []
    for order, (engine, (how, energy)) in enumerate(cells.items()):
        for rep in range(2):
            records.append(tokenised(make_record(engine=engine, repetition=rep, order_index=2 * order + rep,
                                                  prompts=PROMPTS, energy_j=100.0 * energy + rep,
                                                  source="measured"), **how))
    ref = next(r for r in records if r["engine"]["name"] == "torch" and r["trial"]["repetition"] == 0)
    for r in records:
        r["agreement"] = old_token_agreement(r, ref, ref["trial"]["trial_id"])
    run_dir = write_run(records, tmp_path / "old", agreement=False)
    return run_dir, records


def test_the_stored_agreement_is_the_old_one(tmp_path):
    """The fixture is what the bug needs: the old agreement skipped the other-length prompts without a word."""
    _, records = old_run(tmp_path)
    by = {r["engine"]["name"]: r["agreement"] for r in records}
    assert by["vllm"]["unmatched_prompts"] == 7 and by["vllm"]["prompts"] == 1
    assert by["llamacpp"]["status"] == "no-reference"  # every prompt "unmatched": no verdict at all


def test_the_report_judges_old_records_as_the_orchestrator_does(tmp_path):
    run_dir, _ = old_run(tmp_path)
    report = analyse(run_dir, study_csv=None)  # reads the folder as written (the old agreement inside)
    judged = pd.concat([report.ok, report.different]).drop_duplicates("config")  # ok and different rows alike
    every = dict(zip(judged["config"], judged["different_output"].where(judged["different_output"].notna(), None)))
    rows = {r["engine"]: r["different_output"] for r in attach(RunStore(tmp_path, "old"))}
    assert set(rows) == {"torch", "openvino", "vllm", "llamacpp"}
    labels = {"torch": "TORCH-CPU", "openvino": "OV-CPU", "vllm": "VLLM-CPU", "llamacpp": "LLAMACPP-CPU"}
    assert {e: every[labels[e]] for e in rows} == rows
    assert rows["torch"] is None and rows["openvino"] is None
    assert "8 prompt(s)" in rows["vllm"] and "a different input" in rows["vllm"]
    assert "8 prompt(s)" in rows["llamacpp"]
    # the cheapest row did different work: it is never the winner
    assert set(report.ok["config"]) == {"TORCH-CPU", "OV-CPU"}


def test_the_verdict_reads_no_share_without_the_inputs(tmp_path):
    """One other input in one repetition is enough, whatever the share of the other repetition."""
    from runners.agreement import ReferencePolicy

    verdict = ReferencePolicy().verdict

    same = {"status": "compared", "share_identical": 1.0, "first_divergence": [None], "other_prompt_ids": []}
    other = {**same, "other_prompt_ids": [3]}
    assert verdict([same, same], "fp32") is None
    assert "1 prompt(s)" in verdict([same, other], "fp32")
    # the report's columns of the same facts give the same words
    assert verdict([{"status": "compared", "share_identical": 1.0, "at_first_token": False, "other_inputs": 1}],
                   "fp32") == verdict([other], "fp32")
    assert ReferencePolicy(threshold=0.4).verdict([{**same, "share_identical": 0.5}], "fp32") is None
    assert verdict([{**same, "share_identical": 0.5}], "fp32") is not None
    assert verdict([{"status": "no-reference", "share_identical": None}], "fp32") is None


# --- the same ids everywhere: made once, given to every engine ---------------------------------------------------

def _job(model_dir, tmp_path, **extra) -> dict:
    return {"engine": "torch", "device": "cpu", "precision": "fp32", "model": {"path": str(model_dir)},
            "workload": {"count": 4}, "generation": {"new_tokens": 4}, "warmup": {"batches": 0},
            "meters": {"codecarbon": False}, "cache_dir": str(tmp_path), **extra}


def test_every_engine_gets_the_inputs_files_ids_not_its_own_tokenisation(tiny_model_dir, tmp_path):
    """A runner whose own tokenizer would read the text differently (here: the file's ids of prompt 1 lost their
    BOS, as another transformers version's reading might) generates from the file's ids, and says where its own
    tokenizer differs."""
    from runners.job import parse_job
    from runners.runner import TrialRun, make_inputs

    doc = make_inputs(parse_job(_job(tiny_model_dir, tmp_path)))
    assert doc["status"] == "ok" and len(doc["prompts"]) == 4
    assert doc["tokenizer"]["class"] and doc["tokenizer"]["transformers"] and len(doc["tokenizer"]["sha256"]) == 64
    doc["prompts"][1]["ids"] = doc["prompts"][1]["ids"][1:]
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "ids.json").write_text(json.dumps(doc))
    data = _job(tiny_model_dir, tmp_path, inputs="inputs/ids.json")
    rec = TrialRun(parse_job(data), data).run()
    assert rec["status"] == "ok", rec["error"]
    assert [p["prompt_ids"] for p in rec["per_prompt"]] == [p["ids"] for p in doc["prompts"]]
    assert rec["per_prompt"][1]["prompt_tokens"] == len(doc["prompts"][1]["ids"])
    made = rec["workload"]["input_ids"]
    assert made["source"] == "inputs file" and made["tokenizer"] == doc["tokenizer"]
    assert made["this_image_would_differ"] == [1]
    # without the file, the runner tokenises itself and says so
    own = TrialRun(parse_job(_job(tiny_model_dir, tmp_path)), {}).run()
    assert own["workload"]["input_ids"]["source"] == "this image's tokenizer"
    assert own["per_prompt"][1]["prompt_ids"] != rec["per_prompt"][1]["prompt_ids"]


def test_a_stale_inputs_file_is_refused_with_the_fix(tiny_model_dir, tmp_path):
    import shutil

    from runners.job import parse_job
    from runners.runner import TrialRun, make_inputs

    doc = make_inputs(parse_job(_job(tiny_model_dir, tmp_path)))
    (tmp_path / "ids.json").write_text(json.dumps(doc))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 77}))
    data = _job(model, tmp_path, inputs=str(tmp_path / "ids.json"))
    rec = TrialRun(parse_job(data), data).run()
    assert rec["status"] == "failed" and rec["error"]["type"] == "JobError"
    assert rec["error"]["message"].startswith("job.inputs:") and "orchestrate.py prepare" in rec["error"]["message"]
    data = _job(tiny_model_dir, tmp_path, inputs=str(tmp_path / "ids.json"), workload={"count": 3})
    rec = TrialRun(parse_job(data), data).run()
    assert rec["status"] == "failed" and "another workload" in rec["error"]["message"]


def test_the_orchestrator_tokenises_once_per_model_and_every_cell_reads_it(tmp_path, tiny_model_dir):
    """Process launcher (no Docker): prepare makes one inputs file per model in the reference runtime; both
    settings' records read the same file; an as-served setting tokenises itself and says so."""
    from conftest import matrix_file, orchestrate

    path = matrix_file(tmp_path, f'[models.tiny]\npath = "{tiny_model_dir}"\n'
                                 '[settings.fixed]\nprecision = "fp32"\n'
                                 '[settings.served]\nprecision = "fp32"\ngeneration = {fixed_length = false}\n')
    proc = orchestrate("run", "--matrix", str(path), "--results", str(tmp_path / "results"), "--cache",
                       str(tmp_path / "cache"), "--launcher", "process", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "results" / tmp_path.name
    facts = json.loads((run / "prepare" / "inputs__tiny.json").read_text())
    assert facts["status"] == "ok" and facts["made_in"]["runtime"] == "torch-cpu" and facts["prompts"] == 2
    recs = {p.stem: json.loads(p.read_text()) for p in (run / "trials").glob("*.json")}
    fixed = next(r for k, r in recs.items() if "__fixed__" in k)
    served = next(r for k, r in recs.items() if "__served__" in k)
    assert fixed["workload"]["input_ids"]["source"] == "inputs file"
    assert fixed["workload"]["input_ids"]["tokenizer"]["sha256"] == facts["tokenizer"]["sha256"]
    assert [p["prompt_ids"] for p in fixed["per_prompt"]] == \
        [p["ids"] for p in json.loads(Path(facts["path"]).read_text())["prompts"]]
    assert served["workload"]["input_ids"]["source"] == "this image's tokenizer"
    assert "as served" in served["workload"]["input_ids"]["why"]


def test_the_pass_at_1_comparison_takes_the_runs_reference_and_verdict():
    """paired_vs_reference pairs against the matrix's [agreement] reference (here CUDA first), not the default, and
    carries the one verdict of each configuration."""
    from analysis.quality import paired_vs_reference

    configs = (("TORCH-CPU", "torch", "cpu", None), ("TORCH-CUDA", "torch", "cuda", None),
               ("VLLM-CUDA", "vllm", "cuda", "1 prompt(s) tokenised to other ids than the reference's"))
    q = pd.DataFrame([{"trial_id": c, "model": "m", "config": c, "engine": e, "device": d, "precision": "fp32",
                       "eval_mode": "full", "different_output": why} for c, e, d, why in configs])
    tasks = pd.DataFrame([{"trial_id": c, "task_id": f"HumanEval/{t}", "outcome": "passed" if t < 5 else "failed"}
                          for c, *_ in configs for t in range(10)])
    pairs = paired_vs_reference(q, tasks, {"devices": ["cuda", "cpu"]}).set_index("config")
    assert set(pairs.index) == {"TORCH-CPU", "VLLM-CUDA"} and set(pairs["reference"]) == {"TORCH-CUDA"}
    assert pairs.loc["VLLM-CUDA", "different_output"] == configs[2][3]
    assert pd.isna(pairs.loc["TORCH-CPU", "different_output"])
    assert set(paired_vs_reference(q, tasks).set_index("config").index) == {"TORCH-CUDA", "VLLM-CUDA"}


def test_two_settings_of_one_configuration_are_judged_apart_by_both(tmp_path):
    """vLLM as served (its own tokenizer: other ids) and with the same work (the shared ids): the orchestrator's
    summary and the report judge the two settings apart and alike — one verdict each, not one for both."""
    records = []
    for setting, fixed in (("fixed", True), ("served", False)):
        for engine in ("torch", "vllm"):
            rec = tokenised(make_record(engine=engine, prompts=PROMPTS, order_index=len(records), source="measured"),
                             other_ids={0, 1} if (engine, setting) == ("vllm", "served") else set())
            rec["trial"].update(setting=setting, trial_id=f"{engine}-{setting}")
            rec["job"]["generation"]["fixed_length"] = fixed
            records.append(rec)
    run_dir = write_run(records, tmp_path / "two")
    report = analyse(run_dir, study_csv=None)
    judged = pd.concat([report.ok, report.different]).drop_duplicates("config")
    by_report = dict(zip(judged["config"], judged["different_output"].where(judged["different_output"].notna(), None)))
    rows = {(r["engine"], r["setting"]): r["different_output"] for r in attach(RunStore(tmp_path, "two"))}
    assert rows[("vllm", "fixed")] is None and "2 prompt(s)" in rows[("vllm", "served")]
    assert by_report == {"TORCH-CPU[fixed]": None, "TORCH-CPU[served]": None, "VLLM-CPU[fixed]": None,
                         "VLLM-CPU[served]": rows[("vllm", "served")]}
