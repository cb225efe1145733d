"""Serving fixtures: two LoRA adapters on the default model, built once per session (the conftests
of tests/unit/serve and tests/e2e import them)."""

from __future__ import annotations

import pytest
from serve_helpers import build_adapter


@pytest.fixture(scope="session")
def adapter_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("serve-adapters")
    return {"a1": str(build_adapter(root / "a1", seed=1)), "a2": str(build_adapter(root / "a2", seed=2))}
