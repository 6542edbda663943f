"""The architecture × runtime table of a run (make archs: matrix-archs.toml), generated from its records, never typed.

    python -m benchmarks.archs_table results/archs [--readme images/README.md]

A cell is the share of prompts whose fp32 tokens are identical to the reference's (torch fp32 eager: the agreement the
orchestrator attached to every record, orchestrator/agreement.py — not computed again here), flagged when the run's
reference policy (run.json) judges it different work; or "refused" with the runtime's own reason (an exporter that
cannot convert the architecture, an engine that refuses it: a JobError or a failed conversion), or "failed" with the
error.
Reasons are numbered below the table. With --readme, the table replaces what lies between the markers
``<!-- archs-table:begin -->`` and ``<!-- archs-table:end -->`` in that file.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MARKER = "archs-table"  # the block's name: <!-- NAME:begin --> … <!-- NAME:end -->
BEGIN, END = f"<!-- {MARKER}:begin -->", f"<!-- {MARKER}:end -->"
# errors that are a runtime declining the model (its own reason), not a crash
REFUSALS = {"JobError", "ConversionError", "PrepareFailed"}


def _store(run_dir: Path):
    from orchestrator.store import RunStore

    return RunStore(run_dir.parent, run_dir.name)


def _matrix_order(store) -> tuple[list[str], list[str]]:
    """The run's models and "runtime/engine" columns in its matrix snapshot's order."""
    from orchestrator.matrix import load

    try:
        m = load(store.root / "matrix.toml")
    except Exception:  # noqa: BLE001 — a snapshot this checkout cannot load: the records' order
        return [], []
    return list(m.models), [f"{r}/{e}" for r, entry in m.runtimes.items() for e in entry.engines]


def _reason(error: dict[str, Any]) -> str:
    text = " ".join(str(error.get("message") or error.get("type") or "?").split())
    text = re.sub(r"^engine prepare failed \[\w+\] ", "", text)  # the prepare step's wrapper: keep the exporter's words
    text = re.sub(r"(?<=[.!?])\s[^.!?]*https?://\S+[^.!?]*[.!?]?", "", text)  # its words, not its links
    return text.replace("|", "\\|")[:400]


def cells(run_dir: Path) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    """(models, columns "runtime/engine", {(model, column): cell}, facts) from the run's records."""
    from runners.agreement import attach_all
    from runners.record import Record

    store = _store(run_dir)
    policy = store.policy()  # the run's, as the orchestrator's summary reads it
    model_order, column_order = _matrix_order(store)
    records = store.records()
    attach_all(records, policy)  # the orchestrator's own pass, in memory (a run already has it; the folder stays as is)
    run = store.read_run()
    order = [t for t in run.get("order", [])]
    models: list[str] = []
    columns: list[str] = []
    out: dict[tuple[str, str], dict[str, Any]] = {}
    compared: dict[tuple[str, str], list[dict[str, Any]]] = {}  # every repetition's agreement, for the verdict
    for tid in order + sorted(set(records) - set(order)):
        rec = records.get(tid)
        if rec is None:
            continue
        r = Record(rec)
        trial = r.trial or r.job.get("trial") or {}
        model, column = trial.get("model"), f"{trial.get('runtime')}/{trial.get('engine')}"
        if model not in models:
            models.append(model)
        if column not in columns:
            columns.append(column)
        if r.status != "ok":
            err = r.error or {}
            kind = "refused" if err.get("type") in REFUSALS or "ConversionError" in str(err.get("message")) \
                else "failed"
            cell = {"kind": kind, "reason": _reason(err)}
        elif policy.is_reference(rec):
            cell = {"kind": "reference"}
        else:
            a = r.agreement
            if a.get("status") != "compared":
                cell = {"kind": "no-reference", "reason": a.get("reason") or "no agreement"}
            else:
                compared.setdefault((model, column), []).append(a)
                # the orchestrator's verdict over every repetition of the cell (ReferencePolicy.verdict)
                why = policy.verdict(compared[(model, column)], r.precision)
                cell = {"kind": "different" if why else "same", "share": a["share_identical"],
                        "identical": a["identical"], "prompts": a["prompts"],
                        "first_divergence": a.get("first_divergence"), "verdict": why}
        held = out.get((model, column))
        # repetitions: the worst one speaks for the cell
        if held is None or held.get("share", 2) > cell.get("share", 2) or cell["kind"] in ("refused", "failed"):
            out[(model, column)] = cell
        elif cell.get("verdict") and held["kind"] in ("same", "different"):  # a later repetition changed the verdict
            held.update(kind="different", verdict=cell["verdict"])
    models.sort(key=lambda m: model_order.index(m) if m in model_order else len(model_order))
    columns.sort(key=lambda c: column_order.index(c) if c in column_order else len(column_order))
    spent = [i["ended_unix"] - i["started_unix"] for i in run.get("invocations", [])
             if i.get("command") == "run" and i.get("ended_unix") and i.get("started_unix")]
    facts = {"run_id": store.run_id, "matrix": run.get("matrix", {}).get("name"), "policy": policy,
             "records": len(records), "run_seconds": round(sum(spent)) if spent else None,
             "created": time.strftime("%Y-%m-%d", time.gmtime(run.get("created_unix") or time.time()))}
    return models, columns, out, facts


