"""Continuous batching: one thread owns the model and decodes every running sequence together.

Each iteration of the engine thread (1) runs queued commands (adapter loads and unloads), (2)
admits waiting sequences while the batch has room, prefilling them together and folding their
KV cache into the running batch's, and (3) runs one decode step for the whole batch. A sequence
leaves the batch as soon as it finishes, so short requests never wait for long ones and new
requests start at the next step instead of after the current batch ends.

Sequences for different adapters share a forward pass through PEFT's mixed-batch LoRA
(`adapter_names=[...]`, one name per row; "__base__" for the base model).

The batch is left-padded: all rows share one KV length and an attention mask hides each row's
padding, and position ids are per row, so a row's computation equals running it alone. When new
rows join, whichever side is shorter is padded on the left. transformers' `generate` runs one
fixed batch to completion and its continuous-batching manager has no per-row LoRA, hence this
loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import secrets
import threading
from collections import deque
from typing import Any, Callable, Optional

import torch

from tunesmith.serve.adapters import BASE_ROW, AdapterRegistry, PreparedAdapter, Target
from tunesmith.serve.detokenize import TextTracker
from tunesmith.serve.engines.base import (Event, GenerationEngine, RequestHandle, SamplingParams, queue_full,
                                           shutting_down)
from tunesmith.serve.metrics import ServeMetrics
from tunesmith.serve.protocol import APIError

log = logging.getLogger("tunesmith.serve")


class _Sequence:
    __slots__ = ("handle", "index", "prompt_ids", "params", "tracker", "generator", "generated", "finish_reason")

    def __init__(self, handle: RequestHandle, index: int, prompt_ids: list[int], params: SamplingParams,
                 device: torch.device):
        self.handle = handle
        self.index = index
        self.prompt_ids = prompt_ids
        self.params = params
        self.tracker = TextTracker(handle.target.tokenizer, params.stop)
        self.generator: Optional[torch.Generator] = None
        if params.temperature > 0:
            # One generator per sequence: a seeded request samples the same tokens whatever else
            # shares its batch. Choice i of a request seeded with s uses s + i.
            seed = secrets.randbits(63) if params.seed is None else (params.seed + index) % (1 << 64)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)
        self.generated = 0
        self.finish_reason: Optional[str] = None

    @property
    def adapter(self) -> Optional[str]:
        return self.handle.target.adapter


class Engine(GenerationEngine):
    """tunesmith's own engine: the default, and the reference the other engines are tested against."""

    def __init__(self, registry: AdapterRegistry, *, device: torch.device | str, max_batch_size: int,
                 max_queue: int, metrics: Optional[ServeMetrics] = None):
        self.registry = registry
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.metrics = metrics
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._commands: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        # The running batch: row i of every tensor belongs to self._rows[i].
        self._rows: list[_Sequence] = []
        self._cache = None
        self._mask: Optional[torch.Tensor] = None  # [rows, kv_len], 0 on left padding
        self._positions: Optional[torch.Tensor] = None  # [rows, 1], position id of the next input
        self._last: Optional[torch.Tensor] = None  # [rows, 1], the next input token
        self._mergeable: Optional[bool] = None  # can new rows join a running batch's cache?
        self._outbox: list[tuple[RequestHandle, Event]] = []

    # ------------------------------------------------------------------ public, any thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tunesmith-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the thread; whatever is still queued or running is failed with 503."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._waiting and not self._rows and not self._commands

    def submit(self, target: Target, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> RequestHandle:
        """Queue `n` choices for each prompt; choices are numbered prompt-major, like OpenAI's."""
        loop = asyncio.get_running_loop()
        handle = RequestHandle(self, loop, target, prompts, n)
        seqs = [_Sequence(handle, i * n + j, prompt, params, self.device)
                for i, prompt in enumerate(prompts) for j in range(n)]
        with self._cond:
            if self._stopping:
                raise shutting_down()
            if len(self._waiting) + len(seqs) > self.max_queue:
                raise queue_full(len(self._waiting))
            self._waiting.extend(seqs)
            self._cond.notify_all()
        if self.metrics is not None:
            self.metrics.prompt_tokens.labels(target.name).inc(handle.prompt_tokens * n)
        return handle

    def add_adapter(self, prepared: PreparedAdapter) -> concurrent.futures.Future:
        return self.call(lambda: self.registry.add(prepared))

    def remove_adapter(self, name: str) -> concurrent.futures.Future:
        return self.call(lambda: self.registry.remove(name))

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the engine thread between two steps (model changes must not race a forward pass)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                future.set_exception(APIError(503, "The engine is not running.", type="server_error"))
                return future
            self._commands.append((fn, future))
            self._cond.notify_all()
        return future

    # ------------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._commands or self._waiting or self._rows or self._stopping):
                        self._cond.wait()
                    if self._stopping:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                for fn, future in commands:
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        future.set_exception(exc)
                try:
                    self._step()
                except Exception:  # a bug or out-of-memory must not take the server down with it
                    log.exception("decode step failed; failing the running batch")
                    self._fail_rows(_generation_failed())
                self._flush()
        self._fail_everything()

    def _step(self) -> None:
        self._drop_cancelled()
        new_rows = self._admit()
        if new_rows:
            try:
                self._prefill(new_rows)
            except Exception:  # e.g. out of memory on a long prompt: only the newcomers fail
                log.exception("prefill failed; failing the %d requests that were joining the batch", len(new_rows))
                self._abandon(new_rows)
        if self._rows:
            self._decode()
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._waiting))
            self.metrics.running.set(len(self._rows))
            self.metrics.loaded_adapters.set(len(self.registry.loaded_names()))

    def _admit(self) -> list[_Sequence]:
        room = self.max_batch_size - len(self._rows)
        if room <= 0 or (self._rows and self._mergeable is False):
            return []
        with self._cond:
            candidates = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        admitted, blocked = [], []
        for seq in candidates:
            if seq.handle.cancelled:
                self._count_cancelled()
                continue
            name = seq.adapter
            if name is not None:
                if self.registry.get(name) is None:
                    self._emit(seq, "", error=APIError(404, f"The adapter `{name}` was unloaded.",
                                                       param="model", code="model_not_found"))
                    continue
                try:
                    if not self.registry.acquire(name):
                        blocked.append(seq)  # every loaded adapter is busy; wait for a slot
                        continue
                except Exception as exc:  # noqa: BLE001 - reported to the client
                    self._emit(seq, "", error=APIError(500, f"Adapter `{name}` could not be loaded: {exc}",
                                                       type="server_error", code="adapter_load_failed"))
                    continue
            admitted.append(seq)
        if blocked:
            with self._cond:
                self._waiting.extendleft(reversed(blocked))
        return admitted

    def _forward(self, input_ids, mask, positions, cache, rows: list[_Sequence]) -> torch.Tensor:
        model = self.registry.model
        kwargs: dict[str, Any] = {}
        if self.registry.has_loaded_adapters:  # the model is a PeftModel exactly then
            kwargs["adapter_names"] = [seq.adapter or BASE_ROW for seq in rows]
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1, **kwargs)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(rows))
        return out.logits[:, -1, :].float()

    def _prefill(self, rows: list[_Sequence]) -> None:
        from transformers import DynamicCache

        width = max(len(seq.prompt_ids) for seq in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, seq in enumerate(rows):
            input_ids[i, width - len(seq.prompt_ids):] = torch.tensor(seq.prompt_ids)
            mask[i, width - len(seq.prompt_ids):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.registry.model.config)
        logits = self._forward(input_ids, mask, positions, cache, rows)
        tokens, failed = self._sample(logits, rows)
        self._join(rows, cache, mask, positions[:, -1:] + 1, tokens)
        self._accept_all(rows, tokens, failed)

    def _join(self, rows, cache, mask, positions, tokens) -> None:
        from transformers.cache_utils import DynamicLayer

        if self._mergeable is None:
            self._mergeable = all(type(layer) is DynamicLayer for layer in cache.layers)
        last = tokens.view(-1, 1)
        if not self._rows:
            self._rows, self._cache, self._mask, self._positions, self._last = list(rows), cache, mask, positions, last
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for old, new in zip(self._cache.layers, cache.layers):
            old.keys = torch.cat([_pad_left(old.keys, width - old_len, 2), _pad_left(new.keys, width - new_len, 2)])
            old.values = torch.cat([_pad_left(old.values, width - old_len, 2),
                                    _pad_left(new.values, width - new_len, 2)])
        self._mask = torch.cat([_pad_left(self._mask, width - old_len, 1), _pad_left(mask, width - new_len, 1)])
        self._positions = torch.cat([self._positions, positions])
        self._last = torch.cat([self._last, last])
        self._rows.extend(rows)

    def _decode(self) -> None:
        ones = torch.ones((len(self._rows), 1), dtype=self._mask.dtype, device=self.device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        logits = self._forward(self._last, self._mask, self._positions, self._cache, self._rows)
        tokens, failed = self._sample(logits, self._rows)
        self._positions = self._positions + 1
        self._last = tokens.view(-1, 1)
        self._accept_all(list(self._rows), tokens, failed)

    def _sample(self, logits: torch.Tensor, rows: list[_Sequence]) -> tuple[torch.Tensor, set[int]]:
        """The next token of every row, and the rows whose sampling raised (their token is a stand-in)."""
        tokens = logits.argmax(dim=-1)
        failed: set[int] = set()
        for i, seq in enumerate(rows):
            params = seq.params
            if params.temperature <= 0:
                continue
            try:
                tokens[i] = _sample_row(logits[i], params, seq.generator)
            except Exception:  # noqa: BLE001 - one row's bad parameters must not fail its neighbours
                log.exception("sampling failed for one sequence (temperature=%r, top_p=%r); failing that "
                              "request only", params.temperature, params.top_p)
                failed.add(i)
        return tokens, failed

    def _accept_all(self, rows: list[_Sequence], tokens: torch.Tensor, failed: set[int]) -> None:
        for i, (seq, token) in enumerate(zip(rows, tokens.tolist())):
            if i in failed:
                self._emit(seq, "", error=_generation_failed())
                continue
            try:
                self._accept(seq, token)
            except Exception:  # noqa: BLE001 - e.g. a detokenizer error: this row only
                log.exception("handling a generated token failed; failing that request only")
                self._emit(seq, "", error=_generation_failed())
        self._retire()

    def _accept(self, seq: _Sequence, token: int) -> None:
        seq.generated += 1
        target, params = seq.handle.target, seq.params
        if token in target.stop_ids and not params.ignore_eos:
            seq.finish_reason = "stop"
            text = seq.tracker.finish()
        else:
            text = seq.tracker.add(token)
            if seq.tracker.stopped:
                seq.finish_reason = "stop"
            elif seq.generated >= params.max_tokens:
                seq.finish_reason = "length"
                text += seq.tracker.finish()
        if self.metrics is not None:
            self.metrics.generated_tokens.labels(target.name).inc()
        self._emit(seq, text, token)

    def _emit(self, seq: _Sequence, text: str, token: Optional[int] = None,
              error: Optional[APIError] = None) -> None:
        if error is not None:
            seq.finish_reason = "error"
        self._outbox.append((seq.handle, Event(seq.index, text, seq.generated, token, seq.finish_reason, error)))

    def _retire(self) -> None:
        """Drop finished (or cancelled) rows from the batch and trim padding nobody needs any more."""
        keep = [i for i, seq in enumerate(self._rows) if seq.finish_reason is None]
        if len(keep) == len(self._rows):
            return
        for seq in self._rows:
            if seq.finish_reason is not None and seq.adapter is not None:
                self.registry.release(seq.adapter)
        if not keep:
            self._rows, self._cache, self._mask, self._positions, self._last = [], None, None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        for layer in self._cache.layers:
            layer.batch_select_indices(index)
        self._mask, self._positions, self._last = self._mask[index], self._positions[index], self._last[index]
        if self._mergeable:
            first = int(self._mask.any(dim=0).int().argmax())
            if first > 0:
                self._mask = self._mask[:, first:]
                for layer in self._cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _drop_cancelled(self) -> None:
        cancelled = [seq for seq in self._rows if seq.handle.cancelled]
        for seq in cancelled:
            seq.finish_reason = "cancelled"
            self._count_cancelled()
        if cancelled:
            self._retire()

    def _count_cancelled(self) -> None:
        if self.metrics is not None:
            self.metrics.cancelled.inc()

    def _abandon(self, rows: list[_Sequence]) -> None:
        in_batch = {id(seq) for seq in self._rows}
        for seq in rows:
            if seq.finish_reason is None:
                self._emit(seq, "", error=_generation_failed())
                if id(seq) not in in_batch and seq.adapter is not None:
                    self.registry.release(seq.adapter)  # rows in the batch are released by _retire
        self._retire()

    def _fail_rows(self, error: APIError) -> None:
        for seq in self._rows:
            if seq.finish_reason is None:
                self._emit(seq, "", error=error)
        self._retire()

    def _fail_everything(self) -> None:
        error = APIError(503, "The server is shutting down.", type="server_error", code="server_shutting_down")
        self._fail_rows(error)
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
            commands, self._commands = list(self._commands), deque()
        for seq in waiting:
            self._emit(seq, "", error=error)
        for _, future in commands:
            future.set_exception(error)
        self._flush()

    def _flush(self) -> None:
        """Hand this step's events to the event loops, one thread-safe call per loop."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, Event]]] = {}
        for handle, event in self._outbox:
            by_loop.setdefault(handle.loop, []).append((handle, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop has closed: its clients are gone
                pass


def _sample_row(logits: torch.Tensor, params: SamplingParams, generator) -> int:
    if not (math.isfinite(params.temperature) and math.isfinite(params.top_p) and params.top_p > 0):
        raise ValueError(f"cannot sample with temperature={params.temperature!r}, top_p={params.top_p!r}")
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = sorted_probs.cumsum(0) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    # On CUDA, multinomial checks its input with a device-side assert, which would end the process
    # (every row with it); checked here, a bad distribution fails this row alone on any device.
    if not bool(torch.isfinite(probs).all() & (probs.sum() > 0)):
        raise ValueError("the sampling distribution is not finite (the scaled logits overflowed)")
    return int(torch.multinomial(probs, 1, generator=generator)[0])


def _generation_failed() -> APIError:
    return APIError(500, "Generation failed; see the server log.", type="server_error", code="internal_error")


def _deliver(items: list[tuple[RequestHandle, Event]]) -> None:
    for handle, event in items:
        handle.events.put_nowait(event)


def _pad_left(tensor: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    if count <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = count
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
