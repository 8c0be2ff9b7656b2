"""Arithmetic problems "a op b" with exact, hack-resistant checking: the task GRPO learns first.

Splits: each distinct problem (a, op, b) belongs to train or test by a stable hash (sha256 of
"a op b"), so train and test never share a problem, whatever `ops`, `digits` or seed are asked for,
and the split is the same on every machine and Python version. `rows` draws distinct problems from
its split with `random.Random(seed)`; asking for more rows than the split holds is a ConfigError.

Operands with `digits` digits: 2 means 10..99, 1 means 0..9; a (low, high) pair such as (1, 2)
means 0..99 for curricula. Every problem of the split is equally likely. "-" may give negative
answers.

Styles and what counts as correct (`check` is the one judge, shared by rewards and evaluation):
- "tags": exactly one `<answer>N</answer>` block with N an integer (ASCII digits, optional "-",
  surrounding spaces allowed), nothing but whitespace after it; text before it is allowed.
- "think": `<think>reasoning</think>` then one answer block as above and nothing else around them
  (whitespace allowed); the reasoning must not be empty, so the bare skeleton earns nothing.
- "plain": the last number in the completion (`posttrain.rewards.answers.last_number`).
Leading zeros are accepted ("085" is 85): they are the right number written oddly, and they open
no shortcut to the reward. Full-width or other look-alike digits are never numbers.
"""

from __future__ import annotations

import difflib
import hashlib
import random
import re
from collections.abc import Iterator
from typing import Any

from posttrain.errors import ConfigError
from posttrain.rewards.answers import extract_tag, last_number, parse_number

OPS = ("+", "-", "*")
STYLES = ("tags", "think", "plain")
SPLITS = ("train", "test")
MAX_DIGITS = 6  # products stay below 2**53, so float parsing of plain answers is exact
_ENUMERATE_UP_TO = 200_000  # problems; enumerating and hashing them all takes well under a second
_INTEGER = re.compile(r"-?[0-9]+")
_ASCII_DIGIT = re.compile(r"[0-9]")
_THINK_THEN_ANSWER = re.compile(r"\s*<think>(.*?)</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
_PROMPTS = {
    "tags": "What is {q}? Give the final answer as a number inside <answer></answer> tags.",
    "think": "What is {q}? Think step by step inside <think></think>, then give the final answer as a number "
             "inside <answer></answer>.",
    "plain": "What is {q}? Answer with just the number.",
}

Problem = tuple[int, str, int]
Row = dict[str, Any]


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"arithmetic: unknown {what} {value!r}{hint} (choose from {', '.join(allowed)})")
    return value


def _digit_range(digits: int | tuple[int, int]) -> tuple[int, int]:
    pair = (digits, digits) if isinstance(digits, int) else digits if isinstance(digits, list | tuple) else ()
    if len(pair) != 2 or not all(type(d) is int for d in pair) or not 1 <= pair[0] <= pair[1] <= MAX_DIGITS:
        raise ConfigError("arithmetic: digits must be an integer or a (low, high) pair within "
                          f"1..{MAX_DIGITS}, got {digits!r}")
    return pair[0], pair[1]


def _operands(low: int, high: int) -> range:
    return range(0 if low == 1 else 10 ** (low - 1), 10**high)


def answer(problem: Problem) -> int:
    a, op, b = problem
    return a + b if op == "+" else a - b if op == "-" else a * b


def question(problem: Problem) -> str:
    a, op, b = problem
    return f"{a} {op} {b}"


def split_of(problem: Problem, test_fraction: float = 0.1) -> str:
    """"test" or "train", from a hash of the problem text: stable across runs, machines and options."""
    digest = hashlib.sha256(question(problem).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def _sample(n: int, seed: int, split: str, ops: tuple[str, ...], values: range,
            test_fraction: float) -> list[Problem]:
    """n distinct problems of the split, uniformly. A large split (compared with n) is sampled by
    rejection; a small one is enumerated, which also gives its exact size for the n check."""
    rng = random.Random(seed)
    size = len(ops) * len(values) ** 2
    expected = size * (test_fraction if split == "test" else 1 - test_fraction)
    # Above _ENUMERATE_UP_TO the split's true size is within a fraction of a percent of `expected`,
    # so asking for at most half of it always terminates quickly.
    if size > _ENUMERATE_UP_TO and n <= expected / 2:
        chosen: dict[Problem, None] = {}
        while len(chosen) < n:
            problem = (rng.choice(values), rng.choice(ops), rng.choice(values))
            if split_of(problem, test_fraction) == split:
                chosen[problem] = None
        return list(chosen)
    everything: Iterator[Problem] = ((a, op, b) for op in ops for a in values for b in values)
    pool = [p for p in everything if split_of(p, test_fraction) == split]
    if n > len(pool):
        raise ConfigError(f"arithmetic: asked for {n} {split} rows but the {split} split holds only "
                          f"{len(pool)} distinct problems (ops {', '.join(ops)}, operands {values.start}.."
                          f"{values.stop - 1}); widen `digits` or `ops`, or ask for fewer rows")
    return rng.sample(pool, n)


def rows(n: int, seed: int, split: str = "train", *, ops: tuple[str, ...] | list[str] = ("+",),
         digits: int | tuple[int, int] = 2, style: str = "tags", test_fraction: float = 0.1,
         demo_fraction: float = 0.0, shots: int = 0) -> list[Row]:
    """n distinct problems from `split`: rows with `prompt` (one user message), `answer` (gold, e.g.
    "85"), `question` ("47 + 38"), `style` and `_where` ("arithmetic:train[12]").

    `demo_fraction` is a training curriculum: that fraction of TRAIN prompts starts with one solved
    example (another train problem and its reply in the answer format), so a model that never
    writes the format on its own sometimes does, and RL gets a signal. Test prompts are always
    zero-shot, so held-out figures before and after training are measured on the same prompt.

    `shots` is part of the prompt itself, for every split: each prompt starts with that many solved
    TRAIN problems (never a test problem, never the row's own), so the same k-shot prompt is used
    before and after training."""
    _choice(split, SPLITS, "split")
    _choice(style, STYLES, "style")
    ops = tuple(_choice(op, OPS, "op") for op in ops)
    low, high = _digit_range(digits)
    if not ops:
        raise ConfigError("arithmetic: ops is empty; choose some of +, -, *")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"arithmetic: test_fraction must be in (0, 1), got {test_fraction}")
    if n < 0:
        raise ConfigError(f"arithmetic: n must be >= 0, got {n}")
    if not 0 <= demo_fraction <= 1:
        raise ConfigError(f"arithmetic: demo_fraction must be in [0, 1], got {demo_fraction}")
    if not 0 <= shots <= 8:
        raise ConfigError(f"arithmetic: shots must be in 0..8, got {shots}")
    problems = _sample(n, seed, split, ops, _operands(low, high), test_fraction)
    values = _operands(low, high)
    shot_pool = _sample(2 * shots + 8, seed + 1, "train", ops, values, test_fraction) if shots else []
    demo_rng = random.Random(f"demo-{seed}")
    out = []
    for i, problem in enumerate(problems):
        prompt = [{"role": "user", "content": _PROMPTS[style].format(q=question(problem))}]
        examples = [p for p in random.Random(f"shots-{seed}-{split}-{i}").sample(shot_pool, shots + 1)
                    if p != problem][:shots] if shots else []
        prompt = [turn for example in examples for turn in _demonstration(example, style)] + prompt
        if split == "train" and demo_fraction > 0 and demo_rng.random() < demo_fraction:
            prompt = [*_demonstration(problems[(i + 1) % len(problems)], style), *prompt]
        out.append({"prompt": prompt, "answer": str(answer(problem)),
                    "question": question(problem), "style": style, "_where": f"arithmetic:{split}[{i}]"})
    return out


def _demonstration(problem: Problem, style: str) -> list[dict[str, str]]:
    """One solved example as a user turn and an assistant turn in the answer format of `style`.

    The "tags" reply states the sum before tagging it ("35 + 47 = 82" then the tag): this model
    adds far better when it writes the equation first (greedy, 48 test problems: 31% correct vs
    2% with a bare tag)."""
    reply = {"tags": f"{question(problem)} = {answer(problem)}\n<answer>{answer(problem)}</answer>",
             "plain": str(answer(problem)),
             "think": f"<think>{solution(problem)}</think>\n<answer>{answer(problem)}</answer>"}[style]
    return [{"role": "user", "content": _PROMPTS[style].format(q=question(problem))},
            {"role": "assistant", "content": reply}]


def _answer_value(completion: str) -> int | None:
    """The integer in the single answer block, or None when the block is missing, repeated or not
    one integer."""
    content = extract_tag(completion, "answer")
    if content is None or _INTEGER.fullmatch(content) is None:
        return None
    return int(content)


def format_ok(completion: str, row: Row) -> bool:
    """Whether the completion has the shape its row's style asks for (see the module docstring)."""
    style = row.get("style", "tags")
    if style == "plain":
        return _ASCII_DIGIT.search(completion) is not None
    if _answer_value(completion) is None or not completion.rstrip().endswith("</answer>"):
        return False
    if style == "think":
        if completion.count("<think>") != 1 or completion.count("</think>") != 1:
            return False
        match = _THINK_THEN_ANSWER.fullmatch(completion)
        return match is not None and bool(match.group(1).strip())
    return True


