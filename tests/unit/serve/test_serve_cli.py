"""`tunesmith serve` on the command line: flags fill the config, bad input exits 2 cleanly."""

from __future__ import annotations

import socket

import pytest
import yaml

from cli_helpers import run_cli


def test_flags_fill_the_config_and_the_key_is_masked(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "serve", "--print-config", "--adapter", "support=runs/a", "--adapter",
                           str(tmp_path / "billing-run"), "--api-key", "s3cret", "--quantization", "4bit",
                           "--max-batch-size", "4", "--port", "0")
    cfg = yaml.safe_load(out)
    assert code == 0 and "s3cret" not in out
    assert cfg["adapters"] == {"support": "runs/a", "billing-run": str(tmp_path / "billing-run")}
    assert cfg["model"]["quantization"] == "4bit" and cfg["max_batch_size"] == 4 and cfg["host"] == "127.0.0.1"


@pytest.mark.parametrize("args, fragment", [
    (["--adapter", "bad name=runs/a"], "adapter name 'bad name'"),
    (["--adapter", "a=x", "--adapter", "a=y"], "two adapters are named 'a'"),
    (["--quantization", "3bit"], "quantization"),
    (["--max-batch-size", "0"], "max_batch_size"),
    (["--model", "/nonexistent/model-dir", "--port", "0"], "model directory not found"),
])
def test_bad_input_exits_2_without_a_traceback(capsys, args, fragment):
    code, _, err = run_cli(capsys, "serve", *args)
    assert code == 2 and fragment in err and "Traceback" not in err


def test_a_taken_port_is_a_clean_error(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code, _, err = run_cli(capsys, "serve", "--port", str(taken.getsockname()[1]))
    assert code == 2 and "cannot listen on 127.0.0.1" in err
