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

Goal: at 8+ concurrent clients, at least 3x the baseline's tokens/s with lower p95.

With `--engine llama.cpp` (and `--gguf`) or `--engine vllm` it measures instead what tunesmith in
front of that engine costs: the engine alone (started with the command line tunesmith builds,
driven with the same prompt token ids on its own /v1/completions) against `tunesmith serve
--engine ...` (the same engine behind tunesmith's API), at each concurrency, plus 4 adapters vs 1
behind tunesmith; with llama.cpp also tunesmith's own engine on the same model (fp32), for the
gap between the two on CPUs. All servers run at once and are driven in turns. Goal: behind
tunesmith >= 95% of the engine's tokens/s at 8 clients.

    python bench/serve_throughput.py --engine llama.cpp --gguf model-f16.gguf --concurrency 1 8 32
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


def build_adapters(out: Path, count: int, model_path: str = "default") -> dict[str, Path]:
    """LoRA adapters on the model with random B matrices (what training would leave)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.config import ModelConfig
    from tunesmith.models.loading import load_model

    adapters = {}
    for i in range(count):
        model = load_model(ModelConfig(path=model_path), device="cpu")
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
    parser.add_argument("--engine", choices=["own", "llama.cpp", "vllm"], default="own",
                        help="own: tunesmith vs the pipeline baseline; llama.cpp/vllm: the engine alone vs behind tunesmith")
    parser.add_argument("--gguf", help="the model as a GGUF file (--engine llama.cpp)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --engine: runs per target and level, taken in turns; the best counts")
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
    adapters = build_adapters(work, 4, args.model)
    if args.engine != "own":
        compare_engine(args, env, work, adapters)
        return
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


# --------------------------------------------------------------------------- an engine alone vs behind tunesmith


def _report(label: str, level: int, stats: dict) -> None:
    print(f"{label:>17}  c={level:<3} {stats['tokens_per_s']:8.1f} tok/s  p50 {stats['p50']:6.2f}s  "
          f"p95 {stats['p95']:6.2f}s", flush=True)


def compare_engine(args, env: dict, work: Path, adapters: dict[str, Path]) -> None:
    """The engine alone, the same engine behind `tunesmith serve --engine`, and (for llama.cpp)
    tunesmith's own engine on the same model, all started before measuring and driven in turns
    at each concurrency (best of --rounds each), so a load spike from other processes cannot
    decide a ratio; then 4 adapters vs 1 behind tunesmith."""
    from tunesmith.serve.config import EngineOptions, ServeConfig
    from tunesmith.serve.engines.base import SamplingParams
    from tunesmith.serve.state import create_state

    n = args.max_tokens
    options = EngineOptions(gguf=Path(args.gguf) if args.gguf else None)
    cfg = ServeConfig(engine=args.engine, model={"path": args.model}, engine_options=options,
                      adapters={name: str(path) for name, path in adapters.items()},
                      max_batch_size=max(args.concurrency), threads=args.threads or None)
    state = create_state(cfg)
    engine = state.engine
    prompts = {q: state.base.tokenizer.encode(q) for q in QUESTIONS}
    sampling = engine.sampling_fields(SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))

    def alone_body(question: str, model: str) -> dict:
        target = state.resolve(model)
        return {"prompt": prompts[question], "max_tokens": n, "temperature": 0, "ignore_eos": True,
                **sampling, **engine.request_fields(target)}

    def tunesmith_body(question: str, model: str) -> dict:
        return {"model": model, "prompt": prompts[question], "max_tokens": n, "temperature": 0, "ignore_eos": True}

    def serve_command(port: int, engine_name: str) -> list[str]:
        return [sys.executable, "-m", "tunesmith", "serve", "--engine", engine_name, "--model", args.model,
                "--port", str(port), "--max-batch-size", str(max(args.concurrency)), "--set", "log_level=warning",
                *(["--threads", str(args.threads)] if args.threads else []),
                *(["--gguf", args.gguf] if args.gguf and engine_name != "own" else []),
                *[f"--adapter={name}={path}" for name, path in adapters.items()]]

    print(f"engine={args.engine} model={args.model} gguf={args.gguf} requests/level={args.requests} max_tokens={n} "
          f"cpu_cores={os.cpu_count()} threads={args.threads or 'default'} concurrency={args.concurrency} "
          f"rounds={args.rounds}", flush=True)
    targets = {"alone": Target("alone", engine.url, "/v1/completions", alone_body)}
    procs: list[subprocess.Popen] = []
    engine.launch()
    try:
        others = {"behind": args.engine} | ({"own": "own"} if args.engine == "llama.cpp" else {})
        for name, engine_name in others.items():
            port = free_port()
            targets[name] = Target(name, f"http://127.0.0.1:{port}", "/v1/completions", tunesmith_body)
            procs.append(start(serve_command(port, engine_name), env, work / f"{name}.log"))
            wait_ready(targets[name].url, procs[-1], timeout=cfg.engine_options.startup_timeout)
        for target in targets.values():
            asyncio.run(drive(target, 2, 1, [state.base.name]))  # warm-up
        results: dict[str, dict] = {name: {} for name in targets}
        for level in args.concurrency:
            for name in targets:
                results[name][level] = []
            for _ in range(args.rounds):
                for name, target in targets.items():
                    results[name][level].append(asyncio.run(drive(target, args.requests, level, [state.base.name])))
            for name in targets:
                results[name][level] = max(results[name][level], key=lambda r: r["tokens_per_s"])
                _report(LABELS.get(name, name).format(engine=args.engine), level, results[name][level])
        level, runs = max(args.concurrency), {"one": [], "four": []}
        for _ in range(args.rounds):
            runs["one"].append(asyncio.run(drive(targets["behind"], args.requests, level, ["ad0"])))
            runs["four"].append(asyncio.run(drive(targets["behind"], args.requests, level, list(adapters))))
        results["adapters"] = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in runs.items()}
        results["adapters"]["concurrency"] = level
    finally:
        engine.stop_process()
        for proc in procs:
            stop(proc)

    print(f"\nconcurrency  alone tok/s  behind tok/s  behind/alone  alone p95  behind p95"
          + ("  own tok/s  own/alone" if "own" in results else ""))
    for level in args.concurrency:
        a, b = results["alone"][level], results["behind"][level]
        line = (f"{level:>11}  {a['tokens_per_s']:11.1f}  {b['tokens_per_s']:12.1f}  "
                f"{b['tokens_per_s'] / a['tokens_per_s']:11.2f}x  {a['p95']:8.2f}s  {b['p95']:9.2f}s")
        if "own" in results:
            o = results["own"][level]
            line += f"  {o['tokens_per_s']:9.1f}  {o['tokens_per_s'] / a['tokens_per_s']:8.2f}x"
        print(line)
    ad = results["adapters"]
    print(f"\nadapters at c={ad['concurrency']} behind tunesmith: one {ad['one']['tokens_per_s']:.1f} tok/s, "
          f"four {ad['four']['tokens_per_s']:.1f} tok/s "
          f"({ad['four']['tokens_per_s'] / ad['one']['tokens_per_s']:.2f}x)")
    if 8 in args.concurrency:
        ratio = results["behind"][8]["tokens_per_s"] / results["alone"][8]["tokens_per_s"]
        print(f"target (behind tunesmith >= 95% of the engine's tokens/s at 8 clients): "
              f"{'met' if ratio >= 0.95 else 'NOT met'} ({ratio:.1%})")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"raw numbers: {work / 'results.json'}")


LABELS = {"alone": "{engine} alone", "behind": "behind tunesmith", "own": "tunesmith own engine"}


if __name__ == "__main__":
    main()
