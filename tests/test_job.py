"""Bad jobs get one clear line naming the field and the fix — from the parser and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _models import tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)

from runners.job import JobError, parse_job
from runners.record import validate_record

GOOD = {"engine": "torch", "device": "cpu", "model": {"path": "/models/x"}}


def job(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        target = data
        *parents, leaf = key.split("__")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return data


@pytest.mark.parametrize("data, field, words", [
    (job(engine="tensorrt"), "engine", "use one of: "),
    (job(device="tpu"), "device", "cpu, cuda"),
    (job(precision="fp8"), "precision", "fp32"),
    (job(model={}), "model", "model.path"),
    (job(model={"path": "/a", "hub_id": "b/c"}), "model", "keep one"),
    (job(generation__batch_size=0), "generation.batch_size", "1 or more"),
    (job(generation__batch_size=True), "generation.batch_size", "int"),
    (job(generation__new_tokens="many"), "generation.new_tokens", "int"),
    (job(generation__max_length=128, generation__new_tokens=10), "generation", "keep one"),
    (job(workload__style="poem"), "workload.style", "fragment, full"),
    (job(workload__min_tokens=15, workload__max_tokens=10), "workload.max_tokens", "min_tokens"),
    (job(workload__shuffle=True), "workload.shuffle", "allowed keys here"),
    (job(workload__style="length"), "workload.prompt_tokens", 'style = "length"'),
    (job(workload__style="full", workload__prompt_tokens=64), "workload.prompt_tokens", "and only then"),
    (job(workload__style="length", workload__prompt_tokens=0), "workload.prompt_tokens", "1 or more"),
    (job(colour="red"), "colour", "allowed keys here"),
    (job(engine_options={"threds": 2}), "engine_options.threds", "options of 'torch': "),
    (job(engine_options={"threads": "2"}), "engine_options.threads", "int"),
    (job(schema="slm-matrix.job/0"), "schema", "slm-matrix.job/1"),
    (job(inputs="inputs/m/x.json"), "inputs", "give cache_dir"),
    (job(inputs=3), "inputs", "str"),
])
def test_bad_job_names_field_and_fix(data, field, words):
    with pytest.raises(JobError) as err:
        parse_job(data)
    assert err.value.field == field
    message = str(err.value)
    assert message.startswith(f"job.{field}: ")
    assert words in message
    assert "\n" not in message


def test_good_job_defaults_and_hash_ignore_trial_bookkeeping():
    a = parse_job(GOOD)
    assert (a.precision, a.generation.new_tokens, a.generation.fixed_length, a.workload.style) == \
        ("fp32", 128, True, "fragment")
    b = parse_job({**GOOD, "trial": {"repetition": 3}})
    assert a.hash == b.hash
    assert a.hash != parse_job({**GOOD, "precision": "bf16"}).hash
    # a job without an inputs file hashes as before the field existed; one with it is other work
    import hashlib
    body = {k: v for k, v in a.to_dict().items() if k not in ("trial", "inputs")}
    assert a.hash == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    with_inputs = parse_job({**GOOD, "cache_dir": "/cache", "inputs": "inputs/x/1.json"})
    assert with_inputs.inputs == "inputs/x/1.json" and with_inputs.hash != parse_job({**GOOD, "cache_dir": "/cache"}).hash


def test_study_max_length_budget():
    j = parse_job(job(generation={"max_length": 128, "fixed_length": False}))
    assert j.generation.new_tokens is None
    assert j.generation.budget(13) == 115


def _cli(tmp_path, data, *extra):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "record.json"
    proc = subprocess.run([sys.executable, "-m", "runners", "run", str(path), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_cli_bad_job_exit_2_one_line_and_failed_record(tmp_path):
    proc, record = _cli(tmp_path, job(engine="tensorrt"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: job.engine: unknown value 'tensorrt' — use one of:")
    validate_record(record)
    assert record["status"] == "failed" and record["error"]["phase"] == "job"


def test_cli_missing_model_folder(tmp_path):
    proc, record = _cli(tmp_path, job(model={"path": str(tmp_path / "nowhere")}))
    assert proc.returncode == 2
    assert "job.model.path:" in proc.stderr and "save_pretrained" in proc.stderr
    validate_record(record)
    assert record["error"]["phase"] == "model"


def test_cli_hub_id_not_in_cache_is_not_downloaded(tmp_path):
    data = job(model={"hub_id": "bigcode/tiny_starcoder_py", "hf_cache": str(tmp_path / "hf")})
    proc, record = _cli(tmp_path, data)
    assert proc.returncode == 2
    assert "job.model.hub_id: bigcode/tiny_starcoder_py is not in the model cache" in proc.stderr
    assert not (tmp_path / "hf" / "models--bigcode--tiny_starcoder_py").exists()


def test_cli_missing_job_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runners", "validate", str(tmp_path / "nope.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no job file at" in proc.stderr


def test_cli_cuda_on_a_host_without_cuda(tmp_path, tiny_model_dir):
    from runners.environment import cuda_problem

    if cuda_problem() is None:
        pytest.skip("this host has CUDA")
    proc, record = _cli(tmp_path, job(device="cuda", model={"path": str(tiny_model_dir)}))
    assert proc.returncode == 2
    assert "job.device: cuda asked but" in proc.stderr and "set device to \"cpu\"" in proc.stderr
    assert record["error"]["phase"] == "host"


def test_stop_sequences_only_apply_as_served():
    base = {"engine": "torch", "device": "cpu", "model": {"path": "/m"}}
    with pytest.raises(JobError) as e:
        parse_job({**base, "generation": {"stop_sequences": ["\ndef"]}})
    assert e.value.field == "generation.stop_sequences" and "fixed_length = false" in str(e.value)
    with pytest.raises(JobError) as e:
        parse_job({**base, "generation": {"fixed_length": False, "stop_sequences": [""]}})
    assert e.value.field == "generation.stop_sequences"
    job = parse_job({**base, "generation": {"fixed_length": False, "stop_sequences": ["\ndef", "\nclass"]}})
    assert job.generation.stop_sequences == ("\ndef", "\nclass")


def test_sampling_is_validated_and_refused_where_an_engine_decodes_greedily_only():
    body = {"engine": "torch", "device": "cpu", "model": {"path": "/m"}, "generation": {"new_tokens": 4}}
    job = parse_job({**body, "generation": {"new_tokens": 4, "sampling": {"temperature": 0.7}}})
    assert (job.generation.sampling.temperature, job.generation.sampling.top_p) == (0.7, 1.0)
    assert "sampling" not in parse_job(body).to_dict()["generation"]  # greedy jobs read (and hash) as before
    with pytest.raises(JobError) as err:
        parse_job({**body, "engine": "llamacpp", "generation": {"new_tokens": 4, "sampling": {"temperature": 0.7}}})
    assert err.value.field == "generation.sampling" and "greedily only" in str(err.value)
    assert "sample with ctranslate2, onnx, openvino, torch" in str(err.value)  # every engine that samples
    with pytest.raises(JobError, match=r"job.generation.sampling.top_p: must be in \(0, 1\]"):
        parse_job({**body, "generation": {"new_tokens": 4, "sampling": {"temperature": 0.7, "top_p": 0}}})
