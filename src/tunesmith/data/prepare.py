"""`tunesmith data prepare`: example files in, a clean, validated, split dataset out.

Two passes. The first streams every input through the checks (`pipeline.Checks`), writing kept
examples to a spool file and rejected ones to `rejected.jsonl`; the second deals the spooled
examples out to train/val/test once the split is known. Everything is written to a staging
directory first and moved into `--out` only when the run succeeds, so `--strict` (or any error)
leaves nothing behind. Same inputs, settings and seed give byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.data import report, split
from tunesmith.data.config import DataPrepareConfig
from tunesmith.data.bounded import RAW_EXCERPT_CHARS, excerpt
from tunesmith.data.pipeline import Checks, Kept, Rejected, Stats
from tunesmith.data.readers import require_file
from tunesmith.data.rules import RULES
from tunesmith.data.schema import dumps_row
from tunesmith.errors import ConfigError, DataError
from tunesmith.manifest import sha256_file, write_stage_record

OUTPUT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "rejected.jsonl")
# How many findings a --strict failure lists before "and N more".
STRICT_SHOWN = 20


@dataclass
class PrepareResult:
    """Where the prepared dataset went and its manifest (counts, settings, lengths, outputs)."""

    out: Path
    manifest: dict[str, Any]

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]

    def summary(self) -> str:
        counts = self.counts
        splits = counts["splits"]
        lines = [f"kept {counts['kept']:,} of {counts['read']:,} examples: train {splits['train']:,}, "
                 f"val {splits['val']:,}, test {splits['test']:,}"]
        lines += [f"  rejected {n:>6,}  {rule}" for rule, n in counts["rejected"].items()]
        if counts["pii"]:
            lines.append("  redacted " + ", ".join(f"{kind} {n}" for kind, n in counts["pii"].items()))
        if counts["truncated"]:
            lines.append(f"  truncated {counts['truncated']:,} to --max-seq-len")
        lines.append(f"wrote {self.out}/ (report.md, manifest.json, rejected.jsonl)")
        return "\n".join(lines)


def check_inputs(cfg: DataPrepareConfig) -> None:
    if not cfg.inputs:
        raise ConfigError("no input files", hint="tunesmith data prepare FILE... --out DIR")
    if cfg.out is None:
        raise ConfigError("no output directory", hint="pass --out DIR")
    for path in cfg.inputs:
        require_file(Path(path))
        if Path(cfg.out).resolve() in Path(path).resolve().parents:
            raise ConfigError(f"the output directory {cfg.out} holds the input {path}",
                              hint="write the prepared dataset to another directory")
    check_out(Path(cfg.out), overwrite=cfg.overwrite)


def _written_by_prepare(out: Path, entries: list[Path]) -> bool:
    ours = {*OUTPUT_FILES, "manifest.json", "report.md", "config.yaml", report.HISTOGRAM}
    if not all(entry.name in ours for entry in entries):
        return False
    try:
        return json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("stage") == "data prepare"
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an --out that cannot take the dataset, before any work: a file, a directory that
    cannot be written, or one holding files data prepare did not write (unless `overwrite`)."""
    existing = out
    while not existing.exists():
        if existing.is_symlink() or existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "" if existing == out else f" (under {existing})"
        raise ConfigError(f"--out {out}: {existing} is a file, not a directory{where}",
                          hint="pass a directory for the prepared dataset")
    if existing == out:
        entries = sorted(out.iterdir())
        if entries and not overwrite and not _written_by_prepare(out, entries):
            shown = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ConfigError(f"--out {out} is not empty ({shown}) and was not written by data prepare",
                              hint="pick a new directory, or pass --overwrite to write the dataset's files into it")
    try:  # os.access says yes to root even on read-only mounts, so try for real
        fd, probe = tempfile.mkstemp(prefix=".tunesmith-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write to {existing}: {exc.strerror or exc}",
                          hint="pick a directory you can write to") from None


def rejected_line(outcome: Rejected) -> str:
    finding, record = outcome.finding, outcome.record
    row: dict[str, Any] = {"rule": finding.rule, "message": finding.message, "source": finding.source,
                           "line": finding.line}
    if finding.field:
        row["field"] = finding.field
    if outcome.shown is not None:
        shown = json.dumps(outcome.shown, ensure_ascii=False)
        if len(shown) <= RAW_EXCERPT_CHARS:
            row["record"] = outcome.shown
        else:  # a huge example: the report needs where and why, not all of it again
            row["raw"], row["raw_truncated"] = excerpt(shown), True
    else:
        row["raw"] = record.raw
        if record.raw is not None and (len(record.raw) > RAW_EXCERPT_CHARS or finding.rule == "too_long"):
            row["raw"], row["raw_truncated"] = excerpt(record.raw), True
    return json.dumps(row, ensure_ascii=False)


