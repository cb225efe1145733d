"""Fixtures for the serve unit tests: two adapters on the default model, built once per session."""

from __future__ import annotations

import pytest
from serve_helpers import build_adapter
from tuned_helpers import one_thread


@pytest.fixture(scope="session")
def adapter_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("serve-adapters")
    return {"a1": str(build_adapter(root / "a1", seed=1)), "a2": str(build_adapter(root / "a2", seed=2))}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The model is tiny: on a CPU shared with other work a second intra-op thread mostly waits
    at barriers, which makes every decode step several times slower."""
    with one_thread():
        yield
