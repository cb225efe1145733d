"""The UI's JSON API under /ui/api: runs and reports, the playground, blind reviews.

Errors leave in the server's error envelope (`{"error": {"message", "type", "code"}}`) with the
status the problem calls for: 403 for a path outside the workspace, 404 for a missing run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from tunesmith import __version__
from tunesmith.errors import TunesmithError
from tunesmith.ui import upstream as up
from tunesmith.ui.filecheck import check_stream
from tunesmith.ui.reviews import ReviewStore, export_jsonl
from tunesmith.ui.workspace import Workspace, WorkspaceError, detail, read_metrics_chunk

MAX_REVIEW_PROMPTS = 200
MAX_PROMPT_SETS = 200
NOT_PROMPT_SETS = frozenset({"metrics.jsonl", "samples.jsonl", "rejected.jsonl", "skipped_examples.jsonl"})
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed")


@dataclass
class UiContext:
    workspace: Workspace
    review_db: Path
    upstream: up.Upstream
    max_body_bytes: int
    mounted: bool = False
    auth_required: bool = False
    # Mounted on `tunesmith serve`: model name -> the tokenizer the server renders with.
    local_tokenizer: Optional[Callable[[str], Any]] = None
    # Mounted: the registry routes act on this (see registry_routes); standalone: forwarded.
    registry: Optional[Any] = None
    jobs_enabled: Optional[bool] = None  # mounted: whether the server has the jobs API; standalone: unknown
    _store: Optional[ReviewStore] = field(default=None, repr=False)

    @property
    def store(self) -> ReviewStore:
        if self._store is None:  # created on first use, so browsing a workspace writes nothing
            self._store = ReviewStore(self.review_db)
        return self._store


def error_body(message: str, status: int, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


class UiRoute(APIRoute):
    """Turns the UI's own errors into responses here, so the status survives the serve app's
    handlers (which answer every TunesmithError with 400)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except WorkspaceError as exc:
                return error_body(exc.render(), exc.status)
            except TunesmithError as exc:
                return error_body(exc.render(), 400)

        return guarded


