"""Short instructions with one checkable answer: the small non-reasoning set DeepSeek-R1 mixes into
its rejection-sampling SFT data, and pairs for a helpfulness reward model.

Families (each prompt ends "Reply with only the answer."; the reply is the answer alone):
- reverse: the letters of a word backwards ("apple" -> "elppa");
- uppercase: a phrase of 2-4 words in capitals (the one family where case matters);
- sort: 3-6 distinct words in alphabetical order, comma-separated;
- count_letters: the number of letters of a word; count_words: the number of words of a sentence;
- repeat: a word written k times (2..6), separated by spaces;
- first_word / last_word: of a sentence of 4-8 distinct words;
- join: 3-5 words joined by a separator ("-", "_", "/", "+" or "|").
Words come from WORDS, a few hundred common English words (lowercase, no palindromes, so a word and
its reverse always differ); sentences are words from that list, which is all a check needs.

Splits: each problem belongs to train or test by a sha256 hash of its canonical key
("reverse:apple", "sort:apple,dog,pear": a sort is keyed by its set of words, so the same words in
another order are the same problem), so train and test never share a problem, on any machine.
`rows` draws distinct problems of its split with `random.Random(seed)`, a family chosen uniformly
for each draw; a family whose split is used up (reverse has about 310 train words) stops
contributing, and asking for more rows than the chosen families hold is a ConfigError.

`check` is lenient where a person would be: surrounding whitespace, quotes or backticks and a
trailing period are ignored, runs of spaces count as one, case is ignored except for uppercase,
lists compare as word sequences (any commas or spaces between), joins ignore spaces around the
separator. It is strict where it matters: the reply must be one line holding the answer and nothing
else ("The answer is elppa" fails: the prompt asked for the answer only, and accepting the answer
anywhere in the reply would pay a model for listing candidates).

Options (`data.options`): families (a list of the names above, default all) and test_fraction (0.1).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from posttrain.errors import ConfigError

WORDS = (
    "able", "acid", "actor", "add", "age", "air", "alarm", "album", "alert", "alley", "anchor", "angle",
    "animal", "ankle", "answer", "apple", "april", "arena", "arm", "army", "arrow", "art", "artist", "aunt",
    "autumn", "baby", "bacon", "badge", "bag", "baker", "ball", "band", "bank", "barn", "basket", "bath",
    "beach", "bean", "bear", "beard", "bed", "bee", "beef", "bell", "belt", "bench", "berry", "bike", "bird",
    "birth", "black", "blade", "blanket", "blue", "board", "boat", "body", "bone", "book", "boot", "bottle",
    "bowl", "box", "brain", "branch", "bread", "brick", "bridge", "brother", "brush", "bubble", "bucket",
    "bulb", "butter", "button", "cabin", "cable", "cake", "camera", "camp", "candle", "candy", "canvas",
    "cap", "captain", "car", "card", "carpet", "carrot", "castle", "cat", "cattle", "cave", "chain", "chair",
    "chalk", "cheese", "cherry", "chess", "chicken", "child", "chin", "circle", "city", "clock", "cloud",
    "coal", "coast", "coat", "coffee", "coin", "collar", "color", "comb", "cook", "copper", "corn", "cotton",
    "cousin", "cow", "crab", "crane", "cream", "crown", "cup", "curtain", "cushion", "dance", "desk",
    "diamond", "dinner", "doctor", "dog", "doll", "donkey", "door", "dragon", "drawer", "dream", "dress",
    "drink", "drum", "duck", "dust", "eagle", "earth", "egg", "elbow", "engine", "eraser", "face", "farm",
    "father", "feather", "fence", "field", "finger", "fire", "fish", "flag", "flame", "floor", "flower",
    "fog", "food", "foot", "forest", "fork", "fox", "frog", "fruit", "garden", "gate", "ghost", "gift",
    "girl", "glass", "glove", "goat", "gold", "grape", "grass", "guitar", "hair", "hammer", "hand", "harbor",
    "hat", "heart", "hill", "honey", "horse", "hotel", "house", "ice", "island", "jacket", "jam", "jelly",
    "jewel", "juice", "kettle", "key", "king", "kitchen", "kite", "knee", "knife", "ladder", "lake", "lamp",
    "leaf", "lemon", "letter", "library", "light", "lion", "lip", "lock", "magnet", "map", "market", "milk",
    "mint", "mirror", "money", "monkey", "moon", "morning", "mother", "mountain", "mouse", "mouth", "music",
    "nail", "needle", "nest", "night", "north", "nose", "ocean", "office", "oil", "onion", "orange", "owl",
    "paint", "paper", "park", "parrot", "pencil", "pepper", "piano", "picture", "pillow", "pizza", "planet",
    "plant", "plate", "pocket", "potato", "powder", "queen", "rabbit", "radio", "rain", "river", "road",
    "robot", "rock", "roof", "room", "rope", "rose", "salt", "sand", "school", "scissors", "sea", "seed",
    "shadow", "sheep", "shelf", "ship", "shirt", "shoe", "silver", "singer", "sister", "sky", "snake",
    "snow", "soap", "sock", "soup", "spoon", "spring", "square", "star", "stone", "storm", "street", "sugar",
    "summer", "sun", "table", "tail", "teacher", "tent", "thunder", "ticket", "tiger", "toast", "tomato",
    "tooth", "towel", "tower", "town", "toy", "train", "tree", "truck", "tulip", "turtle", "umbrella",
    "valley", "van", "vase", "violin", "wagon", "wall", "water", "whale", "wheel", "window", "winter",
    "wolf", "wood", "word", "world", "yard", "yellow", "zebra",
)

SPLITS = ("train", "test")
OPTIONS = ("families", "test_fraction")
PREFERENCE_KINDS = ("correctness", "helpfulness", "both")
SEPARATORS = ("-", "_", "/", "+", "|")
_ONLY = " Reply with only the answer."
_QUOTES = "\"'`“”‘’"
_UNHELPFUL = (
    "I'm sorry, but I can't help with that.",
    "Sure! Let me know if there is anything else I can do for you.",
    "That is a good question, and the answer depends on what you need it for.",
    "Here is the answer you asked for:",
)

Row = dict[str, Any]


@dataclass(frozen=True)
class _Problem:
    """One instance: canonical key (for the split), prompt text, gold answer and plausible mistakes
    in the answer's own shape (rejected replies: the ones `check` fails)."""

    key: str
    instruction: str
    answer: str
    mistakes: tuple[str, ...]

    @property
    def family(self) -> str:
        return self.key.split(":", 1)[0]


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def _reverse(rng: random.Random) -> _Problem:
    word = rng.choice(WORDS)
    backwards = word[::-1]
    return _Problem(f"reverse:{word}", f'Reverse the letters of the word "{word}".', backwards,
                    (word, backwards[1::-1] + backwards[2:]))


