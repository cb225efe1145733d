"""The `tunesmith` command line: one Typer app, one verb per pipeline stage.

Each verb is registered from its stage's `(Config, run)` pair: the options, their help and the
defaults they show come from the config fields and their `Flag` markers (`tunesmith.config.Flag`),
so an option is declared once, in the stage's package. A verb builds the typed config (YAML
file, then flags, then `--set` overrides), calls the stage's `run(cfg)` — the same function the
Python API exposes — prints the result's `summary()` and exits 1 when the result is not `ok`.
A package declares its verbs (`tunesmith.verbs.Verb`, and `Group` for a command group such as
`tunesmith models`) next to its configs; `VERBS` below lists them all.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from tunesmith import __version__
from tunesmith.config import Flag, StrictModel, config_to_yaml, load_config
from tunesmith.data.config import DataInspectConfig, DataPrepareConfig, DemoDataConfig
from tunesmith.errors import TunesmithError
from tunesmith.eval.config import EvalConfig
from tunesmith.export.config import ExportConfig, MergeConfig, ParityConfig
from tunesmith.jobs.config import JobsWorkerConfig
from tunesmith.models.cli import MODELS
from tunesmith.plan.config import PlanConfig
from tunesmith.registry.from_logs import FromLogsConfig
from tunesmith.quickstart_config import QuickstartConfig
from tunesmith.serve.config import ServeConfig
from tunesmith.train.config import TrainConfig
from tunesmith.ui.config import UiConfig
from tunesmith.verbs import Group, Verb, err_console
from tunesmith.verbs import say as _say
from tunesmith.verbs import say_err as _say_err


def _plain_help(option):
    """--help reads as a plain flag (typer shows every option's type, `<bool>` too)."""
    if option is not None:
        option.metavar = ""
    return option


class _Command(TyperCommand):
    def get_help_option(self, ctx):
        return _plain_help(super().get_help_option(ctx))


class _Group(TyperGroup):
    def get_help_option(self, ctx):
        return _plain_help(super().get_help_option(ctx))


app = typer.Typer(
    cls=_Group,
    name="tunesmith",
    help="Fine-tune an open LLM on your examples, check it, export it and serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunesmith {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, metavar="",
                                 help="Show the version and exit."),
) -> None:
    """tunesmith: data -> train -> eval -> merge -> export -> serve."""


