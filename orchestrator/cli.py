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
Filters (plan, prepare, run): --runtime R, --model M, --setting S (repeatable).

Exit status: 0 done (failed trials are results, recorded as such; --strict makes them exit 1), 2 bad matrix or
arguments, 3 the host cannot do it (no Docker engine, image not built), 130 interrupted (nothing finished is lost).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator import REPO_ROOT
from orchestrator.images import ImageError, build, discover
from orchestrator.launch import HostProblem, make_launcher
from orchestrator.matrix import MatrixError, load
from orchestrator.budget import CALIBRATION_PREFIX, CALIBRATION_PROMPTS
from orchestrator.models import CONTAINER_USER, DEFAULT_CACHE, ModelCache, readability_problem
from orchestrator.plan import expand
from orchestrator.shard import run_sharding
from orchestrator.store import RunConflict, RunStore
from orchestrator.ui import Reporter, clock

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
    sub.add_parser("prepare", parents=[common, filters, launch], help="fetch models, run engine conversions")
    r = sub.add_parser("run", parents=[common, filters, launch], help="run (or resume) the matrix")
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
    return p.parse_args(argv)


def _engine_failures() -> tuple[type[BaseException], ...]:
    """How a Docker engine fails mid-run; none where the Docker SDK is not installed (a bare host, process launcher)."""
    try:
        import docker.errors
        import requests
    except ImportError:
        return ()
    return (requests.exceptions.ConnectionError, docker.errors.APIError)


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
                "status": cmd_status, "evaluate": cmd_evaluate}[args.command](args)
    except MatrixError as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}")
        return 2
    except (HostProblem, ImageError, RunConflict) as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}")
        return 3
    except _engine_failures() as e:  # the Docker engine failed mid-run
        err_console.print(f"[red]error:[/] the Docker engine failed: {escape(str(e))} — every finished trial is "
                          "recorded; run the same command again to resume")
        return 3
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the trial in flight was stopped and removed; every finished trial is "
                      "recorded — run the same command again to resume")
        return 130


def _plan(args):
    matrix = load(args.matrix)
    plan = expand(matrix)
    trials = plan.select(runtimes=getattr(args, "runtime", None), models=getattr(args, "model", None),
                         settings=getattr(args, "setting", None))
    return matrix, plan, trials


def calibration_matrix(matrix, results: Path) -> Path:
    """The matrix's calibration: every cell once, on a few prompts, under its own run id (named by the matrix's hash,
    so an edited matrix calibrates anew and an unchanged one resumes)."""
    import tomllib

    from orchestrator.tomlw import dumps

    data = tomllib.loads(matrix.text)
    m = data.setdefault("matrix", {})
    m["name"] = f"{CALIBRATION_PREFIX}{matrix.name}-{matrix.hash[:8]}"
    m["repetitions"] = 1
    w = data.setdefault("workload", {})
    w["count"] = min(int(w.get("count") or 164), CALIBRATION_PROMPTS)
    path = Path(results) / ".calibration" / f"{m['name']}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by orchestrate.py plan --calibrate from " + str(matrix.path) + "\n" + dumps(data))
    return path