def _uppercase(rng: random.Random) -> _Problem:
    phrase = " ".join(_words(rng, 2, 4))
    return _Problem(f"uppercase:{phrase}", f'Write "{phrase}" in uppercase letters.', phrase.upper(),
                    (phrase, phrase.title()))


def _sort(rng: random.Random) -> _Problem:
    words = _words(rng, 3, 6)
    ordered = sorted(words)
    return _Problem(f"sort:{','.join(ordered)}", f"Sort these words alphabetically: {', '.join(words)}.",
                    ", ".join(ordered), (", ".join(words), ", ".join(reversed(ordered))))


def _count(family: str, question: str, count: int) -> _Problem:
    return _Problem(f"{family}:{question}", question, str(count), (str(count - 1), str(count + 1)))


def _count_letters(rng: random.Random) -> _Problem:
    word = rng.choice(WORDS)
    return _count("count_letters", f'How many letters are in the word "{word}"?', len(word))


def _count_words(rng: random.Random) -> _Problem:
    words = _words(rng, 4, 8)
    return _count("count_words", f'How many words are in the sentence "{" ".join(words)}"?', len(words))


def _repeat(rng: random.Random) -> _Problem:
    word, times = rng.choice(WORDS), rng.randint(2, 6)
    return _Problem(f"repeat:{word}*{times}", f'Write the word "{word}" {times} times, separated by spaces.',
                    " ".join([word] * times), tuple(" ".join([word] * (times + step)) for step in (-1, 1)))


