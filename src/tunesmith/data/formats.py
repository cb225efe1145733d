"""Input formats: detect which one a file is in and normalise each row to the internal schema.

A format is about the fields of a row, independent of the container (JSONL, CSV, ...). Each
normaliser turns one row into a schema row (see `schema.py`) or raises `Reject` with the rule the
row breaks; fields the format does not use are reported back so the manifest can count them
instead of dropping them silently.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable, Literal

from tunesmith.data.rules import Reject
from tunesmith.errors import DataError

Format = Literal["openai", "alpaca", "sharegpt", "prompt_completion", "text", "preference", "kto"]
FORMATS: tuple[str, ...] = ("openai", "alpaca", "sharegpt", "prompt_completion", "text", "preference", "kto")

# How many leading rows of a file vote on its format: enough to outvote a few broken rows.
DETECT_ROWS = 200

OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                "tool": "tool", "function": "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "function_call": "assistant", "observation": "tool", "tool": "tool",
                  "function": "tool"}


def signature(obj: Any) -> Format | None:
    """The format a single row looks like, from its keys."""
    if not isinstance(obj, dict):
        return None
    if ("chosen" in obj and "rejected" in obj) or ("preferred_output" in obj and "non_preferred_output" in obj):
        return "preference"
    if "label" in obj and ("messages" in obj or ("prompt" in obj and "completion" in obj)):
        return "kto"
    if "messages" in obj:
        return "openai"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "prompt" in obj and "completion" in obj:
        return "prompt_completion"
    if "text" in obj:
        return "text"
    return None


def detect(sample: list[Any], source: str) -> Format:
    """The most common signature among a file's first rows; an error when none is recognised."""
    votes = Counter(s for s in map(signature, sample) if s is not None)
    if votes:
        # Counter.most_common keeps first-seen order among ties, so detection is deterministic.
        return votes.most_common(1)[0][0]
    first = next((obj for obj in sample if isinstance(obj, dict)), None)
    seen = f"the first row has the keys {sorted(first)}" if first is not None else "no row is a JSON object"
    raise DataError(
        f"cannot detect the format of {source}: {seen}",
        where=source,
        hint="rename your columns with --map yours=ours (e.g. --map question=instruction --map answer=output) "
             "or name the format with --format; docs/data.md lists the fields of each format",
    )


# --------------------------------------------------------------------------- messages


def _text_content(content: Any, field: str, role: str, has_tool_calls: bool) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        if has_tool_calls:
            return ""
        raise Reject("empty_content", f"the {role} message has no content", field)
    if isinstance(content, list) and content and all(isinstance(p, dict) for p in content):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        kinds = sorted({str(p.get("type")) for p in content if p.get("type") != "text"})
        raise Reject("bad_message", f"content parts of type {', '.join(kinds)} are not supported, only text", field)
    raise Reject("bad_message", f"content must be a string, not {type(content).__name__}", field)


