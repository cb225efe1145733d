from pathlib import Path

import pytest

from tunesmith.config import StrictModel, config_to_yaml, load_config, parse_override
from tunesmith.data.config import DemoDataConfig
from tunesmith.errors import ConfigError
from tunesmith.models.config import ModelConfig


class Inner(StrictModel):
    learning_rate: float = 1e-4
    epochs: int = 1


class Outer(StrictModel):
    name: str = "run"
    train: Inner = Inner()
    model: ModelConfig = ModelConfig()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_file_and_overrides_in_order(tmp_path):
    path = write(tmp_path, "name: a\ntrain:\n  epochs: 3\n")
    cfg = load_config(Outer, path, ["train.learning_rate=2e-5", "name=b"])
    assert cfg.name == "b"
    assert cfg.train.epochs == 3
    assert cfg.train.learning_rate == pytest.approx(2e-5)


def test_flag_values_sit_between_file_and_overrides(tmp_path):
    path = write(tmp_path, "name: from-file\n")
    assert load_config(Outer, path, values={"name": "from-flag"}).name == "from-flag"
    assert load_config(Outer, path, ["name=from-set"], values={"name": "from-flag"}).name == "from-set"
    assert load_config(Outer, path, values={"name": None}).name == "from-file"


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, "name: a\ntrain:\n  epochs: 3\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path)
    text = str(exc.value)
    assert "train.lerning_rate" in text
    assert f"{path}:4" in text
    assert "did you mean `train.learning_rate`" in text


def test_unknown_top_level_key_from_override():
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, None, ["nmae=x"])
    assert "--set nmae=x" in str(exc.value)
    assert "did you mean `name`" in str(exc.value)


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, None, ["train.zzzzzz=1"])
    assert "valid keys here: learning_rate, epochs" in str(exc.value)


def test_type_error_names_field_path_and_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: many\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path)
    text = str(exc.value)
    assert "field `train.epochs`" in text and f"{path}:2" in text and "'many'" in text


def test_literal_error_lists_allowed_values():
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, None, ["model.dtype=float64"])
    assert "model.dtype" in str(exc.value) and "'bf16'" in str(exc.value)


def test_invalid_yaml_reports_line(tmp_path):
    path = write(tmp_path, "name: a\ntrain: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path)
    assert "invalid YAML" in str(exc.value) and str(path) in str(exc.value)


def test_non_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "absent.yaml")


def test_override_syntax_errors(tmp_path):
    with pytest.raises(ConfigError, match="no '='"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("train..epochs=1")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(Outer, write(tmp_path, "name: a\n"), ["name.sub=1"])


def test_override_values_parse_as_yaml():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("flag=true") == (["flag"], True)
    assert parse_override("s=hello world") == (["s"], "hello world")


def test_model_shorthand_and_print_config_roundtrip(tmp_path):
    cfg = load_config(Outer, write(tmp_path, "model: Qwen/Qwen2.5-0.5B-Instruct\n"))
    assert cfg.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.model.trust_remote_code is False and cfg.model.allow_pickle is False
    dumped = write(tmp_path, config_to_yaml(cfg))
    assert load_config(Outer, dumped) == cfg


def test_demo_config_bounds():
    with pytest.raises(ConfigError, match="train_size"):
        load_config(DemoDataConfig, None, ["train_size=0"])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "examples/configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_train_configs_load(path):
    """Every shipped train config validates, as `tunesmith train CONFIG --print-config` does."""
    from tunesmith.config import load_config
    from tunesmith.train.config import TrainConfig

    cfg = load_config(TrainConfig, path, [])
    if path.name.startswith("multi-gpu-"):
        expected = {"multi-gpu-ddp.yaml": "auto", "multi-gpu-fsdp.yaml": "fsdp",
                    "multi-gpu-deepspeed-zero3.yaml": "deepspeed_zero3"}[path.name]
        assert cfg.train.distributed == expected


def test_printed_config_hides_secrets_and_can_be_reused(tmp_path):
    from tunesmith.serve.config import ServeConfig

    cfg = load_config(ServeConfig, None, [], {"api_key": "sk-secret-value"})
    text = config_to_yaml(cfg)
    assert "sk-secret-value" not in text and "****" not in text
    assert text.startswith("# api_key is set but not shown")
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    assert load_config(ServeConfig, path, []).api_key is None
    assert "# api_key" not in config_to_yaml(load_config(ServeConfig, None, []))


def test_set_reaches_into_a_section_given_as_shorthand(tmp_path):
    """`data: DIR` / `model: ID` in the YAML are sections: `--set data.val_ratio=...` keeps the
    shorthand's path, and `--set data.path=...` replaces it."""
    from tunesmith.train.config import TrainConfig

    config = write(tmp_path, "model: some/base\ndata: data/prepared\n")
    cfg = load_config(TrainConfig, config, ["data.val_ratio=0.2", "model.dtype=bf16"])
    assert cfg.data.path == [Path("data/prepared")] and cfg.data.val_ratio == 0.2
    assert cfg.model.path == "some/base" and cfg.model.dtype == "bf16"
    cfg = load_config(TrainConfig, config, ["data.path=other/dir"])
    assert cfg.data.path == [Path("other/dir")]
    with pytest.raises(ConfigError, match="name is a value, not a section"):
        load_config(Outer, write(tmp_path, "name: a\n"), ["name.sub=1"])
