"""matrix.toml: the study as the default, the smoke matrix, validation errors, the seeded plan, runtime discovery."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, orchestrate

from orchestrator.images import ImageError, discover, parse_runtime
from orchestrator.matrix import MatrixError, load
from runners.engines import engine_class
from orchestrator.plan import expand
from orchestrator.store import RunConflict, RunStore, failed_record

STUDY_MODELS = [  # DESIGN.md, in the study's order
    "codeparrot/codeparrot-small", "bigcode/tiny_starcoder_py", "EleutherAI/pythia-410m", "bigscience/bloomz-560m",
    "bigcode/starcoderbase-1b", "bigscience/bloomz-1b1", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
    "EleutherAI/pythia-1.4b", "google/codegemma-2b", "microsoft/phi-2", "stabilityai/stablecode-instruct-alpha-3b",
    "stabilityai/stablecode-completion-alpha-3b-4k",
]

BASE = """
[matrix]
name = "t"
seed = 1
repetitions = 2

[workload]
count = 2

[generation]
new_tokens = 4

[runtimes.torch-cpu]

[models.tiny]
fixture = "llama"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.toml"
    p.write_text(text)
    return p


def test_study_matrix_is_the_study():
    m = load(REPO / "matrix.toml")
    assert [e.hub_id for e in m.models.values()] == STUDY_MODELS
    assert all(e.source == "hub" and e.params_b for e in m.models.values())
    groups = [e.group for e in m.models.values()]
    assert groups == ["<1B"] * 4 + ["1B–2B"] * 4 + ["≥2B"] * 4
    # every runtime image and every engine it carries is in the study: a new image cannot be forgotten
    from orchestrator.images import discover

    for folder, rt in discover().items():
        entries = [r for r in m.runtimes.values() if r.spec.name == folder]
        assert entries, f"images/{folder} is not in matrix.toml"
        assert set(rt.engines) <= {e for r in entries for e in r.engines}, folder
    assert m.runtimes["openvino-nokv"].engine_options == {"kv_cache": "none"}  # the paper's row, beside the fair one
    assert m.runtimes["openvino"].engine_options == {}
    assert m.job["workload"] == {"dataset": "humaneval", "style": "fragment", "count": 164, "selection": "first",
                                 "seed": 2412, "min_tokens": 10, "max_tokens": 15}
    assert m.job["generation"] == {"batch_size": 1, "max_length": 128, "fixed_length": True}
    assert {s.name: s.family for s in m.settings.values()} == {
        "fp32": "study", "fp16": "precision", "bf16": "precision", "int8": "precision", "int4": "precision",
        "q8_0": "precision", "q4_k_m": "precision"}
    assert m.repetitions == 10 and isinstance(m.seed, int)
    assert m.job["warmup"]["batches"] >= 1
    assert m.host["idle_seconds"] > 0 and m.host["cooldown_max_s"] > 0
    plan = expand(m)
    cells = {(c.runtime.name, c.engine, c.setting.name) for c in plan.cells}
    # the study: fp32 on every runtime × engine (torch-compile for the paper's "JIT", OpenVINO with and without KV)
    assert {(r, e) for r, e, s in cells if s == "fp32"} == {
        ("torch-cpu", "torch"), ("torch-cpu", "torch-compile"), ("torch-cuda", "torch"), ("torch-cuda", "torch-compile"),
        ("onnx-cpu", "onnx"), ("onnx-cuda", "onnx"), ("openvino", "openvino"), ("openvino-nokv", "openvino"),
        ("llamacpp-cpu", "llamacpp"), ("llamacpp-cuda", "llamacpp"), ("vllm-cpu", "vllm"), ("vllm-cuda", "vllm"),
        # the runtimes' native LLM paths (issue 27)
        ("openvino-genai", "openvino-genai"), ("onnx-genai-cpu", "onnx-genai"), ("onnx-genai-cuda", "onnx-genai"),
        ("ctranslate2-cpu", "ctranslate2")}
    # the precision axis: half precision on CUDA, ONNX int8, OpenVINO int8 weights, GGUF q8_0/q4_k_m on CPU and CUDA,
    # the native paths' int8 and int4 weights
    assert {(r, s) for r, e, s in cells if s != "fp32"} == {
        ("torch-cuda", "fp16"), ("torch-cuda", "bf16"), ("onnx-cuda", "fp16"), ("vllm-cuda", "fp16"),
        ("vllm-cuda", "bf16"), ("llamacpp-cuda", "fp16"), ("onnx-cpu", "int8"), ("openvino", "int8"),
        ("llamacpp-cpu", "q8_0"), ("llamacpp-cpu", "q4_k_m"), ("llamacpp-cuda", "q8_0"), ("llamacpp-cuda", "q4_k_m"),
        ("openvino-genai", "int8"), ("onnx-genai-cpu", "int8"), ("onnx-genai-cpu", "int4"), ("onnx-genai-cuda", "fp16"),
        ("onnx-genai-cuda", "int4"), ("ctranslate2-cpu", "int8")}
    # what is not a cell is said once per runtime/engine, with the reason
    assert "torch-cpu/torch × fp16, bf16: for cuda runtimes only" in plan.excluded
    assert "torch-cpu/torch × int8, int4, q8_0, q4_k_m: engine offers fp32, bf16, fp16 on cpu" in plan.excluded
    assert "openvino-nokv/openvino × fp16, bf16, int8, int4, q8_0, q4_k_m: the entry runs study only" in plan.excluded
    assert len(plan.excluded) == len({x.split(" × ")[0] + x.split(":")[-1] for x in plan.excluded})
    assert len(plan.trials) == len(plan.cells) * 10 == 432 * 10
    assert len(plan.select(settings=["study"])) == 16 * 12 * 10  # a family selects its settings


