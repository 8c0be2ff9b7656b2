"""math_verify_answer: LaTeX equivalence, the adversarial table, and a hanging input killed in time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from posttrain.rewards.answers import NONE_REASONS
from posttrain.rewards.math import MathVerifier, math_answer, math_verify_answer

MEGABYTE = 1_000_000


@pytest.fixture(scope="module")
def verifier() -> Iterator[MathVerifier]:
    verifier = MathVerifier(timeout_s=2.0)
    yield verifier
    verifier.close()


def test_verify_latex_forms(verifier: MathVerifier) -> None:
    assert verifier.verify("0.5", "\\frac{1}{2}") == (True, "")
    assert verifier.verify("\\frac{1}{2}", "0.5") == (True, "")
    assert verifier.verify("0.5", "\\frac{1}{3}") == (False, "")
    assert verifier.verify("?", "?") == (None, "gold not parseable")


def test_hanging_input_is_killed_and_the_worker_recovers(verifier: MathVerifier) -> None:
    verifier.verify("1", "1")  # worker started and warm
    restarts = verifier.restarts
    start = time.perf_counter()
    assert verifier.verify("5", "9^{9^{9^{9}}}") == (None, "timeout")
    assert time.perf_counter() - start < verifier.timeout_s + 2.0
    assert verifier.restarts == restarts + 1
    NONE_REASONS.clear()
    assert verifier(["p"], ["<answer>9^{9^{9^{9}}}</answer>"], answer=["5"]) == [None]
    assert NONE_REASONS["math_verify_answer: timeout"] == 1
    assert verifier.reasons["timeout"] == 1
    assert verifier.verify("2", "\\sqrt{4}") == (True, "")  # a fresh worker answers again


def test_worker_outlives_the_thread_that_started_it() -> None:
    verifier = MathVerifier()
    results: list = []
    thread = threading.Thread(target=lambda: results.append(verifier.verify("1", "1")))
    thread.start()
    thread.join()
    pid = verifier.worker_pid
    time.sleep(0.2)  # a worker tied to the finished thread would be dead by now
    assert results == [(True, "")]
    assert verifier.verify("2", "2") == (True, "")
    assert verifier.worker_pid == pid and verifier.restarts == 0
    verifier.close()
    assert verifier.worker_pid is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>\\boxed{7}</answer> \\boxed{8}", "7"),
        ("<answer> 7 </answer>", "7"),
        ("work \\boxed{8}", "8"),
        ("<answer></answer>", None),
        ("<answer>1</answer><answer>2</answer>", None),
        ("no answer 7", None),
    ],
)
def test_math_answer(text: str, expected: str | None) -> None:
    assert math_answer(text) == expected


# (case, completion, score) against gold "42".
TABLE = [
    ("empty", "", 0.0),
    ("skeleton only", "<think></think><answer></answer>", 0.0),
    ("correct tag", "<think>6*7</think><answer>42</answer>", 1.0),
    ("correct box", "so \\boxed{42}", 1.0),
    ("latex form", "<answer>\\frac{84}{2}</answer>", 1.0),
    ("decimal form", "<answer>42.0</answer>", 1.0),
    ("two answer blocks", "<answer>42</answer><answer>42</answer>", 0.0),
    ("nested answer", "<answer><answer>42</answer></answer>", 0.0),
    ("answer repeated in one block", "<answer>42 42 42</answer>", 0.0),
    ("every candidate listed", "<answer>1 2 3 42</answer>", 0.0),
    ("candidates with commas", "<answer>1, 2, 42</answer>", 0.0),
    ("candidates on latex lines", "<answer>1 \\\\ 42</answer>", 0.0),
    ("empty box", "\\boxed{}", 0.0),
    ("nested boxes", "\\boxed{\\boxed{42}}", 1.0),
    ("several boxes: the last counts", "\\boxed{1} then \\boxed{42}", 1.0),
    ("several boxes: wrong last", "\\boxed{42} then \\boxed{1}", 0.0),
    ("tag wins over box", "\\boxed{42} <answer>1</answer>", 0.0),
    ("code fence", "```\n<answer>42</answer>\n```", 1.0),
    ("gold inside longer answer", "<answer>142</answer>", 0.0),
    ("full-width digits", "<answer>４２</answer>", 0.0),
    ("arabic-indic digits", "<answer>٤٢</answer>", 0.0),
    ("prompt echo with gold", "What is 6*7? It is 42. <answer>41</answer>", 0.0),
    ("bare number, no tag", "The answer is 42", 0.0),
    ("1 MB of thinking", "<think>" + "a" * MEGABYTE + "</think><answer>42</answer>", 1.0),
    ("1 MB answer", "<answer>" + "4" * MEGABYTE + "</answer>", 0.0),
    ("1 MB of open boxes", "\\boxed{" * (MEGABYTE // 7), 0.0),
]


@pytest.mark.parametrize("conversational", [False, True], ids=["text", "chat"])
def test_adversarial_table(conversational: bool) -> None:
    completions: list = [row[1] for row in TABLE]
    if conversational:
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    scores = math_verify_answer(["What is 6*7?"] * len(TABLE), completions, answer=["42"] * len(TABLE))
    assert dict(zip((row[0] for row in TABLE), scores)) == {row[0]: row[2] for row in TABLE}


def test_golds() -> None:
    NONE_REASONS.clear()
    scores = math_verify_answer(["p"] * 4, ["<answer>1</answer>"] * 4, answer=["?", "", None, 1])
    assert scores == [None, None, None, 1.0]
    assert NONE_REASONS["math_verify_answer: gold not parseable"] == 1
    assert NONE_REASONS["math_verify_answer: gold answer empty"] == 2


def test_answer_column_errors() -> None:
    with pytest.raises(ValueError, match="math_verify_answer needs the gold answers in an 'answer' column"):
        math_verify_answer(["p"], ["<answer>1</answer>"])
    with pytest.raises(ValueError, match="math_verify_answer: 2 gold answers for 1 completions"):
        math_verify_answer(["p"], ["<answer>1</answer>"], answer=["1", "2"])
