"""The generating routes: `/v1/chat/completions`, `/v1/completions` and `/generate`.

Each route validates its body, picks the base model or an adapter by the request's `model`,
renders the prompt with the same function training used (`tunesmith.chat.templates`), checks the
context window, and hands the sequences to the engine. It then either streams the engine's events
as server-sent events or collects them into one response. A client that disconnects cancels its
sequences: streams notice when Starlette cancels the response, non-streaming requests through a
task that waits for the `http.disconnect` message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tunesmith.chat.templates import render_prompt
from tunesmith.serve.adapters import Target
from tunesmith.serve.budget import within_budget
from tunesmith.serve.engines.base import Event, RequestHandle
from tunesmith.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest, GenerateRequest,
                                      bad_request, chat_chunk, chat_completion, new_id, parse_json_object,
                                      parse_request, sse, text_chunk, text_completion, usage, usage_chunk)
from tunesmith.serve.state import ServeState

router = APIRouter()
ROUTES = ("/v1/chat/completions", "/v1/completions", "/generate")
CLIENT_CLOSED = 499  # nginx's status for "the client went away first", for the metrics only


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, refusing it with 413 as soon as it passes the size cap (a chunked
    upload has no Content-Length for the middleware to check)."""
    cap = request.app.state.serve.cfg.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise APIError(413, f"The request body is larger than {cap} bytes.", code="request_too_large")
        chunks.append(chunk)
    return parse_json_object(b"".join(chunks))


async def _off_loop(state: ServeState, fn: Callable[[], Any]) -> Any:
    """Run tokenisation or template rendering on the tokenize pool: a 1 MB prompt takes the event
    loop long enough to stall /health and every stream."""
    return await asyncio.get_running_loop().run_in_executor(state.tokenize_pool, fn)


def _render(tokenizer, messages: list[dict[str, Any]]) -> list[int]:
    return within_budget(lambda: render_prompt(tokenizer, messages))


def _target(request: Request, state: ServeState, name: str, user: Optional[str] = None) -> Target:
    target = state.resolve(name, request.scope["state"].get("project"), user)
    request.scope["state"]["model_label"] = target.name
    return target


# --------------------------------------------------------------------------- event plumbing


class _ClientGone(Exception):
    pass


async def _watch_disconnect(request: Request, handle: RequestHandle) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            handle.events.put_nowait(None)  # wakes the collector
            return


def _observe_first_token(state: ServeState, handle: RequestHandle) -> None:
    state.metrics.ttft.labels(handle.target.name).observe(time.monotonic() - handle.created)


class _Collected:
    """Every choice of a finished request, in choice order."""

    def __init__(self, count: int):
        self.parts: list[list[str]] = [[] for _ in range(count)]
        self.token_ids: list[list[int]] = [[] for _ in range(count)]
        self.reasons: list[str] = [""] * count
        self.counts: list[int] = [0] * count  # the engine's count: a piece of text may hold several tokens

    @property
    def choices(self) -> list[tuple[str, str]]:
        return [("".join(parts), reason) for parts, reason in zip(self.parts, self.reasons)]

    @property
    def completion_tokens(self) -> int:
        return sum(self.counts)


async def _collect(request: Request, state: ServeState, handle: RequestHandle, count: int) -> _Collected:
    """Wait for every choice to finish."""
    out = _Collected(count)
    remaining, first = count, True
    watcher = asyncio.create_task(_watch_disconnect(request, handle))
    try:
        while remaining:
            event: Optional[Event] = await handle.events.get()
            if event is None:
                raise _ClientGone
            if first:
                _observe_first_token(state, handle)
                first = False
            if event.error is not None:
                handle.cancel()
                raise event.error
            out.parts[event.index].append(event.text)
            out.counts[event.index] = event.completion_tokens
            if event.token_id is not None:
                out.token_ids[event.index].append(event.token_id)
            if event.finish_reason is not None:
                out.reasons[event.index] = event.finish_reason
                remaining -= 1
    finally:
        watcher.cancel()
    return out