async def read_body(request: Request, cap: int) -> dict[str, Any]:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise WorkspaceError(f"the request body is larger than {cap} bytes", status=413)
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        raise WorkspaceError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise WorkspaceError("the request body must be a JSON object")
    return body


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise WorkspaceError("`messages` must be a non-empty list of {role, content}")
    out = []
    for m in value:
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)):
            raise WorkspaceError("each message needs a role (system, user, assistant) and text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in SAMPLING_KEYS if body.get(k) is not None}


def read_prompt_set(path: Path, shown: str, limit: int) -> list[list[dict[str, str]]]:
    """The prompts of a JSONL file: OpenAI chat rows (a trailing assistant answer, if any, is the
    reference and is dropped), prompt/completion or Alpaca rows."""
    prompts: list[list[dict[str, str]]] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise WorkspaceError(f"{shown}:{line_no}: invalid JSON") from None
            if isinstance(row, dict) and isinstance(row.get("messages"), list):
                messages = row["messages"]
                while messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
                    messages = messages[:-1]
                prompt = _messages(messages) if messages else None
            elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
                prompt = [{"role": "user", "content": row["prompt"]}]
            elif isinstance(row, dict) and isinstance(row.get("instruction"), str):
                text = row["instruction"] + (f"\n\n{row['input']}" if str(row.get("input") or "").strip() else "")
                prompt = [{"role": "user", "content": text}]
            else:
                prompt = None
            if not prompt or prompt[-1]["role"] != "user":
                raise WorkspaceError(f"{shown}:{line_no}: the row has no prompt ending with a user message",
                                     hint='write rows as {"messages": [{"role": "user", "content": "..."}]}')
            prompts.append(prompt)
            if len(prompts) >= limit:
                break
    if not prompts:
        raise WorkspaceError(f"{shown} holds no prompts")
    return prompts


def prompt_set_files(ws: Workspace) -> list[str]:
    """JSONL files of the workspace that can hold prompts (an eval set, a review's prompts)."""
    found = []
    for stage in ws.stage_dirs():
        found += [ws.relative(p) for p in sorted(stage.glob("*.jsonl")) if p.name not in NOT_PROMPT_SETS]
    found += [ws.relative(p) for p in sorted(ws.root.glob("*.jsonl"))]
    return sorted(set(found))[:MAX_PROMPT_SETS]


async def capped_stream(request: Request, cap: int):
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise WorkspaceError(f"the request body is larger than {cap} bytes", status=413)
        yield chunk


def build_router(ctx: UiContext) -> APIRouter:
    router = APIRouter(prefix="/ui/api", route_class=UiRoute)
    ws = ctx.workspace

    @router.get("/info")
    async def info() -> dict[str, Any]:
        return {"version": __version__, "workspace": str(ws.root), "mounted": ctx.mounted,
                "server": None if ctx.mounted else (ctx.upstream.base_url if ctx.upstream.configured else None),
                "auth_required": ctx.auth_required, "max_body_bytes": ctx.max_body_bytes,
                "jobs": ctx.jobs_enabled, "registry": None if not ctx.mounted else ctx.registry.path is not None}

    # ------------------------------------------------------------------ runs

    @router.get("/runs")
    async def runs() -> dict[str, Any]:
        return {"workspace": str(ws.root), "runs": ws.list_runs()}

    @router.get("/run")
    async def run(path: str = Query(...)) -> dict[str, Any]:
        return detail(ws, ws.stage_dir(path))

    @router.get("/metrics")
    async def metrics(path: str = Query(...), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        return read_metrics_chunk(ws.stage_dir(path) / "metrics.jsonl", offset)

    @router.get("/file")
    async def file(path: str = Query(...)) -> Response:
        data, media = ws.read_file(path)
        return Response(data, media_type=media, headers={"X-Content-Type-Options": "nosniff",
                                                         "Content-Security-Policy": "default-src 'none'"})

    @router.get("/prompt-sets")
    async def prompt_sets() -> dict[str, Any]:
        return {"files": prompt_set_files(ws)}

    # ------------------------------------------------------------------ jobs

    @router.post("/check-file")
    async def check_file(request: Request, method: str = Query("supervised"),
                         filename: str = Query(..., max_length=255)) -> dict[str, Any]:
        """Every problem of a fine-tuning file, line by line (the body is the file)."""
        return await check_stream(capped_stream(request, ctx.max_body_bytes), filename, method)

    # ------------------------------------------------------------------ playground

    @router.get("/models")
    async def models(request: Request) -> dict[str, Any]:
        return {"models": await ctx.upstream.models(request.headers.get("authorization"))}

    @router.post("/chat")
    async def chat(request: Request) -> dict[str, Any]:
        body = await read_body(request, ctx.max_body_bytes)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise WorkspaceError("pick a model")
        request_body = {"model": model, "messages": _messages(body.get("messages")), **_sampling(body)}
        content = await ctx.upstream.chat(request.headers.get("authorization"), request_body)
        return {"model": model, "content": content}

    @router.post("/render")
    async def render(request: Request) -> dict[str, Any]:
        body = await read_body(request, ctx.max_body_bytes)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise WorkspaceError("pick a model")
        messages = _messages(body.get("messages"))
        if ctx.local_tokenizer is None:  # a standalone UI: the server renders with its own tokenizers
            return {"model": model, **await ctx.upstream.render(request.headers.get("authorization"), model, messages)}
        return {"model": model, **up.render(ctx.local_tokenizer(model), messages)}

    # ------------------------------------------------------------------ reviews

    @router.get("/reviews")
    async def reviews() -> dict[str, Any]:
        return {"reviews": ctx.store.list()}

    @router.post("/reviews")
    async def create_review(request: Request) -> dict[str, Any]:
        body = await read_body(request, ctx.max_body_bytes)
        model_1, model_2 = body.get("model_1"), body.get("model_2")
        if not (isinstance(model_1, str) and isinstance(model_2, str) and model_1 and model_2):
            raise WorkspaceError("pick two models")
        if model_1 == model_2:
            raise WorkspaceError("pick two different models")
        prompt_file = body.get("prompt_file")
        if not isinstance(prompt_file, str):
            raise WorkspaceError("pick a prompt set (a JSONL file in the workspace)")
        path = ws.resolve(prompt_file)
        if not path.is_file():
            raise WorkspaceError(f"no file {prompt_file!r} in the workspace", status=404)
        limit = body.get("limit") or MAX_REVIEW_PROMPTS
        if not isinstance(limit, int) or not 1 <= limit <= MAX_REVIEW_PROMPTS:
            raise WorkspaceError(f"limit must be 1 to {MAX_REVIEW_PROMPTS}")
        prompts = read_prompt_set(path, prompt_file, limit)
        sampling = _sampling(body)
        auth = request.headers.get("authorization")
        bodies = []
        for i, prompt in enumerate(prompts):
            seeded = {**sampling, "seed": sampling["seed"] + i} if "seed" in sampling else sampling
            bodies += [{"model": model_1, "messages": prompt, **seeded}, {"model": model_2, "messages": prompt, **seeded}]
        outputs = await ctx.upstream.chat_many(auth, bodies)
        items = [(prompt, outputs[2 * i], outputs[2 * i + 1]) for i, prompt in enumerate(prompts)]
        title = str(body.get("title") or f"{model_2} vs {model_1}")[:200]
        review_id = ctx.store.create(title=title, model_1=model_1, model_2=model_2, prompt_file=prompt_file,
                                     sampling=sampling, items=items)
        return {"id": review_id, "items": len(items)}

    @router.get("/reviews/{review_id}/next")
    async def next_item(review_id: str, reviewer: str = Query(...)) -> dict[str, Any]:
        return ctx.store.next_item(review_id, reviewer)

    @router.post("/reviews/{review_id}/votes")
    async def vote(review_id: str, request: Request) -> dict[str, Any]:
        body = await read_body(request, ctx.max_body_bytes)
        item = body.get("item")
        if not isinstance(item, int):
            raise WorkspaceError("`item` must be the item number")
        comment = body.get("comment") or ""
        if not isinstance(comment, str):
            raise WorkspaceError("`comment` must be text")
        ctx.store.vote(review_id, body.get("reviewer"), item, body.get("choice"), comment)
        return {"ok": True}

    @router.get("/reviews/{review_id}/results")
    async def results(review_id: str) -> dict[str, Any]:
        return ctx.store.results(review_id)

    @router.get("/reviews/{review_id}/export")
    async def export(review_id: str) -> Response:
        rows, skipped = ctx.store.preference_rows(review_id)
        return Response(export_jsonl(rows), media_type="application/x-ndjson", headers={
            "Content-Disposition": f'attachment; filename="{review_id}-preferences.jsonl"',
            "X-Tunesmith-Rows": str(len(rows)), "X-Tunesmith-Skipped": json.dumps(skipped)})

    if ctx.mounted:
        from tunesmith.ui.registry_routes import add_registry_routes

        add_registry_routes(router, ctx.registry, lambda request: read_body(request, ctx.max_body_bytes))
    else:
        from tunesmith.ui.proxy import add_proxy_routes
        from tunesmith.ui.registry_routes import add_forwarded_registry_routes

        add_forwarded_registry_routes(router, ctx.upstream, lambda request: read_body(request, ctx.max_body_bytes))
        add_proxy_routes(router, ctx.upstream)
    return router