def test_smoke_matrix_needs_no_hub_and_no_gpu():
    m = load(REPO / "matrix-smoke.toml")
    assert all(e.source == "fixture" for e in m.models.values())
    assert {e.fixture for e in m.models.values()} >= {"llama", "gpt2", "smollm2"}
    assert all(r.spec.device == "cpu" and not r.spec.gpu for r in m.runtimes.values())
    assert m.job["workload"]["count"] <= 8 and m.job["generation"]["new_tokens"] <= 32


def test_a_runtime_entry_may_run_an_image_again_under_its_own_name_and_settings(tmp_path):
    p = tmp_path / "m.toml"
    base = """[matrix]\nname = "t"\nseed = 1\nrepetitions = 1\n[models.m]\nfixture = "llama"\n
[settings.fp32]\nfamily = "study"\nprecision = "fp32"\n[settings.int8]\nfamily = "precision"\nprecision = "int8"\n"""
    p.write_text(base + '[runtimes.openvino]\n[runtimes.ov-nokv]\nimage = "openvino"\n'
                        'engine_options = { kv_cache = "none" }\nsettings = ["study"]\n')
    m = load(p)
    assert m.runtimes["ov-nokv"].spec.name == "openvino" and m.runtimes["ov-nokv"].settings == ("study",)
    cells = {(c.runtime.name, c.setting.name) for c in expand(m).cells}
    assert cells == {("openvino", "fp32"), ("openvino", "int8"), ("ov-nokv", "fp32")}
    p.write_text(base + '[runtimes.x]\nimage = "no-such-folder"\n')
    with pytest.raises(MatrixError, match=r"runtimes\.x\.image: no such runtime under images/"):
        load(p)
    p.write_text(base + '[runtimes.openvino]\nsettings = ["fp64"]\n')
    with pytest.raises(MatrixError, match=r"runtimes\.openvino\.settings\[0\]: unknown setting or family 'fp64'"):
        load(p)
    p.write_text(base + '[runtimes.openvino]\n[settings.fp16]\nprecision = "fp16"\ndevices = ["tpu"]\n')
    with pytest.raises(MatrixError, match=r"settings\.fp16\.devices\[0\]: unknown device 'tpu'"):
        load(p)


