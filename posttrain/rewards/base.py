"""The reward-function interface, loading reward functions by name, and scoring a batch with them.

A reward function is any callable with TRL's signature

    fn(prompts, completions, **columns) -> list[float | None]

`prompts` are the dataset's prompts (strings, or message lists for chat data); `completions` are
strings for string prompts and `[{"role": "assistant", "content": text}]` for chat prompts (use
`completion_text` to accept both); `columns` are the dataset's other columns, one value per
completion (`answer=[...]`), plus possibly `completion_ids` and `trainer_state`. Functions must
accept `**kwargs`. `None` means "does not apply to this sample": it is excluded, not scored 0.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from posttrain.errors import ConfigError, RewardError
from posttrain.rewards import code as code_rewards
from posttrain.rewards import format as format_rewards
from posttrain.rewards import language as language_rewards
from posttrain.rewards import math as math_rewards
from posttrain.rewards import reward_model as model_rewards
from posttrain.rewards.answers import completion_text

__all__ = [
    "BUILTIN_REWARDS",
    "RewardFn",
    "RewardScores",
    "check_reward",
    "completion_text",
    "format_reward",
    "resolve_reward",
    "score_completions",
]

# Columns a trainer passes that are not per-row dataset values.
_NOT_ROW_COLUMNS = ("completion_ids", "trainer_state")


class RewardFn(Protocol):
    """TRL-compatible reward function: one float (or None: not applicable) per completion."""

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]: ...


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "think_answer_format": format_rewards.think_answer_format,
    "answer_tag_format": format_rewards.answer_tag_format,
    "answer_tag_count": format_rewards.answer_tag_count,
    "exact_answer": format_rewards.exact_answer,
    "numeric_answer": format_rewards.numeric_answer,
    "math_verify_answer": math_rewards.math_verify_answer,
    "code_tests": code_rewards.code_tests_reward,
    "language_consistency": language_rewards.language_consistency,
}

REWARD_FACTORIES: dict[str, Callable[[str], RewardFn]] = {
    "reward_model": model_rewards.reward_model_reward,
    "language_consistency": language_rewards.language_consistency_reward,
}
"""Rewards configured as ``name:argument``, e.g. ``reward_model:runs/rm/final`` (a trained reward model)
or ``language_consistency:zh`` (R1's language reward for another target language)."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fn_name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial has no __name__
    return getattr(inner, "__name__", type(fn).__name__)


def resolve_reward(spec: str | Callable[..., Any]) -> tuple[str, RewardFn]:
    """(name, function) for a built-in name, `path/to/file.py:function`, `package.module:function`
    or a callable given directly. Every problem raises ConfigError saying what to fix."""
    if callable(spec):
        return _fn_name(spec), spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"a reward must be a built-in name, 'file.py:function' or a callable, got {_short(spec)}"
        )
    spec = spec.strip()
    if spec.partition(":")[0] in REWARD_FACTORIES:  # "reward_model:PATH": a function built from PATH
        kind, _, argument = spec.partition(":")
        return spec, REWARD_FACTORIES[kind](argument)
    if ":" not in spec:
        if spec in BUILTIN_REWARDS:
            return spec, BUILTIN_REWARDS[spec]
        close = difflib.get_close_matches(spec, list(BUILTIN_REWARDS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown reward '{spec}'; {hint}built-ins: {', '.join(BUILTIN_REWARDS)}; "
            "or give 'path/to/file.py:function' or 'package.module:function'"
        )
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ConfigError(
            f"reward '{spec}': expected 'path/to/file.py:function' or 'package.module:function'"
        )
    module = _load_file(where, spec) if where.endswith(".py") else _import_module(where, spec)
    if not hasattr(module, name):
        defined = sorted(
            key
            for key, value in vars(module).items()
            if callable(value)
            and not key.startswith("_")
            and getattr(value, "__module__", "") == module.__name__
        )
        close = difflib.get_close_matches(name, defined, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"reward '{spec}': no function '{name}' in {where}; {hint}"
            f"functions defined there: {', '.join(defined) if defined else '(none)'}"
        )
    fn = getattr(module, name)
    if not callable(fn):
        raise ConfigError(f"reward '{spec}': '{name}' in {where} is a {type(fn).__name__}, not a function")
    return name, fn


def _load_file(path_text: str, spec: str) -> Any:
    """Import a user's reward file as a module named after its path (stable across processes)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"reward '{spec}': file not found: {path_text} (looked at {path.resolve()})")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"posttrain_user_rewards_{path.stem}_{digest}"
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    if import_spec is None or import_spec.loader is None:
        raise ConfigError(f"reward '{spec}': cannot load {path_text} as a Python file")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        import_spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[module_name]
        raise ConfigError(
            f"reward '{spec}': syntax error in {path_text}, line {error.lineno}: {error.msg}"
        ) from error
    except Exception as error:
        del sys.modules[module_name]
        raise ConfigError(
            f"reward '{spec}': running {path_text} raised {type(error).__name__}: {error}"
        ) from error
    return module


def _import_module(module_name: str, spec: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"reward '{spec}': cannot import module '{module_name}' ({error}); "
            "for a file, give its path ending in .py"
        ) from error
    except SyntaxError as error:
        raise ConfigError(
            f"reward '{spec}': syntax error in {error.filename}, line {error.lineno}: {error.msg}"
        ) from error
    except Exception as error:
        raise ConfigError(
            f"reward '{spec}': importing '{module_name}' raised {type(error).__name__}: {error}"
        ) from error


@dataclass
class RewardScores:
    """Scores of N completions. `total`: weighted sum over the functions that returned a number
    for that row, NaN when none did; `per_fn`: each function's raw scores, NaN for None."""

    total: torch.Tensor  # [N] float32
    per_fn: dict[str, torch.Tensor]  # name -> [N] float32


def _row_slice(columns: dict[str, Any], index: int, n: int) -> dict[str, Any]:
    """The columns of one sample, as one-element lists (values that are not per-row pass as is)."""
    return {key: [value[index]] if _is_per_row(value, n) else value for key, value in columns.items()}


def _is_per_row(value: Any, n: int) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n


def _call(
    name: str, fn: RewardFn, prompts: list[Any], completions: list[Any], columns: dict[str, Any]
) -> Any:
    """Call `fn` on the batch; if it raises, call it per sample to name the first failing one."""
    try:
        return fn(prompts=prompts, completions=completions, **columns)
    except Exception as batch_error:
        n = len(completions)
        for index in range(n):
            try:
                fn(
                    prompts=[prompts[index]],
                    completions=[completions[index]],
                    **_row_slice(columns, index, n),
                )
            except Exception as error:
                raise RewardError(
                    f"reward function '{name}' raised {type(error).__name__}: {error} "
                    f"on sample {index} (completion {_short(completions[index])})"
                ) from error
        raise RewardError(
            f"reward function '{name}' raised {type(batch_error).__name__}: {batch_error} "
            f"on the batch of {n} samples (each sample alone scored without error)"
        ) from batch_error


def _to_floats(name: str, result: Any, n: int) -> list[float]:
    """Validate a function's output: a list of n numbers or None; None becomes NaN."""
    if not isinstance(result, list | tuple):
        raise RewardError(
            f"reward function '{name}' returned {type(result).__name__}, expected a list of {n} floats/None"
        )
    if len(result) != n:
        raise RewardError(
            f"reward function '{name}' returned {len(result)} values, expected {n} (one per completion)"
        )
    values = []
    for row, value in enumerate(result):
        if value is None:
            values.append(math.nan)
        elif isinstance(value, numbers.Real):
            number = float(value)  # bool is a Real: True -> 1.0
            if not math.isfinite(number):
                raise RewardError(
                    f"reward function '{name}' returned {number} for row {row}; "
                    "rewards must be finite (return None to skip a sample)"
                )
            values.append(number)
        else:
            raise RewardError(
                f"reward function '{name}' returned {type(value).__name__} {_short(value)} for row {row}, "
                "expected a float or None"
            )
    return values


def score_completions(
    reward_fns: list[tuple[str, RewardFn, float]],
    prompts: list[Any],
    completions: list[Any],
    columns: dict[str, Any],
) -> RewardScores:
    """Score N completions with every (name, fn, weight); see RewardScores for the result.

    total[i] = sum over functions f with a number for row i of weight_f * score_f[i], NaN if none.
    Raises RewardError naming the function (and the sample or row) on any bad call or output.
    """
    if not reward_fns:
        raise ConfigError("no reward functions given")
    names = [name for name, _, _ in reward_fns]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"reward function names must be unique, repeated: {', '.join(duplicates)}")
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} completions; repeat each prompt per completion")
    per_fn: dict[str, torch.Tensor] = {}
    total_N = torch.zeros(n, dtype=torch.float64)
    any_number_N = torch.zeros(n, dtype=torch.bool)
    for name, fn, weight in reward_fns:
        result = _call(name, fn, prompts, completions, columns)
        scores_N = torch.tensor(_to_floats(name, result, n), dtype=torch.float64)
        has_number_N = ~torch.isnan(scores_N)
        total_N += torch.where(has_number_N, scores_N * weight, torch.zeros_like(scores_N))
        any_number_N |= has_number_N
        per_fn[name] = scores_N.float()
    total_N = torch.where(any_number_N, total_N, torch.full_like(total_N, math.nan))
    return RewardScores(total=total_N.float(), per_fn=per_fn)