def _end_word(family: str, rng: random.Random) -> _Problem:
    words = _words(rng, 4, 8)
    which, other = (0, -1) if family == "first_word" else (-1, 0)
    return _Problem(f"{family}:{' '.join(words)}",
                    f'What is the {family.removesuffix("_word")} word of the sentence "{" ".join(words)}"?',
                    words[which], (words[other],))


def _join(rng: random.Random) -> _Problem:
    words, separator = _words(rng, 3, 5), rng.choice(SEPARATORS)
    return _Problem(f"join:{separator.join(words)}",
                    f'Join these words with "{separator}" between them: {", ".join(words)}.',
                    separator.join(words), (separator.join(reversed(words)), " ".join(words)))


FAMILIES: dict[str, Callable[[random.Random], _Problem]] = {
    "reverse": _reverse, "uppercase": _uppercase, "sort": _sort, "count_letters": _count_letters,
    "count_words": _count_words, "repeat": _repeat, "first_word": functools.partial(_end_word, "first_word"),
    "last_word": functools.partial(_end_word, "last_word"), "join": _join,
}


def _suggest(value: str, allowed: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(value), allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ConfigError(f"instructions: unknown {what} {value!r}{_suggest(value, allowed)} "
                          f"(choose from {', '.join(allowed)})")
    return value


def _parse_options(options: dict[str, Any]) -> tuple[tuple[str, ...], float]:
    """(families, test_fraction) from the task's options; anything else is a ConfigError naming it."""
    for key in options:
        if key not in OPTIONS:
            raise ConfigError(f"instructions: unknown option {key!r}{_suggest(key, OPTIONS)} "
                              f"(options: {', '.join(OPTIONS)})")
    families = options.get("families", tuple(FAMILIES))
    if isinstance(families, str) or not isinstance(families, list | tuple) or not families:
        raise ConfigError(f"instructions: option 'families' must be a non-empty list of family names, "
                          f"got {families!r} (families: {', '.join(FAMILIES)})")
    for name in families:
        if name not in FAMILIES:
            raise ConfigError(f"instructions: unknown family {name!r} in option 'families'"
                              f"{_suggest(name, list(FAMILIES))} (families: {', '.join(FAMILIES)})")
    families = tuple(dict.fromkeys(families))
    test_fraction = options.get("test_fraction", 0.1)
    number = isinstance(test_fraction, int | float) and not isinstance(test_fraction, bool)
    if not number or not 0 < test_fraction < 1:
        raise ConfigError("instructions: option 'test_fraction' must be a number in (0, 1), "
                          f"got {test_fraction!r}")
    return families, float(test_fraction)


def split_of(key: str, test_fraction: float = 0.1) -> str:
    """"test" or "train" for a problem's canonical key, from its sha256: stable everywhere."""
    digest = hashlib.sha256(key.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def _sample(n: int, seed: int, split: str, families: tuple[str, ...], test_fraction: float) -> list[_Problem]:
    """n distinct problems of the split. Draws stop when `patience` draws in a row found nothing
    new: far beyond what a split with room left needs, so it only fires when the families are
    used up."""
    rng = random.Random(seed)
    chosen: dict[str, _Problem] = {}
    patience, misses = 2000 + 20 * n, 0
    while len(chosen) < n:
        problem = FAMILIES[rng.choice(families)](rng)
        if problem.key in chosen or split_of(problem.key, test_fraction) != split:
            misses += 1
            if misses > patience:
                raise ConfigError(f"instructions: asked for {n} {split} rows but found only {len(chosen)} "
                                  f"distinct {split} problems in families {', '.join(families)}; ask for "
                                  "fewer rows or add families")
            continue
        misses = 0
        chosen[problem.key] = problem
    return list(chosen.values())


def _problems(n: int, seed: int, split: str, options: dict[str, Any]) -> list[_Problem]:
    _choice(split, SPLITS, "split")
    families, test_fraction = _parse_options(options)
    if n < 0:
        raise ConfigError(f"instructions: n must be >= 0, got {n}")
    return _sample(n, seed, split, families, test_fraction)


def _row(problem: _Problem, split: str, index: int) -> Row:
    return {"prompt": [{"role": "user", "content": problem.instruction + _ONLY}], "answer": problem.answer,
            "family": problem.family, "_where": f"instructions:{split}[{index}]"}


def rows(n: int, seed: int, split: str = "train", **options: Any) -> list[Row]:
    """n distinct problems from `split`: rows with `prompt` (one user message), `answer` (the gold
    reply, e.g. "elppa"), `family` and `_where` ("instructions:train[12]")."""
    return [_row(problem, split, i) for i, problem in enumerate(_problems(n, seed, split, options))]


# ---------------------------------------------------------------- checking


def _clean(text: str) -> str:
    """The reply without surrounding whitespace, quotes or backticks and a trailing period; runs of
    whitespace made one space."""
    text = " ".join(text.split())
    for _ in range(2):  # '"elppa".' and '"elppa."' alike
        text = text.removesuffix(".").strip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
    return text


def _word_list(text: str) -> list[str]:
    words = (word.strip(_QUOTES) for word in re.split(r"[\s,]+", text.lower()))
    return [word for word in words if word]


def _same(family: str, reply: str, gold: str) -> bool:
    if family == "uppercase":
        return reply == gold
    if family in ("sort", "repeat"):
        return _word_list(reply) == _word_list(gold)
    if family == "join":
        return reply.replace(" ", "").lower() == gold.lower()
    return reply.lower() == gold.lower()


def format_ok(completion: str, row: Row) -> bool:
    """Whether the reply is one non-empty line and no reasoning or answer tags: the shape "reply with
    only the answer" asks for."""
    text = completion.strip()
    tags = ("<think>", "</think>", "<answer>")
    return bool(text) and "\n" not in text and not any(tag in text for tag in tags)


def check(completion: str, row: Row) -> bool:
    """Whether the reply is the row's answer (leniently compared, see the module docstring)."""
    if "family" not in row:
        raise ConfigError("instructions: check() needs the row's 'family' column (the instruction "
                          "it answers)")
    family = _choice(row["family"], tuple(FAMILIES), "family")
    return format_ok(completion, row) and _same(family, _clean(completion), str(row["answer"]))


# ---------------------------------------------------------------- demonstrations and pairs


def sft_rows(n: int, seed: int, split: str = "train", **options: Any) -> list[Row]:
    """Demonstrations: rows(...) with `messages` = the user prompt and the direct reply, the answer
    alone (no reasoning block: R1's non-reasoning data); every one passes `check`."""
    out = []
    for row in rows(n, seed, split, **options):
        prompt = row.pop("prompt")
        out.append({"messages": [*prompt, {"role": "assistant", "content": row["answer"]}], **row})
    return out


def preference_rows(n: int, seed: int, split: str = "train", kind: str = "correctness",
                    **options: Any) -> list[Row]:
    """n preference pairs on the problems of ``rows(n, seed, split, **options)`` (same prompts): rows
    with ``prompt``, ``chosen`` (the right reply), ``rejected``, ``pair_kind`` and the gold columns.

    kind "correctness": rejected is a plausible mistake in the answer's own shape: the word not
    reversed, the phrase not in capitals, the list unsorted, a count off by one, one repetition too
    few or too many, the other end of the sentence, the joined words reversed or unjoined.
    kind "helpfulness": rejected is an unhelpful reply that does not answer (a refusal, a pleasantry,
    an evasion, an announcement with nothing after it). kind "both": alternate rows of each."""
    _choice(kind, PREFERENCE_KINDS, "preference kind")
    rng = random.Random(f"rejected-{seed}-{split}")
    out = []
    for i, problem in enumerate(_problems(n, seed, split, options)):
        row = _row(problem, split, i)
        pair_kind = kind if kind != "both" else PREFERENCE_KINDS[i % 2]
        mistakes = [m for m in problem.mistakes if not check(m, row)]
        rejected = rng.choice(mistakes) if pair_kind == "correctness" else rng.choice(_UNHELPFUL)
        out.append({**row, "chosen": row["answer"], "rejected": rejected, "pair_kind": pair_kind})
    return out