def test_a_runtime_entry_may_run_only_the_models_its_converter_takes(tmp_path):
    """ONNX Runtime GenAI's builder refuses GPT-2: the smoke matrix gives its entry the models it converts; the plan
    says which models the entry leaves out, and an unknown model is named with the choices."""
    p = tmp_path / "m.toml"
    base = '[matrix]\nname = "t"\nseed = 1\nrepetitions = 1\n[models.a]\nfixture = "llama"\n[models.b]\nfixture = "gpt2"\n'
    p.write_text(base + '[runtimes.torch-cpu]\n[runtimes.openvino]\nmodels = ["a"]\n')
    plan = expand(load(p))
    assert {(c.runtime.name, c.model.name) for c in plan.cells} == {("torch-cpu", "a"), ("torch-cpu", "b"),
                                                                    ("openvino", "a")}
    assert "openvino × b: the entry runs a only" in plan.excluded
    p.write_text(base + '[runtimes.openvino]\nmodels = ["c"]\n')
    with pytest.raises(MatrixError, match=r"runtimes\.openvino\.models\[0\]: unknown model 'c'.*use one of: a, b"):
        load(p)


@pytest.mark.parametrize("name, count", [("matrix-smoke-eval.toml", 6), ("matrix-humaneval.toml", None)])
def test_evaluated_matrices_use_full_prompts_the_same_work_and_a_torch_fp32_reference(name, count):
    m = load(REPO / name)
    assert m.job["workload"]["style"] == "full" and m.job["workload"].get("count") == count  # None: all 164
    assert m.job["generation"]["fixed_length"] is True  # same work: energies compare across runtimes
    assert all(e.source == "fixture" for e in m.models.values())
    assert any(s.precision == "fp32" for s in m.settings.values()) and "torch" in m.runtimes["torch-cpu"].engines


