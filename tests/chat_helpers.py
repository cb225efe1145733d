"""Test helpers for tunesmith.chat: tiny tokenizers, one per chat template family, and a tiny model.

Each family gets a BPE tokenizer trained in milliseconds on the test sentences, its real special
tokens, and a Jinja chat template modelled on the public template of a real model:
ChatML (Qwen2.5), Llama 3 (Meta-Llama-3-Instruct), Mistral (Mistral-7B-Instruct-v0.1, with
v0.3-style [INST] control tokens), Llama 2 (Llama-2-chat, [INST] as plain text), and Gemma 3
(role "model", no system role: the system prompt is folded into the first user turn). Mistral
v0.1 has no system role either and raises on one.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SYSTEM = "You are a terse assistant."
Q1 = "What is the capital of France?"
A1 = "Paris is the capital."
Q2 = "And of Italy?"
A2 = "Rome, since 1871."
Q3 = "Thanks!"
A3 = "You are welcome."
CORPUS = [SYSTEM, Q1, A1, Q2, A2, Q3, A3, "Hello there, how are you today? I am fine.", "user assistant system model"]

QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class Family:
    name: str
    tokenizer: PreTrainedTokenizerFast
    end_of_turn: str  # the token that closes an assistant turn
    system: str  # "native", "folds" (into the first user turn) or "raises"
    answer_text: Callable[[str], str]  # decoded text of an assistant turn's trained tokens
    stop_tokens: tuple[str, ...]  # expected stop_token_ids, as tokens, in order


def train_tokenizer(
    *,
    specials: list[str],
    template: str | None,
    style: str = "bytelevel",
    corpus: list[str] = CORPUS,
    **roles: str,
) -> PreTrainedTokenizerFast:
    """A BPE tokenizer over `corpus` whose `specials` are special tokens with ids 0..n-1."""
    if style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-like, as Llama 2 and Mistral use
        tok = Tokenizer(models.BPE(unk_token=roles.get("unk_token")))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = list(string.printable) + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=1, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    named = set(roles.values())
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=[s for s in specials if s not in named],
        chat_template=template,
        clean_up_tokenization_spaces=False,
        **roles,
    )


def build_families() -> dict[str, Family]:
    return {
        "chatml": Family(
            "chatml",
            train_tokenizer(
                specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                template=QWEN_TEMPLATE,
                eos_token="<|im_end|>",
                pad_token="<|endoftext|>",
            ),
            "<|im_end|>",
            "native",
            lambda a: a + "<|im_end|>",
            ("<|im_end|>",),
        ),
        "llama3": Family(
            "llama3",
            train_tokenizer(
                specials=[
                    "<|begin_of_text|>",
                    "<|end_of_text|>",
                    "<|start_header_id|>",
                    "<|end_header_id|>",
                    "<|eot_id|>",
                    "<|finetune_right_pad_id|>",
                ],
                template=LLAMA3_TEMPLATE,
                bos_token="<|begin_of_text|>",
                eos_token="<|end_of_text|>",
            ),
            "<|eot_id|>",
            "native",
            lambda a: a + "<|eot_id|>",
            ("<|eot_id|>", "<|end_of_text|>"),
        ),
        "mistral": Family(
            "mistral",
            train_tokenizer(
                specials=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
                template=MISTRAL_TEMPLATE,
                style="metaspace",
                bos_token="<s>",
                eos_token="</s>",
                unk_token="<unk>",
            ),
            "</s>",
            "raises",
            lambda a: a + "</s>",
            ("</s>",),
        ),
        "llama2": Family(
            "llama2",
            train_tokenizer(
                specials=["<unk>", "<s>", "</s>"],
                template=LLAMA2_TEMPLATE,
                style="metaspace",
                bos_token="<s>",
                eos_token="</s>",
                unk_token="<unk>",
            ),
            "</s>",
            "native",
            lambda a: f"{a} </s>",  # the trained "▁Paris" decodes without its leading space
            ("</s>",),
        ),
        "gemma": Family(
            "gemma",
            train_tokenizer(
                specials=["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                template=GEMMA3_TEMPLATE,
                bos_token="<bos>",
                eos_token="<eos>",
                pad_token="<pad>",
            ),
            "<end_of_turn>",
            "folds",
            lambda a: a + "<end_of_turn>",
            ("<end_of_turn>", "<eos>"),
        ),
    }


def tiny_llama(
    vocab_size: int, attn_implementation: str = "sdpa", seed: int = 0, hidden_size: int = 32, eos_token_id=None
) -> LlamaForCausalLM:
    """A 2-layer Llama small enough to run many forward passes in a second."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config)


def labelled_runs(tokenizer, labels: list[int]) -> list[str]:
    """Decoded text of each contiguous run of trained labels."""
    runs, current = [], []
    for label in labels + [-100]:
        if label != -100:
            current.append(label)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs
