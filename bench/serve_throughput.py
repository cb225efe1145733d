"""Throughput of `tunesmith serve` against the server the fine-tuning guides describe.

Baseline: FastAPI + a transformers `pipeline`, one request at a time (a lock around the
pipeline, as the guides' "wrap it in a /generate endpoint" code amounts to). tunesmith: `tunesmith
serve` on the same model. Both run as separate processes on 127.0.0.1 with the same thread
settings; this script is the client. For each concurrency level it sends a fixed number of
requests, every one generating exactly --max-tokens tokens (greedy; EOS ignored so the work is the
same), and prints generated tokens/s, p50/p95 latency and the tunesmith/baseline ratios. It then
measures what serving 4 adapters at once costs against serving one.

    python bench/serve_throughput.py                       # defaults: a few minutes on 2 CPU cores
    python bench/serve_throughput.py --concurrency 1 8 32 --requests 64 --max-tokens 32 --threads 0

Both servers use one torch thread unless --threads says otherwise (0: torch's default).

Target (issue #6): at 8+ concurrent clients, at least 3x the baseline's tokens/s with lower p95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

QUESTIONS = ["What does json.dumps do?", "Explain os.path.join.", "How do I sort a list in place?",
             "What is a generator?", "Describe itertools.chain.", "What does zip return?",
             "When should I use a dataclass?", "How does pathlib.Path.glob work?"]


# --------------------------------------------------------------------------- the baseline server


def run_baseline(model: str, port: int, max_tokens: int) -> None:
    """The guides' server: a pipeline behind FastAPI, one generation at a time."""
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    from tunesmith.models.loading import resolve_model_path

    pipe = pipeline("text-generation", model=resolve_model_path(model), device="cpu")
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/generate")
    def generate(body: dict) -> dict:
        messages = [{"role": "user", "content": body["prompt"]}]
        with lock:
            out = pipe(messages, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                       return_full_text=False)
        return {"response": out[0]["generated_text"], "completion_tokens": max_tokens}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} was not ready after {timeout}s")


