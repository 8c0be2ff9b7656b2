"""DeepSeek-R1's language-consistency reward (arXiv:2501.12948, section 2.3.3): "the proportion of
target language words in the CoT", added to the accuracy reward so the chain of thought stops
mixing languages.

Decisions (each asserted in tests/rewards/test_language.py):
- Languages are told apart by script, the form R1's language mixing takes (Chinese in an English
  chain of thought). A target names a language (en, zh, ja, ru, ...) or a script (latin, han,
  cyrillic, ...); English and French, both Latin script, are not told apart.
- A word is a run of letters of one script; an apostrophe or hyphen inside a word does not split it
  ("don't", "re-use"). Han, Hiragana and Katakana are written without spaces, so each of their
  characters is one word. Digits, punctuation, symbols and tags are not words.
- A one-letter word outside the target's script is a symbol (x, π in math), not a word in another
  language, so "solve for x" is all Chinese when the target is zh.
- The chain of thought is the text inside `<think>...</think>` (every block; an unclosed block runs
  to the end; when the prompt opened the block, the text before `</think>`), else the whole
  completion. One without any word scores 0: paying for an empty chain of thought would reward
  skipping the reasoning.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

from posttrain.errors import ConfigError
from posttrain.rewards.answers import completion_text

LANGUAGES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("en", "fr", "de", "es", "it", "pt", "nl", "id", "vi", "tr", "pl"), ("latin",)),
    "zh": ("han",),
    "ja": ("han", "hiragana", "katakana"),
    "ko": ("hangul",),
    **dict.fromkeys(("ru", "uk", "bg"), ("cyrillic",)),
    "el": ("greek",),
    "ar": ("arabic",),
    "he": ("hebrew",),
    "hi": ("devanagari",),
    "th": ("thai",),
}
"""Target languages and the scripts their words are written in."""

SCRIPTS = tuple(sorted({script for scripts in LANGUAGES.values() for script in scripts}))
_UNSPACED = ("han", "hiragana", "katakana")  # one character is one word
_SCRIPT_OF_NAME = {"cjk": "han", "ideographic": "han", "katakana-hiragana": "katakana"}  # 漢, 々, ー
_JOINERS = "'’-"
_THINK = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.DOTALL)
_TAG = re.compile(r"</?[A-Za-z_]\w*>")


def _script(char: str) -> str | None:
    """The script of a letter ("latin", "han", ...) from its Unicode name; None for a non-letter."""
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "").removeprefix("FULLWIDTH ").removeprefix("HALFWIDTH ")
    first = name.split(" ", 1)[0].lower()
    return _SCRIPT_OF_NAME.get(first, first) or "unknown"


def words(text: str) -> Iterator[tuple[str, str]]:
    """(script, word) for each word of ``text`` (see the module docstring for what a word is)."""
    start, current = 0, None
    for i, char in enumerate(text):
        script = _script(char)
        inside = current is not None and current not in _UNSPACED
        if script is None and inside and (char in _JOINERS or unicodedata.category(char).startswith("M")):
            continue  # "don't", "re-use" and combining marks (Devanagari vowel signs) stay in the word
        if current is not None and (script != current or script in _UNSPACED):
            yield current, text[start:i].rstrip(_JOINERS)
            current = None
        if script is not None and current is None:
            start, current = i, script
    if current is not None:
        yield current, text[start:].rstrip(_JOINERS)


def chain_of_thought(text: str) -> str:
    """The text inside the `<think>` blocks, the text before `</think>` when the prompt opened the
    block, or the whole text when there is no block; tags such as `<answer>` made spaces."""
    if "<think>" not in text:
        return _TAG.sub(" ", text.split("</think>", 1)[0])
    return _TAG.sub(" ", "\n".join(_THINK.findall(text)))


def target_share(text: str, scripts: tuple[str, ...]) -> float:
    """The share of the words of ``text`` written in ``scripts`` (0.0 when there is no word)."""
    counted = [script for script, word in words(text)
               if script in scripts or script in _UNSPACED or len(word) > 1]
    return sum(script in scripts for script in counted) / len(counted) if counted else 0.0


def _target_scripts(target: str) -> tuple[str, ...]:
    target = target.strip().lower() or "en"
    if target in LANGUAGES:
        return LANGUAGES[target]
    if target in SCRIPTS:
        return (target,)
    known = [*LANGUAGES, *SCRIPTS]
    close = difflib.get_close_matches(target, known, n=1, cutoff=0.5)  # two-letter codes: "zn" -> "zh"
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(f"reward 'language_consistency:{target}': unknown language or script; {hint}"
                      f"languages: {', '.join(LANGUAGES)}; scripts: {', '.join(SCRIPTS)}")


def language_consistency_reward(target: str = "en") -> Any:
    """The language-consistency reward for ``target`` (a language code or a script name; empty:
    English), configured as ``language_consistency:zh``."""
    scripts = _target_scripts(target)

    def language_consistency(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        """The share of the chain of thought's words written in the target language's script."""
        return [target_share(chain_of_thought(completion_text(c)), scripts) for c in completions]

    return language_consistency


language_consistency = language_consistency_reward("en")
"""R1's language-consistency reward with English (Latin script) as the target language."""
