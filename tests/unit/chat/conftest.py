"""Fixtures for tunesmith.chat tests; the tokenizers themselves are built in chat_helpers.py."""

from __future__ import annotations

import pytest
import torch
from chat_helpers import Family, build_families


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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
