"""The alias router without a model: registry names that hold ':', pinned versions, the fallback
for a version that cannot load, and a retry once the route changes."""

from __future__ import annotations

import types
from pathlib import Path

from tunesmith.errors import ModelError
from tunesmith.registry.aliases import Aliases
from tunesmith.registry.store import Registry
from tunesmith.serve.adapters import Target
from tunesmith.serve.aliases import AliasRouter
from tunesmith.serve.metrics import ServeMetrics


class _State:
    """Just what the router uses: prepare (fails for paths that do not exist) and the engine."""

    def __init__(self):
        self.metrics = ServeMetrics()
        self.loaded = {}
        self.registry = types.SimpleNamespace(get=self.loaded.get, add=lambda p: self.loaded.__setitem__(p.name, p))
        self.engine = types.SimpleNamespace(call=self._call)

    @staticmethod
    def _call(fn):
        fn()
        return types.SimpleNamespace(result=lambda timeout: None)

    def prepare(self, name, path):
        if not Path(path).exists():
            raise ModelError(f"no adapter at {path}")
        return types.SimpleNamespace(name=name, target=Target(name=name, adapter=name, tokenizer=None,
                                                              stop_ids=frozenset()))


def test_routes_names_with_colons_pins_and_falls_back(tmp_path):
    aliases = Aliases(Registry(tmp_path / "r.sqlite3"))
    for name, where in (("ft:base:org::abc", "ok"), ("tickets", "ok"), ("tickets", "later")):
        (tmp_path / "ok").mkdir(exist_ok=True)
        aliases.registry.add(name, source="x", run_dir=tmp_path / where, weights_path=tmp_path / where)
    aliases.promote("ft:base:org::abc@1")
    aliases.set("tickets", "production", 2, fallback=1)  # version 2's files are not there yet
    router = AliasRouter(_State(), aliases.registry.db.path)
    router.refresh()
    assert router.resolve("ft:base:org::abc").name == "ft:base:org::abc@1"
    assert router.resolve("tickets").name == "tickets@1"  # the fallback
    assert router.resolve("tickets@1").name == "tickets@1" and router.resolve("tickets@2") is None
    assert router.resolve("tickets:canary") is None and router.resolve("other") is None
    (tmp_path / "later").mkdir()
    assert router.refresh() is False  # nothing changed: no retry on every poll
    aliases.set("tickets", "production", 2, fallback=1, reason="files restored")
    assert router.refresh() is True and router.resolve("tickets").name == "tickets@2"
    router.stop()
