"""The servers the docs start, and the HTTP examples (curl, request and response bodies) run
against them.

A page's `tunesmith serve` command is parsed by the real CLI; the config it resolves is served by
`serve_helpers.LiveServer` on a free loopback port, with the embedded default model standing in
for a hub model that is not available offline. Examples aimed at 127.0.0.1:8000 are pointed at it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import openai.types
import openai.types.chat
from serve_helpers import LiveServer

from tunesmith.models.config import ModelConfig
from tunesmith.serve import protocol
from tunesmith.serve.config import ServeConfig

DOC_HOSTS = ("127.0.0.1:8000", "localhost:8000")
REQUESTS = {"/v1/chat/completions": protocol.ChatCompletionRequest, "/v1/completions": protocol.CompletionRequest,
            "/generate": protocol.GenerateRequest, "/v1/load_lora_adapter": protocol.LoadLoraRequest,
            "/v1/unload_lora_adapter": protocol.UnloadLoraRequest}
RESPONSES = {"/v1/chat/completions": openai.types.chat.ChatCompletion, "/v1/completions": openai.types.Completion}


class Servers:
    """LiveServers for the serve configs the pages resolve, started on first use; the same
    `tunesmith serve` command on two pages shares one server."""

    def __init__(self, make_run):
        self._live: dict[str, tuple[LiveServer, set[str]]] = {}
        self._make_run = make_run   # callable(path): put a stand-in training run at path

    def get(self, cfg: ServeConfig, sandbox: Path, page_text: str) -> LiveServer:
        key = cfg.model_dump_json()
        if key not in self._live:
            live = LiveServer(self._local(cfg, sandbox, page_text)).__enter__()
            self._live[key] = (live, set(self._model_ids(live)))
        return self._live[key][0]

    def _local(self, cfg: ServeConfig, sandbox: Path, page_text: str) -> ServeConfig:
        model = cfg.model if cfg.model.path == "default" or (sandbox / cfg.model.path).exists() else ModelConfig()
        root = sandbox / cfg.adapter_root if cfg.adapter_root else None
        for lora_path in re.findall(r'"lora_path":\s*"([^"]+)"', page_text) if root else ():
            self._make_run(root / lora_path)
        adapters = {name: str(sandbox / path) for name, path in cfg.adapters.items()}
        jobs = cfg.jobs.model_copy(update={"root": sandbox / cfg.jobs.root}) if cfg.jobs else None  # not the repo
        return cfg.model_copy(update={"model": model, "adapters": adapters, "adapter_root": root,
                                      "log_level": "warning", "jobs": jobs})

    @staticmethod
    def _headers(live: LiveServer) -> dict[str, str]:
        return {"Authorization": f"Bearer {live.state.api_key}"} if live.state.api_key else {}

    def _model_ids(self, live: LiveServer) -> list[str]:
        return [m["id"] for m in httpx.get(live.url + "/v1/models", headers=self._headers(live)).json()["data"]]

    def reset(self, cfg: ServeConfig) -> None:
        """Unload what an example loaded at runtime, so the next one starts from the same server."""
        live, initial = self._live.get(cfg.model_dump_json(), (None, set()))
        for name in set(self._model_ids(live)) - initial if live else ():
            httpx.post(live.url + "/v1/unload_lora_adapter", json={"lora_name": name}, headers=self._headers(live))

    def close(self) -> None:
        for live, _ in self._live.values():
            live.__exit__(None, None, None)
        self._live.clear()


def point_at(text: str, live: LiveServer) -> str:
    for host in DOC_HOSTS:
        text = text.replace(f"http://{host}", live.url)
    return text


def check_request_body(route: str, body: dict) -> None:
    """A documented request body uses only fields the route's request schema has, validly."""
    cls = REQUESTS.get(route)
    assert cls is not None, f"no request schema known for {route}"
    unknown = set(body) - set(cls.model_fields)
    assert not unknown, f"{route}: the request body has fields the server does not know: {sorted(unknown)}"
    try:
        protocol.parse_request(cls, body)
    except protocol.APIError as exc:
        raise AssertionError(f"{route}: the documented request body is invalid: {exc.message}") from None


def check_response(route: str, status: int, text: str, expected: list[str]) -> None:
    assert 200 <= status < 300, f"{route} answered HTTP {status}: {text[:500]}"
    data = json.loads(text)
    if route in RESPONSES:
        RESPONSES[route].model_validate(data)
    if route == "/v1/models":
        assert data["object"] == "list" and data["data"], data
        for item in data["data"]:
            openai.types.Model.model_validate(item)
    for comment in expected:
        if comment.startswith("{"):
            shown = json.loads(re.sub(r"\{\s*(\.\.\.|…)\s*\}", "{}", comment))
            assert set(shown) == set(data), (f"{route}: the docs show the keys {sorted(shown)}, "
                                             f"the server sent {sorted(data)}")


def _body_and_url(argv: list[str]) -> tuple[str, dict | None]:
    urls = [a for a in argv if a.startswith("http")]
    assert len(urls) == 1, f"expected one URL in `{' '.join(argv)}`"
    body = None
    for flag, value in zip(argv, argv[1:]):
        if flag in ("-d", "--data", "--data-raw", "--json"):
            body = json.loads(value)
    return urls[0], body


def run_curl(argv: list[str], live: LiveServer | None, comments: list[str]) -> None:
    """Send the documented request to the test server and check what comes back."""
    assert live is not None, "a curl example needs a `tunesmith serve` command earlier on its page"
    url, body = _body_and_url(argv)
    assert any(host in url for host in DOC_HOSTS), f"{url} is not the server the docs start (127.0.0.1:8000)"
    route = httpx.URL(url).path
    if body is not None:
        check_request_body(route, body)
    command = [point_at(a, live) if a.startswith("http") else a for a in argv]
    status, text = _send(command) if shutil.which("curl") else _send_with_httpx(command, body)
    check_response(route, status, text, comments)


def _send(command: list[str]) -> tuple[int, str]:
    done = subprocess.run([*command, "-sS", "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"curl failed: {done.stderr}"
    text, _, status = done.stdout.rpartition("\n")
    return int(status), text


def _send_with_httpx(command: list[str], body: dict | None) -> tuple[int, str]:
    """Without curl: the same method, URL, headers and body through httpx."""
    headers = dict(v.split(":", 1) for f, v in zip(command, command[1:]) if f in ("-H", "--header"))
    url = next(a for a in command if a.startswith("http"))
    response = httpx.request("POST" if body is not None else "GET", url, timeout=120,
                             headers={k.strip(): v.strip() for k, v in headers.items()},
                             content=json.dumps(body) if body is not None else None)
    return response.status_code, response.text
