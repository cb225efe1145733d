"""Evaluation's decoding with finished rows dropped, against `transformers`' `generate`.

    python bench/eval_generation.py [--model default|DIR] [--examples 32] [--batch-size 16] [--max-new-tokens 96]

Both answer the same held-out demo tickets, greedy, in the same batches (sorted by prompt length,
left-padded), alternating in one process so they share the machine's load. Prints examples/s of
each, the ratio, the rows each computed, and whether the answers are identical. A base model that
does not stop on its own (or stops at varied lengths) is the case early stop is for.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TICKETS = REPO / "examples" / "data" / "tickets" / "test.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.chat.templates import render_prompt
    from tunesmith.chat.tokens import stop_token_ids
    from tunesmith.eval.generate_loop import DecodeTrace, decode_batch
    from tunesmith.models.loading import resolve_model_path

    path = resolve_model_path(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    stops = stop_token_ids(tokenizer, model.generation_config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    rows = [json.loads(line)["messages"] for line in TICKETS.read_text().splitlines()[: args.examples]]
    prompts = sorted((render_prompt(tokenizer, m[:-1]) for m in rows), key=len)

    def batches():
        for start in range(0, len(prompts), args.batch_size):
            chunk = prompts[start : start + args.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, p in enumerate(chunk):
                ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1
            yield ids, mask

    def with_generate():
        answers, rows_computed = [], 0
        for ids, mask in batches():
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                     do_sample=False, eos_token_id=stops, pad_token_id=pad_id, temperature=None,
                                     top_p=None, top_k=None)
            new = out[:, ids.size(1):]
            rows_computed += new.size(0) * new.size(1)
            for row in new.tolist():
                cut = next((j for j, t in enumerate(row) if t in stops), None)
                answers.append(row if cut is None else row[:cut])
        return answers, rows_computed

    def with_early_stop():
        answers, trace = [], DecodeTrace()
        for ids, mask in batches():
            answers += [r.tokens for r in decode_batch(model, ids, mask, max_new_tokens=args.max_new_tokens,
                                                       stop_ids=stops, trace=trace)]
        return answers, sum(trace.rows_per_forward)

    with_early_stop()  # warm-up: first-call allocations out of the timings
    timings = {"generate": [], "early_stop": []}
    results = {}
    for _ in range(2):
        for name, fn in (("generate", with_generate), ("early_stop", with_early_stop)):
            started = time.perf_counter()
            results[name] = fn()
            timings[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in timings.items()}
    lengths = [len(a) for a in results["early_stop"][0]]
    print(f"model {path}: {len(prompts)} tickets, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
          f"{torch.get_num_threads()} threads; answer lengths min {min(lengths)} max {max(lengths)}")
    for name in ("generate", "early_stop"):
        print(f"  {name:10s} {len(prompts) / best[name]:7.2f} examples/s  (best of 2: {best[name]:.1f} s; "
              f"rows computed {results[name][1]})")
    print(f"  speed-up {best['generate'] / best['early_stop']:.2f}x; identical answers: "
          f"{results['generate'][0] == results['early_stop'][0]}")


if __name__ == "__main__":
    main()
