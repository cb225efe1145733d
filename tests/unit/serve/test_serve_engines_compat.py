"""Which adapters each engine can serve (serve/engines/compat.py), checked before training and
at adapter load, and the engines' command lines."""

from __future__ import annotations

import json

import pytest

from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.serve.config import ServeConfig
from tunesmith.serve.engines.compat import check_training, problems, vllm_rank
from tunesmith.serve.engines.llamacpp import llama_server_command
from tunesmith.serve.engines.vllm import vllm_command
from tunesmith.train.config import TrainConfig

from serve_helpers import build_adapter

PLAIN = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "bias": "none"}


@pytest.mark.parametrize("engine", ["vllm", "llama.cpp"])
def test_a_plain_lora_adapter_is_servable_by_both(engine):
    assert problems(engine, PLAIN) == []
    assert problems(engine, {**PLAIN, "target_modules": "all-linear"}) == []


@pytest.mark.parametrize("engine", ["vllm", "llama.cpp"])
@pytest.mark.parametrize("setting, words", [
    ({"use_dora": True}, "DoRA"), ({"modules_to_save": ["score"]}, "modules_to_save"),
    ({"bias": "lora_only"}, "bias"), ({"target_modules": ["q_proj", "lm_head"]}, "lm_head"),
    ({"target_modules": ["model.embed_tokens"]}, "embed_tokens")])
def test_settings_no_engine_serves_are_refused_with_the_reason(engine, setting, words):
    found = problems(engine, {**PLAIN, **setting})
    assert len(found) == 1 and words in found[0] and engine in found[0]


def test_rank_limits_and_scaling_differ_per_engine():
    assert problems("vllm", {**PLAIN, "r": 512}) == []
    assert "512" in problems("vllm", {**PLAIN, "r": 1024})[0]
    assert problems("llama.cpp", {**PLAIN, "r": 1024}) == []
    assert problems("vllm", {**PLAIN, "use_rslora": True}) == []
    assert "rsLoRA" in problems("llama.cpp", {**PLAIN, "use_rslora": True})[0]
    assert "rank_pattern" in problems("llama.cpp", {**PLAIN, "rank_pattern": {"q_proj": 8}})[0]
    assert problems("vllm", {**PLAIN, "r": 8, "rank_pattern": {"q_proj": 1024}})  # the largest rank counts


def test_vllm_rank_buckets():
    assert [vllm_rank(r) for r in (1, 2, 8, 9, 200, 300, 512)] == [1, 8, 8, 16, 256, 320, 512]
    with pytest.raises(ValueError):
        vllm_rank(513)


def test_training_refuses_what_the_chosen_engine_cannot_serve_before_it_starts():
    cfg = TrainConfig.model_validate({"lora": {"use_dora": True, "r": 8}, "train": {"serve_compat": "vllm"}})
    with pytest.raises(ConfigError, match="DoRA"):
        check_training(cfg)
    check_training(TrainConfig.model_validate({"lora": {"use_dora": True}}))  # no serve_compat: no check
    check_training(TrainConfig.model_validate({"method": "full", "train": {"serve_compat": "llama.cpp"}}))
    check_training(TrainConfig.model_validate({"train": {"serve_compat": "llama.cpp"}}))  # the defaults serve


def test_adapter_load_applies_the_same_rules(tmp_path):
    """An rsLoRA adapter, which tunesmith's own engine serves, is refused for llama.cpp at load."""
    import json

    from tunesmith.serve.state import create_state

    adapter = build_adapter(tmp_path / "rs", seed=3)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    with pytest.raises(TunesmithError, match="rsLoRA"):
        create_state(ServeConfig(engine="llama.cpp", adapters={"rs": str(adapter)}))


def _vllm_lora_modules(item: str) -> dict:
    """How vLLM reads one --lora-modules item (LoRAParserAction, vllm/entrypoints/common/cli_args.py)."""
    if "=" in item and "," not in item:
        name, path = item.split("=", 1)
        return {"name": name, "path": path}
    return json.loads(item)


def test_vllm_command_lists_every_adapter_and_the_lora_limits():
    argv = vllm_command(executable="vllm", model="/m", served_name="base", host="127.0.0.1", port=9,
                        adapters={"a": "/x/a", "b": "/runs/lr=1e-4,r=16/adapter"}, max_loras=4, max_lora_rank=16,
                        max_num_seqs=32, max_model_len=2048, extra_args=["--enforce-eager"])
    start = argv.index("--lora-modules")
    assert argv[:start] == ["vllm", "serve", "/m", "--served-model-name", "base", "--host", "127.0.0.1", "--port",
                            "9", "--enable-lora", "--max-loras", "4", "--max-lora-rank", "16", "--max-num-seqs", "32",
                            "--max-model-len", "2048"]
    # a path with a comma would not survive vLLM's `name=path` form: every item is JSON
    assert [_vllm_lora_modules(item) for item in argv[start + 1:start + 3]] == [
        {"name": "a", "path": "/x/a", "base_model_name": "base"},
        {"name": "b", "path": "/runs/lr=1e-4,r=16/adapter", "base_model_name": "base"}]
    assert argv[start + 3:] == ["--enforce-eager"]


