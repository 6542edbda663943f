"""What the CLI prints about a run besides its progress (orchestrator/ui.py): the budget, the token agreement, the
status per runtime and per shard, the Slurm submission, the evaluations — tables, with rich.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.ui import clock
from runners.record import Record


def print_budget(console: Console, plan, trials, results: Path, image_ids: dict[str, str] | None) -> float | None:
    """The budget table of the selected trials; returns the expected seconds when every cell is known. ``image_ids``
    (tag -> id of the built images, None where unknown) keeps records of an older build out."""
    from orchestrator.budget import estimate, host_samples

    rows = estimate(plan, trials, host_samples(Path(results)), image_ids)
    # "outside": the share of a trial's wall time outside its measured generate windows; "from": what the estimate
    # rests on, as a key into the notes below the table (one basis is shared by many rows)
    table = _fitting_table(("runtime", "model", "trials", "wall", "energy", "outside", "from"),
                           whole=("runtime", "model", "trials", "wall", "outside", "from"))
    bases: dict[str, str] = {}
    total = {"cpu": [0, 0.0, 0.0, 0.0], "cuda": [0, 0.0, 0.0, 0.0]}
    unknown = extrapolated = 0
    devices = {r.name: r.spec.device for r in plan.matrix.runtimes.values()}
    for e in sorted(rows, key=lambda e: (devices[e.runtime], e.runtime, e.model)):
        dev = devices[e.runtime]
        note = bases.setdefault(e.basis or "", f"[{len(bases) + 1}]")
        if not e.known:
            unknown += e.trials
            table.add_row(e.runtime, e.model, str(e.trials), "?", "?", "?", f"[yellow]{note}[/]")
            continue
        tot = total[dev]
        tot[0] += e.trials
        tot[1] += e.wall_s
        tot[2] += e.outside_s
        tot[3] += e.energy_j or 0.0
        mark = "≈ " if e.extrapolated else ""
        if e.extrapolated:
            extrapolated += e.trials
        table.add_row(e.runtime, e.model, str(e.trials), mark + clock(e.wall_s),
                      "?" if e.energy_j is None else f"{mark}{e.energy_j / 3.6e6:.3f} kWh {e.source}",
                      f"{100 * e.outside_s / e.wall_s:.0f} %", f"[yellow]{note}[/]" if e.extrapolated else note)
    console.print(table)
    for basis, note in bases.items():
        console.print(f"  {note} {escape(basis) or 'records of this cell'}", soft_wrap=False)
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


def _fitting_table(columns: tuple[str, ...], whole: tuple[str, ...]) -> Table:
    """A table whose ``whole`` columns are never cut (names a person must read: 'llamacpp-cpu', not 'llamacp…'); on
    a narrow terminal the other columns wrap instead."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for c in columns:
        table.add_column(c, no_wrap=c in whole, min_width=len(c) if c in whole else None, overflow="fold")
    return table


def print_agreement(console: Console, store) -> None:
    """Agreement attached to the run's ok records under the run's reference policy (run.json), and one row per
    configuration — the runtime (image) named beside the engine — with the verdict."""
    from orchestrator.agreement import attach

    policy = store.policy()
    rows = attach(store, policy)
    if not rows:
        return
    table = Table(title=f"token agreement with {policy.describe()} (share of prompts identical, worst trial)")
    # a run with batches > 1 also says how many prompts batching left as at batch 1 (the same configuration's)
    batched = any(r["batch_invariance"] is not None for r in rows)
    for col in ("model", "runtime", "engine", "device", "precision", "setting", "trials", "identical",
                *(("as at batch 1",) if batched else ()), "same work?"):
        table.add_column(col)
    for r in rows:
        share = ("n/a" if r["sampled"] else "[red]no reference[/]" if r["no_reference"] else
                 f"{100 * r['share_identical']:.0f} %")
        verdict = ("sampled: agreement not applicable" if r["sampled"] else "unknown" if r["no_reference"] else
                   f"[red]NOT THE SAME OUTPUT[/]: {escape(r['different_output'])}" if r["different_output"] else "yes")
        invariance = "" if r["batch_invariance"] is None else f"{100 * r['batch_invariance']:.0f} %"
        table.add_row(r["model"], r.get("runtime") or "", r["engine"], r["device"], r["precision"],
                      r.get("setting") or "", str(r["trials"]), share, *((invariance,) if batched else ()), verdict)
    console.print(table)


def print_status(console: Console, store, matrix, plan) -> None:
    """Done / failed / left per runtime × engine × setting, each failure's reason, and what was skipped last time."""
    records = {tid: Record(rec) for tid, rec in store.records().items()}
    invocations = store.read_run()["invocations"]
    skipped = (invocations[-1].get("skipped") if invocations else None) or {}
    table = Table("runtime", "engine", "setting", "ok", "failed", "left")
    rows: dict[tuple, Counter] = {}
    for t in plan.trials:
        rec = records.get(t.id)
        rows.setdefault((t.cell.runtime.name, t.cell.engine, t.cell.setting.name),
                        Counter())["left" if rec is None else rec.status] += 1
    totals: Counter = Counter()
    for key, c in rows.items():
        table.add_row(*key, str(c["ok"]), str(c["failed"]), str(c["left"]))
        totals.update(c)
    console.print(f"run {store.run_id} ({store.root}): matrix {matrix.name} sha256 {matrix.hash[:12]}, "
                  f"seed {matrix.seed}, {len(plan.trials)} trials: {totals['ok']} ok, {totals['failed']} failed, "
                  f"{totals['left']} left")
    console.print(table)
    if (store.slurm_dir / "sharding.json").is_file():
        print_shards(console, store, plan, records)
    for t in plan.trials:
        rec = records.get(t.id)
        if rec is not None and rec.status == "failed":
            err = rec.error or {}
            console.print(f"  [red]failed[/] {t.id}: [{escape(str(err.get('type')))}] "
                          f"{escape(str(err.get('message', ''))[:160])}")
    for reason, n in Counter(skipped.values()).items():
        console.print(f"  [yellow]skipped last time ({n}):[/] {escape(reason)}")


