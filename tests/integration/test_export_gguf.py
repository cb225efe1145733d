"""GGUF export: every tensor with its shape, the tokenizer metadata, and round trips through an
independent reader (transformers' GGUF loader) and, when installed, llama.cpp."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tunesmith.errors import ConfigError
from tunesmith.export.gguf import interleave_rotary, llama3_rope_factors, llama_cpp_available, write_gguf
from tunesmith.export.verify import transformers_readback
from tunesmith.models import default_model_path

import tuned_helpers as helpers


@pytest.fixture(scope="module")
def exported():
    out, result = helpers.ollama_export()
    return out, result, Path(result["gguf"])


def _fields(reader):
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_every_tensor_is_written_with_its_shape(exported):
    import gguf
    from transformers import AutoConfig

    _, _, path = exported
    config = AutoConfig.from_pretrained(default_model_path())
    reader = gguf.GGUFReader(path)
    tensors = {t.name: [int(d) for d in reversed(t.shape)] for t in reader.tensors}
    head_dim = config.hidden_size // config.num_attention_heads
    expected = {"token_embd.weight": [config.vocab_size, config.hidden_size], "output_norm.weight": [config.hidden_size]}
    for i in range(config.num_hidden_layers):
        expected.update({
            f"blk.{i}.attn_norm.weight": [config.hidden_size], f"blk.{i}.ffn_norm.weight": [config.hidden_size],
            f"blk.{i}.attn_q.weight": [config.num_attention_heads * head_dim, config.hidden_size],
            f"blk.{i}.attn_k.weight": [config.num_key_value_heads * head_dim, config.hidden_size],
            f"blk.{i}.attn_v.weight": [config.num_key_value_heads * head_dim, config.hidden_size],
            f"blk.{i}.attn_output.weight": [config.hidden_size, config.num_attention_heads * head_dim],
            f"blk.{i}.ffn_gate.weight": [config.intermediate_size, config.hidden_size],
            f"blk.{i}.ffn_up.weight": [config.intermediate_size, config.hidden_size],
            f"blk.{i}.ffn_down.weight": [config.hidden_size, config.intermediate_size],
        })
    assert tensors == expected  # tied embeddings: no output.weight, llama.cpp reuses token_embd
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["output_norm.weight"] == "F32"
    fields = _fields(reader)
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == config.num_hidden_layers
    assert fields["llama.attention.head_count_kv"] == config.num_key_value_heads
    assert fields["llama.context_length"] == config.max_position_embeddings
    assert fields["llama.rope.freq_base"] == pytest.approx(config.rope_parameters["rope_theta"])


def test_tokenizer_special_tokens_and_chat_template_metadata(exported):
    import gguf
    from transformers import AutoTokenizer

    _, _, path = exported
    tokenizer = AutoTokenizer.from_pretrained(helpers.lora_run() / "adapter")
    fields = _fields(gguf.GGUFReader(path))
    vocab = tokenizer.get_vocab()
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    types = fields["tokenizer.ggml.token_type"]
    for special in ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|im_start|>", "<|im_end|>"):
        assert types[vocab[special]] == gguf.TokenType.CONTROL
    assert types[vocab["Ġthe"]] == gguf.TokenType.NORMAL
    assert fields["tokenizer.ggml.bos_token_id"] == vocab["<|begin_of_text|>"]
    assert fields["tokenizer.ggml.eos_token_id"] == vocab["<|end_of_text|>"]
    assert fields["tokenizer.ggml.eot_token_id"] == vocab["<|im_end|>"]
    assert fields["tokenizer.ggml.padding_token_id"] == vocab["<|pad|>"]
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert len(fields["tokenizer.ggml.merges"]) == len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"])


def test_verification_round_trips_tokenizer_and_agrees_on_next_tokens(exported):
    out, result, _ = exported
    verification = result["verification"]
    assert verification["ok"] and verification["structure"]["ok"]
    readback = verification["transformers"]
    assert readback["tokenizer_identical"] and readback["tokenizer_probe_strings"] >= 10
    assert readback["top1_agreement"] >= 0.99 and readback["positions"] > 100
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "export" and manifest["verification"]["transformers"] == readback
    assert manifest["merge_parity"]["max_abs_logit_diff"] <= 1e-4
    if not llama_cpp_available():
        assert "not installed" in verification["llama_cpp"]["skipped"]


@pytest.mark.llama_cpp
def test_llama_cpp_tokenizes_identically_and_agrees(exported):
    pytest.importorskip("llama_cpp")
    _, result, _ = exported
    check = result["verification"]["llama_cpp"]
    assert check["tokenizer_identical"], check["tokenizer_mismatches"]
    assert check["top1_agreement"] >= 0.99


def test_interleave_rotary_pairs_each_heads_halves():
    # One head of 8 rows: transformers pairs row i with i+4 (rotate-half); llama.cpp wants pairs adjacent.
    rows = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    assert interleave_rotary(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    two_heads = np.arange(8, dtype=np.float32)[:, None]
    assert interleave_rotary(two_heads, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_llama3_rope_factors_keep_high_and_scale_low_frequencies():
    factors = llama3_rope_factors({"rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 128)
    assert factors.shape == (64,) and factors[0] == 1.0 and factors[-1] == pytest.approx(8.0)
    assert np.all(np.diff(factors) >= 0)


def _tiny(arch_config, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(arch_config).eval()


def _sentencepiece_tokenizer():
    """A SentencePiece-style BPE (byte fallback, ▁ for spaces) like Llama 2 and Mistral ship."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *bytes_],
                                  show_progress=False)
    text = [line for line in helpers.TICKETS_TEST.read_text().splitlines()[:60]]
    tok.train_from_iterator(text, trainer=trainer)
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = "{% for m in messages %}{{ '<s>' + m['role'] + ': ' + m['content'] + '</s>' }}{% endfor %}" \
                         "{% if add_generation_prompt %}{{ '<s>assistant: ' }}{% endif %}"
    return fast