def print_budget(plan, trials, results: Path, launcher_name: str = "docker") -> float | None:
    """The budget table of the selected trials; returns the expected seconds when every cell is known."""
    from orchestrator.budget import estimate, host_samples

    image_ids = None
    if launcher_name == "docker":
        try:
            from orchestrator.docker_launcher import DockerLauncher

            client = DockerLauncher.connected("").client
            image_ids = {}
            for r in {t.cell.runtime.spec for t in trials}:
                try:
                    image_ids[r.image] = client.images.get(r.image).id
                except Exception:  # not built: its records cannot be matched by id
                    pass
        except Exception:  # no Docker here: records are matched by image tag only
            image_ids = None
    rows = estimate(plan, trials, host_samples(Path(results)), image_ids)
    table = Table("runtime", "device", "model", "trials", "wall", "energy", "outside generate", "from")
    total = {"cpu": [0, 0.0, 0.0, 0.0], "cuda": [0, 0.0, 0.0, 0.0]}
    unknown = extrapolated = 0
    devices = {r.name: r.spec.device for r in plan.matrix.runtimes.values()}
    for e in sorted(rows, key=lambda e: (devices[e.runtime], e.runtime, e.model)):
        dev = devices[e.runtime]
        if not e.known:
            unknown += e.trials
            table.add_row(e.runtime, dev, e.model, str(e.trials), "?", "?", "?", f"[yellow]{escape(e.basis)}[/]")
            continue
        tot = total[dev]
        tot[0] += e.trials
        tot[1] += e.wall_s
        tot[2] += e.outside_s
        tot[3] += e.energy_j or 0.0
        mark = "≈ " if e.extrapolated else ""
        if e.extrapolated:
            extrapolated += e.trials
        table.add_row(e.runtime, dev, e.model, str(e.trials), mark + clock(e.wall_s),
                      "?" if e.energy_j is None else f"{mark}{e.energy_j / 3.6e6:.3f} kWh {e.source}",
                      f"{100 * e.outside_s / e.wall_s:.0f} %",
                      f"[yellow]{escape(e.basis or '')}[/]" if e.extrapolated else escape(e.basis or ""))
    console.print(table)
    for dev, (n, wall, outside, joules) in total.items():
        if n:
            console.print(f"  {dev.upper()}: {n} trials, {clock(wall)} expected, {joules / 3.6e6:.2f} kWh, "
                          f"{100 * outside / wall:.0f} % of the time outside the measured generate windows")
    if extrapolated:
        console.print(f"  [yellow]≈ {extrapolated} trial(s) extrapolated[/] from another model of the same image, engine, "
                      "precision and work, scaled by parameters — an estimate of the order of magnitude; "
                      "`plan --calibrate` measures them")
    if unknown:
        console.print(f"  [yellow]{unknown} trial(s) of unknown cost[/]: no record of their cell on this host — "
                      "`orchestrate.py plan --calibrate` measures them (a few prompts each)")
        return None
    return sum(t[1] for t in total.values())


def cmd_plan(args) -> int:
    matrix, plan, trials = _plan(args)
    if args.calibrate:
        path = calibration_matrix(matrix, Path(args.results))
        argv = ["run", "--matrix", str(path), "--results", args.results, "--cache", args.cache,
                "--launcher", args.launcher]
        for f in ("runtime", "model", "setting"):
            for v in getattr(args, f) or ():
                argv += [f"--{f}", v]
        console.print(f"calibrating: every selected cell once on {CALIBRATION_PROMPTS} prompts ({path})")
        code = cmd_run(_args(argv + (["--build"] if args.build else [])))
        if code != 0:
            return code
    console.print(f"matrix {matrix.name} ({matrix.path}, sha256 {matrix.hash[:12]}), seed {matrix.seed}: "
                  f"{len(plan.cells)} cells × {matrix.repetitions} repetitions = {len(plan.trials)} trials"
                  + (f", {len(trials)} selected" if len(trials) != len(plan.trials) else ""))
    for x in plan.excluded:
        console.print(f"  not a cell: {escape(x)}")
    for m in matrix.models.values():  # a user's folder the containers cannot read: said now, not per failed trial
        problem = readability_problem(m.name, m.path) if m.source == "path" and m.path.is_dir() else None
        if problem:
            console.print(f"  [red]model not readable in the containers:[/] {escape(problem)}")
    print_budget(plan, trials, Path(args.results), args.launcher)
    if not args.quiet:
        for t in trials:
            console.print(f"  {t.order_index:5d}  {t.id}")
    return 0


def cmd_build(args) -> int:
    import os

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
    from orchestrator.docker_launcher import DockerLauncher

    client = DockerLauncher.connected("").client
    table = Table("runtime", "image", "id", "size (MB)", "build (s)")
    for rt in chosen:
        console.print(f"building {rt.image} from {rt.dockerfile.relative_to(REPO_ROOT)}")
        info = build(client, rt, log=lambda line: console.print(f"  {escape(line)}"), nocache=args.no_cache)
        table.add_row(rt.name, info["image"], info["id"][7:19], f"{info['size_mb']:.0f}", f"{info['build_s']:.1f}")
    console.print(table)
    return 0


