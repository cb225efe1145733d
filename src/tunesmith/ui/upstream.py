"""The model server the UI talks to: a `tunesmith serve` at a URL, or the one it is mounted on.

Every generation goes through the server's own `/v1/chat/completions`, with the browser's
`Authorization` header passed on, so the UI can do nothing the caller's key could not. Mounted on
`tunesmith serve`, requests go to the same application in-process (httpx's ASGI transport),
through its middleware: auth, limits and metrics apply exactly as for any client.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import httpx

from tunesmith.ui.workspace import WorkspaceError

GENERATION_TIMEOUT_S = 600.0
MAX_PARALLEL = 16


class UpstreamError(WorkspaceError):
    pass


class Upstream:
    def __init__(self, base_url: Optional[str] = None, *, app=None):
        self.base_url = (base_url or "http://tunesmith-serve").rstrip("/")
        self.app = app  # set when mounted: the serve application itself
        self.configured = base_url is not None or app is not None

    def client(self) -> httpx.AsyncClient:
        self._require()
        if self.app is not None:
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=self.base_url,
                                     timeout=GENERATION_TIMEOUT_S)
        return httpx.AsyncClient(base_url=self.base_url, timeout=GENERATION_TIMEOUT_S)

    def _require(self) -> None:
        if not self.configured:
            raise UpstreamError("this UI has no model server", status=503,
                                hint="start it with `tunesmith ui --server http://127.0.0.1:8000`, or open /ui on "
                                     "`tunesmith serve`")

    def unreachable(self, exc: Exception) -> UpstreamError:
        return UpstreamError(f"cannot reach the model server at {self.base_url}: {exc}", status=502,
                             hint="check that `tunesmith serve` is running there")

    async def request(self, method: str, path: str, authorization: Optional[str],
                      body: Optional[dict[str, Any]] = None) -> tuple[int, Any]:
        """(status, JSON body) of one call; connection failures become a 502 that names the server."""
        self._require()
        headers = {"Authorization": authorization} if authorization else {}
        try:
            async with self.client() as client:
                response = await client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from None
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"message": response.text[:500], "type": "upstream_error"}}
        return response.status_code, payload

    async def chat(self, authorization: Optional[str], body: dict[str, Any]) -> str:
        status, payload = await self.request("POST", "/v1/chat/completions", authorization, {**body, "stream": False})
        if status != 200:
            message = (payload.get("error") or {}).get("message") if isinstance(payload, dict) else None
            raise UpstreamError(f"the model server answered {status}: {message or payload}",
                                status=status if status in (400, 401, 403, 404, 429) else 502)
        return payload["choices"][0]["message"]["content"] or ""

    async def chat_many(self, authorization: Optional[str], bodies: list[dict[str, Any]]) -> list[str]:
        """Many chat requests at once (the server batches them), at most MAX_PARALLEL in flight."""
        gate = asyncio.Semaphore(MAX_PARALLEL)

        async def one(body: dict[str, Any]) -> str:
            async with gate:
                return await self.chat(authorization, body)

        return await asyncio.gather(*(one(b) for b in bodies))

    async def models(self, authorization: Optional[str]) -> list[dict[str, Any]]:
        status, payload = await self.request("GET", "/v1/models", authorization)
        if status != 200:
            message = (payload.get("error") or {}).get("message") if isinstance(payload, dict) else payload
            raise UpstreamError(f"the model server answered {status}: {message}", status=status if status in (401, 403) else 502)
        return payload.get("data", [])

    async def render(self, authorization: Optional[str], model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The prompt as the server's chat template renders it, asked of the server's own /ui: it holds
        the tokenizers, and /v1/models names models without revealing where their files are."""
        status, payload = await self.request("POST", "/ui/api/render", authorization,
                                             {"model": model, "messages": messages})
        error = payload.get("error") if isinstance(payload, dict) else None
        if status == 404 and not isinstance(error, dict):  # the route itself is missing
            raise UpstreamError(f"the server at {self.base_url} cannot render prompts (no /ui/api/render)",
                                status=502, hint="point --server at a `tunesmith serve`, or open its own /ui")
        if status != 200:
            message = error.get("message") if isinstance(error, dict) else payload
            raise UpstreamError(f"the model server answered {status}: {message}",
                                status=status if status in (400, 401, 403, 404) else 502)
        return {"text": payload["text"], "tokens": payload["tokens"]}


# --------------------------------------------------------------------------- rendered prompts


def render(tokenizer, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The prompt as the chat template renders it for generation: text and token count, from the
    same function the server calls (`tunesmith.chat.templates`)."""
    from tunesmith.chat.templates import render_prompt, render_prompt_text

    ids = render_prompt(tokenizer, messages)
    return {"text": render_prompt_text(tokenizer, messages), "tokens": len(ids)}
