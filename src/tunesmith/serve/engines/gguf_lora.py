"""PEFT LoRA adapters as GGUF LoRA files, the form llama.cpp's `--lora` loads.

The layout follows what llama.cpp's loader checks (`general.type = adapter`, `adapter.type =
lora`, `adapter.lora.alpha`, the base's `general.architecture`, and for every adapted weight W
of the base GGUF a pair `W.lora_a` (r x in) and `W.lora_b` (out x r), scaled by alpha / r at run
time). Tensor names come from the `gguf` package's name map and the one layout change is the
same as in `tunesmith export gguf`: on Llama-family models the rows of q/k projections are
interleaved for llama.cpp's rope, which for a LoRA pair means B's rows (A is unchanged, since
permuting W's rows permutes B @ A's rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunesmith.errors import ModelError
from tunesmith.serve.engines.compat import check

PEFT_PREFIX = "base_model.model."


def convert_lora_to_gguf(adapter_dir: Path, base_config, out: Path) -> Path:
    """Write the adapter in `adapter_dir` (adapter_config.json + adapter_model.safetensors) to
    `out` for a base with transformers config `base_config`; returns `out`."""
    import gguf
    from safetensors.numpy import load_file

    from tunesmith.export.gguf import ARCHITECTURES, interleave_rotary

    peft_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    check("llama.cpp", peft_config, what=f"the adapter in {adapter_dir}")
    architecture = (getattr(base_config, "architectures", None) or ["?"])[0]
    if architecture not in ARCHITECTURES:
        raise ModelError(f"cannot convert an adapter of a {architecture} model to GGUF",
                         hint=f"supported architectures: {', '.join(ARCHITECTURES)}")
    arch_name, interleave = ARCHITECTURES[architecture]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names = gguf.get_tensor_name_map(arch, base_config.num_hidden_layers)
    heads = base_config.num_attention_heads
    kv_heads = getattr(base_config, "num_key_value_heads", None) or heads

    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, array in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                hf_name = key.removeprefix(PEFT_PREFIX).replace(marker, ".")
                pairs.setdefault(hf_name, {})[part] = array.astype(np.float32)
                break
        else:
            raise ModelError(f"the adapter in {adapter_dir} holds {key}, which is not a LoRA A/B matrix",
                             hint="llama.cpp serves plain LoRA adapters only")
    writer = gguf.GGUFWriter(str(out), arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(peft_config["lora_alpha"]))
    for hf_name, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ModelError(f"the adapter in {adapter_dir} has only one of lora_A/lora_B for {hf_name}")
        found = names.get_type_and_name(hf_name, try_suffixes=(".weight",))
        if found is None:
            raise ModelError(f"the adapter adapts {hf_name}, which the GGUF {arch_name} architecture has no place for")
        name = found[1]
        lora_b = pair["lora_B"]
        if interleave and (".attn_q." in name or ".attn_k." in name):
            lora_b = interleave_rotary(lora_b, heads if ".attn_q." in name else kv_heads)
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(pair["lora_A"]))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(lora_b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
