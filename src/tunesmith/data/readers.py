"""Read example files record by record, whatever the container.

Containers: `.jsonl` (also `.ndjson`), `.json` (an array, or JSONL under a .json name), `.csv`,
`.parquet` and `.txt`, each optionally gzipped (`.gz`). Every reader streams: it holds one
record (and, for a JSON array, one read buffer) at a time, so a file of any size reads in
bounded memory. A record that cannot be read (bad bytes, bad JSON) is yielded with its rule
instead of stopping the run, so it can be reported and written to `rejected.jsonl`.
"""

from __future__ import annotations

import csv
import errno
import gzip
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal

from tunesmith.data.bounded import (DEFAULT_LINE_BYTES, RAW_EXCERPT_CHARS, SURROGATE_ESCAPE, LoneSurrogate, Overlong, TooDeep,
                                    bounded_lines, depth_over, excerpt, has_lone_surrogate, loads_bounded,
                                    open_binary, read_at_most)
from tunesmith.errors import DataError

__all__ = ["RAW_EXCERPT_CHARS", "Record", "container_of", "iter_records", "require_file"]

Container = Literal["jsonl", "json", "csv", "parquet", "txt"]
CONTAINERS: dict[str, Container] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "txt",
}
TextSplit = Literal["paragraph", "line", "file"]

# CSV cells are strings; these columns hold JSON (lists of messages, tool schemas) in CSV files.
_JSON_COLUMNS = frozenset({"messages", "conversations", "tools", "history", "chosen", "rejected", "prompt", "completion"})
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
# Undecodable bytes read with errors="surrogateescape" become these code points.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_JSON_CHUNK = 1 << 20



@dataclass(slots=True)
class Record:
    """One example as read: a parsed value, or the rule it broke while being read."""

    source: str
    line: int
    value: Any = None
    raw: str | None = None
    rule: str | None = None
    message: str = ""
    nul_bytes: int = 0  # NUL bytes stripped from the record's cells (CSV)


def container_of(path: Path) -> tuple[Container, bool]:
    """(container, gzipped) from the file name, e.g. `a.jsonl.gz` -> ("jsonl", True)."""
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes = suffixes[:-1]
    container = CONTAINERS.get(suffixes[-1]) if suffixes else None
    if container is None:
        raise DataError(
            f"cannot tell the file type of {path.name}",
            where=str(path),
            hint="supported: " + ", ".join(sorted(CONTAINERS)) + " (each optionally .gz); rename the file",
        )
    return container, gzipped


_open_binary = open_binary

