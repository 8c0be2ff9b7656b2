"""A pairwise judge for `posttrain eval --judge examples/judges.py:plain_answer --baseline MODEL`.

A judge is ``fn(prompt, answer_a, answer_b) -> "a" | "b" | "tie"`` (see posttrain.eval.judge). This one
stands in for a labeller who wants the result stated plainly: one line beats several, no preamble
("Sure", "Let's", "Here is") beats a preamble, then the shorter answer wins; an empty answer always
loses; otherwise a tie.
"""

from __future__ import annotations

PREAMBLES = ("sure", "let's", "let us", "here is", "here's", "okay", "well", "to solve", "i ")


def _rank(answer: str) -> tuple[bool, bool, bool, int]:
    text = answer.strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (bool(text), len(lines) == 1, not text.lower().startswith(PREAMBLES), -len(text))


def plain_answer(prompt: str, answer_a: str, answer_b: str) -> str:
    rank_a, rank_b = _rank(answer_a), _rank(answer_b)
    return "a" if rank_a > rank_b else "b" if rank_b > rank_a else "tie"
