"""Blind review: the blinding, the vote mapping, win rates with Wilson intervals, the export."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from tunesmith.data.formats import normalise, signature
from tunesmith.ui.reviews import ReviewStore, tally, wilson_interval
from tunesmith.ui.workspace import WorkspaceError


@pytest.mark.parametrize("k,n", [(0, 5), (3, 10), (8, 10), (37, 50), (50, 50)])
def test_wilson_interval_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_ties_count_half_and_both_bad_is_left_out():
    t = tally(["model_2", "model_2", "model_1", "tie", "both_bad", "both_bad"])
    assert t["compared"] == 4 and t["votes"] == 6
    assert t["win_rate"] == pytest.approx(2.5 / 4)
    assert (t["ci_low"], t["ci_high"]) == pytest.approx(wilson_interval(2.5, 4))
    assert tally(["both_bad"])["win_rate"] is None


def _store(tmp_path, n=6):
    store = ReviewStore(tmp_path / "reviews.sqlite")
    items = [([{"role": "user", "content": f"q{i}"}], f"base answer {i}", f"tuned answer {i}") for i in range(n)]
    rid = store.create(title="t", model_1="base", model_2="tuned", prompt_file="p.jsonl", sampling={}, items=items)
    return store, rid


def test_database_is_in_wal_mode(tmp_path):
    import sqlite3

    store, _ = _store(tmp_path)
    assert sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reviewers_vote_on_what_they_see_and_the_store_maps_it_to_models(tmp_path):
    store, rid = _store(tmp_path)
    sides = set()
    for reviewer in ("ann", "bob"):
        seen_order = []
        while not (shown := store.next_item(rid, reviewer))["done"]:
            seen_order.append(shown["item"])
            tuned_is_a = shown["a"].startswith("tuned")
            sides.add(tuned_is_a)
            assert "model" not in str(shown.keys())  # nothing in the item names a model
            # ann always prefers the tuned answer, bob the base one
            want_tuned = reviewer == "ann"
            store.vote(rid, reviewer, shown["item"], "A" if tuned_is_a == want_tuned else "B")
        assert sorted(seen_order) == list(range(6))
    assert sides == {True, False}  # both display orders occur
    results = store.results(rid)
    assert results["reviewers"]["ann"]["model_2"] == 6 and results["reviewers"]["ann"]["win_rate"] == 1.0
    assert results["reviewers"]["bob"]["model_1"] == 6 and results["reviewers"]["bob"]["win_rate"] == 0.0
    assert results["overall"]["win_rate"] == 0.5
    assert (results["overall"]["ci_low"], results["overall"]["ci_high"]) == pytest.approx(wilson_interval(6, 12))


def test_the_same_reviewer_sees_the_same_order_after_a_reload(tmp_path):
    store, rid = _store(tmp_path)
    first = store.next_item(rid, "ann")
    assert store.next_item(rid, "ann") == first
    store.vote(rid, "ann", first["item"], "tie")
    store.vote(rid, "ann", first["item"], "both_bad")  # a second vote replaces the first
    assert store.results(rid)["overall"]["votes"] == 1 and store.results(rid)["overall"]["both_bad"] == 1


def test_bad_votes_are_refused(tmp_path):
    store, rid = _store(tmp_path)
    for args in (("ann", 0, "C"), ("", 0, "A"), ("ann", 99, "A")):
        with pytest.raises(WorkspaceError):
            store.vote(rid, *args)
    with pytest.raises(WorkspaceError) as info:
        store.next_item("rev-missing", "ann")
    assert info.value.status == 404


def test_export_keeps_decided_items_as_preference_rows(tmp_path):
    store, rid = _store(tmp_path, n=4)

    def vote_for(reviewer, idx, model):
        store.next_item(rid, reviewer)
        for choice in ("A", "B"):
            probe = ReviewStore(store.path)
            # find the displayed side of `model` for this reviewer by asking the store's mapping
            outcome = probe.vote(rid, reviewer, idx, choice)
            if outcome == model:
                return
        raise AssertionError("no side maps to the model")

    vote_for("ann", 0, "model_2")
    vote_for("bob", 0, "model_2")
    vote_for("ann", 1, "model_1")
    vote_for("ann", 2, "model_1")
    vote_for("bob", 2, "model_2")  # a split: left out
    store.vote(rid, "ann", 3, "tie")
    rows, skipped = store.preference_rows(rid)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("tuned answer 0", "base answer 0"), ("base answer 1", "tuned answer 1")]
    assert skipped == {"no_preference": 1, "split": 1, "same_text": 0}
    for row in rows:
        assert signature(row) == "preference"
        normalised, ignored = normalise(row, "preference")
        assert normalised["prompt"] == row["prompt"] and ignored == []
