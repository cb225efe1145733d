import json
from collections import Counter

from tunesmith.data import demo
from tunesmith.data.config import DemoDataConfig


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    demo.run(DemoDataConfig(out=a, seed=3, train_size=200, test_size=40))
    demo.run(DemoDataConfig(out=b, seed=3, train_size=200, test_size=40))
    demo.run(DemoDataConfig(out=c, seed=4, train_size=200, test_size=40))
    for name in ("train.jsonl", "test.jsonl", "dirty.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        assert (a / name).read_bytes() != (c / name).read_bytes(), name


def test_conversations_are_valid_triage_examples():
    train, test = demo.generate(DemoDataConfig(seed=5, train_size=600, test_size=100))
    assert len(train) == 600 and len(test) == 100
    categories, priorities, systems, multi = Counter(), Counter(), 0, 0
    for row in train:
        roles = [m["role"] for m in row["messages"]]
        systems += roles[0] == "system"
        multi += roles.count("assistant") > 1
        for m in row["messages"]:
            if m["role"] == "assistant":
                answer = json.loads(m["content"])
                assert list(answer) == ["category", "priority", "summary"]
                categories[answer["category"]] += 1
                priorities[answer["priority"]] += 1
                assert answer["summary"] and "\n" not in answer["summary"]
    assert set(categories) == set(demo.CATEGORIES)
    assert set(priorities) == set(demo.PRIORITIES)
    assert 0.2 < systems / len(train) < 0.5
    assert 0.05 < multi / len(train) < 0.2


def test_priority_rules_hold():
    train, _ = demo.generate(DemoDataConfig(seed=9, train_size=400, test_size=10))
    for row in train:
        first = json.loads(next(m["content"] for m in row["messages"] if m["role"] == "assistant"))
        allowed = demo.ALLOWED_PRIORITIES.get(first["category"], demo.PRIORITIES)
        assert first["priority"] in allowed


def test_test_tickets_never_appear_in_train():
    train, test = demo.generate(DemoDataConfig(seed=1, train_size=800, test_size=200))
    train_users = {demo._user_text(r) for r in train}
    assert not any(demo._user_text(r) in train_users for r in test)


def test_dirty_file_breaks_every_rule(tmp_path):
    import random

    rows = demo.dirty_rows(random.Random(0), DemoDataConfig())
    rules = {rule for rule, _ in rows if rule}
    assert rules == set(demo.DIRTY_RULES)
    assert sum(rule is None for rule, _ in rows) >= 10  # realistic good rows are mixed in
    non_utf8 = [raw for rule, raw in rows if rule == "non_utf8"]
    assert all(_fails_utf8(raw) for raw in non_utf8)


def _fails_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_shipped_demo_files_match_the_generator(tmp_path):
    """examples/data/tickets is exactly what `tunesmith data demo` writes with default settings."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[3] / "examples" / "data" / "tickets"
    demo.run(DemoDataConfig(out=tmp_path))
    for name in ("train.jsonl", "test.jsonl", "dirty.jsonl"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