_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def require_file(path: Path) -> None:
    """A clear error for an input that is missing, a directory or not a regular file (a pipe would
    be drained by the first of the passes over it), before any work starts."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"input is a symlink loop: {path}", hint="point the link at a real file") from None
        if path.is_symlink():
            raise DataError(f"input is a broken symlink: {path} -> {os.readlink(path)}",
                            hint="the file it points to does not exist") from None
        if exc.errno == errno.EACCES:
            raise DataError(f"input file is not readable: {path}", hint="check its permissions") from None
        raise DataError(f"input file not found: {path}", hint="check the path") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"input is a directory, not a file: {path}", hint="pass the example files themselves")
    for test, what in _SPECIAL_FILES:
        if test(mode):
            raise DataError(f"input is {what}, not a regular file: {path}",
                            hint="write the examples to a file first; inputs are read more than once")
    container_of(path)


def iter_records(path: Path, *, text_split: TextSplit = "paragraph",
                 max_line_bytes: int = DEFAULT_LINE_BYTES) -> Iterator[Record]:
    """Every record of one input file, in file order. A line (or text document) over
    `max_line_bytes` is rejected as too_long without being read into memory."""
    require_file(path)
    container, gzipped = container_of(path)
    source = str(path)
    try:
        if container == "jsonl":
            yield from _jsonl(path, gzipped, source, max_line_bytes)
        elif container == "json":
            yield from _json(path, gzipped, source, max_line_bytes)
        elif container == "csv":
            yield from _csv(path, gzipped, source, max_line_bytes)
        elif container == "parquet":
            yield from _parquet(path, gzipped, source)
        else:
            yield from _txt(path, gzipped, source, text_split, max_line_bytes)
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"cannot read the gzip stream: {exc}", where=source,
                        hint="the file is truncated or not gzip; re-compress it or drop the .gz suffix") from None


# --------------------------------------------------------------------------- JSONL


def _decode_line(raw: bytes, source: str, line: int) -> str | Record:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = excerpt(raw[:4 * RAW_EXCERPT_CHARS].decode("utf-8", "backslashreplace").rstrip("\r\n"))
        return Record(source, line, raw=shown, rule="non_utf8",
                      message=f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8")


def _too_long(overlong: Overlong, source: str, line: int, limit: int) -> Record:
    return Record(source, line, raw=overlong.excerpt(), rule="too_long", message=overlong.message(limit))


def _parse_json_line(text: str, source: str, line: int) -> Record:
    try:
        value = loads_bounded(text)
    except TooDeep as exc:
        return Record(source, line, raw=excerpt(text.rstrip("\r\n")), rule="too_deep", message=exc.message)
    except LoneSurrogate as exc:
        return Record(source, line, raw=excerpt(text.rstrip("\r\n")), rule="non_utf8", message=exc.message)
    except json.JSONDecodeError as exc:
        return Record(source, line, raw=excerpt(text.rstrip("\r\n")), rule="invalid_json",
                      message=f"{exc.msg} at column {exc.colno}")
    return Record(source, line, value=value, raw=text.rstrip("\r\n"))


def _jsonl(path: Path, gzipped: bool, source: str, limit: int) -> Iterator[Record]:
    with _open_binary(path, gzipped) as fh:
        for line, raw in enumerate(bounded_lines(fh, limit), 1):
            if isinstance(raw, Overlong):
                yield _too_long(raw, source, line, limit)
                continue
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            text = _decode_line(raw, source, line)
            yield text if isinstance(text, Record) else _parse_json_line(text, source, line)


# --------------------------------------------------------------------------- JSON array


def _json(path: Path, gzipped: bool, source: str, limit: int) -> Iterator[Record]:
    with _open_binary(path, gzipped) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"{"):
        # A .json file that starts with an object is, in practice, JSONL under another name.
        yield from _jsonl(path, gzipped, source, limit)
        return
    if not head.startswith(b"["):
        raise DataError("a .json input must hold a JSON array of examples ([{...}, {...}])", where=source,
                        hint="write an array, or one object per line in a .jsonl file")
    with _open_binary(path, gzipped) as fh:
        yield from _json_array(fh, source, limit)


def _json_array(fh: BinaryIO, source: str, limit: int) -> Iterator[Record]:
    """Stream the elements of a top-level JSON array.

    Written by hand because the standard library parses only whole documents and streaming
    JSON parsers are not among tunesmith's dependencies; `raw_decode` does the parsing, this
    loop only feeds it one buffer at a time and keeps line numbers.
    """
    import codecs

    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf, pos, line, eof = "", 0, 1, False

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        if len(buf) - pos > limit:
            raise too_big()
        chunk = fh.read(_JSON_CHUNK)
        try:
            text = utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError:
            raise DataError("the file is not UTF-8", where=f"{source}:{line}",
                            hint="re-encode the file as UTF-8") from None
        eof = not chunk
        buf, pos = buf[pos:] + text, 0
        return True

    def skip_space() -> str:
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                line += buf[pos] == "\n"
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    def too_big() -> DataError:
        return DataError(f"an element of the JSON array is over {limit:,} bytes (the limit for max_chars)",
                         where=f"{source}:{line}",
                         hint="write one example per line as .jsonl (an over-long line is then rejected "
                              "alone), or raise --max-chars")

    def broken(what: str) -> DataError:
        return DataError(f"invalid JSON: {what}", where=f"{source}:{line}",
                         hint="a .json file must be valid JSON as a whole; fix it, or write one example per "
                              "line as .jsonl so one bad example does not stop the run")

    more()
    if buf.startswith("\ufeff"):
        pos = 1
    if skip_space() != "[":
        raise broken("expected '[' at the start")
    pos += 1
    first = True
    while True:
        char = skip_space()
        if char == "]":
            return
        if not first:
            if char != ",":
                raise broken(f"expected ',' or ']' but found {char or 'the end of the file'!r}")
            pos += 1
            skip_space()
        first = False
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except RecursionError:
                raise broken(TooDeep.message) from None
            except json.JSONDecodeError as exc:
                # An element cut by the buffer edge fails near the end (or as an open string);
                # an error well inside the buffer is real.
                near_end = exc.pos + 64 >= len(buf) or exc.msg.startswith("Unterminated string")
                if near_end and more():
                    continue
                raise broken(exc.msg) from None
            if end == len(buf) and more():
                continue  # a number or literal may go on in the next chunk
            break
        if end - pos > limit:
            raise too_big()
        start_line, start = line, pos
        line += buf.count("\n", pos, end)
        pos = end
        if depth_over(value):
            yield Record(source, start_line, rule="too_deep", message=TooDeep.message)
            continue
        if SURROGATE_ESCAPE.search(buf, start, end) and has_lone_surrogate(value):
            yield Record(source, start_line, rule="non_utf8", message=LoneSurrogate.message)
            continue
        yield Record(source, start_line, value=value)


# --------------------------------------------------------------------------- CSV


def _csv_cell(key: str, cell: str) -> Any:
    if key in _JSON_COLUMNS and cell.lstrip()[:1] in ("[", "{"):
        value = loads_bounded(cell)
        return value
    if key == "label" and cell.strip().lower() in _TRUE | _FALSE:
        return cell.strip().lower() in _TRUE
    return cell


def _csv_lines(fh: BinaryIO, source: str, limit: int) -> Iterator[str]:
    """Physical lines for csv.reader, each at most `limit` bytes. An over-long line stops the file:
    it may sit inside a quoted cell, so no later row boundary could be trusted."""
    for number, raw in enumerate(bounded_lines(fh, limit), 1):
        if isinstance(raw, Overlong):
            raise DataError(f"line {number} is over {limit:,} bytes (the limit for max_chars)",
                            where=f"{source}:{number}", hint="shorten that row, or raise --max-chars")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        yield raw.decode("utf-8", "surrogateescape")


def _csv(path: Path, gzipped: bool, source: str, limit: int) -> Iterator[Record]:
    # Cells are bounded like lines (a quoted cell can span many lines); csv's own default is 128 KiB.
    csv.field_size_limit(limit)
    with _open_binary(path, gzipped) as fh:
        reader = csv.DictReader(_csv_lines(fh, source, limit))
        line = 1
        try:
            reader.fieldnames  # reads the header, so line_num now counts it
            line = reader.line_num + 1
            for row in reader:
                start, line = line, reader.line_num + 1
                yield _csv_record(row, source, start)
        except csv.Error as exc:
            raise DataError(f"the CSV cannot be read: {exc}", where=f"{source}:{line}",
                            hint="check the quoting of that row") from None


def _csv_record(row: dict, source: str, start: int) -> Record:
    cells = {k: v for k, v in row.items() if k is not None and v is not None}
    extra = row.get(None)  # type: ignore[call-overload]
    if extra:
        cells["__extra_cells__"] = extra
    # NUL bytes are invisible and break C tools downstream; strip them and say how many.
    nuls = sum(v.count("\x00") for v in cells.values() if isinstance(v, str))
    if nuls:
        cells = {k: v.replace("\x00", "") if isinstance(v, str) else v for k, v in cells.items()}
    raw = json.dumps(cells, ensure_ascii=False, default=str)
    if any(_ESCAPED_BYTE.search(v) for v in cells.values() if isinstance(v, str)):
        shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return Record(source, start, raw=excerpt(shown), rule="non_utf8",
                      message="a cell holds bytes that are not UTF-8", nul_bytes=nuls)
    try:
        value = {k: _csv_cell(k, v) for k, v in cells.items()}
    except TooDeep as exc:
        return Record(source, start, raw=excerpt(raw), rule="too_deep", message=exc.message, nul_bytes=nuls)
    except LoneSurrogate as exc:
        return Record(source, start, raw=excerpt(raw), rule="non_utf8", message=exc.message, nul_bytes=nuls)
    except json.JSONDecodeError as exc:
        return Record(source, start, raw=excerpt(raw), rule="invalid_json",
                      message=f"a JSON cell is not valid JSON: {exc.msg} at column {exc.colno}", nul_bytes=nuls)
    return Record(source, start, value=value, nul_bytes=nuls)


# --------------------------------------------------------------------------- Parquet


def _without_nulls(value: Any) -> Any:
    """Parquet fills absent struct fields with null; treat them as absent, like JSON does."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _parquet(path: Path, gzipped: bool, source: str) -> Iterator[Record]:
    import pyarrow
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="tunesmith-parquet-") as tmp:
        if gzipped:
            # Parquet needs random access, so a gzipped file is unpacked to disk (not memory) first.
            plain = Path(tmp) / "input.parquet"
            with _open_binary(path, True) as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, _JSON_CHUNK)
            path = plain
        try:
            parquet = pq.ParquetFile(path)
        except pyarrow.ArrowException as exc:
            raise DataError(f"not a readable Parquet file: {exc}", where=source) from None
        row = 0
        for batch in parquet.iter_batches(batch_size=512):
            for value in batch.to_pylist():
                row += 1
                yield Record(source, row, value=_without_nulls(value))


