"""Fixtures the end-to-end tests share."""

from __future__ import annotations

import pytest

from serve_fixtures import adapter_dirs  # noqa: F401  (servers of two adapters)
from serve_helpers import adapter_root
from tuned_helpers import one_thread


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The embedded model runs fastest on one thread; hand-offs between threads dominate."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory, request):
    """A directory of LoRA adapters (a1, a2) for the module's server to load."""
    return adapter_root(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]))
