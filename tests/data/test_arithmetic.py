"""The arithmetic task: disjoint stable splits, prompt styles, an exact adversarial table for
check()/format_ok(), and demonstrations that all pass check()."""

from __future__ import annotations

import time

import pytest

from posttrain.data.formats import load_rows
from posttrain.data.tasks import TASKS, arithmetic, get_task
from posttrain.data.tasks.arithmetic import check, format_ok, rows, sft_rows, solution, split_of
from posttrain.errors import ConfigError


def _row(question: str, answer: str, style: str = "tags") -> dict[str, str]:
    return {"question": question, "answer": answer, "style": style}


# ---------------------------------------------------------------- rows and splits


def test_rows_shape_and_prompts() -> None:
    got = rows(3, seed=0)
    assert len(got) == 3 and [r["_where"] for r in got] == [f"arithmetic:train[{i}]" for i in range(3)]
    for row in got:
        a, op, b = row["question"].split(" ")
        assert op == "+" and 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert row["answer"] == str(int(a) + int(b)) and row["style"] == "tags"
        text = f"What is {row['question']}? Give the final answer as a number inside <answer></answer> tags."
        assert row["prompt"] == [{"role": "user", "content": text}]
    plain = rows(1, seed=0, style="plain")[0]
    assert plain["prompt"][0]["content"] == f"What is {plain['question']}? Answer with just the number."
    think = rows(1, seed=0, style="think")[0]["prompt"][0]["content"]
    assert "<think></think>" in think and "<answer></answer>" in think
    assert load_rows(got, "prompts")[0]["_where"] == "arithmetic:train[0]"


def test_rows_are_seeded() -> None:
    assert rows(20, seed=3) == rows(20, seed=3)
    assert rows(20, seed=3) != rows(20, seed=4)


def test_split_is_a_stable_hash() -> None:
    # Pinned: changing the hash would silently move problems between train and test across versions.
    test = [f"{a} + {b}" for a in range(10) for b in range(10) if split_of((a, "+", b)) == "test"]
    assert test == ["2 + 4", "3 + 1", "3 + 8", "4 + 0", "4 + 1", "4 + 4", "5 + 4", "9 + 2", "9 + 5"]


def test_train_and_test_partition_a_small_space_and_too_many_rows_is_an_error() -> None:
    test = rows(9, seed=0, split="test", digits=1)
    train = rows(91, seed=1, split="train", digits=1)
    test_q, train_q = {r["question"] for r in test}, {r["question"] for r in train}
    assert len(test_q) == 9 and len(train_q) == 91 and not test_q & train_q
    assert len(test_q | train_q) == 100
    message = (r"arithmetic: asked for 10 test rows but the test split holds only 9 distinct problems "
               r"\(ops \+, operands 0..9\); widen `digits`")
    with pytest.raises(ConfigError, match=message):
        rows(10, seed=0, split="test", digits=1)


def test_large_space_is_sampled_from_its_split_only() -> None:
    got = rows(300, seed=5, split="test", ops=("+", "-", "*"), digits=3)
    problems = [(int(a), op, int(b)) for a, op, b in (r["question"].split(" ") for r in got)]
    assert len(set(problems)) == 300 and {op for _, op, _ in problems} == {"+", "-", "*"}
    assert all(split_of(p) == "test" and 100 <= p[0] <= 999 and 100 <= p[2] <= 999 for p in problems)
    assert any(r["answer"].startswith("-") for r in got if " - " in r["question"])
    mixed = rows(200, seed=0, digits=(1, 2))
    values = [int(x) for r in mixed for x in r["question"].split(" + ")]
    assert min(values) < 10 and max(values) <= 99


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ops": ("+", "x")}, r"arithmetic: unknown op 'x' \(choose from \+, -, \*\)"),
        ({"style": "tag"}, r"arithmetic: unknown style 'tag'; did you mean 'tags'\?"),
        ({"split": "tset"}, r"arithmetic: unknown split 'tset'; did you mean 'test'\?"),
        ({"digits": 0}, r"arithmetic: digits must be an integer or a \(low, high\) pair within 1..6, got 0"),
        ({"digits": (2, 1)}, r"got \(2, 1\)"),
        ({"digits": (1, 2, 3)}, r"got \(1, 2, 3\)"),
        ({"digits": 7}, r"within 1..6, got 7"),
        ({"digits": "2"}, r"got '2'"),
        ({"ops": ()}, r"arithmetic: ops is empty"),
        ({"test_fraction": 0.0}, r"arithmetic: test_fraction must be in \(0, 1\), got 0.0"),
        ({"n": -1}, r"arithmetic: n must be >= 0, got -1"),
    ],
)
def test_option_errors(options: dict, message: str) -> None:
    arguments = {"n": 2, "seed": 0, **options}
    with pytest.raises(ConfigError, match=message):
        rows(**arguments)


