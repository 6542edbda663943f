"""Same work, checked: how many prompts produced token-identical output to the reference configuration.

The one place agreement is computed, and the home of the reference policy (``ReferencePolicy``: which configuration
is the reference, and the one verdict rule with its threshold). The reference of a record is an ok record of the
reference configuration (default torch fp32 eager; the matrix's [agreement]) with the same model, workload and
generation settings — the work key — so a 16-token run is never scored against an 8-token one. A record whose work
has no reference gets ``{"status": "no-reference", …}`` with the reason: never a share, never "identical".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from runners.record import batch_key, batch_size, sampled, work_key

# A configuration in the reference's precision whose share of identical prompts is below this did different work.
DEFAULT_THRESHOLD = 0.95
# the agreement of a sampled trial: its tokens are chance's, so no share is computed and none is ever shown
NOT_APPLICABLE = {"status": "not-applicable", "reference": None, "share_identical": None,
                  "reason": "sampled: agreement not applicable (sampled decoding draws its tokens by chance; its "
                            "energy is compared at fixed length, with sampled work only)"}
RUN_KEY = "reference_policy"  # run.json's key for the policy a run was started with (orchestrator/store.py)


@dataclass(frozen=True)
class ReferencePolicy:
    """The reference policy of a run: which configuration is the reference (engine, precision, devices in order of
    preference) and the threshold of the one verdict rule. Parsed once from the matrix's [agreement], stored in
    run.json, and the one object every reader of a verdict takes — the orchestrator's summary, the report's flags,
    the pass@1 comparison and the architectures table."""

    engine: str = "torch"
    precision: str = "fp32"
    devices: tuple[str, ...] = ("cpu", "cuda")
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "threshold", float(self.threshold))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None = None) -> ReferencePolicy:
        """The policy of a matrix's [agreement] table (or run.json's copy of it), defaults for what it leaves out;
        a policy is returned as it is. An unknown key is a TypeError, not silently ignored."""
        if isinstance(spec, cls):
            return spec
        return cls() if spec is None else cls(**spec)

    @classmethod
    def of_run(cls, run_dir: str | Path) -> ReferencePolicy | None:
        """The policy a run was started with: its run.json's; for runs started before run.json carried it, the
        [agreement] table of the run's matrix.toml snapshot; None for a folder with neither."""
        root = Path(run_dir)
        try:
            stored = json.loads((root / "run.json").read_text()).get(RUN_KEY)
        except (OSError, ValueError, AttributeError):
            stored = None
        if isinstance(stored, dict):
            return cls.from_spec(stored)
        snapshot = root / "matrix.toml"
        if snapshot.is_file():
            import tomllib  # host side only (Python 3.11+); the images never read a run folder

            return cls.from_spec(tomllib.loads(snapshot.read_text()).get("agreement"))
        return None

    def as_dict(self) -> dict[str, Any]:
        """As run.json stores it (JSON: devices a list)."""
        return {**asdict(self), "devices": list(self.devices)}

    def describe(self) -> str:
        return f"{self.engine} {self.precision} on {' or '.join(self.devices)}"

    def matches(self, engine: str | None, precision: str | None, device: str | None) -> bool:
        """A configuration (engine, precision, device) is the reference's."""
        return engine == self.engine and precision == self.precision and device in self.devices

    def device_rank(self, device: str | None) -> int:
        """Order of preference among the reference's devices (an unlisted one last)."""
        return self.devices.index(device) if device in self.devices else len(self.devices)

    def is_reference(self, record: dict[str, Any]) -> bool:
        """An ok run record of the reference configuration, decoded greedily (sampled tokens are chance's)."""
        engine = record.get("engine") or {}
        return (record.get("status") == "ok" and record.get("mode", "run") == "run" and not sampled(record)
                and self.matches(engine.get("name"), engine.get("precision"), engine.get("device")))

    def verdict(self, agreements: Iterable[dict[str, Any] | None], precision: str) -> str | None:
        """THE verdict on one configuration (the agreements of its trials): why it did not do the reference's work,
        or None (same work, or unknown for want of a reference). Its worst trial speaks: the lowest share, and any
        prompt that was another input in any trial — judged by ``different_output`` with this policy's precision
        and threshold."""
        found = [f for f in map(_facts, (a for a in agreements if a)) if f is not None]
        if not found:
            return None
        worst = min(found, key=lambda f: f["share"])
        return different_output(worst["share"], precision, worst["at_first_token"], self.precision, self.threshold,
                                max(f["other"] for f in found))