def check(completion: str, row: Row) -> bool:
    """Whether the completion answers the row correctly (format included for "tags" and "think")."""
    gold = int(row["answer"])
    if row.get("style", "tags") == "plain":
        number = last_number(completion)
        value = parse_number(number) if number is not None else None
        return value is not None and value == gold
    return format_ok(completion, row) and _answer_value(completion) == gold


# ---------------------------------------------------------------- demonstrations


def _digits_of(value: int) -> list[int]:
    """Least significant digit first."""
    return [int(d) for d in reversed(str(value))]


def _addition_steps(a: int, b: int, slip: tuple[int, str] | None = None) -> tuple[list[str], int]:
    """Column addition with carries written out, and the number it writes. ``slip`` = (column, kind)
    makes one mistake there, carried through the rest: "fact" (the column's sum off by one) or
    "carry" (the carry into that column forgotten)."""
    steps, carry, written = [], 0, []
    da, db = _digits_of(a), _digits_of(b)
    for i in range(max(len(da), len(db))):
        dropped = slip == (i, "carry") and carry
        terms = [d[i] for d in (da, db) if i < len(d)] + ([carry] if carry and not dropped else [])
        total = sum(terms)
        if slip == (i, "fact"):
            total += 1 if total % 10 != 9 else -1  # a wrong digit, never a changed carry
        carry = total // 10
        written.append(total % 10)
        steps.append(f"{' + '.join(map(str, terms))} = {total}, write {total % 10}"
                     + (f" carry {carry}" if carry else ""))
    if carry:
        steps.append(f"write the last carry {carry}")
        written.append(carry)
    return steps, int("".join(map(str, reversed(written))))


def _subtraction_steps(top: int, bottom: int) -> list[str]:
    """Column subtraction of bottom from top (top >= bottom), borrows written out."""
    steps, borrow = [], 0
    dt, db = _digits_of(top), _digits_of(bottom)
    for i, digit in enumerate(dt):
        lower = db[i] if i < len(db) else 0
        taken = " - 1" if borrow else ""  # the borrow the previous column took from this digit
        value = digit - borrow - lower
        if value < 0:
            steps.append(f"{digit}{taken} - {lower} needs a borrow: {digit + 10}{taken} - {lower} = "
                         f"{value + 10}, borrow 1")
        else:
            steps.append(f"{digit}{taken} - {lower} = {value}")
        borrow = int(value < 0)
    return steps


def _multiplication_steps(a: int, b: int) -> list[str]:
    """One partial product per non-zero digit of b (47 * 30 = 1410), then their sum."""
    places = [digit * 10**i for i, digit in enumerate(_digits_of(b)) if digit] or [0]
    steps = [f"{a} * {place} = {a * place}" for place in places]
    if len(places) > 1:
        steps.append(f"{' + '.join(str(a * place) for place in places)} = {a * b}")
    return steps


def solution(problem: Problem) -> str:
    """The worked answer, digit by digit: carries for "+", borrows for "-", partial products for "*"."""
    a, op, b = problem
    if op == "+":
        steps = _addition_steps(a, b)[0]
    elif op == "*":
        steps = _multiplication_steps(a, b)
    elif a >= b:
        steps = _subtraction_steps(a, b)
    else:
        steps = [f"{b} is larger than {a}, so compute {b} - {a} and make it negative",
                 *_subtraction_steps(b, a)]
    return f"{'; '.join(steps)}. So {question(problem)} = {answer(problem)}."


def sft_rows(n: int, seed: int, split: str = "train", style: str = "think", **options: Any) -> list[Row]:
    """Demonstrations: rows(...) with `messages` = the user prompt and an assistant turn that works the
    problem out and ends in the answer format of `style` (every one passes `check`)."""
    out = []
    for row in rows(n, seed, split, style=style, **options):
        a, op, b = row["question"].split(" ")
        worked = solution((int(a), op, int(b)))
        reply = {"think": f"<think>{worked}</think>\n<answer>{row['answer']}</answer>",
                 "tags": f"{worked}\n<answer>{row['answer']}</answer>", "plain": worked}[style]
        prompt = row.pop("prompt")
        out.append({"messages": [*prompt, {"role": "assistant", "content": reply}], **row})
    return out


# ---------------------------------------------------------------- preference pairs

PREFERENCE_KINDS = ("correctness", "format", "both", "worked")


def _wrong_answer(problem: Problem, rng: random.Random) -> int:
    """A plausible mistake: off by one or two, a dropped or doubled carry (±10), or swapped digits;
    never the right answer, and never negative when the right answer is not."""
    right = answer(problem)
    swapped = int(str(abs(right))[::-1]) * (1 if right >= 0 else -1)
    candidates = {right + d for d in (-10, -2, -1, 1, 2, 10)} | {swapped}
    candidates = {c for c in candidates if c != right and (c >= 0 or right < 0)}
    return rng.choice(sorted(candidates))


