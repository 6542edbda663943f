"""Same work, checked: how many prompts produced token-identical output to a reference run (torch fp32 eager)."""

from __future__ import annotations

from typing import Any


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token; None when identical (a length difference counts as a divergence)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_agreement(record: dict[str, Any], reference: dict[str, Any], reference_name: str | None = None) -> dict:
    """Compare per-prompt output ids of two records, matched on (task, prompt length) so that only the same
    prompts count."""
    ref = {(p["task_id"], p["prompt_tokens"]): p["output_ids"] for p in reference.get("per_prompt", [])}
    divergences: list[int | None] = []
    skipped = 0
    for p in record.get("per_prompt", []):
        key = (p["task_id"], p["prompt_tokens"])
        if key not in ref:
            skipped += 1
            continue
        divergences.append(first_divergence(p["output_ids"], ref[key]))
    identical = sum(d is None for d in divergences)
    return {
        "reference": reference_name,
        "reference_engine": reference.get("engine"),
        "reference_job_hash": reference.get("job_hash"),
        "prompts": len(divergences),
        "identical": identical,
        "share_identical": identical / len(divergences) if divergences else None,
        "first_divergence": divergences,
        "unmatched_prompts": skipped,
    }