@pytest.mark.parametrize("edit, key, hint", [
    (lambda t: t + "\n[matrixx]\n", "matrixx: unknown key", "allowed keys here: matrix, workload"),
    (lambda t: t.replace("repetitions = 2", 'repetitions = "ten"'), "matrix.repetitions: must be an integer",
     "give repetitions an integer value"),
    (lambda t: t.replace("seed = 1\n", "seed = 1.5\n"), "matrix.seed: must be an integer", ""),
    (lambda t: t + "\n[runtimes.onnx-gpu]\n", "runtimes.onnx-gpu: no such runtime under images/",
     "use one of: " + ", ".join(discover())),
    (lambda t: t.replace('name = "t"', 'name = "t"\nmodels = ["gpt-5"]'), "matrix.models[0]: unknown model 'gpt-5'",
     "use one of: tiny"),
    (lambda t: t.replace('name = "t"', 'name = "t"\nruntimes = ["torch-gpu"]'),
     "matrix.runtimes[0]: unknown runtime 'torch-gpu'", "use one of: torch-cpu"),
    (lambda t: t + '\n[models.both]\nhub_id = "a/b"\npath = "x"\n', "models.both: gives hub_id and path",
     "give exactly one of"),
    (lambda t: t + '\n[models.x]\nhubid = "a/b"\n', "models.x: gives no source", ""),
    (lambda t: t + '\n[models.x]\nfixture = "llama"\nsise = "tiny"\n', "models.x.sise: unknown key",
     "allowed keys here: hub_id, path, fixture"),
    (lambda t: t + '\n[models.x]\nfixture = "transformerxl"\n', "models.x.fixture: unknown fixture",
     "use one of: gpt2, gpt_bigcode"),
    (lambda t: t + '\n[models.x]\nhub_id = "a/b"\n', "models.x.params_b: is missing", "billions"),
    (lambda t: t.replace("count = 2", 'count = 2\nstyle = "whole"'), "workload.style: unknown value 'whole'",
     "use one of: fragment, full"),
    (lambda t: t.replace("new_tokens = 4", "new_tokens = 0"), "generation.new_tokens: must be ≥ 1", ""),
    (lambda t: t + "\n[meters]\nsample_interval = 0.1\n", "meters.sample_interval: unknown key",
     "allowed keys here: sample_interval_s"),
    (lambda t: t.replace("[runtimes.torch-cpu]", "[runtimes.torch-cpu]\nengines = [\"vllm\"]"),
     "runtimes.torch-cpu.engines[0]: image slm-matrix/torch-cpu:latest has no engine 'vllm'",
     "use one of: torch, torch-compile"),
    (lambda t: t.replace("[runtimes.torch-cpu]", "[runtimes.torch-cpu]\nengine_options = {turbo = true}"),
     "runtimes.torch-cpu.engine_options.turbo: engine 'torch' has no such option", "options of 'torch': "),
    (lambda t: t.replace("[runtimes.torch-cpu]", "[runtimes.torch-cpu]\ntimeout_s = \"1h\""),
     "runtimes.torch-cpu.timeout_s: must be a number", ""),
    (lambda t: t + "\n[host]\nidle_seconds = -1\n", "host.idle_seconds: must be ≥ 0", ""),
    (lambda t: t + "\n[host]\nidle_seconds = 2\nidle_reuse_s = 600\nidle_check_s = 2\n",
     "host.idle_check_s: must be above 0 and below idle_seconds = 2", "or set idle_reuse_s = 0"),
    (lambda t: t + '\n[host]\ngpus = ["all"]\n', "host.gpus[0]: must be a GPU index", "gpus = [0]"),
    (lambda t: t + "\n[host]\ngpus = []\n", "host.gpus: must list at least one GPU index", "gpus = [0]"),
    (lambda t: t + '\n[agreement]\nengine = "torch"\nprecison = "fp32"\n', "agreement.precison: unknown key",
     "allowed keys here: engine, precision, devices"),
    (lambda t: t + '\n[container]\nmem_limit = "lots"\n', "container.mem_limit: 'lots' is not a size", "512m"),
    (lambda t: t + '\n[settings.q]\nprecision = "int8"\n', "settings.q.precision: no selected runtime offers 'int8'", "use one of: bf16, fp16, fp32"),
    (lambda t: t + "\n[models.a.b]\nfixture = \"llama\"\n", "models.a: gives no source", ""),
    (lambda t: t + '\n[settings.s]\nprecision = "fp32"\ngeneration = {sampling = {temperature = 0.0}}\n',
     "settings.s.generation.sampling.temperature: must be > 0", "greedy decoding is the default"),
    (lambda t: t + '\n[settings.s]\nprecision = "fp32"\ngeneration = {fixed_length = false, sampling = {temperature = 1.0}}\n',
     "settings.s.generation.sampling: is only compared at fixed length", "set fixed_length = true"),
    (lambda t: t + "\n[workload\n", "(syntax): not valid TOML", "fix the TOML syntax"),
])
def test_bad_matrix_gives_one_clear_error(tmp_path, edit, key, hint):
    path = write(tmp_path, edit(BASE))
    with pytest.raises(MatrixError) as err:
        load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}"), msg
    assert hint in msg and "\n" not in msg and " — " in msg, msg


