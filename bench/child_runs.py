"""What the benchmarks that compare tunesmith with a peer share: each variant runs in its own
process (so the peak memory it reports is its own) and prints one `RESULT {json}` line that the
parent reads; the parent prints both rows and the ratios tunesmith / peer.

    python bench/train_throughput.py     # tunesmith vs transformers Trainer + peft
    python bench/dpo_throughput.py       # tunesmith vs TRL's DPOTrainer
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

RESULT = "RESULT "


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. Linux: VmHWM, which exec resets (getrusage's
    ru_maxrss keeps the peak of the process image before exec, i.e. of whatever forked it)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def report(result: dict[str, Any]) -> None:
    """In a child: print `result` and its peak memory as the line `run_variant` reads."""
    print(RESULT + json.dumps({**result, "peak_rss_mb": peak_rss_mb()}), flush=True)


def run_variant(script: str | Path, variant: str, args: list[str]) -> dict[str, Any]:
    """Run `script --variant VARIANT ARGS` in a fresh process; its result with trained tokens/s."""
    cmd = [sys.executable, str(script), "--variant", variant, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith(RESULT)), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(line[len(RESULT):])
    result["tokens_per_s"] = result["trained_tokens"] / result["seconds"]
    return result


def loop_time(metrics: Iterable[dict[str, Any]]) -> tuple[int, float]:
    """Trained tokens and seconds of a tunesmith run's training loop, from its metrics.jsonl
    records: each record with `tokens_per_s` times one logging window (setup and saving excluded)."""
    previous, tokens, seconds = 0, 0, 0.0
    for record in metrics:
        if "tokens_per_s" not in record:
            continue
        window = record["trained_tokens"] - previous
        previous = record["trained_tokens"]
        tokens += window
        seconds += window / record["tokens_per_s"]
    return tokens, seconds


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def print_comparison(heading: str, results: dict[str, dict[str, Any]], peer: str, peer_label: str) -> None:
    """Both rows, then trained tokens/s and peak memory of tunesmith as multiples of the peer's."""
    print(heading)
    print(f"{'':<11}{'trained tok/s':>14}{'trained tokens':>16}{'loop s':>9}{'peak RSS MB':>13}")
    for name, r in results.items():
        print(f"{name:<11}{r['tokens_per_s']:>14.0f}{r['trained_tokens']:>16}{r['seconds']:>9.1f}"
              f"{r['peak_rss_mb']:>13.0f}")
    ours, theirs = results["tunesmith"], results[peer]
    print(f"ratio tunesmith/{peer_label}: trained tokens/s x{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}, "
          f"peak memory x{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}")
