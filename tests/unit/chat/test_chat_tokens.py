"""Stop and pad tokens: the model is trained to emit its end-of-turn token, generation stops on
it, and padding never shares an id with it and is never trained."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from tunesmith.chat.masking import IGNORE_INDEX, tokenize_conversation
from tunesmith.chat.packing import PaddedCollator
from tunesmith.chat.templates import DEFAULT_CHAT_TEMPLATE, render_prompt
from tunesmith.chat.tokens import (
    embedding_modules_to_save,
    ensure_pad_token,
    prepare_chat_model,
    stop_token_ids,
)

from chat_helpers import A1, A2, Q1, Q2, build_families, tiny_llama, train_tokenizer


def test_stop_ids_add_the_generation_configs_eos_ids(families):
    tokenizer = families["llama3"].tokenizer
    eot, eos, pad = tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"])
    assert stop_token_ids(tokenizer) == [eot, eos]
    assert stop_token_ids(tokenizer, GenerationConfig(eos_token_id=[eos, pad])) == [eot, eos, pad]
    assert stop_token_ids(tokenizer, GenerationConfig(eos_token_id=eot)) == [eot, eos]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chatml", "<|endoftext|>"),  # an existing pad token that is not a stop token is kept
        ("llama3", "<|finetune_right_pad_id|>"),  # the vocabulary's reserved pad token is reused
        ("mistral", "<unk>"),
        ("llama2", "<unk>"),
        ("gemma", "<pad>"),
    ],
)
def test_pad_token_reuses_a_safe_existing_token(name, expected):
    tokenizer = build_families()[name].tokenizer  # fresh: ensure_pad_token changes the tokenizer
    size = len(tokenizer)
    pad = ensure_pad_token(tokenizer)
    assert (pad.token, pad.added) == (expected, False)
    assert tokenizer.pad_token == expected and tokenizer.pad_token_id == pad.id
    assert pad.id not in stop_token_ids(tokenizer) and len(tokenizer) == size


def test_pad_token_equal_to_eos_is_replaced():
    tokenizer = build_families()["llama3"].tokenizer
    tokenizer.pad_token = "<|end_of_text|>"  # the common "pad = eos" shortcut that stops models learning to stop
    pad = ensure_pad_token(tokenizer)
    assert pad.token == "<|finetune_right_pad_id|>"


def test_pad_token_is_added_and_embeddings_grow_when_no_token_can_be_reused():
    tokenizer = train_tokenizer(specials=["<|endoftext|>"], template=None, eos_token="<|endoftext|>",
                                pad_token="<|endoftext|>")
    model = tiny_llama(len(tokenizer))
    old_rows = model.get_input_embeddings().weight.detach().clone()
    pad = ensure_pad_token(tokenizer, model)
    assert pad.added and pad.token == "<|pad|>" and pad.id == len(tokenizer) - 1
    assert pad.id != tokenizer.eos_token_id
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == len(tokenizer) and torch.equal(embeddings[:-1], old_rows)
    assert model.config.pad_token_id == model.generation_config.pad_token_id == pad.id


def test_a_tokenizer_without_template_gets_chatml_and_new_embeddings_to_save(tmp_path):
    tokenizer = train_tokenizer(specials=["<|endoftext|>"], template=None, eos_token="<|endoftext|>")
    model = tiny_llama(len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    setup = prepare_chat_model(tokenizer, model)
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert setup.template.source == "default" and setup.template.added_tokens == ("<|im_start|>", "<|im_end|>")
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens)
    assert setup.stop_token_ids == (im_end, tokenizer.eos_token_id)
    assert model.generation_config.eos_token_id == [im_end, tokenizer.eos_token_id]
    assert setup.resized and model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert setup.embeddings_changed and setup.tied_embeddings
    assert setup.modules_to_save == ("embed_tokens", "lm_head") == tuple(embedding_modules_to_save(model))
    assert setup.pad.id not in setup.stop_token_ids

    # With LoRA, the listed modules make the new rows trainable and saved with the adapter.
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], ensure_weight_tying=True,
                                                  modules_to_save=list(setup.modules_to_save)))
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert any("embed_tokens" in name for name in trainable)
    peft_model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any(k.endswith("embed_tokens.weight") and v.shape[0] == len(tokenizer) for k, v in saved.items())


def test_a_tokenizer_with_its_own_template_changes_nothing():
    tokenizer = build_families()["gemma"].tokenizer
    size, template = len(tokenizer), tokenizer.chat_template
    setup = prepare_chat_model(tokenizer)
    assert setup.template.source == "model" and not setup.embeddings_changed
    assert tokenizer.chat_template == template and len(tokenizer) == size
    assert setup.modules_to_save == () and setup.resized is False


def test_padding_is_never_trained_and_every_end_of_turn_is(family):
    tokenizer = build_families()[family.name].tokenizer
    pad = ensure_pad_token(tokenizer)
    short = tokenize_conversation(tokenizer, [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}])
    long = tokenize_conversation(tokenizer, [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1},
                                             {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}])
    batch = PaddedCollator(pad_token_id=pad.id, pad_to_multiple_of=8)([short.to_features(), long.to_features()])
    padding = batch["attention_mask"] == 0
    assert padding.any() and batch["input_ids"].shape[1] % 8 == 0
    assert (batch["labels"][padding] == IGNORE_INDEX).all() and (batch["input_ids"][padding] == pad.id).all()
    eot = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    assert (batch["labels"] == eot).sum(dim=1).tolist() == [1, 2]


def test_a_tuned_model_stops_at_the_end_of_turn_token(families):
    """End to end: mask -> collate -> train -> serve-side prompt -> greedy generation stops."""
    tokenizer = families["chatml"].tokenizer
    messages = [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}]
    example = tokenize_conversation(tokenizer, messages)
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id)([example.to_features()])
    model = tiny_llama(len(tokenizer), hidden_size=64, eos_token_id=tokenizer.eos_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(50):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    prompt = torch.tensor([render_prompt(tokenizer, messages[:1])])
    with torch.no_grad():
        out = model.generate(prompt, eos_token_id=stop_token_ids(tokenizer), max_new_tokens=30, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    generated = out[0, prompt.shape[1]:].tolist()
    assert tokenizer.decode(generated) == A1 + "<|im_end|>"
    assert generated[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(generated) < 30
