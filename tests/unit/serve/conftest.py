"""Fixtures for the serve unit tests: two adapters on the default model, built once per session."""

from __future__ import annotations

import pytest
from serve_fixtures import adapter_dirs, engine_state  # noqa: F401  (`engine_state` is the `state` fixture)
from tuned_helpers import one_thread


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The model is tiny: on a CPU shared with other work a second intra-op thread mostly waits
    at barriers, which makes every decode step several times slower."""
    with one_thread():
        yield
