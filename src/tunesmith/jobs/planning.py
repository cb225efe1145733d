"""batch_size "auto" and memory: the largest batch the memory planner (`tunesmith.plan`) fits.

The plan is the one `tunesmith plan` and `tunesmith train`'s start-up check make: the model's
shape, the job's train config with each candidate micro-batch size, the share of positions that
carry loss measured on the job's own data, against the worker's memory (`jobs.memory`, else the
first GPU's memory, else this machine's RAM).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from tunesmith.plan.devices import Target


def memory_target(memory: Optional[str]) -> Target:
    import torch

    from tunesmith.plan.devices import parse_memory, resolve_target

    gpu = torch.cuda.is_available()
    if memory is not None:
        return Target(name=f"jobs.memory {memory}", bytes=parse_memory(memory), gpu=gpu,
                      bf16=gpu and torch.cuda.is_bf16_supported())
    if gpu:
        props = torch.cuda.get_device_properties(0)
        return Target(name=props.name, bytes=int(props.total_memory), gpu=True, bf16=torch.cuda.is_bf16_supported())
    return resolve_target(None, None)


def largest_batch(config_for: Callable[[int], dict[str, Any]], most: int,
                  memory: Optional[str]) -> tuple[int, str]:
    """(the largest power of two up to `most` whose plan fits, where), 1 when none does (training
    then warns itself); `most` when the model's shape cannot be read (nothing to plan with)."""
    from tunesmith.plan.memory import estimate, workload
    from tunesmith.plan.run import DEFAULT_TRAINED_SHARE, measure_trained_share
    from tunesmith.plan.shapes import load_shape
    from tunesmith.train.config import TrainConfig

    target = memory_target(memory)
    first = TrainConfig.model_validate(config_for(most))
    try:
        shape = load_shape(first.model.path, first.model.trust_remote_code)
    except Exception:  # an unreadable base fails the job in training, with the loader's own error
        return most, target.describe()
    share = measure_trained_share(first) or DEFAULT_TRAINED_SHARE
    size = 1 << (max(most, 1).bit_length() - 1)
    while size > 1:
        cfg = TrainConfig.model_validate(config_for(size))
        if estimate(shape, workload(cfg, target, 1, share), target, 1, cfg.train.max_seq_len).fits:
            break
        size //= 2
    return size, target.describe()
