"""A LoRA run writes `adapter-layout/` at its start, so each checkpoint can be served
as an adapter while the run goes on: the last checkpoint exported with that layout is exactly the
run's final adapter (same config, same tensors), and the metrics carry the token accuracies."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tunesmith.jobs.artifacts import ADAPTER_LAYOUT, complete_checkpoints, export_checkpoint
from tunesmith.train.sft import run


def test_the_last_checkpoint_with_the_layout_is_the_final_adapter(make_config, tmp_path):
    cfg = make_config("train.save_every=1", "train.eval_every=2")
    result = run(cfg)
    out = result.output_dir
    layout = out / ADAPTER_LAYOUT
    assert (layout / "adapter_config.json").is_file() and (layout / "tokenizer_config.json").is_file()
    last = complete_checkpoints(out)[-1]
    assert export_checkpoint(last, layout, tmp_path / "served")
    final = out / "adapter"
    assert json.loads((tmp_path / "served" / "adapter_config.json").read_text()) == \
        json.loads((final / "adapter_config.json").read_text())
    served, trained = (load_file(str(d / "adapter_model.safetensors")) for d in (tmp_path / "served", final))
    assert served.keys() == trained.keys()
    for name in trained:
        assert torch.equal(served[name], trained[name]), name

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all(0.0 <= r["mean_token_accuracy"] <= 1.0 for r in steps)
    assert any(0.0 <= r.get("val_mean_token_accuracy", -1) <= 1.0 for r in records)
