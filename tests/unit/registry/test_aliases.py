"""Moving aliases: promotion, canary weights, fallback, rollback as an undo stack, the append-only
history, sticky canary picks, old registries gaining the new columns, and the CLI commands."""

from __future__ import annotations

import collections
import json
import random
import sqlite3

import pytest
from typer.testing import CliRunner

from tunesmith.registry.aliases import PRODUCTION, Aliases, Route, parse_alias_ref, parse_weights, version_for_init
from tunesmith.registry.cli import registry_app
from tunesmith.registry.store import Registry, RegistryError


def _registry(tmp_path, versions=4) -> Aliases:
    registry = Registry(tmp_path / "r.sqlite3")
    for i in range(versions):
        run = tmp_path / f"run{i + 1}"
        (run / "adapter").mkdir(parents=True)
        registry.add("tickets", source=f"run:{run}", run_dir=run, weights_path=run / "adapter")
    return Aliases(registry)


def test_refs_name_production_or_an_alias():
    assert parse_alias_ref("tickets") == ("tickets", PRODUCTION)
    assert parse_alias_ref("tickets:canary") == ("tickets", "canary")
    assert parse_alias_ref("tickets@canary") == ("tickets", "canary")
    assert parse_weights("3=90,4=10") == {3: 90, 4: 10} == parse_weights("3:90 4:10")
    with pytest.raises(RegistryError):
        parse_weights("3=ninety")


def test_promote_canary_promote_rollback_walks_back_and_every_change_is_recorded(tmp_path):
    aliases = _registry(tmp_path)
    aliases.promote("tickets@1", actor="ana")
    aliases.canary("tickets@2", 10, actor="ana")
    assert aliases.route("tickets").split == {1: 90, 2: 10}
    assert aliases.registry.get("tickets@production").version == 1  # the primary while the canary runs
    aliases.promote("tickets@2", actor="bo", reason="canary clean")
    assert aliases.route("tickets").split == {2: 100}
    back = aliases.rollback("tickets", actor="cy")
    assert (back.version, back.weights) == (1, {})  # back to the previous version, candidate out of traffic
    history = aliases.history("tickets")
    assert [(h["action"], h["actor"], h["from_version"], h["to_version"]) for h in history] == [
        ("promote", "ana", None, 1), ("canary", "ana", 1, 1), ("promote", "bo", 1, 2), ("rollback", "cy", 2, 1)]
    assert history[1]["to_route"]["weights"] == {"1": 90, "2": 10} and history[2]["reason"] == "canary clean"
    with pytest.raises(RegistryError):  # nothing before version 1
        aliases.rollback("tickets")


def test_rollbacks_undo_successive_promotions_and_a_canary(tmp_path):
    aliases = _registry(tmp_path)
    for v in (1, 2, 3):
        aliases.promote(f"tickets@{v}")
    assert aliases.rollback("tickets").version == 2
    assert aliases.rollback("tickets").version == 1
    aliases.promote("tickets@3")
    aliases.canary("tickets@4", 5)
    ended = aliases.rollback("tickets")
    assert (ended.version, ended.weights) == (3, {})


def test_history_is_append_only(tmp_path):
    aliases = _registry(tmp_path)
    aliases.promote("tickets@1")
    for sql in ("UPDATE alias_history SET actor = 'mallory'", "DELETE FROM alias_history"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            with aliases.registry.db.transaction() as conn:
                conn.execute(sql)
    assert len(aliases.history("tickets")) == 1


def test_routes_must_name_existing_versions_and_sane_weights(tmp_path):
    aliases = _registry(tmp_path, versions=2)
    with pytest.raises(RegistryError):
        aliases.set("tickets", PRODUCTION, 9)
    with pytest.raises(RegistryError):
        aliases.set("tickets", PRODUCTION, 1, fallback=9)
    with pytest.raises(RegistryError):
        aliases.set("tickets", PRODUCTION, 1, weights={2: 100})  # leaves out its own version
    with pytest.raises(RegistryError):
        aliases.set("tickets", "3", 1)  # an all-digit alias would read as a version
    with pytest.raises(RegistryError):
        aliases.canary("tickets@2", 10)  # no production yet
    assert aliases.history("tickets") == []


def test_a_version_in_a_split_or_a_fallback_cannot_be_removed(tmp_path):
    aliases = _registry(tmp_path, versions=3)
    aliases.set("tickets", PRODUCTION, 1, weights={1: 90, 2: 10}, fallback=3)
    for ref in ("tickets@1", "tickets@2", "tickets@3"):
        with pytest.raises(RegistryError):
            aliases.registry.remove(ref)


def test_canary_picks_follow_the_weights_and_stick_to_a_user():
    route = Route("tickets", PRODUCTION, 3, {3: 90, 4: 10})
    rng = random.Random(0)
    counts = collections.Counter(route.pick(rng=rng) for _ in range(20000))
    assert 0.08 < counts[4] / 20000 < 0.12
    users = [f"user-{i}" for i in range(2000)]
    first = {u: route.pick(u) for u in users}
    assert all(route.pick(u) == first[u] for u in users)  # sticky
    assert 0.07 < sum(v == 4 for v in first.values()) / len(users) < 0.13
    assert Route("t", PRODUCTION, 3, {3: 100, 4: 0}).pick("anyone") == 3


def test_a_registry_written_before_aliases_had_routes_gains_the_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    from tunesmith.registry.store import SCHEMA

    conn.executescript(SCHEMA.replace("weights TEXT NOT NULL DEFAULT '{}',", ""))
    conn.execute("INSERT INTO versions (name, version, created_at, source, run_dir, weights_path) "
                 "VALUES ('tickets', 1, 0, 'x', '/r', '/r/adapter')")
    conn.execute("INSERT INTO aliases (name, alias, version, updated_at) VALUES ('tickets', 'production', 1, 0)")
    conn.commit()
    conn.close()
    aliases = Aliases(Registry(path))
    assert aliases.route("tickets") == Route("tickets", PRODUCTION, 1, {}, None, 0)


def test_init_from_resolves_a_version_or_the_production_alias_to_its_run(tmp_path):
    aliases = _registry(tmp_path, versions=2)
    aliases.promote("tickets@1")
    assert version_for_init(aliases.registry, "tickets@2") == str(tmp_path / "run2")
    assert version_for_init(aliases.registry, "tickets") == str(tmp_path / "run1")


def test_models_commands_promote_canary_rollback_and_show_history(tmp_path):
    aliases = _registry(tmp_path, versions=2)
    db = str(aliases.registry.db.path)
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(registry_app, [*args, "--registry", db], env={"TUNESMITH_ACTOR": "ops", "COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return result.output

    assert "tickets@production -> @1" in run("promote", "tickets@1")
    assert "@1: 80%, @2: 20%" in run("canary", "tickets@2", "--percent", "20")
    run("alias", "tickets:canary", "2", "--fallback", "1")
    assert "tickets@canary -> @2 (fallback @1)" in run("alias", "tickets:canary")
    assert "-> @1" in run("rollback", "tickets")
    entries = json.loads(run("history", "tickets", "--json"))
    assert [(e["alias"], e["action"], e["actor"]) for e in entries] == [
        ("production", "promote", "ops"), ("production", "canary", "ops"), ("canary", "alias", "ops"),
        ("production", "rollback", "ops")]
    assert "rollback" in run("history", "tickets")  # the table
