"""Every problem of a fine-tuning file, line by line, before it is uploaded.

The jobs API refuses an upload at its first line that is not a JSON object, and fails a job at the
first example that breaks a data rule. The jobs page shows all of them at once, so a user fixes a
file in one pass: each line goes through the same checks, in the same order, with the same rule
names (`tunesmith.jobs.validation` and the data stage's rules), and each broken line is reported.
The body is read as it arrives, line by line, so memory stays bounded by the longest line.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Optional

from tunesmith.data.rules import RULES, Reject
from tunesmith.jobs.validation import example_row
from tunesmith.ui.workspace import WorkspaceError

MAX_PROBLEMS = 200  # a file broken on every line says so after this many
MAX_LINE_BYTES = 8 * 1024 * 1024
METHODS = ("supervised", "dpo")
# Rules that make the upload itself fail (OpenAI checks these on arrival); the others fail the job.
UPLOAD_RULES = frozenset({"file_format", "invalid_json", "non_utf8", "not_an_object"})


def _problem(line: Optional[int], rule: str, detail: str) -> dict[str, Any]:
    fix = RULES[rule].fix if rule in RULES else ""
    return {"line": line, "rule": rule, "detail": detail, "fix": fix,
            "stage": "upload" if rule in UPLOAD_RULES else "job"}


def check_line(raw: bytes, method: str) -> Optional[tuple[str, str]]:
    """(rule, detail) of the first rule one line breaks, or None when it is a good example. The
    order is the jobs API's: UTF-8, JSON, an object (upload), then the example's format and the
    data stage's validation (job)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "non_utf8", f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return "invalid_json", f"{exc.msg} at column {exc.colno}"
    except RecursionError:
        return "too_deep", "the line nests JSON more than the parser allows"
    if not isinstance(obj, dict):
        return "not_an_object", f"expected a JSON object, got a {type(obj).__name__}"
    try:
        example_row(obj, method)
    except Reject as exc:
        return exc.rule, exc.message + (f" ({exc.field})" if exc.field else "")
    return None


async def check_stream(chunks: AsyncIterator[bytes], filename: str, method: str) -> dict[str, Any]:
    """Check a file arriving in chunks: {lines, examples, problems: [{line, rule, detail, fix, stage}],
    truncated}."""
    if method not in METHODS:
        raise WorkspaceError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    problems: list[dict[str, Any]] = []
    if not filename.lower().endswith(".jsonl"):
        problems.append(_problem(None, "file_format", f"{filename!r} is not a .jsonl file"))
    lines = examples = 0
    truncated = False
    pending = b""

    def take(raw: bytes) -> None:
        nonlocal lines, examples, truncated
        lines += 1
        if not raw.strip():
            return
        found = check_line(raw, method)
        if found is None:
            examples += 1
        elif len(problems) < MAX_PROBLEMS:
            problems.append(_problem(lines, *found))
        else:
            truncated = True

    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            take(raw)
        if len(pending) > MAX_LINE_BYTES:
            raise WorkspaceError(f"line {lines + 1} is longer than {MAX_LINE_BYTES} bytes", status=413)
    if pending:
        take(pending)
    return {"filename": filename, "method": method, "lines": lines, "examples": examples, "problems": problems,
            "truncated": truncated}
