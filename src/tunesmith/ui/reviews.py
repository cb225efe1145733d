"""Blind A/B review: two models' answers to a prompt set, judged by people who do not know which
model wrote which answer.

A review holds the prompts and both models' outputs (generated once, through the server). Each
reviewer sees the items in their own random order, and for each item the two outputs in a random
order (A/B); both orders come from an HMAC of the review's secret, the reviewer's name and the
item, so a reload shows the same page and the browser is never told which model is A. A vote
names what the reviewer saw (A, B, tie, both bad); the store maps it back to a model.

Win rate is model 2's (the candidate's) share of the votes against model 1, with ties counted
as half a win and "both bad" votes left out (they say nothing about which model is better); its
95% interval is Wilson's score interval. Votes live in SQLite (WAL) in the workspace.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tunesmith.ui.workspace import WorkspaceError

CHOICES = ("A", "B", "tie", "both_bad")
OUTCOMES = ("model_1", "model_2", "tie", "both_bad")
REVIEWER_PATTERN = r"[^\x00-\x1f]{1,64}"
MAX_COMMENT = 2000
Z_95 = 1.959963984540054

SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
  id TEXT PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, model_1 TEXT NOT NULL, model_2 TEXT NOT NULL,
  prompt_file TEXT NOT NULL, sampling TEXT NOT NULL, secret TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
  review_id TEXT NOT NULL REFERENCES reviews(id), idx INTEGER NOT NULL, prompt TEXT NOT NULL,
  output_1 TEXT NOT NULL, output_2 TEXT NOT NULL, PRIMARY KEY (review_id, idx)
);
CREATE TABLE IF NOT EXISTS votes (
  review_id TEXT NOT NULL, idx INTEGER NOT NULL, reviewer TEXT NOT NULL, outcome TEXT NOT NULL,
  comment TEXT NOT NULL DEFAULT '', created REAL NOT NULL, PRIMARY KEY (review_id, idx, reviewer),
  FOREIGN KEY (review_id, idx) REFERENCES items(review_id, idx)
);
"""


