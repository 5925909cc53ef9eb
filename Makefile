# The two commands a newcomer needs: `make run` and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)
MODEL_DIR := models/whisper-base

.PHONY: run test lint format offline-model system-deps venv bench

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
	$(PY) -m services.offline_model --out $(MODEL_DIR)

offline-model: $(MODEL_DIR)/.source-sha256 $(MODEL_DIR)-ct2/.source-sha256

# Local stack without Docker: redis-server child (unless REDIS_URL is set), one ingest,
# TRANSCRIBERS=N transcribers. MODEL_ID, DEVICE, PORT override the defaults.
run: venv offline-model
	$(PY) -m services.stack

test: venv offline-model
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
