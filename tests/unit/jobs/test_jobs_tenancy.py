"""Which project a key belongs to, and which models a project may call."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tunesmith.errors import ServeError
from tunesmith.jobs.config import JobsConfig
from tunesmith.jobs.service import JobsService
from tunesmith.models.loading import resolve_model_path
from tunesmith.serve.adapters import Target
from tunesmith.serve.protocol import APIError

BASE = Target("tunesmith-demo-4m", None, None, frozenset())


def _service(tmp_path, api_key="server-key", **jobs):
    adapters = {"ft-ftjob-1": SimpleNamespace(target=Target("ft-ftjob-1", "ft-ftjob-1", None, frozenset()))}
    state = SimpleNamespace(served_model=resolve_model_path("default"), api_key=api_key, base=BASE,
                            cfg=SimpleNamespace(model=SimpleNamespace(path="default")),
                            registry=SimpleNamespace(get=adapters.get))
    cfg = JobsConfig(**{"root": tmp_path, "base_models": {"gpt-4o-mini": "default"}, **jobs})
    return JobsService(cfg, state)


def test_keys_map_to_their_projects(tmp_path):
    service = _service(tmp_path, projects={"acme": {"api_keys": ["acme-1", "acme-2"]}, "beta": {"api_keys": ["b"]}})
    assert service.project_for("Bearer server-key") == "default"
    assert service.project_for("Bearer acme-2") == "acme"
    assert service.project_for("bearer b") == "beta"
    assert service.project_for("Bearer acme") is None
    assert service.project_for("") is None
    assert service.project_for("Basic acme-1") is None


def test_an_open_server_is_one_project_and_a_keyed_one_is_not_open(tmp_path):
    assert _service(tmp_path / "a", api_key=None).project_for("") == "default"
    assert _service(tmp_path / "b", api_key=None, projects={"acme": {"api_keys": ["k"]}}).project_for("") is None


def test_a_fine_tuned_model_answers_its_own_project_only(tmp_path):
    service = _service(tmp_path)
    service._served["ft:gpt-4o-mini:acme::abc"] = ("ft-ftjob-1", "acme")
    target = service.resolve_model("ft:gpt-4o-mini:acme::abc", "acme")
    assert target.name == "ft:gpt-4o-mini:acme::abc" and target.adapter == "ft-ftjob-1"
    for name, project in [("ft:gpt-4o-mini:acme::abc", "default"), ("ft-ftjob-1", "acme")]:
        with pytest.raises(APIError) as missing:
            service.resolve_model(name, project)
        assert missing.value.status == 404
    assert service.resolve_model("gpt-4o-mini", "default") is BASE
    assert service.resolve_model("some-adapter", "acme") is None  # left to the server's own adapters
    assert service.hides("ft-ftjob-1") and not service.hides("some-adapter")
    assert service.models_of("acme") == ["ft:gpt-4o-mini:acme::abc"] and service.models_of("default") == []


def test_base_names_must_be_the_served_model(tmp_path):
    with pytest.raises(ServeError):
        _service(tmp_path, base_models={"gpt-4o": "/elsewhere/other-model"})


@pytest.mark.parametrize("key", ["", "**********"])
def test_empty_or_masked_project_keys_are_refused(key):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        JobsConfig(projects={"acme": {"api_keys": [key]}})


def test_an_unknown_model_error_does_not_name_fine_tuned_engine_adapters(tmp_path):
    from tunesmith.serve.state import ServeState

    service = _service(tmp_path)
    service._served["ft:gpt-4o-mini:acme::abc"] = ("ft-ftjob-1", "acme")
    registry = SimpleNamespace(get=lambda name: None, names=lambda: ["ft-ftjob-1", "support"])
    state = SimpleNamespace(base_aliases=frozenset({"base"}), base=BASE, jobs=service, registry=registry)
    with pytest.raises(APIError) as missing:
        ServeState.resolve(state, "nope", "default")
    assert "support" in missing.value.message and "ft-ftjob-1" not in missing.value.message
    assert "ft:gpt-4o-mini:acme::abc" not in missing.value.message