def _stream(state: ServeState, handle: RequestHandle, count: int, *, chat: bool, rid: str,
            include_usage: bool) -> StreamingResponse:
    model = handle.target.name

    def chunk(created: int, index: int, text: Optional[str], finish: Optional[str] = None) -> bytes:
        if chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            return sse(chat_chunk(rid, model, created, index, delta, finish))
        return sse(text_chunk(rid, model, created, index, text or "", finish))

    async def events() -> AsyncIterator[bytes]:
        created = int(time.time())
        tokens = [0] * count
        remaining, first = count, True
        try:
            if chat:  # OpenAI opens every choice with the role
                for index in range(count):
                    yield sse(chat_chunk(rid, model, created, index, {"role": "assistant", "content": ""}))
            while remaining:
                event = await handle.events.get()
                if event is None:
                    return
                if first:
                    _observe_first_token(state, handle)
                    first = False
                if event.error is not None:
                    yield sse(event.error.body())
                    break
                tokens[event.index] = event.completion_tokens
                if event.text:
                    yield chunk(created, event.index, event.text)
                if event.finish_reason is not None:
                    yield chunk(created, event.index, None, event.finish_reason)
                    remaining -= 1
            if include_usage:
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield sse(usage_chunk(rid, model, created, obj, handle.prompt_tokens, sum(tokens)))
            yield sse("[DONE]")
        finally:
            # Reached early when Starlette cancels the response because the client disconnected.
            handle.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _respond(request: Request, state: ServeState, handle: RequestHandle, count: int,
                   build: Callable[[_Collected], dict[str, Any]], *, token_ids: bool = False) -> Response:
    try:
        collected = await _collect(request, state, handle, count)
    except _ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    body = build(collected)
    if token_ids:
        for i, (choice, ids) in enumerate(zip(body["choices"], collected.token_ids)):
            choice["prompt_token_ids"] = handle.prompts[i // handle.n]
            choice["token_ids"] = ids
    return JSONResponse(body)


# --------------------------------------------------------------------------- routes


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    req = parse_request(ChatCompletionRequest, await read_json(request))
    target = _target(request, state, req.model, req.user)
    prompt = await _off_loop(state, lambda: _render(target.tokenizer, [m.as_template_message() for m in req.messages]))
    limit_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    params = state.sampling([prompt], n=req.n, max_tokens=req.token_limit, limit_param=limit_param,
                            temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=req.stop,
                            ignore_eos=req.ignore_eos)
    handle = state.engine.submit(target, [prompt], params, req.n)
    rid = new_id("chatcmpl")
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _stream(state, handle, req.n, chat=True, rid=rid, include_usage=include_usage)
    return await _respond(request, state, handle, req.n,
                          lambda out: chat_completion(rid, target.name, out.choices, len(prompt),
                                                      out.completion_tokens),
                          token_ids=req.return_token_ids)


def _completion_prompts(req: CompletionRequest, target: Target, vocab_size: int) -> list[list[int]]:
    raw = req.prompt
    if isinstance(raw, str):
        prompts = [target.tokenizer.encode(raw)]
    elif all(isinstance(p, str) for p in raw):
        prompts = [target.tokenizer.encode(p) for p in raw]
    elif all(isinstance(p, int) for p in raw):
        prompts = [list(raw)]
    else:
        prompts = [list(p) for p in raw]
    for i, ids in enumerate(prompts):
        if not ids:
            raise bad_request("The prompt is empty.", param="prompt")
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise bad_request(f"Prompt {i} has token ids outside the vocabulary (0 to {vocab_size - 1}).",
                              param="prompt")
    return prompts


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    req = parse_request(CompletionRequest, await read_json(request))
    target = _target(request, state, req.model, req.user)
    prompts = await _off_loop(state, lambda: _completion_prompts(req, target, state.vocab_size))
    params = state.sampling(prompts, n=req.n, max_tokens=req.max_tokens, limit_param="max_tokens",
                            temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=req.stop,
                            ignore_eos=req.ignore_eos)
    handle = state.engine.submit(target, prompts, params, req.n)
    count = len(prompts) * req.n
    rid = new_id("cmpl")
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _stream(state, handle, count, chat=False, rid=rid, include_usage=include_usage)
    return await _respond(request, state, handle, count,
                          lambda out: text_completion(rid, target.name, out.choices, handle.prompt_tokens,
                                                      out.completion_tokens),
                          token_ids=req.return_token_ids)


@router.post("/generate")
async def generate(request: Request) -> Response:
    """`{"prompt": "..."}` -> `{"response": "..."}`: the prompt is one user turn of the chat template."""
    state: ServeState = request.app.state.serve
    req = parse_request(GenerateRequest, await read_json(request))
    target = _target(request, state, req.model or state.base.name)
    messages = [{"role": "system", "content": req.system}] if req.system else []
    messages.append({"role": "user", "content": req.prompt})
    prompt = await _off_loop(state, lambda: _render(target.tokenizer, messages))
    params = state.sampling([prompt], n=1, max_tokens=req.max_tokens, limit_param="max_tokens",
                            temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=req.stop)
    handle = state.engine.submit(target, [prompt], params)
    return await _respond(
        request, state, handle, 1,
        lambda out: {"response": out.choices[0][0], "model": target.name, "finish_reason": out.choices[0][1],
                     "usage": usage(len(prompt), out.completion_tokens)})
