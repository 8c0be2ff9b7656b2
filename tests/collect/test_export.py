"""Export: the three JSONL formats (read back by the data loader), drops, and the summary numbers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from posttrain.collect.db import Collection
from posttrain.collect.export import export, format_summary, pairs_rows, summarize
from posttrain.data.formats import load_rows
from posttrain.errors import ConfigError

from .conftest import fill


def _label(collection: Collection, who: str, value: dict) -> dict:
    item = collection.next_item(who, k=3)
    collection.submit(who, item["item_id"], value)
    return item


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_every_format(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", {"P1": ["r0", "r1", "r2"], "P2": ["s0", "s1", "s2"]})
    _label(collection, "ann", {"ranking": [2, 0, 1]})
    _label(collection, "bob", {"ranking": [2, 1, 0]})
    _label(collection, "ann", {"ranking": [0, 1, 2]})
    collection.set_mode("ab")
    ab = _label(collection, "ann", {"choice": "b"})
    _label(collection, "ann", {"choice": "tie"})
    collection.set_mode("thumbs")
    _label(collection, "cy", {"thumbs": [True, False, True]})

    summary = export(tmp_path / "c.db", tmp_path / "out")
    rankings = _read(tmp_path / "out" / "rankings.jsonl")
    assert rankings == [
        {"prompt": "P1", "responses": ["r0", "r1", "r2"], "ranking": [2, 0, 1], "annotator": "ann"},
        {"prompt": "P1", "responses": ["r0", "r1", "r2"], "ranking": [2, 1, 0], "annotator": "bob"},
        {"prompt": "P2", "responses": ["s0", "s1", "s2"], "ranking": [0, 1, 2], "annotator": "ann"}]
    pairs = [(p["chosen"], p["rejected"]) for p in _read(tmp_path / "out" / "pairs.jsonl")]
    b_text, a_text = ab["candidates"][1]["text"], ab["candidates"][0]["text"]
    assert pairs == [("r2", "r0"), ("r2", "r1"), ("r0", "r1"), ("r2", "r1"), ("r2", "r0"), ("r1", "r0"),
                     ("s0", "s1"), ("s0", "s2"), ("s1", "s2"), (b_text, a_text)]  # the tie gives none
    assert _read(tmp_path / "out" / "unpaired.jsonl") == [
        {"prompt": "P1", "completion": t, "label": up, "annotator": "cy"}
        for t, up in (("r0", True), ("r1", False), ("r2", True))]
    # The recipes' loader accepts every file as its kind.
    assert len(load_rows(str(tmp_path / "out" / "rankings.jsonl"), "rankings")) == 3
    assert len(load_rows(str(tmp_path / "out" / "pairs.jsonl"), "preferences")) == 10
    assert len(load_rows(str(tmp_path / "out" / "unpaired.jsonl"), "unpaired")) == 3

    assert summary["labels"] == 6 and summary["annotators"] == ["ann", "bob", "cy"]
    rank = summary["modes"]["rank"]
    # Shared item P1, position pairs (0,1): ann 0>1, bob 1>0; (0,2) both 2>0; (1,2) both 2>1.
    # p_o = 2/3; p_e = 2/9 (each says each category once) -> kappa = (2/3 - 2/9)/(7/9) = 4/7.
    assert rank == {"labels": 3, "items": 2, "annotators": {"ann": 2, "bob": 1},
                    "units_with_several_labels": 3, "percent_agreement": round(2 / 3, 6),
                    "kappa": round(4 / 7, 6), "kappa_kind": "cohen"}
    assert summary["modes"]["ab"]["units_with_several_labels"] == 0
    assert summary["modes"]["ab"]["kappa"] is None
    assert summary["files"]["pairs"]["rows"] == 10 and summary["dropped"] == {
        "rankings": 0, "pairs": 0, "unpaired": 0}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    text = format_summary(summary)
    assert "6 labels by 3 annotators" in text and "rank: 3 labels on 2 items (ann 2, bob 1)" in text
    assert "agreement on 3 shared units: 66.7%, cohen kappa 0.571" in text


def test_adjacent_pairs_and_unknown_pairs_mode(make_collection: Callable[..., Collection]) -> None:
    collection = make_collection({"P": ["a", "b", "c"]})
    _label(collection, "ann", {"ranking": [1, 2, 0]})
    rows, dropped = pairs_rows(collection.labels(), "adjacent")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("b", "c"), ("c", "a")] and dropped == 0
    with pytest.raises(ConfigError, match="config error: pairs must be one of all, adjacent; got 'best'"):
        pairs_rows(collection.labels(), "best")


def test_fleiss_kappa_with_three_thumbs_annotators(make_collection: Callable[..., Collection]) -> None:
    collection = make_collection({"P": ["x", "y", "z"]}, mode="thumbs")
    votes = (("ann", [True, False, True]), ("bob", [True, True, True]), ("cy", [True, False, False]))
    for who, thumbs in votes:
        _label(collection, who, {"thumbs": thumbs})
    # Units: x up,up,up (P=1); y down,up,down (1/3); z up,up,down (1/3) -> P̄ = 5/9.
    # 6 ups, 3 downs -> P_e = (36 + 9)/81 = 5/9 -> kappa = 0.
    info = summarize(collection.labels())["modes"]["thumbs"]
    assert info["percent_agreement"] == round(5 / 9, 6) and info["kappa"] == 0.0
    assert info["kappa_kind"] == "fleiss" and info["units_with_several_labels"] == 3


def test_rows_the_loader_would_reject_are_dropped(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", {"P": ["fine", "  ", "fine"]})
    _label(collection, "ann", {"ranking": [0, 1, 2]})
    collection.set_mode("thumbs")
    _label(collection, "ann", {"thumbs": [True, False, True]})
    summary = export(tmp_path / "c.db", tmp_path / "out")
    # The ranking has an empty response; its pairs with it, and fine/fine (identical), are dropped.
    assert summary["dropped"] == {"rankings": 1, "pairs": 3, "unpaired": 1}
    assert not (tmp_path / "out" / "rankings.jsonl").exists() and "pairs" not in summary["files"]
    assert [r["completion"] for r in _read(tmp_path / "out" / "unpaired.jsonl")] == ["fine", "fine"]
    assert "dropped (empty or identical texts): rankings 1, pairs 3, unpaired 1" in format_summary(summary)
