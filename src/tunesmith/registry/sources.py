"""What a training run continues from, and whose data it replays: a run directory or a registry name.

`train.init_from` and `data.replay.source` take either a training run directory or a registry
reference: `tickets@3` (a version), `tickets` (the production alias), `tickets:canary` or
`tickets@canary` (another alias). A reference is resolved through the registry to the version's
run directory, and the run continues from that version's weights (its LoRA adapter, or its full
model) with the tokenizer and chat template saved beside them. A version trained on another base
than the run's `model:` is refused: an adapter only means something on the weights it was trained on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tunesmith.registry.store import NAME_PATTERN, ModelVersion, Registry, RegistryError


@dataclass(frozen=True)
class RunSource:
    """A finished training run, found by its directory or through the registry."""

    given: str
    run_dir: Path
    version: Optional[ModelVersion] = None  # set when `given` named a registry version

    @property
    def ref(self) -> Optional[str]:
        return self.version.ref if self.version is not None else None

    @property
    def label(self) -> str:
        return self.ref or str(self.run_dir)

    def manifest(self) -> dict[str, Any]:
        path = self.run_dir / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class InitSource:
    """What `init_from` resolved to: the weights to start from and how to load them."""

    source: RunSource
    weights_dir: Path
    kind: str  # "adapter" (a LoRA adapter on the base) or "full" (a whole model)

    def load_tokenizer(self, trust_remote_code: bool = False):
        """The tokenizer and chat template saved with the weights (training may have changed both)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.weights_dir), trust_remote_code=trust_remote_code)

    def record(self) -> dict[str, Any]:
        """The manifest's `init_from` entry: what was asked for and what was used."""
        return {"given": self.source.given, "ref": self.source.ref, "run_dir": str(self.source.run_dir),
                "weights": str(self.weights_dir), "kind": self.kind}


def default_registry_path() -> Path:
    from tunesmith.registry.cli import registry_path

    return registry_path(None)


def resolve_version(registry: Registry, given: str, field: str) -> ModelVersion:
    from tunesmith.registry.aliases import PRODUCTION, parse_alias_ref

    name, at, selector = given.partition("@")
    if not at:
        name, selector = parse_alias_ref(given)
    selector = selector or PRODUCTION
    versions = registry.versions(name)
    if not versions:
        known = sorted({v.name for v in registry.list()})
        raise RegistryError(f"{field}: the registry {registry.db.path} has no model named {name!r}",
                            hint=f"models there: {', '.join(known)}" if known else
                            "register a run with `tunesmith models add RUN_DIR --name NAME`")
    found = registry.find(f"{name}@{selector}")
    if not found:
        what = f"version {selector}" if selector.isdigit() else f"alias {selector!r}"
        raise RegistryError(f"{field}: {name} has no {what}",
                            hint=f"its versions: {', '.join(str(v.version) for v in versions)} "
                                 f"(`tunesmith models list` and `tunesmith models alias {name}` show them)")
    return found[0]


def resolve_run(given: str, registry_path: Optional[Path], field: str = "init_from") -> RunSource:
    """A run directory as it is; anything else is a registry reference, resolved to its version's run."""
    local = Path(given).expanduser()
    if local.is_dir():
        return RunSource(given, local.resolve())
    if "/" in given or not re.fullmatch(NAME_PATTERN + r"(@[A-Za-z0-9_-]+)?", given):
        raise RegistryError(f"{field}: {given} is not a directory",
                            hint="give a training run directory, or a registry model as NAME@VERSION")
    path = Path(registry_path) if registry_path is not None else default_registry_path()
    if not path.is_file():
        raise RegistryError(f"{field}: {given!r} names a registry model, but the registry {path} does not exist",
                            hint="set registry: PATH (or $TUNESMITH_REGISTRY) to the registry that holds it, "
                                 "or give a training run directory")
    registry = Registry(path)
    try:
        version = resolve_version(registry, given, field)
    finally:
        registry.close()
    run_dir = Path(version.run_dir)
    if not run_dir.is_dir():
        raise RegistryError(f"{field}: {version.ref} was trained in {run_dir}, which no longer exists",
                            hint="restore the run directory, or continue from another version")
    return RunSource(given, run_dir, version)


def _weights(source: RunSource) -> tuple[Path, str]:
    from tunesmith.registry.lineage import weights_dir

    recorded = Path(source.version.weights_path) if source.version is not None else None
    weights = recorded if recorded is not None and recorded.is_dir() else weights_dir(source.run_dir)
    if (weights / "adapter_config.json").is_file():
        return weights, "adapter"
    if (weights / "config.json").is_file():
        return weights, "full"
    raise RegistryError(f"init_from: {weights} holds neither a LoRA adapter nor a model",
                        hint="continue from a directory written by a finished `tunesmith train` run")


def _check_same_base(source: RunSource, model_path: str, revision: Optional[str]) -> None:
    """Refuse a version trained on other base weights than the run's `model:`."""
    from tunesmith.models.loading import resolve_model_path, weights_fingerprint, weights_stamp

    base = source.manifest().get("base_model") or {}
    version = source.version
    recorded_path = (version.base_path if version is not None and version.base_path else None) or base.get("path")
    recorded_sha = (version.base_sha256 if version is not None and version.base_sha256 else None) \
        or base.get("weights_sha256")
    if recorded_path is None and recorded_sha is None:
        raise RegistryError(f"init_from: {source.label} records no base model, so it cannot be checked against "
                            f"model: {model_path}", hint="continue from a run written by `tunesmith train`")
    current = resolve_model_path(model_path)
    if recorded_sha is not None and Path(current).is_dir():
        if recorded_path == current and base.get("weights_stamp") is not None \
                and json.loads(json.dumps(weights_stamp(current))) == base["weights_stamp"]:
            return  # the same files, unchanged since that run hashed them
        if weights_fingerprint(current) == recorded_sha:
            return
    elif recorded_path is not None and recorded_path == current \
            and (base.get("revision") is None or base.get("revision") == revision):
        return
    raise RegistryError(f"init_from: {source.label} was trained on the base {recorded_path or recorded_sha}, "
                        f"not on model: {model_path} ({current})",
                        hint=f"set model: to the base it was trained on ({recorded_path}), or start from another run")


def resolve_init(given: str, registry_path: Optional[Path], model_path: str, revision: Optional[str] = None,
                 method: str = "lora") -> InitSource:
    """`init_from` -> the weights to start from, after checking they belong to `model_path`."""
    source = resolve_run(given, registry_path)
    weights, kind = _weights(source)
    if kind == "full" and method != "full":
        # An adapter trained on these weights would be recorded, and served, on the original base.
        raise RegistryError(f"init_from: {source.label} is a full fine-tune; method: {method} would train an "
                            "adapter on its weights, which is not an adapter of model:",
                            hint=f"continue it with method: full, or set model: {weights} (and no init_from) "
                                 "to train an adapter on it as a new base")
    _check_same_base(source, model_path, revision)
    return InitSource(source, weights, kind)
