"""Fixtures for the data-stage tests: the demo dataset and small files written per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TICKETS = REPO / "examples" / "data" / "tickets"


@pytest.fixture
def tickets() -> Path:
    return TICKETS


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (objects, or raw str/bytes lines) to a JSONL file under tmp_path."""

    def write(rows, name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        with open(path, "wb") as fh:
            for row in rows:
                if isinstance(row, bytes):
                    fh.write(row + b"\n")
                elif isinstance(row, str):
                    fh.write(row.encode("utf-8") + b"\n")
                else:
                    fh.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
        return path

    return write

