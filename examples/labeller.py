"""Labellers' preferences, scripted: ``only_the_answer`` (the reply that does what "Reply with only the
answer." asked; configs/rlhf-judged.yaml), ``an_answer_to_this`` (the same, a bare reply counting only
when made of the question's words; configs/rlhf-judged-sft.yaml), and for the arithmetic task
``correct_answer`` (the right number; configs/rlhf-rounds-arithmetic.yaml), ``plain_right_answer`` (the
right number, then the plainer reply; configs/rlhf-judged-plain.yaml) and ``plain_answer`` (the plainer
reply only; configs/rlhf-judged-plainness.yaml).

The instructions task (posttrain/data/tasks/instructions.py) ends every prompt with "Reply with only
the answer."; the embedded model mostly answers in a sentence that restates the question ('The first
word of the sentence "able sand school" is "able".'). People who ask for only the answer hold this
preference for a reason: they paste the reply somewhere or read it at a glance, and a reply that
ignores an explicit constraint is worse even when the answer inside it is right. InstructGPT's
labellers rated exactly this ("follows explicit constraints in the instruction", arXiv:2203.02155,
table 3). The signal is in the text's form, which a 135M reward model can learn; whether the answer is
right is left to the task's ``check()``, reported beside the judge's verdicts, so that a win bought
with wrong answers shows.

``only_the_answer(prompt, answer_a, answer_b)`` is the judge signature of ``posttrain eval --judge``
(``"a"``, ``"b"`` or ``"tie"``), and the pipeline's ``label`` stage uses the same function to label
A/B pairs through the labelling page's HTTP API. It compares the replies by tier:

3. only the answer: one line of at most MAX_ANSWER_WORDS words, not framed as a sentence;
2. one line, but framed ("The answer is 5.", "Sure! elppa", "Answer: 5") or long;
1. several lines;
0. empty.

The higher tier wins. Between two one-line framed replies the one with clearly less around the answer
wins (at most CLEARLY_SHORTER times the other's words: a person who asked for only the answer and got
two sentences prefers the one closer to it); anything else is a tie, which gives no training pair.

A reply is framed when its first word is one a bare answer never starts with (the task's answers are
its own words, counts and letters, none of them in FRAMING_STARTS), or it has a verb phrase or
colon that wraps the answer (FRAMING_PHRASES).
"""

from __future__ import annotations

import re

MAX_ANSWER_WORDS = 8  # the longest answer of the task is six words (repeat, sort)
CLEARLY_SHORTER = 2 / 3
FRAMING_STARTS = frozenset({
    "the", "a", "an", "here", "here's", "sure", "sure!", "this", "that", "these", "there", "it", "it's",
    "i", "i'm", "okay", "ok", "well", "yes", "no", "to", "in", "so", "your", "my", "we", "let's", "let",
    "reversed", "sorted", "uppercase", "answer:", "result:", "output:", "of", "as", "when", "if",
})
FRAMING_PHRASES = re.compile(r"\b(is|are|was|were|has|have|contains|means|equals)\b|:\s")
_QUOTED = re.compile(r'"([^"]*)"')
_LETTERS = re.compile(r"[a-z]+")


def _form(reply: str) -> tuple[int, bool]:
    """(non-empty lines, framed) of a reply, framed as in the module docstring."""
    text = reply.strip()
    lines = len([line for line in text.splitlines() if line.strip()])
    if not text:
        return 0, False
    words = text.split()
    first = words[0].lower().strip("\"'`“”‘’*,.")
    return lines, first in FRAMING_STARTS or bool(FRAMING_PHRASES.search(text.lower() + " "))


def tier(reply: str) -> int:
    """3 only the answer, 2 one line but framed or long, 1 several lines, 0 empty (see the module doc)."""
    lines, framed = _form(reply)
    if lines != 1:
        return min(lines, 1)
    return 2 if framed or len(reply.split()) > MAX_ANSWER_WORDS else 3


def only_the_answer(prompt: str, answer_a: str, answer_b: str) -> str:
    """"a" or "b", whichever reply follows "Reply with only the answer." better; "tie" when neither
    clearly does (see the module docstring). Every prompt asks the same, so the prompt is not read."""
    tier_a, tier_b = tier(answer_a), tier(answer_b)
    if tier_a != tier_b:
        return "a" if tier_a > tier_b else "b"
    if tier_a == 2:
        words_a, words_b = len(answer_a.split()), len(answer_b.split())
        if words_a <= CLEARLY_SHORTER * words_b:
            return "a"
        if words_b <= CLEARLY_SHORTER * words_a:
            return "b"
    return "tie"


