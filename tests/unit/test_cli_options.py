"""The command line generated from config fields: one `Flag` on a field makes the option, its
help, its shown default and how its value lands in the config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
import typer.main
from pydantic import Field
from typer.testing import CliRunner

from tunesmith import cli
from tunesmith.config import Flag, StrictModel
from tunesmith.data.config import parse_field_map, parse_split_shares
from tunesmith.errors import ConfigError

from cli_helpers import run_cli


class Section(StrictModel):
    path: str = Field("default", description="where it is")
    level: int = 1


class Shares(StrictModel):
    train: float = 0.5
    test: float = 0.5


class Sample(StrictModel):
    inputs: Annotated[list[Path], Flag(argument=True)] = Field(default_factory=list, description="files to read")
    count: Annotated[int, Flag("--count", "-n")] = Field(3, ge=1, description="how many")
    loud: Annotated[bool, Flag()] = Field(False, description="say more")
    section: Annotated[Section, Flag("--section", key="path", help="the section's path")] = Field(
        default_factory=Section)
    shares: Annotated[Shares, Flag("--shares", parse=lambda t: dict(zip(("train", "test"), map(float, t.split(",")))))
                      ] = Field(default_factory=Shares)
    rename: Annotated[dict[str, str], Flag("--rename", parse=parse_field_map, repeat=True)] = Field(
        default_factory=dict, description="renames")
    not_on_the_command_line: Optional[str] = None


def _app(seen: list) -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    cli.register(app, cli.Verb("sample", Sample, seen.append, "A sample verb."))
    return app


def _invoke(args: list[str]):
    seen: list = []
    result = CliRunner().invoke(_app(seen), ["sample", *args])
    return result, (seen[0] if seen else None)


def test_flags_set_their_fields_and_sections_keep_their_other_keys(tmp_path):
    config = tmp_path / "sample.yaml"
    config.write_text("section: {path: from-yaml, level: 7}\nshares: {train: 0.9, test: 0.1}\ncount: 5\n")
    result, cfg = _invoke(["a.jsonl", "b.jsonl", "-n", "9", "--loud", "--section", "there", "--rename", "q=prompt",
                           "--rename", "a=completion", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert cfg.inputs == [Path("a.jsonl"), Path("b.jsonl")] and cfg.count == 9 and cfg.loud is True
    assert cfg.section == Section(path="there", level=7)
    assert cfg.rename == {"q": "prompt", "a": "completion"}
    assert cfg.shares == Shares(train=0.9, test=0.1)


def test_a_parsed_section_value_sets_only_its_keys_and_set_wins(tmp_path):
    result, cfg = _invoke(["--shares", "0.25,0.75", "--count", "2", "--set", "count=4"])
    assert result.exit_code == 0, result.output
    assert cfg.shares == Shares(train=0.25, test=0.75) and cfg.count == 4


def test_flags_left_out_keep_the_config_defaults():
    result, cfg = _invoke([])
    assert result.exit_code == 0, result.output
    assert cfg == Sample()


def test_help_and_shown_default_come_from_the_field():
    command = typer.main.get_command(_app([])).commands["sample"]
    options = {p.opts[0]: p for p in command.params}
    assert options["--count"].help == "How many." and options["--count"].show_default == "3"
    assert "-n" in options["--count"].opts
    assert options["--loud"].secondary_opts == ["--no-loud"] and options["--loud"].show_default == "--no-loud"
    assert options["--section"].help == "The section's path." and options["--section"].show_default == "default"
    assert "--not-on-the-command-line" not in options
    assert all(p.default in (None, False) for p in command.params), "defaults live in the config, not the CLI"


def _leaf_commands(command) -> list:
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [command]
    return [leaf for sub in subcommands.values() for leaf in _leaf_commands(sub)]


def _declared_verbs() -> list[cli.Verb]:
    return [v for _, entry in cli.VERBS for v in (entry.verbs if isinstance(entry, cli.Group) else [entry])]


def test_every_verb_takes_its_defaults_from_its_config():
    commands = _leaf_commands(typer.main.get_command(cli.app))
    assert len(commands) == len(_declared_verbs())
    assert {"models", "plan"} <= set(typer.main.get_command(cli.app).commands)
    for command in commands:
        for param in command.params:
            assert param.default in (None, False), (command.name, param.name, param.default)


def test_help_shows_switches_as_plain_flags_and_no_default_for_required_fields():
    """`--x/--no-x` needs no value, so --help shows no `<bool>` type for it (nor for --help
    itself), and a required field has no default to show."""
    paths = [["--help"]]
    for name, command in typer.main.get_command(cli.app).commands.items():
        subcommands = getattr(command, "commands", None) or {}
        paths += [[name, "--help"]] + [[name, sub, "--help"] for sub in subcommands]
    assert ["models", "promote", "--help"] in paths and ["data", "from-logs", "--help"] in paths
    for args in paths:
        result = CliRunner().invoke(cli.app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, (args, result.output)
        assert "<bool>" not in result.output, args
        assert "PydanticUndefined" not in result.output and "[default: ()]" not in result.output, args
    shown = CliRunner().invoke(cli.app, ["models", "promote", "--help"], env={"COLUMNS": "200"}).output
    assert "--force" in shown and "--no-force" in shown and "--max-drop" in shown and "<float>" in shown


def test_special_parsers_reject_bad_text():
    with pytest.raises(ConfigError, match="yours=ours"):
        parse_field_map(["question"])
    with pytest.raises(ConfigError, match="three shares"):
        parse_split_shares("0.9,0.1")
    assert parse_split_shares("0.8,0.1,0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}



def test_train_resume_latest_means_the_latest_checkpoint(monkeypatch, capsys):
    from tunesmith.train import sft

    calls = []

    class Done:
        def summary(self):
            return "done: 3 steps"

    monkeypatch.setattr(sft, "run", lambda cfg, **kwargs: calls.append((cfg, kwargs)) or Done())
    config = Path(__file__).resolve().parents[2] / "examples" / "configs" / "default-cpu-lora.yaml"
    code, out, _ = run_cli(capsys, "train", str(config), "--resume", "latest",
                           "--set", "train.max_steps=3")
    assert code == 0 and out.strip() == "done: 3 steps"
    assert calls[-1][0].train.max_steps == 3 and calls[-1][1]["resume"] is True
    run_cli(capsys, "train", "--resume", "runs/x/checkpoints/step-2")
    assert calls[-1][1]["resume"] == "runs/x/checkpoints/step-2"


def test_a_failed_export_check_prints_why_and_exits_1(monkeypatch, capsys, tmp_path):
    from tunesmith.export import run as export_run

    failed = export_run.ExportResult(tmp_path / "m.gguf", None, {
        "ok": False, "verification": {"ok": False, "failures": ["top-1 agreement 0.80 < 0.99"]},
        "parity": {"ok": False}})
    monkeypatch.setattr(export_run, "run", lambda cfg, **kwargs: failed)
    code, out, _ = run_cli(capsys, "export", "gguf", "runs/sft", "--out", str(tmp_path / "m.gguf"))
    assert code == 1
    assert "export check failed: top-1 agreement 0.80 < 0.99; the exported prompt format differs" in out
