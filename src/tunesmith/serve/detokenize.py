"""Turn generated token ids into streamed text, and cut it at stop strings.

Two things make this more than `tokenizer.decode`: a byte-level BPE token can end in the middle of
a UTF-8 character (the text is only known once the next token arrives), and a stop string can
span several tokens, so text that could be the start of a stop string must be held back until
it is clear that it is not. Decoding only a short window of recent tokens keeps each step
O(1) instead of re-decoding the whole output. transformers' `TextStreamer` does neither the
stop-string holdback nor per-sequence state for a batch, so this is written here.
"""

from __future__ import annotations

from typing import Optional, Sequence

_INCOMPLETE = "\ufffd"  # what a tokenizer decodes half a UTF-8 character to


class TextTracker:
    """Per-sequence decoding state: feed token ids, get the text that is safe to send."""

    __slots__ = ("tokenizer", "stops", "ids", "text", "sent", "prefix_offset", "read_offset", "stopped")

    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.ids: list[int] = []
        self.text = ""  # all decoded text so far (after any stop-string cut)
        self.sent = 0  # characters of `text` already handed out
        self.prefix_offset = 0
        self.read_offset = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Append one generated token; return newly releasable text ("" while held back)."""
        self.ids.append(token_id)
        # Decode from a little before the last released token so that tokenizers which change a
        # token's text depending on its left neighbour (SentencePiece's leading space) stay right.
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith(_INCOMPLETE):
            before = len(self.text)
            self.text += full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            if self.stops:
                self._cut_at_stop(before)
        return self._release(final=False)

    def _cut_at_stop(self, new_from: int) -> None:
        longest = max(len(s) for s in self.stops)
        start = max(0, new_from - longest + 1)
        hits = [at for at in (self.text.find(stop, start) for stop in self.stops) if at >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        if self.stopped or not self.stops:
            return 0
        held = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:size]):
                    held = size
                    break
        return held

    def _release(self, final: bool) -> str:
        end = len(self.text) if final else len(self.text) - self._held_back()
        if end <= self.sent:
            return ""
        out = self.text[self.sent:end]
        self.sent = end
        return out

    def finish(self) -> str:
        """The generation ended: release whatever is still held back (a partial character is dropped)."""
        tail = self._decode(self.ids[self.prefix_offset:])
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        if not self.stopped and len(tail) > len(prefix):
            rest = tail[len(prefix):].rstrip(_INCOMPLETE)
            before = len(self.text)
            self.text += rest
            if self.stops:
                self._cut_at_stop(before)
        return self._release(final=True)

    @property
    def stop_reason(self) -> Optional[str]:
        return "stop" if self.stopped else None
