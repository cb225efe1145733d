"""Peak memory of `data prepare` on hostile files, measured in a child process: a 2 MB .jsonl.gz
that inflates to one 2 GiB line, and a plain file with one 200 MB line. Each stays far below
500 MB (the run imports no model; its baseline is about 150 MB)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PEAK_LIMIT_MB = 300
GOOD = json.dumps({"messages": [{"role": "user", "content": "Where is my order?"},
                                {"role": "assistant", "content": "It ships today."}]})


# Runs the CLI in the child and reports VmHWM (the peak of this program's own memory): ru_maxrss
# would also count the pytest parent's memory, which a forked child carries across exec.
CHILD = """
import atexit, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a regression fails instead of swapping
def report():
    status = open("/proc/self/status").read()
    print("VmHWM_kB", status.split("VmHWM:")[1].split()[0], file=sys.stderr)
atexit.register(report)
from tunesmith.cli import main
main(sys.argv[1:])
"""


def _prepare_peak_mb(inputs: list[Path], out: Path) -> tuple[int, float, str]:
    """(exit code, peak RSS in MB, output) of `tunesmith data prepare` in a child process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    child = subprocess.run([sys.executable, "-c", CHILD, "data", "prepare", *map(str, inputs), "--out", str(out)],
                           capture_output=True, text=True, env=env, timeout=300)
    output = child.stdout + child.stderr
    peak_mb = int(output.split("VmHWM_kB ")[1].split()[0]) / 1024
    print(f"{[p.name for p in inputs]}: peak RSS {peak_mb:.0f} MB")
    return child.returncode, peak_mb, output


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
