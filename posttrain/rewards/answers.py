"""Pulling a final answer out of a completion and comparing it with a gold answer.

Used by the built-in rewards and the tasks' `check()` functions, so a completion is judged the
same way in training and in evaluation (`posttrain.eval.metrics` must stay pure, so it keeps a
regex-free copy of `parse_number` and `normalize_answer`, tested to agree with these).

Decisions (each one closes a reward hack or an ambiguity):
- Tags are matched literally and case-sensitively (`<answer>`, not `<Answer>` or `<answer x=1>`).
  Markdown code fences are NOT special: a tag inside a fence is a tag like any other. The format
  rewards still fail such completions because the fence characters sit outside the blocks.
- `extract_tag` refuses ambiguity: zero blocks, several blocks, nested or unclosed tags -> None, so
  repeating the answer block or listing candidates in several blocks earns nothing.
- Numbers are ASCII only: Arabic-Indic, full-width or other look-alike digits never parse.
- Every scan is linear in the text (str.find/count and regexes without nested quantifiers), so a
  1 MB completion takes well under a second, even one made of braces or digits.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

NONE_REASONS: Counter[str] = Counter()
"""Why built-in rewards answered None ("not applicable"), keyed "function: reason", counted since
start. A trainer reads it to log skip rates (e.g. gold answers that are not numbers) and may clear it."""

# Optional sign, ASCII digits (plain, or grouped by thousands commas), optional decimal part.
_NUMBER = r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?"
_NUMBER_FULL = re.compile(_NUMBER)
# Unsigned form used inside free text; the sign is looked at separately (see last_number).
_NUMBER_IN_TEXT = re.compile(r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
_NUMBER_CHARS_REVERSED = re.compile(r"[0-9.,]*")
MAX_NUMBER_RUN = 256  # longest run of digits, commas and points that last_number reads
# `\boxed{` opens a box; `\{`, `\}` and `\\` are escapes and never count as braces.
_BOXED_TOKENS = re.compile(r"\\boxed\{|\\[{}\\]|[{}]")
_TEXT_WRAPPER = re.compile(r"\\text\{([^{}]*)\}")
_WHITESPACE = re.compile(r"\s+")


def completion_text(completion: Any) -> str:
    """The text of a completion given as a string or in TRL's conversational form.

    Conversational form: a list of messages `[{"role": "assistant", "content": text}]` (the last
    message's content is the completion; an empty list is ""), or one such message. A content
    given as parts (`[{"type": "text", "text": ...}]`) is joined. Anything else raises TypeError.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list | tuple) and not completion:
        return ""
    message = completion[-1] if isinstance(completion, list | tuple) else completion
    if not isinstance(message, dict) or "content" not in message:
        raise TypeError(
            "a completion must be a string or a list of {'role', 'content'} messages, "
            f"got {type(completion).__name__}: {repr(completion)[:80]}"
        )
    content = message["content"]
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return "".join(str(part.get("text", "")) for part in content if part.get("type", "text") == "text")
    raise TypeError(f"a message content must be a string or a list of parts, got {type(content).__name__}")


def extract_tag(text: str, tag: str) -> str | None:
    """Content of the single `<tag>...</tag>` block, stripped of surrounding whitespace.

    Returns None when there is no block, more than one opening or closing tag (repeated or nested
    blocks), or the block is unclosed or closed before it opens. An empty block gives "".
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    if text.count(opening) != 1 or text.count(closing) != 1:
        return None
    start = text.find(opening) + len(opening)
    end = text.find(closing)
    if end < start:
        return None
    return text[start:end].strip()


def parse_number(text: str) -> float | None:
    """The value of `text` if it is exactly one number, else None.

    Accepted: surrounding whitespace, an optional sign, ASCII digits with optional thousands
    commas ("1,234") and an optional decimal part ("-3.5"). Rejected: "", units or words
    ("85 apples"), look-alike digits ("٤٢", "４２"), badly grouped commas ("1,23"), and numbers too
    large to be finite as a float.
    """
    if not isinstance(text, str):
        return None
    stripped = text.strip()
    if _NUMBER_FULL.fullmatch(stripped) is None:
        return None
    value = float(stripped.replace(",", ""))
    return value if math.isfinite(value) else None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}`, nested braces included, stripped.

    "Last" means the box that closes last, so an outer box wins over the boxes nested in it
    (`\\boxed{\\boxed{5}}` gives "\\boxed{5}"). A box that never closes is ignored. Escaped
    braces (`\\{`, `\\}`) do not count. Returns None when no box closes; `\\boxed{}` gives "".
    """
    first = text.find("\\boxed{")
    if first < 0:
        return None
    stack: list[int] = []  # for each open brace: start of the box content, or -1 for a plain brace
    best: tuple[int, int] | None = None
    for match in _BOXED_TOKENS.finditer(text, first):
        token = match.group()
        if token == "\\boxed{":
            stack.append(match.end())
        elif token == "{":
            stack.append(-1)
        elif token == "}" and stack:
            content_start = stack.pop()
            if content_start >= 0:
                best = (content_start, match.start())
    if best is None:
        return None
    return text[best[0] : best[1]].strip()


