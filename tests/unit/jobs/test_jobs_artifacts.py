"""Servable checkpoints, the results CSV, metrics reading and model names."""

from __future__ import annotations

import csv
import io
import json

import torch
from safetensors.torch import load_file, save_file

from tunesmith.models.config import ModelConfig
from tunesmith.jobs import artifacts
from tunesmith.models.loading import load_model


def test_model_names_have_openais_shape():
    name = artifacts.model_name("gpt-4o-mini-2024-07-18", "acme", "tickets", "ftjob-AbCdEfGh123")
    assert name == "ft:gpt-4o-mini-2024-07-18:acme:tickets:AbCdEfGh"
    assert artifacts.checkpoint_name(name, 10) == name + ":ckpt-step-10"
    assert artifacts.model_name("b", "o", None, "ftjob-12345678x") == "ft:b:o::12345678"


def test_read_metrics_waits_for_a_line_being_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    records, offset = artifacts.read_metrics(path)
    assert records == [{"step": 1, "loss": 2.0}]
    with open(path, "a") as fh:
        fh.write('ss": 1.5}\n')
    assert artifacts.read_metrics(path, offset)[0] == [{"step": 2, "loss": 1.5}]


def test_results_csv_has_a_row_per_step_with_validation_on_its_step():
    text = artifacts.results_csv([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "val_loss": 1.7}])
    rows = list(csv.DictReader(io.StringIO(text.decode())))
    assert rows == [{"step": "1", "train_loss": "2.0", "train_accuracy": "", "valid_loss": "", "valid_mean_token_accuracy": ""},
                    {"step": "2", "train_loss": "1.5", "train_accuracy": "", "valid_loss": "1.7", "valid_mean_token_accuracy": ""}]


def _trained(tmp_path):
    """A final adapter (PEFT's save) and a checkpoint (training's parameter names, other values)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(ModelConfig(), device="cpu"), LoraConfig(r=2, target_modules=["q_proj"]))
    final = tmp_path / "adapter"
    model.save_pretrained(final)
    checkpoint = tmp_path / "step-0000002"
    checkpoint.mkdir()
    weights = {n: torch.full_like(p, 0.5) for n, p in model.named_parameters() if "lora_" in n}
    save_file(weights, str(checkpoint / "trainable.safetensors"))
    return final, checkpoint, weights


def test_checkpoint_becomes_an_adapter_with_its_own_weights(tmp_path):
    final, checkpoint, weights = _trained(tmp_path)
    out = tmp_path / "ckpt"
    assert artifacts.export_checkpoint(checkpoint, final, out)
    exported = load_file(str(out / "adapter_model.safetensors"))
    assert set(exported) == set(load_file(str(final / "adapter_model.safetensors")))
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in exported.values())
    assert json.loads((out / "adapter_config.json").read_text()) == json.loads((final / "adapter_config.json").read_text())


def test_checkpoint_with_other_tensors_is_not_exported(tmp_path):
    final, checkpoint, weights = _trained(tmp_path)
    weights.pop(next(iter(weights)))
    save_file(weights, str(checkpoint / "trainable.safetensors"))
    assert not artifacts.export_checkpoint(checkpoint, final, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_results_csv_carries_the_token_accuracies():
    text = artifacts.results_csv([{"step": 1, "loss": 2.0, "mean_token_accuracy": 0.25},
                                  {"step": 1, "val_loss": 1.9, "val_mean_token_accuracy": 0.5}])
    (row,) = csv.DictReader(io.StringIO(text.decode()))
    assert row == {"step": "1", "train_loss": "2.0", "train_accuracy": "0.25", "valid_loss": "1.9",
                   "valid_mean_token_accuracy": "0.5"}