def test_cli_reports_a_bad_matrix_in_one_line(tmp_path):
    path = write(tmp_path, BASE.replace("[runtimes.torch-cpu]", "[runtimes.torch-cpuu]"))
    proc = orchestrate("plan", "--matrix", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "runtimes.torch-cpuu: no such runtime under images/" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_seeded_order_is_reproducible_and_recorded_positions_survive_filters(tmp_path):
    text = BASE + '\n[models.tiny2]\nfixture = "gpt2"\n'
    a = expand(load(write(tmp_path, text)))
    b = expand(load(write(tmp_path, text)))
    c = expand(load(write(tmp_path, text.replace("seed = 1", "seed = 2"))))
    ids = [t.id for t in a.trials]
    assert ids == [t.id for t in b.trials]
    assert sorted(ids) == sorted(t.id for t in c.trials) and ids != [t.id for t in c.trials]
    assert len(ids) == len(set(ids)) == 2 * 2  # cells × repetitions
    assert [t.order_index for t in a.trials] == list(range(4))
    only = a.select(models=["tiny2"])
    assert {t.cell.model.name for t in only} == {"tiny2"}
    assert [t.order_index for t in only] == [t.order_index for t in a.trials if t.cell.model.name == "tiny2"]
    with pytest.raises(MatrixError, match="--model nope: is not in this matrix — use one of: tiny, tiny2"):
        a.select(models=["nope"])


def test_settings_expand_cells_only_where_the_image_offers_the_precision(tmp_path):
    text = BASE + '\n[settings.fp32]\nprecision = "fp32"\n\n[settings.bf16]\nprecision = "bf16"\n'
    plan = expand(load(write(tmp_path, text)))
    assert sorted(c.setting.name for c in plan.cells) == ["bf16", "fp32"]
    text = text.replace('[runtimes.torch-cpu]', '[runtimes.torch-cpu]\n[runtimes.llamacpp-cpu]')
    plan = expand(load(write(tmp_path, text)))
    assert sorted(c.id for c in plan.cells) == ["llamacpp-cpu__llamacpp__tiny__fp32", "torch-cpu__torch__tiny__bf16",
                                                "torch-cpu__torch__tiny__fp32"]
    assert any("llamacpp-cpu/llamacpp × bf16: engine offers fp32, fp16, q8_0, q4_k_m on cpu" in x
               for x in plan.excluded)


def test_a_sampled_setting_is_no_cell_of_an_engine_that_decodes_greedily_only(tmp_path):
    text = BASE.replace("[runtimes.torch-cpu]", "[runtimes.torch-cpu]\n[runtimes.llamacpp-cpu]") + (
        '\n[settings.fp32]\nprecision = "fp32"\n\n[settings.sampled]\n'
        'precision = "fp32"\ngeneration = {sampling = {temperature = 0.8, top_p = 0.95, seed = 3}}\n')
    plan = expand(load(write(tmp_path, text)))
    assert sorted(c.id for c in plan.cells) == ["llamacpp-cpu__llamacpp__tiny__fp32", "torch-cpu__torch__tiny__fp32",
                                                "torch-cpu__torch__tiny__sampled"]
    assert any(x.startswith("llamacpp-cpu/llamacpp × sampled: sampled decoding not offered: argmax")
               for x in plan.excluded), plan.excluded


def test_container_limits_model_over_runtime_over_image_over_matrix(tmp_path):
    text = (BASE.replace("[runtimes.torch-cpu]", '[runtimes.torch-cpu]\nmem_limit = "4g"\ntimeout_s = 60')
            .replace('fixture = "llama"', 'fixture = "llama"\ntimeout_s = 5') + '\n[container]\ncpus = 2\n')
    m = load(write(tmp_path, text))
    limits = m.container_for(m.runtimes["torch-cpu"], m.models["tiny"])
    assert limits == {"timeout_s": 5.0, "mem_limit": "4g", "cpus": 2.0, "shm_size": "1g"}
    vllm = discover().get("vllm-cpu")
    if vllm is not None and dict(vllm.container).get("shm_size"):  # the image's own label beats the matrix default
        m = load(write(tmp_path, BASE.replace("[runtimes.torch-cpu]", "[runtimes.vllm-cpu]")))
        assert m.container_for(m.runtimes["vllm-cpu"], m.models["tiny"])["shm_size"] == dict(vllm.container)["shm_size"]


def test_a_new_runtime_is_one_folder(tmp_path):
    images = tmp_path / "images"
    (images / "onnx-cpu").mkdir(parents=True)
    (images / "wheelhouse").mkdir()  # a build input, not a runtime
    (images / "_base").mkdir()  # the shared base, not a runtime
    (images / "_base" / "Dockerfile").write_text("FROM x\n")
    (images / "onnx-cpu" / "Dockerfile").write_text(
        'FROM x\nLABEL io.slm-matrix.engines="torch" \\\n      io.slm-matrix.device="cpu"  # comment\n')
    rt = discover(images)
    assert list(rt) == ["onnx-cpu"]
    # derived, not labelled: the name is the folder's, the precisions the engine's, no GPU on cpu
    assert rt["onnx-cpu"].engines == ("torch",) and not rt["onnx-cpu"].gpu
    assert rt["onnx-cpu"].precisions == engine_class("torch").precisions["cpu"]
    m = load(write(tmp_path, BASE.replace("torch-cpu", "onnx-cpu")), images_dir=images)
    assert expand(m).cells[0].id == "onnx-cpu__torch__tiny__fp32"
    (images / "bad").mkdir()
    (images / "bad" / "Dockerfile").write_text('FROM x\nLABEL io.slm-matrix.shm-size="1g"\n')
    with pytest.raises(ImageError, match=r"missing LABEL io.slm-matrix.engines, io.slm-matrix.device"):
        parse_runtime(images / "bad" / "Dockerfile")
    (images / "bad" / "Dockerfile").write_text('FROM x\nLABEL io.slm-matrix.engines="torch"\n'
                                               'LABEL io.slm-matrix.device="cuda"\nLABEL io.slm-matrix.gpu="true"\n')
    with pytest.raises(ImageError, match=r"io.slm-matrix.gpu — remove: .* a GPU is needed when the device is cuda"):
        parse_runtime(images / "bad" / "Dockerfile")
    (images / "bad" / "Dockerfile").write_text('FROM x\nLABEL io.slm-matrix.engines="tensorrt"\n'
                                               'LABEL io.slm-matrix.device="cuda"\n')
    with pytest.raises(ImageError, match=r"engines names tensorrt — use engines of runners/engines"):
        parse_runtime(images / "bad" / "Dockerfile")


def test_every_image_in_the_repository_describes_itself():
    runtimes = discover()
    assert "torch-cpu" in runtimes and "_base" not in runtimes
    for name, rt in runtimes.items():
        assert rt.engines and rt.precisions and rt.device in ("cpu", "cuda"), name
        assert rt.gpu == (rt.device == "cuda"), name
        text = rt.dockerfile.read_text()
        assert "FROM ${RUNNER_BASE}" in text and text.rstrip().endswith("COPY runners /opt/runner/runners"), name


def test_a_precision_only_one_engine_offers_plans_only_that_engines_cells(tmp_path):
    """torch-cpu carries torch and torch-compile: a setting is planned per engine, by the engine's own table."""
    m = load(write(tmp_path, BASE.replace("[runtimes.torch-cpu]", '[runtimes.torch-cpu]\nengines = ["torch", '
                                          '"torch-compile"]') + '\n[settings.bf16]\nprecision = "bf16"\n'))
    plan = expand(m)
    for c in plan.cells:
        assert c.setting.precision in engine_class(c.engine).precisions["cpu"]


def test_a_run_resumes_only_with_its_own_matrix(tmp_path):
    m = load(write(tmp_path, BASE))
    store = RunStore(tmp_path / "results", "r")
    run = store.open(m, [t.id for t in expand(m).trials])
    assert run["seed"] == 1 and run["matrix"]["sha256"] == m.hash
    assert (store.root / "matrix.toml").read_text() == BASE
    assert store.open(m, [])["order"] == run["order"]  # same matrix: resumes
    other = load(write(tmp_path, BASE.replace("seed = 1", "seed = 9")))
    with pytest.raises(RunConflict, match=re.escape("was started with another matrix")):
        store.open(other, [])


def test_a_record_the_orchestrator_writes_for_a_silent_failure_is_valid():
    from runners.record import validate_record

    rec = failed_record({"engine": "torch", "device": "cpu", "precision": "fp32", "model": {"name": "m"},
                         "trial": {"trial_id": "x"}}, "container", "OOMKilled", "killed for memory")
    validate_record(rec)
    assert rec["status"] == "failed" and rec["trial"] == {"trial_id": "x"}
