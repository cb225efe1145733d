"""Replay: the previous version's recorded training file, hash-checked, mixed in at a share."""

from __future__ import annotations

import json

import pytest

from tunesmith.manifest import sha256_file
from tunesmith.registry.replay import mix_with_replay
from tunesmith.registry.store import Registry, RegistryError


def _version(tmp_path, rows=30):
    run, data = tmp_path / "run", tmp_path / "data"
    (run / "adapter").mkdir(parents=True)
    data.mkdir()
    train = data / "train.jsonl"
    train.write_text("".join(json.dumps({"old": i}) + "\n" for i in range(rows)))
    (run / "manifest.json").write_text(json.dumps({"stage": "train", "inputs": {"data": [{"path": str(train)}]}}))
    registry = Registry(tmp_path / "r.sqlite3")
    return registry.add("tickets", source="run", run_dir=run, weights_path=run / "adapter",
                        training_file_sha256=sha256_file(train)), train


def test_replay_makes_up_the_share_and_keeps_every_new_example(tmp_path):
    version, _ = _version(tmp_path)
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"new": i}) + "\n" for i in range(9)))
    counts = mix_with_replay(new, version, tmp_path / "mixed.jsonl", share=0.25, seed=3)
    rows = [json.loads(line) for line in (tmp_path / "mixed.jsonl").read_text().splitlines()]
    assert counts == {"new": 9, "replayed": 3, "from": "tickets@1", "share": 0.25}
    assert sorted(r["new"] for r in rows if "new" in r) == list(range(9))
    assert len({r["old"] for r in rows if "old" in r}) == 3
    assert mix_with_replay(new, version, tmp_path / "same.jsonl", share=0.25, seed=3) == counts
    assert (tmp_path / "same.jsonl").read_text() == (tmp_path / "mixed.jsonl").read_text()


def test_a_changed_training_file_is_refused(tmp_path):
    version, train = _version(tmp_path)
    train.write_text('{"old": "edited"}\n')
    new = tmp_path / "new.jsonl"
    new.write_text('{"new": 0}\n')
    with pytest.raises(RegistryError, match="changed"):
        mix_with_replay(new, version, tmp_path / "mixed.jsonl", share=0.5)
