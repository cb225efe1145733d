"""Method and hyperparameter parsing, the documented "auto" rules, and the train config a job runs."""

from __future__ import annotations

import pytest

from tunesmith.config import load_config
from tunesmith.jobs import spec
from tunesmith.serve.protocol import APIError
from tunesmith.train.config import TrainConfig


def test_legacy_hyperparameters_become_a_supervised_method_with_auto_elsewhere():
    method = spec.parse_method({"hyperparameters": {"n_epochs": 2}})
    assert method == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}}}


def test_dpo_method_has_beta():
    method = spec.parse_method({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}}})
    assert method["dpo"]["hyperparameters"] == {"n_epochs": "auto", "batch_size": "auto",
                                                "learning_rate_multiplier": "auto", "beta": 0.3}


@pytest.mark.parametrize("body, param", [
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 2.5}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"learning_rate": 1}}, "hyperparameters.learning_rate"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}},
     "method.supervised.hyperparameters.beta"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "high"}}}}, "method.dpo.hyperparameters.beta"),
    ({"method": {"type": "magic"}}, "method.type"),
    ({"method": {"type": "reinforcement"}}, "method.type"),
    ({"method": {"type": "supervised"}, "hyperparameters": {"n_epochs": 1}}, "hyperparameters"),
])
def test_bad_hyperparameters_are_refused_naming_the_parameter(body, param):
    with pytest.raises(APIError) as refused:
        spec.parse_method(body)
    assert refused.value.status == 400 and refused.value.param == param


@pytest.mark.parametrize("examples, epochs", [(10, 10), (20, 5), (40, 3), (1000, 3), (10_000, 2), (100_000, 1), (3, 25)])
def test_auto_epochs_aims_at_100_to_25000_example_passes(examples, epochs):
    assert spec.auto_epochs(examples) == epochs


@pytest.mark.parametrize("examples, batch", [(10, 1), (1000, 2), (4000, 8), (10**6, 32)])
def test_auto_batch_size_is_a_power_of_two_near_two_per_mille(examples, batch):
    assert spec.auto_batch_size(examples) == batch


def test_resolve_fills_only_the_auto_values():
    method = spec.parse_method({"hyperparameters": {"batch_size": 4}})
    resolved = spec.resolve(method, 20)
    assert resolved["supervised"]["hyperparameters"] == {"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 1.0}
    assert method["supervised"]["hyperparameters"]["n_epochs"] == "auto"  # the request is kept as given


def _config(method, lr=2e-4, **extra):
    options = dict(base_path="default", learning_rate=lr, resolved=spec.resolve(method, 100), seed=5, data_dir="d",
                   output_dir="o", max_seq_len=512, lora_r=8, checkpoint_every=None, keep_checkpoints=3)
    return spec.train_config(**{**options, **extra})


def test_supervised_job_is_a_valid_train_config():
    method = spec.parse_method({"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}})
    cfg = TrainConfig.model_validate(_config(method, lr=1e-3, checkpoint_every=7))
    assert (cfg.train.epochs, cfg.train.micro_batch_size, cfg.train.learning_rate) == (2, 4, 5e-4)
    assert cfg.train.seed == 5 and cfg.train.save_every == 7 and cfg.train.keep_checkpoints == 3
    assert cfg.method == "lora" and cfg.lora.r == 8 and cfg.data.val_ratio == 0.0


def test_dpo_job_maps_to_the_dpo_objective_with_its_beta():
    method = spec.parse_method({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25}}}})
    cfg = _config(method)
    assert cfg["objective"] == "dpo" and cfg["preference"] == {"beta": 0.25, "loss_type": "sigmoid"}
    resolved = load_config(TrainConfig, values=cfg)  # a config `tunesmith train` accepts as it is
    assert resolved.objective == "dpo" and resolved.preference.beta == 0.25
