"""Containers: every reader yields each example once, with the right line, in bounded memory."""

from __future__ import annotations

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.data import readers
from tunesmith.data.readers import iter_records
from tunesmith.errors import DataError

ROWS = [{"text": f"document {i}\nwith two lines"} for i in range(5)]


def _gzip(path):
    target = path.with_name(path.name + ".gz")
    target.write_bytes(gzip.compress(path.read_bytes()))
    return target


def _values(path, **kwargs):
    return [(r.line, r.value, r.rule) for r in iter_records(path, **kwargs)]


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}\n\n  \n{"a": 2}\r\n{"a": 3}')
    assert _values(path) == [(1, {"a": 1}, None), (4, {"a": 2}, None), (5, {"a": 3}, None)]


def test_jsonl_reports_bad_lines_and_goes_on(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1\n{"a": "caf\xe9"}\n[1, 2]\n{"a": 4}\n')
    records = list(iter_records(path))
    assert [(r.line, r.rule) for r in records] == [(1, "invalid_json"), (2, "non_utf8"), (3, None), (4, None)]
    assert "column" in records[0].message and records[0].raw == '{"a": 1'
    assert "0xe9" in records[1].message and "\\xe9" in records[1].raw
    assert records[2].value == [1, 2]


def test_json_array_streams_across_buffer_edges(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_JSON_CHUNK", 7)  # elements, strings and numbers cut mid-way
    path = tmp_path / "a.json"
    rows = [{"text": "x" * 30, "n": 123456789}, {"text": "caf\u00e9 \u2603", "n": 2}, {"text": "last", "n": 3.5}]
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n", encoding="utf-8")
    assert _values(path) == [(2, rows[0], None), (3, rows[1], None), (4, rows[2], None)]


def test_json_array_pretty_printed_line_numbers(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ROWS[:3], indent=2), encoding="utf-8")
    lines = [line for line, _, _ in _values(path)]
    assert lines == [2, 5, 8]


def test_json_file_with_one_object_per_line_reads_as_jsonl(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    assert _values(path) == [(1, {"a": 1}, None), (2, {"a": 2}, None)]


@pytest.mark.parametrize("text, message", [('[{"a": 1} {"a": 2}]', "expected ','"), ('[{"a": tru}]', "invalid JSON"),
                                            ('"just a string"', "JSON array")])
def test_broken_json_array_is_a_file_error_with_its_line(tmp_path, text, message):
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(iter_records(path))
    assert message in err.value.render() and str(path) in err.value.render()


def test_csv_parses_json_columns_and_labels(tmp_path):
    path = tmp_path / "a.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["messages", "label", "note"])
        writer.writerow([json.dumps([{"role": "user", "content": "hi\nthere"}]), "true", "multi\nline"])
        writer.writerow(['[{"role": "user"', "false", "x"])
        writer.writerow(["[]", "0", "y"])
    records = list(iter_records(path))
    # Row 2 spans two lines (the quoted newline in `note`), so row 3 starts on line 4.
    assert [(r.line, r.rule) for r in records] == [(2, None), (4, "invalid_json"), (5, None)]
    assert records[0].value == {"messages": [{"role": "user", "content": "hi\nthere"}], "label": True,
                                "note": "multi\nline"}
    assert records[2].value["label"] is False


def test_csv_non_utf8_cell(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"instruction,output\nhi,ok\ncaf\xe9,ok\n")
    assert [(r.line, r.rule) for r in iter_records(path)] == [(2, None), (3, "non_utf8")]


def test_parquet_rows_and_absent_struct_fields(tmp_path):
    path = tmp_path / "a.parquet"
    table = pa.Table.from_pylist([
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 1}]},
        {"messages": [{"role": "user", "content": "a"}]},
    ])
    pq.write_table(table, path)
    records = list(iter_records(path))
    assert [r.line for r in records] == [1, 2]
    # Parquet fills the missing `weight` with null; it must come back absent, not None.
    assert records[0].value["messages"][0] == {"role": "user", "content": "hi"}
    assert records[0].value["messages"][1]["weight"] == 1


@pytest.mark.parametrize("split, expected", [
    ("paragraph", [(1, "first para\nstill first"), (4, "second")]),
    ("line", [(1, "first para"), (2, "still first"), (4, "second")]),
    ("file", [(1, "first para\nstill first\n\nsecond")]),
])
def test_txt_documents(tmp_path, split, expected):
    path = tmp_path / "a.txt"
    path.write_text("first para\nstill first\n\nsecond\n", encoding="utf-8")
    assert [(r.line, r.value["text"]) for r in iter_records(path, text_split=split)] == expected


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet", "txt"])
def test_every_container_reads_gzipped(tmp_path, suffix):
    path = tmp_path / f"a.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    elif suffix == "json":
        path.write_text(json.dumps(ROWS), encoding="utf-8")
    elif suffix == "csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, ["text"])
            writer.writeheader()
            writer.writerows(ROWS)
    elif suffix == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        path.write_text("\n\n".join(r["text"] for r in ROWS), encoding="utf-8")
    plain = [r.value for r in iter_records(path)]
    assert plain == ROWS
    assert [r.value for r in iter_records(_gzip(path))] == ROWS


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "a.xml").write_text("<a/>")
    with pytest.raises(DataError, match="cannot tell the file type"):
        list(iter_records(tmp_path / "a.xml"))
    with pytest.raises(DataError, match="not found"):
        list(iter_records(tmp_path / "missing.jsonl"))


def test_truncated_gzip_is_a_file_error(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:40])
    with pytest.raises(DataError, match="gzip"):
        list(iter_records(path))


def test_csv_cells_longer_than_the_csv_default_limit(tmp_path):
    path = tmp_path / "long.csv"
    long_output = "word " * 60_000  # 300 KB, over csv's default 128 KiB field limit
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["instruction", "output"], ["Repeat.", long_output]])
    assert [r.value["output"] for r in iter_records(path)] == [long_output]