def print_shards(console: Console, store, plan, records: dict[str, Record]) -> None:
    """Per shard: its models, the nodes its records came from, done / failed / running / left, its Slurm task."""
    from orchestrator import slurm
    from orchestrator.shard import run_sharding

    sharding = run_sharding(store, plan, None)
    tasks = slurm.current_tasks(store.slurm_dir)
    in_flight = {p.name for p in store.work_dir.iterdir()} if store.work_dir.is_dir() else set()
    wall = shard_walls(store.read_run()["invocations"], sharding.count)
    table = Table("shard", "models", "node", "ok", "failed", "running", "left", "wall", "Slurm task")
    for i in range(sharding.count):
        mine = sharding.trials(plan.trials, i)
        recs = [records[t.id] for t in mine if t.id in records]
        task = tasks.get(i)
        live = task is not None and task["state"] == "RUNNING"
        running = sum(1 for t in mine if t.id not in records and t.id in in_flight and live)
        nodes = sorted({r.hostname or "?" for r in recs})
        if live and task["node"] and task["node"] not in nodes:
            nodes.append(f"{task['node']} (now)")
        table.add_row(str(i), ", ".join(sorted(m for m, k in sharding.models.items() if k == i)), ", ".join(nodes),
                      str(sum(r.status == "ok" for r in recs)), str(sum(r.status == "failed" for r in recs)),
                      str(running), str(len(mine) - len(recs) - running), clock(wall[i]) if i in wall else "",
                      _task_text(task, i))
    console.print(table)


def shard_walls(invocations: list[dict[str, Any]], count: int) -> dict[int, float]:
    """Per shard of a sharding into ``count``: the wall time of its invocations (its node's time on the run)."""
    wall: dict[int, float] = {}
    for e in invocations:
        shard = e.get("shard")
        if shard and shard.get("count") == count and e.get("ended_unix") and e.get("started_unix"):
            wall[shard["index"]] = wall.get(shard["index"], 0.0) + e["ended_unix"] - e["started_unix"]
    return wall


def _task_text(task: dict[str, Any] | None, index: int) -> str:
    if task is None:
        return "not submitted"
    reason = f" ({task['reason']})" if task["reason"] not in ("", "None") else ""
    return f"{task['job_id']}_{index} {task['state']}{reason}"


def print_submission(console: Console, run_id: str, plan, todo) -> None:
    """The shards of a Slurm submission (orchestrator.slurm.Pending): their models, trials, what is left, and what
    happens to each now."""
    sharding = todo.sharding
    table = Table("shard", "models", "trials", "left", "now")
    for i in range(sharding.count):
        models = sorted(m for m, k in sharding.models.items() if k == i)
        now = (f"{todo.active[i]['state']} (job {todo.active[i]['job_id']})" if i in todo.active else
               "submit" if i in todo.indices else "done")
        table.add_row(str(i), ", ".join(models), str(len(sharding.trials(plan.trials, i))), str(len(todo.left[i])),
                      now)
    console.print(f"run {run_id}: {len(plan.trials)} trials over {sharding.count} shard(s) (whole models per node)")
    console.print(table)


def print_evaluations(console: Console, evaluations: dict[str, dict[str, Any]]) -> None:
    """pass/total per trial, grouped by model × configuration × mode."""
    if not evaluations:
        return
    table = Table("model", "engine", "device", "precision", "mode", "trials", "passed (per trial)")
    groups: dict[tuple, list[dict]] = {}
    for ev in evaluations.values():
        groups.setdefault((ev["model"], ev["engine"], ev["device"], ev["precision"], ev["mode"]), []).append(ev)
    for key, evs in sorted(groups.items()):
        table.add_row(*map(str, key), str(len(evs)), ", ".join(f"{e['passed']}/{e['total']}" for e in evs))
    console.print(table)


def print_reproduction(console: Console, rows: list[dict], original: str) -> None:
    """Per cell of a reproduction: tokens identical, time and energy against the original (ratio of medians with its
    interval, inside its range?), what differs of the host, the verdict."""
    def ratio(f: dict) -> str:
        if f.get("ratio") is None:
            return escape(f.get("note") or "—")
        ci = "" if f.get("low") is None else f" [{f['low']:.2f}, {f['high']:.2f}]"
        inside = {True: ", in range", False: ", OUT of range", None: ""}[f.get("within_original_range")]
        return f"×{f['ratio']:.2f}{ci}{inside}"

    table = Table(title=f"reproduction of {original}: against the original's trials of each cell")
    for col in ("cell", "trials", "tokens identical", "time", "energy", "host differs", "verdict"):
        table.add_column(col)
    for r in rows:
        share = "—" if r["tokens_identical"] is None else f"{100 * r['tokens_identical']:.0f} %"
        table.add_row(escape(str(r["cell"])), f"{r['trials']} vs {r['original_trials']}", share, ratio(r["time"]),
                      ratio(r["energy"]), escape(", ".join(r["host_differences"]) or "—"), r["verdict"])
    console.print(table)
