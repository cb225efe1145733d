"""The model registry: version numbering, refs, aliases guarding removal, lineage from a run dir,
and the `models list|show|rm|add` commands."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunesmith.registry.cli import registry_app
from tunesmith.registry.lineage import version_fields
from tunesmith.registry.store import Registry, RegistryError


def _run_dir(tmp_path, name="run"):
    run = tmp_path / name
    (run / "adapter").mkdir(parents=True)
    (run / "data").mkdir()
    (run / "data" / "train.jsonl").write_text("{}\n")
    (run / "data" / "manifest.json").write_text(json.dumps({"stage": "data"}))
    (run / "manifest.json").write_text(json.dumps({
        "stage": "train", "method": "lora", "steps": 4, "trained_tokens": 900, "best_val_loss": 1.25,
        "base_model": {"path": "/models/base", "weights_sha256": "abc"},
        "inputs": {"data": [{"path": str(run / "data" / "train.jsonl"), "sha256": "t" * 64},
                            {"path": str(run / "data" / "val.jsonl"), "sha256": "v" * 64}]}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2, "learning_rate": 0.001, "seed": 9}}))
    (run / "metrics.jsonl").write_text('{"step": 4, "loss": 1.5}\n{"step": 4, "val_loss": 1.25}\n')
    return run


def test_lineage_reads_the_run(tmp_path):
    fields = version_fields(_run_dir(tmp_path))
    assert fields["base_path"] == "/models/base" and fields["base_sha256"] == "abc"
    assert fields["training_file_sha256"] == "t" * 64 and fields["validation_file_sha256"] == "v" * 64
    assert fields["hyperparameters"] == {"method": "lora", "epochs": 2, "learning_rate": 0.001, "seed": 9}
    assert fields["metrics"]["train_loss"] == 1.5 and fields["metrics"]["valid_loss"] == 1.25
    assert [link["stage"] for link in fields["manifest_chain"]] == ["train", "data"]


def test_a_directory_without_a_finished_run_is_refused(tmp_path):
    with pytest.raises(RegistryError):
        version_fields(tmp_path)
    run = _run_dir(tmp_path)
    (run / "adapter").rmdir()
    with pytest.raises(RegistryError):
        version_fields(run)


def test_versions_are_numbered_per_name_and_found_by_ref(tmp_path):
    registry = Registry(tmp_path / "r.sqlite3")
    fields = version_fields(_run_dir(tmp_path))
    first = registry.add("tickets", source="run:a", **fields)
    second = registry.add("tickets", source="run:b", **fields)
    other = registry.add("faq", source="run:c", **fields)
    assert (first.ref, second.ref, other.ref) == ("tickets@1", "tickets@2", "faq@1")
    assert registry.get("tickets").version == 2 and registry.get("tickets@1").source == "run:a"
    with pytest.raises(RegistryError):
        registry.get("tickets@7")
    with pytest.raises(RegistryError):
        registry.add("bad@name", source="x", **fields)


def test_removal_refuses_a_version_an_alias_points_at(tmp_path):
    registry = Registry(tmp_path / "r.sqlite3")
    fields = version_fields(_run_dir(tmp_path))
    registry.add("tickets", source="a", **fields)
    registry.add("tickets", source="b", **fields)
    with registry.db.transaction() as conn:
        conn.execute("INSERT INTO aliases (name, alias, version, updated_at) VALUES ('tickets', 'prod', 1, 0)")
    assert registry.get("tickets@prod").version == 1
    with pytest.raises(RegistryError):
        registry.remove("tickets@1")
    assert [v.ref for v in registry.remove("tickets@2")] == ["tickets@2"]
    assert [v.ref for v in registry.list()] == ["tickets@1"]


def test_models_commands_edit_the_same_registry(tmp_path):
    run = _run_dir(tmp_path, "ticket-run")
    db = str(tmp_path / "cli.sqlite3")
    runner = CliRunner()
    added = runner.invoke(registry_app, ["add", str(run), "--registry", db])
    assert added.exit_code == 0 and "registered ticket-run@1" in added.output
    listed = runner.invoke(registry_app, ["list", "--json", "--registry", db])
    assert [v["ref"] for v in json.loads(listed.output)] == ["ticket-run@1"]
    shown = json.loads(runner.invoke(registry_app, ["show", "ticket-run@1", "--registry", db]).output)
    assert shown["base_sha256"] == "abc" and shown["source"] == f"run:{run.resolve()}"
    assert runner.invoke(registry_app, ["rm", "ticket-run", "--registry", db]).exit_code == 0
    assert json.loads(runner.invoke(registry_app, ["list", "--json", "--registry", db]).output) == []
