"""Special tokens that decide whether a tuned model stops: end of turn, EOS and padding.

A chat model stops generating when it emits its template's end-of-turn token (`<|im_end|>`,
`<|eot_id|>`, `<end_of_turn>`, `</s>`...). It learns to emit it only if that token carries loss in
training (see `tunesmith.chat.masking`), and the server stops on it only if it is among the stop
ids. A pad token that shares an id with EOS or end-of-turn is the classic way to break both: code
that masks padding by id masks the stop token too. The helpers here detect the end-of-turn token
from the template itself, collect every stop id, and pick a pad token that is none of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tunesmith.chat.templates import ChatTemplateSetup, ensure_chat_template, has_chat_template, render_prompt_text
from tunesmith.errors import TemplateError

# Tokens that vocabularies reserve for padding, in order of preference; the unknown token comes
# after them. Llama 3.1 ships <|finetune_right_pad_id|> for exactly this purpose.
PAD_CANDIDATES = ("<|pad|>", "<|finetune_right_pad_id|>", "<pad>", "[PAD]", "<|padding|>")
NEW_PAD_TOKEN = "<|pad|>"

# Content of the probe assistant message used to find what the template writes after a turn.
_PROBE = "tunesmith probe answer"


@dataclass(frozen=True)
class PadToken:
    token: str
    id: int
    added: bool  # True when the token was appended to the vocabulary (embeddings grew)


@dataclass(frozen=True)
class ChatModelSetup:
    """What `prepare_chat_model` changed, and what a LoRA config needs to save the changes.

    `modules_to_save` is empty when the vocabulary is unchanged; otherwise it names the input and
    output embedding modules, which must go into `LoraConfig(modules_to_save=...)` (with
    `ensure_weight_tying=True` when `tied_embeddings`), or the new tokens' rows stay untrained and
    the saved adapter no longer fits its base model.
    """

    template: ChatTemplateSetup
    pad: PadToken
    stop_token_ids: tuple[int, ...]
    resized: bool
    modules_to_save: tuple[str, ...]
    tied_embeddings: bool

    @property
    def embeddings_changed(self) -> bool:
        return self.template.embeddings_changed or self.pad.added


def end_of_turn_token(tokenizer) -> str | None:
    """The control token the chat template writes right after an assistant message, if any.

    It is found by rendering a probe conversation and reading what follows the probe answer, so it
    works for any template rather than a list of known model families. Returns None when the
    tokenizer has no template or the template ends assistant turns with plain text.
    """
    if not has_chat_template(tokenizer):
        return None
    probe = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": _PROBE}]
    text = render_prompt_text(tokenizer, probe, add_generation_prompt=False)
    at = text.rfind(_PROBE)
    if at < 0:
        raise TemplateError(
            "the chat template drops the content of assistant messages",
            hint="use a template that writes assistant messages, such as tunesmith's default "
            "(tunesmith.chat.templates.DEFAULT_CHAT_TEMPLATE)",
        )
    after = text[at + len(_PROBE) :].lstrip(" \t\n")
    control = sorted(
        (t.content for t in tokenizer.added_tokens_decoder.values() if t.content.strip()),
        key=len,
        reverse=True,
    )
    return next((token for token in control if after.startswith(token)), None)


def _ids(value: int | Iterable[int] | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every token id generation must stop on: the template's end-of-turn token, EOS, and the
    `eos_token_id` entries of `generation_config` when one is given. Order: end-of-turn first."""
    ids: list[int] = []
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        ids.append(tokenizer.convert_tokens_to_ids(eot))
    ids.extend(_ids(tokenizer.eos_token_id))
    if generation_config is not None:
        ids.extend(_ids(getattr(generation_config, "eos_token_id", None)))
    unique = list(dict.fromkeys(ids))
    if not unique:
        raise TemplateError(
            "the tokenizer has no EOS token and its chat template ends turns with no control token, "
            "so generation could never stop",
            hint="set `eos_token` on the tokenizer or use a chat template with an end-of-turn token",
        )
    return unique


