"""The training benchmark's peer plumbing (bench/): LLaMA-Factory's configuration and data files,
the trained-token count shared by the Trainer-based peers, the comparison table, and the
stand-in for a module that cannot load. Nothing here installs or runs a peer."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from child_runs import counting_trained_tokens, fastest_run, print_table, trained_in  # noqa: E402
from llamafactory_child import Unusable, import_or_stand_in  # noqa: E402
from peers_llamafactory import llamafactory_config, to_yaml, write_dataset  # noqa: E402


def test_config_yaml_reads_back_as_written_even_with_awkward_paths(tmp_path):
    odd = tmp_path / "a: b #c" / "it's \"here\""
    config = llamafactory_config(model=str(odd), dataset_dir=odd / "data", output_dir=odd / "run", template=None,
                                 steps=20, micro_batch_size=4, max_seq_len=256)
    assert yaml.safe_load(to_yaml(config)) == config
    assert config["model_name_or_path"] == str(odd)


def test_config_carries_the_benchmark_settings():
    config = llamafactory_config(model="m", dataset_dir=Path("d"), output_dir=Path("o"), template="smollm2",
                                 steps=20, micro_batch_size=4, max_seq_len=256)
    assert (config["lora_rank"], config["lora_alpha"], config["lora_dropout"], config["lora_target"]) == (16, 32, 0.05,
                                                                                                        "all")
    assert config["neat_packing"] and config["packing"] and config["cutoff_len"] == 256
    assert config["disable_gradient_checkpointing"] and not config["bf16"] and config["use_cpu"]
    assert (config["max_steps"], config["per_device_train_batch_size"], config["learning_rate"]) == (20, 4, 2e-4)
    assert config["template"] == "smollm2" and config["dataset"] == "tickets"


def test_no_template_key_lets_llamafactory_parse_the_tokenizer_template():
    config = llamafactory_config(model="m", dataset_dir=Path("d"), output_dir=Path("o"), template=None,
                                 steps=1, micro_batch_size=1, max_seq_len=64)
    assert "template" not in config


def test_dataset_files_register_the_conversations_as_sharegpt(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Reply in JSON."}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "{}"}], "meta": {"source": "x"}},
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}]
    write_dataset(rows, tmp_path / "data")
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())["tickets"]
    assert info["formatting"] == "sharegpt" and info["columns"] == {"messages": "messages"}
    assert info["tags"]["system_tag"] == "system" and info["tags"]["assistant_tag"] == "assistant"
    written = [json.loads(line) for line in (tmp_path / "data" / info["file_name"]).read_text().splitlines()]
    assert written == [{"messages": row["messages"]} for row in rows]


def test_trained_tokens_are_counted_in_the_steps_trained_not_the_first_position():
    class Base:
        def training_step(self, model, inputs, num_items_in_batch=None):
            return inputs["labels"].shape[0]

    trainer = counting_trained_tokens(Base)()
    labels = torch.tensor([[5, 6, -100, 7], [-100, -100, 8, -100]])
    assert trainer.training_step(None, {"labels": labels}) == 2
    assert trainer.training_step(None, {"labels": labels}, 3) == 2
    assert trainer.trained_tokens == 2 * 3  # 6, 7 and 8 per step; the 5 at position 0 is not a target
    assert trained_in([5, 6, -100, 7]) == 2


def _row(tokens_per_s: float, peak: float) -> dict:
    return {"tokens_per_s": tokens_per_s, "trained_tokens": 100, "seconds": 1.0, "peak_rss_mb": peak}


def test_table_ratios_against_each_peer_and_the_fastest(capsys):
    print_table("h", {"tunesmith": _row(300, 500), "trainer": _row(100, 1000), "trl": _row(200, 400),
                      "llamafactory": {"error": "exit status 1: ImportError: no"}},
                {"trainer": "Trainer", "trl": "TRL", "llamafactory": "LLaMA-Factory"})
    out = capsys.readouterr().out
    assert "LLaMA-Factory  did not run: exit status 1: ImportError: no" in out
    assert "tunesmith / Trainer: trained tokens/s x3.00, peak memory x0.50" in out
    assert "tunesmith / TRL: trained tokens/s x1.50, peak memory x1.25" in out
    assert "tunesmith / best peer (TRL): trained tokens/s x1.50, peak memory x1.25" in out
    assert "tunesmith / LLaMA-Factory" not in out


def test_repeated_runs_report_the_fastest_with_the_range(capsys):
    slow, fast = _row(150, 900), _row(210, 700)
    best = fastest_run([slow, {"error": "killed"}, fast])
    assert best["tokens_per_s"] == 210 and best["peak_rss_mb"] == 700 and best["runs_tokens_per_s"] == [150, 210]
    assert fastest_run([{"error": "a"}, {"error": "b"}]) == {"error": "b"}
    print_table("h", {"tunesmith": fastest_run([_row(300, 500)]), "trl": best}, {"trl": "TRL"})
    out = capsys.readouterr().out
    assert "tunesmith / best peer (TRL): trained tokens/s x1.43" in out
    assert "runs, TRL: 2 runs, 150 to 210 trained tok/s; the table shows the fastest" in out
    assert "runs, tunesmith" not in out  # one run: nothing to add


def test_table_without_a_peer_that_ran_gives_no_ratio(capsys):
    print_table("h", {"tunesmith": _row(300, 500), "trl": {"error": "boom"}}, {})
    assert "no ratio: no peer ran" in capsys.readouterr().out


def test_a_module_that_cannot_load_is_importable_and_fails_on_use(tmp_path, monkeypatch):
    package = tmp_path / "broken_ext_for_test"
    package.mkdir()
    (package / "__init__.py").write_text(
        "try:\n    raise OSError('libc10_cuda.so: cannot open shared object file')\n"
        "except OSError as e:\n    raise OSError('Could not load this library: _ext.so') from e\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_ext_for_test", raising=False)
    notes: list[str] = []
    import_or_stand_in("broken_ext_for_test", notes)
    try:
        import broken_ext_for_test

        assert isinstance(broken_ext_for_test, Unusable)
        assert importlib.util.find_spec("broken_ext_for_test") is not None
        with pytest.raises(ImportError, match="libc10_cuda.so"):
            broken_ext_for_test.load("a.wav")
        assert len(notes) == 1 and "_ext.so" in notes[0] and "libc10_cuda.so" in notes[0]
    finally:
        sys.modules.pop("broken_ext_for_test", None)


def test_a_module_that_loads_is_left_alone():
    notes: list[str] = []
    import_or_stand_in("json", notes)
    assert notes == [] and sys.modules["json"] is json
