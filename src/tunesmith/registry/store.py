"""The model registry: named models, numbered versions with lineage, aliases and their history.

A *version* is one trained model: where its weights are, the base it was trained on (with the
base weights' hash), the hashes of its training and validation files, the resolved
hyperparameters, its metrics and the manifest chain of the run that made it. Versions of one
name are numbered 1, 2, 3... (`tickets@3`). An *alias* (`tickets@prod`) points at one version;
every move of an alias is appended to `alias_history`, which is never rewritten, so promotions
and rollbacks can be audited and replayed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tunesmith.errors import TunesmithError
from tunesmith.registry.db import Database

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}"

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    project TEXT NOT NULL DEFAULT 'default',
    created_at INTEGER NOT NULL,
    source TEXT NOT NULL,              -- 'job:<ftjob id>' or 'run:<run dir>'
    run_dir TEXT NOT NULL,
    weights_path TEXT NOT NULL,        -- the adapter (or full model) directory
    base_path TEXT,
    base_sha256 TEXT,
    training_file_sha256 TEXT,
    validation_file_sha256 TEXT,
    hyperparameters TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    manifest_chain TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions (name, version)
);
CREATE TABLE IF NOT EXISTS alias_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER,
    at INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
"""


class RegistryError(TunesmithError):
    """A registry lookup or change that cannot be done."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    project: str
    created_at: int
    source: str
    run_dir: str
    weights_path: str
    base_path: Optional[str]
    base_sha256: Optional[str]
    training_file_sha256: Optional[str]
    validation_file_sha256: Optional[str]
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    manifest_chain: list[dict[str, Any]]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, **self.__dict__}


def _row(row) -> ModelVersion:
    data = dict(row)
    for key in ("hyperparameters", "metrics", "manifest_chain"):
        data[key] = json.loads(data[key])
    return ModelVersion(**data)


def parse_ref(ref: str) -> tuple[str, Optional[str]]:
    """`name` or `name@3` or `name@alias` -> (name, selector)."""
    name, _, selector = ref.partition("@")
    return name, selector or None


class Registry:
    def __init__(self, path: str | Path):
        self.db = Database(Path(path), SCHEMA)
        from tunesmith.registry.aliases import ensure_lifecycle_schema  # imports this module

        ensure_lifecycle_schema(self)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ writes

    def add(self, name: str, *, source: str, run_dir: str | Path, weights_path: str | Path,
            project: str = "default", base_path: Optional[str] = None, base_sha256: Optional[str] = None,
            training_file_sha256: Optional[str] = None, validation_file_sha256: Optional[str] = None,
            hyperparameters: Optional[dict[str, Any]] = None, metrics: Optional[dict[str, Any]] = None,
            manifest_chain: Optional[list[dict[str, Any]]] = None) -> ModelVersion:
        """Record a new version of `name` (numbered one past the highest so far)."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise RegistryError(f"invalid model name {name!r}",
                                hint="use letters, digits, '.', '_', ':' or '-' (no '@'), starting with a letter or digit")
        with self.db.transaction() as conn:
            row = conn.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
            version = (row[0] or 0) + 1
            conn.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (name, version, project, int(time.time()), source, str(run_dir), str(weights_path), base_path,
                 base_sha256, training_file_sha256, validation_file_sha256,
                 json.dumps(hyperparameters or {}), json.dumps(metrics or {}), json.dumps(manifest_chain or [])))
        return self.get(f"{name}@{version}")

    def remove(self, ref: str) -> list[ModelVersion]:
        """Delete one version (`name@N`) or every version of a name; refuses while an alias points
        at a version being removed. The alias history keeps its records."""
        found = self.find(ref) if "@" in ref else self.versions(ref)
        if not found:
            raise RegistryError(f"no model {ref!r} in the registry", hint="`tunesmith models list` shows them")
        with self.db.transaction() as conn:
            for version in found:
                pointing = [row[0] for row in conn.execute("SELECT alias, version, weights, fallback FROM aliases "
                                                            "WHERE name = ?", (version.name,))
                            if version.version in (row[1], row[3]) or str(version.version) in json.loads(row[2])]
                if pointing:
                    raise RegistryError(f"{version.ref} is what alias {version.name}@{pointing[0]} points at",
                                        hint="move or delete the alias first")
                conn.execute("DELETE FROM versions WHERE name = ? AND version = ?", (version.name, version.version))
        return found

    # ------------------------------------------------------------------ reads

    def list(self, project: Optional[str] = None) -> list[ModelVersion]:
        if project is None:
            rows = self.db.query("SELECT * FROM versions ORDER BY name, version")
        else:
            rows = self.db.query("SELECT * FROM versions WHERE project = ? ORDER BY name, version", (project,))
        return [_row(r) for r in rows]

    def versions(self, name: str) -> list[ModelVersion]:
        return [_row(r) for r in self.db.query("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,))]

    def find(self, ref: str) -> list[ModelVersion]:
        name, selector = parse_ref(ref)
        if selector is None:
            versions = self.versions(name)
            return versions[-1:]
        if selector.isdigit():
            row = self.db.one("SELECT * FROM versions WHERE name = ? AND version = ?", (name, int(selector)))
        else:
            row = self.db.one("SELECT v.* FROM versions v JOIN aliases a ON a.name = v.name AND a.version = v.version "
                              "WHERE a.name = ? AND a.alias = ?", (name, selector))
        return [_row(row)] if row is not None else []

    def get(self, ref: str) -> ModelVersion:
        """`name` (its latest version), `name@N` or `name@alias`."""
        found = self.find(ref)
        if not found:
            raise RegistryError(f"no model {ref!r} in the registry", hint="`tunesmith models list` shows them")
        return found[0]
