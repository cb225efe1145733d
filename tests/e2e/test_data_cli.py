"""`tunesmith data prepare` and `tunesmith data inspect` through the real CLI entry point:
exit codes, messages without tracebacks, and the files a user gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.models import default_model_path

from cli_helpers import run_cli

TICKETS = Path(__file__).resolve().parents[2] / "examples" / "data" / "tickets"
DIRTY = str(TICKETS / "dirty.jsonl")


def test_prepare_writes_the_dataset(capsys, tmp_path):
    out = tmp_path / "prepared"
    code, stdout, _ = run_cli(capsys, "data", "prepare", DIRTY, "--out", str(out), "--split", "0.8,0.1,0.1",
                              "--seed", "5")
    assert code == 0
    assert "kept 18 of 31 examples" in stdout and "invalid_json" in stdout and "redacted" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "train.jsonl", "val.jsonl", "test.jsonl", "rejected.jsonl", "manifest.json", "report.md",
        "length_histogram.png", "config.yaml"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["settings"]["split"]["train"] == 0.8
    assert "seed: 5" in (out / "config.yaml").read_text()


def test_strict_exits_2_with_the_findings_and_writes_nothing(capsys, tmp_path):
    out = tmp_path / "prepared"
    code, _, err = run_cli(capsys, "data", "prepare", DIRTY, "--out", str(out), "--strict")
    assert code == 2
    assert "error:" in err and "nothing was written" in err and f"{DIRTY}:" in err and "non_utf8" in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["data", "prepare", "missing.jsonl", "--out", "x"], "input file not found"),
    (["data", "prepare", DIRTY], "no output directory"),
    (["data", "prepare", DIRTY, "--out", "x", "--map", "question"], "is not yours=ours"),
    (["data", "prepare", DIRTY, "--out", "x", "--split", "0.9,0.1"], "three shares"),
    (["data", "prepare", DIRTY, "--out", "x", "--split", "0.9,0.1,0.1"], "add up to 1"),
    (["data", "prepare", DIRTY, "--out", "x", "--pii", "hide"], "pii"),
    (["data", "prepare", DIRTY, "--out", "x", "--set", "dedup.treshold=0.9"], "did you mean `dedup.threshold`"),
    (["data", "inspect", str(TICKETS)], "input is a directory"),
    (["data", "inspect", "notes.xml"], "cannot tell the file type"),
])
def test_bad_input_exits_2_without_a_traceback(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.xml").write_text("<notes/>", encoding="utf-8")
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_undetectable_format_explains_how_to_map(capsys, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "Where is it?", "answer": "Here."}\n', encoding="utf-8")
    code, _, err = run_cli(capsys, "data", "prepare", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and "cannot detect the format" in err and "--map" in err
    code, stdout, _ = run_cli(capsys, "data", "prepare", str(path), "--out", str(tmp_path / "out"),
                              "--map", "question=prompt", "--map", "answer=completion")
    assert code == 0 and "kept 1 of 1" in stdout


def test_print_config_shows_defaults(capsys):
    code, stdout, _ = run_cli(capsys, "data", "prepare", "--print-config", "--pii", "drop")
    assert code == 0 and "pii: drop" in stdout and "threshold: 0.85" in stdout and "stratify_by: null" in stdout
    code, stdout, _ = run_cli(capsys, "data", "inspect", "--print-config")
    assert code == 0 and "line: null" in stdout


def test_prepare_from_a_config_file(capsys, tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text(f"inputs: [{DIRTY}]\nout: {tmp_path / 'cfg-out'}\npii: drop\n", encoding="utf-8")
    code, stdout, _ = run_cli(capsys, "data", "prepare", "--config", str(config), "--set", "split.stratify_by=topic")
    assert code == 0 and "rejected      5  pii" in stdout
    assert json.loads((tmp_path / "cfg-out" / "manifest.json").read_text())["settings"]["split"]["stratify_by"] == "topic"


def test_inspect_shows_findings_lengths_and_the_trained_tokens(capsys):
    code, stdout, _ = run_cli(capsys, "data", "inspect", DIRTY, "--model", str(default_model_path()), "--line", "3")
    assert code == 0
    assert "Findings by rule" in stdout and "bad_role_order" in stdout and "too_long" in stdout
    assert "tokens" in stdout and "p90" in stdout
    assert "⟦" in stdout and "<|im_start|>assistant" in stdout
    assert "trained tokens" in stdout


def test_inspect_without_a_model_shows_the_messages(capsys):
    code, stdout, _ = run_cli(capsys, "data", "inspect", str(TICKETS / "test.jsonl"))
    assert code == 0 and "300 examples read" in stdout and "format openai" in stdout
    assert "characters" in stdout and "pass --model" in stdout
