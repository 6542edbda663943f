"""orchestrate.py: plan, build, prepare, run and follow the matrix.

    orchestrate.py plan    [--matrix F] [--calibrate]      validate, the budget (from this host's records; a short
                                                           calibration through the same containers), the trials
    orchestrate.py build   [--matrix F | --all] [--device cpu|cuda]   build the runtime images (layer-cached)
    orchestrate.py prepare [--matrix F] [--run-id ID]      models into the host cache + engine conversions
    orchestrate.py run     [--matrix F] [--run-id ID] [--build] [--launcher docker|process] [--retry-failed]
    orchestrate.py run     ... --shard i/N                 only shard i of N (whole models; a Slurm array task)
    orchestrate.py submit  --slurm --shards N [--partition P] [--account A] [--time T] [--gpus-per-node G]
                           [--sbatch-arg ARG] [--no-exclusive] [--dry-run]   the run as one Slurm job array; again:
                                                           only the shards with trials left
    orchestrate.py status  [--run-id ID | --matrix F]      done / failed / left (per shard, node and Slurm task)
    orchestrate.py evaluate --run-id ID [--build]          HumanEval pass/fail of every full-prompt trial, in the
                                                           locked-down sandbox, outside every measured window
    orchestrate.py export  RUN --out FILE [--images]       the run as one verifiable bundle (records, matrix, logs,
                                                           image recipes, sha256 manifest; --images: the images too)
    orchestrate.py verify  FILE                            every file of a bundle against its manifest
    orchestrate.py reproduce BUNDLE_OR_RUN [--cells C] [--repetitions N] [--allow-different-images]
                                                           run it again as a new run; per cell what held
Filters (plan, prepare, run): --runtime R, --model M, --setting S (repeatable).

Exit status: 0 done (failed trials are results, recorded as such; --strict makes them exit 1), 2 bad matrix or
arguments, 3 the host cannot do it (no Docker engine, image not built, an image build that failed), 4 the run (or
its shard) is in use by another orchestrator (the message names its host and pid; --break-lock takes it over),
5 the results file system is full (nothing partial is left: free space then resume), 130 interrupted (nothing
finished is lost).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator import REPO_ROOT, bundle, summary
from orchestrator.budget import CALIBRATION_PROMPTS
from orchestrator.bundle import BundleError
from orchestrator.engine_watch import EngineWentAway, engine_failures
from orchestrator.images import ImageError, build, discover
from orchestrator.launch import HostProblem
from orchestrator.matrix import MatrixError, load
from orchestrator.models import DEFAULT_CACHE, readability_problem
from orchestrator.plan import expand
from orchestrator.session import RunOptions, built_image_ids
from orchestrator.session import run as run_session
from orchestrator.sweep import sweeps_of
from orchestrator.run_lock import BREAK_FLAG, RunLocked
from orchestrator.store import ResultsNotWritable, RunConflict, RunStore, no_space

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _args(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--matrix", default=str(REPO_ROOT / "matrix.toml"), help="matrix file (default: matrix.toml)")
    common.add_argument("--run-id", help="results/<run-id>/ (default: the matrix's name); the same id resumes")
    common.add_argument("--results", default=str(REPO_ROOT / "results"), help="results folder (default: results/)")
    common.add_argument("--cache", default=str(DEFAULT_CACHE),
                        help=f"host model cache (default: $SLM_MATRIX_CACHE or {DEFAULT_CACHE})")
    filters = argparse.ArgumentParser(add_help=False)
    for f in ("runtime", "model", "setting"):
        filters.add_argument(f"--{f}", action="append", help=f"only this {f} (repeatable)")
    launch = argparse.ArgumentParser(add_help=False)
    launch.add_argument("--launcher", choices=("docker", "process"), default="docker",
                        help="docker (default): one container per trial; process: the runner as a plain process")
    launch.add_argument("--build", action="store_true", help="build the needed images first (layer-cached)")
    locking = argparse.ArgumentParser(add_help=False)
    locking.add_argument(BREAK_FLAG, action="store_true", dest="break_lock",
                         help="take the run's lock from an orchestrator on another host that may still be running "
                              "(only when that host is down or its orchestrator is gone)")

    p = argparse.ArgumentParser(prog="orchestrate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pl = sub.add_parser("plan", parents=[common, filters, launch],
                        help="validate the matrix, print its budget, list the trials")
    pl.add_argument("--calibrate", action="store_true",
                    help=f"first run every selected cell once on {CALIBRATION_PROMPTS} prompts (same containers), "
                         "so that the budget knows them")
    pl.add_argument("--quiet", action="store_true", help="the budget only, not every trial")
    b = sub.add_parser("build", parents=[common], help="build the runtime images")
    b.add_argument("--runtime", action="append", help="only this runtime (repeatable)")
    b.add_argument("--all", action="store_true", help="every runtime under images/, not just the matrix's")
    b.add_argument("--device", choices=("cpu", "cuda"), help="only runtimes of this device")
    b.add_argument("--no-cache", action="store_true")
    b.add_argument("--extra-ca", metavar="DIR", help="trust the *.crt files of DIR in the images (a TLS-intercepting "
                   "proxy's or a corporate CA; e.g. /usr/local/share/ca-certificates); env SLM_EXTRA_CA_DIR")
    b.add_argument("--wheels", metavar="DIR", action="append", help="local wheels of pinned versions to build from "
                   "(repeatable; e.g. a torch wheel where its index is unreachable); env SLM_WHEEL_DIRS")
    sub.add_parser("prepare", parents=[common, filters, launch, locking], help="fetch models, run engine conversions")
    r = sub.add_parser("run", parents=[common, filters, launch, locking], help="run (or resume) the matrix")
    r.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    r.add_argument("--strict", action="store_true", help="exit 1 when any selected trial is recorded as failed")
    r.add_argument("--shard", metavar="i/N", help="only shard i of N: whole models, spread by orchestrate.py submit "
                   "(the run's slurm/sharding.json) or, without one, by the same rule")
    sb = sub.add_parser("submit", parents=[common, launch], help="submit the run to a cluster scheduler (Slurm)")
    sb.add_argument("--slurm", action="store_true", required=True, help="as one Slurm job array (sbatch)")
    sb.add_argument("--shards", type=int, help="array tasks = nodes the run is spread over (whole models each; "
                    "default: the run's earlier sharding, else one shard per model)")
    sb.add_argument("--partition")
    sb.add_argument("--account")
    sb.add_argument("--time", help="time limit per array task (Slurm syntax, e.g. 12:00:00); the orchestrator is "
                    "told 2 min before it, stops the trial in flight, and a resubmission resumes")
    sb.add_argument("--gpus-per-node", type=int)
    sb.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                    help="one more #SBATCH line, verbatim (repeatable), e.g. --sbatch-arg=--constraint=h100")
    sb.add_argument("--no-exclusive", action="store_true",
                    help="share nodes with other jobs (default: node-exclusive, nothing else draws power)")
    sb.add_argument("--dry-run", action="store_true", help="print the batch script, submit nothing")
    sub.add_parser("status", parents=[common], help="what is done, failed, left")
    ev = sub.add_parser("evaluate", parents=[common], help="run the completions' tests in the sandbox (resumable)")
    ev.add_argument("--build", action="store_true", help="build the sandbox image first (layer-cached)")
    ex = sub.add_parser("export", help="the run as one verifiable bundle a reviewer can take away")
    ex.add_argument("run", help="the run: its id under --results, or its folder")
    ex.add_argument("--out", required=True, help="the bundle file (.tar, or .tar.gz to compress)")
    ex.add_argument("--results", default=str(REPO_ROOT / "results"), help="results folder (default: results/)")
    ex.add_argument("--images", action="store_true", help="add the images the run used (docker save, gzip): "
                    "gigabytes, for a reproduction without registries")
    ve = sub.add_parser("verify", help="check a bundle's files against its manifest")
    ve.add_argument("bundle")
    rp = sub.add_parser("reproduce", parents=[common, launch], help="run a bundle or run again; say what held")
    rp.add_argument("source", help="a bundle (orchestrate.py export) or a run folder")
    rp.add_argument("--cells", action="append", help="only this cell (its plan id, e.g. "
                    "torch-cpu__torch__smollm2__fp32; repeatable; default: every cell of the original)")
    rp.add_argument("--repetitions", type=int, default=1, help="repetitions per cell (default 1; ≥ 2 for intervals)")
    rp.add_argument("--allow-different-images", action="store_true",
                    help="run images built from another recipe than the original's (the result says so)")
    return p.parse_args(argv)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    # SIGTERM (docker stop, CI cancel) ends the run like Ctrl-C: trial in flight stopped, finished ones kept.
    # SIGINT too, explicitly: a shell that starts us in the background starts us with SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler of its own — Ctrl-C (or `kill -INT`) would be ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return {"plan": cmd_plan, "build": cmd_build, "prepare": cmd_run, "run": cmd_run, "submit": cmd_submit,
                "status": cmd_status, "evaluate": cmd_evaluate, "export": cmd_export,
                "verify": cmd_verify, "reproduce": cmd_reproduce}[args.command](args)
    except (MatrixError, BundleError) as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}")
        return 2
    except (HostProblem, ImageError, RunConflict, EngineWentAway) as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}")
        return 3
    except RunLocked as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}")
        return 4
    except ResultsNotWritable as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}")
        return 5
    except engine_failures() as e:  # the Docker engine failed mid-run
        err_console.print(f"[red]error:[/] the Docker engine failed: {escape(str(e))} — every finished trial is "
                          "recorded; run the same command again to resume")
        return 3
    # after the engine's: requests' ConnectionError is an OSError too (it re-raised from here: exit 1, a traceback)
    except OSError as e:
        if not no_space(e):
            raise
        err_console.print(f"[red]error:[/] cannot write {escape(str(e.filename or args.results))}: {e.strerror} — "
                          "free space then resume (run the same command again): every finished trial is recorded")
        return 5
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the trial in flight was stopped and removed; every finished trial is "
                      "recorded — run the same command again to resume")
        return 130


def _plan(args, matrix=None):
    """The matrix (loaded from --matrix unless given), its plan, and the trials the filters select."""
    matrix = load(args.matrix) if matrix is None else matrix
    plan = expand(matrix)
    trials = plan.select(runtimes=getattr(args, "runtime", None), models=getattr(args, "model", None),
                         settings=getattr(args, "setting", None))
    return matrix, plan, trials


def _run_options(args) -> RunOptions:
    return RunOptions(results=Path(args.results), cache=Path(args.cache), command=args.command, run_id=args.run_id,
                      launcher=args.launcher, build=args.build, retry_failed=getattr(args, "retry_failed", False),
                      strict=getattr(args, "strict", False), shard=getattr(args, "shard", None),
                      break_lock=getattr(args, "break_lock", False))


def cmd_plan(args) -> int:
    matrix, plan, trials = _plan(args)
    if args.calibrate:
        from orchestrator.calibrate import calibration_matrix

        calibration = calibration_matrix(matrix)
        console.print(f"calibrating: every selected cell once on {CALIBRATION_PROMPTS} prompts "
                      f"(run {calibration.name})")
        options = dataclasses.replace(_run_options(args), command="run", run_id=None)  # its own run id
        code = run_session(*_plan(args, calibration), options, console)
        if code != 0:
            return code
    console.print(f"matrix {matrix.name} ({matrix.path}, sha256 {matrix.hash[:12]}), seed {matrix.seed}: "
                  f"{len(plan.cells)} cells × {matrix.repetitions} repetitions = {len(plan.trials)} trials"
                  + (f", {len(trials)} selected" if len(trials) != len(plan.trials) else ""))
    for name, axes in sweeps_of(matrix.settings.values()).items():
        console.print(f"  sweep {escape(name)}: {axes}")
    for x in plan.excluded:
        console.print(f"  not a cell: {escape(x)}")
    for m in matrix.models.values():  # a user's folder the containers cannot read: said now, not per failed trial
        problem = readability_problem(m.name, m.path) if m.source == "path" and m.path.is_dir() else None
        if problem:
            console.print(f"  [red]model not readable in the containers:[/] {escape(problem)}")
    summary.print_budget(console, plan, trials, Path(args.results),
                         built_image_ids(args.launcher, [t.cell.runtime.spec for t in trials]))
    if not args.quiet:
        for t in trials:
            console.print(f"  {t.order_index:5d}  {t.id}")
    return 0


def cmd_build(args) -> int:
    from orchestrator.images import EXTRA_CA_ENV, WHEEL_DIRS_ENV

    if args.extra_ca:
        os.environ[EXTRA_CA_ENV] = args.extra_ca
    if args.wheels:
        os.environ[WHEEL_DIRS_ENV] = os.pathsep.join(args.wheels)
    runtimes = discover()
    if args.all or args.runtime:
        names = args.runtime or list(runtimes)
        for n in names:
            if n not in runtimes:
                raise MatrixError("--runtime", n, "no such runtime under images/", f"use one of: {', '.join(runtimes)}")
        chosen = [runtimes[n] for n in names]
    else:
        chosen = [r.spec for r in load(args.matrix).runtimes.values()]
    chosen = [r for r in chosen if not args.device or r.device == args.device]
    from orchestrator.docker_layer import connected

    client = connected()
    table = Table("runtime", "image", "id", "size (MB)", "build (s)")
    for rt in chosen:
        console.print(f"building {rt.image} from {rt.dockerfile.relative_to(REPO_ROOT)}")
        info = build(client, rt, log=lambda line: console.print(f"  {escape(line)}"), nocache=args.no_cache)
        table.add_row(rt.name, info["image"], info["id"][7:19], f"{info['size_mb']:.0f}", f"{info['build_s']:.1f}")
    console.print(table)
    return 0


def cmd_run(args) -> int:
    return run_session(*_plan(args), _run_options(args), console)


def cmd_submit(args) -> int:
    from orchestrator import slurm

    matrix, plan, _ = _plan(args)
    run_id = args.run_id or matrix.name
    options = slurm.SubmitOptions(partition=args.partition, account=args.account, time=args.time,
                                  gpus_per_node=args.gpus_per_node, exclusive=not args.no_exclusive,
                                  sbatch_args=list(args.sbatch_arg), launcher=args.launcher)
    options.check()
    store = RunStore(args.results, run_id)
    todo = slurm.pending(store, matrix, plan, args.shards, args.dry_run)
    summary.print_submission(console, run_id, plan, todo)
    if not todo.indices:
        console.print("nothing to submit: every shard is finished or already queued/running")
        return 0
    script = slurm.batch_script(run_id=run_id, results=Path(args.results), cache=Path(args.cache),
                                shards=todo.sharding.count, indices=todo.indices, options=options)
    if args.dry_run:
        console.print(escape(script), markup=False)
        return 0
    job_id, path = slurm.submit(store.slurm_dir, script, todo, options)
    console.print(f"submitted job array {job_id}: shard(s) {', '.join(map(str, todo.indices))} of "
                  f"{todo.sharding.count} (script {path}); follow with `orchestrate.py status --run-id {run_id}`")
    return 0


def cmd_evaluate(args) -> int:
    from evaluation.evaluate import evaluate_run, read_evaluations
    from evaluation.sandbox import Sandbox
    from orchestrator.docker_sandbox import DockerSandbox

    store = _existing_store(args)
    container = DockerSandbox.connected()
    sandbox = Sandbox(container)
    facts = {**container.ensure_image(args.build, log=lambda line: console.print(f"  {escape(line)}")),
             **sandbox.describe()}
    console.print(f"evaluating run {store.run_id} ({store.root}) in {facts['image']} ({facts['image_id'][7:19]})")
    counts = evaluate_run(store, sandbox, facts, log=lambda line: console.print(escape(line)))
    console.print(f"evaluate {store.run_id}: {counts['evaluated']} evaluated, {counts['already']} were already, "
                  f"{counts['not_evaluable']} not evaluable (not ok, or not HumanEval's full prompts)")
    summary.print_evaluations(console, read_evaluations(store.root))
    return 0


def _existing_store(args) -> RunStore:
    if not args.run_id:
        args.run_id = load(args.matrix).name
    store = RunStore(args.results, args.run_id)
    if not store.exists():
        runs = sorted(p.parent.name for p in Path(args.results).glob("*/run.json")) if Path(args.results).is_dir() else []
        raise HostProblem(f"no run {args.run_id!r} under {args.results} (runs there: {', '.join(runs) or 'none'})")
    return store


def cmd_status(args) -> int:
    if args.run_id:
        store = _existing_store(args)
        matrix = load(store.root / "matrix.toml")
    else:
        matrix = load(args.matrix)
        store = RunStore(args.results, matrix.name)
        if not store.exists():
            console.print(f"run {matrix.name}: not started ({store.root} does not exist)")
            return 0
    summary.print_status(console, store, matrix, expand(matrix))
    for trial_id, why in store.invalid().items():
        console.print(f"  [yellow]not a record:[/] {escape(str(store.trial_path(trial_id)))}: {escape(why)} — the next "
                      "`run` moves it aside (trials/.invalid/) and runs the trial again")
    return 0


def cmd_export(args) -> int:
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.results) / args.run
    from orchestrator.docker_layer import connected

    try:
        client = connected()
    except HostProblem:  # without an engine the bundle still holds everything but the images' local facts
        if args.images:
            raise
        client = None
    b = bundle.export(run_dir, Path(args.out), client=client, with_images=args.images,
                      say=lambda line: console.print(escape(line)))
    console.print(f"wrote {b.path} ({b.size / 1e6:.1f} MB, {len(b.manifest['files'])} files with their sha256 in "
                  f"{bundle.MANIFEST}); check it with `orchestrate.py verify {b.path}`")
    return 0


def cmd_verify(args) -> int:
    manifest, problems = bundle.verify(Path(args.bundle))
    for line in problems:
        console.print(f"[red]{escape(line)}[/]")
    console.print(f"bundle of run {manifest['run_id']}: {len(manifest['files'])} files, "
                  + ("every one as exported" if not problems else f"{len(problems)} not as exported"))
    return 0 if not problems else 1


def cmd_reproduce(args) -> int:
    import json
    import tempfile

    from orchestrator import reproduce

    with tempfile.TemporaryDirectory() as scratch:
        run_dir, manifest = reproduce.original_run(Path(args.source), Path(scratch))
        original = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*.json"))}
        original_id = json.loads((run_dir / "run.json").read_text())["run_id"]
        matrix = load(run_dir / "matrix.toml")
    if args.repetitions < 1:
        raise MatrixError(args.source, "--repetitions", f"must be ≥ 1, got {args.repetitions}", "give 1 or more")
    matrix = dataclasses.replace(matrix, repetitions=args.repetitions)
    plan = expand(matrix)
    unknown = sorted(set(args.cells or ()) - {c.id for c in plan.cells})
    if unknown:
        raise MatrixError(args.source, f"--cells {unknown[0]}", "is not a cell of the original",
                          f"use one of: {', '.join(sorted(c.id for c in plan.cells))}")
    trials = [t for t in plan.trials if not args.cells or t.cell.id in args.cells]
    needed = sorted({t.cell.runtime.spec for t in trials}, key=lambda r: r.name)
    problems, unknown, how = reproduce.prepare_images(args.launcher, Path(args.source), manifest, needed,
                                                      lambda line: console.print(escape(line)),
                                                      args.allow_different_images)
    for line in unknown:
        console.print(f"[yellow]{escape(line)}[/]: rebuilt from this checkout, the verdict cannot tell another image")
    if problems and not args.allow_different_images:
        raise HostProblem("; ".join(problems) + " — its figures would be another image's: check out the original's "
                          "commit, or add --allow-different-images (the reproduction then says so)")
    opts = dataclasses.replace(_run_options(args), run_id=args.run_id or f"{original_id}-repro", build=not how)
    code = run_session(matrix, plan, trials, opts, console)
    store = RunStore(args.results, opts.run_id)
    rows = reproduce.compare_runs(original, store.records(), bool(problems))
    path = reproduce.write(rows, store.root, str(args.source), bool(problems), how)
    summary.print_reproduction(console, rows, original_id)
    console.print(f"reproduction of {original_id}: {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
