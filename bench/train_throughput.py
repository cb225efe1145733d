"""Training throughput: the recipe the common guides give versus tunesmith's defaults.

    python bench/train_throughput.py [--model default] [--steps 30] [--micro-batch-size 8]

(a) baseline: transformers `Trainer` + peft LoRA, batches padded to their longest example
    (`DataCollatorForSeq2Seq`), no packing — what the guides show;
(b) tunesmith: `tunesmith.train.sft.run` with its defaults (packed rows, the output head
    run only at positions whose next token carries loss, cheap-mask LoRA dropout on CPU).
Both train the same model with the same LoRA config, learning rate, micro-batch size, number
of optimiser steps and the same tokenised examples with the same loss masks, so the
difference is how tunesmith builds batches and computes the loss, not what is learned. Each
runs in its own process so its peak memory (max RSS) is its own. Reported: trained tokens/s (tokens that carry loss, timed over the training loop
only) and peak memory, and the ratios tunesmith / baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from child_runs import loop_time, print_comparison, read_metrics, report, run_variant

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "tickets" / "train.jsonl"


def _tokenized(model: str, n: int, max_seq_len: int):
    from tunesmith.models.config import ModelConfig
    from tunesmith.train.config import TrainSettings
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.train.batching import tokenize_rows
    from tunesmith.train.data import read_jsonl

    tokenizer = load_tokenizer(ModelConfig(path=model))
    rows = read_jsonl(DATA)[:n]
    return tokenizer, tokenize_rows(rows, tokenizer, TrainSettings(max_seq_len=max_seq_len), "bench")


def run_baseline(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunesmith.models.config import ModelConfig
    from tunesmith.models.loading import load_model

    tokenizer, data = _tokenized(args.model, args.examples, args.max_seq_len)
    model = get_peft_model(load_model(ModelConfig(path=args.model)),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    pad = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    trained = {"tokens": 0}

    def collate(features):
        batch = pad([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        trained["tokens"] += int((batch["labels"][:, 1:] != -100).sum())
        return batch

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.micro_batch_size, max_steps=args.steps,
            learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=10,
            save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, seed=42,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=data.examples, data_collator=collate)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"trained_tokens": trained["tokens"], "seconds": seconds}


def run_tunesmith(args) -> dict:
    from tunesmith.config import load_config
    from tunesmith.train.config import TrainConfig
    from tunesmith.train import sft

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        prepared.mkdir()
        lines = DATA.read_text().splitlines()[: args.examples]
        (prepared / "train.jsonl").write_text("\n".join(lines) + "\n")
        cfg = load_config(TrainConfig, None, [
            f"model={args.model}", f"data={prepared}", f"output_dir={Path(tmp) / 'run'}",
            f"train.max_steps={args.steps}", f"train.micro_batch_size={args.micro_batch_size}",
            f"train.max_seq_len={args.max_seq_len}", "train.log_every=1", "train.learning_rate=2e-4",
        ])
        sft.run(cfg)
        tokens, seconds = loop_time(read_metrics(cfg.output_dir / "metrics.jsonl"))
    return {"trained_tokens": tokens, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--examples", type=int, default=2400)
    ap.add_argument("--max-seq-len", type=int, default=256,
                    help="example cut-off for both, and tunesmith's packed row length: with the demo data "
                         "(examples up to ~250 tokens) a micro-batch then holds about as many tokens in both recipes")
    ap.add_argument("--variant", choices=["baseline", "tunesmith"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        report(run_baseline(args) if args.variant == "baseline" else run_tunesmith(args))
        return
    passed = ["--model", args.model, "--steps", str(args.steps), "--max-seq-len", str(args.max_seq_len),
              "--micro-batch-size", str(args.micro_batch_size), "--examples", str(args.examples)]
    results = {variant: run_variant(__file__, variant, passed) for variant in ("baseline", "tunesmith")}
    print_comparison(f"model {args.model}, {args.steps} steps, micro-batch {args.micro_batch_size}, "
                     f"max_seq_len {args.max_seq_len}, LoRA r=16 all-linear", results, "baseline", "baseline")


if __name__ == "__main__":
    main()
