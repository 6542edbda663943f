"""One `run` or `prepare` of a matrix: its store, its shard, its launcher and executor, what it prints, and its
invocation file — whether the CLI asked for it or `plan --calibrate` (orchestrator/calibrate.py) did.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from orchestrator.launchers import make_launcher
from orchestrator.models import CONTAINER_USER, ModelCache
from orchestrator.power_cap import recover
from orchestrator.run_lock import RunLock
from orchestrator.store import RunStore, no_space
from orchestrator.summary import print_agreement, print_budget
from orchestrator.ui import Reporter
from runners.record import Record


@dataclass
class RunOptions:
    results: Path
    cache: Path
    command: str = "run"  # "run" | "prepare" (models and conversions only)
    run_id: str | None = None  # default: the matrix's name
    launcher: str = "docker"
    build: bool = False  # build the needed images first
    retry_failed: bool = False
    strict: bool = False  # exit 1 when a selected trial is recorded as failed
    shard: str | None = None  # "i/N"
    break_lock: bool = False  # take the run's lock even from a holder that may still run (another host)


def run(matrix, plan, trials: list, opts: RunOptions, console: Console) -> int:
    """Run (or prepare) the selected trials of the plan; the exit status. One orchestrator per run (or per shard):
    orchestrator/run_lock.py."""
    run_id = opts.run_id or matrix.name
    store = RunStore(opts.results, run_id)
    store.open(matrix, [t.id for t in plan.trials])
    trials, shard = _shard(store, plan, trials, opts.shard)
    lock = RunLock(store.root, shard, break_lock=opts.break_lock,
                   note=lambda line: console.print(f"[yellow]{escape(line)}[/]")).acquire()
    try:
        return _run_locked(store, plan, trials, shard, opts, console,
                           {"lock": {"scope": lock.scope, "took_over": lock.taken_over}})
    finally:
        lock.release()


def _run_locked(store: RunStore, plan, trials: list, shard: dict[str, Any] | None, opts: RunOptions,
                console: Console, entry: dict[str, Any]) -> int:
    from orchestrator.execute import Executor
    from orchestrator.slurm import env_facts

    matrix, run_id = plan.matrix, store.run_id
    # a sharded run's containers are its shard's: another shard's orchestrator on this node never removes them; nor
    # does an orchestrator of the same run id in another results folder (another checkout)
    launcher = make_launcher(opts.launcher, run_id if shard is None else
                             f"{run_id}@shard{shard['index']}of{shard['count']}", store.root)
    reporter = Reporter(console)
    # the process launcher's runner reads models as this user; containers as the images' user
    cache = ModelCache(Path(opts.cache), reader=None if launcher.name == "process" else CONTAINER_USER)
    ex = Executor(plan, store, launcher, cache, reporter, retry_failed=opts.retry_failed,
                  node={"shard": shard, "slurm": env_facts()})
    entry["power_cap_recovered"] = recover(ex.cap_note)  # GPU limits a killed orchestrator left capped, restored
    for line in entry["power_cap_recovered"]:
        console.print(f"[yellow]{escape(line)}[/]")
    entry["set_aside"] = set_aside = store.set_aside_invalid([t.id for t in trials])
    for trial_id, moved in set_aside.items():
        console.print(f"[yellow]record of {trial_id} is invalid[/] ({escape(moved['reason'])}): moved to "
                      f"{escape(moved['moved_to'])}; the trial runs again")
    sel = ex.select(trials)
    if shard is not None:
        console.print(f"shard {shard['index']}/{shard['count']}: models {', '.join(shard['models'])}")
    console.print(f"run {run_id} ({store.root}): matrix {matrix.name} sha256 {matrix.hash[:12]}, seed {matrix.seed}; "
                  f"{len(trials)} trials selected: {len(sel.done)} already recorded, {len(sel.skipped)} skipped, "
                  f"{len(sel.todo)} to run [{launcher.name}]")
    for reason, n in Counter(sel.skipped.values()).items():
        console.print(f"  [yellow]skipped {n} trial(s):[/] {escape(reason)}")
    if sel.todo and opts.command == "run":  # the budget before the first trial (from this host's records)
        reporter.expected_s = print_budget(console, plan, sel.todo, opts.results,
                                           built_image_ids(launcher.name, [t.cell.runtime.spec for t in sel.todo]))
    entry.update({"command": opts.command, "started_unix": time.time(), "launcher": launcher.name,
                  "selected": len(trials), "already_recorded": len(sel.done), "skipped": sel.skipped,
                  "counts": None, "interrupted": False, **ex.node})
    try:
        broken = ex.prepare(sel, opts.build)
        if opts.command == "prepare":
            entry["counts"] = {"cells_not_runnable": len(broken)}
            console.print(f"prepare done: {len({t.cell.id for t in sel.todo})} cells, {len(broken)} not runnable")
            return 0
        entry["counts"] = counts = ex.run(sel.todo, broken)
        reporter.stop()
        print_agreement(console, store)
        console.print(f"run {run_id}: {counts['ok']} ok, {counts['failed']} failed, "
                      f"{len(sel.skipped)} skipped this time; {len(sel.done)} were already "
                      f"recorded. `orchestrate.py status --run-id {run_id}` for the whole matrix.")
        return _strict(store, trials, console) if opts.strict else 0
    except KeyboardInterrupt:
        entry["interrupted"] = True
        raise
    finally:
        reporter.stop()
        ex.close()
        entry["ended_unix"] = time.time()
        _log_invocation(store, entry, console)


def _log_invocation(store: RunStore, entry: dict[str, Any], console: Console) -> None:
    """The invocation's file; on a full results file system only a warning (the run's own error says what to do)."""
    try:
        store.log_invocation(entry)
    except OSError as e:
        if not no_space(e):
            raise
        console.print(f"[yellow]this invocation's file could not be written[/] ({escape(str(e))})")


def _shard(store: RunStore, plan, trials: list, shard: str | None) -> tuple[list, dict[str, Any] | None]:
    """The selected trials of shard "i/N" (whole models, the run's sharding), and the shard's facts; all of them and
    None without a shard."""
    if not shard:
        return trials, None
    from orchestrator.shard import parse, run_sharding

    index, count = parse(shard)
    sharding = run_sharding(store, plan, count)
    return sharding.trials(trials, index), {"index": index, "count": count,
                                            "models": sorted(m for m, i in sharding.models.items() if i == index)}


def _strict(store: RunStore, trials: list, console: Console) -> int:
    """--strict: 1 when any selected trial is recorded as failed."""
    failed = [t.id for t in trials if (r := Record.read(store.trial_path(t.id))) is not None and r.status == "failed"]
    if failed:
        console.print(f"[red]--strict: {len(failed)} failed trial(s)[/]: {', '.join(failed[:5])}")
        return 1
    return 0


def built_image_ids(launcher_name: str, runtimes) -> dict[str, str] | None:
    """Tag -> id of the runtimes' images built on this host's Docker engine (a runtime not built has none), so the
    budget does not read records of an older build; None where there is no Docker engine (records are then matched
    by tag only)."""
    if launcher_name != "docker":
        return None
    try:
        from orchestrator.docker_layer import connected, local_image

        client = connected()
        found = {r.image: local_image(client, r.image) for r in set(runtimes)}
    except Exception:  # no Docker here (or it fails): records are matched by image tag only
        return None
    return {tag: image.id for tag, image in found.items() if image is not None}
