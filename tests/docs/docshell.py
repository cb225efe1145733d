"""Shell blocks: split them into commands and check each with the checker for its program."""

from __future__ import annotations

import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from docblocks import REPO

# Programs the docs may show that are neither tunesmith nor checked more closely: the harness
# checks that the files they are pointed to exist once the page's tunesmith commands have run.
EXTERNAL_TOOLS = {"llama-cli", "llama-server", "ollama", "vllm"}
FILE_SUFFIXES = (".gguf", ".jinja", ".yaml", ".yml", ".json", ".jsonl")


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str]
    line: int                                           # line within the block, 1-based
    comments: list[str] = field(default_factory=list)   # `# ...` lines right after the command


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines joined across `\\` continuations and across newlines inside quotes."""
    out, buffer, start = [], "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not buffer:
            start = number
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        buffer += line
        try:
            shlex.split(buffer, comments=True)
        except ValueError:   # an open quote: the command goes on
            buffer += "\n"
            continue
        out.append((start, buffer))
        buffer = ""
    assert not buffer.strip(), f"unfinished command: {buffer!r}"
    return out


def _expand(token: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], m[0]), token)


def _split(line: str) -> list[list[str]]:
    """Commands of one line: `a && b`, `a; b`, `a | b` (the operators written apart)."""
    commands: list[list[str]] = [[]]
    for token in shlex.split(line, comments=True):
        if token in (";", "&&", "||", "|"):
            commands.append([])
        else:
            commands[-1].append(token.rstrip(";") if token.endswith(";") and len(token) > 1 else token)
    return [c for c in commands if c]


def parse_commands(text: str, env: dict[str, str]) -> list[Command]:
    """The block's commands, `VAR=value` prefixes taken off, `$VAR`s expanded from `env`."""
    commands: list[Command] = []
    for number, line in _logical_lines(text):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if commands:
                commands[-1].comments.append(stripped[1:].strip())
            continue
        for tokens in _split(line):
            local = dict(env)
            while tokens and re.fullmatch(r"\w+=.*", tokens[0]):
                name, _, value = tokens.pop(0).partition("=")
                local[name] = value
            if tokens:
                commands.append(Command([_expand(t, local) for t in tokens], local, number))
    return commands


# --------------------------------------------------------------------------- simple programs


def check_make(argv: list[str]) -> None:
    targets = set(re.findall(r"^([\w.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M))
    for target in (a for a in argv[1:] if not a.startswith("-")):
        assert target in targets, f"`make {target}`: the Makefile has no target {target!r} (has {sorted(targets)})"


def check_pip(argv: list[str]) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = set(project.get("optional-dependencies", {}))
    assert argv[1:2] == ["install"], f"unexpected pip command {argv}"
    for arg in (a for a in argv[2:] if not a.startswith("-")):
        name, _, rest = arg.partition("[")
        assert name in (".", project["name"]), f"`pip install {arg}`: expected `.` or {project['name']!r}"
        wanted = {e.strip() for e in rest.rstrip("]").split(",") if e.strip()}
        assert wanted <= extras, (f"`pip install {arg}`: unknown extra(s) {sorted(wanted - extras)}; "
                                  f"pyproject has {sorted(extras)}")


def check_external(argv: list[str], cwd: Path) -> None:
    """A tool the harness cannot run: the files and directories it is given must exist."""
    for i, arg in enumerate(argv[1:], start=1):
        value = arg.partition("=")[2] if re.fullmatch(r"[\w.-]+=\S+", arg) else arg
        is_file = value.endswith(FILE_SUFFIXES) or (argv[i - 1] == "-f")
        is_run = re.match(r"runs/[\w.-]+/adapter$", value)
        if is_file or is_run:
            assert (cwd / value).exists(), (
                f"`{argv[0]}` is pointed to {value}, which the page's commands do not create "
                f"(in {cwd.name}/: {sorted(p.name for p in cwd.iterdir())})")


def python_argv(argv: list[str]) -> list[str]:
    """`python -m tunesmith ...` as the argv of the tunesmith command."""
    assert argv[1:3] == ["-m", "tunesmith"], f"only `python -m tunesmith ...` is checked, not {argv}"
    return ["tunesmith", *argv[3:]]


def launched_command(argv: list[str]) -> list[str]:
    """The tunesmith command a `torchrun` / `accelerate launch` line starts, after checking that
    the launcher's own options parse."""
    if argv[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        args = _parse(get_args_parser(), argv[1:], argv)
    else:
        from accelerate.commands.launch import launch_command_parser

        assert argv[1] == "launch", f"only `accelerate launch` is checked, not {argv}"
        args = _parse(launch_command_parser(), argv[2:], argv)
        config_file = getattr(args, "config_file", None)
        if config_file:
            from accelerate.commands.config.config_args import ClusterConfig

            ClusterConfig.from_yaml_file(REPO / config_file)
    assert args.module and args.training_script == "tunesmith", f"`{' '.join(argv)}` does not start `-m tunesmith`"
    return ["tunesmith", *args.training_script_args]


def _parse(parser, args: list[str], argv: list[str]):
    try:
        return parser.parse_args(args)
    except SystemExit:
        raise AssertionError(f"`{' '.join(argv)}`: {argv[0]} does not accept these options") from None


def tool_of(argv: list[str]) -> str:
    name = os.path.basename(argv[0])
    if name in ("python", "python3") or argv[0] == sys.executable:
        return "python"
    return name
