"""Adapters: names, root confinement, refusals on load, and the LRU set of loaded adapters."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tunesmith.errors import ModelError, ServeError
from tunesmith.models import default_model_path
from tunesmith.models.config import ModelConfig
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.serve.adapters import AdapterRegistry, Target, check_name, prepare_adapter, resolve_under_root

from serve_helpers import build_adapter, write_run_dir


@pytest.mark.parametrize("name", ["support", "v1.2_final-B", "x" * 64])
def test_valid_adapter_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "../up", "a/b", "ünï", "semi;colon"])
def test_invalid_adapter_names_are_refused(name):
    with pytest.raises(ServeError):
        check_name(name)


# --------------------------------------------------------------------------- root confinement


@pytest.fixture()
def root(tmp_path):
    inside = tmp_path / "root"
    (inside / "good").mkdir(parents=True)
    (inside / "good" / "adapter_config.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "adapter_config.json").write_text("{}")
    (outside / "secret.safetensors").write_text("not yours")
    return inside, outside


def test_paths_below_the_root_resolve(root):
    inside, _ = root
    assert resolve_under_root(inside, "good") == (inside / "good").resolve()
    assert resolve_under_root(inside, str(inside / "good")) == (inside / "good").resolve()


@pytest.mark.parametrize("escape", ["../outside", "good/../../outside", "good/.."])
def test_dot_dot_is_refused(root, escape):
    with pytest.raises(ServeError, match=r"\.\."):
        resolve_under_root(root[0], escape)


def test_absolute_paths_outside_the_root_are_refused(root):
    inside, outside = root
    with pytest.raises(ServeError, match="outside the adapter root"):
        resolve_under_root(inside, str(outside))
    with pytest.raises(ServeError, match="outside the adapter root"):
        resolve_under_root(inside, "/etc")


def test_symlinks_that_escape_the_root_are_refused(root):
    inside, outside = root
    os.symlink(outside, inside / "link")
    with pytest.raises(ServeError, match="symlink"):
        resolve_under_root(inside, "link")
    os.symlink(outside / "secret.safetensors", inside / "good" / "adapter_model.safetensors")
    with pytest.raises(ServeError, match="symlink"):
        resolve_under_root(inside, "good")


def test_runtime_loading_needs_a_root_and_an_existing_path(root):
    with pytest.raises(ServeError, match="--adapter-root"):
        resolve_under_root(None, "good")
    with pytest.raises(ServeError, match="does not exist"):
        resolve_under_root(root[0], "missing")


# --------------------------------------------------------------------------- validation on load


@pytest.fixture(scope="module")
def base_target():
    tokenizer = load_tokenizer(ModelConfig())
    return Target("tunesmith-demo-4m", None, tokenizer, frozenset({2, 4}))


def _prepare(name, path, base_target, **kwargs):
    options = {"max_rank": 64, "allow_base_mismatch": False, **kwargs}
    return prepare_adapter(name, path, base_target=base_target, served_model=str(default_model_path()),
                           generation_config=None, **options)


def test_run_directories_and_adapter_directories_are_accepted(tmp_path, base_target):
    run = write_run_dir(tmp_path / "run", seed=3)
    assert _prepare("run", run, base_target).info.adapter_dir == run / "adapter"
    prepared = _prepare("bare", run / "adapter", base_target)
    assert prepared.target.adapter == "bare" and 4 in prepared.target.stop_ids


def test_pickle_weights_are_refused(tmp_path, adapter_dirs, base_target):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(adapter_dirs["a1"], pickled)
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="pickle"):
        _prepare("pickled", pickled, base_target)


def test_adapters_for_another_base_are_refused_unless_allowed(tmp_path, base_target):
    other = build_adapter(tmp_path / "other", seed=4, base="someorg/another-model")
    with pytest.raises(ModelError, match="trained on someorg/another-model"):
        _prepare("other", other, base_target)
    assert _prepare("other", other, base_target, allow_base_mismatch=True).name == "other"


def test_rank_over_the_limit_and_dora_are_refused(tmp_path, adapter_dirs, base_target):
    with pytest.raises(ModelError, match="rank 4"):
        _prepare("a1", adapter_dirs["a1"], base_target, max_rank=2)
    dora = build_adapter(tmp_path / "dora", seed=5, use_dora=True)
    with pytest.raises(ModelError, match="DoRA"):
        _prepare("dora", dora, base_target)


def test_adapters_for_layers_the_base_lacks_are_refused(tmp_path, adapter_dirs, base_target):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(adapter_dirs["a1"], broken)
    weights = load_file(broken / "adapter_model.safetensors")
    weights = {k.replace("layers.0.", "layers.99."): v for k, v in weights.items()}
    save_file(weights, broken / "adapter_model.safetensors")
    registry = AdapterRegistry(load_model(ModelConfig(), device="cpu"), max_loaded=2)
    with pytest.raises(ModelError, match="layers.99"):
        registry.add(_prepare("broken", broken, base_target))
    assert registry.names() == []


# --------------------------------------------------------------------------- the LRU set


def _logits(registry, name):
    ids = torch.tensor([[1, 3, 2203, 203, 76, 77]])
    with torch.inference_mode():
        return registry.model(input_ids=ids, adapter_names=[name]).logits[0, -1]


def test_least_recently_used_unpinned_adapter_is_evicted_and_reloads_identically(adapter_dirs, base_target):
    from peft import PeftModel

    registry = AdapterRegistry(load_model(ModelConfig(), device="cpu"), max_loaded=1)
    registry.add(_prepare("a1", adapter_dirs["a1"], base_target))
    first = _logits(registry, "a1")
    registry.add(_prepare("a2", adapter_dirs["a2"], base_target))
    assert registry.loaded_names() == ["a2"] and registry.names() == ["a1", "a2"]

    assert registry.acquire("a1")  # a2 is idle: evicted, a1 comes back from disk
    assert registry.loaded_names() == ["a1"]
    assert torch.equal(_logits(registry, "a1"), first)
    assert not registry.acquire("a2")  # a1 is pinned by a running sequence: no slot
    registry.release("a1")
    assert registry.acquire("a2") and registry.loaded_names() == ["a2"]

    registry.remove("a2")  # still pinned: stays in memory until its sequence ends
    assert registry.names() == ["a1"] and registry.loaded_names() == ["a2"]
    registry.release("a2")
    assert registry.loaded_names() == []
    assert not isinstance(registry.model, PeftModel)  # back to the plain base model


def test_adapters_whose_run_recorded_other_base_weights_are_refused(tmp_path, base_target):
    from tunesmith.models.loading import weights_fingerprint

    run = write_run_dir(tmp_path / "run", seed=5)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["base_model"]["weights_sha256"] = weights_fingerprint(str(default_model_path()))
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert _prepare("same", run, base_target).name == "same"
    manifest["base_model"]["weights_sha256"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="trained on other weights") as info:
        _prepare("changed", run, base_target)
    assert "allow_base_mismatch" in info.value.hint
    assert _prepare("changed", run, base_target, allow_base_mismatch=True).name == "changed"
