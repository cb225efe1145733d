"""`data prepare` refuses an unusable --out before doing any work (exit 2, a message, no traceback)
and never overwrites a directory it did not write unless told to."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tunesmith.cli import main

TICKETS = Path(__file__).resolve().parents[2] / "examples" / "data" / "tickets"
DIRTY = str(TICKETS / "dirty.jsonl")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


@pytest.fixture
def never_reads(monkeypatch):
    """Fail the test if any input is read: the --out checks must come before the work."""
    from tunesmith.data import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the input was read before --out was checked")

    monkeypatch.setattr(pipeline, "iter_records", refuse)


def test_out_naming_a_file_is_refused_before_any_work(capsys, tmp_path, never_reads):
    target = tmp_path / "dataset.jsonl"
    target.write_text("mine\n")
    code, _, err = run_cli(capsys, "data", "prepare", DIRTY, "--out", str(target))
    assert code == 2 and "is a file, not a directory" in err and "Traceback" not in err
    assert target.read_text() == "mine\n"


def test_out_below_a_file_is_refused(capsys, tmp_path, never_reads):
    (tmp_path / "plain").write_text("x")
    code, _, err = run_cli(capsys, "data", "prepare", DIRTY, "--out", str(tmp_path / "plain" / "out"))
    assert code == 2 and "is a file, not a directory" in err and "Traceback" not in err


def _read_only_dir(tmp_path: Path) -> Path:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    probe = locked / "probe"
    try:
        probe.write_text("x")
    except OSError:
        return locked
    probe.unlink()
    if not os.access("/sys", os.F_OK):
        pytest.skip("no read-only directory to test with")
    return Path("/sys")  # root ignores permission bits; sysfs refuses new files even to root


def test_out_on_a_read_only_directory_is_refused_before_any_work(capsys, tmp_path, never_reads):
    locked = _read_only_dir(tmp_path)
    try:
        code, _, err = run_cli(capsys, "data", "prepare", DIRTY, "--out", str(locked / "prepared"))
    finally:
        if locked != Path("/sys"):
            locked.chmod(0o755)
    assert code == 2 and "cannot write" in err and "Traceback" not in err


def test_a_non_empty_directory_it_did_not_write_is_refused_without_overwrite(capsys, tmp_path, never_reads):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes\n")
    code, _, err = run_cli(capsys, "data", "prepare", DIRTY, "--out", str(out))
    assert code == 2 and "not empty" in err and "--overwrite" in err and "report.md" in err
    assert (out / "report.md").read_text() == "my own notes\n"


def test_overwrite_replaces_it_and_a_previous_run_is_replaced_without_asking(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes\n")
    code, _, _ = run_cli(capsys, "data", "prepare", DIRTY, "--out", str(out), "--overwrite")
    assert code == 0 and (out / "report.md").read_text() != "my own notes\n"
    # A directory written by data prepare itself is replaced by the next run.
    code, _, err = run_cli(capsys, "data", "prepare", DIRTY, "--out", str(out), "--seed", "3")
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
