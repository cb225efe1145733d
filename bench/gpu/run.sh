#!/usr/bin/env bash
# The one-GPU check of tunesmith's training (bench/gpu/README.md): LoRA MFU on a Qwen2.5-0.5B and a
# Llama-3.1-8B shape, QLoRA peak memory on the 8B shape, a DPO step, one table; then, where the
# `vllm` command is installed, the real vLLM behind tunesmith. Random weights, nothing downloaded. `bash bench/gpu/run.sh --dry-run` checks the script on CPU with tiny shapes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"   # the interpreter that has torch (set PYTHON=... to choose another)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  # Packages the GPU machine lacks, carried as wheels (see README.md); installed beside, not into, its Python.
  "$PYTHON" -m pip install --quiet --no-deps --no-index --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/src"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
"$PYTHON" bench/gpu/check.py "$@"
case " $* " in *" --dry-run "*) exit 0 ;; esac
if command -v vllm >/dev/null 2>&1 && "$PYTHON" -c "import pytest" 2>/dev/null; then
  echo "vLLM behind tunesmith: greedy answers, adapters at start and hot-loaded (tests/e2e/test_serve_engines_vllm_real.py)"
  "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/e2e/test_serve_engines_vllm_real.py
else
  echo "vLLM behind tunesmith: not run (needs the vllm command and pytest here: pip install vllm pytest)"
fi
