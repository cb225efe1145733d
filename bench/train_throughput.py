"""Training throughput and peak memory: tunesmith's SFT LoRA next to what users would pick instead.

    python bench/train_throughput.py [--model default|smollm2|DIR] [--steps 30] [--micro-batch-size 8]
                                     [--peers trainer,trl,llamafactory] [--repeat N]

Variants, each in its own process so the peak memory it reports is its own:
- tunesmith: `tunesmith.train.sft.run` with its defaults (packed rows, the output head run only at
  positions whose next token carries loss; on CPU, LoRA dropout masks drawn as gaps between drops
  and each micro-batch flattened into one sequence attended per example);
- trainer: the recipe the common guides give, transformers `Trainer` + peft LoRA with batches
  padded to their longest example (`DataCollatorForSeq2Seq`), no packing;
- trl: TRL's `SFTTrainer` at its best documented CPU settings: packing (best-fit decreasing into
  rows of --max-seq-len tokens, padding-free batches), loss on the assistant turns only,
  `use_cpu` (see bench/peers_trl.py for why it is fed pre-tokenised examples);
- llamafactory: `llamafactory-cli train` (LLaMA-Factory 0.9.5, installed on first use into its own
  virtual environment, see bench/peers_llamafactory.py) with `neat_packing` (packing without
  attention across examples) on the same conversations in its ShareGPT format; its template is
  the model's own chat template as LLaMA-Factory parses it, or --llamafactory-template NAME.
All train the same model with LoRA r16, alpha 32, dropout 0.05 on every linear layer, learning
rate 2e-4 (cosine, 3% warmup), the same micro-batch size and number of optimiser steps, fp32, no
gradient checkpointing, on the first --examples demo tickets. tunesmith, Trainer and TRL train
on the same tokenised examples with the same loss masks (tunesmith's tokenisation, loss on every
assistant turn); LLaMA-Factory tokenises with its template, which also trains the newline after
each `<|im_end|>` (one token more per assistant turn; the output prints both totals). The packed
variants fill rows of --max-seq-len tokens (LLaMA-Factory: one less, which it keeps for itself).

Reported: trained tokens/s (tokens that carry loss, counted on the micro-batches trained,
timed over the training loop only), peak memory (the process's VmHWM), and tunesmith's ratios
against each peer and against the best peer (the most trained tokens/s). A peer that cannot run
here shows the error it ended with instead of figures. With --repeat N every variant runs N
times in rounds and each reports its fastest run, with the range.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from child_runs import (counting_trained_tokens, fastest_run, loop_time, print_table, read_metrics, report,
                        resolve_model, trained_in, try_variant)
from peers_llamafactory import try_llamafactory
from peers_trl import run_trl

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "tickets" / "train.jsonl"
PEERS = ("trainer", "trl", "llamafactory")
LABELS = {"tunesmith": "tunesmith", "trainer": "Trainer, padded", "trl": "TRL SFTTrainer", "llamafactory": "LLaMA-Factory"}


def _tokenized(model: str, n: int, max_seq_len: int):
    from tunesmith.models.config import ModelConfig
    from tunesmith.train.config import TrainSettings
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.train.batching import tokenize_rows
    from tunesmith.train.data import read_jsonl

    tokenizer = load_tokenizer(ModelConfig(path=model))
    rows = read_jsonl(DATA)[:n]
    return tokenizer, tokenize_rows(rows, tokenizer, TrainSettings(max_seq_len=max_seq_len), "bench")


def run_trainer(args) -> dict:
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

    def collate(features):
        return pad([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.micro_batch_size, max_steps=args.steps,
            learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=10,
            save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, seed=42,
        )
        trainer = counting_trained_tokens(Trainer)(model=model, args=targs, train_dataset=data.examples, data_collator=collate)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"trained_tokens": trainer.trained_tokens, "seconds": seconds}


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


def run_child(args) -> dict:
    if args.variant == "tunesmith":
        return run_tunesmith(args)
    if args.variant == "trainer":
        return run_trainer(args)
    tokenizer, data = _tokenized(args.model, args.examples, args.max_seq_len)
    return run_trl(args, tokenizer, data.examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="`default` (the embedded demo model), `smollm2` "
                    "(SmolLM2-135M-Instruct, fetched once, see docs/models.md) or a Hugging Face model directory")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--examples", type=int, default=2400)
    ap.add_argument("--max-seq-len", type=int, default=256,
                    help="example cut-off for every variant, and the length of the packed rows: with the demo data "
                         "(examples up to ~250 tokens) a padded micro-batch then holds about as many tokens")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every variant this many times, in rounds (tunesmith, then each peer), and report each "
                         "variant's fastest run with the range: on a shared machine a single run can be slowed by "
                         "other load, and rounds spread it over all variants")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated peers to run next to tunesmith, from {', '.join(PEERS)} (default: all)")
    ap.add_argument("--llamafactory-template", metavar="NAME",
                    help="a template LLaMA-Factory names (e.g. smollm2, chatml); default: it parses the model's own "
                         "chat template, which renders the demo model's and SmolLM2's prompts exactly")
    ap.add_argument("--variant", choices=["tunesmith", "trainer", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.model = resolve_model(args.model)
    if args.variant:
        report(run_child(args))
        return
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    passed = ["--model", args.model, "--steps", str(args.steps), "--max-seq-len", str(args.max_seq_len),
              "--micro-batch-size", str(args.micro_batch_size), "--examples", str(args.examples)]
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    runs: dict[str, list[dict]] = {variant: [] for variant in ["tunesmith", *peers]}
    for round_ in range(args.repeat):
        for variant in runs:
            print(f"running {variant}" + (f" (round {round_ + 1} of {args.repeat})" if args.repeat > 1 else "") + " ...",
                  flush=True)
            if variant == "llamafactory":
                done = try_llamafactory(args, DATA)
            else:
                done = try_variant(__file__, variant, passed)
            runs[variant].append(done)
            print(f"  {variant}: " + (done["error"].splitlines()[-1] if "error" in done else
                                      f"{done['tokens_per_s']:.0f} trained tok/s, peak {done['peak_rss_mb']:.0f} MB"),
                  flush=True)
    results = {variant: fastest_run(done) for variant, done in runs.items()}
    if "error" not in results.get("llamafactory", {"error": ""}):
        _, data = _tokenized(args.model, args.examples, args.max_seq_len)
        theirs = results["llamafactory"]
        theirs["notes"].append(
            f"template {theirs['template']}; the {args.examples} examples carry loss on "
            f"{theirs['dataset_trained_tokens']} tokens as LLaMA-Factory tokenises them, "
            f"on {sum(trained_in(e['labels']) for e in data.examples)} as tunesmith does")
    print_table(f"model {args.model}, {args.steps} steps, micro-batch {args.micro_batch_size}, "
                f"max_seq_len {args.max_seq_len}, LoRA r=16 alpha 32 all-linear, lr 2e-4", results, LABELS)


if __name__ == "__main__":
    main()
