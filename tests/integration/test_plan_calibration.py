"""The memory planner against measured peaks: each case runs `python -m tunesmith train` in its own
process for two steps and compares the process's peak resident memory (the kernel's ru_maxrss of
that child) with `tunesmith plan` for the same config on CPU. The plan must be within 15%.

Cases: the embedded model with LoRA and full fine-tuning at several micro-batch sizes and row
lengths, and a 135M model with SmolLM2-135M's real shape (49k vocabulary, 30 layers, random
weights) with LoRA, full fine-tuning and gradient checkpointing.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.plan import PlanConfig, run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "data" / "tickets" / "train.jsonl"
SMOLLM2_135M_SHAPE = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)

CASES = {
    "default-lora-mb8-len1024": ("default", ["train.micro_batch_size=8", "train.max_seq_len=1024"]),
    "default-lora-mb1-len1024": ("default", ["train.micro_batch_size=1", "train.max_seq_len=1024"]),
    "default-lora-mb8-len512": ("default", ["train.micro_batch_size=8", "train.max_seq_len=512"]),
    "default-full-mb8-len512": ("default", ["method=full", "train.micro_batch_size=8", "train.max_seq_len=512"]),
    "smollm2-shape-lora-mb2-len128": ("smol", ["train.micro_batch_size=2", "train.max_seq_len=128"]),
    "smollm2-shape-full-mb1-len128": ("smol", ["method=full", "train.micro_batch_size=1", "train.max_seq_len=128"]),
    "smollm2-shape-lora-checkpointed-mb4-len256": (
        "smol", ["train.gradient_checkpointing=true", "train.micro_batch_size=4", "train.max_seq_len=256"]),
}


@pytest.fixture(scope="module")
def smol_model(tmp_path_factory) -> Path:
    """SmolLM2-135M's shape with random weights and the embedded model's tokenizer."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("smollm2-shape")
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M_SHAPE, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         max_position_embeddings=2048)
    LlamaForCausalLM(config).save_pretrained(out)
    default = REPO / "src" / "tunesmith" / "models" / "default"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(default / name, out / name)
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """The first 400 demo tickets: enough rows for two steps, quick to prepare."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with open(DEMO, encoding="utf-8") as fh:
        path.write_text("".join(itertools.islice(fh, 400)), encoding="utf-8")
    return path


# The child reports its own VmHWM (the peak of its address space after exec). ru_maxrss from
# wait4 would not do: Linux carries the forked copy of the test process's memory into the child's
# ru_maxrss at exec, so after a long test session every small run would read as big as pytest.
_REPORT_PEAK = (
    "import atexit, runpy, sys\n"
    "def _peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            open(path, 'w').write(line.split()[1])\n"
    "atexit.register(_peak)\n"
    "path = sys.argv.pop(1)\n"
    "sys.argv[0] = 'tunesmith'\n"
    "runpy.run_module('tunesmith', run_name='__main__')\n"
)


def peak_rss_of_training(overrides: list[str], out: Path) -> int:
    """Peak resident bytes of a `tunesmith train` process (its own VmHWM, not the test's)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    report = out.parent / f"{out.name}.vmhwm"
    args = [sys.executable, "-c", _REPORT_PEAK, str(report), "train",
            *[a for o in overrides for a in ("--set", o)], "--set", f"output_dir={out}"]
    done = subprocess.run(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, done.stdout.decode(errors="replace")[-3000:]
    return int(report.read_text()) * 1024  # kB


@pytest.mark.parametrize("case", list(CASES))
def test_plan_within_15_percent_of_measured_peak_rss(case, smol_model, data_file, tmp_path):
    model, settings = CASES[case]
    overrides = [f"model={smol_model if model == 'smol' else 'default'}", f"data.path={data_file}",
                 "train.max_steps=2", "data.val_ratio=0", "lora.dropout=0.05", *settings]
    measured = peak_rss_of_training(overrides, tmp_path / "run")
    planned = run(PlanConfig(overrides=overrides)).estimate.total
    record = {"case": case, "measured_mib": round(measured / 2**20), "planned_mib": round(planned / 2**20),
              "ratio": round(planned / measured, 3)}
    print(json.dumps(record))
    assert abs(planned / measured - 1) <= 0.15, record
