"""CLI of the runner (the ENTRYPOINT of every image).

    python -m runners run JOB.json --out RECORD.json      measured trial      exit 0 ok, 1 failed, 2 bad job
    python -m runners prepare JOB.json --out RECORD.json  conversion only (into job.cache_dir), same exit codes
    python -m runners tokenize JOB.json --out INPUTS.json the workload's prompt ids by this image's tokenizer (the
                                                          inputs file of same-work mode), same exit codes
    python -m runners validate JOB.json                   check a job, print the one-line error if any
    python -m runners idle --seconds 10 [--out FILE]      idle power per component
    python -m runners env                                 the environment block of a record
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runners.job import JobError, load_job


def _trial(args, mode: str) -> int:
    from runners.runner import TrialRun

    raw = None
    try:
        raw = json.loads(Path(args.job).read_text()) if Path(args.job).is_file() else None
        job = load_job(args.job)
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        trial = TrialRun(None, raw, mode)
        trial.fail(e)
        if args.out:
            trial.write(Path(args.out))
        return 2
    trial = TrialRun(job, raw, mode)
    try:
        record = trial.run()
    finally:
        trial.write(Path(args.out))
    if record["status"] != "ok":
        err = record["error"]
        print(f"error: [{err['phase']}] {err['message']}", file=sys.stderr)
        return 2 if err["type"] == "JobError" else 1
    summary = record.get("metrics") or {}
    tps = summary.get("tokens_per_s")
    print(f"{mode} ok: {job.engine}/{job.device}/{job.precision} {job.model.name}"
          + (f" — {record['tokens']['output']} tokens, {tps:.1f} tok/s" if tps else ""))
    return 0


def _tokenize(args) -> int:
    """The inputs file (runners/workload.py), or a failed one with the reason: the orchestrator reads either."""
    import time
    import traceback

    from runners.record import write_json_atomic
    from runners.runner import make_inputs

    try:
        doc, code = make_inputs(load_job(args.job)), 0
    except Exception as e:  # noqa: BLE001 — every failure is written down for the orchestrator
        code = 2 if isinstance(e, JobError) else 1
        doc = {"schema": "slm-matrix.inputs/1", "status": "failed", "created_unix": time.time(),
               "error": {"phase": "tokenize", "type": type(e).__name__,
                         "message": str(e) if isinstance(e, JobError) else f"{type(e).__name__}: {e}",
                         "traceback": None if isinstance(e, JobError) else traceback.format_exc(limit=8)}}
        print(f"error: {doc['error']['message']}", file=sys.stderr)
    write_json_atomic(args.out, doc)
    if code == 0:
        print(f"tokenize ok: {len(doc['prompts'])} prompts, {doc['tokenizer']['class']} "
              f"(transformers {doc['tokenizer']['transformers']})")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "prepare", "tokenize"):
        p = sub.add_parser(name)
        p.add_argument("job")
        p.add_argument("--out", required=True)
    p = sub.add_parser("validate")
    p.add_argument("job")
    p = sub.add_parser("idle")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out")
    sub.add_parser("env")
    args = parser.parse_args(argv)

    if args.command in ("run", "prepare"):
        return _trial(args, args.command)
    if args.command == "tokenize":
        return _tokenize(args)
    if args.command == "validate":
        try:
            job = load_job(args.job)
        except JobError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"ok: {job.engine}/{job.device}/{job.precision} {job.model.name} (hash {job.hash[:12]})")
        return 0
    if args.command == "idle":
        from runners.meters import MeterSet

        meters = MeterSet.create()
        try:
            idle = meters.idle(args.seconds)
        finally:
            meters.close()
        text = json.dumps(idle, indent=1)
        if args.out:
            from runners.record import write_json_atomic

            write_json_atomic(args.out, idle)
        print(text)
        return 0
    if args.command == "env":
        from runners import environment

        print(json.dumps(environment.collect(), indent=1))
        return 0
    return 2


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
