"""`tunesmith export`, `check parity`, `merge` and `eval` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli import main
from tunesmith.export.gguf import llama_cpp_available

from cli_helpers import run_cli
import tuned_helpers as helpers


@pytest.fixture(scope="module")
def q8_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("q8") / "tickets.q8_0.gguf"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "gguf", str(helpers.lora_run()), "--out", str(out), "--quant", "q8_0", "--ollama",
              "--system-prompt", "You triage support tickets. Answer with JSON."])
    return exit_info.value.code, out


def test_export_gguf_q8_with_modelfile(q8_export):
    import gguf

    code, path = q8_export
    assert code == 0
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["ok"] and manifest["quant"] == "q8_0" and manifest["gguf"] == path.name
    assert manifest["verification"]["transformers"]["tokenizer_identical"]
    assert manifest["verification"]["transformers"]["top1_agreement"] >= 0.95
    assert manifest["verification"]["min_agreement"] == 0.95
    assert manifest["parity"]["ok"]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_down.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    modelfile = (path.parent / "Modelfile").read_text()
    assert f"FROM ./{path.name}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You triage support tickets. Answer with JSON."""' in modelfile


def test_check_parity_exit_codes(capsys, q8_export):
    _, path = q8_export
    code, out, _ = run_cli(capsys, "check", "parity", str(path.parent))
    assert code == 0 and "result: IDENTICAL" in out

    altered = helpers.copy_tree(path.parent, "cli-altered")
    modelfile = altered / "Modelfile"
    modelfile.write_text(modelfile.read_text().replace("<|im_end|>\n<|im_start|>user", "<|im_end|><|im_start|>user"))
    code, out, _ = run_cli(capsys, "check", "parity", str(altered))
    assert code == 1
    assert "result: DIFFERENT" in out and "ollama   DIFFERS" in out and "first difference at token" in out


def test_user_errors_exit_2_without_a_traceback(capsys, tmp_path):
    code, _, err = run_cli(capsys, "merge", str(tmp_path / "missing-run"), "--out", str(tmp_path / "m"))
    assert code == 2 and "error:" in err and "Traceback" not in err
    if not llama_cpp_available():
        code, _, err = run_cli(capsys, "export", "gguf", str(tmp_path), "--quant", "q4_k_m")
        assert code == 2 and "llama-cpp-python" in err and "hint:" in err
    code, _, err = run_cli(capsys, "eval", "--model", str(tmp_path), "--data", str(tmp_path / "none.jsonl"))
    assert code == 2 and "evaluation data not found" in err and "Traceback" not in err
    (tmp_path / "test.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                         '{"role": "assistant", "content": "hello"}]}\n')
    code, _, err = run_cli(capsys, "eval", "--model", str(tmp_path), "--data", str(tmp_path / "test.jsonl"))
    assert code == 2 and "is not a training run" in err and "hint:" in err


def test_print_config_shows_every_option(capsys):
    code, out, _ = run_cli(capsys, "eval", "--print-config", "--json-fields", "category,priority")
    assert code == 0 and "json_fields:\n- category\n- priority" in out and "judge:" in out
    code, out, _ = run_cli(capsys, "export", "ollama", "--print-config")
    assert code == 0 and "format: ollama" in out
