"""Preference tuning keeps SFT's guarantees: masks on exactly the completion, exact accumulation,
exact resume after SIGKILL, the reference the user expects, and clear refusals."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import load_config
from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.train import sft
from tunesmith.train.pairs import tokenize_completion

from train_fixtures import kill_at_first_checkpoint, train_command

REPO = Path(__file__).resolve().parents[2]


_count = iter(range(10**6))


@pytest.fixture
def pref_config(tiny_model, pairs_dir, tmp_path):
    def make(*overrides: str, data: Path | None = None) -> TrainConfig:
        base = [f"model={tiny_model}", f"data={data or pairs_dir}", f"output_dir={tmp_path / f'pref{next(_count)}'}",
                "train.max_steps=2", "train.micro_batch_size=4", "train.max_seq_len=320", "train.learning_rate=1e-2",
                "train.log_every=1", "lora.r=4", "objective=dpo"]
        return load_config(TrainConfig, None, [*base, *overrides])
    return make


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    if (run_dir / "adapter").is_dir():
        return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=0), (key, (a[key] - b[key]).abs().max())


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("name", ["chatml", "llama3", "gemma"])
def test_log_probs_cover_exactly_the_completion_and_its_end_of_turn(name):
    from chat_helpers import A1, A2, Q1, Q2, build_families, labelled_runs

    family = build_families()[name]
    tok = family.tokenizer
    prompt = [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}, {"role": "user", "content": Q2}]
    chosen = tokenize_completion(tok, prompt, [{"role": "assistant", "content": A2}], 512)
    rejected = tokenize_completion(tok, prompt, [{"role": "assistant", "content": A1}], 512)
    # the earlier assistant turn of the prompt carries nothing; the completion and its stop token do
    assert labelled_runs(tok, chosen["labels"]) == [family.answer_text(A2)]
    assert labelled_runs(tok, rejected["labels"]) == [family.answer_text(A1)]
    start = next(i for i, label in enumerate(chosen["labels"]) if label != -100)
    assert chosen["input_ids"][:start] == rejected["input_ids"][:start]  # the same prompt tokens


# --------------------------------------------------------------------------- training invariants


@pytest.mark.parametrize("objective", ["dpo", "orpo", "kto"])
def test_accumulation_equals_the_large_batch(pref_config, kto_dir, objective):
    """4 micro-batches of 1 (or 2 of 2) make the update of one batch of 4: losses are divided by
    the step's pairs (ORPO's NLL by its chosen tokens), and KTO's KL estimate covers the step."""
    data = kto_dir if objective == "kto" else None
    common = [f"objective={objective}", "lora.dropout=0", "train.max_steps=2"]
    big = sft.run(pref_config(*common, "train.micro_batch_size=4", data=data))
    runs = [sft.run(pref_config(*common, f"train.micro_batch_size={m}", f"train.gradient_accumulation_steps={4 // m}",
                                data=data)) for m in (2, 1)]
    reference = _weights(big.output_dir)
    assert any(v.abs().max() > 0 for k, v in reference.items() if "lora_B" in k)
    def figures(run_dir, key):
        return [r[key] for r in _metrics(run_dir) if key in r]

    for other in runs:
        # Gradients agree to float32 noise (~1e-9 here); Adam's division by sqrt(v) + 1e-8 turns
        # noise on near-zero gradient entries into weight differences of a few 1e-6, while a
        # wrong weighting of micro-batches moves the weights by about the learning rate (1e-2).
        _assert_same(reference, _weights(other.output_dir), atol=1e-5)
        assert figures(other.output_dir, "loss") == pytest.approx(figures(big.output_dir, "loss"), abs=1e-5)
        assert figures(other.output_dir, "grad_norm") == pytest.approx(figures(big.output_dir, "grad_norm"),
                                                                       rel=1e-5)


