"""Evaluation metrics, pure: pass@k, exact match, majority vote (maj@k), win rate with a Wilson interval.

Only `math` (and the standard typing helpers) are imported, so the metrics can be tested and
reused anywhere. Answer comparison follows `posttrain.rewards.answers` (which needs `re`, so it
cannot be imported here): the same normalisation and the same ASCII-only number format, checked
against each other in tests/eval/test_metrics.py.
"""

from __future__ import annotations

import math
from collections import Counter

_DIGITS = frozenset("0123456789")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, arXiv:2107.03374).

    pass@k = 1 - C(n-c, k) / C(n, k), computed in the numerically stable product form
    1 - prod_{i=n-c+1}^{n} (1 - k / i), so n = 1000 needs no huge binomials.
    Raises ValueError when n < k, k < 1, c < 0 or c > n.
    """
    if k < 1 or c < 0 or c > n:
        raise ValueError(f"pass@k needs k >= 1 and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n < k:
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem, got n={n}")
    if c == 0:
        return 0.0
    if n - c < k:
        return 1.0
    all_wrong = 1.0  # probability that k samples drawn without replacement are all wrong
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def mean_pass_at_k(counts: list[tuple[int, int]], k: int) -> float:
    """Mean of pass_at_k(n, c, k) over problems given as (n samples, c correct) pairs."""
    if not counts:
        raise ValueError("mean pass@k of no problems: give at least one (n, c) pair")
    return math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def _unwrap_text(text: str) -> str:
    """Replace each `\\text{...}` whose content has no brace by its content (linear scan)."""
    out: list[str] = []
    position = 0
    next_open = next_close = -1
    while True:
        start = text.find("\\text{", position)
        if start < 0:
            break
        content = start + len("\\text{")
        if next_close < content:  # positions only move forward, so each brace is found once
            next_close = text.find("}", content)
        if next_close < 0:
            break
        if next_open < content:
            next_open = text.find("{", content)
        if 0 <= next_open < next_close:
            out.append(text[position : start + 1])
            position = start + 1
            continue
        out.append(text[position:start] + text[content:next_close])
        position = next_close + 1
    out.append(text[position:])
    return "".join(out)


def normalize(text: str) -> str:
    """Same as `posttrain.rewards.answers.normalize_answer`: unwrap `\\text{}`, drop `$`, collapse
    whitespace, strip, drop one trailing period, lowercase."""
    text = " ".join(_unwrap_text(text).replace("$", "").split())
    return text.removesuffix(".").rstrip().lower()


def _is_digits(text: str) -> bool:
    return bool(text) and set(text) <= _DIGITS


def to_number(text: str) -> float | None:
    """Same as `posttrain.rewards.answers.parse_number`: one ASCII number (sign, thousands commas,
    decimal part), surrounding whitespace allowed; anything else, or a non-finite value, is None."""
    body = text.strip()
    body = body[1:] if body[:1] in ("+", "-") else body
    whole, point, fraction = body.partition(".")
    if point and not _is_digits(fraction):
        return None
    groups = whole.split(",")
    if len(groups) == 1:
        valid = _is_digits(whole)
    else:
        head_ok = _is_digits(groups[0]) and len(groups[0]) <= 3
        valid = head_ok and all(len(group) == 3 and _is_digits(group) for group in groups[1:])
    if not valid:
        return None
    value = float(text.strip().replace(",", ""))
    return value if math.isfinite(value) else None


def _same(prediction: str, gold: str, numeric: bool) -> bool:
    if numeric:
        predicted_value, gold_value = to_number(prediction), to_number(gold)
        if predicted_value is not None and gold_value is not None:
            return math.isclose(predicted_value, gold_value, rel_tol=1e-9, abs_tol=0.0)
    return normalize(prediction) == normalize(gold) != ""


def exact_match(predictions: list[str | None], golds: list[str], numeric: bool = True) -> list[bool]:
    """Per pair: the prediction equals the gold. With `numeric`, two numbers are compared by value
    (relative tolerance 1e-9: "1,000" == "1000.0"); otherwise, and for non-numbers, the normalised
    strings must be equal and non-empty. A None prediction never matches."""
    if len(predictions) != len(golds):
        raise ValueError(f"exact_match: {len(predictions)} predictions for {len(golds)} gold answers")
    return [
        prediction is not None and _same(prediction, str(gold), numeric)
        for prediction, gold in zip(predictions, golds)
    ]


def _vote_key(answer: str) -> str:
    """Numbers vote by value ("1,000", "1000" and "1000.0" are one answer), text by normal form."""
    value = to_number(answer)
    if value is None:
        return normalize(answer)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def majority_vote(answers: list[str | None]) -> str | None:
    """The most common answer in normal form (see `_vote_key`), ignoring None and empty answers;
    a tie goes to the answer that appeared first. None when there is no answer at all."""
    keys = [key for key in (_vote_key(a) for a in answers if a is not None) if key]
    if not keys:
        return None
    counts = Counter(keys)
    best = max(counts.values())
    return next(key for key in keys if counts[key] == best)


def maj_at_k(answers: list[str | None], gold: str, k: int) -> bool:
    """maj@k: the majority vote over the first k answers matches the gold (numerically if both
    are numbers). Raises ValueError when k < 1 or fewer than k answers are given."""
    if k < 1 or k > len(answers):
        raise ValueError(f"maj@{k} needs 1 <= k <= number of answers ({len(answers)})")
    winner = majority_vote(answers[:k])
    return winner is not None and exact_match([winner], [gold])[0]


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p = successes / n (Wilson 1927):
    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n); z = 1.96 gives 95%. Unlike p ± z·se it
    stays inside [0, 1] and is not empty at p = 0 or 1. ``successes`` may be fractional (ties counted
    half). Raises ValueError when n < 1 or successes is outside [0, n]."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs n >= 1 and 0 <= successes <= n, got {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n)), min(1.0, (centre + margin) / (1 + z2 / n))


def win_rate(wins: int, ties: int, losses: int, z: float = 1.96) -> dict[str, float]:
    """Pairwise comparisons against a baseline: win_rate = (wins + ties / 2) / comparisons (a tie is
    half a win, as in InstructGPT's and AlpacaEval's win rates), and win_rate_low / win_rate_high, the
    Wilson interval of that share over all comparisons. Treating each comparison as a Bernoulli is
    conservative with ties: an outcome in {0, 1/2, 1} has at most the variance of a Bernoulli of the
    same mean. Raises ValueError without comparisons or with a negative count."""
    if min(wins, ties, losses) < 0 or wins + ties + losses == 0:
        raise ValueError(f"win_rate needs non-negative counts and one comparison at least, got wins={wins}, "
                         f"ties={ties}, losses={losses}")
    n = wins + ties + losses
    low, high = wilson_interval(wins + ties / 2, n, z)
    return {"win_rate": (wins + ties / 2) / n, "win_rate_low": low, "win_rate_high": high,
            "wins": float(wins), "ties": float(ties), "losses": float(losses)}
