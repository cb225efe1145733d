"""Ollama Modelfile: FROM the GGUF, a TEMPLATE that renders exactly as training did, stops, SYSTEM.

Ollama does not run the model's Jinja chat template; it renders prompts with a Go template from
the Modelfile. tunesmith derives that Go template from the Jinja one by rendering probe
conversations with marker contents and cutting the text around the markers: what the template
writes before the first message, between two messages (keyed by the two roles) and after the
last one (the generation prompt). The Go template replays those pieces. It is then checked by
rendering every probe conversation both ways. This covers ChatML, Llama 2 and 3, Mistral v1 and
most chat formats; a Jinja template whose output depends on more than the neighbouring roles
(one that numbers turns, or Mistral v3's, which moves the system prompt into the last user turn)
fails that check and the export says so instead of writing a template that drifts from training.

Ollama adds the BOS token itself when the GGUF says `add_bos_token`, so a leading BOS written by
the Jinja template is left out of the Go template (as llama.cpp strips it from Jinja output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tunesmith import __version__
from tunesmith.chat.templates import render_prompt_text
from tunesmith.errors import ExportError, TemplateError
from tunesmith.export import gotemplate
from tunesmith.export.probes import probe_prompts

ROLES = ("system", "user", "assistant")
_MARK = "\u27e6m{}\u27e7"  # ⟦m0⟧: text no chat template alters
# Conversations that show every transition a chat uses: start -> system/user, system -> user,
# user -> assistant, assistant -> user, and the generation prompt after a user turn.
_DERIVATION = [("user",), ("system", "user"), ("user", "assistant", "user"), ("system", "user", "assistant", "user")]


def _pieces(tokenizer, roles: Sequence[str]) -> list[str]:
    messages = [{"role": r, "content": _MARK.format(i)} for i, r in enumerate(roles)]
    text = render_prompt_text(tokenizer, messages, add_generation_prompt=True)
    pieces, pos = [], 0
    for i in range(len(roles)):
        at = text.find(_MARK.format(i), pos)
        if at < 0 or text.count(_MARK.format(i)) != 1:
            raise ExportError(
                f"the chat template does not write the {roles[i]} message exactly once, in order, so no Ollama "
                "TEMPLATE can reproduce it",
                hint="write the TEMPLATE yourself and pass it with --ollama-template; `tunesmith check parity` verifies it",
            )
        pieces.append(text[pos:at])
        pos = at + len(_MARK.format(i))
    pieces.append(text[pos:])
    return pieces


def _strip_bos(text: str, bos: str | None, add_bos: bool) -> str:
    return text[len(bos):] if add_bos and bos and text.startswith(bos) else text


def derive_template(tokenizer, *, add_bos: bool) -> str:
    """A Go template (Ollama TEMPLATE) equivalent to the tokenizer's chat template; raises if none is."""
    start: dict[str, str] = {}
    between: dict[tuple[str, str], str] = {}
    after: dict[str, str] = {}

    def record(table: dict, key, value: str) -> None:
        if table.setdefault(key, value) != value:
            raise ExportError(
                f"the chat template writes different text for the same turn boundary {key} depending on the rest of "
                "the conversation, so no Ollama TEMPLATE built from turn boundaries can reproduce it",
                hint="write the TEMPLATE yourself and pass it with --ollama-template; `tunesmith check parity` verifies it",
            )

    for roles in _DERIVATION:
        try:
            pieces = _pieces(tokenizer, roles)
        except TemplateError:
            continue  # the template refuses this shape (e.g. no system role): those turns never occur
        record(start, roles[0], _strip_bos(pieces[0], tokenizer.bos_token, add_bos))
        for i in range(1, len(roles)):
            record(between, (roles[i - 1], roles[i]), pieces[i])
        record(after, roles[-1], pieces[-1])
    if "user" not in start or ("user", "assistant") not in between:
        raise ExportError("the chat template cannot render a plain user/assistant conversation",
                          hint="pass a TEMPLATE with --ollama-template")
    for piece in [*start.values(), *between.values(), *after.values()]:
        if "{{" in piece or '"""' in piece:
            raise ExportError("the chat template writes `{{` or `\"\"\"`, which a Modelfile TEMPLATE cannot hold",
                              hint="pass a TEMPLATE with --ollama-template")

    def choose(table: dict[str, str]) -> str:
        return "{{ else if ".join(f'eq .Role "{role}" }}}}{text}' for role, text in table.items())

    lines = ['{{- $prev := "" }}', "{{- range .Messages }}", '{{- if eq $prev "" }}{{ if ' + choose(start) + "{{ end }}"]
    for prev in ROLES:
        nexts = {cur: text for (p, cur), text in between.items() if p == prev}
        if nexts:
            lines.append(f'{{{{- else if eq $prev "{prev}" }}}}{{{{ if ' + choose(nexts) + "{{ end }}")
    lines += ["{{- end }}{{ .Content }}{{ $prev = .Role }}", "{{- end }}",
              "{{- if " + "{{ else if ".join(f'eq $prev "{role}" }}}}{text}' for role, text in after.items()) + "{{ end }}"]
    template = "\n".join(lines)
    _check_equivalent(tokenizer, template, add_bos)
    return template


def ollama_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"Role": m["role"], "Content": m.get("content") or "", "ToolCalls": None, "Images": None,
             "Thinking": ""} for m in messages]


