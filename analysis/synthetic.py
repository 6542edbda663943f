"""Synthetic trial records shaped exactly like the runner's (they pass ``runners.record.validate_record``).

Used by the tests (known answers) and by ``python -m analysis synth`` to demo a report without a runtime. Every
number is made up; the records say so in ``environment.hostname`` ("synthetic").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from runners.record import WindowResult, metrics_of, new_record  # the one author of a record's shape

# Component names as the runner's meters write them (see runners/record.py).
ESTIMATED_COMPONENTS = {"cpu": 0.8, "ram": 0.2}  # codecarbon fallback, share of the energy
MEASURED_CPU = {"cpu:package-0": 0.85, "cpu:dram-0": 0.15}  # RAPL
MEASURED_CUDA = {"gpu:0": 0.7, "cpu:package-0": 0.3}  # NVML + RAPL
# source="unavailable": a CPU host without RAPL and with codecarbon off — every figure without a number
NO_ENERGY_REASON = "no RAPL counter readable and codecarbon off ([meters] codecarbon = false)"


def _window(start: float, duration: float, energy: dict[str, float], source: str, *, meter: str,
            series: dict[str, list[float]] | None = None, interval: float = 0.1) -> dict[str, Any]:
    figures = [{"component": c, "joules": float(j), "source": source, "meter": meter, "reason": None}
               if source != "unavailable" else
               {"component": c, "joules": None, "source": "unavailable", "meter": meter, "reason": NO_ENERGY_REASON}
               for c, j in energy.items()]
    if not any(c.startswith("gpu") for c in energy):
        # as runners/meters write it on a host without NVML: a figure with no number and the reason
        figures.append({"component": "gpu", "joules": None, "source": "unavailable", "meter": "nvml",
                        "reason": "NVML not available: no NVIDIA driver or GPU visible"})
    summary = {k: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
               for k, v in series.items() if k != "t_s"} if series else {}
    mono = start - 1.7e9  # any monotonic origin: only differences matter
    return WindowResult(start_unix=start, end_unix=start + duration, start_mono=mono, end_mono=mono + duration,
                        duration_s=duration, energy=figures,
                        samples={"n": len(series["t_s"]) if series else 0, "interval_s": interval,
                                 "summary": summary, "series": series}).as_dict()


def _reference_ids(model: str, task: int, n: int) -> list[int]:
    """Deterministic 'greedy output' of a model for a task: the same for every runtime unless perturbed."""
    h = int(hashlib.sha256(f"{model}/{task}".encode()).hexdigest()[:8], 16)
    return [(h + 7919 * i) % 49152 for i in range(n)]


def _host_block(t0: float, load_s: float, duration_s: float, energy_j: float, components: dict[str, float],
                source: str, meter: str, host_idle_w: dict[str, float]) -> dict[str, Any]:
    """As orchestrator/execute.py writes it: the host's own window around the runner, and its idle baseline."""
    span = load_s + 1.0 + duration_s + 5.0
    return {"launcher": "process", "exit_code": 0, "oom_killed": False, "timed_out": False,
            "container": _window(t0 - 3.0, span, {c: energy_j * share * span / duration_s
                                                  for c, share in components.items()}, source, meter=meter),
            "idle": {"duration_s": 10.0, "start_unix": t0 - 14.0, "power": [
                {"component": c, "watts": w, "source": source, "meter": meter, "reason": None}
                for c, w in host_idle_w.items()]}}


def _series(duration_s: float, energy_j: float, device: str, source: str) -> dict[str, list[float]]:
    """A sampled generate window: a slight ramp and ripple around the mean power, so the plot has a shape (the energy
    is fixed by the figures); key names as runners/meters write them."""
    n = max(2, min(200, int(duration_s / 0.1)))
    t = np.linspace(0.0, duration_s, n)
    mean_w = energy_j / duration_s
    power = mean_w * (1 + 0.05 * np.sin(t / 2.0) + 0.05 * (t / max(duration_s, 1e-9) - 0.5))
    key = "gpu0_power_w" if device == "cuda" else "cpu_power_w"
    sampled = {"t_s": t.round(4).tolist(), key: power.round(3).tolist(),
               "cpu_util_pct": np.clip(60 + 30 * np.sin(t), 0, 100).round(2).tolist(),
               "proc_rss_mb": (500 + 10 * t).round(1).tolist()}
    if source == "unavailable":
        del sampled[key]  # no counter, no power series: utilisation only
    if device == "cuda":
        sampled["gpu0_util_pct"] = np.clip(80 + 10 * np.cos(t), 0, 100).round(2).tolist()
        sampled["gpu0_mem_used_mb"] = (2000 + 0 * t).round(1).tolist()
    return sampled


