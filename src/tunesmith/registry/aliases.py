"""Aliases that move: production, canary splits, fallbacks, promotion and rollback, with history.

An alias (`tickets` means `tickets@production`, `tickets:canary` means `tickets@canary`) is a
*route*: a primary version, optional canary weights (`{3: 90, 4: 10}`: nine requests in ten go to
version 3) and an optional fallback version, served when the primary cannot be loaded. Every
change of a route appends one row to `alias_history` (who, when, the route before and after, the
gate's result); SQLite triggers refuse to update or delete those rows, so the history is an audit
log nobody can rewrite through the registry's database connection.

Rollback undoes the last change that was not itself a rollback, as an undo stack: promote 1,
promote 2, promote 3, rollback, rollback leaves version 1 in production. A rollback keeps the
fallback and drops any canary split: it exists to take a candidate out of traffic.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from tunesmith.registry.store import Registry, RegistryError

PRODUCTION = "production"
ALIAS_PATTERN = r"[A-Za-z][A-Za-z0-9_-]{0,63}"  # never all digits: `name@3` is a version

# Columns the lifecycle adds to the registry's alias tables; a registry written before them gains
# them on open (ALTER TABLE ... ADD COLUMN keeps every existing row).
_ADDED_COLUMNS = {
    "aliases": {"weights": "TEXT NOT NULL DEFAULT '{}'", "fallback": "INTEGER"},
    "alias_history": {"actor": "TEXT NOT NULL DEFAULT ''", "action": "TEXT NOT NULL DEFAULT ''",
                      "from_route": "TEXT", "to_route": "TEXT", "gate": "TEXT"},
}
_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS alias_history_no_update BEFORE UPDATE ON alias_history
BEGIN SELECT RAISE(ABORT, 'alias_history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS alias_history_no_delete BEFORE DELETE ON alias_history
BEGIN SELECT RAISE(ABORT, 'alias_history is append-only'); END;
"""


def ensure_lifecycle_schema(registry: Registry) -> None:
    with registry.db.transaction() as conn:
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for column, decl in columns.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    with registry.db._lock:
        registry.db._conn.executescript(_APPEND_ONLY)


@dataclass(frozen=True)
class Route:
    """Where one alias sends requests."""

    name: str
    alias: str
    version: int
    weights: dict[int, int] = field(default_factory=dict)  # empty: all traffic to `version`
    fallback: Optional[int] = None
    updated_at: int = 0

    @property
    def split(self) -> dict[int, int]:
        return dict(self.weights) if self.weights else {self.version: 100}

    @property
    def versions(self) -> set[int]:
        return set(self.split) | ({self.fallback} if self.fallback is not None else set())

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "weights": {str(k): v for k, v in self.weights.items()},
                "fallback": self.fallback}

    def pick(self, user: Optional[str] = None, rng: Optional[random.Random] = None) -> int:
        """The version one request goes to. With a `user`, the same user always lands on the same
        version while the weights stay the same (a hash of the user and the alias picks the slot)."""
        split = sorted(self.split.items())
        total = sum(weight for _, weight in split)
        if user is not None:
            digest = hashlib.sha256(f"{self.name}\0{self.alias}\0{user}".encode()).digest()
            slot = int.from_bytes(digest[:8], "big") % total
        else:
            slot = (rng or random).randrange(total)
        for version, weight in split:
            if slot < weight:
                return version
            slot -= weight
        return split[-1][0]


def _route(row) -> Route:
    return Route(name=row["name"], alias=row["alias"], version=row["version"],
                 weights={int(k): int(v) for k, v in json.loads(row["weights"] or "{}").items()},
                 fallback=row["fallback"], updated_at=row["updated_at"])


def parse_weights(text: str) -> dict[int, int]:
    """`3=90,4=10` (or `3:90 4:10`) -> {3: 90, 4: 10}."""
    weights: dict[int, int] = {}
    for part in re.split(r"[,\s]+", text.strip()):
        version, sep, weight = part.replace(":", "=").partition("=")
        if not sep or not version.isdigit() or not weight.isdigit():
            raise RegistryError(f"canary weights {text!r}: {part!r} is not VERSION=WEIGHT",
                                hint="example: --split 3=90,4=10")
        weights[int(version)] = int(weight)
    return weights


def parse_alias_ref(text: str) -> tuple[str, str]:
    """`tickets` -> (tickets, production); `tickets:canary` and `tickets@canary` -> (tickets, canary)."""
    name, at, selector = text.partition("@")
    if at:
        return name, selector
    head, colon, tail = text.rpartition(":")
    if colon and re.fullmatch(ALIAS_PATTERN, tail):
        return head, tail
    return text, PRODUCTION


def current_actor() -> str:
    try:
        return os.environ.get("TUNESMITH_ACTOR") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"uid:{os.getuid()}"


