"""Prepare (orchestrator/prepare.py) and run the trials of a plan, one at a time, whatever the launcher.

Per trial: cooldown (GPUs back near their idle temperature, bounded) → host idle baseline (measured, or re-used after
a check: orchestrator/idle.py) → launch the runner under the host meters' "container" window → decide ok/failed from
the exit facts and meter the runner's windows with the host's counters → the record, with what the host learned
(orchestrator/host_facts.py) merged once as its ``host`` block, written atomically. A failed trial is recorded with its reason and the matrix goes on; Ctrl-C stops the trial in flight (its
container is removed) and loses nothing finished; a trial whose Docker engine went away is run again once the engine
answers (orchestrator/engine_watch.py).
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape

from orchestrator.engine_watch import ENGINE_WAIT_S, EngineWatch, EngineWentAway, engine_failures
from orchestrator.host_facts import HostFacts, judge
from orchestrator.images import Runtime, stale_problem
from orchestrator.launch import LaunchSpec
from orchestrator.models import ModelCache
from orchestrator.plan import Cell, Plan, Trial
from orchestrator.power_cap import CapFailed, PowerCap, note_path, problem, requested_w, setting_field
from orchestrator.prepare import Preparer, cell_job
from orchestrator.store import RunStore, failed_record


@dataclass
class Selection:
    """What this invocation does with the selected trials."""
    todo: list[Trial] = field(default_factory=list)
    done: list[Trial] = field(default_factory=list)  # already recorded (ok, or failed and not retried)
    skipped: dict[str, str] = field(default_factory=dict)  # trial id -> why it cannot run on this host


class Executor:
    def __init__(self, plan: Plan, store: RunStore, launcher, cache: ModelCache, reporter, *,
                 retry_failed: bool = False, node: dict[str, Any] | None = None):
        self.plan = plan
        self.store = store
        self.launcher = launcher
        self.cache = cache
        self.ui = reporter
        self.retry_failed = retry_failed
        self._gpu_problem: str | None | bool = False  # False: not asked yet
        self._meters = None
        self.idle_temps: dict[int, float] = {}
        self.baseline = None  # orchestrator.idle.IdleBaseline, with the meters
        self.node = node or {}  # {shard, slurm}: where on a cluster this invocation runs, for every record
        self.cap_note = note_path(store.root, self.node.get("shard"))  # orchestrator/power_cap.py
        # (watts, GPU indices) -> why this host cannot cap those GPUs at that
        self._cap_problems: dict[tuple[int, tuple[int, ...]], str | None] = {}
        self.preparer = Preparer(self)
        client = getattr(launcher, "client", None)  # the Docker launcher's engine (none for the process launcher)
        self._watch = EngineWatch(client) if client is not None else None

    # --- what to do ---------------------------------------------------------------------------------------------
    def gpu_problem(self) -> str | None:
        if self._gpu_problem is False:
            self._gpu_problem = self.launcher.gpu_problem()
        return self._gpu_problem  # type: ignore[return-value]

    def select(self, trials: list[Trial]) -> Selection:
        sel = Selection()
        for t in trials:
            rec = self.store.record(t.id)
            if rec is not None and (rec["status"] == "ok" or not self.retry_failed):
                sel.done.append(t)
            elif t.cell.runtime.spec.gpu and self.gpu_problem():
                sel.skipped[t.id] = f"{t.cell.runtime.name} needs a GPU: {self.gpu_problem()}"
            elif self.gpus_problem(t.cell):
                sel.skipped[t.id] = f"{t.cell.setting.name} runs on several GPUs: {self.gpus_problem(t.cell)}"
            elif self.cap_problem(t.cell):
                sel.skipped[t.id] = f"{t.cell.setting.name} caps the GPU power: {self.cap_problem(t.cell)}"
            else:
                sel.todo.append(t)
        return sel

    def cap_problem(self, cell: Cell) -> str | None:
        """Why this host cannot set the cell's GPU power cap (its trials are skipped, never run uncapped); None when
        it can or the cell asks for none. A cap outside the GPUs' range stops the run (MatrixError, with the range)."""
        watts = requested_w(cell.setting, cell.runtime.spec.gpu)
        if watts is None:
            return None
        key = (watts, tuple(self.trial_indices(cell)))
        if key not in self._cap_problems:
            self._cap_problems[key] = problem(list(key[1]), watts, str(self.plan.matrix.path),
                                              setting_field(cell.setting))
        return self._cap_problems[key]

    def prepare(self, sel: Selection, build: bool) -> dict[str, str]:
        """Before the first trial: leftovers of a killed orchestrator removed, images ready, models and conversions
        prepared. The trials of a model this host cannot get move from todo to skipped (like CUDA rows without a
        GPU: not failed — a host that has the model runs them later). Returns {cell id: reason} of the cells that
        cannot run (their trials are recorded as failed without being launched)."""
        stale = self.launcher.remove_stale()
        if stale:
            self.ui.note(f"  removed {len(stale)} container(s) left by an earlier, killed orchestrator")
        if not sel.todo:
            return {}
        ref = self.preparer.reference_runtime()  # its image tokenises the same-work prompts of every model
        runtimes = {t.cell.runtime.spec for t in sel.todo} | ({ref.spec} if ref else set())
        self.launcher.ensure_ready(runtimes, build, lambda line: self.ui.note(escape(line)))
        for runtime in sorted(runtimes, key=lambda r: r.name) if self._watch else ():  # Docker images only
            problem = stale_problem(self._watch.client, runtime)
            if problem:
                self.ui.note(f"[yellow]{escape(problem)}[/]")
        unavailable, broken = self.preparer.prepare(sel.todo)
        for name, reason in unavailable.items():
            skipped = [t for t in sel.todo if t.cell.model.name == name]
            sel.skipped.update({t.id: f"model not available: {reason}" for t in skipped})
            self.ui.note(f"  [yellow]skipped {len(skipped)} trial(s):[/] model not available: {escape(reason)}")
        sel.todo = [t for t in sel.todo if t.cell.model.name not in unavailable]
        return broken

    # --- launching -------------------------------------------------------------------------------------------------
    def meters(self):
        """The host's meters (opened once, with the GPUs' idle temperatures and the idle baseline's policy)."""
        if self._meters is None:
            from orchestrator.idle import IdleBaseline
            from runners.job import MeterSpec
            from runners.meters import MeterSet, rapl

            spec = self.plan.matrix.job["meters"]
            host = self.plan.matrix.host
            # the host's window spans the whole container: keep its summary, not a series hours long
            self._meters = MeterSet.create(MeterSpec(
                sample_interval_s=float(spec.get("sample_interval_s", 0.1)),
                codecarbon=bool(spec.get("codecarbon", True)),
                country_iso_code=spec.get("country_iso_code", "USA"), keep_series=False,
                rapl_root=host["rapl_root"], trace_interval_s=host["trace_interval_s"]))
            reason = self._meters.reasons.get("rapl")
            if rapl.unreadable(reason):  # a counter we could use but may not read: never fall back silently
                self.ui.note(f"[red]RAPL counters exist but cannot be read — CPU/DRAM energy will be ESTIMATED:[/] "
                             f"{reason}")
            self.idle_temps = self._meters.gpu_temperatures()
            self.baseline = IdleBaseline(self._meters, host)
        return self._meters

    def trial_indices(self, cell: Cell) -> list[int]:
        """The host indices of the GPUs a CUDA cell runs on: the first ``gpus`` (default 1) of [host] gpus; none for
        a CPU cell."""
        if not cell.runtime.spec.gpu:
            return []
        return self.plan.matrix.host["gpus"][:cell.setting.axes.get("gpus", 1)]

    def trial_gpus(self, cell: Cell) -> dict[str, int]:
        """{NVML UUID: host index} of the trial's GPUs this host has (trial_indices), in that order."""
        found = {g.index: g for g in self.meters().gpus} if cell.runtime.spec.gpu else {}
        return {(found[i].uuid or str(i)): i for i in self.trial_indices(cell) if i in found}

    def gpus_problem(self, cell: Cell) -> str | None:
        """Why this host cannot give a cell of several GPUs all of them (its trials are skipped, never run on
        fewer); None when it can or the cell asks for one."""
        wanted = self.trial_indices(cell)
        if len(wanted) < 2:
            return None
        found = self.trial_gpus(cell)
        missing = [i for i in wanted if i not in found.values()]
        return (f"it asks for GPUs {wanted} of [host] gpus, and NVML finds no GPU {missing} on this host "
                f"({len(self.meters().gpus)} found)") if missing else None

    def job(self, cell: Cell) -> tuple[dict[str, Any], dict[str, int]]:
        """The cell's job, its meters told which GPUs are the trial's own; and those GPUs, for the launcher."""
        job = cell_job(self.plan, cell, self.cache)
        gpus = self.trial_gpus(cell)
        if gpus:
            job["meters"]["gpus"] = gpus
        return job, gpus

    def spec(self, name: str, runtime: Runtime, mode: str, job: dict[str, Any], limits: dict[str, Any],
             gpus: dict[str, int]) -> LaunchSpec:
        """One runner invocation of this run: its work folder, its log, its container limits."""
        return LaunchSpec(name=name, runtime=runtime, mode=mode, job=job, work=self.store.work(name),
                          log_path=self.store.log_path(name), timeout_s=limits["timeout_s"],
                          mem_limit=limits["mem_limit"], cpus=limits["cpus"], shm_size=limits["shm_size"],
                          gpus=gpus)

    def launch(self, spec: LaunchSpec, cell: Cell) -> tuple[dict[str, Any], HostFacts]:
        """Run it under the host meters: the record judged and metered by the host's counters within the cell's
        boundary, and the host's facts of the launch (not merged yet: a trial adds its own)."""
        from orchestrator import host_energy

        outcome = self.launcher.run(spec, self.meters())
        if spec.mode == "run" and outcome.facts.get("image_id"):  # a trial's record names the image it ran in
            spec.job["trial"]["image_id"] = outcome.facts["image_id"]
        record = judge(outcome, spec.job, spec, spec.mode)
        keep = host_energy.trial_boundary(cell.runtime.spec.device, self.trial_indices(cell))
        facts = HostFacts.launched(outcome, spec, self.store.root, record,
                                   container=host_energy.restrict(outcome.window, keep))
        return {**record, **host_energy.apply(record, outcome.trace, keep)}, facts

    def close(self) -> None:
        if self._meters is not None:
            self._meters.close()
            self._meters = None

    # --- run ------------------------------------------------------------------------------------------------------------
    def run(self, todo: list[Trial], broken: dict[str, str]) -> dict[str, int]:
        counts = {"ok": 0, "failed": 0}
        self.ui.start(len(todo))
        for t in todo:
            self.ui.trial_started(t)
            if t.cell.id in broken:
                record = self._not_launched(t, "prepare", "PrepareFailed", broken[t.cell.id])
            else:
                record = self.run_trial(t)
            counts[record["status"]] += 1
            self.ui.trial_finished(t, record)
        return counts

    def _not_launched(self, t: Trial, phase: str, error_type: str, message: str) -> dict[str, Any]:
        """The failed record of a trial that could not be launched (nothing was measured), written."""
        job = cell_job(self.plan, t.cell, self.cache)
        job["trial"] = self._bookkeeping(t)
        record = failed_record(job, phase, error_type, message)
        record["host"] = None
        self.store.write_trial(t.id, record)
        return record

    def _bookkeeping(self, t: Trial) -> dict[str, Any]:
        m = self.plan.matrix
        return {"run_id": self.store.run_id, "trial_id": t.id, "cell_id": t.cell.id, "runtime": t.cell.runtime.name,
                "engine": t.cell.engine, "model": t.cell.model.name, "setting": t.cell.setting.name,
                "repetition": t.repetition, "order_index": t.order_index, "seed": m.seed, "matrix_hash": m.hash,
                "matrix_name": m.name, "model_params_b": t.cell.model.params_b, "size_group": t.cell.model.group,
                "image": self.launcher.image_of(t.cell.runtime.spec),
                # a sweep's point: the setting it came from and its axis values (the curves' x values)
                **({"sweep_of": t.cell.setting.sweep_of, "axes": dict(t.cell.setting.axes)}
                   if t.cell.setting.sweep_of else {})}

    def run_trial(self, t: Trial) -> dict[str, Any]:
        """Run and record one trial; a trial whose Docker engine went away is not recorded but run again, once,
        when the engine answers again (orchestrator/engine_watch.py)."""
        for attempt in (1, 2):
            try:
                return self._run_trial_once(t)
            except EngineWentAway as e:
                note = lambda line: self.ui.note(escape(line))  # noqa: E731
                note(f"{e}: the trial is not recorded")
                stale = None if attempt == 2 else self._engine_back(note)
                if stale is None:
                    raise EngineWentAway(f"{e}, and {'it went away again' if attempt == 2 else 'it did not answer'}"
                                         f" within {ENGINE_WAIT_S:.0f} s: {t.id} is not recorded — every finished "
                                         "trial is; once `docker info` answers, run the same command again") from e
                note(f"  the engine answers again: removed {len(stale)} container(s) of this run; running {t.id} "
                     "again")
        raise AssertionError("unreachable")

    def _engine_back(self, note) -> list[str] | None:
        """Wait for the engine and remove what is left of the run's containers; their ids, or None when it does
        not come back within ENGINE_WAIT_S. A stopping dockerd still answers for a moment: an answer is only trusted
        once the clean-up went through."""
        deadline = time.monotonic() + ENGINE_WAIT_S
        time.sleep(5)  # let a stopping engine finish stopping
        while self._watch.wait_back(deadline - time.monotonic(), note):
            try:
                return self.launcher.remove_stale()
            except engine_failures():  # it was the old engine, going
                time.sleep(2)
        return None

    def _run_trial_once(self, t: Trial) -> dict[str, Any]:
        cap = PowerCap(self.cap_note, self.trial_indices(t.cell),
                       requested_w(t.cell.setting, t.cell.runtime.spec.gpu), t.id)
        try:
            with cap:  # set before the cooldown and the idle baseline; restored however the trial ends
                record, spec = self._measure(t)
        except CapFailed as e:
            return self._not_launched(t, "power_cap", "PowerCapFailed", str(e))
        if cap.restore_error:
            self.ui.note(f"[red]the GPU power limit could not be restored:[/] {escape(cap.restore_error)} — the "
                         f"next start restores it from {escape(str(self.cap_note))}")
        record["host"].update(cap.block())
        self.store.write_trial(t.id, record)
        shutil.rmtree(spec.work, ignore_errors=True)
        return record

    def _measure(self, t: Trial) -> tuple[dict[str, Any], LaunchSpec]:
        """Cooldown, idle baseline and the launch of one trial: its record with the host block (not written yet)."""
        from orchestrator.host_energy import restrict_idle, trial_boundary

        meters = self.meters()
        trial_start = time.time()
        cooldown = self._cooldown(meters)
        idle = restrict_idle(self.baseline.for_trial(),
                             trial_boundary(t.cell.runtime.spec.device, self.trial_indices(t.cell)))
        job, gpus = self.job(t.cell)
        job["trial"] = self._bookkeeping(t)
        spec = self.spec(t.id, t.cell.runtime.spec, "run", job,
                         self.plan.matrix.container_for(t.cell.runtime, t.cell.model), gpus)
        begin = time.time()
        record, facts = self._launch_watched(spec, t)
        facts.idle, facts.meters, facts.cooldown = idle, meters.describe(), cooldown
        facts.begin_unix, facts.trial_start_unix = begin, trial_start
        facts.node = {"hostname": socket.gethostname(), **self.node}
        facts.recorded_unix = time.time()
        record["host"] = facts.as_dict()
        return record, spec

    def _launch_watched(self, spec: LaunchSpec, t: Trial) -> tuple[dict[str, Any], HostFacts]:
        """launch(), EngineWentAway when the Docker engine went away under the trial (a connection error out of it,
        or a failed trial after which the engine does not answer or is another dockerd)."""
        if self._watch is None:
            return self.launch(spec, t.cell)
        self._watch.mark()
        try:
            record, facts = self.launch(spec, t.cell)
        except engine_failures() as e:
            gone = self._watch.went_away()
            raise EngineWentAway(f"{gone or f'the Docker engine failed ({e})'} while {t.id} ran") from e
        gone = self._watch.went_away() if record.get("status") == "failed" else None
        if gone:
            raise EngineWentAway(f"{gone} while {t.id} ran")
        return record, facts

    def _cooldown(self, meters) -> dict[str, Any]:
        """Wait until every GPU is within the margin of its idle temperature (taken when the run started)."""
        if not self.idle_temps:
            return {"waited_s": 0.0, "reached": None, "reason": "no GPU temperature sensor (NVML) on this host"}
        m = self.plan.matrix.host
        t0 = time.monotonic()
        while True:
            temps = meters.gpu_temperatures()
            hot = {i: c for i, c in temps.items() if c > self.idle_temps.get(i, c) + m["cooldown_margin_c"]}
            waited = time.monotonic() - t0
            if not hot or waited >= m["cooldown_max_s"]:
                return {"waited_s": waited, "reached": not hot, "temps_c": temps, "idle_temps_c": self.idle_temps,
                        "margin_c": m["cooldown_margin_c"], "max_s": m["cooldown_max_s"]}
            time.sleep(1.0)
