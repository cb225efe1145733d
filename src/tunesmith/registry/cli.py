"""`tunesmith models list|show|rm|add`: read and edit the model registry from the command line.

Each command is a config (its fields carry the command-line flags), a `run(cfg)` and a result
with a `summary()`; `REGISTRY_VERBS` lists them with the alias commands of
`tunesmith.registry.alias_cli`, and `tunesmith.cli` generates the commands from them (the
`models` group). `registry_app` holds them on their own.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

from pydantic import Field

from tunesmith.config import Flag, StrictModel
from tunesmith.verbs import Verb

if TYPE_CHECKING:
    from rich.table import Table

    from tunesmith.registry.store import ModelVersion, Registry

REGISTRY_ENV = "TUNESMITH_REGISTRY"


def registry_path(given: Optional[Path]) -> Path:
    if given is not None:
        return given
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    return Path.home() / ".tunesmith" / "registry.sqlite3"


def open_registry(given: Optional[Path]) -> "Registry":
    from tunesmith.registry.store import Registry

    return Registry(registry_path(given))


def table_text(table: "Table") -> str:
    """A rich table as plain text, as wide as the terminal (or $COLUMNS) allows."""
    from rich.console import Console

    out = Console(file=io.StringIO(), width=shutil.get_terminal_size().columns, color_system=None)
    out.print(table)
    return out.file.getvalue().rstrip("\n")


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


class RegistryCommand(StrictModel):
    """What every registry command takes: which registry database."""

    registry: Annotated[Optional[Path], Flag("--registry")] = Field(
        None, description=f"registry database (default: ${REGISTRY_ENV}, else ~/.tunesmith/registry.sqlite3)")


class ListConfig(RegistryCommand):
    """`tunesmith models list`."""

    as_json: Annotated[bool, Flag("--json")] = Field(False, description="print JSON instead of a table")


class ShowConfig(RegistryCommand):
    """`tunesmith models show REF`."""

    ref: Annotated[str, Flag(argument=True)] = Field(..., description="NAME (latest version), NAME@N or NAME@ALIAS")


class RemoveConfig(RegistryCommand):
    """`tunesmith models rm REF`."""

    ref: Annotated[str, Flag(argument=True)] = Field(..., description="NAME@N for one version, NAME for all of them")


class AddConfig(RegistryCommand):
    """`tunesmith models add RUN_DIR`."""

    run_dir: Annotated[Path, Flag(argument=True)] = Field(
        ..., description="output directory of a finished `tunesmith train` run")
    name: Annotated[Optional[str], Flag("--name")] = Field(
        None, description="model name (default: the run directory's name)")
    project: Annotated[str, Flag("--project")] = Field("default", description="project the version belongs to")


@dataclass
class VersionList:
    versions: list["ModelVersion"]
    as_json: bool = False

    def summary(self) -> str:
        if self.as_json:
            return json_text([v.as_dict() for v in self.versions])
        if not self.versions:
            return "the registry is empty"
        from rich.table import Table

        table = Table("model", "project", "source", "base", "train loss", "weights")
        for v in self.versions:
            loss = v.metrics.get("train_loss")
            table.add_row(v.ref, v.project, v.source, v.base_path or "-", "-" if loss is None else f"{loss:.4f}",
                          v.weights_path)
        return table_text(table)


@dataclass
class VersionShown:
    version: "ModelVersion"

    def summary(self) -> str:
        return json_text(self.version.as_dict())


@dataclass
class VersionsRemoved:
    removed: list["ModelVersion"]

    def summary(self) -> str:
        return "\n".join(f"removed {v.ref}" for v in self.removed)


@dataclass
class VersionAdded:
    version: "ModelVersion"

    def summary(self) -> str:
        return f"registered {self.version.ref}"


def list_models(cfg: ListConfig) -> VersionList:
    """Every model version in the registry."""
    return VersionList(open_registry(cfg.registry).list(), cfg.as_json)


def show_model(cfg: ShowConfig) -> VersionShown:
    return VersionShown(open_registry(cfg.registry).get(cfg.ref))


def remove_model(cfg: RemoveConfig) -> VersionsRemoved:
    return VersionsRemoved(open_registry(cfg.registry).remove(cfg.ref))


def add_model(cfg: AddConfig) -> VersionAdded:
    from tunesmith.registry.lineage import version_fields

    fields = version_fields(cfg.run_dir)
    version = open_registry(cfg.registry).add(cfg.name or Path(fields["run_dir"]).name,
                                              source=f"run:{fields['run_dir']}", project=cfg.project, **fields)
    return VersionAdded(version)


_HERE = "tunesmith.registry.cli"

REGISTRY_VERBS: list[Verb] = [
    Verb("list", ListConfig, f"{_HERE}:list_models", "List every model version in the registry."),
    Verb("show", ShowConfig, f"{_HERE}:show_model", "Show one model version with its lineage."),
    Verb("rm", RemoveConfig, f"{_HERE}:remove_model", "Remove versions from the registry (the files on disk stay)."),
    Verb("add", AddConfig, f"{_HERE}:add_model", "Register a training run as a new version."),
]
from tunesmith.registry.alias_cli import ALIAS_VERBS  # noqa: E402  (it imports RegistryCommand from here)

REGISTRY_VERBS += ALIAS_VERBS


def __getattr__(name: str) -> Any:
    # `registry_app` is generated by tunesmith.cli, which imports this module for the `models`
    # group: it is built on first use rather than at import.
    if name == "registry_app":
        from tunesmith.cli import build_group
        from tunesmith.verbs import Group

        return build_group(Group("registry", "The model registry: versions with lineage.", REGISTRY_VERBS))
    raise AttributeError(name)
