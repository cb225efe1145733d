"""The config loader: YAML plus `--set a.b=c` overrides, validated into a stage's config class.

Each stage package owns its pydantic config class (`tunesmith.data.config`, `tunesmith.train.config`,
...), built on `StrictModel`, with the command-line flags of its fields declared on the fields
themselves (`Flag`). `load_config` reads a YAML file (keeping the line of every key so errors can
point at it), applies overrides, validates, and turns any validation problem into a `ConfigError`
that names the field, the file and line it came from, and — for unknown keys — the closest valid key.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from tunesmith.errors import ConfigError

T = TypeVar("T", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class Flag:
    """How a config field appears on the command line; the CLI is generated from these markers.

    Put it in the field's annotation, next to the pydantic `Field` that holds the default and the
    description (the flag's help text), so an option is declared in one place:

        seed: Annotated[int, Flag("--seed")] = Field(0, description="split seed")

    `names`: the option's spellings ("--out", "-o"); none means `--field-name`. A bool field gets
    `--name/--no-name`. `help`: only where the command line needs other words than the
    description. `key`: the flag sets this key inside the field's section (`--model` sets
    `model.path`), keeping the section's other keys from the YAML. `parse`: turns the raw text
    (a list of texts with `repeat`) into the field's value; a dict parsed for a section sets
    those keys of it. `argument`: a positional argument instead of an option. A field may carry
    several flags (each with its own `key`).
    """

    __slots__ = ("names", "help", "key", "parse", "repeat", "argument")

    def __init__(self, *names: str, help: str | None = None, key: str | None = None,
                 parse: Callable[[Any], Any] | None = None, repeat: bool = False, argument: bool = False):
        self.names, self.help, self.key, self.parse = names, help, key, parse
        self.repeat, self.argument = repeat, argument

    def __repr__(self) -> str:
        return f"Flag({', '.join(map(repr, self.names))}{', key=' + repr(self.key) if self.key else ''})"


# --------------------------------------------------------------------------- YAML with lines


class _Source:
    """Where each key path of a loaded config came from (file line or `--set`)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.lines: dict[tuple[str, ...], int] = {}
        self.overrides: dict[tuple[str, ...], str] = {}

    def locate(self, loc: tuple[str, ...]) -> str | None:
        for n in range(len(loc), 0, -1):
            key = loc[:n]
            if key in self.overrides:
                return f"--set {self.overrides[key]}"
            if key in self.lines and self.path is not None:
                return f"{self.path}:{self.lines[key]}"
        return str(self.path) if self.path is not None else None


def _record_lines(node: yaml.Node, prefix: tuple[str, ...], lines: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            _record_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, str(i))
            lines[key] = item.start_mark.line + 1
            _record_lines(item, key, lines)


def _read_yaml(path: Path, source: _Source) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}",
            hint="pass the path of a YAML file; `tunesmith <verb> --print-config` shows a full example",
        )
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", where=where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the config must be a mapping of keys to values, not a {type(data).__name__}",
            where=str(path),
        )
    if node is not None:
        _record_lines(node, (), source.lines)
    return data


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=c` into (["a", "b"], value) with the value parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} has no '='", hint="write overrides as --set section.key=value"
        )
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty key", hint="example: --set train.learning_rate=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _expand_shorthand(section: type[BaseModel] | None, value: Any) -> Any:
    """`value` as its section's mapping, where the section reads a plain value as shorthand
    (`data: DIR` for `data: {path: [DIR]}`): its own "before" validators say how."""
    if section is None:
        return value
    for name, decorator in section.__pydantic_decorators__.model_validators.items():
        if decorator.info.mode == "before":
            value = getattr(section, name)(value)
    return value


def _apply_override(data: dict[str, Any], parts: list[str], value: Any, text: str,
                    cls: type[BaseModel] | None = None) -> None:
    node, model = data, cls
    for i, part in enumerate(parts[:-1]):
        model = _model_at(model, [part]) if model is not None else None
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            child = _expand_shorthand(model, child)
            if not isinstance(child, dict):
                raise ConfigError(
                    f"cannot set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is a value, not a section",
                    where=f"--set {text}",
                )
            node[part] = child
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------- error rendering


def _unwrap(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return [annotation]


def _model_at(cls: type[BaseModel], loc: Iterable[Any]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = cls
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        nested = [a for a in _unwrap(current.model_fields[part].annotation)
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        current = nested[0] if nested else None
    return current


def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names.append(field.alias or name)
    return names


def _describe(cls: type[BaseModel], err: dict[str, Any], source: _Source) -> str:
    loc = tuple(str(p) for p in err["loc"])
    dotted = ".".join(loc) or "(top level)"
    where = source.locate(loc)
    prefix = f"{where}: " if where else ""
    if err["type"] == "extra_forbidden":
        parent = _model_at(cls, err["loc"][:-1])
        valid = _field_names(parent) if parent else []
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        msg = f"{prefix}unknown key `{dotted}`"
        if close:
            parent_path = ".".join(loc[:-1])
            msg += f"; did you mean `{parent_path + '.' if parent_path else ''}{close[0]}`?"
        elif valid:
            msg += f"; valid keys here: {', '.join(valid)}"
        return msg
    message = err["msg"].removeprefix("Value error, ")
    if not loc:
        return f"{prefix}{message}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{prefix}field `{dotted}`: {message}{shown}"


# --------------------------------------------------------------------------- public API


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    values: dict[str, Any] | None = None,
) -> T:
    """Build a `cls` config from an optional YAML file, explicit values and `--set` overrides.

    Precedence, lowest first: class defaults, the YAML file, `values` (CLI flags), `overrides`.
    """
    source = _Source(Path(path) if path is not None else None)
    data: dict[str, Any] = _read_yaml(Path(path), source) if path is not None else {}
    for key, value in (values or {}).items():
        if value is not None:
            parts = key.split(".")
            _apply_override(data, parts, value, key, cls)
            source.overrides[tuple(parts)] = f"{key}={value!r}".replace("--set ", "")
    for text in overrides:
        parts, value = parse_override(text)
        _apply_override(data, parts, value, text, cls)
        source.overrides[tuple(parts)] = text
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(cls, e, source) for e in exc.errors()]
        raise ConfigError(
            "invalid config:\n  " + "\n  ".join(problems),
            hint="`--print-config` shows every valid key with its default",
        ) from None


def config_to_yaml(cfg: BaseModel) -> str:
    """The fully resolved config as YAML, defaults included, in declaration order.

    Secrets (the server's API key) are written as null with a comment saying they were set, so
    the output can be reused as a config without turning the key into a row of asterisks.
    """
    data = cfg.model_dump(mode="json")
    hidden = [name for name, value in cfg if isinstance(value, SecretStr)]
    for name in hidden:
        data[name] = None
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    notes = "".join(f"# {name} is set but not shown; pass it again (e.g. through its environment variable)\n"
                     for name in hidden)
    return notes + text


def save_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(config_to_yaml(cfg), encoding="utf-8")
