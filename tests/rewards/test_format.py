"""Built-in format and answer rewards: the adversarial table (RELIABILITY.md "Reward hacking")."""

from __future__ import annotations

import time

import pytest

from posttrain.rewards.answers import NONE_REASONS
from posttrain.rewards.format import answer_tag_format, exact_answer, numeric_answer, think_answer_format

GOLD = "42"
MEGABYTE = 1_000_000

# (case, completion, think_answer_format, answer_tag_format, exact_answer, numeric_answer), gold "42".
TABLE = [
    ("empty", "", 0, 0, 0, 0),
    ("skeleton only", "<think></think><answer></answer>", 0, 0, 0, 0),
    ("whitespace answer", "<think>a</think><answer> \n</answer>", 0, 0, 0, 0),
    ("correct", "<think>6*7</think>\n<answer>42</answer>", 1, 1, 1, 1),
    ("empty think is allowed", "<think></think><answer>42</answer>", 1, 1, 1, 1),
    ("whitespace around", "  \n<think>a</think>\n\n<answer> 42 </answer>\n", 1, 1, 1, 1),
    ("two think blocks", "<think>a</think><think>b</think><answer>42</answer>", 0, 1, 1, 1),
    ("two answer blocks", "<think>a</think><answer>42</answer><answer>42</answer>", 0, 0, 0, 0),
    ("answer block repeated 5x", "<answer>42</answer>" * 5, 0, 0, 0, 0),
    ("answer repeated in one block", "<think>a</think><answer>42 42 42</answer>", 1, 1, 0, 0),
    ("nested answer", "<think>a</think><answer><answer>42</answer></answer>", 0, 0, 0, 0),
    ("think nested in answer", "<think>a</think><answer><think>b</think>42</answer>", 0, 1, 0, 0),
    ("answer nested in think", "<think><answer>42</answer></think>", 0, 0, 1, 1),
    ("text between blocks", "<think>a</think> so <answer>42</answer>", 0, 1, 1, 1),
    ("text after answer", "<think>a</think><answer>42</answer> hope this helps", 0, 0, 1, 1),
    ("answer before think", "<answer>42</answer><think>a</think>", 0, 0, 1, 1),
    ("code fence", "```\n<think>a</think><answer>42</answer>\n```", 0, 0, 1, 1),
    ("every candidate listed", "<think>a</think><answer>1 2 3 42</answer>", 1, 1, 0, 0),
    ("candidates with commas", "<answer>1, 2, 42</answer>", 0, 1, 0, 0),
    ("box inside the answer", "<think>a</think><answer>\\boxed{42}</answer>", 1, 1, 0, 0),
    ("empty box", "<think>a</think><answer>\\boxed{}</answer>", 1, 1, 0, 0),
    ("box without tags", "\\boxed{42}", 0, 0, 0, 0),
    ("several boxes", "\\boxed{1} \\boxed{42}", 0, 0, 0, 0),
    ("nested boxes", "<answer>\\boxed{\\boxed{42}}</answer>", 0, 1, 0, 0),
    ("gold inside longer answer", "<think>a</think><answer>142</answer>", 1, 1, 0, 0),
    ("gold as prefix", "<think>a</think><answer>420</answer>", 1, 1, 0, 0),
    ("decimal form", "<answer>42.0</answer>", 0, 1, 0, 1),
    ("latex dollars and period", "<answer>$42$.</answer>", 0, 1, 1, 0),
    ("units", "<answer>42 apples</answer>", 0, 1, 0, 0),
    ("full-width digit", "<answer>4２</answer>", 0, 1, 0, 0),
    ("arabic-indic digits", "<answer>٤٢</answer>", 0, 1, 0, 0),
    ("prompt echo with gold", "What is 6*7? It is 42. <answer>41</answer>", 0, 1, 0, 0),
    ("unclosed answer", "<think>a</think><answer>42", 0, 0, 0, 0),
    ("upper-case tags", "<THINK>a</THINK><ANSWER>42</ANSWER>", 0, 0, 0, 0),
    ("1 MB of thinking", "<think>" + "a" * MEGABYTE + "</think><answer>42</answer>", 1, 1, 1, 1),
    ("1 MB of open tags", "<answer>" * (MEGABYTE // 8), 0, 0, 0, 0),
    ("1 MB answer", "<answer>" + "4 " * (MEGABYTE // 2) + "</answer>", 0, 1, 0, 0),
]
REWARDS = [think_answer_format, answer_tag_format, exact_answer, numeric_answer]


def _as_chat(completion: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": completion}]


@pytest.mark.parametrize("conversational", [False, True], ids=["text", "chat"])
@pytest.mark.parametrize("fn_index", range(len(REWARDS)), ids=[fn.__name__ for fn in REWARDS])
def test_adversarial_table(fn_index: int, conversational: bool) -> None:
    fn = REWARDS[fn_index]
    completions = [row[1] for row in TABLE]
    prompts: list = ["What is 6*7?"] * len(TABLE)
    if conversational:
        completions = [_as_chat(c) for c in completions]
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    start = time.perf_counter()
    scores = fn(prompts=prompts, completions=completions, answer=[GOLD] * len(TABLE))
    elapsed = time.perf_counter() - start
    expected = {row[0]: float(row[2 + fn_index]) for row in TABLE}
    assert dict(zip(expected, scores)) == expected
    assert elapsed < 1.0  # three 1 MB completions included


def test_prefilled_think_counts_as_the_start() -> None:
    completions = ["a</think><answer>42</answer>", "<think>a</think><answer>42</answer>"]
    prompts = ["Solve. <think>\n", "Solve. <think>\n"]
    assert think_answer_format(prompts, completions) == [1.0, 0.0]  # re-opening it is a second tag
    chat_prompt = [{"role": "user", "content": "Solve."}, {"role": "assistant", "content": "<think>"}]
    assert think_answer_format([chat_prompt], [_as_chat(completions[0])]) == [1.0]
    assert think_answer_format(["Solve."], [completions[0]]) == [0.0]


def test_numeric_answer_golds() -> None:
    NONE_REASONS.clear()
    completions = [
        "<answer>1000</answer>",
        "<answer>42</answer>",
        "<answer>42</answer>",
        "<answer>2.5</answer>",
    ]
    golds = ["1,000", "forty-two", 42, 2.5]
    assert numeric_answer([""] * 4, completions, answer=golds) == [1.0, None, 1.0, 1.0]
    assert NONE_REASONS["numeric_answer: gold not a number"] == 1
    assert (
        numeric_answer([""] * 3, ["<answer>1</answer>"] * 3, answer=[None, True, float("inf")]) == [None] * 3
    )


def test_exact_answer_golds() -> None:
    NONE_REASONS.clear()
    completions = ["<answer>Paris</answer>", "<answer>x</answer>", "<answer>7</answer>"]
    assert exact_answer([""] * 3, completions, answer=["paris.", " $ $ ", 7]) == [1.0, None, 1.0]
    assert NONE_REASONS["exact_answer: gold answer empty"] == 1


@pytest.mark.parametrize("fn", [exact_answer, numeric_answer], ids=lambda fn: fn.__name__)
def test_answer_column_errors(fn) -> None:  # type: ignore[no-untyped-def]
    name = fn.__name__
    with pytest.raises(
        ValueError, match=f"{name} needs the gold answers in an 'answer' column; the dataset has none"
    ):
        fn(["p"], ["<answer>1</answer>"])
    with pytest.raises(ValueError, match=f"{name}: 2 gold answers for 1 completions"):
        fn(["p"], ["<answer>1</answer>"], answer=["1", "2"])


def test_answer_tag_count_partial_credit() -> None:
    from posttrain.rewards.format import answer_tag_count

    completions = ["no tags", "inside <answer> tags", "<answer>5</answer>", "</answer><answer>",
                   "<answer>1</answer><answer>2</answer>", "x <answer>7</answer> trailing",
                   "it is inside <answer></answer> tags", "<answer> \n</answer>",
                   "<answer>5</answer></answer>",
                   "</answer> then <answer>5"]
    assert answer_tag_count([None] * 10, completions) == [0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5]
