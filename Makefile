# tunesmith developer commands. `make test` is what CI runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test quickstart install clean default-model demo-data llama-server

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build, not a multi-GB CUDA download.
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt torch
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	# DeepSpeed's build imports torch, so it installs against the venv's torch (no compiled ops:
	# the ZeRO-3 tests run on CPU).
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt setuptools
	$(BIN)/python -m pip install --quiet --no-build-isolation -c requirements/constraints.txt deepspeed
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole lifecycle on the demo task, offline: prepare, train, evaluate, merge, export, serve.
quickstart: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/tunesmith quickstart --overwrite

# Rebuild the embedded default model (about 20 minutes on 2 CPU cores).
default-model: $(STAMP)
	$(BIN)/python scripts/build_default_model.py --out src/tunesmith/models/default

# Regenerate the demo ticket-triage dataset under examples/data/tickets.
demo-data: $(STAMP)
	$(BIN)/tunesmith data demo --out examples/data/tickets

# Build llama.cpp's llama-server (for `tunesmith serve --engine llama.cpp`) from the sources in the
# llama-cpp-python sdist; cached under ~/.cache/tunesmith/llama-server/VERSION/ (minutes of CPU).
llama-server:
	PYTHON=$(PYTHON) sh scripts/build_llama_server.sh

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache
