"""Which multi-process strategy a run uses, and the combinations that are refused."""

from __future__ import annotations

import pytest
import torch

from tunesmith.errors import TrainingError
from tunesmith.train import distributed
from tunesmith.train.environment import Dist


def test_auto_follows_accelerate_else_ddp(make_config):
    cfg = make_config()
    assert distributed.resolve_strategy(cfg, 1, {"ACCELERATE_USE_FSDP": "true"}) == "none"
    assert distributed.resolve_strategy(cfg, 2, {}) == "ddp"
    assert distributed.resolve_strategy(cfg, 2, {"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    assert distributed.resolve_strategy(
        cfg, 2, {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == "deepspeed_zero3"
    assert distributed.resolve_strategy(make_config("train.distributed=fsdp"), 2, {}) == "fsdp"


def test_conflicts_and_unsupported_combinations_are_refused(make_config):
    with pytest.raises(TrainingError, match="ZeRO stage 2"):
        distributed.resolve_strategy(make_config(), 2, {"ACCELERATE_USE_DEEPSPEED": "true",
                                                        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"})
    with pytest.raises(TrainingError, match="accelerate launch asks for fsdp but train.distributed is ddp"):
        distributed.resolve_strategy(make_config("train.distributed=ddp"), 2, {"ACCELERATE_USE_FSDP": "true"})
    qlora = make_config("train.distributed=fsdp")
    qlora.method = "qlora"
    with pytest.raises(TrainingError, match="cannot shard a 4-bit QLoRA base"):
        distributed.for_run(qlora, Dist(rank=0, world_size=2), {})


def test_accelerate_offload_settings_are_honoured(make_config):
    fsdp = distributed.for_run(make_config(), Dist(world_size=2),
                               {"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"})
    assert fsdp.name == "fsdp" and fsdp.offload_ignored  # asked for, but a CPU run has nothing to offload
    zero3 = distributed.for_run(make_config(), Dist(world_size=2),
                                {"ACCELERATE_USE_DEEPSPEED": "true",
                                 "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"})
    assert zero3.offload_optimizer and not zero3.offload_params


def test_zero3_reports_a_nonfinite_gradient_norm_so_the_divergence_guard_fires():
    from types import SimpleNamespace

    from tunesmith.train.distributed import DeepSpeedZero3

    sharding = DeepSpeedZero3(None, SimpleNamespace(world_size=2, rank=0, device="cpu", is_main=True))
    healthy = SimpleNamespace(_get_norm_groups=lambda: [torch.tensor(3.0), torch.tensor(4.0)])
    assert sharding.clip_grad_norm(None, healthy, 1.0) == pytest.approx(5.0)
    # DeepSpeed writes -1 for a group whose norm was NaN or inf.
    broken = SimpleNamespace(_get_norm_groups=lambda: [torch.tensor(-1.0), torch.tensor(4.0)])
    assert sharding.clip_grad_norm(None, broken, 1.0) == float("inf")