def test_dpo_reference_is_the_base_with_the_adapter_disabled(pref_config):
    """A new LoRA adapter starts as the base (B = 0): the first step's policy equals the
    reference, so the loss is exactly log 2, every reward 0; then the policy moves away."""
    result = sft.run(pref_config("train.max_steps=3", "lora.dropout=0"))
    records = [r for r in _metrics(result.output_dir) if "rewards/chosen" in r]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[0]["rewards/chosen"] == 0 and records[0]["rewards/rejected"] == 0
    assert records[-1]["rewards/margins"] != 0
    assert not (result.output_dir / "reference_logps.safetensors").exists()  # nothing precomputed: no copy needed
    for key in ("rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert key in records[-1]
    assert any("val_rewards/margins" in r for r in _metrics(result.output_dir))
    assert (result.output_dir / "loss.png").is_file() and (result.output_dir / "reward_margin.png").is_file()
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["objective"] == "dpo"


def test_init_from_an_sft_run_uses_that_adapter_frozen_as_the_reference(pref_config, make_config):
    """DPO after SFT: the run starts from the SFT adapter and the reference is that adapter
    (log-probabilities computed once and stored), so the first step's loss is log 2 again."""
    sft_run = sft.run(make_config("train.max_steps=3", "lora.dropout=0"))
    result = sft.run(pref_config(f"init_from={sft_run.output_dir}", "lora.dropout=0", "train.max_steps=2"))
    first = _metrics(result.output_dir)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert (result.output_dir / "reference_logps.safetensors").is_file()
    sft_weights = _weights(sft_run.output_dir)
    dpo_weights = _weights(result.output_dir)
    assert sft_weights.keys() == dpo_weights.keys()
    assert any(not torch.equal(sft_weights[k], dpo_weights[k]) for k in sft_weights)


@pytest.mark.parametrize("method,objective", [("full", "dpo"), ("lora", "kto")])
def test_resume_after_sigkill_ends_with_identical_weights(pref_config, kto_dir, method, objective):
    """Kill -9 mid-run, resume, finish bit-identical to an uninterrupted run (atol=0). For full
    fine-tuning the reference log-probabilities are read back from the run, not recomputed from
    the trained weights (which would change every later step)."""
    data = kto_dir if objective == "kto" else None
    settings = ["train.max_steps=12", "train.save_every=3", "train.micro_batch_size=2", f"method={method}",
                f"objective={objective}", "lora.dropout=0.1", "train.log_every=3", "train.learning_rate=1e-3"]

    def args(cfg) -> list[str]:
        sets = [f"model={cfg.model.path}", f"data={cfg.data.path[0]}", f"output_dir={cfg.output_dir}",
                "train.max_seq_len=320", "lora.r=4", *settings]
        return [a for s in sets for a in ("--set", s)]

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    reference = pref_config(*settings, data=data)
    done = subprocess.run(train_command(*args(reference)), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = pref_config(*settings, data=data)
    killed_at = kill_at_first_checkpoint(args(cfg), cfg.output_dir, env, timeout=300)
    assert not (cfg.output_dir / ("model" if method == "full" else "adapter")).exists()
    resumed = subprocess.run(train_command(*args(cfg), "--resume", "latest"), capture_output=True, text=True,
                             timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed_at}" in resumed.stderr
    if method == "full":
        assert "reference log-probabilities read from" in resumed.stderr
    _assert_same(_weights(reference.output_dir), _weights(cfg.output_dir), atol=0)


# --------------------------------------------------------------------------- refusals


def test_divergence_guard_stops_a_preference_run(pref_config):
    with pytest.raises(TrainingError, match="training diverged at step 2: the loss is nan"):
        sft.run(pref_config("train.learning_rate=1e30", "train.max_steps=3", "lora.dropout=0"))


def test_data_of_the_wrong_kind_and_unsupported_settings_are_refused(pref_config, kto_dir, prepared):
    with pytest.raises(TrainingError, match="holds conversations; this objective needs preference pairs"):
        sft.run(pref_config(data=prepared))
    with pytest.raises(TrainingError, match="holds preference pairs; supervised fine-tuning needs"):
        sft.run(pref_config("objective=sft"))
    with pytest.raises(TrainingError, match="beta is 0.0"):
        sft.run(pref_config("preference.beta=0"))
    with pytest.raises(TrainingError, match="supports method: lora or qlora"):
        sft.run(pref_config("objective=kto", "method=full", data=kto_dir))
    with pytest.raises(TrainingError, match="loss_type applies to objective: dpo"):
        sft.run(pref_config("objective=simpo", "preference.loss_type=ipo"))
    # sharded strategies are refused before the first step (they need a multi-process launch to reach)
    from types import SimpleNamespace

    from tunesmith.train.objectives import for_config

    for strategy in ("fsdp", "deepspeed_zero3"):
        with pytest.raises(TrainingError, match=f"does not run under train.distributed: {strategy}"):
            for_config(pref_config()).before_training(SimpleNamespace(sharding=SimpleNamespace(name=strategy)))


def test_two_process_ddp_dpo_matches_single_process(pref_config):
    """DDP (gloo, CPU): 2 processes × 2 pairs make the update of one process with 4 pairs
    (accumulation 2 × 2), and only rank 0 writes."""
    settings = ["train.micro_batch_size=2", "lora.dropout=0", "train.max_steps=2", "train.log_every=1"]
    single = sft.run(pref_config(*settings, "train.gradient_accumulation_steps=2"))
    cfg = pref_config(*settings)
    sets = [f"model={cfg.model.path}", f"data={cfg.data.path[0]}", f"output_dir={cfg.output_dir}",
            "train.max_seq_len=320", "train.learning_rate=1e-2", "lora.r=4", "objective=dpo", *settings]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tunesmith", "train", *[a for s in sets for a in ("--set", s)]],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((cfg.output_dir / "manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "strategy": "ddp", "ranks_agree": True}
    assert proc.stderr.count("saved ") == 1
    _assert_same(_weights(single.output_dir), _weights(cfg.output_dir), atol=1e-5)
    ours = [r["loss"] for r in _metrics(cfg.output_dir) if "loss" in r]
    assert ours == pytest.approx([r["loss"] for r in _metrics(single.output_dir) if "loss" in r], abs=1e-5)


def test_dpo_with_qlora_trains_on_cpu(pref_config, tmp_path):
    """QLoRA: the reference is the 4-bit base with the adapter disabled; the first step is log 2."""
    pytest.importorskip("bitsandbytes")
    from train_fixtures import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny64", hidden=64)
    result = sft.run(pref_config(f"model={model_dir}", "method=qlora", "lora.dropout=0"))
    records = _metrics(result.output_dir)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert any(v.abs().max() > 0 for k, v in _weights(result.output_dir).items() if "lora_B" in k)
