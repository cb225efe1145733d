"""Hostile data files cost bounded memory and fail only themselves: over-long lines are rejected
as too_long unread, deep nesting as too_deep, rejected.jsonl keeps a capped excerpt, a gzip bomb
stops with a clear error, and NUL bytes in CSV cells are stripped and counted."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from data_helpers import chat

from tunesmith.data.config import DataPrepareConfig
from tunesmith.data import bounded, prepare, readers
from tunesmith.data.readers import iter_records
from tunesmith.errors import DataError

GOOD = json.dumps(chat("Where is my order?", "It ships today."))


def _records(path, **kwargs):
    return [(r.line, r.rule) for r in iter_records(path, **kwargs)]


def test_an_over_long_jsonl_line_is_rejected_unread_and_the_file_goes_on(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(GOOD + "\n" + '{"text": "' + "x" * 50_000 + '"}\n' + GOOD + "\n")
    records = list(iter_records(path, max_line_bytes=4096))
    assert [(r.line, r.rule) for r in records] == [(1, None), (2, "too_long"), (3, None)]
    long = records[1]
    assert "over 4,096 bytes" in long.message
    assert len(long.raw) <= readers.RAW_EXCERPT_CHARS


@pytest.mark.parametrize("name", ["a.jsonl", "a.txt", "a.csv"])
def test_the_line_limit_holds_in_every_line_based_container(tmp_path, name):
    path = tmp_path / name
    head = "text\n" if name.endswith(".csv") else ""
    path.write_text(head + "short one\n\n" + "y" * 20_000 + "\n\nshort two\n")
    if name.endswith(".jsonl"):
        path.write_text('{"text": "short one"}\n' + '{"text": "' + "y" * 20_000 + '"}\n{"text": "short two"}\n')
    if name.endswith(".csv"):
        with pytest.raises(DataError, match="over 4,096 bytes"):
            list(iter_records(path, max_line_bytes=4096))
        return
    rules = [rule for _, rule in _records(path, max_line_bytes=4096)]
    assert rules == [None, "too_long", None]


def test_a_whole_file_text_document_over_the_limit_is_too_long(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("z" * 10_000)
    assert _records(path, text_split="file", max_line_bytes=4096) == [(1, "too_long")]


def test_a_json_array_element_over_the_limit_stops_with_a_clear_error(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"text": "' + "x" * 30_000 + '"}]')
    with pytest.raises(DataError, match="over 4,096 bytes"):
        list(iter_records(path, max_line_bytes=4096))


@pytest.mark.parametrize("depth", [500, 10_000])
def test_deeply_nested_json_is_one_rejected_line(tmp_path, depth):
    path = tmp_path / "a.jsonl"
    path.write_text(GOOD + "\n" + "[" * depth + "]" * depth + "\n" + '{"a": ' * depth + "1" + "}" * depth
                    + "\n" + GOOD + "\n")
    assert _records(path) == [(1, None), (2, "too_deep"), (3, "too_deep"), (4, None)]


def test_prepare_rejects_deep_nesting_and_keeps_the_rest(tmp_path):
    path = tmp_path / "a.jsonl"
    other = json.dumps(chat("Is it raining?", "No."))
    path.write_text(GOOD + "\n" + '{"messages": ' + "[" * 10_000 + "]" * 10_000 + "}\n" + other + "\n")
    result = prepare.run(DataPrepareConfig(inputs=[path], out=tmp_path / "out"))
    assert result.counts["kept"] == 2 and result.counts["rejected"] == {"too_deep": 1}


def test_rejected_jsonl_keeps_only_an_excerpt_of_a_huge_line(tmp_path):
    path = tmp_path / "a.jsonl"
    huge = json.dumps(chat("Read this: " + "w" * 300_000, "ok"))
    path.write_text(GOOD + "\n" + huge + "\n" + '{"text": "' + "q" * 3_000_000 + '"}\n')
    result = prepare.run(DataPrepareConfig(inputs=[path], out=tmp_path / "out"))
    assert result.counts["rejected"] == {"too_long": 2}
    lines = (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        row = json.loads(line)
        assert len(line) < 2 * readers.RAW_EXCERPT_CHARS
        assert row["raw_truncated"] is True and row["rule"] == "too_long"


def test_a_gzip_bomb_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(bounded, "INFLATE_FLOOR_BYTES", 1 << 20)
    path = tmp_path / "bomb.jsonl.gz"
    member = gzip.compress(b"0" * (1 << 20), compresslevel=9)  # ~1 KiB that inflates to 1 MiB
    with open(path, "wb") as fh:
        fh.write(gzip.compress(GOOD.encode() + b"\n"))
        for _ in range(8):
            fh.write(member)
    with pytest.raises(DataError, match="inflates to more than") as info:
        list(iter_records(path))
    assert "gunzip" in info.value.hint


def test_a_gzip_file_within_the_ratio_reads_normally(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join([GOOD] * 2000).encode()))
    assert len(_records(path)) == 2000


def test_nul_bytes_in_csv_cells_are_stripped_and_counted(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"instruction,output\nhel\x00lo,wor\x00\x00ld\nplain,row\n")
    records = list(iter_records(path))
    assert [r.value for r in records] == [{"instruction": "hello", "output": "world"},
                                          {"instruction": "plain", "output": "row"}]
    result = prepare.run(DataPrepareConfig(inputs=[path], out=tmp_path / "out"))
    assert result.manifest["inputs"]["examples"][0]["nul_bytes_stripped"] == 3


def test_a_fifo_and_a_symlink_loop_say_what_they_are(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is a named pipe"):
        readers.require_file(fifo)
    loop = tmp_path / "loop.jsonl"
    os.symlink(loop, loop)
    with pytest.raises(DataError, match="symlink loop"):
        readers.require_file(loop)
    dangling = tmp_path / "dangling.jsonl"
    os.symlink(tmp_path / "nowhere.jsonl", dangling)
    with pytest.raises(DataError, match="broken symlink"):
        readers.require_file(dangling)


@pytest.mark.parametrize("name, body", [
    ("a.jsonl", '{"text": "\\ud800"}\n{"text": "\\ud83d\\ude00 fine"}\n'),
    ("a.json", '[{"text": "\\udfff"}, {"text": "\\ud83d\\ude00 fine"}]'),
    ("a.csv", 'messages,text\n"[{""role"": ""user"", ""content"": ""\\ud800""}]",x\n,"\\ud83d\\ude00 fine"\n'),
])
def test_a_lone_surrogate_escape_is_non_utf8_and_a_pair_is_fine(tmp_path, name, body):
    """Found by the fuzz test: "\\ud800" is valid JSON syntax but no UTF-8 file can hold it."""
    path = tmp_path / name
    path.write_text(body)
    assert [rule for _, rule in _records(path)] == ["non_utf8", None]


def test_nesting_at_the_limit_passes_and_one_more_level_is_too_deep():
    from tunesmith.data.bounded import MAX_JSON_DEPTH, TooDeep, loads_bounded

    def nested(depth: int) -> str:
        return '{"a": ' * (depth - 1) + '["x"]' + "}" * (depth - 1)

    assert loads_bounded(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(TooDeep):
        loads_bounded(nested(MAX_JSON_DEPTH + 1))
    # Brackets inside strings count towards the quick bound but not the depth.
    assert loads_bounded(json.dumps({"text": "{[" * 200})) == {"text": "{[" * 200}
