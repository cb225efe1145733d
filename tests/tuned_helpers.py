"""Tiny training runs on the embedded default model for the eval and export tests.

Each builder runs once per test process (the results are cached on disk in a temporary
directory), so the eval and export test packages share the same runs: a LoRA run trained for a
few steps on demo tickets, a QLoRA run (4-bit base), and an f16 GGUF export of the LoRA run.
The run directories look like what `tunesmith train` writes: `adapter/` (PEFT safetensors,
tokenizer, chat template), `manifest.json` (method, base_model.path) and `config.yaml`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from tunesmith.models import default_model_path

REPO = Path(__file__).resolve().parents[1]
TICKETS_TEST = REPO / "examples" / "data" / "tickets" / "test.jsonl"
_ROOT = Path(tempfile.mkdtemp(prefix="tunesmith-tuned-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@contextlib.contextmanager
def one_thread():
    """The 4M-parameter model runs fastest on one thread; hand-offs between threads dominate."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ticket_examples(n: int) -> list[list[dict]]:
    rows = []
    with open(TICKETS_TEST, encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line)["messages"])
            if len(rows) == n:
                break
    return rows


def write_jsonl(path: Path, conversations) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations), encoding="utf-8")
    return path


def _train(model, tokenizer, conversations, steps: int, lr: float) -> None:
    """A few full-batch steps on the assistant tokens, through the training path's masking."""
    from tunesmith.chat.masking import tokenize_conversation

    encoded = [tokenize_conversation(tokenizer, c) for c in conversations]
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _save_run(out: Path, model, tokenizer, method: str, quantization: str = "none") -> Path:
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    (out / "manifest.json").write_text(json.dumps(
        {"stage": "train", "method": method, "base_model": {"path": str(default_model_path())}}), encoding="utf-8")
    (out / "config.yaml").write_text(yaml.safe_dump(
        {"method": method, "model": {"path": "default", "quantization": quantization}}), encoding="utf-8")
    return out


@functools.lru_cache(maxsize=None)
def lora_run() -> Path:
    """A LoRA run trained for 12 steps on the first 4 demo test tickets (the ones eval tests score)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with one_thread():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        model = AutoModelForCausalLM.from_pretrained(default_model_path())
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
        _train(model, tokenizer, ticket_examples(4), steps=12, lr=1e-2)
        return _save_run(_ROOT / "lora-run", model, tokenizer, "lora")


@functools.lru_cache(maxsize=None)
def qlora_run() -> Path:
    """A QLoRA run: LoRA trained for a few steps on the default model loaded in 4-bit (NF4)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    with one_thread():
        torch.manual_seed(1)
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(default_model_path(), quantization_config=quant,
                                                     device_map={"": "cpu"})
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
        _train(model, tokenizer, ticket_examples(4), steps=5, lr=3e-3)
        return _save_run(_ROOT / "qlora-run", model, tokenizer, "qlora", "4bit")


@functools.lru_cache(maxsize=None)
def ollama_export() -> tuple[Path, dict]:
    """`tunesmith export ollama` of the LoRA run (f16): the directory and the run's result."""
    from tunesmith.export.config import ExportConfig
    from tunesmith.export import run as export_run

    with one_thread():
        out = _ROOT / "export-ollama"
        result = export_run.run(ExportConfig(source=str(lora_run()), out=out, format="ollama", quant="f16",
                                             name="tickets", system_prompt=None), say=lambda *_: None)
        return out, result.report


def copy_tree(src: Path, name: str) -> Path:
    """A fresh copy of a run or export directory that a test may alter."""
    target = _ROOT / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(src, target)
    return target
