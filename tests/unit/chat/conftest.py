"""Fixtures for tunesmith.chat tests; the tokenizers themselves are built in chat_helpers.py."""

from __future__ import annotations

import pytest
from chat_helpers import Family, build_families
from tuned_helpers import one_thread


@pytest.fixture(scope="session")
def families() -> dict[str, Family]:
    return build_families()


@pytest.fixture(params=["chatml", "llama3", "mistral", "llama2", "gemma"])
def family(request, families) -> Family:
    return families[request.param]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The models here are tiny: a second thread only adds synchronisation, which costs seconds
    per test when the CPU is shared with other work."""
    with one_thread():
        yield
