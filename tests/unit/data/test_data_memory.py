"""Peak memory of `data prepare` on hostile files, measured in a child process: a 2 MB .jsonl.gz
that inflates to one 2 GiB line, and a plain file with one 200 MB line. Each stays far below
500 MB (the run imports no model; its baseline is about 150 MB)."""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

PEAK_LIMIT_MB = 300
GOOD = json.dumps({"messages": [{"role": "user", "content": "Where is my order?"},
                                {"role": "assistant", "content": "It ships today."}]})


def _prepare_peak_mb(inputs: list[Path], out: Path) -> tuple[int, float, str]:
    """(exit code, peak RSS in MB, stderr) of `tunesmith data prepare` in a child process."""
    def cap_memory():  # a safety net: a regression fails this test instead of swapping the machine
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")}
    log = out.parent / f"{out.name}.log"
    with open(log, "wb") as sink:
        child = subprocess.Popen([sys.executable, "-m", "tunesmith", "data", "prepare", *map(str, inputs),
                                  "--out", str(out)], stdout=sink, stderr=subprocess.STDOUT, env=env,
                                 preexec_fn=cap_memory)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not all children's
    child.returncode = os.waitstatus_to_exitcode(status)
    peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
    print(f"{[p.name for p in inputs]}: peak RSS {peak_mb:.0f} MB")
    return child.returncode, peak_mb, log.read_text()


@pytest.fixture
def bomb(tmp_path) -> Path:
    """2 MB on disk, one 2 GiB line inflated: 2048 gzip members of 1 MiB each (the format allows
    concatenated members), so writing it takes milliseconds."""
    path = tmp_path / "bomb.jsonl.gz"
    member = gzip.compress(b"a" * (1 << 20), compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress((GOOD + '\n{"text": "').encode()))
        for _ in range(2048):
            fh.write(member)
        fh.write(gzip.compress(b'"}\n' + GOOD.encode() + b"\n"))
    assert path.stat().st_size < 3 << 20
    return path


def test_a_gzip_bomb_stops_early_in_bounded_memory(bomb, tmp_path):
    code, peak_mb, output = _prepare_peak_mb([bomb], tmp_path / "out")
    assert code == 2 and "inflates to more than" in output and "Traceback" not in output
    assert peak_mb < PEAK_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"


def test_a_200_mb_line_is_rejected_in_bounded_memory(tmp_path):
    path = tmp_path / "long.jsonl"
    chunk = "b" * (1 << 20)
    with open(path, "w") as fh:
        fh.write(GOOD + '\n{"text": "')
        for _ in range(200):
            fh.write(chunk)
        fh.write('"}\n' + GOOD.replace("order", "parcel") + "\n")
    out = tmp_path / "out"
    code, peak_mb, output = _prepare_peak_mb([path], out)
    assert code == 0, output
    assert peak_mb < PEAK_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 2 and manifest["counts"]["rejected"] == {"too_long": 1}
    assert (out / "rejected.jsonl").stat().st_size < 16 << 10