def build_adapters(out: Path, count: int) -> dict[str, Path]:
    """LoRA adapters on the default model with random B matrices (what training would leave)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.config import ModelConfig
    from tunesmith.models.loading import load_model

    adapters = {}
    for i in range(count):
        model = load_model(ModelConfig(), device="cpu")
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        generator = torch.Generator().manual_seed(100 + i)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data = torch.randn(param.shape, generator=generator) * 0.1
        peft_model.save_pretrained(out / f"ad{i}")
        adapters[f"ad{i}"] = out / f"ad{i}"
    return adapters


class Target:
    def __init__(self, name: str, url: str, path: str, body):
        self.name, self.url, self.path, self.body = name, url, path, body


async def drive(target: Target, requests: int, concurrency: int, models: list[str]) -> dict:
    """Send `requests` requests, at most `concurrency` at a time; latencies and generated tokens."""
    latencies: list[float] = []
    tokens = 0
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=target.url, timeout=600, limits=limits) as client:
        async def one(i: int) -> None:
            nonlocal tokens
            async with semaphore:
                started = time.perf_counter()
                reply = await client.post(target.path, json=target.body(QUESTIONS[i % len(QUESTIONS)],
                                                                          models[i % len(models)]))
                reply.raise_for_status()
                latencies.append(time.perf_counter() - started)
                data = reply.json()
                tokens += data["usage"]["completion_tokens"] if "usage" in data else data["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"tokens_per_s": tokens / elapsed, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], "seconds": elapsed}


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of both servers (OMP_NUM_THREADS); 0: torch's default. One thread "
                             "by default: a tiny model gains nothing from more, and on a shared CPU extra "
                             "threads mostly wait at barriers")
    parser.add_argument("--role", choices=["bench", "baseline"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "baseline":
        run_baseline(args.model, args.port, args.max_tokens)
        return

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("TUNESMITH_API_KEY", None)
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tunesmith-bench-"))
    adapters = build_adapters(work, 4)
    n = args.max_tokens
    baseline = Target("baseline", "", "/generate", lambda q, m: {"prompt": q})
    tunesmith = Target("tunesmith", "", "/v1/chat/completions", lambda q, m: {
        "model": m, "messages": [{"role": "user", "content": q}], "max_tokens": n, "temperature": 0,
        "ignore_eos": True})
    print(f"model={args.model} requests/level={args.requests} max_tokens={n} cpu_cores={os.cpu_count()} "
          f"threads={args.threads or 'torch default'} concurrency={args.concurrency}", flush=True)

    results: dict[str, dict[int, dict]] = {}
    for target in (baseline, tunesmith):
        port = free_port()
        target.url = f"http://127.0.0.1:{port}"
        if target is baseline:
            cmd = [sys.executable, __file__, "--role", "baseline", "--model", args.model, "--port", str(port),
                   "--max-tokens", str(n)]
        else:
            cmd = [sys.executable, "-m", "tunesmith", "serve", "--model", args.model, "--port", str(port),
                   "--max-batch-size", str(max(args.concurrency)), "--set", "log_level=warning",
                   *[f"--adapter={name}={path}" for name, path in adapters.items()]]
        proc = start(cmd, env, work / f"{target.name}.log")
        try:
            wait_ready(target.url, proc)
            asyncio.run(drive(target, 2, 1, ["tunesmith-demo-4m"]))  # warm-up
            results[target.name] = {}
            for level in args.concurrency:
                stats = asyncio.run(drive(target, args.requests, level, ["tunesmith-demo-4m"]))
                results[target.name][level] = stats
                print(f"{target.name:>9}  c={level:<3} {stats['tokens_per_s']:8.1f} tok/s  "
                      f"p50 {stats['p50']:6.2f}s  p95 {stats['p95']:6.2f}s", flush=True)
            if target is tunesmith:
                # Alternate the two runs and keep each one's best, so a load spike from other
                # processes does not decide the comparison.
                level, runs = max(args.concurrency), {"one": [], "four": []}
                for _ in range(2):
                    runs["one"].append(asyncio.run(drive(target, args.requests, level, ["ad0"])))
                    runs["four"].append(asyncio.run(drive(target, args.requests, level, list(adapters))))
                best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in runs.items()}
                results["adapters"] = {**best, "concurrency": level}
        finally:
            stop(proc)

    print("\nconcurrency  baseline tok/s  tunesmith tok/s  ratio   baseline p95  tunesmith p95  p95 ratio")
    for level in args.concurrency:
        b, t = results["baseline"][level], results["tunesmith"][level]
        speedup = t["tokens_per_s"] / b["tokens_per_s"]
        print(f"{level:>11}  {b['tokens_per_s']:14.1f}  {t['tokens_per_s']:15.1f}  {speedup:5.2f}x"
              f"  {b['p95']:11.2f}s  {t['p95']:12.2f}s  {t['p95'] / b['p95']:8.2f}x")
    ad = results["adapters"]
    cost = ad["four"]["tokens_per_s"] / ad["one"]["tokens_per_s"]
    print(f"\nadapters at c={ad['concurrency']}: one adapter {ad['one']['tokens_per_s']:.1f} tok/s, "
          f"four adapters mixed in each batch {ad['four']['tokens_per_s']:.1f} tok/s ({cost:.2f}x; "
          f"p95 {ad['one']['p95']:.2f}s vs {ad['four']['p95']:.2f}s)")
    met = all(results["tunesmith"][c]["tokens_per_s"] >= 3 * results["baseline"][c]["tokens_per_s"]
              and results["tunesmith"][c]["p95"] < results["baseline"][c]["p95"] for c in args.concurrency if c >= 8)
    print(f"target (>=3x tokens/s and lower p95 at 8+ clients): {'met' if met else 'NOT met'}")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"raw numbers: {work / 'results.json'}")


if __name__ == "__main__":
    main()