def _tool_calls(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise Reject("bad_message", "tool_calls must be a list of objects", field)
    return value


def _message(obj: Any, field: str, roles: dict[str, str], ignored: list[str],
             role_key: str = "role", content_key: str = "content") -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise Reject("bad_message", f"a message must be an object, not {type(obj).__name__}", field)
    if role_key not in obj and "role" in obj and "content" in obj:
        role_key, content_key = "role", "content"  # ShareGPT files written with OpenAI keys
    raw_role = obj.get(role_key)
    if not isinstance(raw_role, str):
        raise Reject("bad_message", f"the message has no `{role_key}` string", field)
    role = roles.get(raw_role)
    if role is None:
        raise Reject("unknown_role", f"unknown role {raw_role!r}; expected one of {', '.join(sorted(roles))}", field)
    message: dict[str, Any] = {"role": role}
    if raw_role == "function_call":
        message["content"], message["tool_calls"] = "", _sharegpt_call(obj.get(content_key), field)
    else:
        calls = obj.get("tool_calls")
        if calls is None and isinstance(obj.get("function_call"), dict):
            calls = [{"type": "function", "function": obj["function_call"]}]  # OpenAI's legacy single call
        if calls is not None:
            if role != "assistant":
                raise Reject("bad_message", "only assistant messages can have tool_calls", field)
            message["tool_calls"] = _tool_calls(calls, field)
        message["content"] = _text_content(obj.get(content_key), field, role, "tool_calls" in message)
    weight = obj.get("weight")
    if weight is not None:
        if isinstance(weight, bool) or weight not in (0, 1):
            raise Reject("bad_message", f"weight must be 0 or 1, not {weight!r}", field)
        if role != "assistant":
            raise Reject("bad_message", "weight is only allowed on assistant messages", field)
        message["weight"] = int(weight)
    name = obj.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise Reject("bad_message", "name must be a string", field)
        message["name"] = name
    used = {role_key, content_key, "tool_calls", "function_call", "weight", "name"}
    ignored.extend(f"{field.split('[')[0]}[].{k}" for k in obj if k not in used)
    return message


def _sharegpt_call(value: Any, field: str) -> list[Any]:
    """ShareGPT's function_call turn holds a JSON call (or list of calls) as its value."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise Reject("bad_message", "a function_call value must be JSON: {\"name\": ..., \"arguments\": ...}", field) from None
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise Reject("bad_message", "a function call needs a `name`", field)
    return [{"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}} for c in calls]


def _messages(value: Any, field: str, roles: dict[str, str], ignored: list[str], **keys: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise Reject("bad_message", f"`{field}` must be a list of messages, not {type(value).__name__}", field)
    return [_message(m, f"{field}[{i}]", roles, ignored, **keys) for i, m in enumerate(value)]


def _tools(obj: dict[str, Any]) -> list[Any] | None:
    tools = obj.get("tools")
    if tools is None or tools == "":
        return None
    if isinstance(tools, str):  # LLaMA-Factory's ShareGPT stores tools as a JSON string
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise Reject("bad_field", "tools is a string but not JSON", "tools") from None
    if not isinstance(tools, list):
        raise Reject("bad_field", f"tools must be a list, not {type(tools).__name__}", "tools")
    return tools


def _string(obj: dict[str, Any], key: str, *, required: bool, fmt: str) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise Reject("missing_messages", f"{fmt} row has no `{key}`", key)
        return None
    if not isinstance(value, str):
        raise Reject("bad_field", f"`{key}` must be a string, not {type(value).__name__}", key)
    return value


def _system(obj: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    system = _string(obj, "system", required=False, fmt=fmt)
    return [{"role": "system", "content": system}] if system else []


# --------------------------------------------------------------------------- formats


def _openai(obj: dict[str, Any], ignored: list[str]) -> dict[str, Any]:
    if "messages" not in obj:
        raise Reject("missing_messages", "the row has no `messages` list", "messages")
    row: dict[str, Any] = {"messages": _messages(obj["messages"], "messages", OPENAI_ROLES, ignored)}
    tools = _tools(obj)
    if tools is not None:
        row["tools"] = tools
    return row


def _sharegpt(obj: dict[str, Any], ignored: list[str]) -> dict[str, Any]:
    if "conversations" not in obj:
        raise Reject("missing_messages", "the row has no `conversations` list", "conversations")
    turns = _messages(obj["conversations"], "conversations", SHAREGPT_ROLES, ignored,
                      role_key="from", content_key="value")
    row: dict[str, Any] = {"messages": _system(obj, "ShareGPT") + turns}
    tools = _tools(obj)
    if tools is not None:
        row["tools"] = tools
    return row


def _alpaca(obj: dict[str, Any], ignored: list[str]) -> dict[str, Any]:
    instruction = _string(obj, "instruction", required=True, fmt="Alpaca")
    output = _string(obj, "output", required=True, fmt="Alpaca")
    extra = _string(obj, "input", required=False, fmt="Alpaca")
    messages = _system(obj, "Alpaca")
    history = obj.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn) for turn in history
    ):
        raise Reject("bad_field", "history must be a list of [instruction, response] string pairs", "history")
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": messages}


def _turns(value: Any, field: str, role: str, ignored: list[str]) -> list[dict[str, Any]]:
    """A prompt, completion or answer given as a plain string, one message, or a message list."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        return [_message(value, field, SHAREGPT_ROLES, ignored, role_key="from", content_key="value")]
    return _messages(value, field, OPENAI_ROLES | SHAREGPT_ROLES, ignored)


def _prompt_completion(obj: dict[str, Any], ignored: list[str]) -> dict[str, Any]:
    for key in ("prompt", "completion"):
        if obj.get(key) is None:
            raise Reject("missing_messages", f"prompt/completion row has no `{key}`", key)
    prompt = _system(obj, "prompt/completion") + _turns(obj["prompt"], "prompt", "user", ignored)
    return {"messages": prompt + _turns(obj["completion"], "completion", "assistant", ignored)}


def _text(obj: dict[str, Any], ignored: list[str]) -> dict[str, Any]:
    return {"text": _string(obj, "text", required=True, fmt="text")}


def _openai_preference(obj: dict[str, Any], ignored: list[str]) -> dict[str, Any]:
    """OpenAI's DPO fine-tuning rows: `input.messages` (and `input.tools`), `preferred_output`,
    `non_preferred_output` (each a list with the assistant message)."""
    source = obj.get("input")
    if not isinstance(source, dict) or source.get("messages") is None:
        raise Reject("missing_messages", "OpenAI preference row has no `input.messages`", "input")
    for key in ("preferred_output", "non_preferred_output"):
        if obj.get(key) is None:
            raise Reject("missing_messages", f"OpenAI preference row has no `{key}`", key)
    row = {"prompt": _messages(source["messages"], "input.messages", OPENAI_ROLES, ignored),
           "chosen": _turns(obj["preferred_output"], "preferred_output", "assistant", ignored),
           "rejected": _turns(obj["non_preferred_output"], "non_preferred_output", "assistant", ignored)}
    tools = _tools(source)
    if tools:
        row["tools"] = tools
    return row


def _preference(obj: dict[str, Any], ignored: list[str]) -> dict[str, Any]:
    if "preferred_output" in obj:
        return _openai_preference(obj, ignored)
    for key in ("chosen", "rejected"):
        if obj.get(key) is None:
            raise Reject("missing_messages", f"preference row has no `{key}`", key)
    chosen = _turns(obj["chosen"], "chosen", "assistant", ignored)
    rejected = _turns(obj["rejected"], "rejected", "assistant", ignored)
    if obj.get("prompt") is not None:
        prompt = _turns(obj["prompt"], "prompt", "user", ignored)
    elif obj.get("conversations") is not None:
        prompt = _messages(obj["conversations"], "conversations", SHAREGPT_ROLES, ignored,
                           role_key="from", content_key="value")
    elif chosen[:-1] and chosen[:-1] == rejected[:-1]:
        # TRL's implicit-prompt form: two whole conversations that differ only in the last turn.
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    else:
        raise Reject("missing_messages", "preference row has no `prompt` (or ShareGPT `conversations`)", "prompt")
    return {"prompt": _system(obj, "preference") + prompt, "chosen": chosen, "rejected": rejected}


def _kto(obj: dict[str, Any], ignored: list[str]) -> dict[str, Any]:
    if "label" not in obj:
        raise Reject("missing_messages", "KTO row has no `label`", "label")
    label = obj["label"]
    if not isinstance(label, bool):
        raise Reject("bad_field", f"label must be true or false, not {label!r}", "label")
    messages = _openai(obj, ignored)["messages"] if "messages" in obj else _prompt_completion(obj, ignored)["messages"]
    return {"messages": messages, "label": label}


NORMALISERS: dict[str, Callable[[dict[str, Any], list[str]], dict[str, Any]]] = {
    "openai": _openai, "alpaca": _alpaca, "sharegpt": _sharegpt, "prompt_completion": _prompt_completion,
    "text": _text, "preference": _preference, "kto": _kto,
}
USED_KEYS: dict[str, frozenset[str]] = {
    "openai": frozenset({"messages", "tools"}),
    "alpaca": frozenset({"instruction", "input", "output", "system", "history"}),
    "sharegpt": frozenset({"conversations", "system", "tools"}),
    "prompt_completion": frozenset({"prompt", "completion", "system"}),
    "text": frozenset({"text"}),
    "preference": frozenset({"prompt", "chosen", "rejected", "conversations", "system",
                             "input", "preferred_output", "non_preferred_output"}),
    "kto": frozenset({"messages", "prompt", "completion", "system", "label"}),
}


def normalise(obj: Any, fmt: Format) -> tuple[dict[str, Any], list[str]]:
    """(schema row, names of the fields that were not used) for one row in format `fmt`."""
    if not isinstance(obj, dict):
        raise Reject("not_an_object", f"expected a JSON object, got a {type(obj).__name__}")
    ignored = [key for key in obj if key not in USED_KEYS[fmt] and key != "meta"]
    row = NORMALISERS[fmt](obj, ignored)
    return row, ignored


def apply_map(obj: Any, mapping: dict[str, str]) -> Any:
    """Rename top-level fields (`--map yours=ours`); a renamed field wins over one already there."""
    if not mapping or not isinstance(obj, dict):
        return obj
    renamed = {k: v for k, v in obj.items() if k not in mapping.values() or k in mapping}
    return {mapping.get(k, k): v for k, v in renamed.items()}