# --------------------------------------------------------------------------- plain text


def _txt(path: Path, gzipped: bool, source: str, split: TextSplit, limit: int) -> Iterator[Record]:
    """Documents of a text file: blank-line separated paragraphs, single lines, or the whole file."""
    with _open_binary(path, gzipped) as fh:
        if split == "file":
            raw = read_at_most(fh, limit)
            if isinstance(raw, Overlong):
                yield _too_long(raw, source, 1, limit)
                return
            raw = raw.lstrip(b"\xef\xbb\xbf")
            text = _decode_line(raw, source, 1)
            if isinstance(text, Record):
                yield text
            elif text.strip():
                yield Record(source, 1, value={"text": text.strip("\n")}, raw=None)
            return
        yield from _text_lines(fh, source, split, limit)


def _text_lines(fh: BinaryIO, source: str, split: TextSplit, limit: int) -> Iterator[Record]:
    start, parts, size = 0, [], 0
    overlong: Overlong | None = None  # the current paragraph, once it went over the limit

    def flush() -> Iterator[Record]:
        if overlong is not None:
            yield _too_long(overlong, source, start, limit)
        elif parts:
            yield _text_record(b"".join(parts), source, start)

    for line, raw in enumerate(bounded_lines(fh, limit), 1):
        if line == 1 and isinstance(raw, bytes):
            raw = raw.lstrip(b"\xef\xbb\xbf")
        if isinstance(raw, bytes) and not raw.strip():
            if split == "paragraph":
                yield from flush()
                start, parts, size, overlong = 0, [], 0, None
            continue
        if split == "line":
            yield _too_long(raw, source, line, limit) if isinstance(raw, Overlong) else _text_record(raw, source, line)
            continue
        start = start or line
        length = raw.length if isinstance(raw, Overlong) else len(raw)
        if overlong is not None:
            overlong.length += length
        elif isinstance(raw, Overlong) or size + length > limit:
            head = b"".join(parts)[:4 * RAW_EXCERPT_CHARS] or (raw.head if isinstance(raw, Overlong) else raw)
            overlong, parts = Overlong(size + length, head), []
        else:
            parts.append(raw)
            size += length
    yield from flush()


def _text_record(raw: bytes, source: str, line: int) -> Record:
    text = _decode_line(raw, source, line)
    if isinstance(text, Record):
        return text
    text = text.rstrip("\r\n")
    return Record(source, line, value={"text": text}, raw=text)
