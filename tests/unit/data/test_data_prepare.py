"""`data prepare` end to end (without a tokenizer): outputs, counts, determinism, leakage, strict."""

from __future__ import annotations

import hashlib
import json

import pytest

from tunesmith.data import prepare
from tunesmith.data.config import DataPrepareConfig
from tunesmith.data.dedup import Deduplicator
from tunesmith.data.schema import ROW_KEYS
from tunesmith.errors import ConfigError, DataError

from data_helpers import chat

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _run(inputs, out, **settings):
    return prepare.run(DataPrepareConfig(inputs=list(inputs), out=out, **settings))


@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory):
    tickets = __import__("pathlib").Path(__file__).resolve().parents[3] / "examples" / "data" / "tickets"
    out = tmp_path_factory.mktemp("dirty") / "prepared"
    return _run([tickets / "dirty.jsonl"], out, split={"train": 0.8, "val": 0.1, "test": 0.1}), tickets


def test_outputs_and_counts(dirty_run):
    result, tickets = dirty_run
    out = result.out
    for name in (*SPLIT_FILES, "rejected.jsonl", "manifest.json", "report.md", "length_histogram.png", "config.yaml"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == 31 and counts["kept"] == 18 and sum(counts["rejected"].values()) == 13
    assert counts["splits"] == {"train": 14, "val": 2, "test": 2}
    assert counts["pii"] == {k: 1 for k in ("credit_card", "email", "iban", "ipv4", "ipv6", "phone", "secret", "ssn")}
    assert counts["funnel"][0] == ["records", 31] and counts["funnel"][-1] == ["length", 18]
    source = manifest["inputs"]["examples"][0]
    assert source["sha256"] == hashlib.sha256((tickets / "dirty.jsonl").read_bytes()).hexdigest()
    assert source["format"] == "openai"
    outputs = {o["path"]: o["sha256"] for o in manifest["outputs"]}
    for name in (*SPLIT_FILES, "rejected.jsonl", "length_histogram.png", "report.md"):
        assert outputs[name] == hashlib.sha256((out / name).read_bytes()).hexdigest()


def test_written_rows_follow_the_schema_with_their_source(dirty_run):
    result, tickets = dirty_run
    source_lines = (tickets / "dirty.jsonl").read_bytes().split(b"\n")
    seen = 0
    for name in SPLIT_FILES:
        for row in _rows(result.out / name):
            assert list(row) == [k for k in ROW_KEYS if k in row] and set(row) <= {"messages", "tools", "meta"}
            assert row["meta"]["source"] == str(tickets / "dirty.jsonl")
            original = json.loads(source_lines[row["meta"]["line"] - 1])
            assert [m["role"] for m in row["messages"]] == [m["role"] for m in original["messages"]]
            text = json.dumps(row)
            assert "jane.doe@example.com" not in text and "4111 1111 1111 1111" not in text
            seen += 1
    assert seen == 18
    weighted = [m for name in SPLIT_FILES for row in _rows(result.out / name) for m in row["messages"] if "weight" in m]
    assert sorted(m["weight"] for m in weighted) == [0, 1]


def test_rejected_rows_name_rule_file_and_line(dirty_run):
    result, tickets = dirty_run
    rejected = _rows(result.out / "rejected.jsonl")
    assert len(rejected) == 13
    lines = (tickets / "dirty.jsonl").read_bytes().split(b"\n")
    for row in rejected:
        assert row["source"] == str(tickets / "dirty.jsonl") and row["rule"] and row["message"]
        if "record" in row:
            assert row["record"] == json.loads(lines[row["line"] - 1])
        else:  # unreadable lines are kept as text
            # A huge example is kept as a capped excerpt rather than the whole record again.
            assert row["rule"] in ("invalid_json", "non_utf8") or row.get("raw_truncated")
            assert row["raw"].startswith('{"messages"')


def test_report_embeds_the_histogram(dirty_run):
    result, _ = dirty_run
    report = (result.out / "report.md").read_text()
    assert "![example lengths](length_histogram.png)" in report
    assert "`bad_role_order` | 2 |" in report and "| email | 1 |" in report
    assert (result.out / "length_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_inputs_and_seed_give_byte_identical_outputs(tickets, tmp_path):
    inputs = [tickets / "dirty.jsonl", tickets / "test.jsonl"]
    first = _run(inputs, tmp_path / "a", seed=3).out
    snapshot = {p.name: p.read_bytes() for p in first.iterdir()}
    again = _run(inputs, tmp_path / "a", seed=3).out
    assert {p.name: p.read_bytes() for p in again.iterdir()} == snapshot
    elsewhere = _run(inputs, tmp_path / "b", seed=3).out
    for name in (*SPLIT_FILES, "rejected.jsonl", "length_histogram.png"):
        assert (elsewhere / name).read_bytes() == snapshot[name]
    other_seed = _run(inputs, tmp_path / "c", seed=4).out
    assert (other_seed / "test.jsonl").read_bytes() != snapshot["test.jsonl"]


def test_kept_copies_never_straddle_splits(tmp_path, write_jsonl):
    base = [chat(f"ticket {i}: the {w} app crashes when I open the {w} settings page on my phone", f"answer {i}")
            for i, w in enumerate(["red", "blue", "green", "black", "white", "pink", "grey", "gold"] * 25)]
    copies = [chat(row["messages"][0]["content"].upper() + "!!", row["messages"][1]["content"]) for row in base[::3]]
    path = write_jsonl(base + copies)
    out = _run([path], tmp_path / "out", dedup={"keep": True}, split={"train": 0.6, "val": 0.2, "test": 0.2}).out
    where: dict[str, set[str]] = {}
    for name in SPLIT_FILES:
        for row in _rows(out / name):
            answer = row["messages"][1]["content"]
            where.setdefault(answer, set()).add(name)
    assert len(where) == 200 and all(len(splits) == 1 for splits in where.values())
    assert sum(len(_rows(out / name)) for name in SPLIT_FILES) == 200 + len(copies)


def test_no_near_duplicates_across_splits_with_removal(tickets, tmp_path):
    out = _run([tickets / "train.jsonl"], tmp_path / "out", split={"train": 0.5, "val": 0.25, "test": 0.25}).out
    dedup = Deduplicator()
    for name in SPLIT_FILES:
        for row in _rows(out / name):
            match, keys = dedup.find(row)
            assert match is None, (name, row["meta"])
            dedup.remember(keys, 0)


def test_strict_mode_fails_and_writes_nothing(tickets, tmp_path, write_jsonl):
    out = tmp_path / "strict"
    with pytest.raises(DataError) as err:
        _run([tickets / "dirty.jsonl"], out, strict=True)
    message = err.value.render()
    assert "13 of 31 examples are invalid" in message and "nothing was written" in message
    assert f"{tickets / 'dirty.jsonl'}:" in message and "invalid_json" in message
    assert not out.exists()
    clean = write_jsonl([chat(f"question {i}: {word} {word}", f"answer {i}") for i, word in enumerate(["tea", "sun", "map"])])
    assert _run([clean], out, strict=True).counts["kept"] == 3


def test_pii_drop_and_off(tickets, tmp_path):
    dropped = _run([tickets / "dirty.jsonl"], tmp_path / "drop", pii="drop").counts
    assert dropped["rejected"]["pii"] == 5 and dropped["kept"] == 13 and dropped["pii"] == {}
    kept = _run([tickets / "dirty.jsonl"], tmp_path / "off", pii="off")
    assert kept.counts["pii"] == {}
    assert "jane.doe@example.com" in "".join((kept.out / n).read_text() for n in SPLIT_FILES)


def test_stratify_by_an_input_field(tmp_path, write_jsonl):
    rows = [{**chat(f"question number {i} about topic {i % 7}", f"answer {i}"), "topic": "rare" if i < 20 else "common"}
            for i in range(200)]
    out = _run([write_jsonl(rows)], tmp_path / "out", split={"train": 0.8, "val": 0.1, "test": 0.1,
                                                              "stratify_by": "topic"}).out
    rare = {name: sum(int(r["messages"][1]["content"].split()[1]) < 20 for r in _rows(out / name)) for name in SPLIT_FILES}
    assert rare == {"train.jsonl": 16, "val.jsonl": 2, "test.jsonl": 2}


def test_bad_settings_are_user_errors(tmp_path, tickets):
    with pytest.raises(ConfigError, match="no input files"):
        _run([], tmp_path / "x")
    with pytest.raises(DataError, match="not found"):
        _run([tmp_path / "nope.jsonl"], tmp_path / "x")
    with pytest.raises(ConfigError, match="holds the input"):
        _run([tickets / "dirty.jsonl"], tickets)
    with pytest.raises(ValueError, match="add up to 1"):
        DataPrepareConfig(split={"train": 0.9, "val": 0.2, "test": 0.0})


def test_every_kind_round_trips_through_prepare(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"prompt": f"Where is order {i}?", "chosen": f"Order {i} ships today.",
                                  "rejected": "No idea.", "id": i} for i in range(20)]), encoding="utf-8")
    out = _run([pairs], tmp_path / "pairs", split={"train": 1.0, "val": 0.0, "test": 0.0})
    rows = _rows(out.out / "train.jsonl")
    assert len(rows) == 20 and out.counts["kind"] == "preference"
    assert list(rows[3]) == ["prompt", "chosen", "rejected", "meta"] and rows[3]["meta"]["line"] == 1
    assert json.loads((out.out / "manifest.json").read_text())["inputs"]["examples"][0]["ignored_fields"] == {"id": 20}

    sharegpt = tmp_path / "chats.parquet"
    pq.write_table(pa.Table.from_pylist([{"conversations": [{"from": "human", "value": f"hello number {i} " * 3},
                                                            {"from": "gpt", "value": f"hi {i}"}]} for i in range(10)]),
                   sharegpt)
    out = _run([sharegpt], tmp_path / "chats", split={"train": 0.8, "val": 0.2, "test": 0.0})
    rows = [r for name in SPLIT_FILES for r in _rows(out.out / name)]
    assert sorted(r["meta"]["line"] for r in rows) == list(range(1, 11))
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)

    text = tmp_path / "notes.txt.gz"
    text.write_bytes(__import__("gzip").compress("First note.\n\nSecond note,\ntwo lines.\n".encode()))
    out = _run([text], tmp_path / "text", split={"train": 1.0, "val": 0.0, "test": 0.0})
    assert [r["text"] for r in _rows(out.out / "train.jsonl")] == ["First note.", "Second note,\ntwo lines."]
