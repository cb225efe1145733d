"""Files, jobs, events and checkpoints in one SQLite database (WAL) next to the file store.

Every change of a job is a committed row before the API answers, so nothing is kept only in
memory: a server killed at any moment finds each job where it left it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any, Optional

from tunesmith.registry.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    project TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    project TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    status TEXT NOT NULL,
    method TEXT NOT NULL,              -- JSON: {"type": ..., "<type>": {"hyperparameters": {...}}}
    seed INTEGER NOT NULL,
    suffix TEXT,
    metadata TEXT,
    error TEXT,
    fine_tuned_model TEXT,
    trained_tokens INTEGER,
    result_files TEXT NOT NULL DEFAULT '[]',
    finished_at INTEGER,
    estimated_finish INTEGER,
    run_dir TEXT NOT NULL,
    pid INTEGER,
    started_at INTEGER,
    total_steps INTEGER,
    stop_request TEXT,                 -- 'cancel' | 'pause' while the worker stops the process
    settings TEXT,                     -- JSON: the base and training settings fixed at creation
    worker TEXT,                       -- the worker that holds the job ("host:pid:token")
    lease_until REAL                   -- its claim lapses then unless renewed
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    metrics TEXT NOT NULL,
    adapter_dir TEXT,                  -- set once the checkpoint is servable
    UNIQUE (job_id, step)
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_project ON jobs (project, seq);
"""

ACTIVE = ("validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
_JSON_FIELDS = ("method", "metadata", "error", "result_files", "settings")
# Columns added after the first release, added to databases made before them.
_ADDED_JOB_COLUMNS = {"settings": "TEXT", "worker": "TEXT", "lease_until": "REAL"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18).replace('-', 'a').replace('_', 'b')}"


def _decode(row) -> dict[str, Any]:
    data = dict(row)
    for key in _JSON_FIELDS:
        if key in data and data[key] is not None:
            data[key] = json.loads(data[key])
    return data


class JobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.runs_dir = self.root / "runs"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(self.root / "jobs.sqlite3", SCHEMA)
        with self.db.transaction() as conn:
            have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_JOB_COLUMNS.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    # ------------------------------------------------------------------ files

    def add_file(self, *, file_id: str, project: str, filename: str, size: int, purpose: str, path: Path,
                 sha256: str, status: str = "processed") -> dict[str, Any]:
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO files (id, project, filename, bytes, purpose, created_at, status, path, sha256) "
                         "VALUES (?,?,?,?,?,?,?,?,?)",
                         (file_id, project, filename, size, purpose, int(time.time()), status, str(path), sha256))
        return self.file(file_id, project)

    def write_file(self, project: str, filename: str, content: bytes, purpose: str) -> dict[str, Any]:
        """Store `content` under a generated name (results files the worker writes)."""
        file_id = new_id("file")
        path = self.files_dir / file_id
        path.write_bytes(content)
        return self.add_file(file_id=file_id, project=project, filename=filename, size=len(content),
                             purpose=purpose, path=path, sha256=hashlib.sha256(content).hexdigest())

    def file(self, file_id: str, project: str) -> Optional[dict[str, Any]]:
        row = self.db.one("SELECT * FROM files WHERE id = ? AND project = ?", (file_id, project))
        return dict(row) if row else None

    def files(self, project: str, *, purpose: Optional[str] = None, after: Optional[str] = None,
              limit: int = 10000, newest_first: bool = True) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM files WHERE project = ?", [project]
        if purpose:
            sql += " AND purpose = ?"
            args.append(purpose)
        if after:
            sql += f" AND seq {'<' if newest_first else '>'} (SELECT seq FROM files WHERE id = ?)"
            args.append(after)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(limit)
        return [dict(r) for r in self.db.query(sql, tuple(args))]

    def delete_file(self, file_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM files WHERE id = ?", (file_id,))

    # ------------------------------------------------------------------ jobs

    def add_job(self, job: dict[str, Any]) -> None:
        row = {k: (json.dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in job.items()}
        keys = ", ".join(row)
        with self.db.transaction() as conn:
            conn.execute(f"INSERT INTO jobs ({keys}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    def job(self, job_id: str, project: Optional[str] = None) -> Optional[dict[str, Any]]:
        if project is None:
            row = self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        else:
            row = self.db.one("SELECT * FROM jobs WHERE id = ? AND project = ?", (job_id, project))
        return _decode(row) if row else None

    def jobs(self, project: str, *, after: Optional[str] = None, limit: int = 20,
             metadata: Optional[dict[str, str]] = None) -> list[dict[str, Any]]:
        """Newest first; `after` is the id of the last job of the previous page."""
        sql, args = "SELECT * FROM jobs WHERE project = ?", [project]
        if after:
            sql += " AND seq < (SELECT seq FROM jobs WHERE id = ? AND project = ?)"
            args += [after, project]
        for key, value in (metadata or {}).items():
            sql += " AND json_extract(metadata, ?) = ?"
            args += [f"$.{json.dumps(key)}", value]
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [_decode(r) for r in self.db.query(sql, tuple(args))]

    def jobs_in(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(statuses))
        return [_decode(r) for r in self.db.query(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses)]

    def claimed_jobs(self) -> list[dict[str, Any]]:
        """Jobs some worker holds or held: claimed ones, and running or stopping ones whose claim
        was dropped (a worker that stopped, or a database from before claims)."""
        return [_decode(r) for r in self.db.query(
            "SELECT * FROM jobs WHERE worker IS NOT NULL OR status = 'running' OR stop_request IS NOT NULL "
            "ORDER BY seq")]

    def count_jobs(self, project: str, *statuses: str) -> int:
        marks = ", ".join("?" * len(statuses))
        row = self.db.one(f"SELECT COUNT(*) FROM jobs WHERE project = ? AND status IN ({marks})", (project, *statuses))
        return int(row[0])

    def update_job(self, job_id: str, *, only_if_status: tuple[str, ...] = (), **changes: Any) -> bool:
        """Apply `changes`; with `only_if_status`, only while the job is in one of those states
        (so a cancel that raced a finishing job cannot be overwritten, or the reverse)."""
        row = {k: (json.dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in changes.items()}
        sql = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?"
        args = [*row.values(), job_id]
        if only_if_status:
            sql += f" AND status IN ({', '.join('?' * len(only_if_status))})"
            args += list(only_if_status)
        with self.db.transaction() as conn:
            return conn.execute(sql, tuple(args)).rowcount == 1

    # ------------------------------------------------------------------ claims (several workers, one store)

    def claim(self, job_id: str, worker: str, lease_until: float, *, from_status: str, now: float,
              **changes: Any) -> bool:
        """Take `job_id` for `worker` if it is in `from_status` and nobody else holds a live lease on
        it; one UPDATE, so of two workers trying at once exactly one succeeds."""
        row = {k: (json.dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in changes.items()}
        sets = "".join(f", {k} = ?" for k in row)
        with self.db.transaction() as conn:
            return conn.execute(
                f"UPDATE jobs SET worker = ?, lease_until = ?{sets} WHERE id = ? AND status = ? AND "
                "(worker IS NULL OR worker = ? OR lease_until IS NULL OR lease_until < ?)",
                (worker, lease_until, *row.values(), job_id, from_status, worker, now)).rowcount == 1

    def renew(self, job_id: str, worker: str, lease_until: float) -> bool:
        """Extend `worker`'s lease; False when the job is no longer its own (taken over)."""
        with self.db.transaction() as conn:
            return conn.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND worker = ?",
                                (lease_until, job_id, worker)).rowcount == 1

    def release(self, job_id: str, worker: str, **changes: Any) -> bool:
        """Apply `changes` and drop `worker`'s claim, if it still holds the job."""
        row = {k: (json.dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in changes.items()}
        sets = "".join(f", {k} = ?" for k in row)
        with self.db.transaction() as conn:
            return conn.execute(f"UPDATE jobs SET worker = NULL, lease_until = NULL{sets} WHERE id = ? AND worker IS ?",
                                (*row.values(), job_id, worker)).rowcount == 1

    # ------------------------------------------------------------------ events, checkpoints

    def add_event(self, job_id: str, message: str, *, level: str = "info", type: str = "message",
                  data: Optional[dict[str, Any]] = None) -> None:
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO events (id, job_id, created_at, level, message, type, data) VALUES (?,?,?,?,?,?,?)",
                         (new_id("ftevent"), job_id, int(time.time()), level, message, type,
                          json.dumps(data) if data is not None else None))

    def events(self, job_id: str, *, after: Optional[str] = None, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first, as OpenAI lists them."""
        sql, args = "SELECT * FROM events WHERE job_id = ?", [job_id]
        if after:
            sql += " AND seq < (SELECT seq FROM events WHERE id = ?)"
            args.append(after)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        rows = []
        for r in self.db.query(sql, tuple(args)):
            data = dict(r)
            data["data"] = json.loads(data["data"]) if data["data"] else None
            rows.append(data)
        return rows

    def add_checkpoint(self, job_id: str, step: int, model: str, metrics: dict[str, Any],
                       adapter_dir: Optional[str] = None) -> bool:
        with self.db.transaction() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO checkpoints (id, job_id, step, created_at, model, metrics, "
                               "adapter_dir) VALUES (?,?,?,?,?,?,?)",
                               (new_id("ftckpt"), job_id, step, int(time.time()), model, json.dumps(metrics),
                                adapter_dir))
            return cur.rowcount == 1

    def has_checkpoint(self, job_id: str, step: int) -> bool:
        return self.db.one("SELECT 1 FROM checkpoints WHERE job_id = ? AND step = ?", (job_id, step)) is not None

    def servable_models(self) -> list[dict[str, Any]]:
        """Every model the server may answer as: succeeded jobs' models and the checkpoints whose
        adapters are written (of running jobs too), with the project and adapter directory."""
        rows = self.db.query(
            "SELECT fine_tuned_model AS model, project, id AS job_id, NULL AS step, run_dir || '/train/adapter' AS "
            "adapter_dir FROM jobs WHERE status = 'succeeded' AND fine_tuned_model IS NOT NULL "
            "UNION ALL SELECT c.model, j.project, c.job_id, c.step, c.adapter_dir FROM checkpoints c "
            "JOIN jobs j ON j.id = c.job_id WHERE c.adapter_dir IS NOT NULL")
        return [dict(r) for r in rows]

    def set_checkpoint_adapter(self, job_id: str, step: int, adapter_dir: Optional[str]) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE checkpoints SET adapter_dir = ? WHERE job_id = ? AND step = ?",
                         (adapter_dir, job_id, step))

    def checkpoints(self, job_id: str, *, after: Optional[str] = None, limit: int = 10) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM checkpoints WHERE job_id = ?", [job_id]
        if after:
            sql += " AND seq < (SELECT seq FROM checkpoints WHERE id = ?)"
            args.append(after)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in self.db.query(sql, tuple(args))]

    def delete_checkpoint(self, job_id: str, step: int) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM checkpoints WHERE job_id = ? AND step = ?", (job_id, step))
