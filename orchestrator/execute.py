"""Prepare and run the trials of a plan, one at a time, whatever the launcher.

Per trial: cooldown (GPUs back near their idle temperature, bounded) → host idle baseline (measured, or re-used after
a check: orchestrator/idle.py) → launch the runner under
the host meters' "container" window → decide ok/failed from the exit facts → record (with ``host``) written
atomically. A failed trial is recorded with its reason and the matrix goes on; Ctrl-C stops the trial in flight (its
container is removed) and loses nothing finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.launch import LaunchSpec, Outcome
from orchestrator.models import ModelCache, ModelUnavailable
from orchestrator.plan import Cell, Plan, Trial
from orchestrator.store import RunStore, failed_record
from runners.record import write_json_atomic


@dataclass
class Selection:
    """What this invocation does with the selected trials."""
    todo: list[Trial] = field(default_factory=list)
    done: list[Trial] = field(default_factory=list)  # already recorded (ok, or failed and not retried)
    skipped: dict[str, str] = field(default_factory=dict)  # trial id -> why it cannot run on this host


def inputs_path(plan: Plan, model: str, workload: dict[str, Any]) -> str:
    """Where a model's inputs file (its workload's prompt ids, runners/workload.py) lives, relative to the engine
    cache: one per model × workload × reference, so every cell of a model reads the same ids."""
    from runners.agreement import policy

    ref = policy(plan.matrix.agreement)
    key = json.dumps([model, workload, ref["engine"], ref["devices"]], sort_keys=True)
    return f"inputs/{model}/{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cell_job(plan: Plan, cell: Cell, cache: ModelCache) -> dict[str, Any]:
    from orchestrator.matrix import job_body

    job = job_body(plan.matrix, cell.runtime, cell.engine, cell.model, cell.setting, cache.job_model(cell.model))
    job["cache_dir"] = str(cache.engines)
    job["seed"] = plan.matrix.seed
    if job["generation"].get("fixed_length", True):  # same work: the ids the reference's image made (prepare)
        job["inputs"] = inputs_path(plan, cell.model.name, job["workload"])
    return job


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
        self.meters = None
        self.idle_temps: dict[int, float] = {}
        self.baseline = None  # orchestrator.idle.IdleBaseline, with the meters
        self.node = node or {}  # {shard, slurm}: where on a cluster this invocation runs, for every record

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
            else:
                sel.todo.append(t)
        return sel

    def _meters(self):
        if self.meters is None:
            from runners.job import MeterSpec
            from runners.meters import MeterSet, rapl

            spec = self.plan.matrix.job["meters"]
            host = self.plan.matrix.host
            # the host's window spans the whole container: keep its summary, not a series hours long
            self.meters = MeterSet.create(MeterSpec(
                sample_interval_s=float(spec.get("sample_interval_s", 0.1)),
                codecarbon=bool(spec.get("codecarbon", True)),
                country_iso_code=spec.get("country_iso_code", "USA"), keep_series=False,
                rapl_root=host["rapl_root"], trace_interval_s=host["trace_interval_s"]))
            reason = self.meters.reasons.get("rapl")
            if rapl.unreadable(reason):  # a counter we could use but may not read: never fall back silently
                self.ui.note(f"[red]RAPL counters exist but cannot be read — CPU/DRAM energy will be ESTIMATED:[/] "
                             f"{reason}")
            self.idle_temps = self.meters.gpu_temperatures()
            from orchestrator.idle import IdleBaseline

            self.baseline = IdleBaseline(self.meters, self.plan.matrix.host)
        return self.meters

    def trial_gpus(self, cell: Cell) -> dict[str, int]:
        """{NVML UUID: host index} of the GPUs a CUDA cell runs on ([host] gpus); empty for a CPU cell."""
        if not cell.runtime.spec.gpu:
            return {}
        wanted = self.plan.matrix.host["gpus"]
        return {(g.uuid or str(g.index)): g.index for g in self._meters().gpus if g.index in wanted}

    def _job(self, cell: Cell) -> tuple[dict[str, Any], dict[str, int]]:
        """The cell's job, its meters told which GPUs are the trial's own; and those GPUs, for the launcher."""
        job = cell_job(self.plan, cell, self.cache)
        gpus = self.trial_gpus(cell)
        if gpus:
            job["meters"]["gpus"] = gpus
        return job, gpus

    def _keep(self, cell: Cell):
        from orchestrator.host_energy import trial_boundary

        return trial_boundary(cell.runtime.spec.device, self.plan.matrix.host["gpus"])

    def _host_energy(self, record: dict[str, Any], outcome: Outcome, cell: Cell) -> None:
        """The trial's boundary on the host's figures, and the host's counters on the runner's windows."""
        from orchestrator import host_energy

        keep = self._keep(cell)
        record["host"]["container"] = host_energy.restrict(record["host"]["container"], keep)
        host_energy.apply(record, outcome.trace, keep)

    def close(self) -> None:
        if self.meters is not None:
            self.meters.close()
            self.meters = None

    # --- prepare ------------------------------------------------------------------------------------------------------
    def prepare(self, trials: list[Trial]) -> tuple[dict[str, str], dict[str, str]]:
        """Models into the host cache, then each cell's engine conversion in its own (prepare) container.

        Returns ({model: reason} for models this host cannot get — their trials are skipped, like CUDA rows without
        a GPU, so a host that has them runs them later; {cell id: reason} for failed conversions — their trials are
        recorded as failed without being launched)."""
        self.cache.make()
        cells: dict[str, Cell] = {t.cell.id: t.cell for t in trials}
        models = {c.model.name: c.model for c in cells.values()}
        broken: dict[str, str] = {}
        unavailable: dict[str, str] = {}
        for name, m in models.items():
            path = self.store.prepare_path(f"model__{name}")
            try:
                info = self.cache.fetch(m)
                write_json_atomic(path, {"status": "ok", **info})
                if not info.get("cached"):
                    self.ui.note(f"prepared model {name} ({m.source}) in {info['duration_s']:.1f} s")
            except ModelUnavailable as e:
                write_json_atomic(path, {"status": "failed", "model": name, "error": str(e)})
                unavailable[name] = str(e)
                continue
            problem = self._inputs([c for c in cells.values() if c.model.name == name], Path(info["path"]))
            if problem:  # no shared ids: the model's same-work cells cannot run the same input (as served can)
                broken.update({c.id: problem for c in cells.values() if c.model.name == name
                               and cell_job(self.plan, c, self.cache).get("inputs")})
        for cid, cell in cells.items():
            if cell.model.name in unavailable or cid in broken:
                continue
            path = self.store.prepare_path(cid)
            prev = _read(path)
            if prev and prev.get("status") == "ok" and prev.get("host_cache") == str(self.cache.root):
                continue  # converted into this very cache before
            if not _converts(cell.engine):  # nothing to convert: spare a container start per cell
                write_json_atomic(path, {"status": "ok", "mode": "prepare", "cell_id": cid, "conversion": "none",
                                         "reason": f"engine {cell.engine!r} loads the model folder as it is",
                                         "host_cache": str(self.cache.root)})
                continue
            rec = self._prepare_cell(cell)
            rec["host_cache"] = str(self.cache.root)
            write_json_atomic(path, rec)
            if rec["status"] != "ok":
                err = rec["error"]
                broken[cid] = f"engine prepare failed [{err['type']}] {err['message']}"
                self.ui.note(f"[red]prepare {cell.label} failed:[/] {err['message']}")
            else:
                dur = (rec.get("phases", {}).get("prepare") or {}).get("duration_s")
                self.ui.note(f"prepared {cell.label}" + (f" in {dur:.1f} s" if dur is not None else ""))
        return unavailable, broken

    def reference_runtime(self):
        """The matrix runtime whose image tokenises same-work prompts: the [agreement] reference's (its engine and
        precision, its devices in order of preference; a CUDA one only where a GPU is usable), else None."""
        from runners.agreement import policy

        ref = policy(self.plan.matrix.agreement)
        for device in ref["devices"]:
            for rt in self.plan.matrix.runtimes.values():
                if rt.spec.device == device and ref["engine"] in rt.engines \
                        and ref["precision"] in rt.spec.engine_precisions(ref["engine"]) \
                        and not (rt.spec.gpu and self.gpu_problem()):
                    return rt
        return None

    def _inputs(self, cells: list[Cell], model_dir: Path) -> str | None:
        """A model's same-work prompt ids, made once by the reference's image (``runners tokenize`` in its own
        container) into the model cache and reused while the model's tokenizer files are the same; None when ready,
        else why its cells cannot run. As-served cells tokenise in their own image and need none."""
        from runners.workload import tokenizer_files

        jobs = [(c, cell_job(self.plan, c, self.cache)) for c in cells]
        same = [(c, j) for c, j in jobs if j.get("inputs")]
        if not same:
            return None
        cell, job = same[0]
        dest = self.cache.engines / job["inputs"]
        facts = self.store.prepare_path(f"inputs__{cell.model.name}")
        held = _read(dest)
        if held and held.get("status") == "ok" and held["tokenizer"]["sha256"] == tokenizer_files(model_dir)["sha256"]:
            write_json_atomic(facts, {"status": "ok", "cached": True, "path": str(dest), **_inputs_facts(held)})
            return None
        doc, reason = self._tokenize(cell, job)
        if doc is None:
            write_json_atomic(facts, {"status": "failed", "path": str(dest), "error": reason})
            self.ui.note(f"[red]prompt ids of {cell.model.name} could not be made:[/] {reason}")
            return f"no shared prompt ids: {reason}"
        write_json_atomic(dest, doc)
        write_json_atomic(facts, {"status": "ok", "cached": False, "path": str(dest), **_inputs_facts(doc)})
        t = doc["tokenizer"]
        self.ui.note(f"prompt ids of {cell.model.name}: {len(doc['prompts'])} prompts tokenised once in "
                     f"{doc['made_in'].get('runtime') or 'this Python'} ({t['class']}, transformers "
                     f"{t['transformers']}), given to every same-work cell")
        return None

    def _tokenize(self, cell: Cell, job: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """One ``tokenize`` invocation in the reference's image (or the model's first runtime's, said so in the
        file, when the matrix has no reference runtime): the inputs file, or why not."""
        from runners.agreement import policy

        rt = self.reference_runtime()
        job = {k: v for k, v in job.items() if k != "inputs"}
        ref = policy(self.plan.matrix.agreement)
        note = None
        if rt is None:
            rt, note = cell.runtime, (f"no runtime of the [agreement] reference ({ref['engine']}) in the matrix: "
                                      f"tokenised in {cell.runtime.name}'s image")
        else:
            job.update(engine=ref["engine"], device=rt.spec.device, precision=ref["precision"],
                       engine_options=dict(rt.engine_options))
        job["trial"] = {"run_id": self.store.run_id, "runtime": rt.name, "image": self.launcher.image_of(rt.spec)}
        name = f"tokenize__{cell.model.name}"
        limits = self.plan.matrix.runtime_container(rt)
        spec = LaunchSpec(name=name, runtime=rt.spec, mode="tokenize", job=job, work=self.store.work(name),
                          log_path=self.store.log_path(name), timeout_s=limits["timeout_s"],
                          mem_limit=limits["mem_limit"], cpus=limits["cpus"], shm_size=limits["shm_size"])
        outcome = self.launcher.run(spec, self._meters())
        shutil.rmtree(spec.work, ignore_errors=True)
        doc = outcome.record
        if doc is None or doc.get("status") != "ok" or outcome.exit_code != 0:
            why = ((doc or {}).get("error") or {}).get("message") or outcome.launch_error or \
                f"the tokenizer exited with {outcome.exit_code} ({'timed out' if outcome.timed_out else 'no file'})"
            return None, f"{rt.name}: {why}"
        doc["made_in"].update(image_id=outcome.facts.get("image_id"), note=note)
        return doc, None

    def _prepare_cell(self, cell: Cell) -> dict[str, Any]:
        job, gpus = self._job(cell)
        job["trial"] = {"run_id": self.store.run_id, "cell_id": cell.id, "runtime": cell.runtime.name,
                        "image": cell.runtime.spec.image, "matrix_hash": self.plan.matrix.hash}
        name = f"prepare__{cell.id}"
        limits = self.plan.matrix.container_for(cell.runtime, cell.model)
        spec = LaunchSpec(name=name, runtime=cell.runtime.spec, mode="prepare", job=job,
                          work=self.store.work(name), log_path=self.store.log_path(name),
                          timeout_s=limits["timeout_s"], mem_limit=limits["mem_limit"], cpus=limits["cpus"],
                          shm_size=limits["shm_size"], gpus=gpus)
        outcome = self.launcher.run(spec, self._meters())
        record = self._judge(outcome, job, spec, mode="prepare")
        self._host_energy(record, outcome, cell)
        shutil.rmtree(spec.work, ignore_errors=True)
        return record

    # --- run ------------------------------------------------------------------------------------------------------------
    def run(self, todo: list[Trial], broken: dict[str, str]) -> dict[str, int]:
        counts = {"ok": 0, "failed": 0}
        self.ui.start(len(todo))
        for t in todo:
            self.ui.trial_started(t)
            if t.cell.id in broken:
                job = cell_job(self.plan, t.cell, self.cache)
                job["trial"] = self._bookkeeping(t)
                record = failed_record(job, "prepare", "PrepareFailed", broken[t.cell.id])
                record["host"] = None
                self.store.write_trial(t.id, record)
            else:
                record = self.run_trial(t)
            counts[record["status"]] += 1
            self.ui.trial_finished(t, record)
        return counts

    def _bookkeeping(self, t: Trial) -> dict[str, Any]:
        m = self.plan.matrix
        return {"run_id": self.store.run_id, "trial_id": t.id, "cell_id": t.cell.id, "runtime": t.cell.runtime.name,
                "engine": t.cell.engine, "model": t.cell.model.name, "setting": t.cell.setting.name,
                "repetition": t.repetition, "order_index": t.order_index, "seed": m.seed, "matrix_hash": m.hash,
                "matrix_name": m.name, "model_params_b": t.cell.model.params_b, "size_group": t.cell.model.group,
                "image": self.launcher.image_of(t.cell.runtime.spec)}

    def run_trial(self, t: Trial) -> dict[str, Any]:
        m = self.plan.matrix
        meters = self._meters()
        trial_start = time.time()
        cooldown = self._cooldown(meters)
        from orchestrator.host_energy import restrict_idle

        idle = restrict_idle(self.baseline.for_trial(), self._keep(t.cell))
        job, gpus = self._job(t.cell)
        job["trial"] = self._bookkeeping(t)
        limits = m.container_for(t.cell.runtime, t.cell.model)
        spec = LaunchSpec(name=t.id, runtime=t.cell.runtime.spec, mode="run", job=job, work=self.store.work(t.id),
                          log_path=self.store.log_path(t.id), timeout_s=limits["timeout_s"],
                          mem_limit=limits["mem_limit"], cpus=limits["cpus"], shm_size=limits["shm_size"],
                          gpus=gpus)
        begin = time.time()
        outcome = self.launcher.run(spec, meters)
        if outcome.facts.get("image_id"):
            job["trial"]["image_id"] = outcome.facts["image_id"]
        record = self._judge(outcome, job, spec, mode="run")
        self._host_energy(record, outcome, t.cell)
        record["host"]["idle"] = idle
        record["host"]["meters"] = meters.describe()
        record["host"]["cooldown"] = cooldown
        record["host"]["begin_unix"] = begin
        record["host"]["trial_start_unix"] = trial_start  # cooldown and idle included (the baseline may be older)
        record["host"]["node"] = {"hostname": socket.gethostname(), **self.node}
        record["host"]["recorded_unix"] = time.time()  # a later pass (agreement) may rewrite the file: keep this
        self.store.write_trial(t.id, record)
        shutil.rmtree(spec.work, ignore_errors=True)
        return record

    def _judge(self, o: Outcome, job: dict[str, Any], spec: LaunchSpec, mode: str) -> dict[str, Any]:
        """ok only when the runner exited 0 with an ok record; otherwise failed, with the most specific reason."""
        rec = o.record
        reason: tuple[str, str, str] | None = None
        if o.launch_error:
            reason = ("launch", "LaunchError", o.launch_error)
        elif o.timed_out:
            reason = ("container", "Timeout", f"no result within timeout_s={spec.timeout_s:g} s; the runner was "
                                              f"killed (exit {o.exit_code})")
        elif o.oom_killed:
            reason = ("container", "OOMKilled", f"killed for memory: over mem_limit={spec.mem_limit} "
                                                f"(exit {o.exit_code})")
        elif rec is None:
            last = (_tail(spec.log_path, 1) or "").strip()
            reason = ("container", "NoRecord", f"the runner exited with {o.exit_code} without writing a record"
                                               + (f": {last}" if last else ""))
        elif o.exit_code != 0 and rec.get("status") == "ok":
            reason = ("container", "ExitCode", f"the runner wrote an ok record but exited with {o.exit_code}")
        if rec is None:
            rec = failed_record(job, *reason, mode=mode)  # type: ignore[misc]
        elif reason is not None:
            rec["status"] = "failed"
            rec["error"] = {"phase": reason[0], "type": reason[1], "message": reason[2],
                            "runner_error": rec.get("error")}
        if job.get("trial", {}).get("image_id"):  # known only once launched; the runner saw the trial without it
            rec.setdefault("trial", {})["image_id"] = job["trial"]["image_id"]
        rec["host"] = {
            "launcher": o.facts.get("launcher"), "container_id": o.facts.get("container_id"),
            "image": o.facts.get("image"), "image_id": o.facts.get("image_id"), "limits": o.facts.get("limits"),
            "exit_code": o.exit_code, "oom_killed": o.oom_killed, "timed_out": o.timed_out,
            "started_unix": o.facts.get("started_unix"), "exited_unix": o.facts.get("exited_unix"),
            "container": o.window, "idle": None,
            "log": str(spec.log_path.relative_to(self.store.root)),
            "log_tail": _tail(spec.log_path) if rec["status"] != "ok" else None,
            "overhead_s": {**o.timings, **_runner_span(rec, o.facts)},
        }
        return rec

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


def _inputs_facts(doc: dict[str, Any]) -> dict[str, Any]:
    return {"prompts": len(doc["prompts"]), "tokenizer": doc["tokenizer"], "made_in": doc.get("made_in")}


def _converts(engine: str) -> bool:
    from runners.engines import engine_class

    return "prepare" in engine_class(engine).optional_phases


def _runner_span(rec: dict[str, Any], facts: dict[str, Any]) -> dict[str, float]:
    """Time inside the container before the runner's first window and after its last one (interpreter start,
    imports, record writing): the part of the container's span that no runner window covers."""
    phases = [p for p in (rec.get("phases") or {}).values() if isinstance(p, dict) and "start_unix" in p]
    if not phases or not facts.get("started_unix") or not facts.get("exited_unix"):
        return {}
    return {"runner_startup_s": min(p["start_unix"] for p in phases) - facts["started_unix"],
            "runner_exit_s": facts["exited_unix"] - max(p["end_unix"] for p in phases)}


def _tail(path: Path, lines: int = 20) -> str | None:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
