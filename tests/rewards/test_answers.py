"""Answer extraction and comparison: exact outputs on normal, malformed and adversarial text."""

from __future__ import annotations

import time

import pytest

from posttrain.rewards.answers import (
    completion_text,
    extract_answer,
    extract_boxed,
    extract_tag,
    last_number,
    normalize_answer,
    numbers_equal,
    parse_number,
)

MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>42</answer>", "42"),
        ("think first <answer>  4 2 \n</answer> trailing", "4 2"),
        ("<answer></answer>", ""),
        ("", None),
        ("<answer>42", None),  # unclosed
        ("42</answer>", None),
        ("</answer>42<answer>", None),  # closed before opened
        ("<answer>1</answer><answer>2</answer>", None),  # several blocks
        ("<answer><answer>42</answer></answer>", None),  # nested
        ("<Answer>42</Answer>", None),  # case-sensitive
        ("```\n<answer>42</answer>\n```", "42"),  # code fences are not special
    ],
)
def test_extract_tag(text: str, expected: str | None) -> None:
    assert extract_tag(text, "answer") == expected


def test_extract_tag_other_tag() -> None:
    assert extract_tag("<think>hmm</think><answer>1</answer>", "think") == "hmm"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42.0),
        (" -3.5\n", -3.5),
        ("+7", 7.0),
        ("1,234", 1234.0),
        ("1,234,567.25", 1234567.25),
        ("0.5", 0.5),
        ("", None),
        ("   ", None),
        ("85 apples", None),
        ("$85", None),
        ("1,23", None),  # bad thousands grouping
        ("12,34,567", None),
        ("1.", None),
        (".5", None),
        ("1e5", None),  # float() would accept it; an answer is digits
        ("inf", None),
        ("nan", None),
        ("- 5", None),
        ("٤٢", None),  # Arabic-Indic digits
        ("４２", None),  # full-width digits
        ("4２", None),
        ("1" * 400, None),  # not finite as a float
    ],
)
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{ 2 }", "2"),  # the last one
        (r"\boxed{\boxed{5}}", r"\boxed{5}"),  # the outer box closes last
        (r"\boxed{}", ""),
        (r"\boxed{3", None),  # never closes
        (r"\boxed{7} and \boxed{unclosed", "7"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not count
        ("no box here", None),
        (r"\boxed 5", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", "42"),
        ("first 3 then 1,234 apples", "1,234"),
        ("the result is -3", "-3"),
        ("5-3", "3"),  # a minus between digits is subtraction
        ("pi is 3.14.", "3.14"),
        ("(1,2,3)", "3"),  # not a thousands grouping
        ("no digits", None),
        ("", None),
        ("٤٢", None),
        ("x " + "7" * 256, "7" * 256),  # the longest run still read
        ("x " + "7" * 257, None),
        ("1, " * 100 + "85", "85"),  # spaces end each run
        ("1," * 200 + "85", None),  # one run of 402 characters
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert last_number(text) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("42", "42.0", True),
        ("1,000", 1000, True),
        ("0.1", 0.1000000000001, True),
        ("42", "142", False),
        ("0", "1e-20", False),
        ("42", None, False),
        (True, 1, False),  # a bool is not a number
        ("abc", "abc", False),
        (float("nan"), float("nan"), False),
        (10**400, 10**400, False),
        ([1], [1], False),
    ],
)
def test_numbers_equal(a: object, b: object, expected: bool) -> None:
    assert numbers_equal(a, b) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" The  $\\text{Cat}$. ", "the cat"),
        ("Paris\n", "paris"),
        ("3.14.", "3.14"),
        ("a\t b", "a b"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("method", "text", "expected"),
    [
        ("tag", "<answer> 7 </answer>", "7"),
        ("tag", "<answer> </answer>", None),  # empty answer is no answer
        ("boxed", r"\boxed{7}", "7"),
        ("last_number", "so 3 or 7", "7"),
        ("auto", r"<answer>\boxed{7}</answer> \boxed{8}", "7"),
        ("auto", r"\boxed{8} finally 9", "8"),
        ("auto", "finally 9", "9"),
        ("auto", "nothing", None),
    ],
)
def test_extract_answer(method: str, text: str, expected: str | None) -> None:
    assert extract_answer(text, method) == expected


def test_extract_answer_unknown_method() -> None:
    with pytest.raises(ValueError, match=r"unknown answer extraction method 'xml'; choose one of \['auto'"):
        extract_answer("x", "xml")


def test_completion_text_forms() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "chat"}]) == "chat"
    assert completion_text({"role": "assistant", "content": "one"}) == "one"
    assert completion_text([]) == ""
    assert (
        completion_text(
            [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
        )
        == "ab"
    )
    with pytest.raises(TypeError, match="a completion must be a string or a list of"):
        completion_text(42)
    with pytest.raises(TypeError, match="a message content must be a string or a list of parts, got int"):
        completion_text([{"role": "assistant", "content": 3}])


def test_one_megabyte_inputs_are_fast() -> None:
    """No catastrophic backtracking: each adversarial 1 MB input in well under a second."""
    inputs = [
        "<answer>" * (MEGABYTE // 8),
        "1," * (MEGABYTE // 2),
        "1" * MEGABYTE + "x",
        "\\boxed{" + "{" * MEGABYTE,
        "\\boxed{" * (MEGABYTE // 7),
        "{}" * (MEGABYTE // 2),
        "9 " * (MEGABYTE // 2),
        "\\text{" * (MEGABYTE // 6),
        "a " * (MEGABYTE // 2),
    ]
    for text in inputs:
        start = time.perf_counter()
        extract_tag(text, "answer")
        parse_number(text)
        extract_boxed(text)
        last_number(text)
        normalize_answer(text)
        assert time.perf_counter() - start < 0.75, repr(text[:20])
