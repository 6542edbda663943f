#!/usr/bin/env python3
"""Per-trial orchestration overhead: what one container per trial costs, in seconds and as a share of trial time.

    python benchmarks/orchestration_overhead.py                  run the smoke matrix's tiny models, then report
    python benchmarks/orchestration_overhead.py --run-dir results/smoke     report on an existing run

Two tables: where each trial's wall time goes (cooldown, idle baseline, container set-up, the runner's start-up
split by its progress lines, each measured phase, exit) with the share outside the measured generate window; then
the orchestrator's own overhead:

Per trial, from its record (host.*; host.recorded_unix is the instant it was stored):
  setup      begin → container started: job file, image lookup, create, host meters' window open, start
             (the meters' column shows the window opening alone: codecarbon's first task can take seconds)
  teardown   container exited → record stored: exit state, log, collect, remove, write
  orchestration = setup + teardown                  (the orchestrator's own cost)
  in-container  interpreter start + imports before the runner's first window, and after its last one
  trial      begin → record stored (the idle baseline and cooldown before it are protocol, not overhead)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runners.record import HOST_WINDOW, Record  # noqa: E402


def trial_rows(run_dir: Path) -> list[dict[str, float | str]]:
    rows = []
    for p in sorted((run_dir / "trials").glob("*.json")):
        rec = Record.load(p)
        h = rec.host
        if not (h.get("begin_unix") and h.get("started_unix") and h.get("exited_unix")):
            continue  # recorded without a launch (e.g. a failed prepare)
        stored = h.get("recorded_unix") or p.stat().st_mtime  # the file may be rewritten later (agreement)
        o = h.get("overhead_s") or {}
        setup = h["started_unix"] - h["begin_unix"]
        teardown = stored - h["exited_unix"]
        inside = (o.get("runner_startup_s") or 0.0) + (o.get("runner_exit_s") or 0.0)
        trial = stored - h["begin_unix"]
        rows.append({"trial": p.stem, "status": rec.status, "launcher": h.get("launcher"),
                     "create": o.get("create_s", 0.0), "start": o.get("start_s", 0.0),
                     "meters": o.get("meters_open_s", 0.0), "setup": setup,
                     "teardown": teardown, "orchestration": setup + teardown, "in_container": inside,
                     "trial_s": trial})
    return rows


BREAKDOWN = ("cooldown", "idle", "setup", "imports", "meters", "tokenizer", "workload", "prepare", "load", "compile",
             "warmup", "generate", "exit")


def _progress(log: Path) -> dict[str, float]:
    """phase -> seconds after the record was created, from the runner's progress lines ("[runner +1.3s] meters")."""
    out: dict[str, float] = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if line.startswith("[runner +") and "s] " in line:
            at, phase = line[len("[runner +"):].split("s] ", 1)
            out.setdefault(phase.strip(), float(at))
    return out


def breakdown_rows(run_dir: Path) -> list[dict[str, float | str]]:
    """Per trial, seconds per part of its wall time (trial start → record stored), from its record and log."""
    rows = []
    for p in sorted((run_dir / "trials").glob("*.json")):
        rec = Record.load(p)
        h = rec.host
        phases = {name: w for name, w in rec.windows().items() if name != HOST_WINDOW}
        if not rec.is_ok or not (h.get("begin_unix") and h.get("started_unix")) or "generate" not in phases:
            continue
        stored = h.get("recorded_unix") or p.stat().st_mtime
        cooldown = float(h["cooldown"].get("waited_s") or 0.0) if h.get("cooldown") else 0.0
        idle = h.get("idle") or {}
        baseline = idle.get("baseline") or {}
        start = h.get("trial_start_unix") or (idle.get("start_unix") or h["begin_unix"]) - cooldown
        # the idle part: what this trial waited for its baseline (a full one, or the check before re-using one)
        idle_s = max(h["begin_unix"] - start - cooldown, 0.0)
        first = min(w["start_unix"] for w in phases.values() if isinstance(w, dict) and "start_unix" in w)
        marks = _progress(run_dir / h["log"]) if h.get("log") else {}
        created = float(rec.data.get("created_unix") or first)
        row: dict[str, float | str] = {"trial": p.stem, "cooldown": cooldown, "idle": idle_s,
                                       "baseline": "re-used" if baseline.get("reused") else "measured" if idle else "none",
                                       "setup": h["started_unix"] - h["begin_unix"]}
        # the runner's start-up: interpreter + imports until its first progress line, then each step it announced
        steps = [("meters", "meters"), ("tokenizer", "model"), ("workload", "workload")]
        t = created + marks.get("meters", 0.0)
        row["imports"] = t - h["started_unix"]
        for (name, mark), nxt in zip(steps, [*[m for _, m in steps[1:]], None]):
            end = created + marks[nxt] if nxt and nxt in marks else first
            row[name] = max(end - t, 0.0) if mark in marks else 0.0
            t = max(end, t)
        row["workload"] = float(row["workload"]) + max(first - t, 0.0)  # engine construction: announced as "host"
        for name in ("prepare", "load", "compile", "warmup", "generate"):
            row[name] = rec.duration(name) or 0.0
        last = max(w["end_unix"] for w in phases.values() if isinstance(w, dict) and "end_unix" in w)
        row["exit"] = stored - last
        row["total"] = stored - start
        row["outside"] = 1.0 - float(row["generate"]) / float(row["total"])
        rows.append(row)
    return rows


