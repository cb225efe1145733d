"""Fixtures of the training unit tests (defined in tests/train_fixtures.py)."""

from train_fixtures import make_config, prepared, tiny_model  # noqa: F401