DEFAULT_REFERENCE = ReferencePolicy()  # torch fp32 eager, CPU first, the default threshold



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
    judged by pass@1 instead. No reference: unknown, never "same". Prompts that were another input than the
    reference's (``other_prompt_ids``: other ids, another length, or no counterpart) make it different work whatever
    the share.
    """
    if other_prompt_ids:
        return (f"{other_prompt_ids} prompt(s) tokenised to other ids than the reference's (another length or other "
                "ids — e.g. its image's tokenizer read the model's tokenizer files differently): a different input")
    if share is None:
        return None
    if precision == reference_precision:
        if share < threshold:
            return f"{100 * share:.0f} % of prompts identical to the reference (< {100 * threshold:.0f} %)"
        return None
    if share == 0 and diverges_at_first_token:
        return f"{precision}: diverges from the reference at the first token on every prompt"
    return None


def _facts(a: dict[str, Any]) -> dict[str, Any] | None:
    """One trial's agreement as the verdict reads it — a record's ``agreement`` or the report's columns of it
    (status, share_identical, at_first_token, other_inputs); None when it was not compared."""
    status = a.get("status") or ("compared" if a.get("prompts") else None)
    if status != "compared" or a.get("share_identical") is None:
        return None
    other = a.get("other_inputs")
    if other is None:
        other = len(a.get("other_prompt_ids") or ())
    first = a.get("at_first_token")
    if first is None:
        first = at_first_token(a.get("first_divergence"))
    return {"share": float(a["share_identical"]), "at_first_token": bool(first), "other": int(other)}



def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token; None when identical (a length difference counts as a divergence)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _by_index(record: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per-prompt entries keyed by their index in the workload (older records without an index: their position)."""
    return {int(p.get("index", i)): p for i, p in enumerate(record.get("per_prompt") or [])}


