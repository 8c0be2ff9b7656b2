"""R1's language-consistency reward on hand-made strings: the share of target-language words in the
chain of thought, counted by hand in each case."""

from __future__ import annotations

import pytest

from posttrain.errors import ConfigError
from posttrain.rewards.base import BUILTIN_REWARDS, resolve_reward, score_completions
from posttrain.rewards.language import chain_of_thought, language_consistency, target_share, words

MIXED = "<think>First add the ones 先加个位 then carry</think>\n<answer>5</answer>"  # 6 English words, 4 Han


def _score(completion: str, spec: str = "language_consistency") -> float | None:
    _, reward = resolve_reward(spec)
    return reward(prompts=["q"], completions=[completion])[0]


def test_mixed_english_and_chinese_chain_of_thought() -> None:
    assert _score(MIXED) == pytest.approx(6 / 10)
    assert _score(MIXED, "language_consistency:zh") == pytest.approx(4 / 10)
    assert _score(MIXED, "language_consistency:latin") == pytest.approx(6 / 10)
    assert _score("<think>只用中文思考</think><answer>5</answer>", "language_consistency:zh") == 1.0
    assert _score("<think>Only English here.</think><answer>5</answer>") == 1.0


def test_only_the_chain_of_thought_counts() -> None:
    # the answer is outside the block; an unclosed block runs to the end; a prompt-opened block
    # (no "<think>" in the completion) ends at "</think>"; no block: the whole completion
    assert _score("<think>Add them</think><answer>答案是五</answer>") == 1.0
    assert _score("<think>Add them 然后") == pytest.approx(2 / 4)
    assert _score("Add them 然后</think><answer>five five five</answer>") == pytest.approx(2 / 4)
    assert _score("The answer is 五") == pytest.approx(3 / 4)
    assert _score("答案是五 <answer>5</answer>", "language_consistency:zh") == 1.0  # a tag is not a word
    assert _score("<think>one</think> middle <think>两</think>") == pytest.approx(1 / 2)
    assert chain_of_thought("<think>a</think>x<think>b") == "a\nb"


def test_what_a_word_is() -> None:
    assert list(words("Don't re-use it, 12 + 30 = 42!")) == [("latin", "Don't"), ("latin", "re-use"),
                                                               ("latin", "it")]
    assert [w for _, w in words("先加个位")] == ["先", "加", "个", "位"]  # no spaces: a character is a word
    assert list(words("नमस्ते दुनिया")) == [("devanagari", "नमस्ते"), ("devanagari", "दुनिया")]  # vowel signs
    assert list(words("ｔｅｓｔ カタカナ")) == [("latin", "ｔｅｓｔ"), *(("katakana", c) for c in "カタカナ")]
    assert list(words("Привет, мир")) == [("cyrillic", "Привет"), ("cyrillic", "мир")]


def test_one_letter_words_outside_the_target_are_symbols() -> None:
    # "x" in a Chinese chain of thought and "π" in an English one are math, not another language;
    # a one-letter word of the target ("I", "a") still counts
    assert target_share("解出 x 的值", ("han",)) == 1.0
    assert target_share("I take a circle with area π r squared", ("latin",)) == 1.0
    assert target_share("I take a circle with area πρ squared", ("latin",)) == pytest.approx(7 / 8)


def test_no_words_score_zero_and_conversational_completions_work() -> None:
    assert _score("<think></think><answer>42</answer>") == 0.0
    assert _score("<think>12 + 30 = 42</think>") == 0.0
    chat = [{"role": "assistant", "content": MIXED}]
    assert language_consistency(prompts=[[{"role": "user", "content": "q"}]], completions=[chat]) == [0.6]


def test_registered_as_builtin_and_as_factory() -> None:
    assert BUILTIN_REWARDS["language_consistency"] is language_consistency
    name, reward = resolve_reward("language_consistency")
    assert name == "language_consistency" and reward(prompts=["q"], completions=[MIXED]) == [0.6]
    name, _ = resolve_reward("language_consistency:ja")
    assert name == "language_consistency:ja"
    japanese = "<think>ひらがなとコーヒーと漢字々 ok</think>"  # 13 kana and kanji (ー and 々 too), 1 English
    assert _score(japanese, "language_consistency:ja") == pytest.approx(13 / 14)
    with pytest.raises(ConfigError, match=r"reward 'language_consistency:zn': unknown language or script; "
                                          r"did you mean 'zh'\?"):
        resolve_reward("language_consistency:zn")
    weighted = [("language", language_consistency, 2.0)]
    scores = score_completions(weighted, ["q", "q"], [MIXED, "plain words"], {})
    assert scores.total.tolist() == pytest.approx([1.2, 2.0])
