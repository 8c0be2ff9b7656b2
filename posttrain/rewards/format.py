"""Built-in rewards for the answer format and for answers compared as text or as numbers.

All take TRL's signature `fn(prompts, completions, **columns)` and accept string or
conversational completions. The answer ones read the `answer` column (the gold answer).

Decisions against reward hacking (each asserted in tests/rewards/test_format.py):
- An answer is the content of the single `<answer>` block: several or nested blocks give no
  answer, so repeating the answer or listing candidates in separate blocks scores 0.
- Code fences are not special. A tagged answer inside a fence is still the answer (the answer
  rewards judge content), but the format rewards score it 0 because the fence sits outside
  the blocks.
- Numbers are ASCII only and the whole answer must be one number ("85 apples", "1 2 3 85" -> 0).
- A prompt ending in `<think>` (prefilled thinking) counts as the start of the completion.
"""

from __future__ import annotations

import math
from typing import Any

from posttrain.rewards.answers import (
    NONE_REASONS,
    completion_text,
    extract_tag,
    normalize_answer,
    numbers_equal,
    parse_number,
)

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"


def _gold_column(name: str, answer: list[Any] | None, n: int) -> list[Any]:
    if answer is None:
        raise ValueError(f"{name} needs the gold answers in an 'answer' column; the dataset has none")
    if len(answer) != n:
        raise ValueError(f"{name}: {len(answer)} gold answers for {n} completions")
    return list(answer)


def _prefill(prompt: Any) -> str:
    """ "<think>" when the prompt already opened the thinking block for the model, else ""."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        prompt = prompt[-1].get("content") if prompt[-1].get("role") == "assistant" else None
    if isinstance(prompt, str) and prompt.rstrip().endswith(_THINK_OPEN):
        return _THINK_OPEN
    return ""


def _is_think_answer(text: str) -> bool:
    """`<think>...</think>` then `<answer>...</answer>`, only whitespace around and between,
    each tag exactly once, non-empty answer."""
    if any(text.count(tag) != 1 for tag in (_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)):
        return False
    text = text.strip()
    if not (text.startswith(_THINK_OPEN) and text.endswith(_ANSWER_CLOSE)):
        return False
    think_end = text.find(_THINK_CLOSE)
    answer_start = text.find(_ANSWER_OPEN)
    if answer_start < think_end or text[think_end + len(_THINK_CLOSE) : answer_start].strip():
        return False
    return bool(text[answer_start + len(_ANSWER_OPEN) : -len(_ANSWER_CLOSE)].strip())


def think_answer_format(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 iff the completion is exactly `<think>...</think>` then `<answer>...</answer>`
    (whitespace allowed around and between, each tag once, answer not empty), else 0.0.
    A prompt ending in `<think>` counts as the completion's start."""
    return [
        1.0 if _is_think_answer(_prefill(prompt) + completion_text(completion)) else 0.0
        for prompt, completion in zip(prompts, completions)
    ]


def answer_tag_format(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 iff there is exactly one non-empty `<answer>` block and only whitespace after it."""
    scores: list[float | None] = []
    for completion in completions:
        text = completion_text(completion)
        content = extract_tag(text, "answer")
        ends_with_block = not text[text.rfind(_ANSWER_CLOSE) + len(_ANSWER_CLOSE) :].strip()
        scores.append(1.0 if content and ends_with_block else 0.0)
    return scores


def answer_tag_count(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """Partial credit towards the answer format: 0.5 for exactly one `<answer>` with something after
    it, 0.5 more for exactly one `</answer>` closing that content (open-r1's tag-count reward, for
    answer tags alone, made content-aware).

    A shaping reward for models that almost never produce the full format, so a group's samples
    differ and GRPO gets a signal; evaluation still uses the strict format check. Empty tags earn
    nothing: measured on the embedded model, a count-only version was gamed within 20 steps by
    quoting the prompt's phrase "inside <answer></answer> tags"."""
    scores: list[float | None] = []
    for completion in completions:
        text = completion_text(completion)
        opened = text.count(_ANSWER_OPEN) == 1
        after = text[text.find(_ANSWER_OPEN) + len(_ANSWER_OPEN):] if opened else ""
        content, closing, _ = after.partition(_ANSWER_CLOSE)
        has_content = opened and bool(content.strip())
        closed = has_content and bool(closing) and text.count(_ANSWER_CLOSE) == 1
        scores.append(0.5 * has_content + 0.5 * closed)
    return scores


def exact_answer(
    prompts: list[Any], completions: list[Any], answer: list[Any] | None = None, **kwargs: Any
) -> list[float | None]:
    """1.0 iff the `<answer>` content equals the gold after `normalize_answer`, else 0.0.
    A gold that is empty after normalisation gives None (counted in NONE_REASONS)."""
    golds = _gold_column("exact_answer", answer, len(completions))
    scores: list[float | None] = []
    for completion, gold in zip(completions, golds):
        gold_text = normalize_answer(str(gold)) if gold is not None else ""
        if not gold_text:
            NONE_REASONS["exact_answer: gold answer empty"] += 1
            scores.append(None)
            continue
        predicted = extract_tag(completion_text(completion), "answer")
        scores.append(1.0 if predicted is not None and normalize_answer(predicted) == gold_text else 0.0)
    return scores


def numeric_answer(
    prompts: list[Any], completions: list[Any], answer: list[Any] | None = None, **kwargs: Any
) -> list[float | None]:
    """1.0 iff the `<answer>` content is one number equal to the gold number (relative tolerance
    1e-9), else 0.0. A gold that is not a number gives None ("not applicable", not 0) and is
    counted in `posttrain.rewards.answers.NONE_REASONS["numeric_answer: gold not a number"]`."""
    golds = _gold_column("numeric_answer", answer, len(completions))
    scores: list[float | None] = []
    for completion, gold in zip(completions, golds):
        gold_value = _as_number(gold)
        if gold_value is None:
            NONE_REASONS["numeric_answer: gold not a number"] += 1
            scores.append(None)
            continue
        predicted = extract_tag(completion_text(completion), "answer")
        scores.append(1.0 if predicted is not None and numbers_equal(predicted, gold_value) else 0.0)
    return scores


def _as_number(gold: Any) -> float | None:
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, int | float):
        try:
            value = float(gold)
        except OverflowError:
            return None
        return value if math.isfinite(value) else None
    return parse_number(str(gold))
