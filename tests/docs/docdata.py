"""JSON and YAML blocks: data examples go through the data stage's format detection and
validation, error bodies through the serve protocol, configs through tunesmith's config classes."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import yaml

from tunesmith.config import load_config
from tunesmith.data import formats, schema
from tunesmith.data.config import DataInspectConfig, DataPrepareConfig, DemoDataConfig
from tunesmith.eval.config import EvalConfig
from tunesmith.export.config import ExportConfig, MergeConfig, ParityConfig
from tunesmith.models.config import ModelConfig
from tunesmith.quickstart_config import QuickstartConfig
from tunesmith.serve import protocol
from tunesmith.serve.config import ServeConfig
from tunesmith.train.config import TrainConfig

# The config class of each verb, for `<!-- doc-test: config VERB -->` and the page default.
CONFIGS = {"train": TrainConfig, "serve": ServeConfig, "eval": EvalConfig, "merge": MergeConfig,
           "export": ExportConfig, "parity": ParityConfig, "prepare": DataPrepareConfig,
           "inspect": DataInspectConfig, "demo": DemoDataConfig, "quickstart": QuickstartConfig}
PAGE_CONFIG = {"train.md": "train", "serve.md": "serve", "eval.md": "eval", "export.md": "export",
               "data.md": "prepare", "choosing-a-method.md": "train"}
ACCELERATE_KEYS = {"compute_environment", "distributed_type", "num_processes", "fsdp_config", "deepspeed_config"}


def json_values(text: str) -> list[object]:
    """A block holds one JSON document, or one per line (JSONL)."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AssertionError(f"line {number} is not valid JSON: {exc}") from None
    return values


def documented_format(prose: str) -> str | None:
    """The format the text before a data example names, as in "**Alpaca** (`alpaca`):"."""
    names = re.findall(r"\(`(" + "|".join(formats.FORMATS) + r")`\)", prose)
    return names[-1] if names else None


def check_data_row(row: dict, expected: str | None) -> str:
    """One documented example row, alone in a file, must be detected as `expected` and pass every
    check of `data inspect` (with the embedded model's chat template), using all its fields."""
    from tunesmith.data import inspect

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "example.jsonl"
        path.write_text(json.dumps(row) + "\n", encoding="utf-8")
        result = inspect.run(DataInspectConfig(inputs=[path], model=ModelConfig()))
    stats, summary = result.stats, result.stats.inputs[0]
    if expected:
        assert summary.format == expected, f"documented as `{expected}`, detected as `{summary.format}`"
    problems = [f.render() for findings in stats.examples.values() for f in findings]
    assert stats.kept == 1, f"the example is rejected: {problems}"
    assert not summary.ignored_fields, f"fields the format does not use: {dict(summary.ignored_fields)}"
    return summary.format


def check_schema(row: dict) -> None:
    """The internal-schema illustration: known keys in the order rows are written, and the roles."""
    def in_order(keys: list[str], order: tuple[str, ...], what: str) -> None:
        assert set(keys) <= set(order), f"unknown {what} keys {sorted(set(keys) - set(order))}"
        assert keys == sorted(keys, key=order.index), f"{what} keys {keys} are not in written order {order}"

    in_order(list(row), schema.ROW_KEYS, "row")
    for message in row.get("messages", []):
        in_order(list(message), schema.MESSAGE_KEYS, "message")
        roles = message["role"].split("|")
        assert set(roles) <= set(schema.ROLES), f"unknown roles {roles}"


def check_error_envelope(body: dict) -> None:
    error = body["error"]
    built = protocol.APIError(400, error.get("message", ""), type=error.get("type", ""), param=error.get("param"),
                              code=error.get("code"))
    assert built.body() == body, f"the server's error body is {built.body()}"


def check_json_block(text: str, prose: str, marker_kind: str | None) -> str:
    values = json_values(text)
    if marker_kind == "schema":
        for value in values:
            check_schema(value)
        return "schema"
    if all(isinstance(v, dict) and set(v) == {"error"} for v in values):
        for value in values:
            check_error_envelope(value)
        return "error body"
    if all(formats.signature(v) for v in values):
        expected = documented_format(prose)
        return ", ".join(check_data_row(v, expected) for v in values)
    return "parsed"


def config_class(data: dict, page: str, marker_arg: str) -> type | None:
    if marker_arg:
        assert marker_arg in CONFIGS, f"unknown config {marker_arg!r}; known: {sorted(CONFIGS)}"
        return CONFIGS[marker_arg]
    default = CONFIGS.get(PAGE_CONFIG.get(page, ""))
    if default is not None and set(data) <= set(default.model_fields):
        return default
    fits = [cls for cls in dict.fromkeys(CONFIGS.values()) if set(data) <= set(cls.model_fields)]
    assert len(fits) == 1, (f"cannot tell which config this is (keys {sorted(data)} fit {[c.__name__ for c in fits]}); "
                            "mark it <!-- doc-test: config VERB -->")
    return fits[0]


def check_yaml_block(text: str, page: str, marker_arg: str) -> str:
    data = yaml.safe_load(text)
    assert isinstance(data, dict), "a YAML block must be a mapping"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "block.yaml"
        path.write_text(text, encoding="utf-8")
        if ACCELERATE_KEYS & set(data) and not marker_arg:
            from accelerate.commands.config.config_args import ClusterConfig

            ClusterConfig.from_yaml_file(path)
            return "accelerate config"
        cls = config_class(data, page, marker_arg)
        load_config(cls, path)
    return cls.__name__