def last_number(text: str) -> str | None:
    """The last number written in `text` (ASCII digits only), as it is written, or None.

    A leading "-" counts as a sign only when it does not follow a letter or digit (so "5-3" ends
    in "3", but "is -3" in "-3"). Thousands commas are kept: "1,234" -> "1,234"; parse the result
    with `parse_number`. A run of more than MAX_NUMBER_RUN digits, commas and points ending at
    the last digit is not read as a number (None): no answer is that long, and reading it left to
    right would cost time proportional to the run ("1,1,1,...,85" lists candidates anyway).
    """
    end = max(text.rfind(digit) for digit in "0123456789") + 1
    if end == 0:
        return None
    # Walk back over the digits, commas and points that end at the last digit, then split them.
    # One character more than allowed is read, to tell a run that is too long.
    run = _NUMBER_CHARS_REVERSED.match(text[max(0, end - MAX_NUMBER_RUN - 1) : end][::-1])
    if run is None or run.end() > MAX_NUMBER_RUN:
        return None
    found = list(_NUMBER_IN_TEXT.finditer(text, end - run.end(), end))[-1]
    number = found.group()
    sign_at = found.start() - 1
    if sign_at >= 0 and text[sign_at] == "-" and (sign_at == 0 or not text[sign_at - 1].isalnum()):
        number = "-" + number
    return number


def numbers_equal(a: str | float | int | None, b: str | float | int | None, rel_tol: float = 1e-9) -> bool:
    """True when both sides are numbers (strings parsed with `parse_number`) within `rel_tol`.

    Anything that is not a number (None, bool, unparseable text, NaN, inf) makes it False.
    """
    values: list[float] = []
    for side in (a, b):
        if isinstance(side, str):
            value = parse_number(side)
        elif isinstance(side, numbers.Real) and not isinstance(side, bool):
            try:
                value = float(side)
            except OverflowError:  # an int beyond the float range
                return False
        else:
            return False
        if value is None or not math.isfinite(value):
            return False
        values.append(value)
    return math.isclose(values[0], values[1], rel_tol=rel_tol, abs_tol=0.0)


def normalize_answer(text: str) -> str:
    """Canonical form for string comparison of answers.

    Unwraps `\\text{...}`, removes `$`, collapses runs of whitespace to one space, strips, removes
    one trailing period and lowercases: " The  $\\text{Cat}$. " -> "the cat".
    """
    text = _TEXT_WRAPPER.sub(r"\1", text).replace("$", "")
    text = _WHITESPACE.sub(" ", text).strip()
    text = text.removesuffix(".").rstrip()
    return text.lower()


def _auto(text: str) -> str | None:
    """Answer tag (unwrapping a box inside it), else the last box, else the last number."""
    tagged = extract_tag(text, "answer")
    if tagged is not None:
        boxed = extract_boxed(tagged)
        return boxed if boxed is not None else tagged
    boxed = extract_boxed(text)
    return boxed if boxed is not None else last_number(text)


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "tag": lambda text: extract_tag(text, "answer"),
    "boxed": extract_boxed,
    "last_number": last_number,
    "auto": _auto,
}


def extract_answer(text: str, method: str = "tag") -> str | None:
    """The final answer of a completion, or None when there is none (an empty answer is None too).

    Methods: "tag" (the single `<answer>` block), "boxed" (the last `\\boxed{}`), "last_number"
    (the last number in the text: lenient, so listing every candidate ends on one of them),
    "auto" (tag, with a box inside it unwrapped; else boxed; else last number).
    """
    if method not in EXTRACTORS:
        raise ValueError(f"unknown answer extraction method {method!r}; choose one of {sorted(EXTRACTORS)}")
    answer = EXTRACTORS[method](text)
    return answer if answer else None
