"""Helpers for the fine-tuning jobs tests: small data files, a jobs server config, and polling."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
TICKETS = REPO / "examples" / "data" / "tickets" / "train.jsonl"
BASE_ALIAS = "gpt-4o-mini-2024-07-18"
FINISHED = ("succeeded", "failed", "cancelled")


def ticket_lines(count: int, start: int = 0) -> list[str]:
    return TICKETS.read_text(encoding="utf-8").splitlines()[start:start + count]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def jobs_settings(root: Path, **extra: Any) -> dict[str, Any]:
    """A `jobs:` section for tiny CPU jobs on the embedded model: a high learning rate, so a few
    steps change the model's answers, and short polling, so the tests wait little."""
    return {"root": str(root), "base_models": {BASE_ALIAS: "default"}, "base_learning_rate": 5e-3,
            "poll_seconds": 0.2, "max_seq_len": 256, "lora_r": 4, **extra}


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_finished(client, job_id: str, timeout: float = 240):
    return wait_until(lambda: (lambda j: j if j.status in FINISHED else None)(client.fine_tuning.jobs.retrieve(job_id)),
                      timeout=timeout, what=f"job {job_id} to finish")


def wait_status(client, job_id: str, status: str, timeout: float = 240):
    def check():
        job = client.fine_tuning.jobs.retrieve(job_id)
        assert job.status not in FINISHED or job.status == status, (job.status, job.error)
        return job if job.status == status else None
    return wait_until(check, timeout=timeout, what=f"job {job_id} to be {status}")


def events(client, job_id: str) -> list:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=1000).data)


def dpo_line(prompt: str, good: str, bad: str) -> str:
    return json.dumps({"input": {"messages": [{"role": "user", "content": prompt}]},
                       "preferred_output": [{"role": "assistant", "content": good}],
                       "non_preferred_output": [{"role": "assistant", "content": bad}]})


def pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) has stopped running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class ServerProcess:
    """`python -m tunesmith serve --config CONFIG` in a process of its own (so it can be killed)."""

    def __init__(self, config: Path, log, key: str):
        from serve_helpers import free_port

        self.port = free_port()
        self.key = key
        self.process = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", "--config", str(config),
                                         "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self):
        import httpx
        import openai

        def ready():
            assert self.process.poll() is None, "the server exited"
            try:
                return httpx.get(self.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(ready, timeout=120, what="the server to start")
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, timeout=60)

    def stop(self) -> None:
        stop_gracefully(self.process)


def stop_gracefully(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM (a server drains, a worker hands its job back), then SIGKILL after `timeout` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
