"""Fuzz the data readers and checks with generated hostile files: every input either yields
records (kept or rejected by a named rule) or stops with a DataError; nothing else escapes."""

from __future__ import annotations

import contextlib
import os
import gzip
import json
import tempfile
from pathlib import Path
from typing import Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.config import DataChecksConfig
from tunesmith.data.pipeline import Checks
from tunesmith.data.readers import iter_records
from tunesmith.data.rules import RULES
from tunesmith.errors import DataError

FUZZ = settings(max_examples=int(os.environ.get("TUNESMITH_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                derandomize="TUNESMITH_FUZZ_RANDOM" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Keys every supported format looks for, so generated rows reach deep into the normalisers.
KEYS = st.sampled_from(["messages", "role", "content", "conversations", "from", "value", "instruction", "input",
                        "output", "prompt", "completion", "chosen", "rejected", "label", "text", "tools",
                        "history", "system", "weight", "tool_calls", "name", "arguments", "type"])
LEAVES = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
          | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
          | st.sampled_from(["user", "assistant", "system", "tool", "human", "gpt", "", " ", "\x00", "\ud800"]))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=5),
                                                                                          inner, max_size=4),
                      max_leaves=25)


def _line(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


HOSTILE_LINES = st.one_of(
    VALUES.map(_line),
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=3000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(min_value=1, max_value=3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.sampled_from([b"\xef\xbb\xbf{}", b"\x00" * 10, b'{"text": "\\ud800"}', b"1e999", b'"' * 7, b"\r", b"{" * 5]),
)


@st.composite
def hostile_files(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".jsonl.gz", ".csv.gz", ".json.gz"]))
    lines = draw(st.lists(HOSTILE_LINES, max_size=8))
    if suffix.startswith(".csv"):
        lines = [b"messages,instruction,output,label"] + lines
    if suffix.startswith(".json") and not suffix.startswith(".jsonl") and draw(st.booleans()):
        lines = [b"[" + b",".join(lines) + b"]"]
    body = b"\n".join(lines)
    return suffix, gzip.compress(body) if suffix.endswith(".gz") else body


@contextlib.contextmanager
def _written(suffix: str, body: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tunesmith-fuzz-") as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(body)
        yield path


@FUZZ
@given(hostile_files(), st.sampled_from(["paragraph", "line", "file"]), st.integers(min_value=64, max_value=4096))
def test_readers_yield_records_or_a_data_error(file, text_split, limit):
    with _written(*file) as path:
        _read_all(path, text_split, limit)


def _read_all(path: Path, text_split: str, limit: int) -> None:
    try:
        for record in iter_records(path, text_split=text_split, max_line_bytes=limit):
            if record.rule is not None:
                assert record.rule in RULES and record.message
    except DataError as exc:
        assert exc.message


@FUZZ
@given(hostile_files(), st.sampled_from(["auto", "openai", "sharegpt", "alpaca", "text", "preference", "kto"]),
       st.sampled_from(["redact", "drop", "off"]))
def test_the_checks_keep_or_reject_every_record(file, fmt, pii):
    with _written(*file) as path:
        _check_all(path, fmt, pii)


def _check_all(path: Path, fmt: str, pii: str) -> None:
    cfg = DataChecksConfig(inputs=[path], format=fmt, pii=pii, max_chars=500)
    checks = Checks(cfg)
    try:
        outcomes = list(checks.run())
    except DataError as exc:
        assert exc.message
        return
    assert checks.stats.read == len(outcomes)
    assert set(checks.stats.rejected) <= set(RULES)