def _strict_failure(stats: Stats, rejected_path: Path) -> DataError:
    lines = []
    with open(rejected_path, encoding="utf-8") as fh:
        for text in fh:
            row = json.loads(text)
            field = f" ({row['field']})" if row.get("field") else ""
            lines.append(f"  {row['source']}:{row['line']}: {row['rule']}{field}: {row['message']}")
            if len(lines) == STRICT_SHOWN:
                break
    total = sum(stats.rejected.values())
    more = f"\n  ... and {total - len(lines)} more" if total > len(lines) else ""
    by_rule = ", ".join(f"{rule} {n}" for rule, n in stats.rejected.most_common())
    return DataError(
        f"--strict: {total} of {stats.read} examples are invalid ({by_rule}); nothing was written\n"
        + "\n".join(lines) + more,
        hint="fix these examples, or run without --strict to keep the valid ones and write the rest to rejected.jsonl",
    )


def run(cfg: DataPrepareConfig, *, progress: Callable[[int], None] | None = None) -> PrepareResult:
    """Prepare the dataset described by `cfg` and return where it went and what was counted.

    `progress`, if given, is called with the number of records read so far, now and then."""
    check_inputs(cfg)
    tokenizer = None
    if cfg.model is not None:
        from tunesmith.data.length import load_chat_tokenizer

        tokenizer = load_chat_tokenizer(cfg.model)
    checks = Checks(cfg, stratify_by=cfg.split.stratify_by, tokenizer=tokenizer, progress=progress)
    stats = checks.stats
    out = Path(cfg.out)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="tunesmith-prepare-") as tmp:
        staging = Path(tmp)
        spool_path = staging / "kept.spool.jsonl"
        with open(spool_path, "w", encoding="utf-8", newline="\n") as spool, \
                open(staging / "rejected.jsonl", "w", encoding="utf-8", newline="\n") as rejected:
            for outcome in checks.run():
                if isinstance(outcome, Kept):
                    spool.write(dumps_row(outcome.row) + "\n")
                else:
                    rejected.write(rejected_line(outcome) + "\n")
        if cfg.strict and stats.rejected:
            raise _strict_failure(stats, staging / "rejected.jsonl")

        assignment = split.assign(stats.groups, stats.strata, val=cfg.split.val, test=cfg.split.test, seed=cfg.seed)
        rows = {name: 0 for name in split.SPLITS}
        handles = {name: open(staging / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") for name in split.SPLITS}
        try:
            with open(spool_path, encoding="utf-8") as spool:
                for example_id, line in enumerate(spool):
                    name = split.SPLITS[assignment[example_id]]
                    handles[name].write(line)
                    rows[name] += 1
        finally:
            for handle in handles.values():
                handle.close()
        spool_path.unlink()

        limit = cfg.max_seq_len if tokenizer is not None else None
        report.write_histogram(stats.lengths, stats.length_unit, staging / report.HISTOGRAM, limit=limit)
        inputs, details = _described_inputs(stats), _details(cfg, stats, rows)
        (staging / "report.md").write_text(report.render(inputs, details, stats.examples), encoding="utf-8")
        # No creation time or git revision: the same inputs, settings and seed give the same bytes.
        manifest_path = write_stage_record(
            staging, "data prepare", cfg, inputs={"examples": inputs}, seed=cfg.seed, extra=details, timestamp=False,
            outputs=[staging / name for name in (*OUTPUT_FILES, report.HISTOGRAM, "report.md")])
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        try:
            out.mkdir(parents=True, exist_ok=True)
            for produced in sorted(staging.iterdir()):
                shutil.move(str(produced), out / produced.name)
        except OSError as exc:  # e.g. the disk filled up while moving the files in
            raise DataError(f"cannot write the prepared dataset to {out}: {exc.strerror or exc}",
                            hint="free some space or pick another --out, then run again") from None
    return PrepareResult(out, manifest)


def _described_inputs(stats: Stats) -> list[dict[str, Any]]:
    inputs = []
    for summary in stats.inputs:
        path = Path(summary.path)
        inputs.append({"path": summary.path, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                       "container": summary.container, "format": summary.format, "records": summary.records,
                       "kept": summary.kept, "rejected": summary.rejected,
                       "nul_bytes_stripped": summary.nul_bytes_stripped,
                       "ignored_fields": dict(sorted(summary.ignored_fields.items()))})
    return inputs


def _details(cfg: DataPrepareConfig, stats: Stats, rows: dict[str, int]) -> dict[str, Any]:
    """What the data manifest holds beyond the stage record: the counts, settings and lengths."""
    rejected = {rule: stats.rejected[rule] for rule in RULES if stats.rejected[rule]}
    counts = {
        "read": stats.read,
        "funnel": stats.funnel(),
        "rejected": rejected,
        "pii": dict(sorted(stats.pii.items())),
        "examples_with_pii": stats.examples_with_pii,
        "truncated": stats.truncated,
        "kept": stats.kept,
        "kind": stats.kind,
        "splits": {name: rows[name] for name in split.SPLITS},
    }
    return {
        "settings": cfg.model_dump(mode="json"),
        "counts": counts,
        "length": {"unit": stats.length_unit, "summary": report.length_summary(stats.lengths)},
        "dedup_index_bytes": stats.dedup_bytes,
    }
