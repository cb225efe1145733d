"""`build_app`: the FastAPI application of `tunesmith serve`, buildable in-process for tests.

A pure ASGI middleware in front of every route turns requests away before any work is done —
503 while draining, 401 without the API key, 413 for a declared body over the cap — and records
each request's route, model, status and latency. Every error, including FastAPI's own 404/405,
leaves in OpenAI's error envelope.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith import __version__
from tunesmith.serve.config import ServeConfig
from tunesmith.errors import TunesmithError
from tunesmith.serve.adapters import check_name, resolve_under_root
from tunesmith.serve.auth import PUBLIC_PATHS, bearer_matches, management_disabled, unauthorized
from tunesmith.serve.protocol import APIError, LoadLoraRequest, UnloadLoraRequest, bad_request, parse_request
from tunesmith.serve.routes import ROUTES as GENERATION_ROUTES
from tunesmith.serve.routes import read_json, router
from tunesmith.serve.state import ServeState, create_state
from tunesmith.serve.timeouts import BodyDeadline
from tunesmith.ui.app import is_public_ui_path, mount_ui

log = logging.getLogger("tunesmith.serve")

ADMIN_ROUTES = ("/health", "/metrics", "/v1/models", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")
KNOWN_ROUTES = frozenset((*ADMIN_ROUTES, *GENERATION_ROUTES))
# Routes a project's key (tunesmith.jobs) may not use: they act on the whole server.
SERVER_KEY_ONLY = frozenset({"/metrics", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class GuardMiddleware:
    """Shutdown, authentication and body-size gates, plus per-request metrics."""

    def __init__(self, app, state: ServeState):
        self.app = app
        self.state = state

    def _refusal(self, scope) -> Optional[APIError]:
        state = self.state
        if state.draining:
            return APIError(503, "The server is shutting down.", type="server_error", code="server_shutting_down",
                            headers={"Connection": "close", "Retry-After": "5"})
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization", b"").decode("latin-1")
        if state.jobs is not None:  # API keys of projects (tunesmith.jobs): who may see which jobs and models
            scope["state"]["project"] = state.jobs.project_for(header)
        if state.api_key and scope["path"] not in PUBLIC_PATHS and not is_public_ui_path(scope["path"]):
            if not bearer_matches(header, state.api_key) and (scope["state"].get("project") is None
                                                              or scope["path"] in SERVER_KEY_ONLY):
                return unauthorized()
        cap = state.jobs.cfg.max_upload_bytes if state.jobs is not None and scope["path"] == "/v1/files" \
            else state.cfg.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            return APIError(413, f"The request body is larger than {cap} bytes.", code="request_too_large")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        started = time.perf_counter()
        status = [500]
        scope.setdefault("state", {})["model_label"] = "-"

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        state.active_requests += 1
        receive = BodyDeadline(receive, state.cfg.body_timeout)
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                if refusal.headers.get("Connection") == "close":
                    # Read the (bounded) body first: closing a socket with unread request bytes
                    # makes the kernel reset the connection, and the client never sees the 503.
                    try:
                        await _drain_body(receive, state.cfg.max_body_bytes)
                    except APIError:  # the body trickles: answer now, the connection closes anyway
                        pass
                await error_response(refusal)(scope, receive, tracking_send)
            else:
                await self.app(scope, receive, tracking_send)
        finally:
            state.active_requests -= 1
            route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
            state.metrics.requests.labels(route, scope["state"]["model_label"], str(status[0])).inc()
            state.metrics.latency.labels(route).observe(time.perf_counter() - started)


async def _drain_body(receive, limit: int) -> None:
    read = 0
    while read <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(TunesmithError)
    async def _user_error(request: Request, exc: TunesmithError):
        return error_response(bad_request(exc.render()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(APIError(exc.status_code, message, code=codes.get(exc.status_code)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(bad_request(f"Invalid request: {exc.errors()[0].get('msg', exc)}"))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(APIError(500, "Internal server error; see the server log.", type="server_error",
                                       code="internal_error"))


def build_app(cfg: ServeConfig | None = None, *, model=None, tokenizer=None,
              state: ServeState | None = None) -> FastAPI:
    """The server as an ASGI app. Give a config (the model is loaded unless `model` is given) or a
    ready `state`. The engine thread starts and stops with the app's lifespan."""
    if state is None:
        state = create_state(cfg or ServeConfig(), model=model, tokenizer=tokenizer)
    if state.cfg.jobs is not None and state.jobs is None:
        from tunesmith.jobs.service import JobsService

        state.jobs = JobsService(state.cfg.jobs, state)
    if state.cfg.registry is not None and state.aliases is None:
        from tunesmith.serve.aliases import AliasRouter

        state.aliases = AliasRouter(state, state.cfg.registry, poll_interval=state.cfg.registry_poll_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.engine.start()
        if state.jobs is not None:
            await asyncio.get_running_loop().run_in_executor(None, state.jobs.start)
        if state.aliases is not None:  # loads the aliased versions before the first request
            await asyncio.get_running_loop().run_in_executor(None, state.aliases.start)
        try:
            yield
        finally:
            if state.aliases is not None:
                await asyncio.get_running_loop().run_in_executor(None, state.aliases.stop)
            if state.jobs is not None:
                await asyncio.get_running_loop().run_in_executor(None, state.jobs.stop)
            await asyncio.get_running_loop().run_in_executor(None, state.engine.shutdown)
            state.tokenize_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="tunesmith serve", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    _install_error_handlers(app)
    app.include_router(router)
    if state.jobs is not None:
        from tunesmith.jobs.routes import router as jobs_router

        app.include_router(jobs_router)
    _add_admin_routes(app, state)
    mount_ui(app, state)  # /ui: the web UI, generating through this app's own routes
    if state.cfg.request_log is not None:  # inside the guard: refused requests are never logged
        from tunesmith.registry.drift import DriftCollector
        from tunesmith.registry.feedback import RequestLog
        from tunesmith.serve.feedback import RequestLogMiddleware
        from tunesmith.serve.feedback import router as feedback_router

        app.state.request_log = RequestLog(state.cfg.request_log)
        state.metrics.registry.register(DriftCollector(app.state.request_log))
        app.include_router(feedback_router)
        app.add_middleware(RequestLogMiddleware, request_log=app.state.request_log, max_bytes=state.cfg.max_body_bytes)
    app.add_middleware(GuardMiddleware, state=state)
    return app


def _add_admin_routes(app: FastAPI, state: ServeState) -> None:
    @app.get("/health")
    async def health() -> Any:
        engine = state.engine.health()
        body = {"status": "ok" if engine["alive"] else "engine_down", "model": state.base.name,
                "adapters": state.registry.names(), "loaded_adapters": state.registry.loaded_names(),
                "queued": state.engine.queued, "running": state.engine.running, "engine": engine}
        return body if engine["alive"] else JSONResponse(body, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        # Names only: where the model and adapters live on the server is none of a client's business.
        created = int(state.created)
        data = [{"id": state.base.name, "object": "model", "created": created, "owned_by": "tunesmith",
                 "root": state.base.name, "parent": None}]
        if state.jobs is not None:
            data += state.jobs.model_objects(request.scope["state"].get("project"), created)
        if state.aliases is not None:  # registry aliases and versions, not their engine names
            data += [{"id": name, "object": "model", "created": created, "owned_by": "tunesmith", "root": name,
                      "parent": state.base.name} for name in state.aliases.names()]
        for name in state.registry.names():
            if state.jobs is not None and state.jobs.hides(name):
                continue
            if state.aliases is not None and state.aliases.is_engine_name(name):
                continue
            if state.registry.get(name) is not None:
                data.append({"id": name, "object": "model", "created": created, "owned_by": "tunesmith",
                             "root": name, "parent": state.base.name})
        return {"object": "list", "data": data}

    def _require_management() -> None:
        # The middleware already checked the key when one is set; without one these routes are off,
        # since loading files on request must never be open to anyone who can reach the port.
        if not state.api_key:
            raise management_disabled()

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> dict[str, Any]:
        _require_management()
        req = parse_request(LoadLoraRequest, await read_json(request))
        name = check_name(req.lora_name)
        if name in state.base_aliases or state.registry.get(name) is not None:
            raise bad_request(f"The adapter `{name}` is already loaded; unload it first.", param="lora_name",
                              code="adapter_exists")
        path = resolve_under_root(state.cfg.adapter_root, req.lora_path)
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(None, state.prepare, name, path)
        await asyncio.wrap_future(state.engine.add_adapter(prepared))
        log.info("loaded adapter %s from %s", name, prepared.info.adapter_dir)
        return {"object": "lora_adapter", "id": name, "status": "loaded",
                "message": f"Success: LoRA adapter '{name}' added successfully."}

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> dict[str, Any]:
        _require_management()
        req = parse_request(UnloadLoraRequest, await read_json(request))
        if state.registry.get(req.lora_name) is None:
            raise APIError(404, f"No adapter named `{req.lora_name}` is loaded.", param="lora_name",
                           code="model_not_found")
        await asyncio.wrap_future(state.engine.remove_adapter(req.lora_name))
        log.info("unloaded adapter %s", req.lora_name)
        return {"object": "lora_adapter", "id": req.lora_name, "status": "unloaded",
                "message": f"Success: LoRA adapter '{req.lora_name}' removed successfully."}
