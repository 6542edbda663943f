"""The trial record: what the runner writes for one job. Versioned; validated against RECORD_SCHEMA.

Shape (``slm-matrix.record/1``)::

    schema, mode ("run" | "prepare"), status ("ok" | "failed"), error (null | {phase, type, message}),
    created_unix
    job (the job as run), job_hash, trial (bookkeeping passed through from the job)
    engine  {name, device, precision, details{…what actually ran: provider, threads, batching, versions…}}
    model   {name, source ("path"|"hub"), path, hub_id, model_type, architecture, parameters}
    workload {dataset, style, seed, selection, prompts, task_ids[]}
    phases  {load|prepare|compile|warmup|generate: Window}   (only the phases that ran)
      Window = {start_unix, end_unix, start_mono, end_mono, duration_s, energy: [Figure],
                energy_total{measured_j, estimated_j}, boundary ("cpu:package-0 measured + gpu:0 measured"),
                flags: [{code, component, message}], host_metered?{components, trace_interval_s, boundary_error_j},
                samples{n, interval_s, summary{metric: {mean,min,max}}, series{t_s[], metric[]…} | null}, info{}}
      Figure = {component, joules|null, source ("measured"|"estimated"|"unavailable"), meter, reason|null}
        component: "gpu:<i>" (NVML), "cpu:package-<i>" / "cpu:dram-<i>" (RAPL), "cpu" / "ram" / "gpu" (codecarbon)
    idle    null | {duration_s, power: [{component, watts|null, source, meter, reason}]}
    tokens  {prompts, batches, input, output}
    per_prompt [{index, task_id, batch, prompt_tokens, prompt_ids[], generated_tokens, latency_s, ttft_s, tpot_s,
                output_ids[], output_text, eos_at}]
      (generated_tokens: the count produced; the job's generation.new_tokens is the budget asked for)
    metrics {tokens_per_s, joules_per_token{measured, estimated}, latency_s{…}, ttft_s{…}, tpot_s{…}}
    co2     {intensity_g_per_kwh|null, country_iso_code, source, reason}
    agreement null | {reference, prompts, identical, share_identical, first_divergence[]}
    environment {hostname, platform, python, cpu_model, cpu_count, gpus[], driver, cuda, libraries{}, image_id,
                 image, runner_version,
                 privileges? {uid, gid, cap_eff, cap_bnd, no_new_privs, root_read_only, pids_max}: as seen from inside}
    host    (added by the orchestrator: its own windows around the container, idle baseline, container facts)

Measured and estimated joules are never added together: ``energy_total`` and ``joules_per_token`` keep them apart.

One builder writes it (build.py), one typed view reads it (view.py: ``Record``) — the runner, the host, analysis,
budget, status, evaluation and the benchmarks alike — so every derived fact (the energy of a phase with its boundary,
J/token, latencies, the work key) has one implementation. Standard library only: the images carry it.
"""

from runners.record.build import (WindowResult, boundary, joules_per_token, new_record, per_token,  # noqa: F401
                                  totals, write_json_atomic)
from runners.record.schema import (FIGURE_SCHEMA, PHASES, PROMPT_SCHEMA, RECORD_SCHEMA, RECORD_SCHEMA_ID,  # noqa: F401
                                   SOURCES, WINDOW_SCHEMA, record_validator, validate_record)
from runners.record.energy import Energy, IdlePower, window_energy  # noqa: F401
from runners.record.facts import (ENERGY_SOURCES, HOST_WINDOW, RECORD_SCHEMAS, SIZE_GROUPS, Metrics,  # noqa: F401
                                  batch_key, batch_size, config_label, hardware_label, metrics_of, sampled, size_group,
                                  statistics_of, upgrade, work_key, work_label)
from runners.record.view import Preparation, Record  # noqa: F401
