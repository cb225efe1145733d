"""DPO throughput: TRL's `DPOTrainer` (its documented LoRA recipe) versus `tunesmith train
objective: dpo`, in one run.

    python bench/dpo_throughput.py [--model default|smollm2|DIR] [--steps 20] [--micro-batch-size 8]

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
import tempfile
import time
from pathlib import Path

from child_runs import loop_time, print_comparison, read_metrics, report, resolve_model, run_variant

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
        _, seconds = loop_time(read_metrics(cfg.output_dir / "metrics.jsonl"))
    # The same count as TRL's (one tokenisation for both), so the ratio is the ratio of loop times.
    return {"trained_tokens": _completion_tokens(args.model, pairs, args.max_seq_len), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="`default` (the embedded demo model), `smollm2` "
                    "(SmolLM2-135M-Instruct, fetched once, see docs/models.md) or a Hugging Face model directory")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--variant", choices=["trl", "tunesmith"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.model = resolve_model(args.model)
    if args.variant:
        report(run_trl(args) if args.variant == "trl" else run_tunesmith(args))
        return
    passed = ["--model", args.model, "--steps", str(args.steps), "--max-seq-len", str(args.max_seq_len),
              "--micro-batch-size", str(args.micro_batch_size)]
    results = {variant: run_variant(__file__, variant, passed) for variant in ("trl", "tunesmith")}
    print_comparison(f"model {args.model}, DPO, {args.steps} steps, micro-batch {args.micro_batch_size} pairs, "
                     f"max_seq_len {args.max_seq_len}, LoRA r=16 all-linear", results, "trl", "TRL")


if __name__ == "__main__":
    main()