class Aliases:
    """Routes and their history in one registry database."""

    def __init__(self, registry: Registry):
        self.registry = registry
        ensure_lifecycle_schema(registry)

    # ------------------------------------------------------------------ reads

    def route(self, name: str, alias: str = PRODUCTION) -> Optional[Route]:
        row = self.registry.db.one("SELECT * FROM aliases WHERE name = ? AND alias = ?", (name, alias))
        return _route(row) if row is not None else None

    def routes(self, name: Optional[str] = None) -> list[Route]:
        if name is None:
            rows = self.registry.db.query("SELECT * FROM aliases ORDER BY name, alias")
        else:
            rows = self.registry.db.query("SELECT * FROM aliases WHERE name = ? ORDER BY alias", (name,))
        return [_route(r) for r in rows]

    def history(self, name: str, alias: Optional[str] = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM alias_history WHERE name = ?", [name]
        if alias is not None:
            sql, args = sql + " AND alias = ?", [*args, alias]
        out = []
        for row in self.registry.db.query(sql + " ORDER BY seq", tuple(args)):
            entry = dict(row)
            for key in ("from_route", "to_route", "gate"):
                entry[key] = json.loads(entry[key]) if entry[key] else None
            out.append(entry)
        return out

    # ------------------------------------------------------------------ writes

    def set(self, name: str, alias: str, version: int, *, weights: Optional[dict[int, int]] = None,
            fallback: Optional[int] = None, action: str = "alias", actor: Optional[str] = None,
            reason: str = "", gate: Optional[dict[str, Any]] = None) -> Route:
        """Point `name@alias` at a route and append the change to the history, in one transaction."""
        if not re.fullmatch(ALIAS_PATTERN, alias):
            raise RegistryError(f"invalid alias {alias!r}", hint="letters, digits, '_' or '-', starting with a letter")
        weights = {int(k): int(v) for k, v in (weights or {}).items()}
        if weights:
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise RegistryError(f"canary weights {weights} must be non-negative with a positive sum")
            if version not in weights:
                raise RegistryError(f"canary weights {weights} leave out the alias's own version {version}",
                                    hint="the primary version takes the rest of the traffic: give it a weight")
        route = Route(name, alias, version, weights, fallback, int(time.time()))
        with self.registry.db.transaction() as conn:
            for needed in sorted(route.versions):
                if conn.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?",
                                (name, needed)).fetchone() is None:
                    raise RegistryError(f"no model {name}@{needed} in the registry",
                                        hint="`tunesmith models list` shows the versions")
            before = self.route(name, alias)
            conn.execute("INSERT INTO aliases (name, alias, version, updated_at, weights, fallback) "
                         "VALUES (?,?,?,?,?,?) ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, "
                         "updated_at = excluded.updated_at, weights = excluded.weights, fallback = excluded.fallback",
                         (name, alias, version, route.updated_at, json.dumps(route.as_dict()["weights"]), fallback))
            conn.execute("INSERT INTO alias_history (name, alias, from_version, to_version, at, reason, actor, action, "
                         "from_route, to_route, gate) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                         (name, alias, before.version if before else None, version, route.updated_at, reason,
                          actor or current_actor(), action, json.dumps(before.as_dict()) if before else None,
                          json.dumps(route.as_dict()), json.dumps(gate) if gate is not None else None))
        return route

    def promote(self, ref: str, alias: str = PRODUCTION, **kwargs: Any) -> Route:
        """`name@N` becomes the whole of `alias` (any canary split ends); the fallback stays."""
        version = self.registry.get(ref)
        before = self.route(version.name, alias)
        return self.set(version.name, alias, version.version, fallback=before.fallback if before else None,
                        action="promote", **kwargs)

    def canary(self, ref: str, percent: int, alias: str = PRODUCTION, **kwargs: Any) -> Route:
        """Send `percent` of `alias`'s traffic to `name@N`, the rest to its current version."""
        candidate = self.registry.get(ref)
        before = self.route(candidate.name, alias)
        if before is None:
            raise RegistryError(f"{candidate.name}@{alias} does not exist yet, so there is nothing to split",
                                hint=f"promote a first version: tunesmith models promote {candidate.ref}")
        if not 0 < percent < 100 or candidate.version == before.version:
            raise RegistryError(f"a canary needs 0 < percent < 100 and another version than {before.version}")
        return self.set(candidate.name, alias, before.version, fallback=before.fallback, action="canary",
                        weights={before.version: 100 - percent, candidate.version: percent}, **kwargs)

    def rollback(self, name: str, alias: str = PRODUCTION, **kwargs: Any) -> Route:
        """Undo the last change of the alias that was not undone already."""
        undo: list[Optional[dict[str, Any]]] = []
        for entry in self.history(name, alias):
            if entry["action"] == "rollback":
                if undo:
                    undo.pop()
            else:
                undo.append(entry["from_route"])
        current = self.route(name, alias)
        while undo and undo[-1] is not None and current is not None and undo[-1]["version"] == current.version \
                and not current.weights:
            undo.pop()  # a change that only touched weights or the fallback: go one further back
        if not undo or undo[-1] is None or current is None:
            raise RegistryError(f"{name}@{alias} has no earlier version to roll back to",
                                hint=f"`tunesmith models history {name}` shows its changes")
        previous = undo[-1]
        fallback = current.fallback
        return self.set(name, alias, int(previous["version"]), fallback=fallback, action="rollback", **kwargs)


def version_for_init(registry: Registry, ref: str) -> str:
    """What `train.init_from: NAME@VERSION` (or NAME, NAME:ALIAS) continues from: the run directory of
    that version, so training reads its adapter, tokenizer and template like `init_from: RUN_DIR`."""
    from tunesmith.registry.sources import resolve_version

    return resolve_version(registry, ref, "init_from").run_dir
