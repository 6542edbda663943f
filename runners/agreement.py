"""Same work, checked: how many prompts produced token-identical output to the reference configuration.

The one place agreement is computed. The reference of a record is an ok record of the reference configuration
(default torch fp32 eager; a matrix setting) with the same model, workload and generation settings — the work key —
so a 16-token run is never scored against an 8-token one. A record whose work has no reference gets
``{"status": "no-reference", …}`` with the reason: never a share, never "identical".
"""

from __future__ import annotations

import json
from typing import Any

DEFAULT_REFERENCE = {"engine": "torch", "precision": "fp32", "devices": ["cpu", "cuda"]}
# A configuration in the reference's precision whose share of identical prompts is below this did different work.
DEFAULT_THRESHOLD = 0.95


def at_first_token(first_divergence: list[int | None] | None) -> bool:
    """Every prompt diverged from the reference at its first new token."""
    return bool(first_divergence) and all(d == 0 for d in first_divergence)


def different_output(share: float | None, precision: str, diverges_at_first_token: bool,
                     reference_precision: str = "fp32", threshold: float = DEFAULT_THRESHOLD,
                     other_prompt_ids: int = 0) -> str | None:
    """Why a configuration's output is not the reference's work (it must then stay out of every comparison), or None.

    In the reference's precision (fp32) greedy decoding should give the same tokens: below ``threshold`` of prompts
    identical, it did different work. A lower precision (fp16, bf16, int8, q8_0, q4_k_m) is expected to diverge
    after some tokens — rounding moves a near-tie — so it is judged by its own rule: different work only when it
    diverges at the very first token on every prompt (a different computation, not rounding); its quality is
    judged by pass@1 instead. No reference: unknown, never "same". Prompts that this configuration's image tokenised to
    other ids than the reference's (``other_prompt_ids``) were a different input: different work whatever the share.
    """
    if other_prompt_ids:
        return (f"{other_prompt_ids} prompt(s) tokenised to other ids than the reference's (its image's tokenizer "
                "reads the model's tokenizer files differently): a different input")
    if share is None:
        return None
    if precision == reference_precision:
        if share < threshold:
            return f"{100 * share:.0f} % of prompts identical to the reference (< {100 * threshold:.0f} %)"
        return None
    if share == 0 and diverges_at_first_token:
        return f"{precision}: diverges from the reference at the first token on every prompt"
    return None


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token; None when identical (a length difference counts as a divergence)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_agreement(record: dict[str, Any], reference: dict[str, Any], reference_name: str | None = None) -> dict:
    """Compare per-prompt output ids of two records, matched on (task, prompt length) so that only the same
    prompts count. Where both records carry the prompt ids, a prompt whose ids differ (each image tokenises with its
    own transformers) counts as a different input: never identical, diverged at 0, and listed."""
    ref = {(p["task_id"], p["prompt_tokens"]): p for p in reference.get("per_prompt", [])}
    divergences: list[int | None] = []
    other_ids: list[int] = []
    skipped = 0
    for p in record.get("per_prompt", []):
        key = (p["task_id"], p["prompt_tokens"])
        if key not in ref:
            skipped += 1
            continue
        theirs = ref[key].get("prompt_ids")
        if p.get("prompt_ids") is not None and theirs is not None and p["prompt_ids"] != theirs:
            other_ids.append(p["index"])
            divergences.append(0)
            continue
        divergences.append(first_divergence(p["output_ids"], ref[key]["output_ids"]))
    identical = sum(d is None for d in divergences)
    return {
        "status": "compared" if divergences else "no-reference",
        "reason": None if divergences else "the reference has none of these prompts",
        "reference": reference_name,
        "reference_engine": reference.get("engine"),
        "reference_job_hash": reference.get("job_hash"),
        "prompts": len(divergences),
        "identical": identical,
        "share_identical": identical / len(divergences) if divergences else None,
        "first_divergence": divergences,
        "unmatched_prompts": skipped,
        "other_prompt_ids": other_ids,  # indices of prompts tokenised to other ids than the reference's
    }


def work_key(record: dict[str, Any]) -> str | None:
    """Model + workload + generation: records with the same key did (or should have done) the same work."""
    job = record.get("job") or {}
    if not job.get("model"):
        return None
    return json.dumps([(record.get("model") or {}).get("name"), job.get("workload"), job.get("generation")],
                      sort_keys=True)


def is_reference(record: dict[str, Any], spec: dict[str, Any] = DEFAULT_REFERENCE) -> bool:
    engine = record.get("engine") or {}
    return (record.get("status") == "ok" and record.get("mode", "run") == "run"
            and engine.get("name") == spec["engine"] and engine.get("precision") == spec["precision"]
            and engine.get("device") in spec["devices"])


def references(records: dict[str, dict[str, Any]], spec: dict[str, Any] = DEFAULT_REFERENCE
               ) -> dict[str, tuple[str, dict[str, Any]]]:
    """work key -> (id, record) of its reference: the preferred device first, then the smallest id (greedy decoding
    makes repetitions identical, so which one is a matter of determinism only)."""
    rank = {d: i for i, d in enumerate(spec["devices"])}
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for rid, rec in sorted(records.items()):
        key = work_key(rec)
        if key is None or not is_reference(rec, spec):
            continue
        held = out.get(key)
        if held is None or rank[rec["engine"]["device"]] < rank[held[1]["engine"]["device"]]:
            out[key] = (rid, rec)
    return out


def describe(spec: dict[str, Any]) -> str:
    return f"{spec['engine']} {spec['precision']} on {' or '.join(spec['devices'])}"


def attach_all(records: dict[str, dict[str, Any]], spec: dict[str, Any] = DEFAULT_REFERENCE) -> list[str]:
    """Set ``agreement`` on every ok run record (in place); return the ids whose agreement changed."""
    refs = references(records, spec)
    changed = []
    for rid, rec in records.items():
        if rec.get("status") != "ok" or rec.get("mode", "run") != "run":
            continue
        held = refs.get(work_key(rec))
        if held is None:
            new = {"status": "no-reference", "reference": None, "share_identical": None,
                   "reason": f"no ok record of the reference configuration ({describe(spec)}) did the same work "
                             "(model, workload, generation) in this run"}
        else:
            ref_id, ref = held
            new = token_agreement(rec, ref, ref_id)
        if rec.get("agreement") != new:
            rec["agreement"] = new
            changed.append(rid)
    return changed
