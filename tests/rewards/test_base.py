"""Reward interface: resolving specs, scoring a batch, errors naming function and sample, task adapters."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from posttrain.errors import ConfigError, RewardError
from posttrain.rewards import format as format_rewards
from posttrain.rewards.base import (
    BUILTIN_REWARDS,
    TrainerState,
    check_reward,
    format_reward,
    resolve_reward,
    score_completions,
)

USER_FILE = """
THRESHOLD = 3

def helper(x):
    return x

def my_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]
"""


@pytest.fixture
def reward_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    return path


def test_resolve_builtins_and_callables() -> None:
    assert resolve_reward("exact_answer") == ("exact_answer", format_rewards.exact_answer)
    assert set(BUILTIN_REWARDS) == {
        "language_consistency",
        "think_answer_format",
        "answer_tag_format",
        "answer_tag_count",
        "exact_answer",
        "numeric_answer",
        "math_verify_answer",
        "code_tests",
    }

    def mine(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [1.0] * len(completions)

    assert resolve_reward(mine) == ("mine", mine)
    partial = functools.partial(mine)
    assert resolve_reward(partial) == ("mine", partial)
    assert resolve_reward("posttrain.rewards.format:numeric_answer") == (
        "numeric_answer",
        format_rewards.numeric_answer,
    )


def test_resolve_file(reward_file: Path) -> None:
    name, fn = resolve_reward(f"{reward_file}:my_reward")
    assert name == "my_reward"
    assert fn(prompts=["p", "p"], completions=["ab", ""]) == [2.0, 0.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "exact_anwser",
            "unknown reward 'exact_anwser'; did you mean 'exact_answer'\\? built-ins: think_answer_format",
        ),
        ("zzz", "unknown reward 'zzz'; built-ins: .* or give 'path/to/file.py:function'"),
        ("", "a reward must be a built-in name, 'file.py:function' or a callable, got ''"),
        (42, "a reward must be a built-in name, 'file.py:function' or a callable, got 42"),
        ("file.py:", "reward 'file.py:': expected 'path/to/file.py:function' or 'package.module:function'"),
        (
            "missing/rewards.py:fn",
            "reward 'missing/rewards.py:fn': file not found: missing/rewards.py \\(looked at /",
        ),
        ("no_such_pkg.mod:fn", "cannot import module 'no_such_pkg.mod' \\(No module named 'no_such_pkg'\\)"),
        (
            "posttrain.rewards.format:exact_anser",
            "no function 'exact_anser' in posttrain.rewards.format; did you mean 'exact_answer'",
        ),
    ],
)
def test_resolve_errors(spec: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_reward(spec)


def test_resolve_file_errors(reward_file: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"did you mean 'my_reward'\? functions defined there: helper, my_reward$"
    ):
        resolve_reward(f"{reward_file}:my_rewards")
    with pytest.raises(ConfigError, match=r"'THRESHOLD' in .*my_rewards.py is a int, not a function"):
        resolve_reward(f"{reward_file}:THRESHOLD")
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\ndef f(:\n    pass\n")
    with pytest.raises(ConfigError, match=r"syntax error in .*broken.py, line 2: "):
        resolve_reward(f"{broken}:f")
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"running .*raising.py raised RuntimeError: boom"):
        resolve_reward(f"{raising}:f")


def _constant(value: Any) -> Any:
    def reward(prompts: list, completions: list, **kwargs: Any) -> list[Any]:
        return [value] * len(completions)

    return reward


def test_score_weighted_sum_with_none() -> None:
    def first_only(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        return [0.5, None, None]

    def maybe(prompts: list, completions: list, **kwargs: Any) -> list[Any]:
        return [True, 2, None]

    scores = score_completions(
        [("first", first_only, 2.0), ("maybe", maybe, 0.5)], ["p"] * 3, ["a", "b", "c"], {}
    )
    assert scores.total.dtype == torch.float32
    assert scores.total[:2].tolist() == [2.0 * 0.5 + 0.5 * 1.0, 0.5 * 2.0]
    assert math.isnan(scores.total[2])  # no function applied to row 2
    assert scores.per_fn["first"][0] == 0.5 and scores.per_fn["first"][1:].isnan().all()
    assert scores.per_fn["maybe"][:2].tolist() == [1.0, 2.0]


def test_score_passes_columns() -> None:
    seen: dict[str, Any] = {}

    def spy(prompts: list, completions: list, answer: list, trainer_state: Any, **kwargs: Any) -> list[float]:
        seen.update(prompts=prompts, answer=answer, state=trainer_state, extra=sorted(kwargs))
        return [0.0] * len(completions)

    state = TrainerState(global_step=3, max_steps=10)
    score_completions([("spy", spy, 1.0)], ["p1", "p2"], ["a", "b"], {"answer": ["1", "2"]},
                      completion_ids=[[5], [6, 7]], trainer_state=state)
    assert seen == {"prompts": ["p1", "p2"], "answer": ["1", "2"], "state": state,
                    "extra": ["completion_ids", "log_extra", "log_metric"]}


def test_score_finds_the_failing_sample() -> None:
    def picky(prompts: list, completions: list, completion_ids: list, trainer_state: Any = None,
              **kwargs: Any) -> list[float]:
        assert trainer_state.global_step == 1  # not sliced per sample: it is not per-row
        assert len(completion_ids) == len(completions)  # sliced with the sample
        for completion in completions:
            if completion == "bad":
                raise ValueError("bad input")
        return [1.0] * len(completions)

    with pytest.raises(
        RewardError, match=r"'picky' raised ValueError: bad input on sample 2 \(completion 'bad'\)"
    ):
        score_completions([("picky", picky, 1.0)], ["p"] * 3, ["ok", "ok", "bad"], {},
                          completion_ids=[[1], [2], [3]], trainer_state=TrainerState(1, 4))

    def batch_only(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        if len(completions) > 1:
            raise RuntimeError("no batches")
        return [1.0]

    with pytest.raises(
        RewardError, match="'batch_only' raised RuntimeError: no batches on the batch of 2 samples"
    ):
        score_completions([("batch_only", batch_only, 1.0)], ["p"] * 2, ["a", "b"], {})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": 1}, "'bad' returned dict, expected a list of 2 floats/None"),
        ([1.0], "'bad' returned 1 values, expected 2 \\(one per completion\\)"),
        (
            [0.0, math.nan],
            "'bad' returned nan for row 1; rewards must be finite \\(return None to skip a sample\\)",
        ),
        ([math.inf, 0.0], "'bad' returned inf for row 0"),
        ([-math.inf, 0.0], "'bad' returned -inf for row 0"),
        (["high", 0.0], "'bad' returned str 'high' for row 0, expected a float or None"),
        ([0.0, torch.tensor(1.0)], "'bad' returned Tensor tensor\\(1.\\) for row 1"),
    ],
)
def test_score_rejects_bad_outputs(value: Any, message: str) -> None:
    def bad(prompts: list, completions: list, **kwargs: Any) -> Any:
        return value

    with pytest.raises(RewardError, match=message):
        score_completions([("bad", bad, 1.0)], ["p"] * 2, ["a", "b"], {})


def test_score_config_errors() -> None:
    with pytest.raises(ConfigError, match="no reward functions given"):
        score_completions([], ["p"], ["a"], {})
    with pytest.raises(ConfigError, match="reward function names must be unique, repeated: x"):
        score_completions([("x", _constant(1.0), 1.0), ("x", _constant(0.0), 1.0)], ["p"], ["a"], {})
    with pytest.raises(ValueError, match="got 1 prompts for 2 completions"):
        score_completions([("x", _constant(1.0), 1.0)], ["p"], ["a", "b"], {})


def test_builtin_missing_column_is_reported() -> None:
    with pytest.raises(
        RewardError, match="'exact_answer' raised ValueError: exact_answer needs the gold answers"
    ):
        score_completions(
            [("exact_answer", format_rewards.exact_answer, 1.0)], ["p"], ["<answer>1</answer>"], {}
        )


def test_task_adapters() -> None:
    rows_seen: list[dict[str, Any]] = []

    def check(completion: str, row: dict[str, Any]) -> bool:
        rows_seen.append(row)
        return completion.strip() == row["answer"]

    def format_ok(completion: str, row: dict[str, Any]) -> bool | None:
        return None if row["answer"] == "skip" else completion.isdigit()

    task = SimpleNamespace(__name__="posttrain.data.tasks.arith", check=check, format_ok=format_ok)
    correct, form = check_reward(task), format_reward(task)
    assert (correct.__name__, form.__name__) == ("arith_check", "arith_format")
    completions = [[{"role": "assistant", "content": "7"}], [{"role": "assistant", "content": "x"}]]
    prompts = [[{"role": "user", "content": "3+4?"}], [{"role": "user", "content": "?"}]]
    scores = score_completions(
        [("task_correct", correct, 1.0), ("task_format", form, 0.5)], prompts, completions,
        {"answer": ["7", "skip"]}, completion_ids=[[1], [2]], trainer_state=TrainerState(0, 2),
    )
    assert scores.per_fn["task_correct"].tolist() == [1.0, 0.0]
    assert scores.per_fn["task_format"][0] == 1.0 and scores.per_fn["task_format"][1].isnan()
    assert scores.total.tolist() == [1.5, 0.0]
    assert rows_seen[0] == {"answer": "7", "prompt": prompts[0]}


def test_task_without_check() -> None:
    with pytest.raises(ConfigError, match="task 'empty' has no check\\(completion, row\\) function"):
        check_reward(SimpleNamespace(__name__="empty"))
    with pytest.raises(ConfigError, match="task 'empty' has no format_ok\\(completion, row\\) function"):
        format_reward(SimpleNamespace(__name__="empty"))