def _per_prompt(model: str, prompts: int, batch: int, new_tokens: int, duration_s: float, diverge: set[int],
                diverge_from: int | None) -> list[dict[str, Any]]:
    """Outputs: the model's reference tokens, perturbed from ``diverge_from`` (default half way) for ``diverge``."""
    rows = []
    batches = -(-prompts // batch)
    for i in range(prompts):
        latency = duration_s / batches
        ttft = latency * 0.2
        ids = _reference_ids(model, i, new_tokens)
        if i in diverge:
            cut = new_tokens // 2 if diverge_from is None else diverge_from
            ids = ids[:cut] + [(t + 1) % 49152 for t in ids[cut:]]
        rows.append({"index": i, "task_id": f"HumanEval/{i}", "batch": i // batch, "prompt_tokens": 12,
                     "generated_tokens": new_tokens, "latency_s": latency, "ttft_s": ttft,
                     "tpot_s": (latency - ttft) / max(new_tokens - 1, 1), "output_ids": ids})
    return rows


def _job(model: str, runtime: str, engine: str, device: str, precision: str, run_id: str, repetition: int,
         order_index: int, seed: int, params_b: float, prompts: int, batch: int, new_tokens: int,
         fixed_length: bool, sweep_of: str | None = None) -> dict[str, Any]:
    """The job, with the bookkeeping the orchestrator passes through (orchestrator/execute.py, _bookkeeping); a
    sweep's point (``sweep_of``) is named and carries its axes as a matrix sweep's does (orchestrator/sweep.py)."""
    setting = precision if sweep_of is None else f"{sweep_of}__bs{batch}__nt{new_tokens}"
    trial = {"run_id": run_id, "trial_id": f"{run_id}-{model}-{runtime}-{setting}-r{repetition}",
             "cell_id": f"{model}/{runtime}/{setting}/b{batch}", "runtime": runtime, "engine": engine,
             "model": model, "setting": setting, "repetition": repetition, "order_index": order_index,
             "seed": seed, "matrix_hash": "synthetic", "matrix_name": "synthetic", "model_params_b": params_b,
             **({"sweep_of": sweep_of, "axes": {"batch_size": batch, "new_tokens": new_tokens}} if sweep_of else {})}
    return {"schema": "slm-matrix.job/1", "engine": engine, "device": device, "precision": precision,
            "model": {"name": model, "path": f"/models/{model}"},
            "workload": {"style": "fragment", "count": prompts, "selection": "first", "seed": 2412},
            "generation": {"batch_size": batch, "new_tokens": new_tokens, "fixed_length": fixed_length},
            "trial": trial}


def make_record(*, model: str = "tiny-a", hub_id: str | None = None, params_b: float = 0.5,
                engine: str = "torch", device: str = "cpu", precision: str = "fp32", runtime: str | None = None,
                provider: str | None = None, run_id: str = "synthetic", repetition: int = 0, order_index: int = 0,
                energy_j: float = 100.0, duration_s: float = 10.0, source: str = "estimated",
                components: dict[str, float] | None = None, idle_w: dict[str, float] | None = None,
                host_idle_w: dict[str, float] | None = None, prompts: int = 4, new_tokens: int = 8,
                batch: int = 1, intensity_g_per_kwh: float | None = 400.0, diverge: Iterable[int] = (),
                status: str = "ok", error: dict[str, str] | None = None, series: bool = True,
                load_s: float = 2.0, seed: int = 0, agreement: dict[str, Any] | None = None,
                diverge_from: int | None = None, fixed_length: bool = True,
                sweep_of: str | None = None) -> dict[str, Any]:
    """One schema-valid record. ``energy_j`` is the generate window's total, split over ``components`` (shares);
    ``idle_w`` goes to the runner's idle baseline, ``host_idle_w`` to the orchestrator's; ``diverge`` lists prompt
    indices whose output differs from the reference tokens (for agreement), from token ``diverge_from`` on (default:
    half way). ``source="unavailable"`` writes a trial without any energy figure (``energy_j`` is ignored);
    ``fixed_length=False`` one asked for work as served (its own stopping), another comparison boundary;
    ``sweep_of`` makes it a point of that swept setting (batch size and new tokens its axes)."""
    runtime = runtime or f"{engine}-{device}"
    if components is None:
        components = ESTIMATED_COMPONENTS if source == "estimated" else (
            MEASURED_CUDA if device == "cuda" else MEASURED_CPU)
    meter = {"estimated": "codecarbon", "unavailable": "rapl"}.get(source, "rapl+nvml")
    energy = {c: energy_j * share for c, share in components.items()}
    t0 = 1_800_000_000.0 + 1000 * order_index
    job = _job(model, runtime, engine, device, precision, run_id, repetition, order_index, seed, params_b, prompts,
               batch, new_tokens, fixed_length, sweep_of)
    record = new_record(job, job_hash=hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest(),
                        created_unix=t0 + 900)
    record["status"] = status
    record["engine"]["details"] = {"provider": provider or ("CUDAExecutionProvider" if device == "cuda"
                                                            and engine == "onnx" else device), "threads": 2}
    record["model"].update({"source": "hub" if hub_id else "path", "hub_id": hub_id, "model_type": "llama",
                            "architecture": "LlamaForCausalLM", "parameters": int(params_b * 1e9)})
    record["workload"] = {"dataset": "humaneval", "style": "fragment", "seed": 2412, "selection": "first",
                          "prompts": prompts, "task_ids": [f"HumanEval/{i}" for i in range(prompts)]}
    record["environment"] = {"hostname": "synthetic", "platform": "Linux", "python": "3.11",
                             "cpu_model": "Synthetic CPU", "cpu_count": 2,
                             "gpus": [{"name": "Synthetic GPU"}] if device == "cuda" else [], "driver": None,
                             "cuda": None, "libraries": {}, "image_id": None, "image": runtime,
                             "runner_version": "0.1.0"}
    record["idle"] = None if idle_w is None else {"duration_s": 5.0, "power": [
        {"component": c, "watts": w, "source": source, "meter": meter, "reason": None} for c, w in idle_w.items()]}
    if host_idle_w is not None:
        record["host"] = _host_block(t0, load_s, duration_s, energy_j, components, source, meter, host_idle_w)
    if status == "failed":
        record["error"] = error or {"phase": "load", "type": "RuntimeError", "message": "synthetic failure"}
        record["phases"]["load"] = _window(t0, load_s, {c: 1.0 for c in components}, source, meter=meter)
        return record
    phases = record["phases"]
    phases["load"] = _window(t0, load_s, {c: j * 0.1 for c, j in energy.items()}, source, meter=meter)
    phases["warmup"] = _window(t0 + load_s, 1.0, {c: j / max(prompts, 1) for c, j in energy.items()}, source,
                               meter=meter)
    phases["generate"] = _window(t0 + load_s + 1.0, duration_s, energy, source, meter=meter,
                                 series=_series(duration_s, energy_j, device, source) if series else None)
    record["per_prompt"] = _per_prompt(model, prompts, batch, new_tokens, duration_s, set(diverge), diverge_from)
    record["tokens"] = {"prompts": prompts, "batches": -(-prompts // batch), "input": 12 * prompts,
                        "output": prompts * new_tokens}
    record["metrics"] = metrics_of(phases["generate"], record["per_prompt"]).as_dict()  # as the runner computes them
    record["co2"] = {"intensity_g_per_kwh": intensity_g_per_kwh, "country_iso_code": "USA",
                     "source": "codecarbon" if intensity_g_per_kwh is not None else "unavailable",
                     "reason": None if intensity_g_per_kwh is not None else "codecarbon not installed"}
    record["agreement"] = agreement
    return record


# A small matrix with built-in, known effects: (engine, device, precision, energy factor, time factor).
DEMO_CONFIGS = (
    ("torch", "cpu", "fp32", 1.00, 1.00),
    ("onnx", "cpu", "fp32", 0.75, 0.80),
    ("openvino", "cpu", "fp32", 0.60, 0.55),
    ("onnx", "cpu", "int8", 0.45, 0.50),
)
DEMO_MODELS = (("tiny-coder-135m", None, 0.135), ("mid-coder-1.1b", None, 1.1), ("big-coder-2.7b", None, 2.7))


def synthetic_run(*, run_id: str = "synthetic", models=DEMO_MODELS, configs=DEMO_CONFIGS, repetitions: int = 10,
                  base_j_per_b: float = 400.0, noise: float = 0.05, seed: int = 0, source: str = "estimated",
                  idle_w: dict[str, float] | None = None, failed: int = 1, prompts: int = 4,
                  new_tokens: int = 16) -> list[dict[str, Any]]:
    """Records of a whole synthetic run: every model × config × repetition, in a seeded random order, with
    multiplicative log-normal noise; ``failed`` trials (the last ones in order) fail at load."""
    rng = np.random.default_rng(seed)
    cells = [(m, c, r) for m in models for c in configs for r in range(repetitions)]
    order = rng.permutation(len(cells))
    idle_w = {"cpu": 2.0, "ram": 1.0} if idle_w is None and source == "estimated" else idle_w
    records = []
    for order_index, k in enumerate(order):
        (name, hub_id, params_b), (engine, device, precision, e_f, t_f), rep = cells[k]
        energy = base_j_per_b * (0.2 + params_b) * e_f * float(rng.lognormal(0.0, noise))
        duration = 20.0 * (0.2 + params_b) * t_f * float(rng.lognormal(0.0, noise))
        is_failed = order_index >= len(order) - failed
        records.append(make_record(
            model=name, hub_id=hub_id, params_b=params_b, engine=engine, device=device, precision=precision,
            run_id=run_id, repetition=rep, order_index=order_index, energy_j=energy, duration_s=duration,
            source=source, idle_w=idle_w, prompts=prompts, new_tokens=new_tokens,
            diverge=(0,) if precision == "int8" else (), seed=seed,
            status="failed" if is_failed else "ok",
            error={"phase": "load", "type": "MemoryError", "message": "synthetic: out of memory while loading"}
            if is_failed else None))
    return records


# A sweep with known curves (J/token, tokens/s per batch size), one new-tokens budget, 16 prompts, estimated energy:
# torch's J/token falls to its least at batch 8 and rises again, llama.cpp's falls all the way (least at 16);
# llama.cpp leads at batch 1–2, torch from batch 4 (one inversion). Every engine's batch of 8 or more changes
# prompt 0's tokens after token 16 (batched kernels), so batch invariance is 15/16 there and 1 at batch 2 and 4.
SWEEP_CURVES = {  # runtime -> (engine, batch -> (J/token, tokens/s))
    "torch-cpu": ("torch", {1: (1.0, 20.0), 2: (0.75, 35.0), 4: (0.5, 60.0), 8: (0.4, 90.0), 16: (0.45, 100.0)}),
    "llamacpp-cpu": ("llamacpp", {1: (0.8, 30.0), 2: (0.7, 45.0), 4: (0.6, 55.0), 8: (0.55, 60.0),
                                  16: (0.5, 62.0)}),
}
# measured on another boundary (RAPL), far below both: a ranking across boundaries would put it first everywhere
SWEEP_MEASURED = {"onnx-cpu": ("onnx", {b: (0.1, 40.0) for b in (1, 2, 4, 8, 16)})}
SWEEP_PROMPTS, SWEEP_NEW_TOKENS, SWEEP_DIVERGE_AT = 16, 32, 8


def sweep_run(*, run_id: str = "sweep", model: tuple[str, float] = ("smol-135m", 0.135), repetitions: int = 3,
              noise: float = 0.01, seed: int = 0, curves=None, measured=None) -> list[dict[str, Any]]:
    """Records of a batch-size sweep with known curves (``SWEEP_CURVES``; ``SWEEP_MEASURED`` on a measured boundary),
    each a point of the swept setting "fp32" as the orchestrator writes it."""
    rng = np.random.default_rng(seed)
    runs = [(rt, e, b, jt, "estimated") for rt, (e, pts) in (SWEEP_CURVES if curves is None else curves).items()
            for b, jt in pts.items()]
    runs += [(rt, e, b, jt, "measured") for rt, (e, pts) in (SWEEP_MEASURED if measured is None else measured).items()
             for b, jt in pts.items()]
    tokens = SWEEP_PROMPTS * SWEEP_NEW_TOKENS
    records = []
    for order_index, ((runtime, engine, batch, (jpt, tps), source), rep) in enumerate(
            (r, rep) for r in runs for rep in range(repetitions)):
        wobble = float(rng.lognormal(0.0, noise))
        records.append(make_record(
            model=model[0], params_b=model[1], engine=engine, runtime=runtime, run_id=run_id, repetition=rep,
            order_index=order_index, energy_j=jpt * tokens * wobble, duration_s=tokens / tps * wobble, source=source,
            idle_w={"cpu": 2.0, "ram": 1.0} if source == "estimated" else {"cpu:package-0": 2.0, "cpu:dram-0": 0.5},
            prompts=SWEEP_PROMPTS, new_tokens=SWEEP_NEW_TOKENS, batch=batch, sweep_of="fp32", series=False,
            diverge=(0,) if batch >= SWEEP_DIVERGE_AT else (), diverge_from=16))
    return records


def as_schema_1(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the runner wrote it before windows carried monotonic marks, a boundary and flags
    (``slm-matrix.record/1``): what an older run directory holds."""
    old = json.loads(json.dumps(record))
    old["schema"] = "slm-matrix.record/1"
    for window in [*old["phases"].values(), *([old["host"].get("container")] if old["host"] else [])]:
        for key in ("start_mono", "end_mono", "boundary", "flags", "host_metered"):
            if isinstance(window, dict):
                window.pop(key, None)
    return old


def write_evaluations(records: list[dict[str, Any]], run_dir: str | Path, passed=None) -> Path:
    """Evaluation files as ``orchestrate.py evaluate`` writes them (evaluation.evaluate.evaluation_of), one per ok
    trial; ``passed(record, index) -> bool`` says which tasks pass (default: a fixed hash of model, engine,
    precision and task — repetitions of greedy decoding pass the same tasks)."""
    from evaluation.evaluate import evaluation_of

    def by_hash(rec, i):
        key = f"{rec['model']['name']}/{rec['engine']['name']}/{rec['engine']['precision']}/{i}"
        return int(hashlib.sha256(key.encode()).hexdigest()[:4], 16) % 3 != 0

    passed = passed or by_hash
    out = Path(run_dir) / "evaluations"
    out.mkdir(parents=True, exist_ok=True)
    for rec in records:
        if rec["status"] != "ok":
            continue
        rec = {**rec, "per_prompt": [{**p, "output_text": "    return 0\n"} for p in rec["per_prompt"]]}
        outcomes = [{"task_id": p["task_id"], "outcome": "passed" if passed(rec, p["index"]) else "failed",
                     "error_type": None, "seconds": 0.01} for p in rec["per_prompt"]]
        ev = evaluation_of(rec["trial"]["trial_id"], rec, outcomes, {"network": "none", "synthetic": True}, 0.0)
        (out / f"{ev['trial_id']}.json").write_text(json.dumps(ev, indent=1))
    return Path(run_dir)


def write_run(records: list[dict[str, Any]], run_dir: str | Path, *, agreement: bool = True) -> Path:
    """Write records the way the orchestrator lays them out: ``<run_dir>/trials/<trial_id>.json``, after the same
    token-agreement pass it runs (runners/agreement.py; ``agreement=False`` keeps the records' own)."""
    if agreement:
        from runners.agreement import attach_all

        attach_all({rec["trial"]["trial_id"]: rec for rec in records})
    out = Path(run_dir) / "trials"
    out.mkdir(parents=True, exist_ok=True)
    for rec in records:
        (out / f"{rec['trial']['trial_id']}.json").write_text(json.dumps(rec, indent=1))
    return Path(run_dir)
