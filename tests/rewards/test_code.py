"""code_tests_reward: code extraction, HumanEval prompt handling, the reward mapping, hacking attempts.

Runs the real sandbox: FAILS without bubblewrap unless POSTTRAIN_ALLOW_NO_BWRAP_TESTS=1.
"""

from __future__ import annotations

import logging
import os

import pytest

from posttrain.rewards.answers import NONE_REASONS
from posttrain.rewards.code import build_solution, code_tests_reward, extract_code, prompt_code
from posttrain.sandbox import SandboxResult, detect_layers

PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n'
TESTS = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
RIGHT, WRONG = "    return sum(xs)\n", "    return len(xs)\n"

needs_bwrap = pytest.mark.usefixtures("bwrap")


@pytest.fixture(scope="module")
def bwrap() -> None:
    if not detect_layers()["bwrap"]:
        if os.environ.get("POSTTRAIN_ALLOW_NO_BWRAP_TESTS") == "1":
            pytest.skip("bubblewrap missing and POSTTRAIN_ALLOW_NO_BWRAP_TESTS=1")
        pytest.fail("bubblewrap is missing or broken: apt-get install -y bubblewrap "
                    "(or set POSTTRAIN_ALLOW_NO_BWRAP_TESTS=1 on a developer laptop)")  # fmt: skip


def _reward(completions: list[object], prompt: object = PROMPT) -> list[float | None]:
    n = len(completions)
    return code_tests_reward([prompt] * n, completions, tests=[TESTS] * n, entry_point=["total"] * n)


def test_extract_code_prefers_the_last_python_fence() -> None:
    text = "First:\n```python\nx = 1\n```\nthen\n```py\nx = 2\n```\n```text\nnot code\n```"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("    return 1\n") == "    return 1\n"


def test_prompt_code_for_text_and_chat_prompts() -> None:
    assert prompt_code(PROMPT) == PROMPT
    assert prompt_code("Write a function that sums a list.") == ""
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Complete this:\n```python\n{PROMPT}```"}]  # fmt: skip
    assert prompt_code(chat) == PROMPT
    assert prompt_code([{"role": "user", "content": "no code here"}]) == ""
    # a standard (string) prompt reaches reward functions as the string itself, not as messages
    assert prompt_code(chat[1]["content"]) == PROMPT


def test_build_solution_body_and_full_function() -> None:
    assert build_solution(PROMPT, RIGHT, "total") == PROMPT + RIGHT
    function = "def total(xs):\n    return sum(xs)\n"
    full = f"```python\n{function}```"
    # The prompt's imports and helpers come first; the completion's later `def` wins.
    assert build_solution(PROMPT, full, "total") == PROMPT.rstrip("\n") + "\n\n\n" + function
    assert build_solution(PROMPT, full, None) == function


@needs_bwrap
def test_rewards_for_body_full_function_and_chat_forms() -> None:
    full = "Here you go:\n```python\ndef total(xs):\n    return sum(xs)\n```"
    chat = [{"role": "assistant", "content": f"```python\n{RIGHT}```"}]
    broken = "```python\ndef total(:\n```"
    assert _reward([RIGHT, WRONG, full, chat, "", broken]) == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    chat_prompt = [{"role": "user", "content": f"Complete:\n```python\n{PROMPT}```"}]
    assert _reward([chat, [{"role": "assistant", "content": WRONG}]], prompt=chat_prompt) == [1.0, 0.0]


@needs_bwrap
def test_mbpp_style_without_entry_point() -> None:
    tests = ["assert double(4) == 8\n", "assert double(4) == 8\n"]
    completions = ["def double(x):\n    return 2 * x\n", "def double(x):\n    return x + 2\n"]
    assert code_tests_reward(["Double it."] * 2, completions, tests=tests) == [1.0, 0.0]


HACKS = {
    "exit before the tests": "import sys\nsys.exit(0)\n",
    "hard exit": "import os\nos._exit(0)\n",
    "printed verdict": "print('All tests passed')\n",
    "always-equal result": "class E:\n    def __eq__(self, o):\n        return True\n",
}


@needs_bwrap
@pytest.mark.parametrize("name", HACKS)
def test_reward_hacks_score_zero(name: str) -> None:
    body = "    return E()\n" if name == "always-equal result" else "    return 0\n"
    completion = f"```python\n{HACKS[name]}\ndef total(xs):\n{body}```"
    assert _reward([completion]) == [0.0]


def test_sandbox_error_becomes_none_and_is_logged(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    broken = SandboxResult("sandbox_error", reason="the sandbox did not start")
    monkeypatch.setattr("posttrain.rewards.code.run_many", lambda programs, limits: [broken] * len(programs))
    before = NONE_REASONS["code_tests_reward: sandbox error"]
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards.code"):
        assert _reward([RIGHT, WRONG]) == [None, None]
    assert NONE_REASONS["code_tests_reward: sandbox error"] == before + 2
    assert "sandbox error for completion 1: the sandbox did not start" in caplog.text


def test_column_lengths_are_checked() -> None:
    with pytest.raises(ValueError, match="1 tests for 2 completions"):
        code_tests_reward(["p", "p"], ["a", "b"], tests=["t"])
    with pytest.raises(ValueError, match="1 entry points for 2 completions"):
        code_tests_reward(["p", "p"], ["a", "b"], tests=["t", "t"], entry_point=["f"])
    with pytest.raises(ValueError, match="1 prompts for 2 completions"):
        code_tests_reward(["p"], ["a", "b"], tests=["t", "t"])
