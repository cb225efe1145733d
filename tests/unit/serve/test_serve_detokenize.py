"""Streamed text: pieces add up to the decoded text, never split a character, and stop strings
are cut out even when they span tokens."""

from __future__ import annotations

import pytest

from tunesmith.models.config import ModelConfig
from tunesmith.models.loading import load_tokenizer
from tunesmith.serve.detokenize import TextTracker

TEXT = "def parse(path):\n    \"\"\"Read the café menu 🎉 and return its ünïcödé items.\"\"\"\n    return items"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig())


def _stream(tokenizer, text, stops=()):
    tracker = TextTracker(tokenizer, stops)
    pieces = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        pieces.append(tracker.add(token))
        if tracker.stopped:
            break
    else:
        pieces.append(tracker.finish())
    return tracker, pieces


def test_pieces_add_up_to_the_text_without_broken_characters(tokenizer):
    tracker, pieces = _stream(tokenizer, TEXT)
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)
    assert not tracker.stopped


@pytest.mark.parametrize("stop", ["café menu", "\n    return", "🎉", "items.\"\"\""])
def test_text_stops_before_the_first_stop_string(tokenizer, stop):
    tracker, pieces = _stream(tokenizer, TEXT, stops=["never appears", stop])
    assert tracker.stopped and tracker.stop_reason == "stop"
    assert "".join(pieces) == TEXT[:TEXT.index(stop)]


def test_a_possible_stop_prefix_is_held_back_until_it_cannot_be_one(tokenizer):
    # "return x" never occurs, but "return" does: it must be held back, then released at the end.
    tracker, pieces = _stream(tokenizer, TEXT, stops=["return x"])
    released_before_end = "".join(pieces[:-1])
    assert not released_before_end.endswith("return")
    assert "".join(pieces) == TEXT and not tracker.stopped
