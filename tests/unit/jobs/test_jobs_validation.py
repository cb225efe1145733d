"""Upload and training-file checks: the data stage's named rules with line numbers."""

from __future__ import annotations

import json

import pytest

from tunesmith.jobs.validation import FileProblem, check_examples, check_upload

CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


def _file(tmp_path, *lines, name="data.jsonl", raw: bytes | None = None):
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else "".join(line + "\n" for line in lines).encode())
    return path


@pytest.mark.parametrize("raw, line, rule", [
    (f"{CHAT}\n{{oops\n".encode(), 2, "invalid_json"),
    (f"{CHAT}\n[1, 2]\n".encode(), 2, "not_an_object"),
    (f"{CHAT}\n\n".encode() + b'{"a": "\xff"}\n', 3, "non_utf8"),
])
def test_upload_problems_name_the_line_and_rule(tmp_path, raw, line, rule):
    with pytest.raises(FileProblem) as problem:
        check_upload(_file(tmp_path, raw=raw), "data.jsonl")
    assert (problem.value.line, problem.value.rule) == (line, rule)
    assert str(problem.value).startswith(f"Line {line}: {rule}: ")


def test_upload_must_be_jsonl(tmp_path):
    with pytest.raises(FileProblem):
        check_upload(_file(tmp_path, CHAT, name="data.csv"), "data.csv")
    check_upload(_file(tmp_path, CHAT, ""), "data.jsonl")  # blank lines are fine


@pytest.mark.parametrize("row, rule", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no_assistant_turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "empty_content"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "unknown_role"),
    ({"prompt": "hi", "completion": "there"}, "missing_messages"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}, "bad_message"),
])
def test_training_rows_break_named_rules(tmp_path, row, rule):
    with pytest.raises(FileProblem) as problem:
        check_examples(_file(tmp_path, CHAT, json.dumps(row)), "supervised")
    assert (problem.value.line, problem.value.rule) == (2, rule)


def test_valid_rows_become_schema_rows_with_their_line(tmp_path):
    (row,) = check_examples(_file(tmp_path, "", CHAT), "supervised")
    assert row["messages"][1] == {"role": "assistant", "content": "hello"}
    assert row["meta"] == {"source": "data.jsonl", "line": 2}


def _dpo(prompt="q", good="yes", bad="no", **extra):
    return json.dumps({"input": {"messages": [{"role": "user", "content": prompt}]},
                       "preferred_output": [{"role": "assistant", "content": good}],
                       "non_preferred_output": [{"role": "assistant", "content": bad}], **extra})


def test_openai_dpo_rows_become_preference_rows(tmp_path):
    (row,) = check_examples(_file(tmp_path, _dpo()), "dpo")
    assert row["prompt"] == [{"role": "user", "content": "q"}]
    assert row["chosen"] == [{"role": "assistant", "content": "yes"}]
    assert row["rejected"] == [{"role": "assistant", "content": "no"}]


@pytest.mark.parametrize("line, rule", [
    (_dpo(good="same", bad="same"), "identical_pair"),
    (json.dumps({"input": {"messages": []}, "preferred_output": []}), "missing_messages"),
    (CHAT, "missing_messages"),  # a chat row in a DPO job
])
def test_dpo_rows_break_named_rules(tmp_path, line, rule):
    with pytest.raises(FileProblem) as problem:
        check_examples(_file(tmp_path, _dpo(), line), "dpo")
    assert (problem.value.line, problem.value.rule) == (2, rule)
