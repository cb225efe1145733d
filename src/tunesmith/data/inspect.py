"""`tunesmith data inspect`: the checks of `data prepare`, shown instead of written.

It prints the findings by rule, length statistics, and one example rendered through the chat
template with the tokens the model is trained on marked, so a user sees what the model will
learn before spending GPU hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tunesmith.data.config import DataInspectConfig
from tunesmith.data.pipeline import Checks, Kept, Stats
from tunesmith.data.report import length_summary
from tunesmith.data.rules import RULES
from tunesmith.errors import ConfigError, DataError
from tunesmith.rendering import as_text

# Markers around trained tokens, so they show without colour too (pipes, logs, tests).
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


@dataclass
class InspectResult:
    """The findings of the checks, and the example shown (with its trained tokens, given a model)."""

    stats: Stats
    example: dict[str, Any] | None = None
    segments: list[tuple[str, bool]] = field(default_factory=list)
    trained_tokens: int = 0
    total_tokens: int = 0

    def summary(self) -> str:
        """Findings by rule, lengths and the example, as text (tables drawn as a terminal shows them)."""
        return as_text(lambda console: _print(self, console))


def marked_segments(tokenizer, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) runs: consecutive tokens with the same
    trained flag are decoded together, so multi-byte characters split across tokens stay whole."""
    segments: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(input_ids) + 1):
        if end == len(input_ids) or (labels[end] != -100) != (labels[start] != -100):
            text = tokenizer.decode(input_ids[start:end], skip_special_tokens=False)
            segments.append((text, labels[start] != -100))
            start = end
    return segments


def _render(tokenizer, row: dict[str, Any]) -> tuple[list[tuple[str, bool]], int, int]:
    from tunesmith.data.length import tokenize_row

    if "text" in row:
        ids = tokenizer(row["text"])["input_ids"]
        return [(tokenizer.decode(ids, skip_special_tokens=False), True)], len(ids), len(ids)
    messages = row.get("messages") or row["prompt"] + row["chosen"]
    tokenized = tokenize_row(tokenizer, messages, row.get("tools"))
    segments = marked_segments(tokenizer, tokenized.input_ids, tokenized.labels)
    return segments, tokenized.num_trained_tokens, len(tokenized.input_ids)


def run(cfg: DataInspectConfig, *, progress: Callable[[int], None] | None = None) -> InspectResult:
    """Run the checks over `cfg.inputs` and pick the example to show."""
    if not cfg.inputs:
        raise ConfigError("no input files", hint="tunesmith data inspect FILE... [--model M]")
    tokenizer = None
    if cfg.model is not None:
        from tunesmith.data.length import load_chat_tokenizer

        tokenizer = load_chat_tokenizer(cfg.model)
    checks = Checks(cfg, tokenizer=tokenizer, progress=progress)
    result = InspectResult(checks.stats)
    for outcome in checks.run():
        if result.example is None and isinstance(outcome, Kept):
            if cfg.line is None or (outcome.record.line == cfg.line and outcome.record.source == str(cfg.inputs[0])):
                result.example = outcome.row
    if cfg.line is not None and result.example is None:
        raise DataError(f"line {cfg.line} of {cfg.inputs[0]} is not a kept example",
                        where=f"{cfg.inputs[0]}:{cfg.line}",
                        hint="the findings table says why it was rejected; pick another --line")
    if result.example is not None and tokenizer is not None:
        result.segments, result.trained_tokens, result.total_tokens = _render(tokenizer, result.example)
    return result


def _print(result: InspectResult, console: Console) -> None:
    stats = result.stats
    console.print(f"[bold]{stats.read:,}[/] examples read from {len(stats.inputs)} file(s): "
                  f"[green]{stats.kept:,} pass[/], [red]{sum(stats.rejected.values()):,} would be rejected[/]")
    for summary in stats.inputs:
        console.print(f"  {summary.path}: format [bold]{summary.format}[/], {summary.records:,} records")
    if stats.rejected:
        table = Table(title="Findings by rule", title_justify="left")
        for column in ("rule", "count", "first at", "what to do"):
            table.add_column(column)
        for rule in RULES:
            if stats.rejected[rule]:
                first = ", ".join(f.where for f in stats.examples[rule][:3])
                table.add_row(rule, str(stats.rejected[rule]), first, RULES[rule].fix)
        console.print(table)
        for rule in RULES:
            for finding in stats.examples.get(rule, [])[:2]:
                console.print(Text(finding.render()), soft_wrap=True)
    else:
        console.print("no findings: every example passes")
    if stats.pii:
        found = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.pii.items()))
        console.print(f"personal data in {stats.examples_with_pii} example(s), redacted by prepare: {found}")
    if stats.truncated:
        console.print(f"{stats.truncated} example(s) would be truncated to max_seq_len")
    summary = length_summary(stats.lengths)
    if summary.get("count"):
        table = Table(title=f"Length of the examples that pass ({stats.length_unit})", title_justify="left")
        for key in ("min", "mean", "p50", "p90", "p99", "max"):
            table.add_column(key, justify="right")
        table.add_row(*(str(summary[k]) for k in ("min", "mean", "p50", "p90", "p99", "max")))
        console.print(table)
    if result.example is None:
        return
    meta = result.example.get("meta", {})
    console.rule(f"example {meta.get('source')}:{meta.get('line')}")
    if not result.segments:
        for message in result.example.get("messages", []):
            console.print(Text.assemble((f"{message['role']}: ", "bold"), message["content"]), soft_wrap=True)
        console.print("pass --model to see the example through the chat template with the trained tokens marked")
        return
    text = Text()
    for segment, trained in result.segments:
        if trained:
            text.append(TRAINED_OPEN + segment + TRAINED_CLOSE, style="bold green")
        else:
            text.append(segment, style="dim")
    console.print(text, soft_wrap=True)
    console.print(f"trained tokens {TRAINED_OPEN}...{TRAINED_CLOSE}: {result.trained_tokens} of "
                  f"{result.total_tokens}")
