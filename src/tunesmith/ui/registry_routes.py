"""/ui/api/registry: the model registry over HTTP, for the models page.

`tunesmith serve` has no registry routes of its own (the registry is edited with `tunesmith models
...`), so these are the UI's: versions with lineage and metrics, aliases with canary weights, the
alias history, and promote (with the gate), canary and rollback. They act on the registry the
server routes (`registry:`), else the one its jobs record into (`jobs.registry`).

On `tunesmith serve` they need the server's own API key (a project's key may not move aliases),
and the changes refuse to run on a server without a key, as adapter management does: moving
production traffic must never be open to anyone who can reach the port. A standalone UI forwards
them to its server's /ui/api/registry with the caller's key.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from tunesmith.registry.aliases import ALIAS_PATTERN, PRODUCTION, Aliases, Route
from tunesmith.registry.store import Registry
from tunesmith.serve.auth import bearer_matches
from tunesmith.ui.workspace import Workspace, WorkspaceError

ACTOR_PREFIX = "ui"
MAX_REASON = 500


def route_dict(route: Route) -> dict[str, Any]:
    return {"alias": route.alias, "version": route.version, "split": {str(k): v for k, v in sorted(route.split.items())},
            "canary": bool(route.weights), "fallback": route.fallback, "updated_at": route.updated_at}


def models_listing(registry: Registry) -> list[dict[str, Any]]:
    """Every model name with its versions (lineage and metrics) and its aliases."""
    aliases = Aliases(registry)
    by_name: dict[str, dict[str, Any]] = {}
    for version in registry.list():
        entry = by_name.setdefault(version.name, {"name": version.name, "versions": [], "aliases": []})
        entry["versions"].append(version.as_dict())
    for route in aliases.routes():
        by_name.setdefault(route.name, {"name": route.name, "versions": [], "aliases": []})["aliases"].append(
            route_dict(route))
    return sorted(by_name.values(), key=lambda e: e["name"])


def _text(body: dict[str, Any], key: str, *, required: bool = False, limit: int = 200) -> Optional[str]:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise WorkspaceError(f"`{key}` is required")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise WorkspaceError(f"`{key}` must be text of at most {limit} characters")
    return value


def _alias(body: dict[str, Any]) -> str:
    alias = _text(body, "alias") or PRODUCTION
    if not re.fullmatch(ALIAS_PATTERN, alias):
        raise WorkspaceError(f"invalid alias {alias!r}", hint="letters, digits, '_' or '-', starting with a letter")
    return alias


def _actor(body: dict[str, Any]) -> str:
    who = _text(body, "actor", limit=64)
    return f"{ACTOR_PREFIX}:{who}" if who else ACTOR_PREFIX


class RegistryAccess:
    """Where the registry is and who may use it (mounted on `tunesmith serve`)."""

    def __init__(self, path: Optional[Path], server_key: Optional[str], workspace: Workspace,
                 gate_sets: Callable[[], list[str]]):
        self.path = path
        self.server_key = server_key
        self.workspace = workspace
        self.gate_sets = gate_sets

    def check(self, request: Request, *, change: bool) -> None:
        if self.server_key:
            if not bearer_matches(request.headers.get("authorization"), self.server_key):
                raise WorkspaceError("the registry needs the server's own API key (a project's key may not use it)",
                                     status=403)
        elif change:
            raise WorkspaceError("moving aliases is off because the server has no API key",
                                 status=403, hint="restart `tunesmith serve` with --api-key, or use "
                                                  "`tunesmith models promote|canary|rollback`")
        if self.path is None:
            raise WorkspaceError("this server has no model registry", status=404,
                                 hint="give `tunesmith serve` a `registry:` (or a `jobs:` section, whose "
                                      "succeeded jobs are recorded in one)")

    def open(self) -> Registry:
        return Registry(self.path)


def add_registry_routes(router: APIRouter, access: RegistryAccess, read_body) -> None:
    """Mounted on `tunesmith serve`: the routes read and change the registry file themselves."""

    async def in_thread(work: Callable[[Registry], Any]) -> Any:
        def run() -> Any:
            registry = access.open()
            try:
                return work(registry)
            finally:
                registry.close()
        return await asyncio.get_running_loop().run_in_executor(None, run)

    @router.get("/registry")
    async def registry_models(request: Request) -> dict[str, Any]:
        if access.path is None:
            return {"enabled": False, "models": []}
        access.check(request, change=False)
        # A registry nothing was recorded in yet is shown empty, not created by looking at it.
        models = await in_thread(models_listing) if access.path.exists() else []
        return {"enabled": True, "models": models, "gate_sets": access.gate_sets()}

    @router.get("/registry/history")
    async def registry_history(request: Request, name: str = Query(..., max_length=200)) -> dict[str, Any]:
        access.check(request, change=False)
        history = await in_thread(lambda r: Aliases(r).history(name)) if access.path.exists() else []
        return {"name": name, "history": history}

    @router.post("/registry/promote")
    async def promote(request: Request) -> Any:
        access.check(request, change=True)
        body = await read_body(request)
        ref, alias, actor = _text(body, "ref", required=True), _alias(body), _actor(body)
        reason = _text(body, "reason", limit=MAX_REASON) or ""
        gate_file = _text(body, "gate", limit=1000)
        force = body.get("force") is True
        max_drop = body.get("max_drop", 0.02)
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop <= 1:
            raise WorkspaceError("`max_drop` must be a number from 0 to 1")
        gate_path = None
        if gate_file is not None:
            gate_path = access.workspace.resolve(gate_file)
            if not gate_path.is_file():
                raise WorkspaceError(f"no file {gate_file!r} in the workspace", status=404)

        def work(registry: Registry) -> Any:
            from tunesmith.registry.gate import GateThresholds, run_gate

            aliases = Aliases(registry)
            candidate = registry.get(ref)
            gate = None
            if gate_path is not None:
                gate = run_gate(registry, candidate, aliases.route(candidate.name, alias), gate_path,
                                thresholds=GateThresholds(max_drop=float(max_drop)))
                if not gate["passed"]:
                    if not force:
                        return JSONResponse({"error": {
                            "message": f"{candidate.ref} fails the promotion gate: {'; '.join(gate['failures'])}",
                            "type": "invalid_request_error", "param": None, "code": "gate_refused"},
                            "gate": gate}, status_code=409)
                    gate["overridden_by"] = actor
            route = aliases.promote(candidate.ref, alias, actor=actor, reason=reason,
                                    gate=gate and {k: v for k, v in gate.items() if k != "table"})
            return {"route": route_dict(route), "name": candidate.name, "gate": gate}

        return await in_thread(work)

    @router.post("/registry/canary")
    async def canary(request: Request) -> dict[str, Any]:
        access.check(request, change=True)
        body = await read_body(request)
        ref, alias, actor = _text(body, "ref", required=True), _alias(body), _actor(body)
        percent = body.get("percent")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 < percent < 100:
            raise WorkspaceError("`percent` must be a whole number from 1 to 99")
        reason = _text(body, "reason", limit=MAX_REASON) or ""

        def work(registry: Registry) -> dict[str, Any]:
            route = Aliases(registry).canary(ref, percent, alias, actor=actor, reason=reason)
            return {"route": route_dict(route), "name": route.name}

        return await in_thread(work)

    @router.post("/registry/rollback")
    async def rollback(request: Request) -> dict[str, Any]:
        access.check(request, change=True)
        body = await read_body(request)
        name, alias, actor = _text(body, "name", required=True), _alias(body), _actor(body)
        reason = _text(body, "reason", limit=MAX_REASON) or ""

        def work(registry: Registry) -> dict[str, Any]:
            route = Aliases(registry).rollback(name, alias, actor=actor, reason=reason)
            return {"route": route_dict(route), "name": name}

        return await in_thread(work)


def add_forwarded_registry_routes(router: APIRouter, upstream, read_body) -> None:
    """A standalone UI: the same routes, answered by the server's own /ui/api/registry."""

    async def forward(request: Request, method: str, path: str, body: Optional[dict[str, Any]] = None):
        status, payload = await upstream.request(method, f"/ui/api/{path}", request.headers.get("authorization"), body)
        return JSONResponse(payload, status_code=status)

    @router.get("/registry")
    async def registry_models(request: Request):
        return await forward(request, "GET", "registry")

    @router.get("/registry/history")
    async def registry_history(request: Request, name: str = Query(..., max_length=200)):
        from urllib.parse import quote

        return await forward(request, "GET", f"registry/history?name={quote(name, safe='')}")

    def changer(action: str):
        async def change(request: Request):
            return await forward(request, "POST", f"registry/{action}", await read_body(request))
        return change

    for action in ("promote", "canary", "rollback"):
        router.add_api_route(f"/registry/{action}", changer(action), methods=["POST"], name=f"registry_{action}")