# --------------------------------------------------------------------------- options from fields


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _section(annotation: Any) -> type[BaseModel] | None:
    inner = _unwrap_optional(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


@dataclass
class _Option:
    """One command-line parameter: the flag, the config key it sets and the field it describes."""

    flag: Flag
    field_name: str
    key: str                  # dotted config key, e.g. "model.path"
    target: FieldInfo         # the field the value lands in (the section's field for `key=`)
    holder_default: Any       # the default of the field holding the flag (None: an optional section)
    holder_help: str | None = None  # the description of the field holding a `key=` flag

    @property
    def ident(self) -> str:
        return "opt_" + self.key.replace(".", "__")

    def cli_type(self) -> Any:
        if self.flag.repeat:
            return Optional[list[str]]
        if self.flag.argument:
            inner = _unwrap_optional(self.target.annotation)
            return Optional[list[Path]] if typing.get_origin(inner) is list else Optional[str]
        if self.flag.parse is not None:
            return Optional[str]
        inner = _unwrap_optional(self.target.annotation)
        return Optional[inner] if inner in (bool, int, float, Path) else Optional[str]

    def help_text(self) -> str:
        text = self.flag.help or self.holder_help or self.target.description or ""
        return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""

    def shown_default(self) -> str | bool:
        if self.holder_default in (None, PydanticUndefined) or self.flag.parse is not None and _section(self.target.annotation):
            return False
        value = self.target.get_default(call_default_factory=True)
        if value is None or value is PydanticUndefined or isinstance(value, (BaseModel, SecretStr)) or \
                value in ([], {}, ""):
            return False
        if isinstance(value, bool):
            return self.flag_names()[0].split("/")[0 if value else 1]
        return str(value)

    def is_switch(self) -> bool:
        """A bool field set by `--name/--no-name`, with no value after it."""
        return _unwrap_optional(self.target.annotation) is bool and self.flag.parse is None and not self.flag.argument

    def flag_names(self) -> list[str]:
        names = list(self.flag.names) or ["--" + self.field_name.replace("_", "-")]
        if self.is_switch():
            long = next(n for n in names if n.startswith("--"))
            names = [f"{long}/--no-{long[2:]}", *(n for n in names if n != long)]
        return names

    def parameter(self) -> inspect.Parameter:
        if self.flag.argument:
            info = typer.Argument(None, help=self.help_text(), show_default=self.shown_default(),
                                  metavar=self.field_name.upper())
        else:
            info = typer.Option(None, *self.flag_names(), help=self.help_text(), show_default=self.shown_default(),
                                metavar="" if self.is_switch() else None)
        return inspect.Parameter(self.ident, inspect.Parameter.KEYWORD_ONLY, default=info,
                                 annotation=self.cli_type())

    def values(self, raw: Any) -> dict[str, Any]:
        """The config keys this flag's raw command-line value sets."""
        if raw is None or (isinstance(raw, (list, tuple)) and not raw):
            return {}
        value = self.flag.parse(list(raw) if self.flag.repeat else raw) if self.flag.parse else raw
        if self.flag.argument and isinstance(value, (list, tuple)):
            value = [str(v) for v in value]
        if isinstance(value, dict) and _section(self.target.annotation) is not None:
            return {f"{self.key}.{k}": v for k, v in value.items()}
        return {self.key: value}


def _options(cls: type[BaseModel], prefix: str = "") -> list[_Option]:
    """Every flagged field of `cls` and of its sections, in declaration order."""
    found = []
    for name, info in cls.model_fields.items():
        section = _section(info.annotation)
        default = info.get_default(call_default_factory=True)
        for flag in (m for m in info.metadata if isinstance(m, Flag)):
            if flag.key:
                assert section is not None, f"{cls.__name__}.{name}: Flag(key=) needs a section"
                found.append(_Option(flag, name, f"{prefix}{name}.{flag.key}", section.model_fields[flag.key],
                                     default, info.description))
            else:
                found.append(_Option(flag, name, prefix + name, info, default))
        if section is not None:
            found.extend(_options(section, f"{prefix}{name}."))
    return found


# --------------------------------------------------------------------------- verbs


class _RecordProgress:
    """A transient stderr line with the records read so far and the rate, for long data runs."""

    def __enter__(self):
        import time

        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._clock, self._start = time.perf_counter, time.perf_counter()
        self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                             console=err_console, transient=True)
        self._bar.__enter__()
        self._task = self._bar.add_task("reading examples", total=None)
        return self

    def __call__(self, records: int) -> None:
        rate = records / max(self._clock() - self._start, 1e-9)
        self._bar.update(self._task, description=f"{records:,} examples read, {rate:,.0f}/s")

    def __exit__(self, *exc_info) -> None:
        self._bar.__exit__(*exc_info)


def _call(verb: Verb, cfg: StrictModel, extras: dict[str, Any]) -> Any:
    if isinstance(verb.run, str):
        module, _, function = verb.run.partition(":")
        run = getattr(importlib.import_module(module), function)
    else:
        run = verb.run
    kwargs = {**verb.run_kwargs(), **extras}
    if not verb.progress:
        return run(cfg, **kwargs)
    with _RecordProgress() as progress:
        return run(cfg, progress=progress, **kwargs)


def resolve_config(cls: type[StrictModel], config: Optional[Path], sets: Optional[list[str]], print_config: bool,
                   **values: Any) -> StrictModel:
    """Load a stage config (YAML, then flag values, then --set); with --print-config, print it and exit 0."""
    cfg = load_config(cls, config, sets or (), values)
    if print_config:
        typer.echo(config_to_yaml(cfg), nl=False)
        raise typer.Exit(0)
    return cfg


