"""Same work, checked: attach to every ok record its token agreement with the torch fp32 eager reference.

The reference is any ok record of engine "torch", precision fp32, same model, same workload and generation settings
(greedy decoding makes repetitions identical; a CPU reference is preferred over a CUDA one). Trials run in a shuffled
order, so a record may finish before its reference: this pass runs over the whole run after every `run`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from runners.agreement import token_agreement


def work_key(record: dict[str, Any]) -> str | None:
    job = record.get("job") or {}
    if not job.get("model"):
        return None
    return json.dumps([record.get("model", {}).get("name"), job.get("workload"), job.get("generation")],
                      sort_keys=True)


def is_reference(record: dict[str, Any]) -> bool:
    engine = record.get("engine") or {}
    return record.get("status") == "ok" and engine.get("name") == "torch" and engine.get("precision") == "fp32"


def attach(store) -> list[dict[str, Any]]:
    """Write agreement into the run's ok records that lack it; return one summary row per configuration."""
    records = store.records()
    references: dict[str, tuple[str, dict]] = {}
    for trial_id, rec in sorted(records.items()):
        key = work_key(rec)
        if key and is_reference(rec):
            held = references.get(key)
            if held is None or (held[1]["engine"]["device"] != "cpu" and rec["engine"]["device"] == "cpu"):
                references[key] = (trial_id, rec)
    summary: dict[tuple, list[float]] = defaultdict(list)
    for trial_id, rec in records.items():
        key = work_key(rec)
        if rec.get("status") != "ok" or key not in references:
            continue
        ref_id, ref = references[key]
        if rec.get("agreement") is None or rec["agreement"].get("reference") != ref_id:
            rec["agreement"] = token_agreement(rec, ref, ref_id)
            store.write_trial(trial_id, rec)
        e = rec["engine"]
        summary[(rec["model"]["name"], e["name"], e["device"], e["precision"])].append(
            rec["agreement"]["share_identical"])
    return [{"model": k[0], "engine": k[1], "device": k[2], "precision": k[3], "trials": len(v),
             "share_identical": min(v)} for k, v in sorted(summary.items()) if None not in v]
