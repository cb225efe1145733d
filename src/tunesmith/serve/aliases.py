"""Registry models on a running server: `tickets`, `tickets:canary`, `tickets@3` resolved per request.

A background thread reads the registry's alias table every `poll_interval` seconds (a few rows;
SQLite in WAL mode lets it read while the CLI writes). When a route changed it first loads every
version the new routes need into the engine (off the event loop), then swaps the routing table in
one assignment. So a request either sees the old table or the new one, never a version that is
not loaded yet; a request already running keeps the Target it resolved, and the adapter it pins
stays registered (versions are never unregistered here; the engine's LRU bounds their memory).

A version that fails to load is replaced by its alias's fallback; with no loadable fallback the
alias keeps its previous routing, and the failure is counted in `tunesmith_version_load_failures`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from pathlib import Path
from typing import Optional

from prometheus_client import Counter, Gauge

from tunesmith.errors import TunesmithError
from tunesmith.registry.aliases import ALIAS_PATTERN, PRODUCTION, Aliases, Route, parse_alias_ref
from tunesmith.registry.store import Registry
from tunesmith.serve.adapters import Target

log = logging.getLogger("tunesmith.serve.aliases")


def engine_name(model: str, version: int) -> str:
    """The adapter name a registry version has inside the engine (registry names may hold ':')."""
    return f"reg-{hashlib.sha256(model.encode()).hexdigest()[:12]}-v{version}"


@dataclasses.dataclass(frozen=True)
class _Live:
    """An alias as the server routes it now: its route with every version mapped to a Target."""

    route: Route
    targets: dict[int, Target]  # version -> loaded target, under its public name `model@N`


class AliasRouter:
    def __init__(self, state, registry_path: Path, *, poll_interval: float = 0.5):
        self.state = state
        self.aliases = Aliases(Registry(registry_path))
        self.poll_interval = poll_interval
        self._table: dict[tuple[str, str], _Live] = {}
        self._versions: dict[tuple[str, int], Target] = {}  # every version loaded so far
        self._failed: set[tuple[str, int]] = set()
        self._seen: Optional[tuple[Optional[int], list[Route]]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._refresh_lock = threading.Lock()
        r = state.metrics.registry
        self.routed = Counter("tunesmith_alias_requests", "Requests routed through a registry alias, per version",
                              ["model", "alias", "version"], registry=r)
        self.weight = Gauge("tunesmith_alias_weight", "Share of an alias's traffic each version gets (percent)",
                            ["model", "alias", "version"], registry=r)
        self.load_failures = Counter("tunesmith_version_load_failures",
                                     "Registry versions the server could not load", ["model", "version"], registry=r)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="tunesmith-aliases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.aliases.registry.close()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception:  # a locked or briefly unreadable database: keep serving the current table
                log.exception("reading the registry's aliases failed; the current routes stay")

    # ------------------------------------------------------------------ loading

    def refresh(self) -> bool:
        """Reread the alias table; load what changed routes need, then swap. True when it changed."""
        with self._refresh_lock:
            # The history's last entry tells a change even when it sets a route to what it was (which
            # retries versions that failed to load, e.g. after their files were restored).
            seen = (self.aliases.registry.db.one("SELECT MAX(seq) FROM alias_history")[0], self.aliases.routes())
            if seen == self._seen:
                return False
            routes = seen[1]
            self._failed.clear()  # a changed route retries versions that failed before (files may be back)
            table = dict(self._table)
            for route in routes:
                live = self._live(route)
                if live is not None:
                    table[(route.name, route.alias)] = live
            current = {(r.name, r.alias) for r in routes}
            for key in [k for k in table if k not in current]:
                del table[key]  # an alias deleted from the registry
            self._table = table  # one assignment: requests see the old table or the new one
            self._seen = seen
            self._export_weights()
            return True

    def _load(self, model: str, version: int) -> Optional[Target]:
        key = (model, version)
        if key in self._versions:
            return self._versions[key]
        if key in self._failed:
            return None
        try:
            weights = self.aliases.registry.get(f"{model}@{version}").weights_path
            prepared = self.state.prepare(engine_name(model, version), weights)
            if self.state.registry.get(prepared.name) is None:
                self.state.engine.call(lambda: self.state.registry.add(prepared)).result(timeout=600)
        except (TunesmithError, OSError, TimeoutError) as exc:
            log.error("cannot load %s@%s: %s", model, version, exc)
            self.load_failures.labels(model, str(version)).inc()
            self._failed.add(key)
            return None
        target = dataclasses.replace(prepared.target, name=f"{model}@{version}")
        self._versions[key] = target
        return target

    def _live(self, route: Route) -> Optional[_Live]:
        fallback = self._load(route.name, route.fallback) if route.fallback is not None else None
        targets: dict[int, Target] = {}
        for version in route.split:
            target = self._load(route.name, version) or fallback
            if target is None:
                log.error("%s@%s: version %s cannot be served and there is no fallback; keeping the old routes",
                          route.name, route.alias, version)
                return self._table.get((route.name, route.alias))
            targets[version] = target
        return _Live(route, targets)

    def _export_weights(self) -> None:
        self.weight.clear()
        for (model, alias), live in self._table.items():
            split = live.route.split
            total = sum(split.values()) or 1
            for version, weight in split.items():
                self.weight.labels(model, alias, str(version)).set(100.0 * weight / total)

    # ------------------------------------------------------------------ requests

    def resolve(self, name: str, user: Optional[str] = None) -> Optional[Target]:
        """The Target for `name` if it is a registry alias or a loaded version; None otherwise."""
        model, at, selector = name.partition("@")
        if at and selector.isdigit():
            return self._versions.get((model, int(selector)))
        live = self._table.get((name, PRODUCTION)) if not at else None  # registry names may hold ':'
        model, alias = (name, PRODUCTION) if live is not None else parse_alias_ref(name)
        live = live or self._table.get((model, alias))
        if live is None:
            return None
        version = live.route.pick(user)
        self.routed.labels(model, alias, str(version)).inc()
        return live.targets[version]

    def names(self) -> list[str]:
        """What clients may call: each alias (`tickets`, `tickets:canary`) and each loaded version."""
        routed = {m if a == PRODUCTION else f"{m}:{a}" for m, a in self._table}
        return sorted(routed | {f"{m}@{v}" for m, v in self._versions})

    @staticmethod
    def is_engine_name(name: str) -> bool:
        return name.startswith("reg-")


__all__ = ["ALIAS_PATTERN", "AliasRouter", "engine_name"]
