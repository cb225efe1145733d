"""Production feedback: sampled, redacted request logs and the ratings and corrections users send.

Nothing reaches the database unredacted: prompts, answers, corrections and comments go through
the data stage's PII redactor (`tunesmith.data.pii.redact_value`) before the INSERT, and the
`user` field is stored only as a salted hash (enough to count users, not to name them). Logging
is opt-in per model (`models: {tickets: 0.2}` logs one request in five), and old rows go: after
`retention_days`, and beyond `max_exchanges` (oldest first). Feedback rows die with their exchange.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.data.pii import redact_value
from tunesmith.registry.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    id TEXT PRIMARY KEY,               -- the response's id (chatcmpl-...)
    model TEXT NOT NULL,               -- what the request named: tickets, tickets:canary, tickets@3
    served TEXT NOT NULL,              -- the version that answered: tickets@3
    at INTEGER NOT NULL,
    user_hash TEXT,
    messages TEXT NOT NULL,            -- redacted request messages (JSON)
    answer TEXT NOT NULL,              -- redacted first choice
    finish_reason TEXT,
    pii_found INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS exchanges_at ON exchanges (at);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    response_id TEXT NOT NULL REFERENCES exchanges (id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    correction TEXT,
    comment TEXT
);
"""


class RequestLogConfig(BaseModel):
    """`request_log:` of `tunesmith serve`: which models' exchanges are kept, how many, how long."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(Path("tunesmith-request-log.sqlite3"),
                       description="SQLite database of logged exchanges and feedback (put it next to the registry)")
    models: dict[str, float] = Field(
        default_factory=dict, description="model name as requested (tickets, tickets:canary) -> share of its "
                                          "requests to log, 0 to 1; models not listed are never logged")
    retention_days: float = Field(30.0, gt=0, description="exchanges older than this are deleted")
    max_exchanges: int = Field(100_000, ge=1, description="most exchanges kept; the oldest go first")
    user_salt: str = Field("tunesmith", description="salt of the stored hash of a request's `user` field")


class FeedbackRequest(BaseModel):
    """`POST /v1/feedback`."""

    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1, max_length=200)
    rating: Literal["up", "down"]
    correction: Optional[str] = Field(None, max_length=100_000, description="the answer it should have given")
    comment: Optional[str] = Field(None, max_length=10_000)


class RequestLog:
    def __init__(self, cfg: RequestLogConfig, *, rng: Optional[random.Random] = None):
        self.cfg = cfg
        self.db = Database(cfg.path, SCHEMA)
        self._rng = rng or random.Random()
        self._inserts = 0

    def close(self) -> None:
        self.db.close()

    def wants(self, model: str) -> bool:
        """Whether to log this request (opt-in per model, then sampled)."""
        rate = self.cfg.models.get(model, 0.0)
        return rate > 0 and self._rng.random() < rate

    def record(self, response_id: str, model: str, served: str, messages: Any, answer: str,
               finish_reason: Optional[str], user: Optional[str] = None) -> None:
        found: Counter[str] = Counter()
        clean_messages = redact_value(messages, found)
        clean_answer = redact_value(answer, found)
        user_hash = hashlib.sha256(f"{self.cfg.user_salt}\0{user}".encode()).hexdigest()[:16] if user else None
        with self.db.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO exchanges VALUES (?,?,?,?,?,?,?,?,?)",
                         (response_id, model, served, int(time.time()), user_hash, json.dumps(clean_messages),
                          clean_answer, finish_reason, sum(found.values())))
        self._inserts += 1
        if self._inserts % 100 == 1:
            self.prune()

    def prune(self, now: Optional[float] = None) -> int:
        """Apply the retention limits; returns how many exchanges went."""
        cutoff = int((now or time.time()) - self.cfg.retention_days * 86400)
        with self.db.transaction() as conn:
            gone = conn.execute("DELETE FROM exchanges WHERE at < ?", (cutoff,)).rowcount
            gone += conn.execute("DELETE FROM exchanges WHERE id IN (SELECT id FROM exchanges ORDER BY at DESC, "
                                 "rowid DESC LIMIT -1 OFFSET ?)", (self.cfg.max_exchanges,)).rowcount
        return gone

    def add_feedback(self, request: FeedbackRequest) -> Optional[int]:
        """Store a rating with its exchange; None when that response was not logged (or has expired)."""
        found: Counter[str] = Counter()
        correction = redact_value(request.correction, found) if request.correction is not None else None
        comment = redact_value(request.comment, found) if request.comment is not None else None
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM exchanges WHERE id = ?", (request.response_id,)).fetchone() is None:
                return None
            cursor = conn.execute("INSERT INTO feedback (response_id, at, rating, correction, comment) "
                                  "VALUES (?,?,?,?,?)", (request.response_id, int(time.time()), request.rating,
                                                          correction, comment))
            return int(cursor.lastrowid)

    def exchanges(self, model: Optional[str] = None, since: float = 0) -> list[dict[str, Any]]:
        """Logged exchanges with their latest feedback, oldest first. `model` matches the requested
        name or the name of the version that answered (`tickets` matches `tickets@3`)."""
        sql = ("SELECT e.*, f.rating, f.correction, f.comment FROM exchanges e LEFT JOIN feedback f ON f.seq = "
               "(SELECT MAX(seq) FROM feedback WHERE response_id = e.id) WHERE e.at >= ?")
        args: list[Any] = [int(since)]
        if model is not None:
            sql += " AND (e.model = ? OR e.served = ? OR e.served LIKE ? ESCAPE '\\')"
            escaped = model.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args += [model, model, f"{escaped}@%"]
        rows = self.db.query(sql + " ORDER BY e.at, e.rowid", tuple(args))
        return [{**dict(r), "messages": json.loads(r["messages"])} for r in rows]
