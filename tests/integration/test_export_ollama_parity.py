"""Ollama TEMPLATE derivation, Modelfile round trip, the Go-template evaluator, and `check parity`
catching a template that no longer renders as training did."""

from pathlib import Path

import pytest

from tunesmith.chat.templates import render_prompt_text
from tunesmith.errors import ExportError, TemplateError
from tunesmith.export import gotemplate, ollama, parity
from tunesmith.export.config import ParityConfig
from tunesmith.export.probes import probe_prompts
from tunesmith.models import default_model_path

import tuned_helpers as helpers


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path())


def test_go_template_subset():
    data = {"Messages": [{"Role": "user", "Content": "hi"}, {"Role": "assistant", "Content": "yo"}], "System": "S"}
    template = ('{{- $n := 0 }}{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" "system" }}U{{ $i }}:'
                '{{ .Content }}{{ else if eq .Role "tool" }}T{{ else }}A:{{ .Content }}{{ end }}\n'
                '{{- $n = len $.Messages }}{{ end }} n={{ $n }} {{ if and .System (not (eq .System "x")) }}'
                '[{{ .System }}]{{ end }}{{/* a comment */}}  {{- " trimmed" -}}  !')
    assert gotemplate.render(template, data) == "U0:hiA:yo n=2 [S] trimmed!"
    with pytest.raises(TemplateError, match="with"):
        gotemplate.render("{{ with .System }}x{{ end }}", data)
    with pytest.raises(TemplateError, match="missing"):
        gotemplate.render("{{ if .System }}x", data)


def test_derived_template_renders_exactly_like_the_chat_template(tokenizer):
    template = ollama.derive_template(tokenizer, add_bos=True)
    for prompt in probe_prompts():
        expected = render_prompt_text(tokenizer, prompt)
        assert expected.startswith(tokenizer.bos_token)
        # Ollama adds BOS itself (add_bos_token), so the TEMPLATE leaves it out.
        assert ollama.render(template, prompt) == expected[len(tokenizer.bos_token):]


def test_templates_a_go_template_cannot_replay_are_refused():
    from transformers import AutoTokenizer

    numbered = AutoTokenizer.from_pretrained(default_model_path())
    numbered.chat_template = ("{% for m in messages %}{{ 'Turn ' ~ loop.index ~ ' ' ~ m['role'] ~ ': ' ~ m['content'] ~ "
                              "'<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ExportError, match="--ollama-template"):
        ollama.derive_template(numbered, add_bos=True)
    # Like Mistral v3: the system prompt moves into the last user turn, after earlier turns.
    moved = AutoTokenizer.from_pretrained(default_model_path())
    moved.chat_template = (
        "{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
        "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' %}"
        "{{ '[INST] ' + ((sys + ' ') if loop.last and sys else '') + m['content'] + ' [/INST]' }}"
        "{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{% endfor %}")
    with pytest.raises(ExportError, match="--ollama-template"):
        ollama.derive_template(moved, add_bos=True)


def test_a_llama2_style_system_block_is_expressible(tokenizer):
    from transformers import AutoTokenizer

    llama2 = AutoTokenizer.from_pretrained(default_model_path())
    llama2.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set messages = messages[1:] %}"
        "{% else %}{% set sys = '' %}{% endif %}{% for m in messages %}{% if m['role'] == 'user' %}"
        "{{ '[INST] ' + (('<<SYS>>' + sys + '<</SYS>> ') if loop.first and sys else '') + m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + '<|im_end|>' }}{% endif %}{% endfor %}")
    template = ollama.derive_template(llama2, add_bos=True)
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert ollama.render(template, prompt) == "[INST] <<SYS>>S<</SYS>> U [/INST]"


def test_modelfile_round_trip(tmp_path, tokenizer):
    path = tmp_path / "Modelfile"
    written = ollama.write_modelfile(path, tmp_path / "m.gguf", tokenizer, add_bos=True, stop_ids=[4, 2],
                                     system="You triage tickets.\nJSON only.", template=None, description="demo")
    parsed = ollama.parse_modelfile(path.read_text())
    assert parsed.source == "./m.gguf"
    assert parsed.template == written.template and parsed.system == "You triage tickets.\nJSON only."
    assert parsed.stops == ["<|im_end|>", "<|end_of_text|>"]


def test_export_passes_its_own_parity_check():
    out, result = helpers.ollama_export()
    report = result["parity"]
    assert report["ok"] and report["prompts"] == len(probe_prompts())
    assert set(report["identical"]) == {"serving", "gguf", "ollama"}
    assert all(n == report["prompts"] for n in report["identical"].values())
    assert report["taught_stops"] == ["<|im_end|>"]
    assert all("<|im_end|>" in stops for stops in report["stops"].values())
    again = parity.run(ParityConfig(source=str(out)))  # an export dir finds its files
    assert again.ok and again.labels["ollama"] == "ollama (Modelfile)"


def test_check_parity_reports_an_altered_modelfile_template():
    out, _ = helpers.ollama_export()
    altered = helpers.copy_tree(out, "export-altered-modelfile")
    modelfile = altered / "Modelfile"
    text = modelfile.read_text()
    assert "<|im_start|>assistant\n" in text
    modelfile.write_text(text.replace("<|im_start|>assistant\n", "<|im_start|>assistant\n\n"))
    report = parity.run(ParityConfig(source=str(altered)))
    assert not report.ok
    assert report.identical["ollama"] == 0 and report.identical["gguf"] == report.prompts
    assert {d["path"] for d in report.differences} == {"ollama"}
    assert "DIFFERENT" in report.render() and "ollama" in report.render()


def test_check_parity_reports_a_training_template_that_drifted_from_the_gguf():
    out, result = helpers.ollama_export()
    run = helpers.copy_tree(helpers.lora_run(), "run-altered-template")
    template = run / "adapter" / "chat_template.jinja"
    original = template.read_text()
    altered = original.replace("<|im_start|>", "<|im_start|> ")  # a space after every turn opener
    assert altered != original
    template.write_text(altered)
    report = parity.run(ParityConfig(source=str(run), gguf=Path(result["gguf"]), modelfile=out / "Modelfile"))
    assert not report.ok
    assert report.identical["serving"] == report.prompts  # serving uses the same (altered) tokenizer
    assert report.identical["gguf"] == 0 and report.identical["ollama"] == 0
