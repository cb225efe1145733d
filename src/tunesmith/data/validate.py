"""Validation of one normalised example: the rules a row can break after it was read.

Reading rules (invalid_json, non_utf8) live in readers.py, format rules (missing_messages,
bad_message, unknown_role, bad_field) in formats.py; the rules here look at a schema row as a
whole: empty turns, turn order, an assistant turn to learn from, and size.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data.rules import Reject
from tunesmith.data.schema import all_messages, kind_of


def char_count(row: dict[str, Any]) -> int:
    """Characters of text in an example: what `max_chars` and the character histogram measure."""
    if "text" in row:
        return len(row["text"])
    return sum(len(m["content"]) for m in all_messages(row))


def _check_nonempty(messages: list[dict[str, Any]], field: str) -> None:
    for i, message in enumerate(messages):
        if not message["content"].strip() and not message.get("tool_calls"):
            raise Reject("empty_content", f"the {message['role']} message is empty", f"{field}[{i}]")


def _check_order(messages: list[dict[str, Any]], field: str, *, ends_with: tuple[str, ...]) -> None:
    """System turns only at the start, then user first, user and assistant alternating, tool
    turns only after an assistant tool call, and the conversation ending as `ends_with` says.

    Chat templates of common models (Llama 2, Mistral, Gemma) raise on anything else, and a
    trailing user turn would be trained on nothing; so these are rejected here, before a
    training run fails on them hours later.
    """
    previous: dict[str, Any] | None = None
    for i, message in enumerate(messages):
        role, where = message["role"], f"{field}[{i}]"
        before = previous["role"] if previous else None
        if role == "system":
            if before not in (None, "system"):
                raise Reject("bad_role_order", "a system message may only come first", where)
        elif role == "user":
            if before == "user":
                raise Reject("bad_role_order", "two user turns in a row; merge them into one", where)
            if before == "tool":
                raise Reject("bad_role_order", "a user turn follows a tool result; the assistant must answer first", where)
        elif role == "assistant":
            if before in (None, "system"):
                raise Reject("bad_role_order", "the conversation starts with the assistant; a user turn must come first", where)
            if before == "assistant":
                raise Reject("bad_role_order", "two assistant turns in a row; merge them into one", where)
        elif role == "tool":
            if not (before == "tool" or (before == "assistant" and previous and previous.get("tool_calls"))):
                raise Reject("bad_role_order", "a tool result must follow an assistant turn with tool_calls", where)
        previous = message
    if messages and messages[-1]["role"] not in ends_with:
        last = len(messages) - 1
        raise Reject("bad_role_order", f"the last turn is the {messages[-1]['role']}'s; it must be "
                     f"{' or '.join(ends_with)}", f"{field}[{last}]")


def _check_trainable(messages: list[dict[str, Any]], field: str) -> None:
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise Reject("no_assistant_turn", "there is no assistant turn to learn from", field)
    if all(m.get("weight", 1) == 0 for m in answers):
        raise Reject("no_assistant_turn", "every assistant turn has weight 0, so nothing would be learned", field)


def validate(row: dict[str, Any], *, max_chars: int) -> None:
    """Raise `Reject` with the first rule the schema row breaks."""
    kind = kind_of(row)
    if kind == "text":
        if not row["text"].strip():
            raise Reject("empty_content", "the text is empty", "text")
    elif kind == "preference":
        if not row["prompt"]:
            raise Reject("missing_messages", "the prompt has no messages", "prompt")
        for field in ("prompt", "chosen", "rejected"):
            _check_nonempty(row[field], field)
        _check_order(row["prompt"], "prompt", ends_with=("user", "tool"))
        for field in ("chosen", "rejected"):
            if not row[field]:
                raise Reject("no_assistant_turn", f"`{field}` has no assistant message", field)
            for i, message in enumerate(row[field]):
                if message["role"] != "assistant":
                    raise Reject("bad_role_order", f"`{field}` may hold only assistant messages", f"{field}[{i}]")
        if [m["content"] for m in row["chosen"]] == [m["content"] for m in row["rejected"]]:
            raise Reject("identical_pair", "chosen and rejected are the same answer", "rejected")
    else:
        messages = row["messages"]
        if not messages:
            raise Reject("missing_messages", "`messages` is an empty list", "messages")
        _check_nonempty(messages, "messages")
        _check_trainable(messages, "messages")
        _check_order(messages, "messages", ends_with=("assistant",))
    chars = char_count(row)
    if chars > max_chars:
        raise Reject("too_long", f"{chars:,} characters, over max_chars={max_chars:,}")
