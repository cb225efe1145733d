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
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
        records = [json.loads(x) for x in (cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_s" in r]
    # Each record times one logging window of the training loop; setup and saving are excluded.
    previous, tokens, seconds = 0, 0, 0.0
    for r in steps:
        window = r["trained_tokens"] - previous
        previous = r["trained_tokens"]
        tokens += window
        seconds += window / r["tokens_per_s"]
    return {"trained_tokens": tokens, "seconds": seconds}


def child(args) -> None:
    result = run_baseline(args) if args.variant == "baseline" else run_tunesmith(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


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
        child(args)
        return
    results = {}
    for variant in ("baseline", "tunesmith"):
        cmd = [sys.executable, __file__, "--variant", variant, "--model", args.model, "--steps", str(args.steps),
               "--max-seq-len", str(args.max_seq_len),
               "--micro-batch-size", str(args.micro_batch_size), "--examples", str(args.examples)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(line[len("RESULT "):])
        r["tokens_per_s"] = r["trained_tokens"] / r["seconds"]
        results[variant] = r
    b, t = results["baseline"], results["tunesmith"]
    print(f"model {args.model}, {args.steps} steps, micro-batch {args.micro_batch_size}, max_seq_len {args.max_seq_len}, "
          "LoRA r=16 all-linear")
    print(f"{'':<11}{'trained tok/s':>14}{'trained tokens':>16}{'loop s':>9}{'peak RSS MB':>13}")
    for name, r in results.items():
        print(f"{name:<11}{r['tokens_per_s']:>14.0f}{r['trained_tokens']:>16}{r['seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}")
    print(f"ratio tunesmith/baseline: trained tokens/s x{t['tokens_per_s'] / b['tokens_per_s']:.2f}, "
          f"peak memory x{t['peak_rss_mb'] / b['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