def markdown(run_dir: Path) -> str:
    models, columns, found, facts = cells(Path(run_dir))
    policy = facts["policy"]
    reasons: list[str] = []

    def note(text: str) -> str:
        if text not in reasons:
            reasons.append(text)
        return f"[{reasons.index(text) + 1}]"

    def show(cell: dict[str, Any] | None) -> str:
        if cell is None:
            return "not run"
        kind = cell["kind"]
        if kind == "reference":
            return "reference"
        if kind in ("same", "different"):
            text = f"{100 * cell['share']:.0f} % ({cell['identical']}/{cell['prompts']})"
            return text if kind == "same" else f"**{text}: different work** {note(cell['verdict'])}"
        return f"{kind} {note(cell['reason'])}"

    lines = [f"fp32, {facts['records']} trials of run `{facts['run_id']}` ({facts['created']}; "
             f"{'%d min' % round(facts['run_seconds'] / 60) if facts['run_seconds'] else 'wall time unknown'}): "
             f"share of prompts token-identical to {policy.engine} {policy.precision} eager; below "
             f"{100 * policy.threshold:.0f} % the runtime did different work.",
             "",
             "| architecture | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(show(found.get((m, c))) for c in columns) + " |")
    if reasons:
        lines.append("")
        lines += [f"{i}. {r}" for i, r in enumerate(reasons, 1)]
    return "\n".join(lines) + "\n"


def write_between_markers(path: Path, text: str, marker: str = MARKER) -> None:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    doc = path.read_text()
    if begin not in doc or end not in doc or doc.index(begin) > doc.index(end):
        raise SystemExit(f"{path}: no {begin} … {end} section to replace — add the two marker lines where the "
                         "table belongs")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n<!-- generated by `python -m benchmarks.archs_table` (make archs): do not edit "
                    f"-->\n{text}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.archs_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a run folder, e.g. results/archs")
    ap.add_argument("--readme", type=Path, default=None, help="write the table between the archs-table markers of "
                                                              "this file (e.g. images/README.md)")
    ap.add_argument("--marker", default=MARKER, help="the markers' name, for a second table in the same file "
                                                     "(e.g. archs-table-native for the native LLM paths)")
    args = ap.parse_args(argv)
    if not (args.run_dir / "run.json").is_file():
        ap.error(f"{args.run_dir} is not a run folder (no run.json) — run `make archs` first")
    text = markdown(args.run_dir)
    print(text, end="")
    if args.readme:
        write_between_markers(args.readme, text, args.marker)
        print(f"wrote the table into {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
