"""Reading input files in bounded memory and time, whatever they hold.

Three limits, each with a clear outcome:

- a line (or text document) over `max_line_bytes` is never held whole: the reader keeps its first
  few KiB for the report and skips the rest chunk by chunk, and the record is rejected as too_long;
- a gzip stream that inflates to more than `INFLATE_RATIO` times its compressed size (once past
  `INFLATE_FLOOR_BYTES`) stops the run with a DataError: it is a decompression bomb or, if real,
  data better decompressed once up front than re-inflated on every run;
- JSON nested deeper than `MAX_JSON_DEPTH` is rejected as too_deep, before any code walks it.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from tunesmith.errors import DataError

# Bytes of a line beyond the characters max_chars allows: room for JSON syntax and metadata fields.
LINE_HEADROOM_BYTES = 1 << 20
# A character takes at most 4 bytes in UTF-8 and 6 as a JSON \uXXXX escape (12 for a surrogate pair).
BYTES_PER_CHAR = 8
# What rejected.jsonl and the report keep of a rejected line.
RAW_EXCERPT_CHARS = 4096
# Decompressed:compressed beyond which a gzip input is refused (text data compresses 3-20x).
INFLATE_RATIO = 200
INFLATE_FLOOR_BYTES = 512 << 20
MAX_JSON_DEPTH = 100
_SKIP_CHUNK = 1 << 20


def line_limit(max_chars: int) -> int:
    """The byte limit on one input line for examples of at most `max_chars` characters."""
    return LINE_HEADROOM_BYTES + BYTES_PER_CHAR * max_chars


DEFAULT_LINE_BYTES = line_limit(100_000)


class _GuardedGzip(gzip.GzipFile):
    """A gzip reader that refuses to inflate past INFLATE_RATIO x the compressed bytes read."""

    def __init__(self, path: Path):
        self._raw = open(path, "rb")
        self._path = path
        super().__init__(fileobj=self._raw, mode="rb")

    def _check(self) -> None:
        inflated = self.tell()
        if inflated > INFLATE_FLOOR_BYTES and inflated > INFLATE_RATIO * max(self._raw.tell(), 1):
            raise DataError(
                f"the gzip stream inflates to more than {INFLATE_RATIO} times its size "
                f"({inflated:,} bytes from {self._raw.tell():,}); refusing to read on (a decompression bomb?)",
                where=str(self._path),
                hint="if the data is real, decompress it once (gunzip -k) and pass the plain file",
            )

    def read(self, size=-1):
        data = super().read(size)
        self._check()
        return data

    def read1(self, size=-1):
        data = super().read1(size)
        self._check()
        return data

    def readline(self, size=-1):
        data = super().readline(size)
        self._check()
        return data

    def readinto(self, b):
        n = super().readinto(b)
        self._check()
        return n

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def open_binary(path: Path, gzipped: bool) -> BinaryIO:
    return _GuardedGzip(path) if gzipped else open(path, "rb")  # type: ignore[return-value]


class Overlong:
    """A line over the byte limit: its length and the excerpt that was kept."""

    __slots__ = ("length", "head")

    def __init__(self, length: int, head: bytes):
        self.length = length
        self.head = head

    def excerpt(self) -> str:
        return excerpt(self.head.decode("utf-8", "replace"), self.length)

    def message(self, limit: int) -> str:
        return f"the line has {self.length:,} bytes, over {limit:,} bytes (the limit for max_chars); not read"


def excerpt(text: str, total: int | None = None) -> str:
    """`text` cut to RAW_EXCERPT_CHARS, saying how much was left out."""
    total = len(text) if total is None else total
    if len(text) <= RAW_EXCERPT_CHARS and total == len(text):
        return text
    return text[:RAW_EXCERPT_CHARS - 64] + f"... [{total:,} in all; cut]"


def bounded_lines(fh: BinaryIO, limit: int) -> Iterator[bytes | Overlong]:
    """The lines of `fh` (with their endings); a line over `limit` bytes comes as an `Overlong`,
    read through in chunks that are thrown away, so memory stays at about `limit`."""
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        if len(raw) <= limit or (len(raw) == limit + 1 and raw.endswith(b"\n")):
            yield raw
            continue
        head, length = raw[:RAW_EXCERPT_CHARS], len(raw)
        while not raw.endswith(b"\n"):
            raw = fh.readline(_SKIP_CHUNK)
            if not raw:
                break
            length += len(raw)
        yield Overlong(length, head)


def read_at_most(fh: BinaryIO, limit: int) -> bytes | Overlong:
    """The rest of `fh` if it is at most `limit` bytes, else an Overlong (read through, not kept)."""
    data = fh.read(limit + 1)
    if len(data) <= limit:
        return data
    length = len(data)
    while chunk := fh.read(_SKIP_CHUNK):
        length += len(chunk)
    return Overlong(length, data[:RAW_EXCERPT_CHARS])


def depth_over(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` nests lists/objects deeper than `limit` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def loads_bounded(text: str) -> Any:
    """json.loads that raises TooDeep for nesting over MAX_JSON_DEPTH (however deep), and
    LoneSurrogate for a \\uD800-style escape that encodes half a character."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep from None
    # Nesting is at most the number of opening brackets (those inside strings count too): most
    # lines hold far fewer than the limit, and counting is much cheaper than walking the value.
    if (isinstance(value, (dict, list)) and text.count("{") + text.count("[") > MAX_JSON_DEPTH
            and depth_over(value)):
        raise TooDeep
    if SURROGATE_ESCAPE.search(text) and has_lone_surrogate(value):
        raise LoneSurrogate
    return value


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string (or key) in `value` holds half a UTF-16 pair, which no file can store."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class TooDeep(ValueError):
    message = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


class LoneSurrogate(ValueError):
    message = "a \\uD800-\\uDFFF escape stands for half a character (a lone surrogate), which is not valid text"