def render(template: str, messages: Sequence[dict[str, Any]]) -> str:
    """What Ollama renders for `messages` (system message included as Ollama passes it)."""
    system = next((m.get("content") or "" for m in reversed(messages) if m["role"] == "system"), "")
    data = {"Messages": ollama_messages(messages), "System": system, "Prompt": "", "Response": "", "Tools": None,
            "Think": False, "ThinkLevel": "", "IsThinkSet": False}
    try:
        return gotemplate.render(template, data)
    except TemplateError as exc:
        raise TemplateError(f"cannot evaluate the Ollama TEMPLATE: {exc.message}",
                            hint="check parity understands templates built on .Messages; see docs/export.md") from None


def _check_equivalent(tokenizer, template: str, add_bos: bool) -> None:
    for prompt in probe_prompts() + [[{"role": r, "content": f"x{i}"} for i, r in enumerate(roles)]
                                     for roles in _DERIVATION]:
        try:
            expected = _strip_bos(render_prompt_text(tokenizer, prompt), tokenizer.bos_token, add_bos)
        except TemplateError:
            continue
        got = render(template, prompt)
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            raise ExportError(
                "the derived Ollama TEMPLATE does not reproduce the chat template "
                f"(they differ at character {at}: {got[at:at + 40]!r} vs {expected[at:at + 40]!r})",
                hint="write the TEMPLATE yourself and pass it with --ollama-template; `tunesmith check parity` verifies it",
            )


# --------------------------------------------------------------------------- Modelfile


@dataclass
class Modelfile:
    source: str  # FROM
    template: str | None = None
    system: str | None = None
    parameters: dict[str, list[str]] = field(default_factory=dict)

    @property
    def stops(self) -> list[str]:
        return self.parameters.get("stop", [])


def _quote(value: str) -> str:
    if '"""' in value:
        raise ExportError('a Modelfile value cannot contain """', hint="remove it from the system prompt")
    return f'"""{value}"""'


def modelfile_text(model: Modelfile, *, description: str) -> str:
    lines = [f"# Ollama Modelfile written by tunesmith {__version__} for {description}.",
             "# TEMPLATE renders prompts exactly as training did; verify with `tunesmith check parity`.",
             f"FROM {model.source}"]
    if model.template is not None:
        lines.append(f"TEMPLATE {_quote(model.template)}")
    if model.system:
        lines.append(f"SYSTEM {_quote(model.system)}")
    for name, values in model.parameters.items():
        lines += [f'PARAMETER {name} "{v}"' if name == "stop" else f"PARAMETER {name} {v}" for v in values]
    return "\n".join(lines) + "\n"


_INSTRUCTION = re.compile(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER|ADAPTER|LICENSE|MESSAGE|REQUIRES)\s+(.*)$',
                          re.IGNORECASE | re.DOTALL)


def _value(rest: str, lines: list[str], index: int) -> tuple[str, int]:
    """Read a bare, "quoted" or \"\"\"triple-quoted\"\"\" value starting on line `index`."""
    stripped = rest.strip()
    if stripped.startswith('"""'):
        body = stripped[3:]
        collected = []
        while '"""' not in body:
            collected.append(body)
            index += 1
            if index >= len(lines):
                raise ExportError('unterminated """ in the Modelfile')
            body = lines[index]
        collected.append(body[: body.index('"""')])
        return "\n".join(collected), index
    if len(stripped) >= 2 and stripped[0] == '"' and stripped[-1] == '"':
        return stripped[1:-1], index
    return stripped, index


def parse_modelfile(text: str) -> Modelfile:
    lines = text.split("\n")
    found: dict[str, Any] = {"parameters": {}}
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip() or line.lstrip().startswith("#"):
            index += 1
            continue
        match = _INSTRUCTION.match(line.strip())
        if match is None:
            raise ExportError(f"line {index + 1} of the Modelfile is not an instruction: {line[:60]!r}")
        keyword, rest = match.group(1).upper(), match.group(2)
        if keyword == "PARAMETER":
            name, _, raw = rest.strip().partition(" ")
            value, index = _value(raw, lines, index)
            found["parameters"].setdefault(name.lower(), []).append(value)
        else:
            value, index = _value(rest, lines, index)
            found[keyword.lower()] = value
        index += 1
    if "from" not in found:
        raise ExportError("the Modelfile has no FROM line")
    return Modelfile(source=found["from"], template=found.get("template"), system=found.get("system"),
                     parameters=found["parameters"])


def write_modelfile(path: Path, gguf_path: Path, tokenizer, *, add_bos: bool, stop_ids: Sequence[int],
                    system: str | None, template: str | None, description: str) -> Modelfile:
    """Write the Modelfile at `path` (FROM relative to it) and return what it holds."""
    template = template if template is not None else derive_template(tokenizer, add_bos=add_bos)
    stops = [tokenizer.decode([i]) for i in stop_ids]
    source = f"./{gguf_path.name}" if gguf_path.parent.resolve() == path.parent.resolve() else str(gguf_path.resolve())
    model = Modelfile(source=source, template=template, system=system, parameters={"stop": list(dict.fromkeys(stops))})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(modelfile_text(model, description=description), encoding="utf-8")
    return model


__all__ = ["Modelfile", "derive_template", "modelfile_text", "parse_modelfile", "render", "write_modelfile"]
