"""Fixtures of the integration tests: the training fixtures (tests/train_fixtures.py)."""

from train_fixtures import kto_dir, make_config, pairs_dir, prepared, tiny_model  # noqa: F401
