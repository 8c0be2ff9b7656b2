"""Agreement statistics on hand-computed tables."""

from __future__ import annotations

import math

import pytest

from posttrain.collect.agreement import cohens_kappa, fleiss_kappa, percent_agreement

FIVE_PAIRS = [("y", "y"), ("y", "n"), ("n", "n"), ("y", "y"), ("n", "y")]
THREE_RATERS = [["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"], ["a", "b", "c"]]


def test_cohens_kappa_by_hand() -> None:
    # p_o = 3/5; both annotators say y 3 times, n 2 times: p_e = (3·3 + 2·2)/25 = 13/25.
    assert cohens_kappa(FIVE_PAIRS) == pytest.approx((0.6 - 0.52) / 0.48)  # = 1/6
    assert cohens_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    # Systematic disagreement: p_o = 0, p_e = 1/2 -> -1.
    assert cohens_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)


def test_fleiss_kappa_by_hand() -> None:
    # P_i = 1, 1/3, 1, 0 -> P̄ = 7/12; category shares 6/12, 5/12, 1/12 -> P_e = 62/144.
    assert percent_agreement(THREE_RATERS) == pytest.approx(7 / 12)
    assert fleiss_kappa(THREE_RATERS) == pytest.approx((7 / 12 - 62 / 144) / (1 - 62 / 144))  # = 11/41
    assert fleiss_kappa(THREE_RATERS) == pytest.approx(11 / 41)
    # With two raters and equal marginals Fleiss equals Cohen.
    assert fleiss_kappa([list(p) for p in FIVE_PAIRS]) == pytest.approx(1 / 6)


def test_units_with_one_rating_are_ignored_and_undefined_is_nan() -> None:
    assert percent_agreement([["a"], ["a", "a"], ["a", "b"]]) == pytest.approx(0.5)
    assert fleiss_kappa([*THREE_RATERS, ["c"]]) == pytest.approx(11 / 41)
    assert math.isnan(percent_agreement([["a"]])) and math.isnan(fleiss_kappa([]))
    assert math.isnan(cohens_kappa([]))
    # Everyone always says the same category: chance agreement is 1, kappa is 0/0.
    assert math.isnan(cohens_kappa([("a", "a"), ("a", "a")]))
    assert math.isnan(fleiss_kappa([["a", "a"], ["a", "a", "a"]]))
    # Units of different sizes: P_i = 1 (of 2) and 1/3 (of 3) -> 2/3.
    assert percent_agreement([["a", "a"], ["a", "b", "b"]]) == pytest.approx(2 / 3)
