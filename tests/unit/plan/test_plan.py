"""The memory planner: parameter counts against transformers and PEFT, saved activations against
autograd's own record, suggestions that really fit, the CLI, and the example configs' figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.plan import PlanConfig, check_fits, run
from tunesmith.plan.config import TrainConfig
from tunesmith.plan.devices import GIB, Target, parse_memory
from tunesmith.plan.memory import _layer_elements, weight_bytes, workload
from tunesmith.plan.shapes import KNOWN_SHAPES, load_shape, shape_from_config

REPO = Path(__file__).resolve().parents[3]
CPU = Target(name="cpu", bytes=64 * GIB, gpu=False, bf16=False)

TINY = {
    "llama": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96, vocab_size=300, tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, intermediate_size=80, vocab_size=300, tie_word_embeddings=True),
}


@pytest.mark.parametrize("kind", list(TINY))
def test_parameter_counts_match_transformers_and_peft(kind):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(TINY[kind])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    model = AutoModelForCausalLM.from_config(config)
    shape = shape_from_config(config, kind)
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert shape.lora_params(8, "all-linear") == trainable


def test_known_shapes_have_their_published_sizes():
    sizes = {"meta-llama/Llama-3.1-8B-Instruct": 8.03e9, "Qwen/Qwen2.5-0.5B-Instruct": 0.494e9,
             "HuggingFaceTB/SmolLM2-135M-Instruct": 0.1345e9, "mistralai/Mistral-7B-Instruct-v0.3": 7.25e9}
    for name, size in sizes.items():
        assert shape_from_config(KNOWN_SHAPES[name], name).total_params == pytest.approx(size, rel=0.005)


@pytest.mark.parametrize("overrides", [
    ["lora.dropout=0.05"], ["lora.dropout=0.0"], ["method=full"], ["lora.target_modules=[q_proj,v_proj]"],
])
def test_saved_activations_match_autograd_on_the_embedded_model(overrides):
    """Every tensor autograd keeps for the backward pass of a packed micro-batch, counted through
    saved-tensor hooks, against the planner's per-layer and head figures (within 10%)."""
    from tunesmith.chat.masking import IGNORE_INDEX
    from tunesmith.chat.tokens import prepare_chat_model
    from tunesmith.models.loading import load_model, load_tokenizer
    from tunesmith.plan.memory import activation_bytes
    from tunesmith.train.adapters import apply_method
    from tunesmith.train.loss import causal_lm_loss

    cfg = load_config(TrainConfig, None, ["train.micro_batch_size=2", "train.max_seq_len=256", *overrides])
    setup = prepare_chat_model(load_tokenizer(cfg.model))
    model = apply_method(load_model(cfg.model, device="cpu"), cfg, setup.modules_to_save,
                         setup.tied_embeddings, device="cpu")
    model.train()
    rows, length = 2, 256
    torch.manual_seed(0)
    ids = torch.randint(3, 4000, (rows, length))
    labels = ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX  # half the positions trained
    positions = torch.cat([torch.arange(length // 2), torch.arange(length // 2)]).repeat(rows, 1)  # two examples a row
    saved: dict[int, int] = {}

    def keep(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        causal_lm_loss(model, {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}, 1.0)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(n for ptr, n in saved.items() if ptr not in parameters)

    shape = load_shape("default")
    w = workload(cfg, CPU, 1, trained_share=0.5)
    layers, masks, head = activation_bytes(shape, w)
    # The head is fused with the loss: it keeps the hidden states, a logsumexp and the target of each
    # trained position, no logits.
    saved_head = rows * length * 0.5 * (shape.hidden * 4 + 4 + 8)
    assert layers + masks + saved_head == pytest.approx(measured, rel=0.10)


def test_gqa_keys_are_repeated_only_on_gpus_when_a_mask_is_given():
    shape = shape_from_config(KNOWN_SHAPES["meta-llama/Llama-3.1-8B-Instruct"], "llama")
    gpu = Target(name="gpu", bytes=80 * GIB, gpu=True)
    w = workload(load_config(TrainConfig, None, []), gpu, 1, 0.5)
    masked, _ = _layer_elements(shape, w, masked=True)
    flash, _ = _layer_elements(shape, w, masked=False)
    assert masked - flash == 2 * (shape.q_width - shape.kv_width)
    # on CPU, training runs SDPA on the grouped heads (train/cpu_attention.py): nothing repeated
    w = workload(load_config(TrainConfig, None, []), CPU, 1, 0.5)
    assert _layer_elements(shape, w, masked=True) == _layer_elements(shape, w, masked=False)


def test_qlora_keeps_embeddings_in_fp32_and_linears_in_4_bits():
    shape = shape_from_config(KNOWN_SHAPES["meta-llama/Llama-3.1-8B-Instruct"], "llama")
    cfg = load_config(TrainConfig, None, ["method=qlora"])
    gpu = Target(name="gpu", bytes=24 * GIB, gpu=True)
    linear = shape.layers * shape.layer_linear_params
    expected = linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + (shape.total_params - linear) * 4
    assert weight_bytes(shape, workload(cfg, gpu, 1, 0.5)) == int(expected)


def test_sharding_divides_weights_gradients_and_optimiser_state():
    base = ["method=full", "train.distributed=fsdp", "model=meta-llama/Llama-3.1-8B-Instruct"]
    one = run(PlanConfig(overrides=base, gpu="h100-80gb", gpus=1, trained_share=0.5)).estimate
    eight = run(PlanConfig(overrides=base, gpu="h100-80gb", gpus=8, trained_share=0.5)).estimate
    assert eight.get("optimiser state") == pytest.approx(one.get("optimiser state") / 8, rel=1e-6)
    assert eight.get("gradients") == pytest.approx(one.get("gradients") / 8, rel=1e-6)
    assert eight.get("weights") < one.get("weights") / 2
    assert eight.get("activations") == one.get("activations")


def test_every_suggestion_is_a_valid_training_config_that_fits():
    result = run(PlanConfig(train_config=REPO / "examples" / "configs" / "mistral-7b-lora-80gb.yaml",
                            overrides=["train.gradient_checkpointing=false"], gpu="l4-24gb", trained_share=0.5))
    assert not result.fits
    assert result.suggestions
    for suggestion in result.suggestions:
        overrides = ["train.gradient_checkpointing=false", *suggestion.overrides]
        load_config(TrainConfig, REPO / "examples" / "configs" / "mistral-7b-lora-80gb.yaml", overrides)
        again = run(PlanConfig(train_config=REPO / "examples" / "configs" / "mistral-7b-lora-80gb.yaml",
                               overrides=overrides, gpu="l4-24gb", gpus=suggestion.gpus, trained_share=0.5))
        assert again.fits and again.estimate.total == suggestion.total


def test_memory_sizes_parse_with_units():
    assert parse_memory("24GiB") == 24 * 2**30
    assert parse_memory("80GB") == 80 * 10**9
    assert parse_memory("512 MiB") == 512 * 2**20
    with pytest.raises(ConfigError):
        parse_memory("lots")


def test_check_fits_warns_only_when_the_plan_exceeds_the_device():
    cfg = load_config(TrainConfig, None, ["train.micro_batch_size=8"])
    assert check_fits(cfg, target=CPU) is None
    warning = check_fits(cfg, target=Target(name="a small machine", bytes=GIB // 2, gpu=False, bf16=False))
    assert warning is not None and "tunesmith plan" in warning


def test_cli_plan_reports_components_and_exits_1_when_it_does_not_fit():
    from typer.testing import CliRunner

    from tunesmith import cli

    config = str(REPO / "examples" / "configs" / "llama-3.1-8b-qlora-24gb.yaml")
    ok = CliRunner().invoke(cli.app, ["plan", config, "--gpu", "l4-24gb"])
    assert ok.exit_code == 0, ok.output
    assert "output head" in ok.output and "fits:" in ok.output
    too_small = CliRunner().invoke(cli.app, ["plan", config, "--memory", "8GiB"])
    assert too_small.exit_code == 1 and "does not fit" in too_small.output
    unknown = CliRunner().invoke(cli.app, ["plan", config, "--gpu", "h100"])
    assert isinstance(unknown.exception, ConfigError) and "h100-80gb" in str(unknown.exception)


def test_example_configs_state_the_planners_peak(monkeypatch):
    """Each example config that quotes `tunesmith plan ...` states the peak that command prints
    (run from the repository root, as the comments' commands are)."""
    monkeypatch.chdir(REPO)
    checked = 0
    for path in sorted((REPO / "examples" / "configs").glob("*.yaml")):
        text = path.read_text()
        command = re.search(r"`tunesmith plan (\S+)((?:\s*#?\s*--\S+ \S+)*)`", text)
        stated = re.search(r"([0-9.]+) GiB\s+(?:#\s+)?(?:peak|RAM peak|peak RAM)", text) or \
            re.search(r"= ([0-9.]+) GiB", text)
        if not command:
            continue
        flags = dict(re.findall(r"--(\S+) (\S+)", command[2]))
        plan = run(PlanConfig(train_config=REPO / command[1], gpu=flags.get("gpu"),
                              gpus=int(flags.get("gpus", 1))))
        assert stated, f"{path.name} quotes the planner but states no peak"
        assert f"{plan.estimate.total / GIB:.1f}" == f"{float(stated[1]):.1f}", path.name
        checked += 1
    assert checked >= 6
