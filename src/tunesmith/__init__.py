"""tunesmith: from a pretrained open LLM and a file of examples to a served, specialised model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tunesmith")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
