"""`tunesmith check parity`: the same conversations through every path a prompt can take.

    tunesmith check parity runs/sft                       # training vs serving vs the export it would write
    tunesmith check parity exports/tickets                # an export directory: its GGUF and Modelfile
    tunesmith check parity runs/sft --gguf m.gguf --modelfile Modelfile

For every assistant turn of every probe conversation, the prompt tokens are computed four ways:
training (`tokenize_conversation`: the tokens before the turn's labels), serving (`render_prompt`),
the GGUF (its embedded Jinja template, its own tokenizer, BOS handled as llama.cpp does) and
Ollama (the Modelfile's Go TEMPLATE, the GGUF tokenizer, BOS added as Ollama does). Each path's
tokens must equal training's, and the end-of-turn token training teaches must be a stop token
of every path. Without a GGUF or Modelfile the check uses what `tunesmith export` would write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tunesmith.chat.masking import tokenize_conversation
from tunesmith.chat.templates import render_prompt
from tunesmith.chat.tokens import stop_token_ids
from tunesmith.errors import ConfigError, TemplateError
from tunesmith.export import ollama
from tunesmith.export.config import ParityConfig
from tunesmith.export.probes import PROBE_CONVERSATIONS
from tunesmith.models.source import load_tokenizer, resolve_source


@dataclass
class _Runtime:
    """How one path turns a rendered prompt into tokens, and what it stops on."""

    name: str
    label: str
    stops: set[int]
    render: Callable[[list[dict[str, Any]]], list[int]]


@dataclass
class ParityReport:
    paths: list[str]
    labels: dict[str, str]
    prompts: int = 0
    identical: dict[str, int] = field(default_factory=dict)
    differences: list[dict[str, Any]] = field(default_factory=list)
    stops: dict[str, list[str]] = field(default_factory=dict)
    taught_stops: list[str] = field(default_factory=list)
    stop_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences and not self.stop_problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "paths": self.labels, "prompts": self.prompts, "identical": self.identical,
                "differences": self.differences[:20], "stops": self.stops, "taught_stops": self.taught_stops,
                "stop_problems": self.stop_problems}

    def render(self) -> str:
        lines = [f"parity over {self.prompts} prompts: " + " vs ".join(self.labels[p] for p in self.paths)]
        for path in self.paths[1:]:
            same = self.identical.get(path, 0)
            state = "identical" if same == self.prompts else "DIFFERS"
            lines.append(f"  {path:<8} {state} on {same}/{self.prompts} prompts")
        for diff in self.differences[:10]:
            lines.append(f"  {diff['path']}: conversation {diff['conversation']}, turn {diff['turn']}: "
                         f"first difference at token {diff['position']}")
            lines.append(f"    training: {diff['training']}")
            lines.append(f"    {diff['path']:<8}: {diff['other']}")
        lines.append(f"  stop tokens: training teaches {', '.join(self.taught_stops) or '(none)'}")
        for path, stops in self.stops.items():
            lines.append(f"    {path:<8} stops on {', '.join(stops)}")
        lines += [f"  {problem}" for problem in self.stop_problems]
        lines.append("result: " + ("IDENTICAL" if self.ok else "DIFFERENT — the model would see prompts it was "
                                   "not trained on, or not stop where it learned to"))
        return "\n".join(lines)

    def summary(self) -> str:
        return self.render()


def _window(tokenizer, ids: Sequence[int], at: int) -> str:
    pieces = [repr(tokenizer.decode([t])) for t in ids[max(0, at - 3) : at + 4]]
    return ("… " if at > 3 else "") + " ".join(pieces) + (" …" if at + 4 < len(ids) else "")


class _GGUFFile:
    """Chat template, BOS flag, stop ids and tokenizer read from a GGUF file."""

    def __init__(self, path: Path):
        import gguf
        from transformers import AutoTokenizer

        from tunesmith.export.gguf import llama_cpp_available
        from tunesmith.export.verify import field_value

        if not path.is_file():
            raise ConfigError(f"GGUF file not found: {path}")
        reader = gguf.GGUFReader(path)
        self.path = path
        self.add_bos = bool(field_value(reader, "tokenizer.ggml.add_bos_token"))
        self.stops = {field_value(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")} - {None}
        self.tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        self.tokenizer.chat_template = field_value(reader, "tokenizer.chat_template")
        self._llama = None
        if llama_cpp_available():  # the real runtime's tokenizer, when it is installed
            from llama_cpp import Llama

            self._llama = Llama(model_path=str(path), vocab_only=True, verbose=False)

    def encode(self, text: str) -> list[int]:
        if self._llama is not None:
            ids = self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        else:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ([self.tokenizer.bos_token_id] if self.add_bos else []) + list(ids)


def _encode_like_llama_cpp(tokenizer, text: str, add_bos: bool, encode: Callable[[str], list[int]]) -> list[int]:
    # llama.cpp drops a BOS the template wrote when it adds one itself (common/chat.cpp)
    if add_bos and tokenizer.bos_token and text.startswith(tokenizer.bos_token):
        text = text[len(tokenizer.bos_token):]
    return encode(text)


def _runtimes(tokenizer, generation_config, gguf_path: Path | None, modelfile_path: Path | None,
              ollama_template: str | None) -> tuple[list[_Runtime], str | None]:
    from tunesmith.export.gguf import tokenizer_metadata

    runtimes = [_Runtime("serving", "serving (render_prompt)", set(stop_token_ids(tokenizer, generation_config)),
                         lambda messages: render_prompt(tokenizer, messages))]
    if gguf_path is not None:
        file = _GGUFFile(gguf_path)
        gguf_tok, add_bos, gguf_stops, encode = file.tokenizer, file.add_bos, file.stops, file.encode
        label = f"gguf ({gguf_path.name})"
    else:
        meta = tokenizer_metadata(tokenizer, len(tokenizer))
        gguf_tok, add_bos = tokenizer, meta.add_bos
        gguf_stops = {meta.special_ids[k] for k in ("eos", "eot") if k in meta.special_ids}

        def encode(text: str) -> list[int]:
            return ([tokenizer.bos_token_id] if add_bos else []) + tokenizer(text, add_special_tokens=False)["input_ids"]

        label = "gguf (as tunesmith would export it)"
    if not getattr(gguf_tok, "chat_template", None):
        raise ConfigError(f"{gguf_path} has no chat template (tokenizer.chat_template)",
                          hint="re-export it with tunesmith, which embeds the training chat template")
    runtimes.append(_Runtime("gguf", label, set(gguf_stops), lambda messages: _encode_like_llama_cpp(
        gguf_tok, gguf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_bos, encode)))

    system = None
    if modelfile_path is not None:
        if not modelfile_path.is_file():
            raise ConfigError(f"Modelfile not found: {modelfile_path}")
        modelfile = ollama.parse_modelfile(modelfile_path.read_text(encoding="utf-8"))
        if not modelfile.template:
            raise ConfigError(f"{modelfile_path} has no TEMPLATE, so Ollama would use a generic one",
                              hint="export with `tunesmith export ollama`, which writes the training template")
        template, system, label = modelfile.template, modelfile.system, f"ollama ({modelfile_path.name})"
        stop_texts = modelfile.stops
    else:
        template = ollama_template or ollama.derive_template(tokenizer, add_bos=add_bos)
        label = "ollama (as tunesmith would export it)"
        stop_texts = [tokenizer.decode([i]) for i in stop_token_ids(tokenizer, generation_config)]
    vocab = gguf_tok.get_vocab()
    ollama_stops = set(gguf_stops) | {vocab[t] for t in stop_texts if t in vocab}
    runtimes.append(_Runtime("ollama", label, ollama_stops,
                             lambda messages: encode(ollama.render(template, messages))))
    return runtimes, system


def compare_paths(tokenizer, conversations: Sequence[Sequence[dict[str, Any]]], *, generation_config=None,
                  gguf_path: Path | None = None, modelfile_path: Path | None = None,
                  ollama_template: str | None = None, system_prompt: str | None = None) -> ParityReport:
    runtimes, modelfile_system = _runtimes(tokenizer, generation_config, gguf_path, modelfile_path, ollama_template)
    system = system_prompt or modelfile_system
    report = ParityReport(paths=["training"] + [r.name for r in runtimes],
                          labels={"training": "training (tokenize_conversation)", **{r.name: r.label for r in runtimes}})
    report.identical = {r.name: 0 for r in runtimes}
    taught: set[int] = set()
    for c, conversation in enumerate(conversations):
        messages = [dict(m) for m in conversation]
        if system and messages[0]["role"] != "system":
            # Ollama adds its SYSTEM to conversations without one; compare every path on that input.
            messages.insert(0, {"role": "system", "content": system})
        try:
            encoded = tokenize_conversation(tokenizer, messages)
        except TemplateError as exc:
            raise TemplateError(f"conversation {c}: the training path cannot render it: {exc.message}",
                                hint=exc.hint) from None
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for turn, (index, (start, end)) in enumerate(zip(turns, encoded.assistant_spans)):
            training = encoded.input_ids[:start]
            taught.add(encoded.input_ids[end - 1])
            report.prompts += 1
            for runtime in runtimes:
                ids = runtime.render(messages[:index])
                if ids == training:
                    report.identical[runtime.name] += 1
                    continue
                at = next((j for j, (a, b) in enumerate(zip(ids, training)) if a != b), min(len(ids), len(training)))
                report.differences.append({
                    "path": runtime.name, "conversation": c, "turn": turn, "position": at,
                    "training": _window(tokenizer, training, at), "other": _window(tokenizer, ids, at)})
    report.taught_stops = [tokenizer.decode([t]) for t in sorted(taught)]
    for runtime in runtimes:
        report.stops[runtime.name] = [tokenizer.decode([t]) for t in sorted(runtime.stops)]
        missing = taught - runtime.stops
        if missing:
            report.stop_problems.append(
                f"{runtime.name} does not stop on {', '.join(tokenizer.decode([t]) for t in sorted(missing))}, "
                "the end-of-turn token training taught the model to emit")
    return report


def _generation_config(source):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source.weights)
    except (OSError, ValueError):
        return None


def _export_dir(path: Path) -> dict[str, Any] | None:
    manifest = path / "manifest.json"
    if path.is_dir() and manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        if data.get("stage") == "export":
            return data
    return None


def run(cfg: ParityConfig) -> ParityReport:
    """Check parity for `cfg.source`; `report.summary()` says what differs, the CLI exits 1 unless `ok`."""
    given, gguf_path, modelfile_path = cfg.source, cfg.gguf, cfg.modelfile
    export = _export_dir(Path(cfg.source))
    if export is not None:
        given = export["source"]
        gguf_path = gguf_path or Path(cfg.source) / export["gguf"]
        if export.get("modelfile"):
            modelfile_path = modelfile_path or Path(cfg.source) / export["modelfile"]
    source = resolve_source(given)
    tokenizer = load_tokenizer(source)
    conversations = list(PROBE_CONVERSATIONS)
    if cfg.data is not None:
        from tunesmith.eval.generate import read_examples

        conversations += [ex.messages for ex in read_examples(cfg.data, cfg.limit)]
    report = compare_paths(tokenizer, conversations, generation_config=_generation_config(source),
                           gguf_path=gguf_path, modelfile_path=modelfile_path, system_prompt=cfg.system_prompt)
    return report


__all__ = ["ParityReport", "compare_paths", "run"]