def resize_embeddings(model, tokenizer) -> bool:
    """Grow the model's embeddings to fit the tokenizer; True when they grew.

    New rows are drawn around the mean of the existing ones (transformers' `mean_resizing`), which
    keeps the model's predictions close to what they were before the new tokens are trained.
    """
    if len(tokenizer) <= model.get_input_embeddings().num_embeddings:
        return False
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return True


def ensure_pad_token(tokenizer, model=None) -> PadToken:
    """Guarantee a pad token whose id is not EOS, BOS or the end-of-turn token.

    Keeps a valid existing pad token; otherwise reuses a token the vocabulary reserves for padding
    (`PAD_CANDIDATES`) or the unknown token; otherwise adds `<|pad|>` and, when `model` is given,
    resizes its embeddings. With a model, its config and generation config get the pad id.
    """
    forbidden = set(stop_token_ids(tokenizer))
    if tokenizer.bos_token_id is not None:
        forbidden.add(tokenizer.bos_token_id)
    vocab = tokenizer.get_vocab()
    pad: PadToken | None = None
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in forbidden:
        pad = PadToken(tokenizer.pad_token, tokenizer.pad_token_id, added=False)
    else:
        for candidate in (*PAD_CANDIDATES, tokenizer.unk_token):
            if candidate is not None and candidate in vocab and vocab[candidate] not in forbidden:
                tokenizer.pad_token = candidate
                pad = PadToken(candidate, vocab[candidate], added=False)
                break
    if pad is None:
        tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
        pad = PadToken(NEW_PAD_TOKEN, tokenizer.convert_tokens_to_ids(NEW_PAD_TOKEN), added=True)
    if model is not None:
        resize_embeddings(model, tokenizer)
        model.config.pad_token_id = pad.id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad.id
    return pad


def embeddings_tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def embedding_modules_to_save(model) -> list[str]:
    """Names of the input and output embedding modules, for `LoraConfig(modules_to_save=...)`.

    LoRA leaves embeddings frozen and saves only its own weights; rows added for new tokens must
    be trained and saved, so both embedding modules are listed (peft keeps them tied when
    `ensure_weight_tying=True`).
    """
    # peft matches modules_to_save by the last component of a module's name.
    short_names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    modules = [model.get_input_embeddings(), model.get_output_embeddings()]
    return list(dict.fromkeys(short_names[id(m)] for m in modules if m is not None))


def prepare_chat_model(tokenizer, model=None) -> ChatModelSetup:
    """Make a tokenizer (and model) ready for chat fine-tuning, in one call.

    Installs the default template when the tokenizer has none, picks a safe pad token, grows the
    embeddings when tokens were added, and sets the model's generation config to stop on every
    stop id and pad with the pad id, so the saved model stops where training taught it to.
    """
    rows_before = model.get_input_embeddings().num_embeddings if model is not None else 0
    template = ensure_chat_template(tokenizer)
    pad = ensure_pad_token(tokenizer, model)
    stops = tuple(stop_token_ids(tokenizer, getattr(model, "generation_config", None)))
    resized = False
    modules: tuple[str, ...] = ()
    tied = False
    if model is not None:
        resize_embeddings(model, tokenizer)
        resized = model.get_input_embeddings().num_embeddings > rows_before
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.eos_token_id = list(stops)
            model.generation_config.pad_token_id = pad.id
        tied = embeddings_tied(model)
        if template.embeddings_changed or pad.added:
            modules = tuple(embedding_modules_to_save(model))
    return ChatModelSetup(
        template=template,
        pad=pad,
        stop_token_ids=stops,
        resized=resized,
        modules_to_save=modules,
        tied_embeddings=tied,
    )


__all__ = [
    "NEW_PAD_TOKEN",
    "PAD_CANDIDATES",
    "ChatModelSetup",
    "PadToken",
    "embedding_modules_to_save",
    "embeddings_tied",
    "end_of_turn_token",
    "ensure_pad_token",
    "prepare_chat_model",
    "resize_embeddings",
    "stop_token_ids",
]
