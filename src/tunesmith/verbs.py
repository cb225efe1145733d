"""What a command is, declared next to its stage: `Verb` (a config class and the stage's `run`) and
`Group` (a named set of verbs, e.g. `tunesmith models ...`).

These are plain descriptions; `tunesmith.cli` turns them into Typer commands (options, help and
shown defaults from the config's fields and their `Flag` markers). A package lists its verbs here
without importing the command line, so `tunesmith --help` stays cheap and the CLI module can import
every package's verbs without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console

from tunesmith.config import StrictModel

console = Console()
err_console = Console(stderr=True)


def say(text: str) -> None:
    """Stage progress lines as plain text: they quote tokens and paths that rich would read as markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def say_err(text: str) -> None:
    err_console.print(text, markup=False, highlight=False, soft_wrap=True)


@dataclass
class Verb:
    """A command: its config class, the stage's `run` (a function, or "module:function" imported
    when the verb runs, so `tunesmith --help` loads no torch), and what the verb adds to the
    generated options."""

    name: str
    config: type[StrictModel]
    run: str | Callable[..., Any]
    help: str
    fixed: dict[str, Any] = field(default_factory=dict)   # config values the verb itself decides
    hidden: tuple[str, ...] = ()                          # flagged keys this verb does not offer
    config_argument: bool = False                         # the YAML file is the positional argument
    config_file: bool = True     # offer --config/-c and --set for this config (False: a field's own flags do)
    extra: dict[str, tuple[Any, Callable[[Any], Any]]] = field(default_factory=dict)  # run() options
    run_kwargs: Callable[[], dict[str, Any]] = dict      # e.g. where progress lines go
    progress: bool = False                                # show records read while data is checked


@dataclass
class Group:
    """`tunesmith NAME VERB ...`: verbs under one name, with the group's help line."""

    name: str
    help: str
    verbs: list[Verb]


__all__ = ["Group", "Verb", "console", "err_console", "say", "say_err"]
