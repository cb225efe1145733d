"""The checks `data prepare` and `data inspect` share, as one pass over the input files.

For each record, in order: read it, normalise its format, validate it, clean personal data,
drop duplicates, measure (and maybe truncate) it. `Checks.run` yields one outcome per record,
kept or rejected, and keeps the counts of every step. Only the duplicate index and a few bytes
per kept example (length, source line, group and stratum for the split) grow with the input.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterator

from tunesmith.data import formats, pii
from tunesmith.data.config import DataChecksConfig
from tunesmith.data.dedup import Deduplicator
from tunesmith.data.bounded import line_limit
from tunesmith.data.readers import Record, container_of, iter_records, require_file
from tunesmith.data.rules import RULES, STEPS, Finding, Reject
from tunesmith.data.schema import kind_of
from tunesmith.data.validate import char_count, validate

# Findings remembered per rule for reports; the rest are only counted.
EXAMPLES_PER_RULE = 5
# Records between two progress callbacks.
PROGRESS_EVERY = 1000
MISSING_STRATUM = "(missing)"


@dataclass
class InputSummary:
    path: str
    container: str
    format: str = ""
    records: int = 0
    kept: int = 0
    rejected: int = 0
    nul_bytes_stripped: int = 0
    ignored_fields: Counter[str] = field(default_factory=Counter)


@dataclass
class Kept:
    example_id: int
    row: dict[str, Any]
    record: Record


@dataclass
class Rejected:
    finding: Finding
    record: Record
    shown: Any = None  # what rejected.jsonl shows of the record (PII already redacted for rule pii)


@dataclass
class Stats:
    """Counts of every step, and the small per-example arrays the split and report need."""

    inputs: list[InputSummary] = field(default_factory=list)
    read: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Finding]] = field(default_factory=dict)
    pii: Counter[str] = field(default_factory=Counter)
    examples_with_pii: int = 0
    truncated: int = 0
    kind: str | None = None
    length_unit: str = "characters"
    lengths: array = field(default_factory=lambda: array("I"))
    groups: array = field(default_factory=lambda: array("q"))
    strata: array = field(default_factory=lambda: array("I"))
    stratum_names: list[str] = field(default_factory=list)
    sources: array = field(default_factory=lambda: array("H"))
    lines: array = field(default_factory=lambda: array("Q"))
    dedup_bytes: int = 0

    @property
    def kept(self) -> int:
        return len(self.lengths)

    def funnel(self) -> list[tuple[str, int]]:
        """Examples left after each step: [("read", n), ("format", n), ...]."""
        left, out = self.read, [("records", self.read)]
        for step in STEPS:
            left -= sum(n for rule, n in self.rejected.items() if RULES[rule].step == step)
            out.append((step, left))
        return out

    def where(self, example_id: int) -> str:
        return f"{self.inputs[self.sources[example_id]].path}:{self.lines[example_id]}"


class Checks:
    """One configured pass of the data checks over `cfg.inputs`."""

    def __init__(self, cfg: DataChecksConfig, *, stratify_by: str | None = None, tokenizer: Any = None,
                 progress: Callable[[int], None] | None = None):
        self.cfg = cfg
        self.progress = progress
        self.stratify_by = stratify_by
        self.stats = Stats()
        dedup = cfg.dedup
        self.dedup = Deduplicator(near=dedup.near, threshold=dedup.threshold, num_perm=dedup.num_perm,
                                  shingle_words=dedup.shingle_words)
        self.length = None
        if tokenizer is not None:
            from tunesmith.data.length import LengthChecker

            self.length = LengthChecker(tokenizer, max_seq_len=cfg.max_seq_len, truncate=cfg.overlong == "truncate")
            self.stats.length_unit = "tokens"
        self._strata: dict[str, int] = {}

    def run(self) -> Iterator[Kept | Rejected]:
        for path in self.cfg.inputs:
            require_file(Path(path))
        for index, path in enumerate(self.cfg.inputs):
            container, _ = container_of(Path(path))
            summary = InputSummary(str(path), container)
            self.stats.inputs.append(summary)
            yield from self._file(index, Path(path), summary)
        self.stats.dedup_bytes = self.dedup.nbytes

    def _file(self, index: int, path: Path, summary: InputSummary) -> Iterator[Kept | Rejected]:
        records = iter_records(path, text_split=self.cfg.text_split, max_line_bytes=line_limit(self.cfg.max_chars))
        if summary.container == "txt":
            fmt = "text"
        elif self.cfg.format != "auto":
            fmt = self.cfg.format
        else:
            head = list(islice(records, formats.DETECT_ROWS))
            if not head:
                summary.format = "(empty file)"
                return
            fmt = formats.detect([formats.apply_map(r.value, self.cfg.map) for r in head if r.rule is None], str(path))
            records = chain(head, records)
        summary.format = fmt
        for record in records:
            summary.records += 1
            summary.nul_bytes_stripped += record.nul_bytes
            self.stats.read += 1
            if self.progress is not None and self.stats.read % PROGRESS_EVERY == 0:
                self.progress(self.stats.read)
            outcome = self._one(record, fmt, index, summary)
            if isinstance(outcome, Kept):
                summary.kept += 1
            else:
                summary.rejected += 1
                self._count(outcome.finding)
            yield outcome

    def _count(self, finding: Finding) -> None:
        self.stats.rejected[finding.rule] += 1
        kept = self.stats.examples.setdefault(finding.rule, [])
        if len(kept) < EXAMPLES_PER_RULE:
            kept.append(finding)

    def _reject(self, record: Record, exc: Reject, shown: Any = None) -> Rejected:
        finding = Finding(exc.rule, exc.message, record.source, record.line, exc.field)
        return Rejected(finding, record, record.value if shown is None else shown)

    def _one(self, record: Record, fmt: str, index: int, summary: InputSummary) -> Kept | Rejected:
        if record.rule is not None:
            return Rejected(Finding(record.rule, record.message, record.source, record.line), record)
        value = formats.apply_map(record.value, self.cfg.map)
        try:
            row, ignored = formats.normalise(value, fmt)  # type: ignore[arg-type]
            validate(row, max_chars=self.cfg.max_chars)
            kind = kind_of(row)
            if self.stats.kind is None:
                self.stats.kind = kind
            elif kind != self.stats.kind:
                raise Reject("mixed_kind", f"a {kind} example in a {self.stats.kind} dataset")
        except Reject as exc:
            return self._reject(record, exc)
        if self.cfg.pii != "off":
            redacted, found = pii.redact_row(row)
            if found:
                if self.cfg.pii == "drop":
                    kinds = ", ".join(f"{n} {k}" for k, n in sorted(found.items()))
                    return self._reject(record, Reject("pii", f"contains {kinds}"),
                                        shown=pii.redact_value(value, Counter()))
                self.stats.pii.update(found)
                self.stats.examples_with_pii += 1
                row = redacted
        match, keys = self.dedup.find(row)
        if match is not None and not self.cfg.dedup.keep:
            rule, earlier = match
            return self._reject(record, Reject(rule, f"repeats {self.stats.where(earlier)}"))
        truncated = False
        if self.length is not None:
            try:
                row, length, truncated = self.length.fit(row)
            except Reject as exc:
                return self._reject(record, exc)
        else:
            length = char_count(row)
        summary.ignored_fields.update(ignored)
        example_id = self.stats.kept
        self.dedup.remember(keys, example_id)
        self._keep(example_id, record, value, index, length, truncated, match[1] if match else None)
        row["meta"] = {"source": record.source, "line": record.line}
        return Kept(example_id, row, record)

    def _keep(self, example_id: int, record: Record, value: Any, index: int, length: int,
              truncated: bool, earlier: int | None) -> None:
        stats = self.stats
        stats.truncated += truncated
        stats.lengths.append(length)
        stats.sources.append(index)
        stats.lines.append(record.line)
        # A kept copy joins the group of the example it repeats, so both land in one split.
        stats.groups.append(stats.groups[earlier] if earlier is not None else example_id)
        stratum = MISSING_STRATUM
        if self.stratify_by is not None and isinstance(value, dict) and value.get(self.stratify_by) is not None:
            found = value[self.stratify_by]
            stratum = found if isinstance(found, str) else json.dumps(found, sort_keys=True)
        if stratum not in self._strata:
            self._strata[stratum] = len(stats.stratum_names)
            stats.stratum_names.append(stratum)
        stats.strata.append(self._strata[stratum])