def test_mistral_with_sentencepiece_tokenizer_and_qwen2_round_trip(tmp_path):
    from transformers import AutoTokenizer, MistralConfig, Qwen2Config

    import gguf

    spm = _sentencepiece_tokenizer()
    mistral = _tiny(MistralConfig(vocab_size=len(spm), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                  bos_token_id=1, eos_token_id=2), spm)
    plan = write_gguf(mistral, spm, tmp_path / "spm.gguf", "f32", "spm", say=lambda *_: None)
    fields = _fields(gguf.GGUFReader(plan.path))
    assert fields["general.architecture"] == "llama"  # llama.cpp runs Mistral as llama
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_space_prefix"] is True
    byte_id = spm.convert_tokens_to_ids("<0x0A>")
    assert fields["tokenizer.ggml.token_type"][byte_id] == gguf.TokenType.BYTE
    readback = transformers_readback(plan, mistral, spm)
    assert readback["tokenizer_identical"], readback["tokenizer_mismatches"]
    assert readback["top1_agreement"] == 1.0

    # Qwen2: byte-level BPE with Qwen's split regex, rotary halves kept, q/k/v biases.
    qwen_tok = AutoTokenizer.from_pretrained(default_model_path())
    state = json.loads(qwen_tok.backend_tokenizer.to_str())
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    state["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    from tokenizers import Tokenizer

    qwen_tok._tokenizer = Tokenizer.from_str(json.dumps(state))
    qwen = _tiny(Qwen2Config(vocab_size=len(qwen_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=False), qwen_tok)
    plan = write_gguf(qwen, qwen_tok, tmp_path / "qwen.gguf", "f32", "qwen", say=lambda *_: None)
    reader = gguf.GGUFReader(plan.path)
    fields = _fields(reader)
    assert fields["general.architecture"] == "qwen2" and fields["tokenizer.ggml.pre"] == "qwen2"
    names = {t.name for t in reader.tensors}
    assert {"output.weight", "blk.0.attn_q.bias", "blk.0.attn_k.bias"} <= names
    readback = transformers_readback(plan, qwen, qwen_tok)
    assert readback["tokenizer_identical"] and readback["top1_agreement"] == 1.0


def test_k_quants_without_llama_cpp_are_refused_with_a_hint():
    if llama_cpp_available():
        pytest.skip("llama-cpp-python is installed")
    from tunesmith.export.config import ExportConfig
    from tunesmith.export import run as export_run

    with pytest.raises(ConfigError, match="llama-cpp-python") as info:
        export_run.run(ExportConfig(source="runs/not-needed", out=Path("unused.gguf"), quant="q4_k_m"))
    assert "pip install" in info.value.hint
