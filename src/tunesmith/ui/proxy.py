"""/ui/api/openai/v1/...: a standalone UI passes the OpenAI routes the page uses on to its server.

On `tunesmith serve` the page calls the server's /v1 routes itself (same origin). A standalone UI
is another origin, which the page's Content-Security-Policy (connect-src 'self') and the browser
keep it from calling, so the UI forwards: only the files, fine-tuning jobs, models and chat
routes, with the caller's Authorization header, the request body streamed through as it arrives
(an upload is never held whole in memory; the server applies its own size limit) and the answer
streamed back as the server sends it (so a `stream: true` chat arrives token by token).
"""

from __future__ import annotations

import re
from typing import Optional

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from tunesmith.ui.workspace import WorkspaceError

PREFIX = "/ui/api/openai/v1/"
ALLOWED = re.compile(r"(models|chat/completions|files(/[A-Za-z0-9_-]{1,100}(/content)?)?|"
                     r"fine_tuning/jobs(/[A-Za-z0-9_-]{1,100}(/(cancel|pause|resume|events|checkpoints))?)?)")
REQUEST_HEADERS = ("authorization", "content-type", "content-length", "accept")
RESPONSE_HEADERS = ("content-type", "content-disposition", "cache-control", "retry-after")


def is_upload_path(path: str) -> bool:
    """The one forwarded route whose body may exceed the UI's own cap (the server caps uploads)."""
    return path == PREFIX + "files"


def add_proxy_routes(router: APIRouter, upstream) -> None:
    @router.api_route("/openai/v1/{path:path}", methods=["GET", "POST", "DELETE"], include_in_schema=False)
    async def forward(path: str, request: Request) -> StreamingResponse:
        if not ALLOWED.fullmatch(path):
            raise WorkspaceError(f"/v1/{path} is not a route this UI forwards", status=404)
        headers = {k: v for k, v in request.headers.items() if k in REQUEST_HEADERS}
        body = request.stream() if request.method == "POST" else None
        client = upstream.client()
        try:
            sent = client.build_request(request.method, f"/v1/{path}", params=request.query_params, headers=headers,
                                        content=body)
            response = await client.send(sent, stream=True)
        except httpx.HTTPError as exc:
            await client.aclose()
            raise upstream.unreachable(exc) from None
        except BaseException:
            await client.aclose()
            raise

        async def close() -> None:
            await response.aclose()
            await client.aclose()

        kept: dict[str, Optional[str]] = {k: response.headers.get(k) for k in RESPONSE_HEADERS}
        return StreamingResponse(response.aiter_bytes(), status_code=response.status_code,
                                 headers={k: v for k, v in kept.items() if v is not None},
                                 background=BackgroundTask(close))