def cmd_run(args) -> int:
    from orchestrator.execute import Executor

    matrix, plan, trials = _plan(args)
    run_id = args.run_id or matrix.name
    store = RunStore(args.results, run_id)
    store.open(matrix, [t.id for t in plan.trials])
    shard = None
    if getattr(args, "shard", None):
        from orchestrator.shard import parse

        index, count = parse(args.shard)
        sharding = run_sharding(store, plan, count)
        trials = sharding.trials(trials, index)
        shard = {"index": index, "count": count,
                 "models": sorted(m for m, i in sharding.models.items() if i == index)}
    # a sharded run's containers are its shard's: another shard's orchestrator on this node never removes them
    launcher = make_launcher(args.launcher, run_id if shard is None else f"{run_id}@shard{shard['index']}of{shard['count']}")
    reporter = Reporter(console)
    # the process launcher's runner reads models as this user; containers as the images' user
    cache = ModelCache(Path(args.cache), reader=None if launcher.name == "process" else CONTAINER_USER)
    from orchestrator.slurm import env_facts

    ex = Executor(plan, store, launcher, cache, reporter, retry_failed=getattr(args, "retry_failed", False),
                  node={"shard": shard, "slurm": env_facts()})
    sel = ex.select(trials)
    if shard is not None:
        console.print(f"shard {shard['index']}/{shard['count']}: models {', '.join(shard['models'])}")
    console.print(f"run {run_id} ({store.root}): matrix {matrix.name} sha256 {matrix.hash[:12]}, seed {matrix.seed}; "
                  f"{len(trials)} trials selected: {len(sel.done)} already recorded, {len(sel.skipped)} skipped, "
                  f"{len(sel.todo)} to run [{launcher.name}]")
    for reason, n in Counter(sel.skipped.values()).items():
        console.print(f"  [yellow]skipped {n} trial(s):[/] {escape(reason)}")
    if sel.todo and args.command == "run":  # the budget before the first trial (from this host's records)
        reporter.expected_s = print_budget(plan, sel.todo, Path(args.results), launcher.name)
    entry = {"command": args.command, "started_unix": time.time(), "launcher": launcher.name,
             "selected": len(trials), "already_recorded": len(sel.done), "skipped": sel.skipped, "counts": None,
             "interrupted": False, **ex.node}
    try:
        stale = launcher.remove_stale()
        if stale:
            console.print(f"  removed {len(stale)} container(s) left by an earlier, killed orchestrator")
        if sel.todo:
            ref = ex.reference_runtime()  # its image tokenises the same-work prompts of every model (prepare)
            launcher.ensure_ready({t.cell.runtime.spec for t in sel.todo} | ({ref.spec} if ref else set()),
                                  args.build, lambda line: console.print(escape(line)))
        unavailable, broken = ex.prepare(sel.todo) if sel.todo else ({}, {})
        if unavailable:  # like CUDA rows without a GPU: skipped, not failed — a host with the model runs them
            runnable = []
            for t in sel.todo:
                if t.cell.model.name in unavailable:
                    sel.skipped[t.id] = f"model not available: {unavailable[t.cell.model.name]}"
                else:
                    runnable.append(t)
            for name, reason in unavailable.items():
                n = sum(1 for t in sel.todo if t.cell.model.name == name)
                console.print(f"  [yellow]skipped {n} trial(s):[/] model not available: {escape(reason)}")
            sel.todo = runnable
        if args.command == "prepare":
            entry["counts"] = {"cells_not_runnable": len(broken)}
            console.print(f"prepare done: {len({t.cell.id for t in sel.todo})} cells, {len(broken)} not runnable")
            return 0
        entry["counts"] = counts = ex.run(sel.todo, broken)
        reporter.stop()
        _print_agreement(store, matrix.agreement)
        console.print(f"run {run_id}: {counts['ok']} ok, {counts['failed']} failed, "
                      f"{len(sel.skipped)} skipped this time; {len(sel.done)} were already "
                      f"recorded. `orchestrate.py status --run-id {run_id}` for the whole matrix.")
        if args.strict:
            failed = [t.id for t in trials if (store.record(t.id) or {}).get("status") == "failed"]
            if failed:
                console.print(f"[red]--strict: {len(failed)} failed trial(s)[/]: {', '.join(failed[:5])}")
                return 1
        return 0
    except KeyboardInterrupt:
        entry["interrupted"] = True
        raise
    finally:
        reporter.stop()
        ex.close()
        entry["ended_unix"] = time.time()
        store.log_invocation(entry)