def breakdown(run_dir: Path) -> str:
    rows = breakdown_rows(run_dir)
    if not rows:
        return f"no ok trials with a generate window in {run_dir}"
    cols = [c for c in BREAKDOWN if any(float(r[c]) > 0.005 for r in rows)]
    lines = [f"where the wall time goes (s) — {run_dir}",
             f"{'trial':44s} {'baseline':>8s} " + " ".join(f"{c[:8]:>8s}" for c in cols) + f" {'total':>8s} {'outside':>8s}"]
    for r in rows:
        lines.append(f"{str(r['trial'])[:44]:44s} {str(r['baseline']):>8s} "
                     + " ".join(f"{float(r[c]):8.2f}" for c in cols) + f" {float(r['total']):8.2f} "
                     f"{100 * float(r['outside']):7.1f}%")
    total = sum(float(r["total"]) for r in rows)
    generate = sum(float(r["generate"]) for r in rows)
    lines.append(f"the run: {len(rows)} trials, {total:.1f} s of trial wall time, {generate:.1f} s in measured "
                 f"generate windows — {100 * (1 - generate / total):.1f} % outside them")
    return "\n".join(lines)


def report(run_dir: Path) -> str:
    rows = trial_rows(run_dir)
    if not rows:
        return f"no launched trials in {run_dir}"
    lines = [f"run {run_dir} — {len(rows)} trials ({', '.join(sorted({str(r['launcher']) for r in rows}))})",
             f"{'trial':58s} {'create':>7s} {'meters':>7s} {'start':>7s} {'setup':>7s} {'teardn':>7s} {'orch':>7s} "
             f"{'inside':>7s} {'trial':>8s} {'orch %':>7s}"]
    for r in rows:
        lines.append(f"{str(r['trial'])[:58]:58s} {r['create']:7.3f} {r['meters']:7.3f} {r['start']:7.3f} {r['setup']:7.3f} "
                     f"{r['teardown']:7.3f} {r['orchestration']:7.3f} {r['in_container']:7.2f} {r['trial_s']:8.2f} "
                     f"{100 * r['orchestration'] / r['trial_s']:6.2f}%")

    def med(key):
        return statistics.median(float(r[key]) for r in rows)

    share = [float(r["orchestration"]) / float(r["trial_s"]) for r in rows]
    share_in = [(float(r["orchestration"]) + float(r["in_container"])) / float(r["trial_s"]) for r in rows]
    lines += [
        "",
        f"orchestration overhead per trial (container create + start + stop/remove + record): median "
        f"{med('orchestration'):.3f} s (setup {med('setup'):.3f} s, teardown {med('teardown'):.3f} s), "
        f"max {max(float(r['orchestration']) for r in rows):.3f} s",
        f"  = median {100 * statistics.median(share):.2f} % of trial time (median trial {med('trial_s'):.1f} s)",
        f"with the runner's start-up and exit inside the container (interpreter, imports, record write): median "
        f"{med('orchestration') + med('in_container'):.2f} s = {100 * statistics.median(share_in):.1f} % of trial time",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, help="report on this results/<run-id> instead of running")
    ap.add_argument("--matrix", default=str(REPO / "matrix-smoke.toml"))
    ap.add_argument("--model", action="append", help="models to run (default: tiny-llama, tiny-gpt2)")
    ap.add_argument("--runtime", default="torch-cpu")
    ap.add_argument("--launcher", default="docker", choices=("docker", "process"))
    args = ap.parse_args(argv)
    if args.run_dir is None:
        results = Path(tempfile.mkdtemp(prefix="slm-bench-"))
        run_id = f"overhead-{time.strftime('%Y%m%d-%H%M%S')}"
        cmd = [sys.executable, str(REPO / "orchestrate.py"), "run", "--matrix", args.matrix, "--run-id", run_id,
               "--results", str(results), "--launcher", args.launcher, "--runtime", args.runtime]
        for m in args.model or ["tiny-llama", "tiny-gpt2"]:
            cmd += ["--model", m]
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            return 1
        args.run_dir = results / run_id
    print(breakdown(args.run_dir))
    print()
    print(report(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
