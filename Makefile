# The matrix, end to end. Every target goes through orchestrate.py (python orchestrate.py --help).
#   make images / images-cpu / images-gpu   build the runtime images (images/*/Dockerfile; layer-cached)
#   make smoke                              the smoke matrix (no GPU, no hub): tiny models + SmolLM2-135M
#   make matrix                             the study (matrix.toml); on a host without a GPU: the CPU rows,
#                                           and it says what it skipped. RUN=<id> names results/<id>/ (resumes).
#   make status / report                    what is done, failed, left / the analysis report of results/$(RUN)
#   make test                               the test suite (real Docker where it can be reached)
# Build inputs come from the environment, as for images/build.sh: BASE_IMAGE, PIP_EXTRA_INDEX_URL.

PYTHON ?= python3
MATRIX ?= matrix.toml
RUN ?= study-2412.15441
ORCH = $(PYTHON) orchestrate.py

.PHONY: test smoke matrix images images-cpu images-gpu status report plan

test:
	$(PYTHON) -m pytest -q tests

smoke:
	$(ORCH) run --matrix matrix-smoke.toml --run-id smoke --build --strict

matrix:
	$(ORCH) run --matrix $(MATRIX) --run-id $(RUN) --build

plan:
	$(ORCH) plan --matrix $(MATRIX)

images:
	$(ORCH) build --all

images-cpu:
	$(ORCH) build --all --device cpu

images-gpu:
	$(ORCH) build --all --device cuda

status:
	$(ORCH) status --run-id $(RUN)

report:
	$(PYTHON) -m analysis report results/$(RUN) --out results/$(RUN)/report
