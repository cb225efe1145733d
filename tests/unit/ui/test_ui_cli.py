"""`tunesmith ui` on the command line: config resolution and errors for people."""

from __future__ import annotations

import socket

import yaml
from typer.testing import CliRunner

from tunesmith import cli


def test_print_config_shows_the_resolved_defaults(tmp_path):
    result = CliRunner().invoke(cli.app, ["ui", "--workspace", str(tmp_path), "--server", "http://127.0.0.1:8000/v1",
                                          "--print-config"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.output)
    assert cfg["host"] == "127.0.0.1" and cfg["server"] == "http://127.0.0.1:8000" and cfg["port"] == 8100


def test_bad_server_url_and_taken_port_are_user_errors(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as bad_url:
        cli.main(["ui", "--workspace", str(tmp_path), "--server", "127.0.0.1:8000"])
    assert bad_url.value.code == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(SystemExit) as busy:
            cli.main(["ui", "--workspace", str(tmp_path), "--port", str(taken.getsockname()[1])])
    assert busy.value.code == 2
    with pytest.raises(SystemExit) as missing:
        cli.main(["ui", "--workspace", str(tmp_path / "nope")])
    assert missing.value.code == 2
    err = capsys.readouterr().err
    assert "http://" in err and "cannot listen" in err and "not a directory" in err and "Traceback" not in err