def test_vllm_command_carries_the_model_settings():
    common = dict(executable="vllm", model="org/m", served_name="m", host="h", port=1, adapters={}, max_loras=1,
                  max_lora_rank=8, max_num_seqs=1)
    argv = vllm_command(**common, dtype="bf16", revision="v2", trust_remote_code=True)
    assert argv[argv.index("--dtype") + 1] == "bfloat16" and argv[argv.index("--revision") + 1] == "v2"
    assert "--trust-remote-code" in argv
    plain = vllm_command(**common)  # `auto` dtype is vLLM's own choice; no LoRA modules, no flag
    assert not {"--dtype", "--revision", "--trust-remote-code", "--lora-modules", "--max-model-len"} & set(plain)


def test_vllm_engine_refuses_settings_vllm_cannot_honour(monkeypatch):
    from tunesmith.serve.engines.remote import NameRegistry
    from tunesmith.serve.engines.vllm import VLLMEngine

    def engine(**cfg):
        return VLLMEngine(ServeConfig(engine="vllm", **cfg), NameRegistry(), base_name="b", model_path="/m")

    with pytest.raises(ConfigError, match="bitsandbytes"):  # vLLM 0.33 has no bitsandbytes method
        engine(model={"path": "default", "quantization": "4bit"})
    with pytest.raises(ConfigError, match="--api-key"):
        engine(engine_options={"extra_args": ["--api-key=k"]})
    monkeypatch.setenv("VLLM_API_KEY", "users-key")
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1")
    env = engine().environment()  # no --adapter-root: no runtime loads, whatever the shell says
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env and env["VLLM_API_KEY"] not in ("users-key", "")
    assert engine().environment()["VLLM_API_KEY"] != env["VLLM_API_KEY"]  # a new key for each engine


@pytest.mark.parametrize("setting, words", [
    ({"lora_bias": True}, "lora_bias"), ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights"),
    ({"init_lora_weights": "olora"}, "init_lora_weights"), ({"alora_invocation_tokens": [5]}, "Activated LoRA"),
    ({"layer_replication": [[0, 2]]}, "layer_replication"), ({"use_qalora": True}, "QALoRA")])
def test_peft_features_vllms_loader_refuses(setting, words):
    """vllm/lora/peft_helper.py, PEFTHelper._validate_features: each of these fails vLLM's adapter load."""
    found = problems("vllm", {**PLAIN, **setting})
    assert len(found) == 1 and words in found[0]
    for servable in ({"init_lora_weights": True}, {"init_lora_weights": "gaussian"}, {"lora_bias": False}):
        assert problems("vllm", {**PLAIN, **servable}) == []


def test_llama_server_command_loads_adapters_unapplied():
    argv = llama_server_command(executable="llama-server", gguf="/m.gguf", host="127.0.0.1", port=9,
                                lora_files=["/l0.gguf", "/l1.gguf"], parallel=8, context_length=2048, threads=2)
    assert argv == ["llama-server", "-m", "/m.gguf", "--host", "127.0.0.1", "--port", "9", "--parallel", "8",
                    "--ctx-size", "16384", "--no-webui", "--threads", "2", "--lora", "/l0.gguf",
                    "--lora", "/l1.gguf", "--lora-init-without-apply", "--cache-ram", "0"]
    assert "--lora-init-without-apply" not in llama_server_command(
        executable="s", gguf="/m", host="h", port=1, lora_files=[], parallel=1, context_length=8)


def test_tunesmith_train_refuses_before_reading_any_data(tmp_path):
    """`serve_compat` is checked first thing in `train.sft.run`: the data path does not even exist."""
    from tunesmith.train.sft import run

    cfg = TrainConfig.model_validate({"lora": {"modules_to_save": ["lm_head"]}, "output_dir": str(tmp_path / "out"),
                                      "data": {"path": str(tmp_path / "missing")},
                                      "train": {"serve_compat": "llama.cpp"}})
    with pytest.raises(ConfigError, match="modules_to_save"):
        run(cfg)
    assert not (tmp_path / "out").exists()
