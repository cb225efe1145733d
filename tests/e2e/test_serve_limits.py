"""Bounded reads, drain and threads of `tunesmith serve`: headers and bodies have deadlines, a
draining server exits by its deadline, a second SIGTERM exits at once, tokenising a large prompt
leaves the event loop free, and an empty API key is refused."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from serve_helpers import QUESTIONS, LiveServer, wait_for

from tunesmith.cli import main
from tunesmith.serve.config import ServeConfig
from tunesmith.serve import routes
from tunesmith.serve.server import DrainingServer, uvicorn_config
from tunesmith.serve.threads import apply_thread_limits, default_threads
from tuned_helpers import one_thread

BASE = "tunesmith-demo-4m"


class Running(LiveServer):
    """The real server stack (DrainingServer, tunesmith's uvicorn settings) in a thread."""

    def __init__(self, **settings):
        super().__init__(ServeConfig(log_level="critical", **settings))

    def make_server(self, cfg: ServeConfig) -> DrainingServer:
        return DrainingServer(uvicorn_config(self.app, cfg), self.state)

    def connect(self) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port))
        conn.settimeout(30)  # a safety net; the server must answer long before
        return conn


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with one_thread():
        yield


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    return data


def test_a_half_sent_header_block_gets_408_and_is_closed():
    with Running(header_timeout=0.5) as live:
        conn = live.connect()
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        answer = _read_all(conn)  # returns once the server closes the connection
        assert answer.startswith(b"HTTP/1.1 408")
        # A well-behaved client on the same server is unaffected.
        assert httpx.get(live.url + "/health").status_code == 200


def test_a_trickling_body_gets_408_at_its_deadline():
    with Running(body_timeout=0.5) as live:
        conn = live.connect()
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\": ")
        answer = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer


def test_draining_ends_at_its_deadline_even_with_a_client_trickling_a_body():
    with Running(body_timeout=600, drain_timeout=0.5) as live:
        conn = live.connect()
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{")
        wait_for(lambda: live.state.active_requests == 1, timeout=10, what="the request to start")
        live.server.handle_exit(signal.SIGTERM, None)
        trickling = threading.Event()

        def trickle():
            while not trickling.is_set():
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.05)

        threading.Thread(target=trickle, daemon=True).start()
        live.thread.join(30)
        still_running = live.thread.is_alive()
        trickling.set()
        conn.close()
        assert not still_running, "the draining server outlived its drain deadline"


def test_tokenising_a_large_prompt_does_not_block_the_event_loop(monkeypatch):
    """Ordering, not timing: tokenisation waits until /health has answered. On the event loop it
    would block /health until the wait gave up, so /health would answer after it finished."""
    order: list[str] = []
    health_answered = threading.Event()
    real = routes._completion_prompts

    def slow_tokenise(*args, **kwargs):
        order.append("tokenise-start")
        health_answered.wait(10)
        result = real(*args, **kwargs)
        order.append("tokenise-end")
        return result

    monkeypatch.setattr(routes, "_completion_prompts", slow_tokenise)
    with Running(max_body_bytes=4 << 20) as live:
        big = {"model": BASE, "prompt": "word " * 200_000, "max_tokens": 1}  # 1 MB of text

        def post():
            return httpx.post(live.url + "/v1/completions", json=big, timeout=120)

        result: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: result.append(post()))
        sender.start()
        wait_for(lambda: "tokenise-start" in order, timeout=30, what="tokenisation to start")
        assert httpx.get(live.url + "/health", timeout=30).status_code == 200
        order.append("health")
        health_answered.set()
        sender.join(120)
    assert order == ["tokenise-start", "health", "tokenise-end"]
    assert result[0].status_code == 400 and result[0].json()["error"]["code"] == "context_length_exceeded"


def test_thread_counts_are_chosen_and_applied():
    assert [default_threads(n) for n in (1, 2, 3, 8, 16, 64)] == [1, 1, 1, 4, 8, 8]
    before = torch.get_num_threads()
    try:
        assert apply_thread_limits(3) == 3 and torch.get_num_threads() == 3
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    finally:
        torch.set_num_threads(before)


def test_the_threads_flag_reaches_the_config(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--threads", "2", "--drain-timeout", "7", "--print-config"])
    out = capsys.readouterr().out
    assert info.value.code in (0, None) and "threads: 2" in out and "drain_timeout: 7.0" in out


def test_an_empty_api_key_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--api-key", "", "--port", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--api-key is empty" in err and "Traceback" not in err


def test_a_second_sigterm_exits_at_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNESMITH_API_KEY": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", "--port", "0", "--threads", "1",
                             "--set", "log_level=warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=tmp_path)
    output: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [output.put(line) for line in proc.stdout], daemon=True).start()
    try:
        url, seen = None, []
        while url is None and proc.poll() is None:
            seen.append(output.get(timeout=120))
            found = re.search(r"(http://127\.0\.0\.1:\d+)/v1", seen[-1])
            url = found.group(1) if found else None
        assert url, "".join(seen)
        first_chunk = threading.Event()
        body = {"model": BASE, "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 500,
                "temperature": 0, "ignore_eos": True, "stream": True}

        def stream():
            try:
                with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
                    for _ in response.iter_lines():
                        first_chunk.set()
            except httpx.HTTPError:
                pass

        threading.Thread(target=stream, daemon=True).start()
        assert first_chunk.wait(60)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(url + "/health").status_code == 503, timeout=10, what="draining")
        proc.send_signal(signal.SIGTERM)
        # A finished drain exits 0; 128 + SIGTERM is the immediate exit, with the stream still going.
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
