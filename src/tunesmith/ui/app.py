"""The web UI as an ASGI app (`tunesmith ui`) or mounted at /ui on `tunesmith serve`.

The page and its scripts are static files shipped in the package and need no key; every
/ui/api call does when a key is set (the page asks for it and sends it as a Bearer header). A
strict Content-Security-Policy forbids inline scripts and other origins, a second line of defence
behind the scripts' rule of showing model outputs as text only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from tunesmith import __version__
from tunesmith.serve.auth import bearer_matches, unauthorized
from tunesmith.ui.config import API_KEY_ENV, REVIEW_DB, WORKSPACE_ENV, UiConfig
from tunesmith.ui.proxy import is_upload_path
from tunesmith.ui.registry_routes import RegistryAccess
from tunesmith.ui.routes import UiContext, build_router, error_body, prompt_set_files
from tunesmith.ui.upstream import Upstream
from tunesmith.ui.workspace import Workspace

STATIC_DIR = Path(__file__).parent / "static"
API_PREFIX = "/ui/api/"
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def is_public_ui_path(path: str) -> bool:
    """The page and its static assets: served without a key (they hold no data)."""
    return path in ("/ui", "/ui/") or path.startswith("/ui/assets/")


def _add_pages(app: FastAPI, ctx: UiContext) -> None:
    app.include_router(build_router(ctx))
    app.mount("/ui/assets", StaticFiles(directory=STATIC_DIR, html=False), name="ui-assets")

    @app.get("/ui", include_in_schema=False)
    async def ui_redirect() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/ui/", include_in_schema=False)
    async def ui_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


def mount_ui(app: FastAPI, state: Any) -> None:
    """Add /ui to a `tunesmith serve` app. Its workspace is $TUNESMITH_UI_WORKSPACE or the working
    directory; generations go to the app itself, through its auth and limits."""
    workspace = Workspace.open(os.environ.get(WORKSPACE_ENV) or ".")

    def tokenizer(name: str):
        return state.resolve(name).tokenizer

    registry_path = state.cfg.registry or (state.cfg.jobs.registry_path if state.cfg.jobs is not None else None)
    registry = RegistryAccess(Path(registry_path) if registry_path is not None else None, state.api_key or None,
                              workspace, lambda: prompt_set_files(workspace))
    ctx = UiContext(workspace=workspace, review_db=workspace.root / REVIEW_DB, upstream=Upstream(app=app),
                    max_body_bytes=state.cfg.max_body_bytes, mounted=True, auth_required=bool(state.api_key),
                    local_tokenizer=tokenizer, registry=registry, jobs_enabled=state.cfg.jobs is not None)
    _add_pages(app, ctx)


class UiGuard:
    """Standalone UI: the API key (constant-time, serve's check) and the body-size cap."""

    def __init__(self, app, api_key: Optional[str], max_body_bytes: int):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            headers = dict(scope.get("headers") or [])
            if self.api_key and not bearer_matches(headers.get(b"authorization", b"").decode("latin-1"),
                                                   self.api_key):
                error = unauthorized()
                await error_body(error.message, 401, error.code)(scope, receive, send)
                return
            length = headers.get(b"content-length")
            if length is not None and not is_upload_path(scope["path"]) and length.isdigit() and int(length) > self.max_body_bytes:
                await error_body(f"The request body is larger than {self.max_body_bytes} bytes.", 413,
                                 "request_too_large")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_ui_app(cfg: UiConfig, *, upstream: Optional[Upstream] = None) -> FastAPI:
    """The standalone UI: a workspace on disk and, optionally, a model server at `cfg.server`
    (or `upstream`, any OpenAI-compatible ASGI app, given in-process)."""
    workspace = Workspace.open(cfg.workspace)
    api_key = cfg.api_key.get_secret_value() if cfg.api_key else os.environ.get(API_KEY_ENV) or None
    review_db = cfg.review_db if cfg.review_db is not None else workspace.root / REVIEW_DB
    ctx = UiContext(workspace=workspace, review_db=Path(review_db), upstream=upstream or Upstream(cfg.server),
                    max_body_bytes=cfg.max_body_bytes, auth_required=bool(api_key))
    app = FastAPI(title="tunesmith ui", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    _add_pages(app, ctx)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.add_middleware(UiGuard, api_key=api_key, max_body_bytes=cfg.max_body_bytes)
    return app
