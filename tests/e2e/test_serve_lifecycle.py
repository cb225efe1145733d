"""A client that goes away cancels its generation; SIGTERM drains the real `tunesmith serve`
process: new requests get 503, the ones in flight finish, then it exits 0."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from tunesmith.serve.config import ServeConfig

from serve_helpers import QUESTIONS, LiveServer, metric, wait_for

BASE = "tunesmith-demo-4m"
LONG = {"model": BASE, "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 500,
        "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a shared CPU: a second thread only waits at barriers
    with LiveServer(ServeConfig(log_level="critical")) as live:
        yield live
    torch.set_num_threads(threads)


def _counters(server) -> tuple[float, float]:
    text = httpx.get(server.url + "/metrics").text
    return metric(text, "tunesmith_cancelled_sequences_total"), metric(text, "tunesmith_generated_tokens_total",
                                                                       model=BASE)


def test_a_disconnected_stream_stops_generating(server):
    cancelled, generated = _counters(server)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as response:
            lines = response.iter_lines()
            data = [line for _, line in zip(range(50), lines) if line.startswith("data: {")][:3]
            assert len(data) == 3
    # Leaving the block closed the connection mid-stream.
    wait_for(lambda: server.state.engine.idle, timeout=20, what="the engine to drop the sequence")
    now_cancelled, now_generated = _counters(server)
    assert now_cancelled == cancelled + 1
    assert now_generated - generated < LONG["max_tokens"]


def test_a_client_that_times_out_stops_its_generation(server):
    cancelled, generated = _counters(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=LONG, timeout=httpx.Timeout(30, read=0.3))
    wait_for(lambda: server.state.engine.idle, timeout=20, what="the engine to drop the sequence")
    now_cancelled, now_generated = _counters(server)
    assert now_cancelled == cancelled + 1
    assert now_generated - generated < LONG["max_tokens"]


def _read_lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)


def test_sigterm_drains_then_exits(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNESMITH_API_KEY": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", "--port", "0", "--set", "log_level=warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    output: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, output), daemon=True).start()
    try:
        url, deadline, seen = None, time.monotonic() + 120, []
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                seen.append(output.get(timeout=1))
            except queue.Empty:
                continue
            found = re.search(r"(http://127\.0\.0\.1:\d+)/v1", seen[-1])
            url = found.group(1) if found else None
        assert url, "server did not start:\n" + "".join(seen)

        lines: list[str] = []
        first_chunk = threading.Event()

        def stream() -> None:
            body = {**LONG, "max_tokens": 150, "stream": True, "stream_options": {"include_usage": True}}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    first_chunk.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(60)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(url + "/health").status_code == 503, timeout=10, what="draining")
        refused = httpx.post(url + "/v1/chat/completions", json={**LONG, "max_tokens": 2})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"

        reader.join(120)
        assert proc.wait(timeout=60) == 0
        events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 150  # the request in flight ran to the end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
