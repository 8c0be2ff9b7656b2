"""The collection database: schema, no duplicate prompts, items per mode, assignment, undo, threads."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest

from posttrain.collect.db import SCHEMA_VERSION, Collection, check_annotator, check_value
from posttrain.errors import DataError

from .conftest import SAMPLING, fill, three_prompts


def test_schema_is_versioned_and_uses_wal(tmp_path: Path) -> None:
    collection = Collection(tmp_path / "c.db")
    with sqlite3.connect(tmp_path / "c.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert tables == {"meta", "prompts", "candidates", "items", "assignments", "labels"}
    assert int(version) == SCHEMA_VERSION == 1 and journal == "wal"
    assert collection.mode == "rank"
    Collection(tmp_path / "c.db")  # reopening an existing database is fine


def test_newer_schema_and_missing_database_are_refused(tmp_path: Path) -> None:
    Collection(tmp_path / "c.db")
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(DataError, match="schema version 99 is newer than this posttrain's"):
        Collection(tmp_path / "c.db")
    with pytest.raises(DataError, match="no collection database here"):
        Collection(tmp_path / "missing.db", create=False)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(DataError, match="not a readable SQLite database"):
        Collection(tmp_path / "junk.db")


def test_a_prompt_is_stored_once_with_its_candidates(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", {"hi": ["a", "b"]})
    again = [{"text": "c", "finish_reason": "stop", "model": "m", "sampling": SAMPLING, "seed": 1}]
    assert collection.add_prompt("hi", "test", again) is None
    assert collection.add_prompt([{"role": "user", "content": "hi"}], "test", again) is not None
    assert collection.counts() == {"prompts": 2, "candidates": 3, "items": 1, "labels": 0}
    assert collection.sampled_keys() == {'"hi"', '[{"content":"hi","role":"user"}]'}


def test_items_per_mode(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", {"p": ["x", "y", "z"], "single": ["only"]}, mode="ab")
    assert collection.counts()["items"] == 3  # the 3 pairs of "p"; one candidate makes no pair
    item = collection.next_item("ann")
    assert item is not None and item["mode"] == "ab" and len(item["candidates"]) == 2
    collection.set_mode("rank")
    assert collection.counts()["items"] == 3 + 1  # "single" cannot be ranked either
    collection.set_mode("thumbs")
    assert collection.counts()["items"] == 3 + 1 + 2
    texts = [c["text"] for c in collection.next_item("ann")["candidates"]]
    assert texts == ["x", "y", "z"]
    with pytest.raises(DataError, match="unknown labelling mode 'stars'"):
        collection.set_mode("stars")


def test_an_item_goes_to_k_annotators_never_twice_to_one(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", three_prompts())
    first = collection.next_item("ann", k=1)
    assert collection.next_item("ann", k=1)["item_id"] == first["item_id"]  # a reload shows the same item
    assert collection.next_item("bob", k=1)["item_id"] != first["item_id"]  # ann holds its only slot
    assert collection.next_item("cy", k=2)["item_id"] == first["item_id"]  # k = 2: a second slot
    collection.submit("ann", first["item_id"], {"ranking": [0, 1, 2]})
    seen = []
    while (item := collection.next_item("ann", k=3)) is not None:
        seen.append(item["item_id"])
        collection.submit("ann", item["item_id"], {"ranking": [2, 1, 0]})
    assert first["item_id"] not in seen and len(seen) == 2
    assert collection.progress("ann", k=3) == {"done": 3, "left": 0, "total": 3, "labels": 3}


def test_an_abandoned_item_is_released_after_the_lease(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", {"p": ["x", "y"]})
    item = collection.next_item("ann", k=1)
    assert collection.next_item("bob", k=1, lease_s=3600) is None
    assert collection.next_item("bob", k=1, lease_s=0.0)["item_id"] == item["item_id"]
    collection.submit("ann", item["item_id"], {"ranking": [1, 0]})  # a late label is still kept
    assert collection.counts()["labels"] == 1


def test_submit_errors(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", {"p": ["x", "y"], "q": ["u", "v"]})
    item = collection.next_item("ann")
    with pytest.raises(DataError, match="was not given to 'bob': ask /api/next first"):
        collection.submit("bob", item["item_id"], {"ranking": [0, 1]})
    with pytest.raises(DataError, match="no item 999 in this collection"):
        collection.submit("ann", 999, {"ranking": [0, 1]})
    with pytest.raises(DataError, match=r"invalid ranking \(expected a permutation of 0..1, best first"):
        collection.submit("ann", item["item_id"], {"ranking": [0, 0]})
    collection.submit("ann", item["item_id"], {"ranking": [1, 0]})
    with pytest.raises(DataError, match="already labelled by 'ann' \\(undo it first\\)"):
        collection.submit("ann", item["item_id"], {"ranking": [0, 1]})
    with pytest.raises(DataError, match="invalid annotator name"):
        collection.next_item("   ")
    with pytest.raises(DataError, match="k \\(annotators per item\\) must be >= 1"):
        collection.next_item("ann", k=0)
    assert collection.counts()["labels"] == 1


def test_check_value_per_mode() -> None:
    assert check_value("rank", 3, {"ranking": [2, 0, 1], "extra": 1}) == {"ranking": [2, 0, 1]}
    assert check_value("ab", 2, {"choice": "both_bad"}) == {"choice": "both_bad"}
    assert check_value("thumbs", 2, {"thumbs": [True, False]}) == {"thumbs": [True, False]}
    with pytest.raises(DataError, match="a label value must be a JSON object"):
        check_value("ab", 2, "a")
    expected = r"invalid A/B choice \(expected a \| b \| tie \| both_bad, got 'c'\)"
    with pytest.raises(DataError, match=expected):
        check_value("ab", 2, {"choice": "c"})
    with pytest.raises(DataError, match=r"invalid thumbs \(expected 2 booleans \(true = up\)"):
        check_value("thumbs", 2, {"thumbs": [True, 1]})
    with pytest.raises(DataError, match="invalid ranking"):
        check_value("rank", 2, {"ranking": [0, True]})
    assert check_annotator("  ann ") == "ann"
    with pytest.raises(DataError, match="at most 64 characters"):
        check_annotator("x" * 65)


def test_skip_and_undo(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", three_prompts())
    assert collection.undo("ann") is None
    one = collection.next_item("ann")["item_id"]
    collection.submit("ann", one, {"ranking": [0, 1, 2]})
    two = collection.next_item("ann")["item_id"]
    collection.skip("ann", two)
    with pytest.raises(DataError, match=f"item {two} is not open for 'ann', nothing to skip"):
        collection.skip("ann", two)
    three = collection.next_item("ann")["item_id"]
    assert len({one, two, three}) == 3
    assert collection.undo("ann") == two  # the latest action was the skip
    assert collection.next_item("ann")["item_id"] == two  # and the item on screen went back to the pool
    assert collection.undo("ann") == one
    assert collection.counts()["labels"] == 0
    assert collection.next_item("ann")["item_id"] == one
    collection.submit("ann", one, {"ranking": [2, 1, 0]})
    assert [label["value"] for label in collection.labels()] == [{"ranking": [2, 1, 0]}]
    assert collection.next_item("bob")["item_id"] in (two, three)


def test_concurrent_annotators_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", {f"p{i}": ["a", "b"] for i in range(12)})
    committed: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        mine = committed.setdefault(name, [])
        try:
            while (item := collection.next_item(name, k=2)) is not None:
                collection.submit(name, item["item_id"], {"ranking": [0, 1]})
                mine.append(item["item_id"])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(f"ann{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    stored = Counter((label["item_id"], label["annotator"]) for label in collection.labels())
    claimed = Counter((item, name) for name, items in committed.items() for item in items)
    assert stored == claimed and max(stored.values()) == 1  # every returned submit is stored, once
    per_item = Counter(item for item, _ in stored)
    assert len(per_item) == 12 and set(per_item.values()) == {2}
