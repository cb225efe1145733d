"""`resolve_source`: what a model argument of eval / merge / export points at."""

import json

import pytest
import yaml

from tunesmith.errors import ModelError
from tunesmith.models import default_model_path
from tunesmith.models.source import resolve_source


def _adapter(folder, base="default"):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "base_model_name_or_path": base}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def test_run_dir_adapter_dir_full_run_model_dir_and_hub_id(tmp_path):
    run = tmp_path / "run"
    _adapter(run / "adapter")
    (run / "manifest.json").write_text(json.dumps({"method": "qlora", "base_model": {"path": str(default_model_path())}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"path": "default", "quantization": "4bit",
                                                                "trust_remote_code": False}}))
    source = resolve_source(run)
    assert source.kind == "adapter" and source.run_dir == run
    assert source.weights == str(default_model_path()) == source.base
    assert source.tokenizer_path == str(run / "adapter")  # the tokenizer training saved
    assert source.quantized_in_training == "4bit"
    assert source.model_config(source.weights, quantization="none").quantization == "none"

    bare = resolve_source(_adapter(tmp_path / "bare"))
    assert bare.kind == "adapter" and bare.run_dir is None and bare.quantized_in_training == "none"

    full = tmp_path / "full"
    (full / "model").mkdir(parents=True)
    (full / "model" / "config.json").write_text("{}")
    (full / "manifest.json").write_text(json.dumps({"method": "full", "base_model": {"path": "default"}}))
    source = resolve_source(full)
    assert source.kind == "full" and source.weights == str((full / "model").resolve())
    assert source.base == str(default_model_path())

    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    (merged / "manifest.json").write_text(json.dumps({"stage": "merge", "base_model": {"path": "default"}}))
    source = resolve_source(merged)
    assert source.kind == "model" and source.base == str(default_model_path())

    hub = resolve_source("org/some-model")
    assert hub.kind == "model" and hub.weights == "org/some-model" and hub.base is None


def test_a_folder_that_is_no_model_is_a_user_error(tmp_path):
    with pytest.raises(ModelError, match="not a training run") as info:
        resolve_source(tmp_path)
    assert "adapter/" in info.value.hint
    with pytest.raises(ModelError, match="not found"):
        resolve_source(tmp_path / "missing" / "run")


def test_an_adapter_on_changed_base_weights_is_refused_unless_the_base_is_named(tmp_path):
    import shutil

    from tunesmith.models.loading import weights_fingerprint

    base = tmp_path / "base"
    shutil.copytree(default_model_path(), base)
    run = tmp_path / "run"
    _adapter(run / "adapter", base=str(base))
    recorded = {"method": "lora", "base_model": {"path": str(base), "weights_sha256": weights_fingerprint(str(base))}}
    (run / "manifest.json").write_text(json.dumps(recorded))
    assert resolve_source(run).base == str(base)

    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the same file name and size, other weights
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="trained on other weights") as info:
        resolve_source(run)
    assert "--base" in info.value.hint
    assert resolve_source(run, base=str(base)).base == str(base)


def test_the_base_fingerprint_covers_only_the_shards_transformers_loads(tmp_path):
    from tunesmith.models.loading import weights_fingerprint

    base = tmp_path / "sharded"
    base.mkdir()
    (base / "model-00001-of-00002.safetensors").write_bytes(b"first shard")
    (base / "model-00002-of-00002.safetensors").write_bytes(b"second shard")
    (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    before = weights_fingerprint(str(base))
    (base / "consolidated.safetensors").write_bytes(b"the same weights in another layout")
    assert weights_fingerprint(str(base)) == before
    (base / "model-00002-of-00002.safetensors").write_bytes(b"changed shard")
    assert weights_fingerprint(str(base)) != before


def test_an_untouched_base_is_not_hashed_again(tmp_path, monkeypatch):
    import shutil

    from tunesmith.models import adapters
    from tunesmith.models.loading import weights_fingerprint, weights_stamp

    base = tmp_path / "base"
    shutil.copytree(default_model_path(), base)
    run = tmp_path / "run"
    _adapter(run / "adapter", base=str(base))
    (run / "manifest.json").write_text(json.dumps({"method": "lora", "base_model": {
        "path": str(base), "weights_sha256": weights_fingerprint(str(base)), "weights_stamp": weights_stamp(str(base))}}))

    def no_hashing(path):
        raise AssertionError("an untouched base must not be hashed again")

    monkeypatch.setattr(adapters, "weights_fingerprint", no_hashing)
    assert resolve_source(run).base == str(base)
    monkeypatch.undo()
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="trained on other weights"):
        resolve_source(run)