def _file_parameters(verb: Verb) -> list[inspect.Parameter]:
    """--config (or the positional CONFIG) and --set, for a verb whose config may come from a file."""
    if not verb.config_file:
        return []
    if verb.config_argument:
        config_param = typer.Argument(None, help="YAML config file (see examples/configs/).")
    else:
        config_param = typer.Option(None, "--config", "-c", help="YAML config file.")
    return [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=config_param, annotation=Optional[Path]),
        inspect.Parameter("sets", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]],
                          default=typer.Option(None, "--set", help="Override a config key: --set section.key=value "
                                                                   "(repeatable).")),
    ]


def register(group: typer.Typer, verb: Verb | Group) -> None:
    """Add `verb` to `group` with options generated from its config's fields (a `Group`: a
    sub-command group holding each of its verbs)."""
    if isinstance(verb, Group):
        group.add_typer(build_group(verb), name=verb.name)
        return
    options = [o for o in _options(verb.config)
               if o.key not in verb.hidden and o.key.split(".")[0] not in verb.fixed]
    params = [o.parameter() for o in options]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=param, annotation=Optional[str])
               for name, (param, _) in verb.extra.items()]
    params += _file_parameters(verb)
    params.append(inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                    default=typer.Option(False, "--print-config", metavar="",
                                                         help="Print the resolved config with defaults and exit.")))

    def command(**given: Any) -> None:
        values = dict(verb.fixed)
        for option in options:
            values.update(option.values(given[option.ident]))
        cfg = resolve_config(verb.config, given.get("config"), given.get("sets"), given["print_config"], **values)
        extras = {name: parse(given[name]) for name, (_, parse) in verb.extra.items()}
        result = _call(verb, cfg, extras)
        if result is None or os.environ.get("RANK", "0") != "0":
            return  # serving returns on shutdown; in a distributed run, rank 0 reports
        _say(result.summary())
        if not getattr(result, "ok", True):
            raise typer.Exit(1)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = verb.help
    group.command(verb.name, cls=_Command)(command)


def build_group(spec: Group) -> typer.Typer:
    """A Typer app holding every verb of `spec` (mounted under `spec.name` by `register`)."""
    group = typer.Typer(help=spec.help, no_args_is_help=True, cls=_Group)
    for verb in spec.verbs:
        register(group, verb)
    return group


def _resume(value: Optional[str]) -> bool | str | None:
    return True if value == "latest" else value


data_app = typer.Typer(help="Generate, prepare and inspect datasets.", no_args_is_help=True, cls=_Group)
export_app = typer.Typer(help="Export a tuned model as GGUF for llama.cpp, or for Ollama.", no_args_is_help=True,
                         cls=_Group)
check_app = typer.Typer(help="Consistency checks between training, serving and exports.", no_args_is_help=True,
                        cls=_Group)
app.add_typer(data_app, name="data")

