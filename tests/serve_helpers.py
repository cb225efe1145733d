"""Helpers for the `tunesmith serve` tests: small LoRA adapters on the embedded default model,
and a real uvicorn server on 127.0.0.1 running in a thread of the test process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import uvicorn

from tunesmith.models import default_model_path
from tunesmith.models.config import ModelConfig
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.serve.app import build_app
from tunesmith.serve.config import ServeConfig

# Questions whose greedy answers differ between the base model and the two adapters.
QUESTIONS = ["What does json.dumps do?", "Explain os.path.join.", "How do I sort a list?",
             "What is a generator?", "Describe itertools.chain.", "What does zip return?"]


def build_adapter(out: Path, seed: int, *, base: str | None = None, target_modules=("q_proj", "v_proj"),
                  r: int = 4, scale: float = 0.3, use_dora: bool = False, rank_pattern: dict | None = None) -> Path:
    """A LoRA adapter with random B matrices (so it changes the model's answers), saved like a
    training run saves one: PEFT safetensors plus the tokenizer and chat template."""
    from peft import LoraConfig, get_peft_model

    model = load_model(ModelConfig(), device="cpu")
    torch.manual_seed(seed)  # PEFT draws lora_A from the global generator: same seed, same adapter
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules),
                                                  use_dora=use_dora, rank_pattern=rank_pattern or {}))
    generator = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * scale
    peft_model.peft_config["default"].base_model_name_or_path = base or str(default_model_path())
    peft_model.save_pretrained(out)
    load_tokenizer(ModelConfig()).save_pretrained(out)
    return out


def write_run_dir(run: Path, seed: int) -> Path:
    """A training run directory: adapter/ plus a manifest naming the base model."""
    build_adapter(run / "adapter", seed)
    (run / "manifest.json").write_text(json.dumps({"stage": "train", "base_model": {"path": "default"}}))
    return run


def adapter_root(base: Path) -> Path:
    """`base/adapters` holding a1, a2, a3 (distinct LoRA adapters), `pickled` (weights only as a
    pickle file) and `escape` (a symlink to an adapter outside the root)."""
    from safetensors.torch import load_file

    root = base / "adapters"
    for seed, name in enumerate(("a1", "a2", "a3"), start=1):
        build_adapter(root / name, seed=seed)
    shutil.copytree(root / "a2", root / "pickled")
    torch.save(load_file(root / "pickled" / "adapter_model.safetensors"), root / "pickled" / "adapter_model.bin")
    (root / "pickled" / "adapter_model.safetensors").unlink()
    shutil.copytree(root / "a2", base / "outside")
    os.symlink(base / "outside", root / "escape")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """`build_app(cfg)` served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, cfg: ServeConfig):
        self.app = build_app(cfg)
        self.state = self.app.state.serve
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = self.make_server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def make_server(self, cfg: ServeConfig) -> uvicorn.Server:
        return uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30, what="the server to start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    @contextlib.contextmanager
    def paused_engine(self) -> Iterator[None]:
        """Hold the engine thread between two steps, so that requests pile up in its queue and are
        admitted together (one batch) once the block ends."""
        release = threading.Event()
        blocked = threading.Event()

        def hold() -> None:
            blocked.set()
            release.wait(30)

        self.state.engine.call(hold)
        blocked.wait(10)
        try:
            yield
        finally:
            release.set()


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if part)
        if all(found.get(k, "").strip('"') == v for k, v in labels.items()):
            return float(value)
    return 0.0


def greedy_answers(cfg: ServeConfig, models: list[str], *, api_key: str | None = None,
                   load: tuple[str, str] | None = None, timeout: float = 120) -> dict[tuple[str, str], str]:
    """Each model's greedy answer (16 tokens) to each of QUESTIONS from a live server of `cfg`;
    `load` (name, path) hot-loads an adapter first. The real-engine tests compare these between
    tunesmith's own engine and the engine under test."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out = {}
    with LiveServer(cfg) as server, httpx.Client(base_url=server.url, timeout=timeout, headers=headers) as http:
        if load is not None:
            response = http.post("/v1/load_lora_adapter", json={"lora_name": load[0], "lora_path": load[1]})
            assert response.status_code == 200, response.text
        for model in models:
            for question in QUESTIONS:
                response = http.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": question}],
                    "temperature": 0, "max_tokens": 16})
                assert response.status_code == 200, response.text
                out[model, question] = response.json()["choices"][0]["message"]["content"]
    return out
