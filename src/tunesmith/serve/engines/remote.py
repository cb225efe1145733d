"""An engine that is another process: tunesmith starts it on a loopback port, waits for its
health check, and proxies every sequence to its OpenAI-style `/v1/completions` as token ids.

The prompt goes as token ids (rendered and tokenised by tunesmith, exactly as for its own
engine), one streaming HTTP request per choice: choice i of a request seeded with s is seeded
s + i, as tunesmith's engine does, so a seeded request means the same on every engine. The
subclasses say how a request names its adapter (vLLM: `model`; llama.cpp: the `lora` list) and
how the process is started.

Failures stay per request: an engine's 4xx is that request's 400; a refused or reset connection,
or an engine process that has exited, is 503 at once (never a hang); silence longer than
`request_timeout` is 504.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import json
import logging
import os
import secrets
import socket
import subprocess
import threading
import time
from typing import Any, Optional

import httpx

from tunesmith.errors import ConfigError, ServeError
from tunesmith.serve.adapters import KnownAdapters, PreparedAdapter, Target
from tunesmith.serve.config import ServeConfig
from tunesmith.serve.engines.base import (Event, GenerationEngine, RequestHandle, SamplingParams, queue_full,
                                          shutting_down)
from tunesmith.serve.metrics import ServeMetrics
from tunesmith.serve.protocol import APIError

log = logging.getLogger("tunesmith.serve")

LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class NameRegistry(KnownAdapters):
    """The adapters an engine process serves, by name (the process holds the weights)."""

    def add(self, prepared: PreparedAdapter) -> None:
        with self._lock:
            if prepared.name in self._known:
                raise ServeError(f"an adapter named {prepared.name!r} is already loaded",
                                 hint="unload it first, or pick another name")
            self._known[prepared.name] = prepared

    def remove(self, name: str) -> None:
        with self._lock:
            if self._known.pop(name, None) is None:
                raise ServeError(f"no adapter named {name!r} is loaded")


class _RemoteHandle(RequestHandle):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks: list[asyncio.Task] = []

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            for task in self.tasks:  # closing the stream makes the engine abort the sequence
                task.cancel()


def engine_unavailable(engine: str, why: str) -> APIError:
    return APIError(503, f"The {engine} engine is unavailable: {why}.", type="server_error",
                    code="engine_unavailable", headers={"Retry-After": "5"})


class RemoteEngine(GenerationEngine):
    """The process and HTTP plumbing shared by the llama.cpp and vLLM engines."""

    name = "remote"
    seed_range = 1 << 63  # seeds are sent modulo this (what the engine's seed field holds)
    key_flags: tuple[str, ...] = ()  # the engine's own options that set the key it requires

    def __init__(self, cfg: ServeConfig, registry: NameRegistry, *, base_name: str,
                 metrics: Optional[ServeMetrics] = None, port: Optional[int] = None):
        self.cfg = cfg
        self.registry = registry
        self.base_name = base_name
        self.metrics = metrics
        self.port = port or free_loopback_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.process: Optional[subprocess.Popen] = None
        self._client: Optional[httpx.AsyncClient] = None
        self._in_flight = 0
        self._stopping = False
        # Submissions read the client and the request fields under this lock, so an engine that
        # swaps its process (llama.cpp on a runtime adapter load) never pairs one process's
        # client with another's fields.
        self._route_lock = threading.Lock()
        self._users: dict[httpx.AsyncClient, int] = {}  # sequences sent (or about to be) per client
        self._event_loop: Optional[asyncio.AbstractEventLoop] = None
        if any(arg.split("=", 1)[0] in self.key_flags for arg in cfg.engine_options.extra_args):
            raise ConfigError(f"engine_options.extra_args sets {'/'.join(self.key_flags)}; tunesmith draws the "
                              f"{self.name} engine's key at each start", hint="drop it: clients use tunesmith's --api-key")
        # What the engine requires of every request but its health check: the engine listens on
        # loopback, so this keeps its routes (the management ones included) behind tunesmith's own
        # authentication. URL-safe base64 holds no comma (llama-server splits keys on commas).
        self.engine_key = secrets.token_urlsafe(32)

    # ------------------------------------------------------------------ what subclasses say

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The engine's command line."""

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @abc.abstractmethod
    def request_fields(self, target: Target) -> dict[str, Any]:
        """The body fields that pick the base or the adapter."""

    def client_headers(self) -> dict[str, str]:
        """Headers on every request to the engine: the key it requires."""
        return {"Authorization": f"Bearer {self.engine_key}"}

    def sampling_fields(self, params: SamplingParams) -> dict[str, Any]:
        """Fields that switch off the engine's own sampling defaults, so that temperature and
        top_p mean what they mean in tunesmith's engine (no top-k, no min-p, no penalties)."""
        return {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.process is None:
            self.launch()
        self._client = self.new_client(self.url)

    def launch(self) -> None:
        """Start the process and wait until its health check answers."""
        self.process = self.spawn(self.command(), self.url)

    def spawn(self, argv: list[str], url: str) -> subprocess.Popen:
        """Start `argv` and return the process once `url`'s health check answers; a process that
        exits or stays unhealthy past the startup timeout is a ServeError naming the command."""
        log.info("starting the %s engine: %s", self.name, " ".join(argv))
        try:
            process = subprocess.Popen(argv, env=self.environment(), stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise ServeError(f"cannot start the {self.name} engine ({argv[0]}): {exc.strerror or exc}",
                             hint=self.install_hint()) from None
        deadline = time.monotonic() + self.cfg.engine_options.startup_timeout
        while time.monotonic() < deadline:
            status = process.poll()
            if status is not None:
                raise ServeError(f"the {self.name} engine exited with status {status} while starting "
                                 f"(command: {' '.join(argv)}); its log is above")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    log.info("the %s engine is ready on %s", self.name, url)
                    return process
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        terminate(process)
        raise ServeError(f"the {self.name} engine did not become healthy within "
                         f"{self.cfg.engine_options.startup_timeout:g} s",
                         hint="raise engine_options.startup_timeout for a large model")

    def new_client(self, url: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=url, headers=self.client_headers(),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            timeout=httpx.Timeout(self.cfg.engine_options.request_timeout, connect=5.0))

    def install_hint(self) -> str:
        return "install the engine, or give its path in engine_options"

    def stop_process(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate(process, timeout)

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self.stop_process(min(timeout, 10.0))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def health(self) -> dict[str, Any]:
        info: dict[str, Any] = {"engine": self.name, "alive": self.alive()}
        if self.process is not None and self.process.poll() is not None:
            info["exit_status"] = self.process.returncode
        return info

    # ------------------------------------------------------------------ counts

    @property
    def queued(self) -> int:
        return 0  # the engine queues; tunesmith only counts what it has sent

    @property
    def running(self) -> int:
        return self._in_flight

    @property
    def idle(self) -> bool:
        return self._in_flight == 0

    # ------------------------------------------------------------------ adapters

    def add_adapter(self, prepared: PreparedAdapter) -> concurrent.futures.Future:
        return _done(lambda: self.registry.add(prepared))

    def remove_adapter(self, name: str) -> concurrent.futures.Future:
        return _done(lambda: self.registry.remove(name))

    # ------------------------------------------------------------------ generation

    def submit(self, target: Target, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> RequestHandle:
        if self._stopping:
            raise shutting_down()
        if not self.alive():
            status = self.process.returncode if self.process is not None else None
            raise engine_unavailable(self.name, f"its process exited (status {status})" if status is not None
                                     else "its process is not running")
        count = len(prompts) * n
        if self._in_flight + count > self.cfg.max_queue:
            raise queue_full(self._in_flight)
        self._event_loop = asyncio.get_running_loop()
        handle = _RemoteHandle(self, self._event_loop, target, prompts, n)
        if self.metrics is not None:
            self.metrics.prompt_tokens.labels(target.name).inc(handle.prompt_tokens * n)
        with self._route_lock:
            client = self._client
            bodies = [self._body(target, prompt, params, i * n + j) for i, prompt in enumerate(prompts)
                      for j in range(n)]
            self._users[client] = self._users.get(client, 0) + len(bodies)
        for index, body in enumerate(bodies):
            task = asyncio.create_task(self._sequence(handle, index, body, client))
            task.add_done_callback(lambda _task: self._release(client))
            handle.tasks.append(task)
        return handle

    def _release(self, client: httpx.AsyncClient) -> None:
        with self._route_lock:
            self._users[client] -= 1
            if not self._users[client] and client is not self._client:
                del self._users[client]

    def users(self, client: httpx.AsyncClient) -> int:
        """Sequences still in flight through `client` (the old one, after a swap)."""
        with self._route_lock:
            return self._users.get(client, 0)

    def _body(self, target: Target, prompt: list[int], params: SamplingParams, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt, "max_tokens": params.max_tokens, "temperature": params.temperature,
            "top_p": params.top_p, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": params.ignore_eos,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = (params.seed + index) % self.seed_range
        body.update(self.sampling_fields(params))
        body.update(self.request_fields(target))
        return body

    def _track(self, change: int) -> None:
        self._in_flight += change
        if self.metrics is not None:
            self.metrics.running.set(self._in_flight)

    async def _sequence(self, handle: RequestHandle, index: int, body: dict[str, Any],
                        client: Optional[httpx.AsyncClient]) -> None:
        self._track(+1)
        generated, finish, usage_tokens = 0, None, None
        try:
            assert client is not None, "the engine was not started"
            async with client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    raise self._refusal(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise self._refusal(500, data.encode())
                    if chunk.get("usage"):
                        usage_tokens = chunk["usage"].get("completion_tokens", usage_tokens)
                    for choice in chunk.get("choices") or []:
                        text = choice.get("text") or ""
                        if text:
                            generated += 1
                            self._count_tokens(handle, 1)
                            handle.events.put_nowait(Event(index, text, generated))
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
            if finish is None:
                raise engine_unavailable(self.name, "it ended the stream before the sequence finished")
            if usage_tokens is not None:
                self._count_tokens(handle, usage_tokens - generated)
                generated = usage_tokens
            handle.events.put_nowait(Event(index, "", generated, finish_reason=_finish(finish)))
        except asyncio.CancelledError:
            if self.metrics is not None:
                self.metrics.cancelled.inc()
        except APIError as exc:
            handle.events.put_nowait(Event(index, "", generated, finish_reason="error", error=exc))
        except httpx.TimeoutException:
            handle.events.put_nowait(Event(index, "", generated, finish_reason="error", error=APIError(
                504, f"The {self.name} engine sent nothing for {self.cfg.engine_options.request_timeout:g} s.",
                type="server_error", code="engine_timeout")))
        except (httpx.HTTPError, ValueError) as exc:  # refused/reset connection, broken JSON
            why = "its process exited" if not self.alive() else f"{type(exc).__name__}: {exc}"
            handle.events.put_nowait(Event(index, "", generated, finish_reason="error",
                                           error=engine_unavailable(self.name, why)))
        finally:
            self._track(-1)

    def _count_tokens(self, handle: RequestHandle, count: int) -> None:
        if self.metrics is not None and count > 0:
            self.metrics.generated_tokens.labels(handle.target.name).inc(count)

    def _refusal(self, status: int, raw: bytes) -> APIError:
        """The engine's error as tunesmith's envelope: its words for a 4xx (the request's fault),
        a 502 for anything else."""
        message = raw.decode("utf-8", "replace")[:2000]
        try:
            payload = json.loads(raw)
            error = payload.get("error", payload) if isinstance(payload, dict) else payload
            if isinstance(error, dict):
                message = str(error.get("message") or message)
            elif isinstance(payload, dict) and "message" in payload:
                message = str(payload["message"])
        except ValueError:
            pass
        if 400 <= status < 500:
            return APIError(400, f"The {self.name} engine refused the request: {message}", code="engine_refused")
        return APIError(502, f"The {self.name} engine failed: {message}", type="server_error", code="engine_error")


def terminate(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


def _done(fn) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        future.set_exception(exc)
    return future