def _flawed_solution(problem: Problem, rng: random.Random) -> tuple[str, int]:
    """A worked addition with one slip (a digit sum off by one, or a forgotten carry) followed through
    to a wrong result, written like ``solution``; returns (text, the wrong result)."""
    a, _, b = problem
    columns = max(len(str(a)), len(str(b)))
    slips = [(i, "fact") for i in range(columns)]
    slips += [(i, "carry") for i in range(1, columns) if _addition_steps(a, b)[0][i - 1].endswith("carry 1")]
    steps, value = _addition_steps(a, b, rng.choice(slips))
    return f"{'; '.join(steps)}. So {question(problem)} = {value}.", value


def _reply(problem: Problem, value: int, style: str, tagged: bool = True) -> str:
    """A reply stating `value` as the result in the format of `style` (untagged: the same words
    without the answer block)."""
    stated = f"{question(problem)} = {value}"
    if style == "plain":
        return str(value)
    if not tagged:
        return f"{stated}. The answer is {value}." if style == "tags" else f"{stated}."
    if style == "think":
        return f"<think>{stated}</think>\n<answer>{value}</answer>"
    return f"{stated}\n<answer>{value}</answer>"


def preference_rows(n: int, seed: int, split: str = "train", kind: str = "correctness",
                    **options: Any) -> list[Row]:
    """n preference pairs on the problems of ``rows(n, seed, split, **options)`` (same prompts):
    rows with ``prompt``, ``chosen``, ``rejected`` plus the gold columns.

    kind "correctness": chosen states the right answer, rejected a plausible wrong one
    (``_wrong_answer``), both in the answer format of the style, so only the number differs.
    kind "format": both state the right answer; chosen in the style's answer block, rejected
    without it (not for style "plain", which has no block). kind "both": alternate rows of each.
    Held-out pairs come from the test split, like every held-out row."""
    _choice(kind, PREFERENCE_KINDS, "preference kind")
    style = options.get("style", "tags")
    if kind == "worked" and (style != "think" or list(options.get("ops", ["+"])) != ["+"]):
        raise ConfigError("arithmetic: preference kind 'worked' (worked additions, one with a slip) needs "
                          "style think and ops [+]")
    if kind != "correctness" and style == "plain":
        raise ConfigError(f"arithmetic: preference kind {kind!r} needs style tags or think: style "
                          "plain has no answer block to prefer")
    rng = random.Random(f"wrong-{seed}-{split}")
    out = []
    for i, row in enumerate(rows(n, seed, split, **options)):
        a, op, b = row["question"].split(" ")
        problem = (int(a), op, int(b))
        right = answer(problem)
        pair_kind = kind if kind != "both" else PREFERENCE_KINDS[i % 2]
        if pair_kind == "worked":
            flawed, wrong = _flawed_solution(problem, rng)
            chosen = f"<think>{solution(problem)}</think>\n<answer>{right}</answer>"
            rejected = f"<think>{flawed}</think>\n<answer>{wrong}</answer>"
            out.append({**row, "chosen": chosen, "rejected": rejected, "pair_kind": pair_kind})
            continue
        if pair_kind == "correctness":
            rejected = _reply(problem, _wrong_answer(problem, rng), style)
        else:
            rejected = _reply(problem, right, style, tagged=False)
        out.append({**row, "chosen": _reply(problem, right, style), "rejected": rejected,
                    "pair_kind": pair_kind})
    return out


# ---------------------------------------------------------------- thumbs feedback (KTO)


def feedback_rows(n: int, seed: int, split: str = "train", kind: str = "correctness",
                  **options: Any) -> list[Row]:
    """n unpaired thumbs rows on the problems of ``preference_rows(n, seed, split, kind, **options)``:
    ``prompt``, ``completion`` and ``label`` plus the gold columns. Each problem contributes one
    response, never both: its pair's chosen one with label true (thumbs up) or its rejected one with
    label false. Half the rows (rounded up) are thumbs up, in a seeded order, so KTO's
    λ_D·n_D / (λ_U·n_U) stays within the advised [1, 4/3] with equal weights (n ≥ 7)."""
    labels = [i < (n + 1) // 2 for i in range(n)]
    random.Random(f"thumbs-{seed}-{split}").shuffle(labels)
    out = []
    for pair, up in zip(preference_rows(n, seed, split, kind, **options), labels):
        row = {k: v for k, v in pair.items() if k not in ("chosen", "rejected")}
        out.append({**row, "completion": pair["chosen"] if up else pair["rejected"], "label": up})
    return out