def other_input(mine: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """Why two entries of the same workload index were not the same input, or None: another task, another length,
    or other ids (when both records carry them — older ones carry only the length)."""
    if mine.get("task_id") != theirs.get("task_id"):
        return "task"
    if mine.get("prompt_tokens") != theirs.get("prompt_tokens"):
        return "length"
    if mine.get("prompt_ids") is not None and theirs.get("prompt_ids") is not None \
            and list(mine["prompt_ids"]) != list(theirs["prompt_ids"]):
        return "ids"
    return None


def token_agreement(record: dict[str, Any], reference: dict[str, Any], reference_name: str | None = None) -> dict:
    """Compare per-prompt output ids of two records, prompt by prompt at the same index of the workload. A prompt
    that was not the same input as the reference's (another task, another length or other ids: each image used to
    tokenise with its own transformers), or that has no counterpart in the other record, is never skipped: it
    counts as a different input — never identical, diverged at 0, listed in ``other_prompt_ids``."""
    mine, ref = _by_index(record), _by_index(reference)
    divergences: list[int | None] = []
    other_ids: list[int] = []
    why: dict[str, int] = {}
    for index in sorted(set(mine) | set(ref)):
        p, q = mine.get(index), ref.get(index)
        reason = "unmatched" if p is None or q is None else other_input(p, q)
        if reason is not None:
            other_ids.append(index)
            why[reason] = why.get(reason, 0) + 1
            divergences.append(0)
            continue
        divergences.append(first_divergence(p["output_ids"], q["output_ids"]))
    identical = sum(d is None for d in divergences)
    both_ids = bool(mine) and all(p.get("prompt_ids") is not None for p in [*mine.values(), *ref.values()])
    return {
        "status": "compared" if divergences else "no-reference",
        "reason": None if divergences else "neither record has any prompt",
        "reference": reference_name,
        "reference_engine": reference.get("engine"),
        "reference_job_hash": reference.get("job_hash"),
        "matched_by": "workload index; input compared by " + ("prompt ids" if both_ids else "task and length "
                                                               "(a record without prompt ids)"),
        "prompts": len(divergences),
        "identical": identical,
        "share_identical": identical / len(divergences) if divergences else None,
        "first_divergence": divergences,
        "unmatched_prompts": why.get("unmatched", 0),  # in one record only (also listed in other_prompt_ids)
        "other_prompt_ids": other_ids,  # indices of prompts that were another input than the reference's
        "other_inputs_by": why,  # {"ids" | "length" | "task" | "unmatched": count}
    }


def references(records: dict[str, dict[str, Any]], spec: Mapping[str, Any] | None = None
               ) -> dict[str, tuple[str, dict[str, Any]]]:
    """work key -> (id, record) of its reference: the preferred device first, then the smallest id (greedy decoding
    makes repetitions identical, so which one is a matter of determinism only)."""
    ref_policy = ReferencePolicy.from_spec(spec)
    rank = ref_policy.device_rank
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for rid, rec in sorted(records.items()):
        key = work_key(rec)
        if key is None or not ref_policy.is_reference(rec):
            continue
        held = out.get(key)
        if held is None or rank(rec["engine"]["device"]) < rank(held[1]["engine"]["device"]):
            out[key] = (rid, rec)
    return out



def batch_references(records: dict[str, dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """batch key -> (id, record) of the same configuration and work at batch size 1 (the smallest id): what a
    trial at a larger batch is compared with for batch invariance."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for rid, rec in sorted(records.items()):
        key = batch_key(rec)
        if key is not None and batch_size(rec) == 1 and rec.get("status") == "ok" and rec.get("mode", "run") == "run" \
                and key not in out:  # a prepare record of the cell has the same job but no outputs
            out[key] = (rid, rec)
    return out


def batch_invariance(record: dict[str, Any], held: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    """A trial at batch size > 1 against its own configuration at batch size 1: the share of prompts whose tokens
    batching left unchanged (padding, other kernels for other shapes and a scheduler may move a near-tie)."""
    if held is None:
        return {"status": "no-reference", "reference": None, "share_identical": None,
                "reason": "no ok record of this configuration and work at batch size 1 in this run"}
    ref_id, ref = held
    compared = token_agreement(record, ref, ref_id)
    keep = ("status", "reason", "reference", "prompts", "identical", "share_identical", "first_divergence",
            "other_prompt_ids")
    return {k: compared[k] for k in keep}


def attach_all(records: dict[str, dict[str, Any]], spec: Mapping[str, Any] | None = None) -> list[str]:
    """Set ``agreement`` on every ok run record (in place) under the policy ``spec`` (a ReferencePolicy, or its
    dict; defaults where None) — with ``batch_invariance`` for a trial at batch size > 1; return the ids whose
    agreement changed."""
    ref_policy = ReferencePolicy.from_spec(spec)
    refs = references(records, ref_policy)
    at_batch_1 = batch_references(records)
    changed = []
    for rid, rec in records.items():
        if rec.get("status") != "ok" or rec.get("mode", "run") != "run":
            continue
        held = refs.get(work_key(rec))
        if sampled(rec):
            new = dict(NOT_APPLICABLE)
        elif held is None:
            new = {"status": "no-reference", "reference": None, "share_identical": None,
                   "reason": f"no ok record of the reference configuration ({ref_policy.describe()}) did the same "
                             "work (model, workload, generation) in this run"}
        else:
            ref_id, ref = held
            new = token_agreement(rec, ref, ref_id)
        if batch_size(rec) > 1 and not sampled(rec):
            new["batch_invariance"] = batch_invariance(rec, at_batch_1.get(batch_key(rec)))
        if rec.get("agreement") != new:
            rec["agreement"] = new
            changed.append(rid)
    return changed
