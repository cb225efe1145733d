"""Training fixtures: a tiny random Llama with the embedded model's tokenizer, a small prepared dataset,
preference pairs and KTO rows. The conftests of tests/unit/train and tests/integration import them."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from tunesmith.config import load_config
from tunesmith.train.config import TrainConfig
from tunesmith.data.preference_demo import preference_pairs
from tunesmith.models import default_model_path
from tunesmith.train.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
_counter = itertools.count()


def build_tiny_model(directory: Path, hidden: int = 32, layers: int = 2) -> Path:
    tok = AutoTokenizer.from_pretrained(default_model_path())
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    GenerationConfig.from_pretrained(default_model_path()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("prepared")
    lines = (REPO / "examples/data/tickets/train.jsonl").read_text().splitlines()
    (directory / "train.jsonl").write_text("\n".join(lines[:48]) + "\n")
    (directory / "val.jsonl").write_text("\n".join(lines[48:56]) + "\n")
    return directory


@pytest.fixture
def make_config(tiny_model, prepared, tmp_path):
    def make(*overrides: str) -> TrainConfig:
        out = tmp_path / f"run{next(_counter)}"
        base = [f"model={tiny_model}", f"data={prepared}", f"output_dir={out}", "train.max_steps=2",
                "train.micro_batch_size=4", "train.max_seq_len=256", "train.learning_rate=1e-2",
                "train.log_every=1", "lora.r=4"]
        return load_config(TrainConfig, None, [*base, *overrides])
    return make


def _ticket_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in (REPO / "examples/data/tickets/train.jsonl").read_text().splitlines()[:n]]


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pairs")
    pairs = preference_pairs(_ticket_rows(44), seed=0)
    (directory / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[:36]))
    (directory / "val.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[36:]))
    return directory


@pytest.fixture(scope="session")
def kto_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("kto")
    rows = []
    for i, p in enumerate(preference_pairs(_ticket_rows(40), seed=0)):
        good = i % 3 != 0
        rows.append({"messages": p["prompt"] + (p["chosen"] if good else p["rejected"]), "label": good})
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def train_command(*args: str) -> list[str]:
    """`tunesmith train ARGS` as a child process runs it."""
    return [sys.executable, "-m", "tunesmith", "train", *args]


def kill_at_first_checkpoint(args: list[str], output_dir: Path, env: dict[str, str], timeout: float) -> Path:
    """Start `tunesmith train ARGS`, SIGKILL it as soon as its first checkpoint is complete, and
    return that checkpoint (the resume tests continue from it)."""
    proc = subprocess.Popen(train_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    checkpoints = output_dir / "checkpoints"
    deadline = time.time() + timeout
    while latest_checkpoint(checkpoints) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest_checkpoint(checkpoints)
    assert killed_at is not None, proc.stderr.read().decode()[-2000:]
    return killed_at
