"""HumanEval through our sandbox: canonical solutions pass, empty bodies fail, prompts and stops."""

from __future__ import annotations

from typing import Any

import pytest

from posttrain.errors import ConfigError
from posttrain.eval import humaneval
from posttrain.sandbox import SandboxResult

# Spread over the set; 38 and 50 test a decoder through an encoder the stub defines, 32 a helper.
SAMPLE = (0, 12, 32, 38, 50, 73, 101, 129, 147, 163)


@pytest.fixture(scope="module")
def problems() -> list[dict[str, Any]]:
    return [{**row, "solution_prompt": row["prompt"]} for row in humaneval.problems()]


def test_all_164_problems_in_order_with_parseable_stubs(problems: list[dict[str, Any]]) -> None:
    assert [row["task_id"] for row in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(humaneval.stub_parses(row["prompt"]) for row in problems)
    assert problems[0]["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in problems[0]["tests"] and problems[0]["_where"] == "humaneval:HumanEval/0"
    assert [row["task_id"] for row in humaneval.problems(3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    with pytest.raises(ConfigError, match=r"humaneval: limit must be >= 0 \(0: all problems\), got -1"):
        humaneval.problems(-1)


def test_canonical_solutions_pass_and_empty_bodies_fail(problems: list[dict[str, Any]]) -> None:
    rows = [problems[i] for i in SAMPLE]
    completions = [[row["canonical_solution"], "    pass\n"] for row in rows]
    results = humaneval.judge(rows, completions)
    for row, (canonical, empty) in zip(rows, results):
        assert canonical.status == "passed", (row["task_id"], canonical.reason)
        assert canonical.passed_tests == canonical.total_tests > 0
        assert "bwrap" in canonical.layers
        assert empty.status in ("wrong", "runtime_error"), (row["task_id"], empty.status)
        assert empty.reward == 0.0


def test_a_chat_reply_defining_the_whole_function_passes(problems: list[dict[str, Any]]) -> None:
    row = problems[0]  # the stub imports List; the reply's own def replaces the stub's
    reply = ("Here is the function:\n```python\ndef has_close_elements(numbers: List[float], "
             f"threshold: float) -> bool:\n{row['canonical_solution']}```\nIt compares every pair.")
    wrong = reply.replace("distance < threshold", "distance > threshold")
    passed, failed = humaneval.judge([row], [[reply, wrong]])[0]
    assert (passed.status, failed.status) == ("passed", "wrong")


def test_prompt_styles(tokenizer: Any) -> None:
    stub = "def add(a: int, b: int) -> int:\n    \"\"\"Sum.\"\"\"\n"
    user = humaneval.user_message(stub)
    assert user == f"{humaneval.INSTRUCTION}\n\n```python\n{stub.rstrip()}\n```"
    assert humaneval.model_prompt(stub, "raw", tokenizer) == stub
    assert humaneval.model_prompt(stub, "chat", tokenizer) == [{"role": "user", "content": user}]
    prefill = humaneval.model_prompt(stub, "prefill", tokenizer)
    assert prefill.startswith("<|im_start|>system\n")
    assert prefill.endswith(f"{user}<|im_end|>\n<|im_start|>assistant\n```python\n{stub}")
    with pytest.raises(ConfigError, match="unknown HumanEval prompt_style 'fim'; choose one of prefill"):
        humaneval.model_prompt(stub, "fim", tokenizer)


def test_stops_and_their_removal() -> None:
    assert humaneval.stop_strings("chat") == []
    assert humaneval.stop_strings("raw") == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    prefill = humaneval.stop_strings("prefill")
    assert prefill[-1] == "```"
    assert humaneval.strip_stop("    return a + b\n```", prefill) == "    return a + b\n"
    assert humaneval.strip_stop("    return a + b\n\ndef", prefill) == "    return a + b\n"
    assert humaneval.strip_stop("    return a + b\n", prefill) == "    return a + b\n"


def test_sandbox_errors_are_undecided_not_wrong() -> None:
    record = humaneval.sample_record(SandboxResult("sandbox_error", reason="bwrap failed to start"))
    assert record["passed"] is None and record["status"] == "sandbox_error"
    assert humaneval.sample_record(SandboxResult("wrong", 1, 3))["passed"] is False
    with pytest.raises(ValueError, match="judge: 1 rows but 2 lists of completions"):
        humaneval.judge([{"tests": "assert True", "solution_prompt": ""}], [["x"], ["y"]])
