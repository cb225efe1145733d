"""The GGUF LoRA converter: what llama.cpp computes from the converted file on the exported base
GGUF must be what `tunesmith export gguf` writes for the merged model."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.export.gguf import ARCHITECTURES, convert_tensors
from tunesmith.models.config import ModelConfig
from tunesmith.models.loading import load_model
from tunesmith.serve.engines.gguf_lora import convert_lora_to_gguf

from serve_helpers import build_adapter


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf-lora")
    adapter = build_adapter(folder / "adapter", seed=4, target_modules=("q_proj", "k_proj", "v_proj", "down_proj"))
    base = load_model(ModelConfig(), device="cpu")
    return adapter, base, convert_lora_to_gguf(adapter, base.config, folder / "adapter.gguf")


def _exported(model) -> dict[str, np.ndarray]:
    arch, interleave = ARCHITECTURES[model.config.architectures[0]]
    return {name: load() for name, load in convert_tensors(model, arch, interleave)}


def test_metadata_is_what_llama_cpp_checks(converted):
    import gguf

    adapter, base, path = converted
    reader = gguf.GGUFReader(path)

    def text(key):
        field = reader.fields[key]
        return bytes(field.parts[field.data[0]]).decode()

    assert text("general.type") == "adapter" and text("adapter.type") == "lora"
    assert text("general.architecture") == ARCHITECTURES[base.config.architectures[0]][0]
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == 8.0  # build_adapter: alpha = 2 r, r = 4


def test_lora_on_the_exported_base_equals_the_exported_merged_model(converted):
    """llama.cpp adds scale * alpha / r * (B @ A) to each base GGUF weight; that must give the
    merged model's GGUF weights, q/k rope interleaving included."""
    import gguf
    from peft import PeftModel

    adapter, base, path = converted
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(path).tensors}
    base_weights = _exported(base)
    merged = PeftModel.from_pretrained(load_model(ModelConfig(), device="cpu"), str(adapter)).merge_and_unload()
    merged_weights = _exported(merged)
    pairs = sorted(name.removesuffix(".lora_a") for name in tensors if name.endswith(".lora_a"))
    layers = base.config.num_hidden_layers
    assert len(pairs) == 4 * layers and any(".attn_q." in p for p in pairs) and any(".ffn_down." in p for p in pairs)
    for name in pairs:
        a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        w = base_weights[name]
        # llama.cpp's shape check: A is r x in, B is out x r (numpy order), matching W (out x in)
        assert a.shape == (4, w.shape[1]) and b.shape == (w.shape[0], 4)
        np.testing.assert_allclose(w + (8.0 / 4) * (b @ a), merged_weights[name], atol=2e-6, rtol=1e-5)
    untouched = [n for n in base_weights if n not in pairs]
    assert all(np.array_equal(base_weights[n], merged_weights[n]) for n in untouched)