def cmd_submit(args) -> int:
    from orchestrator import slurm

    matrix, plan, trials = _plan(args)
    run_id = args.run_id or matrix.name
    options = slurm.SubmitOptions(partition=args.partition, account=args.account, time=args.time,
                                  gpus_per_node=args.gpus_per_node, exclusive=not args.no_exclusive,
                                  sbatch_args=list(args.sbatch_arg), launcher=args.launcher)
    options.check()
    store = RunStore(args.results, run_id)
    if args.dry_run and not store.exists():  # nothing written: the sharding a submission would write
        from orchestrator.shard import assign

        sharding = assign(plan, args.shards or len(matrix.models))
    else:
        store.open(matrix, [t.id for t in plan.trials])
        sharding = run_sharding(store, plan, args.shards)
    records = store.records() if store.exists() else {}
    left = {i: [t for t in sharding.trials(plan.trials, i) if t.id not in records] for i in range(sharding.count)}
    active = {i: t for i, t in (slurm.current_tasks(store.slurm_dir) if store.exists() else {}).items()
              if t["state"] not in slurm.FINISHED and t["state"] != "UNKNOWN"}
    indices = [i for i in range(sharding.count) if left[i] and i not in active]
    table = Table("shard", "models", "trials", "left", "now")
    for i in range(sharding.count):
        models = sorted(m for m, k in sharding.models.items() if k == i)
        now = (f"{active[i]['state']} (job {active[i]['job_id']})" if i in active else
               "submit" if i in indices else "done")
        table.add_row(str(i), ", ".join(models), str(len(sharding.trials(plan.trials, i))), str(len(left[i])), now)
    console.print(f"run {run_id}: {len(plan.trials)} trials over {sharding.count} shard(s) (whole models per node)")
    console.print(table)
    if not indices:
        console.print("nothing to submit: every shard is finished or already queued/running")
        return 0
    script = slurm.batch_script(run_id=run_id, results=Path(args.results), cache=Path(args.cache),
                                shards=sharding.count, indices=indices, options=options)
    if args.dry_run:
        console.print(escape(script), markup=False)
        return 0
    path = store.slurm_dir / f"submit-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    job_id = slurm.sbatch(path)
    slurm.record_submission(store.slurm_dir, job_id, indices, sharding.count, path, options)
    console.print(f"submitted job array {job_id}: shard(s) {', '.join(map(str, indices))} of {sharding.count} "
                  f"(script {path}); follow with `orchestrate.py status --run-id {run_id}`")
    return 0


def _print_agreement(store, spec) -> None:
    from orchestrator.agreement import attach
    from runners.agreement import describe

    rows = attach(store, spec)
    if not rows:
        return
    table = Table(title=f"token agreement with {describe(spec)} (share of prompts identical, worst trial)")
    for col in ("model", "engine", "device", "precision", "setting", "trials", "identical", "same work?"):
        table.add_column(col)
    for r in rows:
        share = ("[red]no reference[/]" if r["no_reference"] else f"{100 * r['share_identical']:.0f} %")
        verdict = ("unknown" if r["no_reference"] else
                   f"[red]NOT THE SAME OUTPUT[/]: {escape(r['different_output'])}" if r["different_output"] else "yes")
        table.add_row(r["model"], r["engine"], r["device"], r["precision"], r.get("setting") or "", str(r["trials"]),
                      share, verdict)
    console.print(table)


