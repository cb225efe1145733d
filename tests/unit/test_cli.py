from tunesmith import __version__

from cli_helpers import run_cli


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"tunesmith {__version__}"


def test_help_on_every_verb(capsys):
    from tunesmith.cli import app
    import typer.main

    group = typer.main.get_command(app)
    verbs = []
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None)
        verbs.extend([[name, sub] for sub in subs] if subs else [[name]])
    assert ["data", "demo"] in verbs
    for verb in verbs:
        code, out, _ = run_cli(capsys, *verb, "--help")
        assert code == 0 and "Usage" in out, verb


def test_bad_config_exits_2_without_traceback(capsys, tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("seed: 1\ntrian_size: 10\n")
    code, out, err = run_cli(capsys, "data", "demo", "--config", str(cfg))
    assert code == 2
    assert f"{cfg}:2" in err and "did you mean `train_size`" in err
    assert "Traceback" not in err + out


def test_print_config_shows_resolved_values(capsys):
    code, out, _ = run_cli(capsys, "data", "demo", "--print-config", "--seed", "11", "--set", "test_size=5")
    assert code == 0
    assert "seed: 11" in out and "test_size: 5" in out and "train_size: 2400" in out


def test_demo_verb_writes_files(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "data", "demo", "--out", str(tmp_path), "--train-size", "30", "--test-size", "5")
    assert code == 0
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 30
    assert len((tmp_path / "test.jsonl").read_text().splitlines()) == 5


def test_unknown_option_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "data", "demo", "--no-such-flag")
    assert code == 2 and "No such option" in err
