"""Fenced code blocks of README.md and docs/*.md, with where they are and how they are marked.

A block may be preceded (on the line right before its fence, blank lines allowed) by a marker:

    <!-- doc-test: skip (why it cannot run here) -->   the reason is required
    <!-- doc-test: output -->                           console output, a diagram, a file shown
    <!-- doc-test: schema -->                           JSON that describes a schema, not an instance
    <!-- doc-test: config train -->                     YAML/JSON config of that verb's config class

See CONTRIBUTING.md ("Docs examples are tested") for what each kind of block is checked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER_RE = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<kind>[\w-]+)(?P<arg>[^()]*?)\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")
FENCE_RE = re.compile(r"^(?P<indent>\s{0,12})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
MARKER_KINDS = {"skip", "output", "schema", "config"}


@dataclass(frozen=True)
class Marker:
    kind: str
    arg: str = ""
    reason: str = ""
    line: int = 0


@dataclass
class Block:
    path: Path               # relative to the repository root
    line: int                # 1-based line of the opening fence
    lang: str
    text: str
    marker: Marker | None = None
    prose: str = ""          # the text between the previous block and this one
    index: int = 0           # position among the page's blocks

    @property
    def id(self) -> str:
        return f"{self.path.as_posix()}:{self.line}"


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # stray or malformed markers, unclosed fences

    @property
    def text(self) -> str:
        return "\n".join(b.text for b in self.blocks)


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _marker(line: str, number: int, problems: list[str], where: str) -> Marker | None:
    match = MARKER_RE.match(line)
    if not match:
        if line.lstrip().startswith("<!--") and "doc-test" in line:
            problems.append(f"{where}:{number}: malformed doc-test marker: {line.strip()}")
        return None
    marker = Marker(match["kind"], match["arg"].strip(), (match["reason"] or "").strip(), number)
    if marker.kind not in MARKER_KINDS:
        problems.append(f"{where}:{number}: unknown doc-test marker {marker.kind!r} (known: {sorted(MARKER_KINDS)})")
    elif marker.kind == "skip" and not marker.reason:
        problems.append(f"{where}:{number}: a skip marker needs a reason: <!-- doc-test: skip (why) -->")
    return marker


def _closing(lines: list[str], start: int, fence: str) -> int:
    """Index of the line closing the fence opened at `start` (len(lines) when unclosed)."""
    for j in range(start + 1, len(lines)):
        stripped = lines[j].strip()
        if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
            return j
    return len(lines)


def parse_page(path: Path, root: Path = REPO) -> Page:
    rel = path.relative_to(root)
    lines = path.read_text(encoding="utf-8").splitlines()
    page = Page(rel)
    pending: Marker | None = None
    prose_start, i = 0, 0
    while i < len(lines):
        fence = FENCE_RE.match(lines[i])
        if not fence:
            marker = _marker(lines[i], i + 1, page.problems, str(rel))
            if marker or (lines[i].strip() and pending):
                if pending:
                    page.problems.append(f"{rel}:{pending.line}: marker not right before a code block")
                pending = marker
            i += 1
            continue
        end = _closing(lines, i, fence["fence"])
        if end == len(lines):
            page.problems.append(f"{rel}:{i + 1}: code block is never closed")
        indent = len(fence["indent"])
        body = "\n".join(line[indent:] if not line[:indent].strip() else line.lstrip() for line in lines[i + 1:end])
        page.blocks.append(Block(rel, i + 1, fence["info"].split()[0].lower() if fence["info"].strip() else "",
                                 body, pending, "\n".join(lines[prose_start:i]), len(page.blocks)))
        pending, prose_start, i = None, end + 1, end + 1
    if pending:
        page.problems.append(f"{rel}:{pending.line}: marker not right before a code block")
    return page


def all_pages(root: Path = REPO) -> list[Page]:
    return [parse_page(path, root) for path in doc_files(root)]
