"""Retraining from a registry version: `init_from: NAME@VERSION` continues that version's adapter
with its tokenizer and template, and `data.replay` mixes a stated share of the data it was trained
on into the new training set, deterministically, so a resumed run trains on the same set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.registry.aliases import Aliases
from tunesmith.registry.lineage import version_fields
from tunesmith.registry.store import Registry, RegistryError
from tunesmith.train import sft

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_MARK = "{# continued-template #}"


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _rows(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def v1(make_config, tmp_path):
    """A finished run registered as tickets@1 and promoted, with a recognisable chat template."""
    result = sft.run(make_config())
    config_path = result.output_dir / "adapter" / "tokenizer_config.json"
    template_file = result.output_dir / "adapter" / "chat_template.jinja"
    if template_file.is_file():
        template_file.write_text(TEMPLATE_MARK + template_file.read_text())
    else:
        config = json.loads(config_path.read_text())
        config["chat_template"] = TEMPLATE_MARK + config["chat_template"]
        config_path.write_text(json.dumps(config))
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.add("tickets", source=f"run:{result.output_dir}", **version_fields(result.output_dir))
    Aliases(registry).promote("tickets@1", actor="test")
    registry.close()
    return result.output_dir


@pytest.fixture
def new_data(tmp_path) -> Path:
    directory = tmp_path / "v2-data"
    directory.mkdir()
    lines = (REPO / "examples/data/tickets/train.jsonl").read_text().splitlines()
    (directory / "train.jsonl").write_text("\n".join(lines[60:74]) + "\n")  # 14 examples v1 never saw
    (directory / "val.jsonl").write_text("\n".join(lines[74:78]) + "\n")
    return directory


@pytest.mark.parametrize("given", ["tickets@1", "tickets"])
def test_init_from_a_registry_name_continues_that_versions_adapter_and_template(v1, make_config, tmp_path, given):
    # A learning rate too small to move the weights: the run ends where it started.
    result = sft.run(make_config(f"init_from={given}", f"registry={tmp_path / 'registry.sqlite3'}",
                                 "train.learning_rate=1e-12", "train.max_steps=1", "lora.r=8"))
    before, after = _adapter(v1), _adapter(result.output_dir)
    assert before.keys() == after.keys()  # v1's shape (r=4), not the r=8 of this config
    for key in before:
        assert torch.allclose(before[key], after[key], atol=1e-7), key
    assert any(v.abs().max() > 0 for k, v in before.items() if "lora_B" in k)  # a fresh adapter's B is zero
    saved = result.output_dir / "adapter"
    template = (saved / "chat_template.jinja").read_text() if (saved / "chat_template.jinja").is_file() else \
        json.loads((saved / "tokenizer_config.json").read_text())["chat_template"]
    assert template.startswith(TEMPLATE_MARK)
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["init_from"] == {"given": given, "ref": "tickets@1", "run_dir": str(v1),
                                     "weights": str(v1 / "adapter"), "kind": "adapter"}
    assert f"init_from: {given}" in (result.output_dir / "config.yaml").read_text()


def test_init_from_a_run_directory_is_recorded_without_a_registry(v1, make_config):
    result = sft.run(make_config(f"init_from={v1}", "train.max_steps=1"))
    record = json.loads((result.output_dir / "manifest.json").read_text())["init_from"]
    assert (record["ref"], record["run_dir"], record["kind"]) == (None, str(v1), "adapter")


@pytest.mark.parametrize("given, message", [
    ("faq@1", "has no model named 'faq'"),
    ("tickets@7", "tickets has no version 7"),
    ("tickets:canary", "tickets has no alias 'canary'"),
    ("no/such/run", "is not a directory"),
])
def test_unknown_names_and_versions_are_refused_before_any_work(v1, make_config, tmp_path, given, message):
    cfg = make_config(f"init_from={given}", f"registry={tmp_path / 'registry.sqlite3'}")
    with pytest.raises(RegistryError, match=message):
        sft.run(cfg)
    assert not (cfg.output_dir / "manifest.json").exists()


def test_a_registry_that_does_not_exist_is_refused_and_not_created(make_config, tmp_path):
    missing = tmp_path / "nowhere" / "registry.sqlite3"
    with pytest.raises(RegistryError, match="does not exist"):
        sft.run(make_config("init_from=tickets@1", f"registry={missing}"))
    assert not missing.exists()


def test_a_version_trained_on_another_base_is_refused(v1, make_config, tmp_path):
    with pytest.raises(RegistryError, match="was trained on the base"):
        sft.run(make_config("init_from=tickets@1", f"registry={tmp_path / 'registry.sqlite3'}", "model=default"))


def test_a_full_fine_tune_version_continues_as_a_whole_model(make_config, tmp_path):
    v1 = sft.run(make_config("method=full", "train.max_steps=1")).output_dir
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.add("faq", source=f"run:{v1}", **version_fields(v1))
    registry.close()
    args = ["init_from=faq@1", f"registry={tmp_path / 'registry.sqlite3'}"]
    with pytest.raises(RegistryError, match="is a full fine-tune; method: lora"):
        sft.run(make_config(*args))
    result = sft.run(make_config(*args, "method=full", "train.learning_rate=1e-12", "train.max_steps=1"))
    before = load_file(str(v1 / "model" / "model.safetensors"))
    after = load_file(str(result.output_dir / "model" / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.allclose(before[k], after[k], atol=1e-7) for k in before)
    assert json.loads((result.output_dir / "manifest.json").read_text())["init_from"]["kind"] == "full"


def test_replay_mixes_the_stated_share_of_the_previous_versions_training_data(v1, make_config, new_data, tmp_path,
                                                                              capsys):
    args = [f"data={{path: {new_data}, replay: {{share: 0.3}}}}", "init_from=tickets@1",
            f"registry={tmp_path / 'registry.sqlite3'}", "train.max_steps=1"]
    result = sft.run(make_config(*args))
    mixed = _rows(result.output_dir / "replay" / "train.jsonl")
    new = set(_rows(new_data / "train.jsonl"))
    v1_train = Path(json.loads((v1 / "manifest.json").read_text())["inputs"]["data"][0]["path"])
    old = set(_rows(v1_train))
    # 14 new examples; 0.3 of the result replayed -> round(14 * 0.3 / 0.7) = 6 old ones, no repeats.
    assert len(mixed) == 20 and len(set(mixed)) == 20
    assert sum(line in new for line in mixed) == 14 and sum(line in old for line in mixed) == 6
    record = json.loads((result.output_dir / "manifest.json").read_text())
    replay = record["data_replay"]
    assert (replay["new"], replay["replayed"], replay["wanted"], replay["ref"]) == (14, 6, 6, "tickets@1")
    assert replay["share"] == pytest.approx(0.3) and replay["file"] == str(v1_train)
    # The mixed set is the run's recorded training file, so replaying this run includes v1's examples.
    assert record["inputs"]["data"][0]["path"] == str(result.output_dir / "replay" / "train.jsonl")
    assert "replay: 14 new examples and 6 from tickets@1 (30.0% replayed" in capsys.readouterr().err
    lineage = version_fields(result.output_dir)["hyperparameters"]  # what `models add` records for v2
    assert lineage["init_from"] == "tickets@1" and lineage["replay"]["replayed"] == 6
    again = sft.run(make_config(*args))
    assert _rows(again.output_dir / "replay" / "train.jsonl") == mixed  # the seed decides, nothing else


def test_replay_refuses_a_training_file_changed_since(v1, make_config, new_data, tmp_path):
    v1_train = Path(json.loads((v1 / "manifest.json").read_text())["inputs"]["data"][0]["path"])
    saved = v1_train.read_text()
    try:
        v1_train.write_text(saved.replace("a", "b", 1))
        with pytest.raises(RegistryError, match="changed since"):
            sft.run(make_config(f"data={{path: {new_data}, replay: {{source: {v1}, share: 0.3}}}}"))
    finally:
        v1_train.write_text(saved)


def test_a_resumed_replay_run_ends_with_the_uninterrupted_runs_weights(v1, make_config, new_data, tmp_path):
    args = [f"data={{path: {new_data}, replay: {{share: 0.3}}}}", "init_from=tickets@1",
            f"registry={tmp_path / 'registry.sqlite3'}", "train.max_steps=3", "train.save_every=1", "train.keep_checkpoints=3",
            "lora.dropout=0"]
    whole = sft.run(make_config(*args))
    resumed = make_config(*args)
    checkpoint = whole.output_dir / "checkpoints" / "step-0000002"
    shutil.copytree(checkpoint, resumed.output_dir / "checkpoints" / checkpoint.name)
    sft.run(resumed, resume=True)
    a, b = _adapter(whole.output_dir), _adapter(resumed.output_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
