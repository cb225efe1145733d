"""Every input format normalises to the internal schema; detection and --map pick the right one."""

from __future__ import annotations

import pytest

from tunesmith.data.formats import apply_map, detect, normalise, signature
from tunesmith.data.rules import Reject
from tunesmith.errors import DataError

U, A = {"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "It ships today."}


def test_openai_keeps_tools_weights_names_and_tool_calls():
    call = {"id": "c1", "type": "function", "function": {"name": "track", "arguments": "{\"order\": 1}"}}
    row, ignored = normalise({
        "messages": [
            {"role": "developer", "content": "Be brief."},
            U,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "in transit", "name": "track", "tool_call_id": "c1"},
            {"role": "assistant", "content": [{"type": "text", "text": "It is "}, {"type": "text", "text": "on its way."}],
             "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "track"}}],
        "id": 7,
    }, "openai")
    assert row["messages"] == [
        {"role": "system", "content": "Be brief."},
        U,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "in transit", "name": "track"},
        {"role": "assistant", "content": "It is on its way.", "weight": 1},
    ]
    assert row["tools"] == [{"type": "function", "function": {"name": "track"}}]
    assert sorted(ignored) == ["id", "messages[].tool_call_id"]


def test_openai_legacy_function_call_becomes_a_tool_call():
    row, _ = normalise({"messages": [U, {"role": "assistant", "content": None,
                                        "function_call": {"name": "track", "arguments": "{}"}}]}, "openai")
    assert row["messages"][1]["tool_calls"] == [{"type": "function", "function": {"name": "track", "arguments": "{}"}}]


def test_alpaca_with_input_system_and_history():
    row, _ = normalise({"instruction": "Summarise.", "input": "A long text.", "output": "Short.", "system": "Be terse.",
                        "history": [["Hi", "Hello!"]]}, "alpaca")
    assert row == {"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Summarise.\n\nA long text."}, {"role": "assistant", "content": "Short."},
    ]}
    plain, _ = normalise({"instruction": "Say hi.", "input": "", "output": "Hi."}, "alpaca")
    assert plain["messages"][0] == {"role": "user", "content": "Say hi."}


def test_sharegpt_roles_tools_and_function_calls():
    row, _ = normalise({
        "system": "You track parcels.",
        "tools": '[{"name": "track", "parameters": {}}]',
        "conversations": [
            {"from": "human", "value": "Where is 42?"},
            {"from": "function_call", "value": '{"name": "track", "arguments": {"order": 42}}'},
            {"from": "observation", "value": "in transit"},
            {"from": "gpt", "value": "It is in transit."},
        ],
    }, "sharegpt")
    assert row["messages"] == [
        {"role": "system", "content": "You track parcels."},
        {"role": "user", "content": "Where is 42?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "track", "arguments": {"order": 42}}}]},
        {"role": "tool", "content": "in transit"},
        {"role": "assistant", "content": "It is in transit."},
    ]
    assert row["tools"] == [{"name": "track", "parameters": {}}]


def test_sharegpt_written_with_openai_keys():
    row, _ = normalise({"conversations": [U, A]}, "sharegpt")
    assert row["messages"] == [U, A]


@pytest.mark.parametrize("obj", [
    {"prompt": "Where is my order?", "completion": "It ships today."},
    {"prompt": [U], "completion": [A]},
])
def test_prompt_completion(obj):
    assert normalise(obj, "prompt_completion")[0] == {"messages": [U, A]}


def test_text():
    assert normalise({"text": "Once upon a time."}, "text")[0] == {"text": "Once upon a time."}


@pytest.mark.parametrize("obj", [
    {"prompt": "Where is my order?", "chosen": "It ships today.", "rejected": "Dunno."},
    {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "Dunno."}]},
    {"conversations": [{"from": "human", "value": "Where is my order?"}],
     "chosen": {"from": "gpt", "value": "It ships today."}, "rejected": {"from": "gpt", "value": "Dunno."}},
    {"chosen": [U, A], "rejected": [U, {"role": "assistant", "content": "Dunno."}]},  # implicit prompt
])
def test_preference_shapes(obj):
    row, _ = normalise(obj, "preference")
    assert row == {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "Dunno."}]}


@pytest.mark.parametrize("obj", [{"messages": [U, A], "label": True},
                                 {"prompt": "Where is my order?", "completion": "It ships today.", "label": True}])
def test_kto(obj):
    assert normalise(obj, "kto")[0] == {"messages": [U, A], "label": True}


@pytest.mark.parametrize("obj, fmt, rule", [
    ({"messages": [U, A], "label": "yes"}, "kto", "bad_field"),
    ({"messages": [U, A], "tools": {"a": 1}}, "openai", "bad_field"),
    ({"text": 3}, "text", "bad_field"),
    ({"instruction": "x"}, "alpaca", "missing_messages"),
    ({"instruction": "x", "output": "y", "history": [["only one"]]}, "alpaca", "bad_field"),
    ({"conversations": [{"from": "narrator", "value": "x"}]}, "sharegpt", "unknown_role"),
    ({"conversations": [{"from": "function_call", "value": "not json"}]}, "sharegpt", "bad_message"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "openai", "bad_message"),
    ({"messages": [U, {"role": "assistant", "content": "x", "weight": 2}]}, "openai", "bad_message"),
    ({"messages": [{"role": "user", "content": "x", "weight": 1}, A]}, "openai", "bad_message"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}, A]}, "openai", "bad_message"),
    ({"messages": [U, {"role": "assistant", "content": "x", "tool_calls": "call it"}]}, "openai", "bad_message"),
    ({"chosen": "a", "rejected": "b"}, "preference", "missing_messages"),
    ({"conversation": "hi"}, "openai", "missing_messages"),
    (["not", "a", "dict"], "openai", "not_an_object"),
])
def test_malformed_rows_name_their_rule(obj, fmt, rule):
    with pytest.raises(Reject) as err:
        normalise(obj, fmt)
    assert err.value.rule == rule


def test_detection_votes_and_explains_failure():
    sample = [{"messages": []}, {"broken": 1}, {"instruction": "a", "output": "b"}, {"messages": []}]
    assert detect(sample, "x.jsonl") == "openai"
    assert [signature(s) for s in ({"prompt": "p", "chosen": "c", "rejected": "r"}, {"messages": [], "label": True},
                                   {"conversations": []}, {"prompt": "p", "completion": "c"}, {"text": "t"})] == [
        "preference", "kto", "sharegpt", "prompt_completion", "text"]
    with pytest.raises(DataError) as err:
        detect([{"question": "q", "answer": "a"}], "qa.jsonl")
    assert "['answer', 'question']" in err.value.render() and "--map" in err.value.render()


def test_map_renames_and_wins_over_an_existing_field():
    assert apply_map({"question": "q", "answer": "a", "instruction": "old"},
                     {"question": "instruction", "answer": "output"}) == {"instruction": "q", "output": "a"}
    assert apply_map({"a": 1, "b": 2}, {"a": "b", "b": "a"}) == {"b": 1, "a": 2}
