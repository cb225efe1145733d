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
    # llama.cpp scales each A/B pair by alpha / its own rank (src/llama-adapter.h, get_scale): per-module
    # ranks are served as PEFT computes them, per-module alphas are not
    assert problems("llama.cpp", {**PLAIN, "rank_pattern": {"q_proj": 8}}) == []
    assert "alpha_pattern" in problems("llama.cpp", {**PLAIN, "alpha_pattern": {"q_proj": 8}})[0]
    assert "lora_alpha 0" in problems("llama.cpp", {**PLAIN, "lora_alpha": 0})[0]  # llama.cpp: 0 is "no alpha"
    assert problems("vllm", {**PLAIN, "lora_alpha": 0}) == []
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


@pytest.mark.parametrize("setting, words", [
    ({"lora_bias": True}, "lora_bias"), ({"init_lora_weights": "pissa"}, "init_lora_weights"),
    ({"init_lora_weights": "corda"}, "init_lora_weights"), ({"init_lora_weights": "loftq"}, "init_lora_weights"),
    ({"alora_invocation_tokens": [5]}, "invocation tokens"), ({"layer_replication": [[0, 2]]}, "layer_replication"),
    ({"use_bdlora": True}, "block-diagonal"), ({"use_qalora": True}, "QALoRA"),
    ({"target_parameters": ["experts.gate_up_proj"]}, "target_parameters"),
    ({"trainable_token_indices": [3, 4]}, "trainable_token_indices")])
def test_peft_features_llamacpps_lora_files_cannot_hold(setting, words):
    """A GGUF LoRA file holds plain .lora_a/.lora_b pairs and one alpha (src/llama-adapter.cpp), served on
    the unchanged base: anything else would be refused by llama-server or served wrong."""
    found = problems("llama.cpp", {**PLAIN, **setting})
    assert len(found) == 1 and words in found[0] and "llama.cpp" in found[0]
    for servable in ({"init_lora_weights": True}, {"init_lora_weights": "gaussian"}, {"init_lora_weights": "eva"},
                     {"lora_bias": False}, {"layers_to_transform": [0, 1]}):
        assert problems("llama.cpp", {**PLAIN, **servable}) == []


@pytest.mark.parametrize("engine", ["vllm", "llama.cpp"])
def test_lora_ga_is_refused_since_it_rewrites_the_base(engine):
    """PEFT's LoRA-GA init subtracts scaling * B @ A from the base weight (peft/tuners/lora/layer.py,
    lora_ga_init): on the original base the adapter starts off by that much."""
    found = problems(engine, {**PLAIN, "init_lora_weights": "lora_ga"})
    assert len(found) == 1 and "init_lora_weights" in found[0]


def test_llama_server_gets_its_own_key_and_none_of_the_shells_conflicting_settings(monkeypatch):
    """llama-server reads LLAMA_API_KEY and LLAMA_ARG_* before argv (common/arg.cpp,
    common_params_parse_ex): a key from the shell would be required of tunesmith's requests."""
    from tunesmith.serve.engines.llamacpp import LlamaCppEngine
    from tunesmith.serve.engines.remote import NameRegistry

    def engine(**cfg):
        return LlamaCppEngine(ServeConfig(engine="llama.cpp", **cfg), NameRegistry(), base_name="b", base_config=None,
                              context_length=64)

    for flag in ("--api-key", "--api-key-file=/k"):
        with pytest.raises(ConfigError, match="--api-key"):
            engine(engine_options={"extra_args": [flag, "k"]})
    shell = {"LLAMA_API_KEY": "users-key", "LLAMA_ARG_API_KEY_FILE": "/nowhere", "LLAMA_ARG_PORT": "1",
             "LLAMA_ARG_NO_CONTEXT_SHIFT": "1", "LLAMA_ARG_API_PREFIX": "/p", "LLAMA_ARG_THREADS": "3",
             "LLAMA_ARG_N_GPU_LAYERS": "99", "HOME": "/home/u"}
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    first = engine()
    env = first.environment()
    assert env["LLAMA_API_KEY"] == first.engine_key and first.engine_key not in ("users-key", "")
    assert "," not in first.engine_key  # llama-server splits its keys on commas
    assert first.client_headers() == {"Authorization": f"Bearer {first.engine_key}"}
    assert {n for n in shell if n in env} == {"LLAMA_API_KEY", "LLAMA_ARG_THREADS", "LLAMA_ARG_N_GPU_LAYERS", "HOME"}
    assert "LLAMA_ARG_THREADS" not in engine(threads=2).environment()  # tunesmith passes --threads 2 then
    assert engine().engine_key != first.engine_key  # a new key for each engine


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
