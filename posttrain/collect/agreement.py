"""Inter-annotator agreement on categorical labels: percent agreement, Cohen's and Fleiss' kappa.

A *unit* is one thing that several annotators judged (an A/B item, one response's thumb, one pair
of responses in a ranking); its ratings are the category each annotator gave. Units with fewer than
two ratings carry no agreement information and are ignored by every function here.

All functions are pure (lists in, a float out). Undefined values (no usable unit, or chance
agreement of 1 so that kappa is 0/0) are ``nan``: the export summary writes them as null.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence


def _rated(units: Sequence[Sequence[Hashable]]) -> list[Sequence[Hashable]]:
    return [u for u in units if len(u) >= 2]


def percent_agreement(units: Sequence[Sequence[Hashable]]) -> float:
    """Mean over units of the fraction of annotator pairs that agree.

    P_i = Σ_c n_ic (n_ic − 1) / (n_i (n_i − 1)),   agreement = mean_i P_i,
    where n_i is the number of ratings of unit i and n_ic those in category c (with two annotators
    per unit this is simply the fraction of units on which they agree).
    """
    rated = _rated(units)
    if not rated:
        return math.nan
    return sum(_pair_agreement(u) for u in rated) / len(rated)


def _pair_agreement(unit: Sequence[Hashable]) -> float:
    n = len(unit)
    return sum(c * (c - 1) for c in Counter(unit).values()) / (n * (n - 1))


def cohens_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float:
    """Cohen's kappa of two annotators (Cohen 1960, doi:10.1177/001316446002000104).

    κ = (p_o − p_e) / (1 − p_e), p_o = fraction of units with equal labels,
    p_e = Σ_c p_1(c) · p_2(c) from each annotator's own label frequencies. ``pairs``: [U] tuples
    (label of annotator 1, label of annotator 2), one per unit both rated.
    """
    if not pairs:
        return math.nan
    u = len(pairs)
    p_o = sum(a == b for a, b in pairs) / u
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    p_e = sum(first[c] * second[c] for c in first) / (u * u)
    return math.nan if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(units: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa for any number of annotators (Fleiss 1971, doi:10.1037/h0031619).

    κ = (P̄ − P_e) / (1 − P_e), P̄ = mean_i P_i (see ``percent_agreement``), P_e = Σ_c p_c², p_c the
    share of all ratings in category c. Units may have different numbers of ratings (≥ 2); with the
    same number everywhere this is exactly Fleiss' statistic.
    """
    rated = _rated(units)
    if not rated:
        return math.nan
    p_bar = sum(_pair_agreement(u) for u in rated) / len(rated)
    totals = Counter(c for u in rated for c in u)
    n_ratings = sum(totals.values())
    p_e = sum((count / n_ratings) ** 2 for count in totals.values())
    return math.nan if p_e == 1 else (p_bar - p_e) / (1 - p_e)
