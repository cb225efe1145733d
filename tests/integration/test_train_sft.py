"""The training invariants users rely on, each with a test that fails if it breaks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.errors import TrainingError
from tunesmith.train import distributed, sft
from tunesmith.train.batching import BatchPlan, tokenize_rows
from tunesmith.train.checkpoint import latest_checkpoint, load_checkpoint
from tunesmith.train.environment import Dist
from tunesmith.train.optim import lr_at
from tunesmith.train.data import read_jsonl

from train_fixtures import kill_at_first_checkpoint, train_command


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=0), (key, (a[key] - b[key]).abs().max())


def grad_norms(run_dir: Path) -> list[float]:
    return [r["grad_norm"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "grad_norm" in r]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("packing", [False, True])
def test_gradient_accumulation_equals_the_large_batch(make_config, packing):
    """4 micro-batches of 1 (or 2 of 2) give the update of one batch of 4, token-weighted, even
    though the examples hold different numbers of trained tokens."""
    common = [f"train.packing={packing}", "lora.dropout=0", "train.max_steps=2"]
    big = sft.run(make_config(*common, "train.micro_batch_size=4", "train.gradient_accumulation_steps=1"))
    split2 = sft.run(make_config(*common, "train.micro_batch_size=2", "train.gradient_accumulation_steps=2"))
    split4 = sft.run(make_config(*common, "train.micro_batch_size=1", "train.gradient_accumulation_steps=4"))
    reference = adapter_weights(big.output_dir)
    assert any(v.abs().max() > 0 for k, v in reference.items() if "lora_B" in k)  # training moved the adapter
    for other in (split2, split4):
        assert_same_weights(reference, adapter_weights(other.output_dir), atol=2e-6)
        assert losses(other.output_dir) == pytest.approx(losses(big.output_dir), abs=1e-5)


def test_micro_batches_hold_different_token_counts(make_config, tiny_model):
    """Guards the test above: with equal counts a plain mean of micro-batch means would pass too."""
    from transformers import AutoTokenizer

    cfg = make_config("train.packing=false", "train.micro_batch_size=1", "train.gradient_accumulation_steps=4")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = tokenize_rows(read_jsonl(cfg.data.path[0] / "train.jsonl"), tokenizer, cfg.train, "train")
    plan = BatchPlan(data, cfg.train, Dist(), pad_id=tokenizer.pad_token_id)
    counts = [b.num_trained_tokens for b in plan.micro_batches_for_step(0)]
    assert len(set(counts)) > 1


def test_batch_plan_is_deterministic_and_shards_disjointly(make_config, tiny_model):
    from transformers import AutoTokenizer

    cfg = make_config("train.packing=false", "train.micro_batch_size=2", "train.gradient_accumulation_steps=2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = tokenize_rows(read_jsonl(cfg.data.path[0] / "train.jsonl"), tokenizer, cfg.train, "train")

    def seen(rank: int, world: int, step: int) -> list[tuple[int, ...]]:
        plan = BatchPlan(data, cfg.train, Dist(rank=rank, world_size=world), pad_id=tokenizer.pad_token_id)
        return [tuple(row.tolist()) for b in plan.micro_batches_for_step(step) for row in b.tensors["input_ids"]]

    assert seen(0, 1, 3) == seen(0, 1, 3)
    assert seen(0, 1, 0) != seen(0, 1, 1)
    rank0, rank1 = set(seen(0, 2, 0)), set(seen(1, 2, 0))
    assert rank0 and rank1 and not rank0 & rank1
    plan = BatchPlan(data, cfg.train, Dist(), pad_id=0)
    epoch0 = {tuple(r.tolist()) for s in range(plan.steps_per_epoch) for b in plan.micro_batches_for_step(s)
              for r in b.tensors["input_ids"]}
    epoch1_first = seen(0, 1, plan.steps_per_epoch)
    assert epoch1_first != seen(0, 1, 0)  # a new shuffle each epoch
    assert len(epoch0) == plan.steps_per_epoch * 4


def test_padding_is_never_trained(make_config, tiny_model):
    from transformers import AutoTokenizer

    cfg = make_config("train.packing=false", "train.micro_batch_size=4")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = tokenize_rows(read_jsonl(cfg.data.path[0] / "train.jsonl"), tokenizer, cfg.train, "train")
    batch = BatchPlan(data, cfg.train, Dist(), pad_id=tokenizer.pad_token_id).micro_batches_for_step(0)[0]
    padding = batch.tensors["attention_mask"] == 0
    assert padding.any()
    assert (batch.tensors["labels"][padding] == -100).all()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained = batch.tensors["labels"][batch.tensors["labels"] != -100]
    assert (trained == im_end).sum() >= 4  # every assistant turn's end-of-turn token is a target
    assert tokenizer.pad_token_id not in trained.tolist()


def test_lr_schedule_shapes(make_config):
    s = make_config("train.warmup_ratio=0.1", "train.learning_rate=1.0").train
    assert lr_at(0, 100, s) == pytest.approx(0.1)
    assert lr_at(9, 100, s) == pytest.approx(1.0)
    assert lr_at(55, 100, s) == pytest.approx(0.5, abs=0.01)
    assert lr_at(99, 100, s) < 0.01
    linear = make_config("train.lr_scheduler=linear", "train.warmup_ratio=0", "train.learning_rate=1.0").train
    assert lr_at(50, 100, linear) == pytest.approx(0.5)
    const = make_config("train.lr_scheduler=constant", "train.warmup_ratio=0", "train.learning_rate=1.0").train
    assert lr_at(99, 100, const) == 1.0


def test_resume_after_sigkill_ends_with_identical_weights(make_config, tmp_path):
    """Kill -9 mid-run, resume, and finish with the adapter an uninterrupted run produces.

    All runs are subprocesses with the same environment: the comparison is bit for bit, so they
    must use the same number of threads (float summation order)."""
    settings = ["train.max_steps=40", "train.save_every=5", "train.micro_batch_size=1", "train.packing=false",
                "lora.dropout=0.1", "train.log_every=5"]

    def cli_args(cfg) -> list[str]:
        return [a for s in [f"model={cfg.model.path}", f"data={cfg.data.path[0]}", f"output_dir={cfg.output_dir}",
                            "train.max_seq_len=256", "train.learning_rate=1e-2", "lora.r=4", *settings]
                for a in ("--set", s)]

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    reference = make_config(*settings)
    done = subprocess.run(train_command(*cli_args(reference)), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = make_config(*settings)
    killed_at = kill_at_first_checkpoint(cli_args(cfg), cfg.output_dir, env, timeout=180)
    checkpoints = cfg.output_dir / "checkpoints"
    assert not (cfg.output_dir / "adapter").exists(), "the run finished before it was killed"
    # Debris a crash can leave must never be taken for a checkpoint.
    (checkpoints / ".tmp-step-0000039").mkdir()
    (checkpoints / "step-0000038").mkdir()
    resumed = subprocess.run(train_command(*cli_args(cfg), "--resume", "latest"), capture_output=True, text=True,
                             timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed_at}" in resumed.stderr
    assert_same_weights(adapter_weights(reference.output_dir), adapter_weights(cfg.output_dir), atol=0)


def test_existing_run_is_not_overwritten(make_config):
    cfg = make_config()
    sft.run(cfg)
    with pytest.raises(TrainingError, match="already holds a training run"):
        sft.run(cfg)
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        sft.run(make_config(), resume=True)


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(make_config):
    cfg = make_config("train.learning_rate=1e30", "train.max_steps=6", "train.save_every=1",
                      "train.warmup_ratio=0", "train.lr_scheduler=constant")
    with pytest.raises(TrainingError) as exc:
        sft.run(cfg)
    message = str(exc.value)
    assert "diverged at step" in message
    step = int(message.split("diverged at step ")[1].split(":")[0])
    kept = latest_checkpoint(cfg.output_dir / "checkpoints")
    assert kept is not None and int(kept.name.split("-")[1]) == step - 1
    assert str(kept) in message
    assert not (cfg.output_dir / "adapter").exists()


def test_nonfinite_steps_can_be_skipped(make_config):
    cfg = make_config("train.learning_rate=1e30", "train.max_steps=4", "train.warmup_ratio=0",
                      "train.lr_scheduler=constant", "train.skip_nonfinite_steps=true")
    result = sft.run(cfg)
    assert result.skipped_steps
    manifest = json.loads((cfg.output_dir / "manifest.json").read_text())
    assert manifest["skipped_steps"] == result.skipped_steps


def test_full_fine_tuning_trains_every_weight(make_config, tiny_model):
    from transformers import AutoModelForCausalLM

    result = sft.run(make_config("method=full", "train.learning_rate=1e-3"))
    tuned = AutoModelForCausalLM.from_pretrained(result.output_dir / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert result.trainable_parameters == result.total_parameters
    changed = [n for (n, p), q in zip(tuned.named_parameters(), base.parameters()) if not torch.equal(p, q)]
    assert len(changed) == len(list(base.parameters()))


def test_qlora_trains_on_cpu(make_config, tmp_path):
    pytest.importorskip("bitsandbytes")
    from train_fixtures import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny64", hidden=64)
    result = sft.run(make_config(f"model={model_dir}", "method=qlora"))
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["method"] == "qlora"
    assert "quantization: 4bit" in (result.output_dir / "config.yaml").read_text()
    weights = adapter_weights(result.output_dir)
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)
    assert result.final_loss is not None and result.final_loss == result.final_loss


def test_outputs_and_manifest(make_config):
    result = sft.run(make_config("train.max_steps=3"))
    out = result.output_dir
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json",
                 "metrics.jsonl", "loss.png", "config.yaml", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["trainable"] < manifest["parameters"]["total"]
    assert manifest["base_model"]["weights_sha256"]
    assert manifest["seed"] == 42 and manifest["libraries"]["torch"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["tokens_per_s"] > 0 and "grad_norm" in r and "lr" in r for r in steps)
    assert any("val_loss" in r for r in records)


DISTRIBUTED_SETTINGS = ["train.micro_batch_size=2", "train.packing=false", "lora.dropout=0", "train.log_every=1"]


def _torchrun(cfg, settings: list[str], *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m tunesmith train` on CPU (gloo) with the run's settings."""
    sets = [a for s in [f"model={cfg.model.path}", f"data={cfg.data.path[0]}", f"output_dir={cfg.output_dir}",
                        "train.max_seq_len=256", "train.learning_rate=1e-2", "lora.r=4", *settings]
            for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tunesmith", "train", *sets, *flags],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _assert_matches_single_process(single: Path, multi: Path, atol: float = 1e-5) -> None:
    # Summation order differs between ranks and one process, so allow float noise; a wrong
    # token weighting moves weights by ~learning rate (1e-2) and shows in the gradient norm.
    assert_same_weights(adapter_weights(single), adapter_weights(multi), atol=atol)
    assert losses(multi) == pytest.approx(losses(single), abs=1e-5)
    assert grad_norms(multi) == pytest.approx(grad_norms(single), rel=1e-4)


def test_two_process_ddp_matches_single_process_and_only_rank0_writes(make_config):
    """torchrun with 2 CPU processes (gloo): the ranks agree, the result equals one process
    accumulating the same global batch, and outputs are written once."""
    settings = [*DISTRIBUTED_SETTINGS, "train.max_steps=3"]
    single = sft.run(make_config(*settings, "train.gradient_accumulation_steps=2"))
    cfg = make_config(*settings, "train.gradient_accumulation_steps=1")
    proc = _torchrun(cfg, [*settings, "train.gradient_accumulation_steps=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((cfg.output_dir / "manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "strategy": "ddp", "ranks_agree": True}
    assert len(losses(cfg.output_dir)) == 3  # one record per step: only rank 0 logs
    assert proc.stderr.count("saved ") == 1 and proc.stdout.count("done: ") == 1
    _assert_matches_single_process(single.output_dir, cfg.output_dir)


def test_two_process_fsdp_matches_single_process_and_resumes_from_its_checkpoint(make_config, tiny_model):
    """FSDP (fully_shard per decoder layer) with 2 CPU processes: the same update as one process
    accumulating the global batch, a full adapter that PEFT loads, written once, and a run
    resumed from the sharded run's checkpoint ends bit-identical to the uninterrupted one."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    settings = [*DISTRIBUTED_SETTINGS, "train.max_steps=4", "train.save_every=2"]
    single = sft.run(make_config(*settings, "train.gradient_accumulation_steps=2"))
    cfg = make_config(*settings, "train.gradient_accumulation_steps=1", "train.distributed=fsdp")
    multi = [*settings, "train.gradient_accumulation_steps=1", "train.distributed=fsdp"]
    proc = _torchrun(cfg, multi)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: FSDP over 2 processes, sharding each decoder layer" in proc.stderr
    manifest = json.loads((cfg.output_dir / "manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "strategy": "fsdp", "ranks_agree": True}
    assert len(losses(cfg.output_dir)) == 4 and proc.stderr.count("saved ") == 1
    _assert_matches_single_process(single.output_dir, cfg.output_dir)
    # The saved adapter is the whole (gathered) adapter, not rank 0's shard.
    reference = adapter_weights(single.output_dir)
    assert {k: v.shape for k, v in adapter_weights(cfg.output_dir).items()} == {k: v.shape for k, v in reference.items()}
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), cfg.output_dir / "adapter")
    checkpoint = cfg.output_dir / "checkpoints" / "step-0000002"
    assert json.loads((checkpoint / "sharding.json").read_text())["strategy"] == "fsdp"
    # Resume a fresh run directory from the sharded run's step-2 checkpoint.
    resumed = make_config(*settings)
    (resumed.output_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, resumed.output_dir / "checkpoints" / checkpoint.name)
    proc = _torchrun(resumed, multi, "--resume", "latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 2" in proc.stderr
    assert_same_weights(adapter_weights(cfg.output_dir), adapter_weights(resumed.output_dir), atol=0)


def test_two_process_deepspeed_zero3_matches_single_process_and_resumes_from_its_checkpoint(make_config):
    """DeepSpeed ZeRO-3 on CPU (DS_ACCELERATOR=cpu, gloo), when deepspeed is installed: the same
    update as one process, and a run resumed from its step-2 checkpoint (each rank's optimiser
    partition) ends bit-identical to the uninterrupted one. Losing the AdamW moments on resume
    moves the weights by ~1e-2 here, so atol=0 catches it."""
    pytest.importorskip("deepspeed")
    settings = [*DISTRIBUTED_SETTINGS, "train.max_steps=3", "train.save_every=2"]
    multi = [*settings, "train.distributed=deepspeed_zero3"]
    single = sft.run(make_config(*settings, "train.gradient_accumulation_steps=2"))
    cfg = make_config(*settings)
    proc = _torchrun(cfg, multi, env={"DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((cfg.output_dir / "manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "strategy": "deepspeed_zero3", "ranks_agree": True}
    assert proc.stderr.count("saved ") == 1
    _assert_matches_single_process(single.output_dir, cfg.output_dir)
    checkpoint = cfg.output_dir / "checkpoints" / "step-0000002"
    assert json.loads((checkpoint / "sharding.json").read_text())["strategy"] == "deepspeed_zero3"
    assert (checkpoint / "optimizer-rank0.pt").is_file() and (checkpoint / "optimizer-rank1.pt").is_file()
    # The partitions resume only with the number of processes that wrote them (checked before
    # anything is loaded).
    one = Dist()
    with pytest.raises(TrainingError, match="optimiser partitions of 2 processes; this run has 1"):
        load_checkpoint(checkpoint, None, None, one, distributed.DeepSpeedZero3(cfg, one))
    resumed = make_config(*settings)
    (resumed.output_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, resumed.output_dir / "checkpoints" / checkpoint.name)
    proc = _torchrun(resumed, multi, "--resume", "latest", env={"DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 2" in proc.stderr
    assert_same_weights(adapter_weights(cfg.output_dir), adapter_weights(resumed.output_dir), atol=0)