def material(prompt: str) -> set[str]:
    """The words a reply to ``prompt`` may be made of: those it quotes or lists after its last colon,
    and each of them backwards."""
    text = " ".join(_QUOTED.findall(prompt)) + " " + (prompt.rsplit(": ", 1)[1] if ": " in prompt else "")
    words = set(_LETTERS.findall(text.lower()))
    return words | {word[::-1] for word in words}


def grounded_tier(reply: str, prompt: str) -> int:
    """``tier`` with the question's material required of a bare answer: 3 only an answer made of the
    question's words (their letters backwards, numbers), 2 any other one line, 1 several lines, 0 empty."""
    lines, framed = _form(reply)
    if lines != 1:
        return min(lines, 1)
    grounded = set(_LETTERS.findall(reply.lower())) <= material(prompt)
    return 3 if grounded and not framed and len(reply.split()) <= MAX_ANSWER_WORDS else 2


def an_answer_to_this(prompt: str, answer_a: str, answer_b: str) -> str:
    """The labeller of configs/rlhf-judged-sft.yaml: ``only_the_answer`` made stricter where PPO beat
    it, a bare reply counting as an answer only when made of the question's material (what the
    question quotes or lists after its last colon: "Hangman." is no answer to 'What is the first word
    of "drum road"?'), and no preference for the shorter of two framed replies. The higher
    ``grounded_tier`` wins; within one, a tie."""
    tier_a, tier_b = grounded_tier(answer_a, prompt), grounded_tier(answer_b, prompt)
    return "a" if tier_a > tier_b else "b" if tier_b > tier_a else "tie"


# ----------------------------------------------------------------------------- arithmetic: the right number

_QUESTION = re.compile(r"What is (-?\d+) ([-+*]) (-?\d+)\?")


def correct_answer(prompt: str, answer_a: str, answer_b: str) -> str:
    """The labeller of configs/rlhf-rounds-arithmetic.yaml: the reply that ends in the right number
    (the arithmetic task's check() of a plain answer, the problem read from the prompt) beats one that
    does not; two right or two wrong replies tie. Everyone asking "What is 7 * 8?" prefers 56, tags or
    not; the reward model of configs/ppo-arithmetic.yaml learned format instead, and PPO found that
    bare numbers score high whether right or wrong."""
    from posttrain.data.tasks import arithmetic

    match = _QUESTION.search(prompt)
    if match is None:
        raise ValueError(f"correct_answer judges the arithmetic task's prompts ('What is a + b?...'); "
                         f"got {prompt!r}")
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    row = {"answer": a + b if op == "+" else a - b if op == "-" else a * b, "style": "plain"}
    right_a, right_b = arithmetic.check(answer_a, row), arithmetic.check(answer_b, row)
    return "a" if right_a > right_b else "b" if right_b > right_a else "tie"


# ----------------------------------------------------------------------------- arithmetic: right, then plain

_NO_WORDS = re.compile(r"[\d\s+\-*/=().,]+")


def plainness(reply: str) -> int:
    """3 the result alone or the problem's equation ending in it ("56", "7 * 8 = 56"), one line and no
    words; 2 one line with words ("The answer is 56."); 1 several lines; 0 empty."""
    lines = len([line for line in reply.strip().splitlines() if line.strip()])
    if lines != 1:
        return min(lines, 1)
    return 3 if _NO_WORDS.fullmatch(reply.strip()) else 2


def plain_right_answer(prompt: str, answer_a: str, answer_b: str) -> str:
    """The labeller of configs/rlhf-judged-plain.yaml, a preference people give on "What is 7 * 8?
    Answer with just the number.": the right result first (``correct_answer``: a wrong answer loses
    to a right one whatever its form), then the plainer reply (``plainness``: the result in one line
    without preamble beats a sentence, which beats several lines); equal on both, a tie."""
    said = correct_answer(prompt, answer_a, answer_b)
    if said != "tie":
        return said
    tier_a, tier_b = plainness(answer_a), plainness(answer_b)
    return "a" if tier_a > tier_b else "b" if tier_b > tier_a else "tie"


def plain_answer(prompt: str, answer_a: str, answer_b: str) -> str:
    """The labeller of configs/rlhf-judged-plainness.yaml: the plainer reply (``plainness``) wins, right
    or wrong; equal, a tie. A labeller who reads the form and does not redo the arithmetic, the kind
    whose preference a reward model can learn from the text alone; whether the number is right is the
    task's ``check()``, reported beside the win rate and guarding the run."""
    tier_a, tier_b = plainness(answer_a), plainness(answer_b)
    return "a" if tier_a > tier_b else "b" if tier_b > tier_a else "tie"
