"""Batched generation and assistant-token perplexity, through the same chat rendering as training.

Prompts are rendered with `tunesmith.chat.templates.render_prompt` (the serving path) and
generation stops on `tunesmith.chat.tokens.stop_token_ids`, so evaluation sees the model exactly
as a server would. Perplexity is computed on the labels of `tokenize_conversation` (the training
path): the tokens of each assistant answer plus its end-of-turn token.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunesmith.chat.masking import IGNORE_INDEX, tokenize_conversation
from tunesmith.chat.templates import render_prompt
from tunesmith.chat.tokens import stop_token_ids
from tunesmith.errors import DataError
from tunesmith.eval.config import GenerationSettings
from tunesmith.eval.generate_loop import DecodeTrace, Sampling, decode_batch
from tunesmith.models.logits import takes_boolean_logits_to_keep, trained_positions


@dataclass
class EvalExample:
    """One test conversation: the prompt (every message before the last assistant turn) and the
    reference answer (that turn). Earlier assistant turns stay in the prompt as context."""

    index: int
    messages: list[dict[str, Any]]
    prompt: list[dict[str, Any]]
    reference: str
    tools: list[Any] | None = None


@dataclass
class Generation:
    text: str
    num_tokens: int
    stopped: bool  # ended with a stop token rather than at max_new_tokens


def read_examples(path: Path, limit: int | None = None) -> list[EvalExample]:
    """Read OpenAI chat JSONL; each row must end its conversation with an assistant message."""
    if not path.is_file():
        raise DataError(f"evaluation data not found: {path}", hint="pass a JSONL file of {\"messages\": [...]} rows")
    examples: list[EvalExample] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", where=f"{path}:{line_no}",
                                hint="every line must be one JSON object") from None
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DataError("the row has no `messages` list", where=f"{path}:{line_no}",
                                hint='write rows as {"messages": [{"role": "user", "content": "..."}, ...]}')
            last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
                       default=None)
            if last is None or last == 0:
                raise DataError("the conversation has no assistant answer after a prompt to score against",
                                where=f"{path}:{line_no}",
                                hint="end each test conversation with the reference assistant message")
            content = messages[last].get("content")
            if not isinstance(content, str):
                raise DataError("the reference assistant message has no text content", where=f"{path}:{line_no}")
            messages = [{k: v for k, v in m.items() if k != "weight"} for m in messages[: last + 1]]
            examples.append(EvalExample(index=len(examples), messages=messages, prompt=messages[:last],
                                        reference=content, tools=row.get("tools")))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise DataError(f"{path} holds no examples", hint="add at least one conversation")
    return examples


def progress_bar(description: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def generate(
    model,
    tokenizer,
    examples: Sequence[EvalExample],
    settings: GenerationSettings,
    *,
    description: str = "generating",
    show_progress: bool = True,
    trace: DecodeTrace | None = None,
) -> list[Generation]:
    """Generate an answer for every example, in batches of similar prompt length (less padding).

    Prompts are left-padded so every row's next token is at the same position. A row counts as
    stopped when it produced one of the stop ids before `max_new_tokens`; it leaves the batch
    (and the KV cache) at that step, so no compute goes to finished answers (generate_loop.py).
    """
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    prompts = [render_prompt(tokenizer, ex.prompt, tools=ex.tools) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    device = _device_of(model)
    sampling = Sampling(do_sample=settings.do_sample, temperature=settings.temperature, top_p=settings.top_p,
                        top_k=settings.top_k, repetition_penalty=settings.repetition_penalty,
                        generator=torch.Generator(device=device).manual_seed(settings.seed))
    bar = progress_bar(description) if show_progress else None
    with bar if bar is not None else contextlib.nullcontext():
        task = bar.add_task(description, total=len(prompts), rate="") if bar is not None else None
        done = 0
        for batch in _batches(order, settings.batch_size):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            decoded = decode_batch(model, ids.to(device), mask.to(device), max_new_tokens=settings.max_new_tokens,
                                   stop_ids=stops, sampling=sampling, trace=trace)
            for i, answer in zip(batch, decoded):
                results[i] = Generation(
                    text=tokenizer.decode(answer.tokens, skip_special_tokens=True).strip(),
                    num_tokens=len(answer.tokens), stopped=answer.stopped,
                )
            done += len(batch)
            if bar is not None:
                elapsed = bar.tasks[task].elapsed or 0.0
                bar.update(task, completed=done, rate=f"{done / elapsed:.1f} ex/s" if elapsed else "")
    return [r for r in results if r is not None]


def assistant_nll(model, tokenizer, examples: Sequence[EvalExample], batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of the reference answers' trained tokens.

    The tokens are exactly those `tokenize_conversation` gives loss to, so this is the quantity
    training minimised; exp(sum nll / sum tokens) is the assistant-token perplexity.
    """
    device = _device_of(model)
    encoded = []
    for ex in examples:
        conv = tokenize_conversation(tokenizer, ex.messages, tools=ex.tools)
        # Score the reference answer only: earlier assistant turns in the prompt are context.
        start, end = conv.assistant_spans[-1]
        labels = [IGNORE_INDEX] * len(conv.input_ids)
        labels[start:end] = conv.input_ids[start:end]
        encoded.append((conv.input_ids, labels))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[tuple[float, int]] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (row_ids, row_labels) in enumerate(chunk):
            ids[row, : len(row_ids)] = torch.tensor(row_ids)
            labels[row, : len(row_labels)] = torch.tensor(row_labels)
            mask[row, : len(row_ids)] = 1
        # Logits only at the positions that predict an answer token, as the training loss does:
        # a batch's full (rows, length, vocabulary) logits are the largest tensors of the
        # evaluation on a real vocabulary (8 x 300 tokens x 49k: 470 MB, and as much again for
        # the softmax).
        keep = trained_positions(labels).to(device)
        targets = labels[:, 1:].to(device)[keep[:, :-1]]
        with torch.no_grad():
            if takes_boolean_logits_to_keep(model):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits
            else:
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[keep]
            nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        rows = keep.nonzero()[:, 0]
        sums = torch.zeros(len(chunk), dtype=nll.dtype, device=nll.device).index_add_(0, rows, nll)
        counts = keep.sum(dim=1)
        results.extend((float(sums[row]), int(counts[row])) for row in range(len(chunk)))
    return results


def perplexity(nlls: Sequence[tuple[float, int]]) -> float | None:
    tokens = sum(n for _, n in nlls)
    if tokens == 0:
        return None
    return math.exp(sum(s for s, _ in nlls) / tokens)


@contextlib.contextmanager
def base_model_view(model):
    """The base model of a PeftModel (adapter layers bypassed) for the duration of the block."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


__all__ = ["EvalExample", "Generation", "assistant_nll", "base_model_view", "generate", "perplexity",
           "progress_bar", "read_examples"]
