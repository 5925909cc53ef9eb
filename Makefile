# The two commands a newcomer needs: `make run` and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)
MODEL_DIR := models/whisper-base

.PHONY: run test lint format offline-model system-deps k8s-tools venv bench gpu-check images compose-up compose-down

system-deps:
	@deploy/install-system-deps.sh

$(STAMP): requirements.txt requirements-dev.txt | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# One run writes both: the transformers directory and its CTranslate2 twin ($(MODEL_DIR)-ct2).
$(MODEL_DIR)/.source-sha256 $(MODEL_DIR)-ct2/.source-sha256 &: | venv
	$(PY) -m tools.offline_model --out $(MODEL_DIR)

offline-model: $(MODEL_DIR)/.source-sha256 $(MODEL_DIR)-ct2/.source-sha256

# Local stack without Docker: redis-server child (unless REDIS_URL is set), one ingest,
# TRANSCRIBERS=N transcribers. MODEL_ID, DEVICE, PORT override the defaults.
run: venv offline-model
	$(PY) -m services.stack

# helm and KEDA's CRD models into .cache/k8s, for the Helm chart's checks (nothing is applied).
k8s-tools: system-deps
	@deploy/install-k8s-tools.sh

test: venv offline-model k8s-tools
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The GPU capacity bench (bench/gpu.py) on a machine with an NVIDIA GPU whose Python has torch and
# transformers (no venv, no model: random weights of the real shapes). Writes $(OUT)/gpu.json when
# OUT is set (the device tool's output folder), else bench/results/gpu.json.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) -m bench.gpu --device cuda --out $(or $(OUT),bench/results)/gpu.json

# Docker Compose in real containers, on a machine that cannot pull from a registry (this one):
# docker-compose.yml plus docker-compose.test.yml (images built from Debian's packages, test
# stand-ins for Redis and Prometheus, no Grafana, the local CTranslate2 model mounted read-only).
# `images` builds what is missing (FULL=1: also the full CPU image with torch, for its size);
# `compose-up` starts the stack and waits on its healthchecks; `compose-down` removes it and its volumes.
COMPOSE = $(shell $(PY) -c "import compose, pathlib; print(pathlib.Path(compose.__file__).parent / 'docker-compose')")
COMPOSE_STACK = -p $(or $(COMPOSE_PROJECT),stt) -f docker-compose.yml -f docker-compose.test.yml
images: venv
	@COMPOSE="$(COMPOSE)" deploy/docker/images.sh

compose-up: images offline-model
	@start=$$(date +%s); COMPOSE_BAKE=false $(COMPOSE) $(COMPOSE_STACK) up --build --wait --wait-timeout 300 --quiet-pull \
	  && echo "healthy in $$(( $$(date +%s) - start )) s" \
	  && echo "Streaming speech-to-text at ws://localhost:$${INGEST_PORT:-8000} (page: http://localhost:$${INGEST_PORT:-8000}/)," \
	     "Prometheus at http://127.0.0.1:$${PROMETHEUS_PORT:-9090}; no Grafana in this stack (no image can be built here)"

compose-down:
	$(COMPOSE) $(COMPOSE_STACK) down --volumes --remove-orphans --timeout 60
