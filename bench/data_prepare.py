"""Benchmark `tunesmith data prepare` on a generated file, all cleaning on.

    python bench/data_prepare.py              # 200,000 examples
    python bench/data_prepare.py --n 20000    # a quick run

Generates a JSONL file of demo support tickets (seeded) with the mess real data has: about 2%
exact copies, 2% rows with personal data and 0.5% broken lines. Then, each in its own process so
peak memory is its own, it runs
- the baseline: read every line, parse it, write it back (the least any tool must do), and
- tunesmith: `data prepare` with PII redaction, exact and near-duplicate removal and the split,
and prints examples per second, peak RSS and the ratio of the two.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from child_runs import peak_rss_mb

PII_SNIPPETS = (
    "Reach me at {name}.{n}@example.com.", "Call me on +1 415-555-{n:04d}.", "My card 4111 1111 1111 1111 was billed.",
    "Server 10.0.{a}.{b} is down.", "Key sk-proj-Abc{n}Def456Ghi789Jkl012Mno leaked.", "SSN 123-45-{n:04d} on file.",
)


def generate(path: Path, n: int, seed: int = 1) -> dict[str, int]:
    """Write n lines of tickets, with copies, personal data and broken lines mixed in."""
    from tunesmith.data.config import DemoDataConfig
    from tunesmith.data.demo import make_conversation

    rng, cfg = random.Random(seed), DemoDataConfig()
    counts = {"lines": 0, "copies": 0, "pii": 0, "broken": 0}
    recent: list[str] = []
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            roll = rng.random()
            if roll < 0.005:
                line, kind = '{"messages": [{"role": "user", "content": "cut off', "broken"
            elif roll < 0.025 and recent:
                line, kind = rng.choice(recent), "copies"
            else:
                row = make_conversation(rng, cfg)
                kind = "lines"
                if roll > 0.98:
                    snippet = rng.choice(PII_SNIPPETS).format(name="jo", n=rng.randrange(10000), a=rng.randrange(256),
                                                              b=rng.randrange(256))
                    row["messages"][-2]["content"] += " " + snippet
                    kind = "pii"
                line = json.dumps(row, ensure_ascii=False)
                recent = (recent + [line])[-1000:]
            counts[kind] += kind != "lines"
            counts["lines"] += 1
            fh.write(line + "\n")
    return counts


def baseline(source: Path, out: Path) -> int:
    rows = 0
    with open(source, encoding="utf-8") as fh, open(out / "copy.jsonl", "w", encoding="utf-8") as dst:
        for line in fh:
            try:
                dst.write(json.dumps(json.loads(line), ensure_ascii=False) + "\n")
            except json.JSONDecodeError:
                continue
            rows += 1
    return rows


def tunesmith_prepare(source: Path, out: Path) -> int:
    from tunesmith.data.config import DataPrepareConfig
    from tunesmith.data import prepare

    result = prepare.run(DataPrepareConfig(inputs=[source], out=out / "prepared", pii="redact",
                                           dedup={"near": True}))
    counts = result.counts
    print(json.dumps({"kept": counts["kept"], "rejected": counts["rejected"], "pii": counts["pii"],
                      "dedup_index_mb": round(result.manifest["dedup_index_bytes"] / 2**20, 1)}), file=sys.stderr)
    return counts["read"]


def child(which: str, source: Path, out: Path) -> None:
    start, cpu_start = time.perf_counter(), time.process_time()
    examples = baseline(source, out) if which == "baseline" else tunesmith_prepare(source, out)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"examples": examples, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb()}))


def measure(which: str, source: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", which, "--input", str(source), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{which} failed:\n{done.stderr}")
    if done.stderr.strip():
        print(f"  {which}: {done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="examples to generate")
    parser.add_argument("--child", choices=["baseline", "prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.input, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp:
        work = Path(tmp)
        source = work / "tickets.jsonl"
        made = generate(source, args.n)
        size_mb = source.stat().st_size / 2**20
        print(f"generated {made['lines']:,} lines ({size_mb:.1f} MiB): {made['copies']:,} copies, "
              f"{made['pii']:,} with personal data, {made['broken']:,} broken")
        base = measure("baseline", source, work)
        ours = measure("prepare", source, work)
    # CPU seconds next to wall seconds: on a shared machine the wall clock also counts waiting.
    print(f"{'':24}{'examples/s':>12}{'seconds':>10}{'CPU s':>8}{'examples/CPU s':>16}{'peak RSS MiB':>14}")
    for name, row in (("baseline (json copy)", base), ("tunesmith data prepare", ours)):
        rate, cpu_rate = row["examples"] / row["seconds"], row["examples"] / row["cpu_seconds"]
        print(f"{name:24}{rate:>12,.0f}{row['seconds']:>10.1f}{row['cpu_seconds']:>8.1f}{cpu_rate:>16,.0f}"
              f"{row['peak_rss_mb']:>14.0f}")
    ratio = (ours["examples"] / ours["seconds"]) / (base["examples"] / base["seconds"])
    cpu_ratio = (ours["examples"] / ours["cpu_seconds"]) / (base["examples"] / base["cpu_seconds"])
    print(f"tunesmith runs at {ratio:.3f}x the baseline's speed ({cpu_ratio:.3f}x per CPU second), with "
          f"validation, PII redaction, exact and near dedup, split and report")


if __name__ == "__main__":
    main()
