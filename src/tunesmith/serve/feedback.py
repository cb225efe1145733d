"""Request logging and `POST /v1/feedback` on a running server (see tunesmith.registry.feedback).

`RequestLogMiddleware` copies the body of each `/v1/chat/completions` request and its answer as
they pass (bounded by the body cap), and once the answer is sent, writes the exchange — redacted —
on a worker thread when its model is opted in and sampled. A streamed answer (`stream: true`) is
assembled from its chunks and logged under the id the chunks carry, so feedback on it works like
feedback on any other answer; a stream that failed part-way or was cut off is not logged. The
generating routes know nothing about it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, Request

from tunesmith.registry.feedback import FeedbackRequest, RequestLog
from tunesmith.serve.protocol import APIError, parse_request
from tunesmith.serve.routes import read_json

log = logging.getLogger("tunesmith.serve.feedback")
LOGGED_ROUTE = "/v1/chat/completions"

router = APIRouter()


@router.post("/v1/feedback")
async def feedback(request: Request) -> dict[str, Any]:
    request_log: RequestLog = request.app.state.request_log
    req = parse_request(FeedbackRequest, await read_json(request))
    seq = await asyncio.get_running_loop().run_in_executor(None, request_log.add_feedback, req)
    if seq is None:
        raise APIError(404, f"No logged response has the id `{req.response_id}` (logging is off for its model, "
                       "it was not sampled, or it has expired).", param="response_id", code="response_not_found")
    return {"object": "feedback", "id": seq, "response_id": req.response_id, "rating": req.rating}


class StreamedAnswer:
    """The first choice of a streamed chat completion, assembled from its server-sent events as
    they pass: the response id and served version the chunks carry, the content deltas joined, the
    finish reason. Complete only once `[DONE]` arrived with no error event before it; the assembled
    text is bounded by `max_bytes` (a longer answer is not logged)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.id: str | None = None
        self.model: str | None = None
        self.finish_reason: str | None = None
        self._parts: list[str] = []
        self._size = 0
        self._pending = bytearray()
        self.done = self.broken = False

    @property
    def complete(self) -> bool:
        return self.done and not self.broken and self.id is not None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self._pending.extend(data)
        while (end := self._pending.find(b"\n\n")) >= 0:
            event = bytes(self._pending[:end])
            del self._pending[:end + 2]
            self._event(event)
        if len(self._pending) > self.max_bytes:
            self.broken = True

    def _event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = json.loads(payload)
            except ValueError:
                self.broken = True
                return
            if not isinstance(chunk, dict) or "error" in chunk:  # the stream failed part-way
                self.broken = True
                return
            self.id = self.id or chunk.get("id")
            self.model = chunk.get("model") or self.model
            for choice in chunk.get("choices") or []:
                if choice.get("index") != 0:
                    continue
                text = (choice.get("delta") or {}).get("content")
                if text:
                    self._parts.append(text)
                    self._size += len(text.encode("utf-8"))
                if choice.get("finish_reason") is not None:
                    self.finish_reason = choice["finish_reason"]
        if self._size > self.max_bytes:
            self.broken = True


class RequestLogMiddleware:
    def __init__(self, app, request_log: RequestLog, max_bytes: int):
        self.app = app
        self.request_log = request_log
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != LOGGED_ROUTE or not self.request_log.cfg.models:
            await self.app(scope, receive, send)
            return
        request_body, response_body, status = bytearray(), bytearray(), [0]
        streamed: list[StreamedAnswer] = []

        async def tee_receive():
            message = await receive()
            if message["type"] == "http.request" and len(request_body) <= self.max_bytes:
                request_body.extend(message.get("body", b""))
            return message

        async def tee_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                content_type = dict(message.get("headers") or []).get(b"content-type", b"")
                if content_type.startswith(b"text/event-stream"):
                    streamed.append(StreamedAnswer(self.max_bytes))
            elif message["type"] == "http.response.body" and status[0] == 200:
                if streamed:
                    streamed[0].feed(message.get("body", b""))
                elif len(response_body) <= self.max_bytes:
                    response_body.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, tee_receive, tee_send)
        if status[0] != 200 or len(request_body) > self.max_bytes:
            return
        try:
            if streamed:
                self._maybe_record_stream(bytes(request_body), streamed[0])
            elif len(response_body) <= self.max_bytes:
                self._maybe_record(bytes(request_body), bytes(response_body))
        except Exception:  # logging must never fail a request that was answered
            log.exception("could not log an exchange")

    def _maybe_record(self, request_body: bytes, response_body: bytes) -> None:
        try:
            request = json.loads(request_body)
            answer = json.loads(response_body)
        except ValueError:
            return  # a body that was cut off
        if not isinstance(request, dict) or not isinstance(answer, dict):
            return
        choice = (answer.get("choices") or [{}])[0]
        self._submit(request, answer.get("id"), answer.get("model"),
                     (choice.get("message") or {}).get("content") or "", choice.get("finish_reason"))

    def _maybe_record_stream(self, request_body: bytes, answer: StreamedAnswer) -> None:
        if not answer.complete:  # cut off, failed part-way, or longer than the cap
            return
        try:
            request = json.loads(request_body)
        except ValueError:
            return
        if isinstance(request, dict):
            self._submit(request, answer.id, answer.model, answer.text, answer.finish_reason)

    def _submit(self, request: dict, response_id, served, text: str, finish_reason) -> None:
        model = request.get("model")
        if not isinstance(model, str) or not isinstance(response_id, str) or not self.request_log.wants(model):
            return
        args = (response_id, model, served or model, request.get("messages"), text, finish_reason,
                request.get("user"))
        asyncio.get_running_loop().run_in_executor(None, self._record, args)

    def _record(self, args: tuple) -> None:
        try:
            self.request_log.record(*args)
        except Exception:  # a full disk or a locked database loses this record, never the server
            log.exception("could not log exchange %s", args[0])
