"""Same work, checked: attach to every ok record of a run its token agreement with the run's reference configuration
(runners/agreement.py computes it under the run's reference policy, stored in run.json: the matrix's [agreement],
default torch fp32 eager, CPU first). Trials run in a shuffled order, so a record may finish before its reference:
this pass runs over the whole run after every `run`."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from runners.agreement import ReferencePolicy, attach_all
from runners.record.facts import mapping


def attach(store, spec: ReferencePolicy | dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Write agreement into the run's ok records whose agreement changed; one summary row per configuration (the
    worst trial's share and the policy's verdict), or the reason when its work has no reference. The policy is the
    run's (``store.policy()``: run.json) unless ``spec`` is given."""
    policy = store.policy() if spec is None else ReferencePolicy.from_spec(spec)
    records = store.records()
    for trial_id in attach_all(records, policy):
        store.write_trial(trial_id, records[trial_id])
    summary: dict[tuple, list[dict]] = defaultdict(list)
    for rec in records.values():
        if rec.get("status") == "ok" and rec.get("agreement"):
            e, t = rec["engine"], rec.get("trial") or {}
            # one row per configuration as the report splits them: two runtimes or two settings (e.g. same work and
            # as served) of one engine × device × precision are judged apart
            summary[(rec["model"]["name"], e["name"], e["device"], e["precision"], t.get("runtime") or "",
                     t.get("setting") or "")].append(rec["agreement"])
    rows = []
    for k, found in sorted(summary.items()):
        shares = [a["share_identical"] for a in found]
        missing = next((a["reason"] for a in found if a.get("status") != "compared"), None)
        # at batch > 1: the worst trial's share identical to its own configuration at batch 1 (None: not compared)
        invariance = [mapping(a.get("batch_invariance")).get("share_identical") for a in found]
        rows.append({"model": k[0], "engine": k[1], "device": k[2], "precision": k[3], "runtime": k[4] or None,
                     "setting": k[5] or None, "trials": len(found),
                     "share_identical": None if missing else min(shares), "no_reference": missing,
                     # the one verdict, as the report, the pass@1 comparison and the archs table call it
                     "different_output": None if missing else policy.verdict(found, k[3]),
                     "batch_invariance": min((v for v in invariance if v is not None), default=None),
                     "sampled": any(a.get("status") == "not-applicable" for a in found)})
    return rows