VERBS: list[tuple[typer.Typer, Verb | Group]] = [
    (data_app, Verb("demo", DemoDataConfig, "tunesmith.data.demo:run",
                    "Write the demo support-ticket triage dataset (ticket text -> JSON category/priority/summary).")),
    (data_app, Verb("prepare", DataPrepareConfig, "tunesmith.data.prepare:run",
                    "Validate, clean, deduplicate and split example files into train/val/test JSONL with a report.",
                    progress=True)),
    (data_app, Verb("inspect", DataInspectConfig, "tunesmith.data.inspect:run",
                    "Check example files without writing anything: findings by rule, lengths, and one example "
                    "rendered through the chat template with the trained tokens marked.", progress=True)),
    (data_app, Verb("from-logs", FromLogsConfig, "tunesmith.registry.from_logs:run",
                    "Turn approved and corrected production exchanges into a training set (validated, deduplicated "
                    "against earlier training data, split).")),
    (app, Verb("train", TrainConfig, "tunesmith.train.sft:run",
               "Fine-tune a model with LoRA, QLoRA or full fine-tuning (also under torchrun / accelerate launch).",
               config_argument=True, run_kwargs=lambda: {"console": err_console},
               extra={"resume": (typer.Option(None, "--resume", help="Continue from a checkpoint: `latest`, or a "
                                              "checkpoints/step-* directory."), _resume)})),
    (app, Verb("serve", ServeConfig, "tunesmith.serve.server:run",
               "Serve a model and its LoRA adapters over an OpenAI-compatible HTTP API, batching requests.",
               run_kwargs=lambda: {"announce": _say_err})),
    (app, Verb("eval", EvalConfig, "tunesmith.eval.run:run",
               "Score a tuned model on a test set (and against its base): accuracy, F1, JSON validity, BLEU, chrF, "
               "ROUGE-L, perplexity, stop rate; writes a report with charts.", run_kwargs=lambda: {"say": _say_err})),
    (app, Verb("merge", MergeConfig, "tunesmith.export.merge:run",
               "Merge a LoRA/QLoRA adapter into an unquantised copy of its base and check the logits still match.",
               run_kwargs=lambda: {"say": _say})),
    (export_app, Verb("gguf", ExportConfig, "tunesmith.export.run:run",
                      "Write a GGUF file (merging the adapter first), verify it, and check its prompt format "
                      "matches training.", fixed={"format": "gguf"}, run_kwargs=lambda: {"say": _say})),
    (export_app, Verb("ollama", ExportConfig, "tunesmith.export.run:run",
                      "Write a GGUF and an Ollama Modelfile whose TEMPLATE renders exactly as training did.",
                      fixed={"format": "ollama"}, hidden=("ollama",), run_kwargs=lambda: {"say": _say})),
    (check_app, Verb("parity", ParityConfig, "tunesmith.export.parity:run",
                     "Render the same conversations through training, serving, the GGUF and the Modelfile; "
                     "exit 1 on any difference.")),
    (app, Verb("quickstart", QuickstartConfig, "tunesmith.quickstart:run",
               "The whole lifecycle on the demo ticket-triage task: prepare, train, evaluate, merge, export, serve.",
               run_kwargs=lambda: {"say": _say})),
    (app, Verb("ui", UiConfig, "tunesmith.ui.cli:run",
               "Browse runs and reports, chat with served models, and run blind A/B reviews in the browser.",
               run_kwargs=lambda: {"announce": _say_err})),
    (app, MODELS),  # GGUF import and the model registry
    # `plan`'s positional CONFIG and --set are the training config's (fields of PlanConfig), so
    # it offers no config file of its own.
    (app, Verb("plan", PlanConfig, "tunesmith.plan.command:run",
               "Plan a training run's memory per component (weights, LoRA, gradients, optimiser, activations, "
               "logits, KV cache), say whether it fits the GPU or this machine's RAM, and what to change if not.",
               config_file=False)),
    (app, Group("jobs", "Fine-tuning jobs (the jobs API of `tunesmith serve`).", [
        Verb("worker", JobsWorkerConfig, "tunesmith.jobs.standalone:run",
             "Run the fine-tuning jobs of a store (a server's jobs.root) in this process, for a server "
             "started with jobs.run_worker: false; several workers may share one store.",
             run_kwargs=lambda: {"announce": _say_err})])),
]
app.add_typer(export_app, name="export")
app.add_typer(check_app, name="check")
for _group, _verb in VERBS:
    register(_group, _verb)


# --------------------------------------------------------------------------- entry point


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: user errors print cleanly and exit 2."""
    if not sys.stderr.isatty():
        # Per-file "Loading weights" bars are noise in logs and CI output; tunesmith reports
        # its own progress for long work.
        # (transformers reads this variable when it is first imported).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