def test_task_registry() -> None:
    assert TASKS["arithmetic"] is arithmetic and get_task("arithmetic") is arithmetic
    with pytest.raises(ConfigError, match=r"unknown task 'arithmetc'; did you mean 'arithmetic'\? "
                                          r"\(known tasks: arithmetic, instructions\)"):
        get_task("arithmetc")


# ---------------------------------------------------------------- check / format_ok


@pytest.mark.parametrize(
    ("completion", "fmt", "correct"),
    [
        ("<answer>85</answer>", True, True),
        ("47 + 38: 7 + 8 = 15, carry 1.\n<answer> 85 </answer>\n", True, True),
        ("<think>x</think><answer>85</answer>", True, True),  # text before the block is allowed
        ("<answer>085</answer>", True, True),  # leading zeros: accepted, same number
        ("<answer>86</answer>", True, False),
        ("<answer>85</answer><answer>85</answer>", False, False),
        ("<answer><answer>85</answer></answer>", False, False),
        ("<answer>85</answer> extra", False, False),
        ("<answer></answer>", False, False),
        ("<answer>８５</answer>", False, False),
        ("<answer>85.0</answer>", False, False),
        ("<answer>+85</answer>", False, False),
        ("<answer>85 apples</answer>", False, False),
        ("<answer>85", False, False),
        ("85", False, False),
        ("", False, False),
        ("<Answer>85</Answer>", False, False),
    ],
)
def test_tags_style(completion: str, fmt: bool, correct: bool) -> None:
    row = _row("47 + 38", "85")
    assert format_ok(completion, row) is fmt
    assert check(completion, row) is correct


@pytest.mark.parametrize(
    ("completion", "fmt", "correct"),
    [
        ("<think>7 + 8 = 15, carry 1; 4 + 3 + 1 = 8</think>\n<answer>85</answer>", True, True),
        ("\n<think>a</think> <answer> 85 </answer>\n\n", True, True),
        ("<think>a</think><answer>84</answer>", True, False),
        ("<think></think><answer>85</answer>", False, False),  # the bare skeleton earns nothing
        ("<think> \n</think><answer>85</answer>", False, False),
        ("Sure! <think>a</think><answer>85</answer>", False, False),
        ("<think>a</think>so<answer>85</answer>", False, False),
        ("<think>a</think><answer>85</answer>x", False, False),
        ("<think>a</think><think>b</think><answer>85</answer>", False, False),
        ("<think>a<answer>85</answer></think>", False, False),
        ("<answer>85</answer><think>a</think>", False, False),
        ("<think>a</think><answer></answer>", False, False),
        ("<think>a</think><answer>85</answer><answer>85</answer>", False, False),
        ("<answer>85</answer>", False, False),
    ],
)
def test_think_style(completion: str, fmt: bool, correct: bool) -> None:
    row = _row("47 + 38", "85", "think")
    assert format_ok(completion, row) is fmt
    assert check(completion, row) is correct


@pytest.mark.parametrize(
    ("completion", "gold", "fmt", "correct"),
    [
        ("42", "42", True, True),
        ("142", "42", True, False),  # the gold as a substring of a longer number
        ("The answer is 42.", "42", True, True),
        ("40? No: 42", "42", True, True),
        ("42 or 43", "42", True, False),  # listing candidates ends on the last one
        ("42.0", "42", True, True),
        ("４２", "42", False, False),
        ("forty-two", "42", False, False),
        ("So 47 - 58 = -11.", "-11", True, True),
        ("11", "-11", True, False),
    ],
)
def test_plain_style(completion: str, gold: str, fmt: bool, correct: bool) -> None:
    row = _row("47 - 58", gold, "plain")
    assert format_ok(completion, row) is fmt
    assert check(completion, row) is correct


def test_negative_answers_and_the_gold_inside_a_longer_number() -> None:
    row = _row("47 - 58", "-11")
    assert check("<answer>-11</answer>", row) and not check("<answer>11</answer>", row)
    assert not check("<answer>- 11</answer>", row)
    assert not check("<answer>142</answer>", _row("20 + 22", "42"))


def test_a_megabyte_completion_is_judged_quickly() -> None:
    start = time.perf_counter()
    assert check("x" * 1_000_000 + "<answer>85</answer>", _row("47 + 38", "85"))
    assert check("<think>" + "a" * 1_000_000 + "</think><answer>85</answer>", _row("47 + 38", "85", "think"))
    assert not check("<think>" + "<answer>" * 100_000, _row("47 + 38", "85", "think"))
    assert check("1 " * 500_000 + "85", _row("47 + 38", "85", "plain"))
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------- demonstrations


