"""The instructions task: disjoint stable splits, a leniency table for check(), demonstrations that
pass check(), preference pairs whose chosen passes and rejected fails, option errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from posttrain.config import DataConfig
from posttrain.data.formats import load_rows
from posttrain.data.sources import load_split
from posttrain.data.tasks import get_task, instructions
from posttrain.data.tasks.instructions import (
    FAMILIES,
    WORDS,
    check,
    format_ok,
    preference_rows,
    rows,
    sft_rows,
    split_of,
)
from posttrain.errors import ConfigError

_KEYS = {"prompt", "answer", "family", "_where"}


def _key(row: dict) -> tuple[str, str]:
    return row["family"], row["prompt"][0]["content"]


def test_rows_shape_and_registration() -> None:
    got = rows(30, seed=0)
    assert get_task("instructions") is instructions
    assert [r["_where"] for r in got[:2]] == ["instructions:train[0]", "instructions:train[1]"]
    assert all(set(r) == _KEYS and len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" for r in got)
    assert all(r["prompt"][0]["content"].endswith("Reply with only the answer.") for r in got)
    reverse = next(r for r in rows(50, seed=0, families=["reverse"]) if r["family"] == "reverse")
    word = reverse["prompt"][0]["content"].split('"')[1]
    assert reverse["answer"] == word[::-1] and word in WORDS
    assert load_rows(got, "prompts")[0]["_where"] == "instructions:train[0]"


def test_words_are_distinct_lowercase_and_never_palindromes() -> None:
    assert len(WORDS) >= 300 and len(set(WORDS)) == len(WORDS)
    assert all(w.isalpha() and w.islower() and w != w[::-1] for w in WORDS)


def test_rows_are_seeded() -> None:
    assert rows(40, seed=3) == rows(40, seed=3)
    assert rows(40, seed=3) != rows(40, seed=4)
    assert preference_rows(20, seed=1, kind="both") == preference_rows(20, seed=1, kind="both")


def test_split_is_a_stable_hash_and_train_and_test_share_no_problem() -> None:
    # Pinned: changing the hash would silently move problems between train and test across versions.
    pinned = [w for w in WORDS[:20] if split_of(f"reverse:{w}") == "test"]
    assert pinned == ["acid", "alarm", "alley", "animal"]
    train, test = rows(3000, seed=0), rows(300, seed=0, split="test")
    assert {_key(r) for r in train}.isdisjoint(_key(r) for r in test)
    assert len({_key(r) for r in train}) == 3000 and {r["family"] for r in test} == set(FAMILIES)
    # the same words to sort, in another order, are the same problem: train never holds a test one
    sorted_test = {frozenset(r["answer"].split(", ")) for r in test if r["family"] == "sort"}
    assert sorted_test.isdisjoint(frozenset(r["answer"].split(", ")) for r in train if r["family"] == "sort")
    reverse_test = {r["answer"][::-1] for r in rows(40, seed=5, split="test", families=["reverse"])}
    assert reverse_test == {w for w in WORDS if split_of(f"reverse:{w}") == "test"}


@pytest.mark.parametrize(("family", "answer", "reply", "ok"), [
    ("reverse", "elppa", "elppa", True),
    ("reverse", "elppa", '  "Elppa".\n', True),
    ("reverse", "elppa", "`elppa`", True),
    ("reverse", "elppa", "apple", False),
    ("reverse", "elppa", "The answer is elppa", False),
    ("reverse", "elppa", "elppa\nelppa", False),
    ("reverse", "elppa", "<think>reverse it</think>elppa", False),
    ("reverse", "elppa", "", False),
    ("uppercase", "GREEN APPLE", "GREEN  APPLE.", True),
    ("uppercase", "GREEN APPLE", "'GREEN APPLE'", True),
    ("uppercase", "GREEN APPLE", "green apple", False),
    ("uppercase", "GREEN APPLE", "Green Apple", False),
    ("sort", "apple, dog, pear", "apple dog pear", True),
    ("sort", "apple, dog, pear", '"apple", "Dog", "pear"', True),
    ("sort", "apple, dog, pear", "apple, pear, dog", False),
    ("sort", "apple, dog, pear", "apple, dog", False),
    ("count_letters", "6", "6.", True),
    ("count_letters", "6", "5", False),
    ("count_letters", "6", "six", False),
    ("count_letters", "6", "1 2 3 4 5 6", False),
    ("repeat", "cat cat cat", "cat, cat, cat", True),
    ("repeat", "cat cat cat", "cat cat", False),
    ("first_word", "owl", "Owl.", True),
    ("last_word", "owl", "the owl", False),
    ("join", "red-sun-box", "red - sun - box", True),
    ("join", "red-sun-box", "RED-SUN-BOX", True),
    ("join", "red-sun-box", "box-sun-red", False),
    ("join", "red-sun-box", "red sun box", False),
])
def test_check_is_lenient_on_form_and_strict_on_the_answer(family: str, answer: str, reply: str,
                                                           ok: bool) -> None:
    assert check(reply, {"family": family, "answer": answer}) is ok


def test_format_and_missing_family() -> None:
    row = {"family": "reverse", "answer": "elppa"}
    assert format_ok("anything on one line", row) and not format_ok("two\nlines", row)
    assert not format_ok("<answer>elppa</answer>", row) and not format_ok("   ", row)
    with pytest.raises(ConfigError, match="needs the row's 'family' column"):
        check("elppa", {"answer": "elppa"})


def test_every_demonstration_passes_check_with_no_reasoning_block() -> None:
    demos = sft_rows(400, seed=2)
    assert {d["family"] for d in demos} == set(FAMILIES)
    for demo in demos:
        user, assistant = demo["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant" and "prompt" not in demo
        assert assistant["content"] == demo["answer"] and "<think>" not in assistant["content"]
        assert check(assistant["content"], demo) and format_ok(assistant["content"], demo)
    assert load_rows(demos, "conversations")[0]["_where"] == "instructions:train[0]"


@pytest.mark.parametrize("kind", ["correctness", "helpfulness", "both"])
def test_preference_chosen_passes_and_rejected_fails(kind: str) -> None:
    pairs = preference_rows(300, seed=4, kind=kind)
    assert [p["prompt"] for p in pairs] == [r["prompt"] for r in rows(300, seed=4)]
    for pair in pairs:
        assert check(pair["chosen"], pair) and not check(pair["rejected"], pair)
    kinds = [p["pair_kind"] for p in pairs]
    assert kinds == (["correctness", "helpfulness"] * 150 if kind == "both" else [kind] * 300)
    if kind == "correctness":  # a mistake in the answer's own shape: one line, like the right reply
        assert all(format_ok(p["rejected"], p) for p in pairs)
        assert {p["family"] for p in pairs} == set(FAMILIES)


def test_load_split_reads_the_task_for_every_kind() -> None:
    data = DataConfig(train="instructions", train_size=12, eval_size=5,
                      options={"families": ["sort", "join"], "kind": "helpfulness"})
    prompts = load_split(data, "train", "prompts", seed=0)
    assert len(prompts) == 12 and {r["family"] for r in prompts} == {"sort", "join"}
    assert [r["_where"] for r in load_split(data, "eval", "prompts", seed=0)][-1] == "instructions:test[4]"
    assert len(load_split(data, "train", "conversations", seed=0)) == 12
    assert {p["pair_kind"] for p in load_split(data, "train", "preferences", seed=0)} == {"helpfulness"}


@pytest.mark.parametrize(("call", "message"), [
    (lambda: rows(3, 0, famlies=["sort"]), r"unknown option 'famlies'; did you mean 'families'\?"),
    (lambda: sft_rows(3, 0, style="think"), r"unknown option 'style' \(options: families, test_fraction\)"),
    (lambda: rows(3, 0, families=["sorting"]),
     r"unknown family 'sorting' in option 'families'; did you mean 'sort'\?"),
    (lambda: rows(3, 0, families="sort"), r"option 'families' must be a non-empty list"),
    (lambda: rows(3, 0, families=[]), r"option 'families' must be a non-empty list"),
    (lambda: rows(3, 0, test_fraction=1.5), r"option 'test_fraction' must be a number in \(0, 1\), got 1.5"),
    (lambda: rows(3, 0, split="validation"), r"unknown split 'validation'"),
    (lambda: rows(-1, 0), r"n must be >= 0"),
    (lambda: preference_rows(3, 0, kind="helpful"), r"unknown preference kind 'helpful'; did you mean"),
    (lambda: rows(60, 0, split="test", families=["reverse"]),
     r"asked for 60 test rows but found only 40 distinct test problems in families reverse"),
])
def test_bad_options_are_config_errors_naming_them(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()