def cmd_evaluate(args) -> int:
    from evaluation.evaluate import evaluate_run, read_evaluations
    from evaluation.sandbox import Sandbox
    from orchestrator.docker_launcher import DockerLauncher

    store = _existing_store(args)
    sandbox = Sandbox(DockerLauncher.connected("").client)
    facts = {**sandbox.ensure_image(args.build, log=lambda line: console.print(f"  {escape(line)}")),
             **sandbox.describe()}
    console.print(f"evaluating run {store.run_id} ({store.root}) in {facts['image']} ({facts['image_id'][7:19]})")
    counts = evaluate_run(store, sandbox, facts, log=lambda line: console.print(escape(line)))
    console.print(f"evaluate {store.run_id}: {counts['evaluated']} evaluated, {counts['already']} were already, "
                  f"{counts['not_evaluable']} not evaluable (not ok, or not HumanEval's full prompts)")
    evaluations = read_evaluations(store.root)
    if evaluations:
        table = Table("model", "engine", "device", "precision", "mode", "trials", "passed (per trial)")
        groups: dict[tuple, list[dict]] = {}
        for ev in evaluations.values():
            groups.setdefault((ev["model"], ev["engine"], ev["device"], ev["precision"], ev["mode"]), []).append(ev)
        for key, evs in sorted(groups.items()):
            table.add_row(*map(str, key), str(len(evs)), ", ".join(f"{e['passed']}/{e['total']}" for e in evs))
        console.print(table)
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
    plan = expand(matrix)
    records = store.records()
    run = store.read_run()
    last = run["invocations"][-1] if run["invocations"] else {}
    skipped = last.get("skipped") or {}
    table = Table("runtime", "engine", "setting", "ok", "failed", "left")
    rows: dict[tuple, Counter] = {}
    failures = []
    for t in plan.trials:
        key = (t.cell.runtime.name, t.cell.engine, t.cell.setting.name)
        rec = records.get(t.id)
        state = "left" if rec is None else rec["status"]
        rows.setdefault(key, Counter())[state if state != "ok" else "ok"] += 1
        if rec is not None and rec["status"] == "failed":
            failures.append((t.id, rec.get("error") or {}))
    totals = Counter()
    for key, c in rows.items():
        table.add_row(*key, str(c["ok"]), str(c["failed"]), str(c["left"]))
        totals.update(c)
    console.print(f"run {store.run_id} ({store.root}): matrix {matrix.name} sha256 {matrix.hash[:12]}, "
                  f"seed {matrix.seed}, {len(plan.trials)} trials: {totals['ok']} ok, {totals['failed']} failed, "
                  f"{totals['left']} left")
    console.print(table)
    if (store.slurm_dir / "sharding.json").is_file():
        _print_shards(store, plan, records)
    for tid, err in failures:
        console.print(f"  [red]failed[/] {tid}: [{escape(str(err.get('type')))}] "
                      f"{escape(str(err.get('message', ''))[:160])}")
    for reason, n in Counter(skipped.values()).items():
        console.print(f"  [yellow]skipped last time ({n}):[/] {escape(reason)}")
    return 0


def _print_shards(store: RunStore, plan, records: dict) -> None:
    """Per shard: its models, the nodes its records came from, done / failed / running / left, its Slurm task."""
    from orchestrator import slurm

    sharding = run_sharding(store, plan, None)
    tasks = slurm.current_tasks(store.slurm_dir)
    in_flight = {p.name for p in store.work_dir.iterdir()} if store.work_dir.is_dir() else set()
    wall: dict[int, float] = {}  # per shard: the wall time of its invocations (its node's time on the run)
    for e in store.read_run()["invocations"]:
        if (e.get("shard") or {}).get("count") == sharding.count and e.get("ended_unix") and e.get("started_unix"):
            wall[e["shard"]["index"]] = wall.get(e["shard"]["index"], 0.0) + e["ended_unix"] - e["started_unix"]
    table = Table("shard", "models", "node", "ok", "failed", "running", "left", "wall", "Slurm task")
    for i in range(sharding.count):
        mine = sharding.trials(plan.trials, i)
        recs = [records[t.id] for t in mine if t.id in records]
        task = tasks.get(i)
        live = task is not None and task["state"] == "RUNNING"
        running = sum(1 for t in mine if t.id not in records and t.id in in_flight and live)
        nodes = sorted({((r.get("host") or {}).get("node") or {}).get("hostname")
                        or (r.get("environment") or {}).get("hostname") or "?" for r in recs})
        if live and task["node"] and task["node"] not in nodes:
            nodes.append(f"{task['node']} (now)")
        table.add_row(str(i), ", ".join(sorted(m for m, k in sharding.models.items() if k == i)), ", ".join(nodes),
                      str(sum(r["status"] == "ok" for r in recs)), str(sum(r["status"] == "failed" for r in recs)),
                      str(running), str(len(mine) - len(recs) - running), clock(wall[i]) if i in wall else "",
                      "not submitted" if task is None else
                      f"{task['job_id']}_{i} {task['state']}" + (f" ({task['reason']})" if task["reason"] not in
                                                                   ("", "None") else ""))
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
