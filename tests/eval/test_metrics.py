"""Evaluation metrics: pass@k against brute force, exact match, majority vote and its ties."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from posttrain.eval.metrics import (
    exact_match,
    maj_at_k,
    majority_vote,
    mean_pass_at_k,
    normalize,
    pass_at_k,
    to_number,
)
from posttrain.rewards.answers import normalize_answer, parse_number


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(subset) for subset in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force() -> None:
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert math.isclose(pass_at_k(n, c, k), _brute_pass_at_k(n, c, k), abs_tol=1e-12), (n, c, k)


def test_pass_at_k_hand_values_and_edges() -> None:
    assert math.isclose(pass_at_k(10, 3, 1), 0.3)
    assert math.isclose(pass_at_k(4, 2, 2), 5 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3-subset holds a correct one
    exact = 1 - Fraction(math.comb(990, 100), math.comb(1000, 100))
    assert math.isclose(pass_at_k(1000, 10, 100), float(exact), rel_tol=1e-12)
    assert 0.0 < pass_at_k(1000, 1, 1) == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (3, 1, 5, "pass@5 needs at least k=5 samples per problem, got n=3"),
        (3, 1, 0, "pass@k needs k >= 1 and 0 <= c <= n, got n=3, c=1, k=0"),
        (3, 4, 1, "pass@k needs k >= 1 and 0 <= c <= n, got n=3, c=4, k=1"),
        (3, -1, 1, "pass@k needs k >= 1 and 0 <= c <= n, got n=3, c=-1, k=1"),
    ],
)
def test_pass_at_k_errors(n: int, c: int, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_mean_pass_at_k() -> None:
    assert math.isclose(mean_pass_at_k([(10, 3), (4, 2)], 1), (0.3 + 0.5) / 2)
    with pytest.raises(ValueError, match="mean pass@k of no problems"):
        mean_pass_at_k([], 1)
    with pytest.raises(ValueError, match="pass@2 needs at least k=2 samples per problem, got n=1"):
        mean_pass_at_k([(4, 1), (1, 1)], 2)


def test_exact_match() -> None:
    predictions = ["42", "1,000", "42.0", "Paris.", None, "", "142", "٤٢", "$\\text{Cat}$"]
    golds = ["42", "1000", "42", "paris", "42", "", "42", "42", "cat"]
    assert exact_match(predictions, golds) == [True, True, True, True, False, False, False, False, True]
    assert exact_match(predictions, golds, numeric=False) == [True, False, False, True] + [False] * 4 + [True]
    with pytest.raises(ValueError, match="exact_match: 1 predictions for 2 gold answers"):
        exact_match(["1"], ["1", "2"])


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["3", "4", "4", "3"], "3"),  # tie: the first to appear wins
        (["4", "3", "3", "4"], "4"),
        ([None, "5", None, None], "5"),
        ([None, None], None),
        ([], None),
        (["", " ", "$ $", "5"], "5"),  # empty answers do not vote
        (["1,000", "7", "1000.0", "7", "1000"], "1000"),  # numbers vote by value
        (["Paris", "Rome", "paris."], "paris"),
        (["0.5", "0.50", ".5"], "0.5"),
    ],
)
def test_majority_vote(answers: list[str | None], expected: str | None) -> None:
    assert majority_vote(answers) == expected


def test_maj_at_k() -> None:
    answers: list[str | None] = ["1", "2", "2", "1", "1"]
    assert maj_at_k(answers, "1", k=5) is True
    assert maj_at_k(answers, "1", k=3) is False  # "2" wins among the first three
    assert maj_at_k(answers, "1", k=1) is True
    assert maj_at_k(["2", "1"], "1", k=2) is False  # tie goes to "2", seen first
    assert maj_at_k([None, None], "1", k=2) is False
    assert maj_at_k(["1,000"], "1000", k=1) is True
    with pytest.raises(ValueError, match=r"maj@6 needs 1 <= k <= number of answers \(5\)"):
        maj_at_k(answers, "1", k=6)
    with pytest.raises(ValueError, match=r"maj@0 needs 1 <= k <= number of answers \(5\)"):
        maj_at_k(answers, "1", k=0)


SAME_AS_ANSWERS = [
    "42", " -3.5\n", "+7", "1,234", "1,234,567.25", "0,123", "1,23", "12,34,567", "1.", ".5", "1e5", "inf",
    "nan", "- 5", "٤٢", "４２", "", "   ", "+", "-", "1" * 400, "85 apples", "1,2345", "3.14.15",
    " The  $\\text{Cat}$. ", "\\text{a{b}}", "\\text{a\\text{b}}", "\\text{", "\\text{x} and \\text{y}.",
    "Paris\n", "a\t b", "...", "\\text{a}}",
]  # fmt: skip


@pytest.mark.parametrize("text", SAME_AS_ANSWERS)
def test_same_rules_as_reward_answers(text: str) -> None:
    """metrics cannot import posttrain.rewards.answers (pure module); both must agree."""
    assert to_number(text) == parse_number(text)
    assert normalize(text) == normalize_answer(text)


def test_wilson_interval_by_hand() -> None:
    from posttrain.eval.metrics import wilson_interval

    # 8 of 10, z = 1.96: centre 0.8 + 3.8416/20 = 0.99208, margin 1.96·sqrt(0.016 + 0.009604) = 0.313624,
    # divided by 1 + 0.38416
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.678456 / 1.38416, abs=1e-6)
    assert high == pytest.approx(1.305704 / 1.38416, abs=1e-6)
    low, high = wilson_interval(0, 5)  # p = 0: not the empty interval p ± z·se would give
    assert low == 0.0 and high == pytest.approx(3.8416 / 5 / (1 + 3.8416 / 5), abs=1e-9)
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(3, 2)


def test_win_rate_counts_ties_half() -> None:
    from posttrain.eval.metrics import wilson_interval, win_rate

    result = win_rate(6, 4, 0)  # (6 + 2) / 10
    assert result["win_rate"] == 0.8
    assert (result["win_rate_low"], result["win_rate_high"]) == wilson_interval(8, 10)
    assert (result["wins"], result["ties"], result["losses"]) == (6.0, 4.0, 0.0)
    with pytest.raises(ValueError, match="one comparison at least"):
        win_rate(0, 0, 0)