def wilson_interval(successes: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a proportion; `successes` may be fractional (ties as halves)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def tally(outcomes: list[str]) -> dict[str, Any]:
    counts = {o: outcomes.count(o) for o in OUTCOMES}
    decided = counts["model_1"] + counts["model_2"] + counts["tie"]
    wins = counts["model_2"] + 0.5 * counts["tie"]
    low, high = wilson_interval(wins, decided)
    return {"votes": len(outcomes), **counts, "compared": decided,
            "win_rate": wins / decided if decided else None, "ci_low": low if decided else None,
            "ci_high": high if decided else None}


class ReviewStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        try:
            with db:
                yield db
        finally:
            db.close()

    # ------------------------------------------------------------------ reviews

    def create(self, *, title: str, model_1: str, model_2: str, prompt_file: str, sampling: dict[str, Any],
               items: list[tuple[list[dict[str, Any]], str, str]]) -> str:
        review_id = "rev-" + secrets.token_hex(6)
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (review_id, title, time.time(), model_1, model_2, prompt_file, json.dumps(sampling),
                        secrets.token_hex(16)))
            db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)",
                           [(review_id, i, json.dumps(prompt), out_1, out_2)
                            for i, (prompt, out_1, out_2) in enumerate(items)])
        return review_id

    def _review(self, db: sqlite3.Connection, review_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM reviews WHERE id = ?", (review_id,)).fetchone()
        if row is None:
            raise WorkspaceError(f"no review {review_id!r}", status=404)
        return row

    def list(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT r.id, r.title, r.created, r.model_1, r.model_2, r.prompt_file, "
                              "(SELECT COUNT(*) FROM items i WHERE i.review_id = r.id) AS items, "
                              "(SELECT COUNT(*) FROM votes v WHERE v.review_id = r.id) AS votes "
                              "FROM reviews r ORDER BY r.created DESC").fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ blinding

    @staticmethod
    def _digest(secret: str, *parts: Any) -> bytes:
        return hmac.new(secret.encode(), "\x1f".join(map(str, parts)).encode(), hashlib.sha256).digest()

    def _model_2_is_a(self, secret: str, reviewer: str, idx: int) -> bool:
        return bool(self._digest(secret, "side", reviewer, idx)[0] & 1)

    def next_item(self, review_id: str, reviewer: str) -> dict[str, Any]:
        """The reviewer's next unvoted item with its outputs as A and B, or `done`."""
        reviewer = check_reviewer(reviewer)
        with self._connect() as db:
            review = self._review(db, review_id)
            items = db.execute("SELECT idx, prompt, output_1, output_2 FROM items WHERE review_id = ?",
                               (review_id,)).fetchall()
            voted = {r["idx"] for r in db.execute("SELECT idx FROM votes WHERE review_id = ? AND reviewer = ?",
                                                  (review_id, reviewer))}
        secret = review["secret"]
        order = sorted(items, key=lambda r: self._digest(secret, "order", reviewer, r["idx"]))
        remaining = [r for r in order if r["idx"] not in voted]
        progress = {"done_count": len(voted), "total": len(items)}
        if not remaining:
            return {"done": True, **progress}
        item = remaining[0]
        outputs = (item["output_2"], item["output_1"]) if self._model_2_is_a(secret, reviewer, item["idx"]) \
            else (item["output_1"], item["output_2"])
        return {"done": False, "item": item["idx"], "prompt": json.loads(item["prompt"]),
                "a": outputs[0], "b": outputs[1], **progress}

    def vote(self, review_id: str, reviewer: str, idx: int, choice: str, comment: str = "") -> str:
        """Record (or replace) a reviewer's vote; returns the outcome it maps to."""
        reviewer = check_reviewer(reviewer)
        if choice not in CHOICES:
            raise WorkspaceError(f"vote must be one of {', '.join(CHOICES)}, not {choice!r}")
        if len(comment) > MAX_COMMENT:
            raise WorkspaceError(f"the comment is longer than {MAX_COMMENT} characters")
        with self._lock, self._connect() as db:
            review = self._review(db, review_id)
            if db.execute("SELECT 1 FROM items WHERE review_id = ? AND idx = ?", (review_id, idx)).fetchone() is None:
                raise WorkspaceError(f"review {review_id} has no item {idx}", status=404)
            if choice in ("A", "B"):
                model_2_is_a = self._model_2_is_a(review["secret"], reviewer, idx)
                outcome = "model_2" if (choice == "A") == model_2_is_a else "model_1"
            else:
                outcome = choice
            db.execute("INSERT OR REPLACE INTO votes VALUES (?, ?, ?, ?, ?, ?)",
                       (review_id, idx, reviewer, outcome, comment, time.time()))
        return outcome

    # ------------------------------------------------------------------ results

    def results(self, review_id: str) -> dict[str, Any]:
        with self._connect() as db:
            review = self._review(db, review_id)
            votes = db.execute("SELECT reviewer, outcome FROM votes WHERE review_id = ? ORDER BY reviewer",
                               (review_id,)).fetchall()
            items = db.execute("SELECT COUNT(*) FROM items WHERE review_id = ?", (review_id,)).fetchone()[0]
        by_reviewer: dict[str, list[str]] = {}
        for v in votes:
            by_reviewer.setdefault(v["reviewer"], []).append(v["outcome"])
        return {"id": review_id, "title": review["title"], "model_1": review["model_1"],
                "model_2": review["model_2"], "prompt_file": review["prompt_file"],
                "sampling": json.loads(review["sampling"]), "items": items,
                "overall": tally([v["outcome"] for v in votes]),
                "reviewers": {name: tally(outcomes) for name, outcomes in by_reviewer.items()},
                "method": "win rate of model 2 over model 1; a tie counts as half a win, both-bad votes are "
                          "left out; 95% Wilson score interval"}

    def preference_rows(self, review_id: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """One preference row per item that the reviewers decided: the side with more A/B votes is
        chosen. Items without a vote for either side, or with equal votes, are left out and counted."""
        with self._connect() as db:
            review = self._review(db, review_id)
            items = db.execute("SELECT idx, prompt, output_1, output_2 FROM items WHERE review_id = ? ORDER BY idx",
                               (review_id,)).fetchall()
            votes = db.execute("SELECT idx, outcome FROM votes WHERE review_id = ?", (review_id,)).fetchall()
        counts: dict[int, dict[str, int]] = {}
        for v in votes:
            counts.setdefault(v["idx"], {o: 0 for o in OUTCOMES})[v["outcome"]] += 1
        rows, skipped = [], {"no_preference": 0, "split": 0, "same_text": 0}
        for item in items:
            c = counts.get(item["idx"], {o: 0 for o in OUTCOMES})
            if c["model_1"] == c["model_2"]:
                skipped["split" if c["model_1"] else "no_preference"] += 1
                continue
            winner_2 = c["model_2"] > c["model_1"]
            chosen, rejected = (item["output_2"], item["output_1"]) if winner_2 else (item["output_1"], item["output_2"])
            if chosen == rejected:
                skipped["same_text"] += 1
                continue
            rows.append({"prompt": json.loads(item["prompt"]),
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}],
                         "meta": {"review": review_id, "item": item["idx"],
                                  "chosen_model": review["model_2"] if winner_2 else review["model_1"],
                                  "rejected_model": review["model_1"] if winner_2 else review["model_2"],
                                  "votes": c}})
        return rows, skipped


def check_reviewer(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(REVIEWER_PATTERN, name.strip()):
        raise WorkspaceError("give a reviewer name of 1 to 64 characters", hint="type your name in the Reviewer field")
    return name.strip()


def export_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


__all__ = ["CHOICES", "ReviewStore", "check_reviewer", "export_jsonl", "tally", "wilson_interval"]
