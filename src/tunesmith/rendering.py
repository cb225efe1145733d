"""Rich tables and texts as plain text, for the `summary()` of a stage's result."""

from __future__ import annotations

import io
import shutil
from typing import Callable

from rich.console import Console


def as_text(draw: Callable[[Console], None]) -> str:
    """What `draw` prints on a console as wide as the terminal (80 columns when there is none)."""
    buffer = io.StringIO()
    draw(Console(file=buffer, width=shutil.get_terminal_size((80, 24)).columns))
    return buffer.getvalue().rstrip("\n")
