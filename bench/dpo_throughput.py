"""DPO throughput: TRL's `DPOTrainer` (its documented LoRA recipe) versus `tunesmith train
objective: dpo`, in one run.

    python bench/dpo_throughput.py [--model default] [--steps 20] [--micro-batch-size 8]

Both train the same model with the same LoRA config (r=16, alpha 32, all linear layers, no
dropout), learning rate, micro-batch size and number of optimiser steps on the same preference
pairs of the demo ticket task (`examples/data/tickets/preference_train.jsonl`, one epoch over the
first steps × micro-batch pairs, so both see the same pairs), with the reference being the base
with the adapter disabled in both. TRL runs on CPU with `use_cpu=True` and fp32 (`bf16=False`).
Each runs in its own process so its peak memory (max RSS) is its own.

Reported: trained tokens/s (completion tokens of chosen and rejected, the tokens the loss is
computed on, counted with the same tokenisation for both; timed over the training loop only)
and peak memory, and the ratios tunesmith / TRL.
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
DATA = REPO / "examples" / "data" / "tickets" / "preference_train.jsonl"


def _pairs(n: int) -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines()[:n]]


def _completion_tokens(model: str, pairs: list[dict], max_seq_len: int) -> int:
    from tunesmith.models.config import ModelConfig
    from tunesmith.train.config import TrainSettings
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.train.pairs import tokenize_preference_rows

    tokenizer = load_tokenizer(ModelConfig(path=model))
    data = tokenize_preference_rows(pairs, tokenizer, TrainSettings(max_seq_len=max_seq_len), "bench", "pairs")
    return sum(sum(1 for t in e[side]["labels"] if t != -100) for e in data.examples for side in ("chosen", "rejected"))


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from tunesmith.models.config import ModelConfig
    from tunesmith.models.loading import load_model, load_tokenizer

    pairs = _pairs(args.steps * args.micro_batch_size)
    tokenizer = load_tokenizer(ModelConfig(path=args.model))
    model = load_model(ModelConfig(path=args.model))
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                                 for p in pairs])
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=args.micro_batch_size, max_steps=args.steps,
                           learning_rate=5e-4, lr_scheduler_type="cosine", beta=0.1, max_length=args.max_seq_len,
                           logging_steps=10, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                           bf16=False, dataloader_num_workers=0, disable_tqdm=True, seed=42)
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"trained_tokens": _completion_tokens(args.model, pairs, args.max_seq_len), "seconds": seconds}


def run_tunesmith(args) -> dict:
    from tunesmith.config import load_config
    from tunesmith.train.config import TrainConfig
    from tunesmith.train import sft

    pairs = _pairs(args.steps * args.micro_batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        prepared.mkdir()
        (prepared / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        cfg = load_config(TrainConfig, None, [
            f"model={args.model}", f"data={prepared}", f"output_dir={Path(tmp) / 'run'}", "objective=dpo",
            f"train.max_steps={args.steps}", f"train.micro_batch_size={args.micro_batch_size}",
            f"train.max_seq_len={args.max_seq_len}", "train.log_every=1", "train.learning_rate=5e-4",
            "lora.r=16", "lora.alpha=32", "lora.dropout=0", "preference.beta=0.1",
        ])
        sft.run(cfg)
        records = [json.loads(x) for x in (cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
    previous, seconds = 0, 0.0
    for r in (r for r in records if "tokens_per_s" in r):  # each record times one logging window of the loop
        window = r["trained_tokens"] - previous
        previous = r["trained_tokens"]
        seconds += window / r["tokens_per_s"]
    # The same count as TRL's (one tokenisation for both), so the ratio is the ratio of loop times.
    return {"trained_tokens": _completion_tokens(args.model, pairs, args.max_seq_len), "seconds": seconds}


def child(args) -> None:
    result = run_trl(args) if args.variant == "trl" else run_tunesmith(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--variant", choices=["trl", "tunesmith"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        child(args)
        return
    results = {}
    for variant in ("trl", "tunesmith"):
        cmd = [sys.executable, __file__, "--variant", variant, "--model", args.model, "--steps", str(args.steps),
               "--max-seq-len", str(args.max_seq_len), "--micro-batch-size", str(args.micro_batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(line[len("RESULT "):])
        r["tokens_per_s"] = r["trained_tokens"] / r["seconds"]
        results[variant] = r
    b, t = results["trl"], results["tunesmith"]
    print(f"model {args.model}, DPO, {args.steps} steps, micro-batch {args.micro_batch_size} pairs, "
          f"max_seq_len {args.max_seq_len}, LoRA r=16 all-linear")
    print(f"{'':<11}{'trained tok/s':>14}{'trained tokens':>16}{'loop s':>9}{'peak RSS MB':>13}")
    for name, r in results.items():
        print(f"{name:<11}{r['tokens_per_s']:>14.0f}{r['trained_tokens']:>16}{r['seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}")
    print(f"ratio tunesmith/TRL: trained tokens/s x{t['tokens_per_s'] / b['tokens_per_s']:.2f}, "
          f"peak memory x{t['peak_rss_mb'] / b['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
