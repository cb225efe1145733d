"""The real `tunesmith` entry point run in-process, as a user's shell would run it."""

from __future__ import annotations

import pytest

from tunesmith.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `tunesmith ARGV...`; return the exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err