def _task_name(task: Any) -> str:
    return str(getattr(task, "__name__", type(task).__name__)).rsplit(".", 1)[-1]


def _task_reward(task: Any, attribute: str, suffix: str) -> RewardFn:
    """A reward calling `task.<attribute>(completion_text, row)`: True -> 1.0, False -> 0.0, None -> None."""
    judge = getattr(task, attribute, None)
    if not callable(judge):
        raise ConfigError(f"task '{_task_name(task)}' has no {attribute}(completion, row) function")

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        per_row = {
            key: value
            for key, value in columns.items()
            if key not in _NOT_ROW_COLUMNS and isinstance(value, Sequence) and not isinstance(value, str)
        }
        scores: list[float | None] = []
        for index, completion in enumerate(completions):
            row = {key: value[index] for key, value in per_row.items() if len(value) == n}
            row.setdefault("prompt", prompts[index])
            verdict = judge(completion_text(completion), row)
            scores.append(None if verdict is None else float(verdict))
        return scores

    reward.__name__ = f"{_task_name(task)}_{suffix}"
    reward.__doc__ = f"1.0 when {_task_name(task)}.{attribute}(completion, row) is true, else 0.0."
    return reward


def check_reward(task: Any) -> RewardFn:
    """Reward from a task's `check(completion, row) -> bool`, the row rebuilt from the columns."""
    return _task_reward(task, "check", "check")


def format_reward(task: Any) -> RewardFn:
    """Reward from a task's `format_ok(completion, row) -> bool`, the row rebuilt from the columns."""
    return _task_reward(task, "format_ok", "format")
