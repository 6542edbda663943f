"""The prepare step, before any trial and outside every measured window: models into the host cache, each model's
same-work prompt ids (tokenised once, in the reference's image), and each cell's engine conversion in its own
(prepare) container.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from orchestrator.launch import LaunchSpec
from orchestrator.models import ModelCache, ModelUnavailable
from orchestrator.plan import Cell, Plan, Trial
from runners.record import Record, write_json_atomic


def inputs_path(plan: Plan, model: str, workload: dict[str, Any]) -> str:
    """Where a model's inputs file (its workload's prompt ids, runners/workload.py) lives, relative to the engine
    cache: one per model × workload × reference, so every cell of a model reads the same ids."""

    ref = plan.matrix.agreement  # the run's ReferencePolicy
    key = json.dumps([model, workload, ref.engine, list(ref.devices)], sort_keys=True)
    return f"inputs/{model}/{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cell_job(plan: Plan, cell: Cell, cache: ModelCache) -> dict[str, Any]:
    from orchestrator.matrix import job_body

    job = job_body(plan.matrix, cell.runtime, cell.engine, cell.model, cell.setting, cache.job_model(cell.model))
    job["cache_dir"] = str(cache.engines)
    job["seed"] = plan.matrix.seed
    if job["generation"].get("fixed_length", True):  # same work: the ids the reference's image made (prepare)
        job["inputs"] = inputs_path(plan, cell.model.name, job["workload"])
    return job


class Preparer:
    """The prepare step of an executor (orchestrator/execute.py): its plan, store, cache, launcher and meters."""

    def __init__(self, executor):
        self.ex = executor
        self.plan, self.store, self.cache, self.ui = executor.plan, executor.store, executor.cache, executor.ui

    def prepare(self, trials: list[Trial]) -> tuple[dict[str, str], dict[str, str]]:
        """Models into the host cache, then each cell's engine conversion.

        Returns ({model: reason} for models this host cannot get; {cell id: reason} for cells that cannot run:
        failed conversions, or no shared prompt ids)."""
        self.cache.make()
        cells: dict[str, Cell] = {t.cell.id: t.cell for t in trials}
        broken: dict[str, str] = {}
        unavailable: dict[str, str] = {}
        for name, m in {c.model.name: c.model for c in cells.values()}.items():
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
            if cell.model.name not in unavailable and cid not in broken:
                problem = self._convert(cell)
                if problem:
                    broken[cid] = problem
        return unavailable, broken

    def _convert(self, cell: Cell) -> str | None:
        """The cell's engine conversion, once per host cache; None when done, else why the cell cannot run."""
        path = self.store.prepare_path(cell.id)
        prev = _read(path)
        if prev and prev.get("status") == "ok" and prev.get("host_cache") == str(self.cache.root):
            return None  # converted into this very cache before
        if not _converts(cell.engine):  # nothing to convert: spare a container start per cell
            write_json_atomic(path, {"status": "ok", "mode": "prepare", "cell_id": cell.id, "conversion": "none",
                                     "reason": f"engine {cell.engine!r} loads the model folder as it is",
                                     "host_cache": str(self.cache.root)})
            return None
        rec = self._prepare_cell(cell)
        rec["host_cache"] = str(self.cache.root)
        write_json_atomic(path, rec)
        r = Record(rec)
        if not r.is_ok:
            self.ui.note(f"[red]prepare {cell.label} failed:[/] {r.error_message}")
            return f"engine prepare failed [{r.error['type']}] {r.error_message}"
        dur = r.duration("prepare")
        self.ui.note(f"prepared {cell.label}" + (f" in {dur:.1f} s" if dur is not None else ""))
        return None

    def reference_runtime(self):
        """The matrix runtime whose image tokenises same-work prompts: the [agreement] reference's (its engine and
        precision, its devices in order of preference; a CUDA one only where a GPU is usable), else None."""
        ref = self.plan.matrix.agreement
        for device in ref.devices:
            for rt in self.plan.matrix.runtimes.values():
                if rt.spec.device == device and ref.engine in rt.engines \
                        and ref.precision in rt.spec.engine_precisions(ref.engine) \
                        and not (rt.spec.gpu and self.ex.gpu_problem()):
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
        rt = self.reference_runtime()
        job = {k: v for k, v in job.items() if k != "inputs"}
        ref = self.plan.matrix.agreement
        note = None
        if rt is None:
            rt, note = cell.runtime, (f"no runtime of the [agreement] reference ({ref.engine}) in the matrix: "
                                      f"tokenised in {cell.runtime.name}'s image")
        else:
            job.update(engine=ref.engine, device=rt.spec.device, precision=ref.precision,
                       engine_options=dict(rt.engine_options))
        job["trial"] = {"run_id": self.store.run_id, "runtime": rt.name, "image": self.ex.launcher.image_of(rt.spec)}
        name = f"tokenize__{cell.model.name}"
        spec = self.ex.spec(name, rt.spec, "tokenize", job, self.plan.matrix.runtime_container(rt), gpus={})
        outcome = self.ex.launcher.run(spec, self.ex.meters())
        shutil.rmtree(spec.work, ignore_errors=True)
        doc = outcome.record
        if doc is None or doc.get("status") != "ok" or outcome.exit_code != 0:
            why = (Record(doc).error_message if doc is not None else None) or outcome.launch_error or \
                f"the tokenizer exited with {outcome.exit_code} ({'timed out' if outcome.timed_out else 'no file'})"
            return None, f"{rt.name}: {why}"
        doc["made_in"].update(image_id=outcome.facts.get("image_id"), note=note)
        return doc, None

    def _prepare_cell(self, cell: Cell) -> dict[str, Any]:
        job, gpus = self.ex.job(cell)
        job["trial"] = {"run_id": self.store.run_id, "cell_id": cell.id, "runtime": cell.runtime.name,
                        "image": cell.runtime.spec.image, "matrix_hash": self.plan.matrix.hash}
        name = f"prepare__{cell.id}"
        spec: LaunchSpec = self.ex.spec(name, cell.runtime.spec, "prepare", job,
                                        self.plan.matrix.container_for(cell.runtime, cell.model), gpus)
        record, facts = self.ex.launch(spec, cell)
        shutil.rmtree(spec.work, ignore_errors=True)
        return {**record, "host": facts.as_dict()}


def _inputs_facts(doc: dict[str, Any]) -> dict[str, Any]:
    return {"prompts": len(doc["prompts"]), "tokenizer": doc["tokenizer"], "made_in": doc.get("made_in")}


def _converts(engine: str) -> bool:
    from runners.engines import engine_class

    return "prepare" in engine_class(engine).optional_phases


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
