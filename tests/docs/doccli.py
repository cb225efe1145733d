"""`tunesmith ...` command lines: parsed by the real CLI, their config resolved (so unknown flags,
unknown `--set` keys and bad values fail), and the cheap ones run."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import typer
from typer.testing import CliRunner

from docblocks import REPO
from tunesmith import cli
from tunesmith.models.config import ModelConfig

# Verbs that finish in seconds on the embedded model and demo data: these are run for real when
# their inputs exist in the page's sandbox and they use no model but the embedded one.
RUNNABLE = {("data", "demo"), ("data", "prepare"), ("data", "inspect"), ("merge",), ("export", "gguf"),
            ("export", "ollama"), ("check", "parity")}


class _Resolved(Exception):
    def __init__(self, cfg):
        self.cfg = cfg


@contextlib.contextmanager
def working_dir(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def verb_of(args: list[str]):
    """The subcommand path (`("export", "gguf")`) and its click command; fails on an unknown verb.
    (Typer vendors click, so groups are told apart by their `commands`.)"""
    command = typer.main.get_command(cli.app)
    path: list[str] = []
    while hasattr(command, "commands"):
        name = args[len(path)] if len(path) < len(args) else None
        sub = command.commands.get(name) if name else None
        assert sub is not None, (f"`tunesmith {' '.join(args)}`: {' '.join(['tunesmith', *path])} has no "
                                 f"subcommand {name!r} (it has {sorted(command.commands)})")
        path.append(name)
        command = sub
    return tuple(path), command


def resolve(args: list[str], cwd: Path):
    """Parse `tunesmith ARGS` with the real CLI and return the config it resolves, without
    running the stage (the CLI's `resolve_config` is intercepted)."""
    verb_of(args)
    real = cli.resolve_config

    def capture(cls, config, sets, print_config, **values):
        raise _Resolved(real(cls, config, sets, False, **values))

    with mock.patch.object(cli, "resolve_config", capture), working_dir(cwd):
        result = CliRunner().invoke(cli.app, args)
    if isinstance(result.exception, _Resolved):
        return result.exception.cfg
    problem = result.exception if result.exception and not isinstance(result.exception, SystemExit) else ""
    raise AssertionError(f"`tunesmith {' '.join(args)}` does not parse or its config is invalid:\n"
                         f"{result.output}{problem}")


def _local_model(value) -> bool:
    if isinstance(value, ModelConfig):
        value = value.path
    return value in (None, "default") or Path(value).exists()


def runnable(path: tuple[str, ...], cfg, cwd: Path) -> bool:
    """Cheap, local and with its inputs present: worth running for real."""
    if path not in RUNNABLE:
        return False
    inputs = [*getattr(cfg, "inputs", [])] + [getattr(cfg, k) for k in ("run", "source") if hasattr(cfg, k)]
    with working_dir(cwd):
        present = all(Path(p).exists() for p in inputs)
    models = [getattr(cfg, k) for k in ("model", "base") if hasattr(cfg, k)]
    return present and all(_local_model(m) for m in models)


def run(args: list[str], cwd: Path) -> str:
    with working_dir(cwd):
        result = CliRunner().invoke(cli.app, args)
    if result.exit_code != 0:
        raise AssertionError(f"`tunesmith {' '.join(args)}` failed (exit {result.exit_code}):\n"
                             f"{result.output[-3000:]}\n{result.exception!r}")
    return result.output


def check_examples_paths(args: list[str]) -> None:
    """Files of the repository that a command names (`examples/...`) must exist."""
    for arg in args:
        for value in (arg, arg.partition("=")[2]):
            if value.startswith("examples/"):
                assert (REPO / value).exists(), f"`tunesmith {' '.join(args)}` names {value}, which does not exist"


def check_synopsis(args: list[str]) -> None:
    """A usage line (`tunesmith train CONFIG [--set key=value ...]`): the verb and every option
    exist, and an option that takes a value is not shown with an optional one."""
    verb = list(itertools.takewhile(lambda a: re.fullmatch(r"[a-z][a-z-]*", a), args))
    path, command = verb_of(verb)
    options = {opt: p for p in command.params if p.param_type_name == "option" for opt in [*p.opts, *p.secondary_opts]}
    text = " ".join(args)
    for match in re.finditer(r"(--[\w-]+)(\s+\S+)?", text):
        name, value = match[1], (match[2] or "").strip()
        assert name in options, f"`tunesmith {' '.join(path)}` has no option {name} (it has {sorted(options)})"
        if not options[name].is_flag and value.startswith("["):
            raise AssertionError(f"{name} takes a value, but the synopsis shows it as optional: {match[0]}")


def is_synopsis(args: list[str]) -> bool:
    return any(a.startswith("[") or a.endswith(("]", "...")) for a in args)


def console_outputs(text: str) -> list[tuple[str, list[str]]]:
    """A ```console block as (command, expected output lines) pairs."""
    pairs: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line.rstrip())
        else:
            raise AssertionError(f"a console block must start with a `$ ` command line, not {line!r}")
    return pairs


def run_console(command: str, cwd: Path) -> list[str]:
    """Run a documented `$ tunesmith ...` line as a user would and return its output lines."""
    import shlex

    argv = shlex.split(command)
    assert argv[0] == "tunesmith", f"console blocks may only show tunesmith commands, not {argv[0]}"
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "tunesmith", *argv[1:]], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    return [line.rstrip() for line in done.stdout.strip("\n").splitlines()]
