"""A job request's method and hyperparameters: parsing, the "auto" rules, and the train config.

The "auto" rules (documented in docs/jobs.md), for N training examples:
- n_epochs: 3, raised so that N x epochs reaches 100 example passes (at most 25 epochs), lowered
  so it stays under 25,000 (at least 1) — a tiny dataset gets more passes, a huge one fewer;
- batch_size: about 0.2% of N rounded to a power of two, between 1 and 32, lowered to the largest
  power of two the memory plan (`tunesmith.plan`) fits in the worker's memory (`jobs.memory`,
  else the GPU's memory, else the host's RAM) — see `tunesmith.jobs.planning`;
- learning_rate_multiplier: 1, i.e. the base's learning rate (`base_models.NAME.learning_rate`,
  else `jobs.base_learning_rate`); the job's learning rate is that times the multiplier;
- beta (DPO): 0.1, TRL's and the DPO paper's default.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from tunesmith.serve.protocol import bad_request

LIMITS: dict[str, tuple[type, float, float]] = {
    "n_epochs": (int, 1, 50),
    "batch_size": (int, 1, 256),
    "learning_rate_multiplier": (float, 1e-4, 100.0),
    "beta": (float, 1e-4, 10.0),
}
METHOD_KEYS = {"supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
               "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")}


def _check_value(key: str, value: Any, param: str) -> Any:
    if value == "auto" or value is None:
        return "auto"
    kind, low, high = LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise bad_request(f"{key} must be \"auto\" or {'an integer' if kind is int else 'a number'}, "
                          f"not {value!r}.", param=param, code="invalid_hyperparameter")
    if not low <= value <= high:
        raise bad_request(f"{key} must be between {low:g} and {high:g}, not {value!r}.", param=param,
                          code="invalid_hyperparameter")
    return kind(value)


def _hyperparameters(given: Any, keys: tuple[str, ...], param: str) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise bad_request("hyperparameters must be an object.", param=param)
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise bad_request(f"Unknown hyperparameter {unknown[0]!r}; valid: {', '.join(keys)}.",
                          param=f"{param}.{unknown[0]}", code="invalid_hyperparameter")
    return {key: _check_value(key, given.get(key), f"{param}.{key}") for key in keys}


def parse_method(body: dict[str, Any]) -> dict[str, Any]:
    """The job's `method` object (type plus the requested hyperparameters, "auto" where unset),
    from `method` or the legacy top-level `hyperparameters`."""
    method, legacy = body.get("method"), body.get("hyperparameters")
    if method is None:
        return {"type": "supervised",
                "supervised": {"hyperparameters": _hyperparameters(legacy, METHOD_KEYS["supervised"], "hyperparameters")}}
    if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo", "reinforcement"):
        raise bad_request("method.type must be \"supervised\" or \"dpo\".", param="method.type")
    kind = method["type"]
    if kind == "reinforcement":
        raise bad_request("Reinforcement fine-tuning is not offered by this server; use supervised or dpo.",
                          param="method.type", code="unsupported_method")
    if legacy is not None:
        raise bad_request("Give hyperparameters inside `method`, not also at the top level.", param="hyperparameters")
    section = method.get(kind) or {}
    if not isinstance(section, dict):
        raise bad_request(f"method.{kind} must be an object.", param=f"method.{kind}")
    given = _hyperparameters(section.get("hyperparameters"), METHOD_KEYS[kind], f"method.{kind}.hyperparameters")
    return {"type": kind, kind: {"hyperparameters": given}}


def requested(method: dict[str, Any]) -> dict[str, Any]:
    return method[method["type"]]["hyperparameters"]


def auto_epochs(examples: int) -> int:
    epochs = 3
    if examples * epochs < 100:
        epochs = min(25, math.ceil(100 / max(examples, 1)))
    elif examples * epochs > 25_000:
        epochs = max(1, 25_000 // examples)
    return epochs


def auto_batch_size(examples: int) -> int:
    return int(min(32, max(1, 2 ** round(math.log2(max(examples * 0.002, 1.0))))))


def resolve(method: dict[str, Any], examples: int) -> dict[str, Any]:
    """The method with every "auto" replaced by the value the rules give for `examples`."""
    given = requested(method)
    auto = {"n_epochs": auto_epochs(examples), "batch_size": auto_batch_size(examples),
            "learning_rate_multiplier": 1.0, "beta": 0.1}
    resolved = {key: auto[key] if value == "auto" else value for key, value in given.items()}
    return {"type": method["type"], method["type"]: {"hyperparameters": resolved}}


def with_batch_size(resolved: dict[str, Any], batch_size: int) -> dict[str, Any]:
    kind = resolved["type"]
    return {"type": kind, kind: {"hyperparameters": {**resolved[kind]["hyperparameters"], "batch_size": batch_size}}}


def train_config(*, base_path: str, learning_rate: float, resolved: dict[str, Any], seed: int, data_dir: str,
                 output_dir: str, max_seq_len: int, lora_r: int, checkpoint_every: Optional[int],
                 keep_checkpoints: int) -> dict[str, Any]:
    """The `tunesmith train` config (as plain data, written to YAML) that runs a job."""
    hyper = requested(resolved)
    train: dict[str, Any] = {
        "epochs": hyper["n_epochs"],
        "micro_batch_size": hyper["batch_size"],
        "learning_rate": learning_rate * hyper["learning_rate_multiplier"],
        "seed": seed,
        "max_seq_len": max_seq_len,
        "log_every": 1,
        "keep_checkpoints": keep_checkpoints,
        # Packing would mix examples into one row, which changes what `batch_size` counts.
        "packing": False,
    }
    if checkpoint_every is not None:
        train["save_every"] = checkpoint_every
    config: dict[str, Any] = {
        "model": {"path": base_path},
        "data": {"path": [data_dir], "val_ratio": 0.0},
        "method": "lora",
        "lora": {"r": lora_r, "alpha": 2 * lora_r},
        "train": train,
        "output_dir": output_dir,
    }
    if resolved["type"] == "dpo":
        # OpenAI's DPO is the sigmoid loss against the base with the adapter disabled.
        config["objective"] = "dpo"
        config["preference"] = {"beta": hyper["beta"], "loss_type": "sigmoid"}
    return config

