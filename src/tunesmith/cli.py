"""The `tunesmith` command line: one Typer app, one verb per pipeline stage.

Each verb builds its stage's typed config (YAML file, then flags, then `--set` overrides) and
calls that stage's `run(cfg)`, the same function the Python API exposes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.text import Text

from tunesmith import __version__
from tunesmith.config import StrictModel, config_to_yaml, load_config
from tunesmith.errors import TunesmithError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune an open LLM on your examples, check it, export it and serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Generate, prepare and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file.", exists=False)
SetOpt = typer.Option(None, "--set", help="Override a config key: --set section.key=value (repeatable).")
PrintConfigOpt = typer.Option(False, "--print-config", help="Print the resolved config with defaults and exit.")


def resolve_config(
    cls: type[StrictModel],
    config: Optional[Path],
    sets: Optional[list[str]],
    print_config: bool,
    **values: Any,
) -> StrictModel:
    """Load a stage config; with --print-config, print it and exit 0."""
    cfg = load_config(cls, config, sets or (), values)
    if print_config:
        typer.echo(config_to_yaml(cfg), nl=False)
        raise typer.Exit(0)
    return cfg


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunesmith {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """tunesmith: data -> train -> eval -> merge -> export -> serve."""


# --------------------------------------------------------------------------- data


@data_app.command("demo")
def data_demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory to write train/test/dirty files to."),
    seed: Optional[int] = typer.Option(None, help="Random seed; the same seed gives byte-identical files."),
    train_size: Optional[int] = typer.Option(None, help="Number of training conversations."),
    test_size: Optional[int] = typer.Option(None, help="Number of held-out test conversations."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Write the demo support-ticket triage dataset (ticket text -> JSON category/priority/summary)."""
    from tunesmith.config import DemoDataConfig
    from tunesmith.data import demo

    cfg = resolve_config(
        DemoDataConfig, config, sets, print_config, out=out, seed=seed, train_size=train_size, test_size=test_size
    )
    written = demo.run(cfg)
    for name, count in written.items():
        console.print(f"wrote {count:>5} rows  {name}")


# --------------------------------------------------------------------------- entry point


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: user errors print cleanly and exit 2."""
    try:
        app(args=argv, prog_name="tunesmith")
    except TunesmithError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), exc.render()), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
