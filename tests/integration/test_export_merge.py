"""`tunesmith merge`: merged logits equal adapter logits; QLoRA merges into the unquantised base."""

import json

import pytest
import torch

from tunesmith.errors import ExportError
from tunesmith.export import merge
from tunesmith.export.config import MergeConfig
from tunesmith.models.source import load_source, resolve_source

import tuned_helpers as helpers


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("merged")
    with helpers.one_thread():
        parity = merge.run(MergeConfig(run=str(helpers.lora_run()), out=out), say=lambda *_: None).parity
    return out, parity


def test_saved_merged_model_reproduces_the_adapter_logits(merged_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, parity = merged_dir
    assert parity["dtype"] == "float32" and parity["max_abs_logit_diff"] <= 1e-4
    with helpers.one_thread():
        adapter_model, tokenizer = load_source(resolve_source(str(helpers.lora_run())), device="cpu")
        reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
        ids, mask = merge.probe_batch(tokenizer)
        expected = merge.probe_logits(adapter_model, ids, mask)
        got = merge.probe_logits(reloaded, ids, mask)
        with adapter_model.disable_adapter():
            base = merge.probe_logits(adapter_model, ids, mask)
    assert (expected - got).abs().max() <= 1e-4
    assert (expected - base).abs().max() > 1e-2  # the adapter really changes the model
    assert AutoTokenizer.from_pretrained(out)("a")["input_ids"] == tokenizer("a")["input_ids"]


def test_merged_directory_has_tokenizer_template_stops_and_record(merged_dir):
    out, parity = merged_dir
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json",
            "config.yaml", "manifest.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    generation = json.loads((out / "generation_config.json").read_text())
    tokens = json.loads((out / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokens["added_tokens"]}
    assert generation["eos_token_id"][0] == ids["<|im_end|>"] and ids["<|end_of_text|>"] in generation["eos_token_id"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "merge" and manifest["parity"] == parity
    assert manifest["method"] == "lora"


def test_qlora_adapter_merges_into_the_unquantised_base():
    source = resolve_source(str(helpers.qlora_run()))
    assert source.quantized_in_training == "4bit"
    with helpers.one_thread():
        merged = merge.merge_source(source, device="cpu", say=lambda *_: None)
    model = merged.model
    assert not any("4bit" in type(m).__name__ or "Linear4" in type(m).__name__ for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not getattr(model, "is_loaded_in_4bit", False)
    assert merged.parity["trained_on"] == "4bit"
    assert merged.parity["max_abs_logit_diff"] <= 1e-4


def test_nothing_to_merge_in_a_plain_model(merged_dir):
    out, _ = merged_dir
    with pytest.raises(ExportError, match="nothing to merge"):
        merge.run(MergeConfig(run=str(out), out=out.parent / "again"))
