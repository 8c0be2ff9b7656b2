"""Code reward: run each completion's program against its tests in the sandbox (posttrain.sandbox).

`code_tests_reward` takes TRL's signature, reads a `tests` column (HumanEval `check(candidate)`
code, or MBPP-style top-level asserts) and an optional `entry_point` column, and returns 1.0 when
the tests ran to their end with every assert they reached holding (one they correctly never reach,
such as the `else:` of a `try`, costs nothing), 0.0 for any failure of the program (wrong,
timeout, memory, crash, syntax)
and None when the sandbox itself failed (the reason is logged and counted in NONE_REASONS), so a
broken sandbox never looks like wrong answers. Register it as "code_tests".

Code extraction: the last ```python (or ```py) fenced block, else the last fenced block of any
kind, else the whole completion. With an entry point and a prompt that is Python (HumanEval's
prompt, or a ```python block in the last user message), the prompt is prepended: a completion
that is only the function body continues the prompt's signature; a completion that defines the
function itself still gets the prompt's imports and helpers (its later `def` wins).
"""

from __future__ import annotations

import ast
import logging
import re
from typing import Any

from posttrain.rewards.answers import NONE_REASONS, completion_text
from posttrain.sandbox import Limits, Program, run_many

LOG = logging.getLogger(__name__)
DEFAULT_LIMITS = Limits(wall_s=10.0, cpu_s=5.0, memory_mb=512, max_processes=8)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The program in a completion: last python fence, else last fence, else the text itself."""
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    return text


def _is_python(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def prompt_code(prompt: Any) -> str:
    """The Python part of a prompt: the prompt itself if it parses (HumanEval), or the last python
    fence of a text prompt or of the last user message of a conversational prompt; "" when there is
    none."""
    if isinstance(prompt, str):
        if _is_python(prompt):
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, list | tuple):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            text = completion_text([users[-1]])
            if _FENCE.search(text):
                code = extract_code(text)
                return code if _is_python(code) else ""
    return ""


def build_solution(prompt: Any, completion: Any, entry_point: str | None) -> str:
    """The program to test: the completion's code, with the prompt's code first when it applies."""
    code = extract_code(completion_text(completion))
    head = prompt_code(prompt) if entry_point else ""
    if not head:
        return code
    defines = re.search(rf"^[ \t]*def\s+{re.escape(entry_point or '')}\s*\(", code, re.MULTILINE)
    if defines:
        return head.rstrip("\n") + "\n\n\n" + code
    return head + code if head.endswith("\n") else head + "\n" + code


def code_tests_reward(prompts: list[Any], completions: list[Any], tests: list[str],
                      entry_point: list[str] | None = None, *, limits: Limits | None = None,
                      **kwargs: Any) -> list[float | None]:  # fmt: skip
    """1.0 / 0.0 / None per completion from running its code against the row's `tests`."""
    n = len(completions)
    if len(tests) != n:
        raise ValueError(f"code_tests_reward: {len(tests)} tests for {n} completions")
    if entry_point is not None and len(entry_point) != n:
        raise ValueError(f"code_tests_reward: {len(entry_point)} entry points for {n} completions")
    if len(prompts) != n:
        raise ValueError(f"code_tests_reward: {len(prompts)} prompts for {n} completions")
    entries = list(entry_point) if entry_point is not None else [None] * n
    programs = [
        Program(build_solution(prompt, completion, entry), test_code=test, entry_point=entry or None)
        for prompt, completion, test, entry in zip(prompts, completions, tests, entries)
    ]
    results = run_many(programs, limits or DEFAULT_LIMITS)
    rewards: list[float | None] = []
    for index, result in enumerate(results):
        if result.status == "sandbox_error":
            LOG.warning("code_tests_reward: sandbox error for completion %d: %s", index, result.reason)
            NONE_REASONS["code_tests_reward: sandbox error"] += 1
        rewards.append(result.reward)
    return rewards