def test_solutions_show_the_working() -> None:
    assert solution((47, "+", 38)) == "7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8, write 8. So 47 + 38 = 85."
    assert solution((95, "+", 7)) == ("5 + 7 = 12, write 2 carry 1; 9 + 1 = 10, write 0 carry 1; "
                                      "write the last carry 1. So 95 + 7 = 102.")
    assert solution((52, "-", 38)) == ("2 - 8 needs a borrow: 12 - 8 = 4, borrow 1; 5 - 1 - 3 = 1. "
                                       "So 52 - 38 = 14.")
    assert solution((100, "-", 1)) == ("0 - 1 needs a borrow: 10 - 1 = 9, borrow 1; "
                                       "0 - 1 - 0 needs a borrow: 10 - 1 - 0 = 9, borrow 1; "
                                       "1 - 1 - 0 = 0. So 100 - 1 = 99.")
    assert solution((38, "-", 47)) == ("47 is larger than 38, so compute 47 - 38 and make it negative; "
                                       "7 - 8 needs a borrow: 17 - 8 = 9, borrow 1; 4 - 1 - 3 = 0. "
                                       "So 38 - 47 = -9.")
    assert solution((47, "*", 38)) == "47 * 8 = 376; 47 * 30 = 1410; 376 + 1410 = 1786. So 47 * 38 = 1786."
    assert solution((12, "*", 0)) == "12 * 0 = 0. So 12 * 0 = 0."


@pytest.mark.parametrize("style", ["think", "tags", "plain"])
def test_every_demonstration_passes_check(style: str) -> None:
    demos = sft_rows(150, seed=2, split="train", style=style, ops=("+", "-", "*"), digits=(1, 3))
    assert len(demos) == 150 and all("prompt" not in d for d in demos)
    for demo in demos:
        user, assistant = demo["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert format_ok(assistant["content"], demo) and check(assistant["content"], demo)
    load_rows(demos, "conversations")
    first = demos[0]["messages"][1]["content"]
    if style == "think":
        assert first.startswith("<think>")
        assert first.endswith(f"</think>\n<answer>{demos[0]['answer']}</answer>")


def test_demo_fraction_is_a_train_only_curriculum() -> None:
    train = arithmetic.rows(200, seed=3, split="train", demo_fraction=0.5)
    with_demo = [r for r in train if len(r["prompt"]) == 3]
    assert 60 < len(with_demo) < 140
    user, reply, question = with_demo[0]["prompt"]
    assert reply["role"] == "assistant" and arithmetic.format_ok(reply["content"], with_demo[0])
    assert question["content"].startswith(f"What is {with_demo[0]['question']}?")
    assert user["content"] != question["content"]
    test = arithmetic.rows(50, seed=3, split="test", demo_fraction=1.0)
    assert all(len(r["prompt"]) == 1 for r in test)  # held-out prompts stay zero-shot
    with pytest.raises(ConfigError, match=r"demo_fraction must be in \[0, 1\], got 1.5"):
        arithmetic.rows(2, seed=0, demo_fraction=1.5)


def test_worked_preference_pairs_differ_by_one_slip_followed_through() -> None:
    pairs = arithmetic.preference_rows(200, seed=3, kind="worked", style="think", digits=2)
    for row in pairs:
        assert arithmetic.check(row["chosen"], row) and not arithmetic.check(row["rejected"], row)
        assert arithmetic.format_ok(row["rejected"], row)  # same shape: only the working is wrong
        chosen = row["chosen"].split("<think>")[1].split("</think>")[0].split("; ")
        rejected = row["rejected"].split("<think>")[1].split("</think>")[0].split("; ")
        first_slip = next(i for i, (c, r) in enumerate(zip(chosen, rejected)) if c != r)
        assert chosen[:first_slip] == rejected[:first_slip]
        # the rejected answer is the one its own working leads to
        assert rejected[-1].endswith(f"= {row['rejected'].split('<answer>')[1].split('<')[0]}.")
    # both slips occur: a forgotten carry (one "+ 1" fewer) in some pairs, a wrong digit sum in others
    dropped_carry = sum(r["chosen"].count("+ 1 =") > r["rejected"].count("+ 1 =") for r in pairs)
    assert 0 < dropped_carry < len(pairs)
    with pytest.raises(ConfigError, match=r"kind 'worked'.*needs style think and ops"):
        arithmetic.preference_rows(2, seed=0, kind="worked", style="tags")
