"""The embedded default model: loads with plain transformers, generates, and has a sound
tokenizer and chat template."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.models import default_model_path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(default_model_path()).eval()


def test_files_are_safetensors_and_small():
    path = default_model_path()
    weights = path / "model.safetensors"
    assert weights.is_file()
    assert weights.stat().st_size <= 25 * 1024 * 1024
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    assert (path / "README.md").is_file() and (path / "tokenizer.json").is_file()


def test_architecture_is_llama_with_a_few_million_parameters(model):
    assert model.config.model_type == "llama"
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n < 10_000_000


def test_special_tokens_are_distinct(tokenizer, model):
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert None not in ids and len(ids) == 3
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tokenizer.unk_token_id and im_end not in ids
    eos = model.generation_config.eos_token_id
    assert im_end in eos and tokenizer.eos_token_id in eos
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("text", [
    "Hello, world!",
    "def add(a, b):\n    return a + b\n",
    "  leading spaces\tand tabs\r\nwindows newlines",
    "Unicode: café, naïve, 東京, emoji 🚀, math ∑ x²",
    "",
])
def test_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_byte_level_bpe_merges_common_words(tokenizer):
    ids = tokenizer("the function returns", add_special_tokens=False)["input_ids"]
    assert len(ids) <= 4  # learned merges, not one token per byte


def test_chat_template_renders_chatml(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in ids


def test_generates_deterministically(model, tokenizer):
    inputs = tokenizer(["The list type"], return_tensors="pt")
    with torch.no_grad():
        a = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        b = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(a, b)
    assert a.shape[1] > inputs["input_ids"].shape[1]
    assert tokenizer.decode(a[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_is_pretrained_not_random(model, tokenizer):
    """English about Python is far likelier under the model than under the same architecture untrained."""
    text = ("Return a new sorted list from the items in iterable. The key argument specifies a function "
            "of one argument that is used to extract a comparison key from each element. If reverse is "
            "true, the list elements are sorted as if each comparison were reversed.")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    untrained = type(model)(model.config).eval()
    with torch.no_grad():
        trained_ppl = torch.exp(model(input_ids=ids, labels=ids).loss).item()
        untrained_ppl = torch.exp(untrained(input_ids=ids, labels=ids).loss).item()
    assert trained_ppl < untrained_ppl / 10


def test_model_card_states_measured_facts():
    path = default_model_path()
    card = (path / "README.md").read_text()
    facts = json.loads((path / "training_log.json").read_text())
    assert "demo model" in card.lower()
    assert "PSF" in card
    assert f"{facts['parameters']:,}" in card
    assert str(facts["heldout_perplexity"]) in card
    assert "scripts/build_default_model.py" in card
