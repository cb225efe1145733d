"""The configs of `tunesmith data demo|prepare|inspect`, with their command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from tunesmith.config import Flag, StrictModel
from tunesmith.errors import ConfigError
from tunesmith.models.config import ModelConfig


def parse_field_map(pairs: list[str]) -> dict[str, str]:
    """--map yours=ours pairs (repeatable) as {yours: ours}."""
    mapping = {}
    for pair in pairs:
        yours, sep, ours = pair.partition("=")
        if not sep or not yours.strip() or not ours.strip():
            raise ConfigError(f"--map {pair!r} is not yours=ours", hint="example: --map question=instruction")
        mapping[yours.strip()] = ours.strip()
    return mapping


def parse_split_shares(text: str) -> dict[str, float]:
    """--split TRAIN,VAL,TEST as the three shares of the split section."""
    try:
        shares = [float(p) for p in text.split(",")]
    except ValueError:
        shares = []
    if len(shares) != 3:
        raise ConfigError(f"--split {text!r} is not three shares TRAIN,VAL,TEST", hint="example: --split 0.8,0.1,0.1")
    return dict(zip(("train", "val", "test"), shares))


class DemoDataConfig(StrictModel):
    """`tunesmith data demo`: the seeded support-ticket triage dataset."""

    out: Annotated[Path, Flag("--out", "-o")] = Field(
        Path("examples/data/tickets"), description="directory to write train/test/dirty files to")
    seed: Annotated[int, Flag()] = Field(7, description="random seed; the same seed gives byte-identical files")
    train_size: Annotated[int, Flag()] = Field(2400, ge=1, le=1_000_000, description="number of training conversations")
    test_size: Annotated[int, Flag()] = Field(300, ge=1, le=1_000_000, description="number of held-out test conversations")
    system_prompt_share: float = Field(0.35, ge=0.0, le=1.0)
    multi_turn_share: float = Field(0.12, ge=0.0, le=1.0)


DataFormat = Literal["auto", "openai", "alpaca", "sharegpt", "prompt_completion", "text", "preference", "kto"]


class DedupSettings(StrictModel):
    """Duplicate removal: exact (same text ignoring case and whitespace) and near (MinHash-LSH)."""

    near: bool = Field(True, description="remove near-duplicates found with MinHash-LSH")
    threshold: Annotated[float, Flag("--dedup-threshold")] = Field(
        0.85, gt=0.0, lt=1.0, description="estimated Jaccard similarity that counts as near-duplicate")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations; more are more exact and slower")
    shingle_words: int = Field(3, ge=1, le=16, description="words per shingle")
    keep: bool = Field(False, description="keep copies (e.g. deliberate upsampling); they still share one split")


class SplitSettings(StrictModel):
    """Shares of the train/val/test split; they must add up to 1."""

    train: float = Field(0.9, gt=0.0, le=1.0)
    val: float = Field(0.05, ge=0.0, lt=1.0)
    test: float = Field(0.05, ge=0.0, lt=1.0)
    stratify_by: Annotated[Optional[str], Flag("--stratify-by")] = Field(
        None, description="input field whose values keep their shares in every split")

    @model_validator(mode="after")
    def _shares_add_up(self) -> "SplitSettings":
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"split shares must add up to 1, got {self.train} + {self.val} + {self.test}")
        return self


class DataChecksConfig(StrictModel):
    """What `data prepare` and `data inspect` share: reading, validation, cleaning, length."""

    inputs: Annotated[list[Path], Flag(argument=True)] = Field(
        default_factory=list, description="example files: .jsonl .json .csv .parquet .txt, each optionally .gz")
    format: Annotated[DataFormat, Flag("--format")] = Field(
        "auto", description="input format; auto detects it per file")
    map: Annotated[dict[str, str], Flag("--map", parse=parse_field_map, repeat=True,
                                        help="rename an input field, yours=ours (repeatable), "
                                             "e.g. --map question=instruction")] = Field(
        default_factory=dict, description="rename input fields: {yours: ours}")
    text_split: Literal["paragraph", "line", "file"] = Field("paragraph", description="documents of a .txt file")
    pii: Annotated[Literal["redact", "drop", "off"], Flag("--pii")] = Field(
        "redact", description="personal data and secrets: redact, drop or off")
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    max_chars: Annotated[int, Flag("--max-chars")] = Field(
        100_000, ge=1, description="examples with more characters are rejected as too_long")
    model: Annotated[Optional[ModelConfig], Flag("--model", key="path")] = Field(
        None, description="count tokens with this model's tokenizer and chat template (a directory, hub id or `default`)")
    max_seq_len: Annotated[int, Flag("--max-seq-len")] = Field(2048, ge=8, description="token limit, used with --model")
    overlong: Annotated[Literal["drop", "truncate"], Flag("--overlong")] = Field(
        "drop", description="examples over --max-seq-len: drop or truncate")


class DataPrepareConfig(DataChecksConfig):
    """`tunesmith data prepare`: a clean, validated, split dataset with a report."""

    out: Annotated[Optional[Path], Flag("--out", "-o")] = Field(None, description="output directory")
    overwrite: Annotated[bool, Flag()] = Field(
        False, description="write into a non-empty output directory that data prepare did not write")
    strict: Annotated[bool, Flag()] = Field(False, description="fail (and write nothing) if any example is rejected")
    seed: Annotated[int, Flag("--seed")] = Field(0, description="split seed; the same seed gives byte-identical files")
    split: Annotated[SplitSettings, Flag("--split", parse=parse_split_shares,
                                         help="train,val,test shares, e.g. 0.8,0.1,0.1")] = Field(
        default_factory=SplitSettings)


class DataInspectConfig(DataChecksConfig):
    """`tunesmith data inspect`: the checks of `data prepare`, reported, with nothing written."""

    line: Annotated[Optional[int], Flag("--line")] = Field(
        None, ge=1, description="line of the example to render (of the first file); default: the first valid one")
