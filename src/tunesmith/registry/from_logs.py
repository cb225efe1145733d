"""`tunesmith data from-logs`: rated production exchanges -> a prepared training set.

An exchange becomes an example when its latest feedback is a thumbs-up (the answer as given) or
carries a correction (the corrected answer replaces it); thumbs-down without a correction and
unrated exchanges are left out. Examples that repeat the previous training data (the same text
after the data stage's dedup normalisation) are dropped, and the rest go through `data prepare`
itself: the same validation, PII redaction, dedup and split as any other dataset.
"""

from __future__ import annotations

import datetime
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import Field

from tunesmith.config import Flag, StrictModel
from tunesmith.errors import ConfigError

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([dhm])")


def parse_since(text: str, now: Optional[float] = None) -> float:
    """`7d`, `12h`, `30m`, an ISO date or time (UTC unless it says otherwise) -> epoch seconds."""
    match = _RELATIVE.fullmatch(text.strip())
    if match:
        seconds = float(match.group(1)) * {"d": 86400, "h": 3600, "m": 60}[match.group(2)]
        return (now or time.time()) - seconds
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--since {text!r} is neither a duration nor a date",
                          hint="examples: --since 7d, --since 2026-11-01, --since 2026-11-01T12:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


class FromLogsConfig(StrictModel):
    """`tunesmith data from-logs`: approved and corrected production exchanges as a training set."""

    log: Annotated[Path, Flag("--log")] = Field(
        Path("tunesmith-request-log.sqlite3"), description="request log database of `tunesmith serve` (request_log.path)")
    model: Annotated[str, Flag("--model")] = Field(..., description="model name: tickets matches every tickets@N")
    since: Annotated[str, Flag("--since")] = Field("30d", description="exchanges since: 7d, 12h or a date")
    out: Annotated[Path, Flag("--out", "-o")] = Field(..., description="output directory (a `data prepare` dataset)")
    previous: Annotated[list[Path], Flag("--previous", repeat=True)] = Field(
        default_factory=list, description="earlier training files; examples they already hold are dropped")
    seed: Annotated[int, Flag("--seed")] = 0
    overwrite: Annotated[bool, Flag()] = False


@dataclass
class FromLogsResult:
    out: Path
    counts: dict[str, int]
    prepare_summary: str

    def summary(self) -> str:
        c = self.counts
        return (f"{c['exchanges']} logged exchanges: {c['approved']} approved, {c['corrected']} corrected, "
                f"{c['previous']} already in earlier training data\n{self.prepare_summary}")


def _example(row: dict[str, Any]) -> Optional[dict[str, Any]]:
    if row["correction"]:
        answer = row["correction"]
    elif row["rating"] == "up":
        answer = row["answer"]
    else:
        return None
    messages = [m for m in row["messages"] if isinstance(m, dict)]
    return {"messages": [*messages, {"role": "assistant", "content": answer}]}


def _key(example: dict[str, Any]) -> str:
    from tunesmith.data.dedup import dedup_text

    return " ".join(dedup_text(example).lower().split())


def _previous_keys(paths: list[Path]) -> set[str]:
    keys = set()
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    keys.add(_key(json.loads(line)))
    return keys


def run(cfg: FromLogsConfig) -> FromLogsResult:
    from tunesmith.data.config import DataPrepareConfig
    from tunesmith.data.prepare import run as prepare
    from tunesmith.registry.feedback import RequestLog, RequestLogConfig

    if not cfg.log.is_file():
        raise ConfigError(f"request log {cfg.log} does not exist",
                          hint="serve with a `request_log:` section, or point --log at its path")
    request_log = RequestLog(RequestLogConfig(path=cfg.log))
    try:
        rows = request_log.exchanges(cfg.model, parse_since(cfg.since))
    finally:
        request_log.close()
    previous = _previous_keys(cfg.previous)
    counts = {"exchanges": len(rows), "approved": 0, "corrected": 0, "previous": 0}
    examples = []
    for row in rows:
        example = _example(row)
        if example is None:
            continue
        if _key(example) in previous:
            counts["previous"] += 1
            continue
        counts["corrected" if row["correction"] else "approved"] += 1
        examples.append(example)
    if not examples:
        raise ConfigError(f"no approved or corrected exchanges of {cfg.model} since {cfg.since} in {cfg.log}",
                          hint="collect thumbs-up or corrections through POST /v1/feedback first")
    with tempfile.TemporaryDirectory(prefix="tunesmith-from-logs-") as tmp:
        raw = Path(tmp) / "from-logs.jsonl"
        raw.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
        result = prepare(DataPrepareConfig(inputs=[raw], out=cfg.out, seed=cfg.seed, overwrite=cfg.overwrite))
    return FromLogsResult(cfg.out, counts, result.summary())
