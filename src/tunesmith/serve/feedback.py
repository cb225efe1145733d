"""Request logging and `POST /v1/feedback` on a running server (see tunesmith.registry.feedback).

`RequestLogMiddleware` copies the body of each non-streaming `/v1/chat/completions` request and
its JSON answer as they pass (bounded by the body cap), and once the answer is sent, writes the
exchange — redacted — on a worker thread when its model is opted in and sampled. The generating
routes know nothing about it. Streamed answers are not logged.
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

        async def tee_receive():
            message = await receive()
            if message["type"] == "http.request" and len(request_body) <= self.max_bytes:
                request_body.extend(message.get("body", b""))
            return message

        async def tee_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and status[0] == 200 \
                    and len(response_body) <= self.max_bytes:
                response_body.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, tee_receive, tee_send)
        if status[0] == 200 and len(request_body) <= self.max_bytes and len(response_body) <= self.max_bytes:
            try:
                self._maybe_record(bytes(request_body), bytes(response_body))
            except Exception:  # logging must never fail a request that was answered
                log.exception("could not log an exchange")

    def _maybe_record(self, request_body: bytes, response_body: bytes) -> None:
        try:
            request = json.loads(request_body)
            answer = json.loads(response_body)
        except ValueError:
            return  # a streamed answer (server-sent events) or a body that was cut off
        if not isinstance(request, dict) or request.get("stream") or not isinstance(answer, dict):
            return
        model = request.get("model")
        if not isinstance(model, str) or not self.request_log.wants(model):
            return
        choice = (answer.get("choices") or [{}])[0]
        args = (answer.get("id"), model, answer.get("model", model), request.get("messages"),
                (choice.get("message") or {}).get("content") or "", choice.get("finish_reason"), request.get("user"))
        asyncio.get_running_loop().run_in_executor(None, self._record, args)

    def _record(self, args: tuple) -> None:
        try:
            self.request_log.record(*args)
        except Exception:  # a full disk or a locked database loses this record, never the server
            log.exception("could not log exchange %s", args[0])
