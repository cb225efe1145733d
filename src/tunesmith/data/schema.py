"""The internal dataset schema every tunesmith stage reads and writes.

`tunesmith data prepare` normalises every supported input format to this schema and writes it
as JSONL, one JSON object per line, UTF-8, keys in the order shown below. Later stages (train,
eval) read only this schema. There are four kinds of example:

SFT (chat), from OpenAI chat, Alpaca, ShareGPT and prompt/completion files::

    {"messages": [{"role": "system" | "user" | "assistant" | "tool",
                   "content": str,
                   "weight": 0 | 1,          # optional; 0 = no loss on this assistant turn
                   "tool_calls": [...],      # optional; assistant turns only
                   "name": str}],            # optional; e.g. the tool's name on a tool turn
     "tools": [...]}                         # optional; JSON schemas of the callable tools

Preference (DPO), from prompt/chosen/rejected files::

    {"prompt": [messages...], "chosen": [assistant messages...], "rejected": [assistant messages...]}

KTO (unpaired preference)::

    {"messages": [messages...], "label": true | false}

Text (continued pre-training)::

    {"text": str}

Every row written by `data prepare` also carries where it came from, so a bad example found in
training can be traced back to the user's file::

    "meta": {"source": "path/as/given.jsonl", "line": 12}

`line` is the 1-based line of the example in a line-oriented file (JSONL, TXT, CSV, JSON
array: the line the element starts on) and the 1-based row number in a Parquet file.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from typing_extensions import NotRequired, TypedDict

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

Kind = Literal["sft", "preference", "kto", "text"]
KINDS: tuple[str, ...] = ("sft", "preference", "kto", "text")

# Key order of a written row; `dumps_row` writes keys in this order so output is byte-stable.
ROW_KEYS: tuple[str, ...] = ("messages", "tools", "prompt", "chosen", "rejected", "label", "text", "meta")
MESSAGE_KEYS: tuple[str, ...] = ("role", "content", "weight", "tool_calls", "name")


class Message(TypedDict):
    role: Role
    content: str
    weight: NotRequired[int]
    tool_calls: NotRequired[list[Any]]
    name: NotRequired[str]


class Meta(TypedDict):
    source: str
    line: int


class SFTExample(TypedDict):
    messages: list[Message]
    tools: NotRequired[list[Any]]
    meta: NotRequired[Meta]


class PreferenceExample(TypedDict):
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    meta: NotRequired[Meta]


class KTOExample(TypedDict):
    messages: list[Message]
    label: bool
    meta: NotRequired[Meta]


class TextExample(TypedDict):
    text: str
    meta: NotRequired[Meta]


Example = SFTExample | PreferenceExample | KTOExample | TextExample


def kind_of(row: dict[str, Any]) -> Kind:
    """Which of the four kinds a normalised row is."""
    if "chosen" in row:
        return "preference"
    if "label" in row:
        return "kto"
    if "text" in row:
        return "text"
    return "sft"


def all_messages(row: dict[str, Any]) -> list[Message]:
    """Every message of a row in reading order (a preference row yields prompt, chosen, rejected)."""
    if "messages" in row:
        return row["messages"]
    if "prompt" in row:
        return [*row["prompt"], *row["chosen"], *row["rejected"]]
    return []


def ordered_message(message: dict[str, Any]) -> dict[str, Any]:
    return {key: message[key] for key in MESSAGE_KEYS if key in message}


def dumps_row(row: dict[str, Any]) -> str:
    """One JSONL line (no newline) with keys in schema order, so equal rows give equal bytes."""
    out: dict[str, Any] = {}
    for key in ROW_KEYS:
        if key not in row:
            continue
        value = row[key]
        if key in ("messages", "prompt", "chosen", "rejected"):
            value = [ordered_message(m) for m in value]
        out[key] = value
    return json.dumps(out, ensure_ascii=False)
