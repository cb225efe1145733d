"""`tunesmith models list|show|rm|add`: read and edit the model registry from the command line.

The functions are plain Typer commands; `register_commands(app)` attaches them to any Typer (the
`models` group of the main CLI), and `registry_app` holds them on their own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

REGISTRY_ENV = "TUNESMITH_REGISTRY"
console = Console()

RegistryOpt = typer.Option(None, "--registry", help=f"Registry database (default: ${REGISTRY_ENV}, else "
                           "~/.tunesmith/registry.sqlite3).")


def registry_path(given: Optional[Path]) -> Path:
    if given is not None:
        return given
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    return Path.home() / ".tunesmith" / "registry.sqlite3"


def _open(given: Optional[Path]):
    from tunesmith.registry.store import Registry

    return Registry(registry_path(given))


def list_models(registry: Optional[Path] = RegistryOpt,
                as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List every model version in the registry."""
    versions = _open(registry).list()
    if as_json:
        console.print_json(json.dumps([v.as_dict() for v in versions]))
        return
    table = Table("model", "project", "source", "base", "train loss", "weights")
    for v in versions:
        loss = v.metrics.get("train_loss")
        table.add_row(v.ref, v.project, v.source, v.base_path or "-", "-" if loss is None else f"{loss:.4f}",
                      v.weights_path)
    console.print(table if versions else "the registry is empty")


def show_model(ref: str = typer.Argument(..., help="NAME (latest version), NAME@N or NAME@ALIAS."),
               registry: Optional[Path] = RegistryOpt) -> None:
    """Show one model version with its lineage."""
    console.print_json(json.dumps(_open(registry).get(ref).as_dict()))


def remove_model(ref: str = typer.Argument(..., help="NAME@N for one version, NAME for all of them."),
                 registry: Optional[Path] = RegistryOpt) -> None:
    """Remove versions from the registry (the files on disk stay)."""
    for v in _open(registry).remove(ref):
        console.print(f"removed {v.ref}")


def add_model(run_dir: Path = typer.Argument(..., help="Output directory of a finished `tunesmith train` run."),
              name: Optional[str] = typer.Option(None, "--name", help="Model name (default: the run directory's name)."),
              project: str = typer.Option("default", "--project", help="Project the version belongs to."),
              registry: Optional[Path] = RegistryOpt) -> None:
    """Register a training run as a new version."""
    from tunesmith.registry.lineage import version_fields

    fields = version_fields(run_dir)
    version = _open(registry).add(name or Path(fields["run_dir"]).name, source=f"run:{fields['run_dir']}",
                                  project=project, **fields)
    console.print(f"registered {version.ref}")


def register_commands(app: typer.Typer) -> None:
    app.command("list")(list_models)
    app.command("show")(show_model)
    app.command("rm")(remove_model)
    app.command("add")(add_model)
    from tunesmith.registry.alias_cli import register_lifecycle_commands  # imports this module's options

    register_lifecycle_commands(app)


registry_app = typer.Typer(help="The model registry: versions with lineage.", no_args_is_help=True)
register_commands(registry_app)
