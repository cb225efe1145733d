"""GGUF bases: a .gguf file is dequantised into a cached Hugging Face directory whose logits and
tokenizer equal the GGUF's, and every stage reaches it through `model: FILE.gguf`."""

import json

import pytest
import torch

from tunesmith.errors import ModelError
from tunesmith.export.gguf import write_gguf
from tunesmith.models import default_model_path
from tunesmith.models.gguf_import import file_sha256, import_gguf
from tunesmith.models.loading import resolve_model_path


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _gguf(tiny_llama, path, quant):
    model, tokenizer = tiny_llama
    return write_gguf(model, tokenizer, path, quant, "tiny", say=lambda *_: None).path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_f32_gguf_imports_to_the_original_model(tiny_llama, tmp_path, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny_llama
    path = _gguf(tiny_llama, tmp_path / "tiny-f32.gguf", "f32")
    result = import_gguf(path, say=lambda *_: None)
    assert result.directory.parent == cache / "gguf" and result.directory.name.startswith(result.sha256[:16])
    imported = AutoModelForCausalLM.from_pretrained(result.directory).eval()
    assert getattr(imported, "hf_quantizer", None) is None  # plain weights, trainable and mergeable
    ids = torch.tensor([tokenizer("Where is my order? It never arrived.")["input_ids"]])
    assert torch.allclose(_logits(imported, ids), _logits(model, ids), atol=1e-5, rtol=0)
    loaded_tokenizer = AutoTokenizer.from_pretrained(result.directory)
    text = "Refund for order #55120, please 🙂"
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    messages = [{"role": "user", "content": "hi"}]
    assert loaded_tokenizer.apply_chat_template(messages, tokenize=False) == \
        tokenizer.apply_chat_template(messages, tokenize=False)


def test_quantised_gguf_import_equals_the_dequantised_gguf_and_records_its_source(tiny_llama, tmp_path, cache):
    from transformers import AutoModelForCausalLM

    path = _gguf(tiny_llama, tmp_path / "tiny-q8.gguf", "q8_0")
    out = tmp_path / "imported"
    result = import_gguf(path, out=out, say=lambda *_: None)
    assert result.directory == out and not result.reused
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == file_sha256(path) and manifest["source"]["name"] == "tiny-q8.gguf"
    assert manifest["quantization"]["file_type"] == "Q8_0" and manifest["quantization"]["tensor_types"]["Q8_0"] > 0
    assert manifest["dtype"] == "fp32"
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32).eval()
    imported = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.arange(5, 40)[None]
    assert torch.equal(_logits(imported, ids), _logits(reference, ids))
    # the same bytes again: reused as they are, not re-imported
    assert import_gguf(path, out=out, say=lambda *_: None).reused


def test_model_path_naming_a_gguf_resolves_to_its_cached_import(tiny_llama, tmp_path, cache):
    path = _gguf(tiny_llama, tmp_path / "tiny.gguf", "f16")
    first = resolve_model_path(str(path))
    assert (cache / "gguf").is_dir() and first.startswith(str((cache / "gguf").resolve()))
    assert resolve_model_path(str(path)) == first  # keyed by content: stable across stages
    copy = tmp_path / "elsewhere" / "same.gguf"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert resolve_model_path(str(copy)) == first


def test_refuses_a_non_gguf_file_and_a_foreign_out_directory(tiny_llama, tmp_path, cache):
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match="not a readable GGUF"):
        import_gguf(bogus, say=lambda *_: None)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    path = _gguf(tiny_llama, tmp_path / "tiny2.gguf", "f32")
    with pytest.raises(ModelError, match="already holds files"):
        import_gguf(path, out=taken, say=lambda *_: None)
    assert (taken / "notes.txt").read_text() == "mine"


def test_models_import_verb(tiny_llama, tmp_path, cache):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    path = _gguf(tiny_llama, tmp_path / "tiny-cli.gguf", "f32")
    result = CliRunner().invoke(app, ["models", "import", str(path), "--out", str(tmp_path / "cli-out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli-out" / "config.json").is_file()
    assert str(tmp_path / "cli-out") in result.output
