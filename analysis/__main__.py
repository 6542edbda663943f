"""Command line: ``python -m analysis {report,tables,study,synth} …``.

    python -m analysis report results/<run-id> [more runs…] --out results/<run-id>/report
    python -m analysis tables results/<run-id> --out DIR        # tidy tables as parquet + CSV only
    python -m analysis study [--csv medians.csv]               # the study's headline ranges, recomputed
    python -m analysis synth results/synthetic-demo            # schema-valid synthetic records (demo, tests)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"{text!r}: write a pair as A:B, e.g. TORCH-CUDA:ONNX-CUDA")
    return a, b


def main(argv: list[str] | None = None) -> int:
    from analysis.study import DEFAULT_STUDY_CSV

    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("report", help="HTML + Markdown report, tables, plots")
    rp.add_argument("runs", nargs="+", type=Path, help="run folders (results/<run-id>) or record files")
    rp.add_argument("--out", type=Path, help="output folder (default: <first run>/report)")
    rp.add_argument("--study", type=Path, default=DEFAULT_STUDY_CSV, help="study medians CSV")
    rp.add_argument("--no-study", action="store_true", help="leave the study comparison out")
    rp.add_argument("--pair", type=_pair, action="append",
                    help="named pair A:B whose savings to report (repeatable; default TORCH-CUDA:ONNX-CUDA and "
                         "TORCH-CPU:ONNX-CPU)")
    rp.add_argument("--min-n", type=int, default=None, help="repetitions per configuration needed for a test")
    rp.add_argument("--title")
    tp = sub.add_parser("tables", help="tidy tables (trials, prompts, energy, failures) as parquet + CSV")
    tp.add_argument("runs", nargs="+", type=Path)
    tp.add_argument("--out", type=Path, required=True)
    sp = sub.add_parser("study", help="recompute the study's headline ranges from a medians table")
    sp.add_argument("--csv", type=Path, default=DEFAULT_STUDY_CSV)
    sy = sub.add_parser("synth", help="write a synthetic run of schema-valid records (made-up numbers)")
    sy.add_argument("out", type=Path)
    sy.add_argument("--repetitions", type=int, default=10)
    sy.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.cmd == "report":
        from analysis.report import DEFAULT_PAIRS, build_report
        from analysis.stats import MIN_N_TEST

        out = args.out or (args.runs[0] / "report")
        paths = build_report(args.runs, out, study_csv=None if args.no_study else args.study,
                             pairs=args.pair or DEFAULT_PAIRS, min_n=args.min_n or MIN_N_TEST, title=args.title)
        for kind, p in paths.items():
            print(f"{kind}: {p}")
        return 0
    if args.cmd == "tables":
        from analysis.load import load_runs

        t = load_runs(args.runs)
        for p in t.export(args.out):
            print(p)
        print(f"{len(t.trials)} trial(s), {len(t.prompts)} prompt row(s), {len(t.failures)} failure(s)",
              file=sys.stderr)
        return 0
    if args.cmd == "study":
        from analysis.study import STUDY_ID, describe_range, headline, read_medians

        h = headline(read_medians(args.csv))
        print(f"{STUDY_ID}, recomputed from {args.csv}:")
        print(describe_range(h["pair_savings_range"], f"{h['pair'][0]} saves against {h['pair'][1]}"))
        print(describe_range(h["cpu_best_worst_range"], "best vs worst CPU engine"))
        return 0
    if args.cmd == "synth":
        from analysis.synthetic import synthetic_run, write_run

        recs = synthetic_run(run_id=args.out.name, repetitions=args.repetitions, seed=args.seed)
        write_run(recs, args.out)
        print(f"{len(recs)} synthetic records under {args.out / 'trials'}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
