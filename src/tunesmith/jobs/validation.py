"""Checks on uploaded files and on a job's training and validation files, with the data stage's
named rules and line numbers, reported in the shapes OpenAI uses.

An upload is checked as OpenAI checks it on arrival: a `.jsonl` file of one JSON object per line
(rules invalid_json, non_utf8, not_an_object). The content is checked when a job starts
(`validating_files`), for the job's method: chat rows for `supervised`, OpenAI's DPO rows for
`dpo`. The first broken rule fails the job with `invalid_training_file` (or
`invalid_validation_file`), naming the line and the rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tunesmith.data.formats import normalise
from tunesmith.data.rules import RULES, Reject
from tunesmith.data.validate import validate

MAX_EXAMPLE_CHARS = 1_000_000


@dataclass(frozen=True)
class FileProblem(Exception):
    """The first rule a file breaks: `Line 3: invalid_json: ...`."""

    line: int | None
    rule: str
    detail: str

    def __str__(self) -> str:
        where = f"Line {self.line}: " if self.line is not None else ""
        fix = RULES[self.rule].fix if self.rule in RULES else ""
        return f"{where}{self.rule}: {self.detail}" + (f" (fix: {fix})" if fix else "")


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line; FileProblem at the first bad one."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FileProblem(number, "non_utf8", f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} "
                                                      "is not UTF-8") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FileProblem(number, "invalid_json", f"{exc.msg} at column {exc.colno}") from None
            if not isinstance(value, dict):
                raise FileProblem(number, "not_an_object", f"expected a JSON object, got a {type(value).__name__}")
            yield number, value


def check_upload(path: Path, filename: str) -> None:
    """What OpenAI refuses on upload for purpose fine-tune."""
    if not filename.lower().endswith(".jsonl"):
        raise FileProblem(None, "file_format", f"{filename!r} is not a .jsonl file")
    for _ in iter_json_lines(path):
        pass


def openai_dpo_row(obj: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's DPO row (`input.messages`, `preferred_output`, `non_preferred_output`) as the
    data stage's preference row (`prompt`, `chosen`, `rejected`)."""
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in obj:
            raise Reject("missing_messages", f"a DPO row needs `{key}`", key)
    source = obj["input"]
    if not isinstance(source, dict) or not isinstance(source.get("messages"), list):
        raise Reject("missing_messages", "`input` must be an object with `messages`", "input.messages")
    row = {"prompt": source["messages"], "chosen": obj["preferred_output"], "rejected": obj["non_preferred_output"]}
    if source.get("tools") is not None:
        row["tools"] = source["tools"]
    return row


def example_row(obj: dict[str, Any], method: str) -> dict[str, Any]:
    """One example of a training file as a schema row; Reject names the rule it breaks."""
    if method == "dpo":
        row, _ = normalise(openai_dpo_row(obj), "preference")
        if row["chosen"] == row["rejected"]:
            raise Reject("identical_pair", "preferred_output and non_preferred_output are the same",
                         "non_preferred_output")
    else:
        if "messages" not in obj:
            raise Reject("missing_messages", "the example has no `messages`", "messages")
        row, _ = normalise(obj, "openai")
    validate(row, max_chars=MAX_EXAMPLE_CHARS)
    return row


def check_examples(path: Path, method: str) -> list[dict[str, Any]]:
    """The file's examples as schema rows, or FileProblem naming the first broken line and rule."""
    rows = []
    for number, obj in iter_json_lines(path):
        try:
            row = example_row(obj, method)
        except Reject as exc:
            field = f" ({exc.field})" if exc.field else ""
            raise FileProblem(number, exc.rule, f"{exc.message}{field}") from None
        row["meta"] = {"source": path.name, "line": number}
        rows.append(row)
    return rows
