"""User-facing errors.

Every problem caused by the user's input (a config, a data file, a model path) is raised as a
`TunesmithError` subclass. The CLI prints such errors without a traceback and exits with
status 2; any other exception is a bug in tunesmith.
"""

from __future__ import annotations


class TunesmithError(Exception):
    """An error the user can fix: says what was wrong, where, and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        parts = []
        if self.where:
            parts.append(f"{self.where}: {self.message}")
        else:
            parts.append(self.message)
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        return "\n".join(parts)


class ConfigError(TunesmithError):
    """A configuration file or override is invalid."""


class DataError(TunesmithError):
    """An input data file cannot be read or holds invalid examples."""


class ModelError(TunesmithError):
    """A model or tokenizer cannot be loaded or is unsafe to load."""


class TemplateError(TunesmithError):
    """A chat template cannot render or mask a conversation."""


class TrainingError(TunesmithError):
    """Training cannot start or had to stop (for example on a non-finite loss)."""


class ExportError(TunesmithError):
    """A model cannot be merged or exported."""


class ServeError(TunesmithError):
    """The server cannot start with the given options."""
