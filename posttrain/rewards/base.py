"""The reward-function interface, loading reward functions by name, and scoring a batch with them.

A reward function is any callable with TRL's signature

    fn(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **columns)
        -> list[float | None]

called with keyword arguments only (see `posttrain.rewards.calling`). For a conversational row
(its prompt is a list of messages) the prompt is that list (system prompt included) and the
completion is `[{"role": "assistant", "content": text}]`; for a standard row (a string prompt)
both are strings (`completion_text` accepts either). `completion_ids` are the sampled token ids;
`columns` are the row's other dataset columns, one value per completion (`answer=[...]`);
`trainer_state.global_step` / `.max_steps` say how far training is; `log_metric(name, value)`
and `log_extra(column, values)` add to metrics.jsonl and samples.jsonl. Functions should accept
`**kwargs`. `None` means "does not apply to this sample": it is excluded, not scored 0. An
`async def` function is awaited, concurrently with the other async ones.
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
from posttrain.rewards.calling import (
    TRAINER_ARGUMENTS,
    RewardLog,
    TrainerState,
    call_reward_fns,
    short_repr,
)

__all__ = [
    "BUILTIN_REWARDS",
    "RewardFn",
    "RewardLog",
    "RewardScores",
    "TrainerState",
    "check_reward",
    "completion_text",
    "format_reward",
    "resolve_reward",
    "score_completions",
]

# Arguments a trainer passes that are not per-row dataset values.
_NOT_ROW_COLUMNS = tuple(name for name in TRAINER_ARGUMENTS if name not in ("prompts", "completions"))


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
            f"a reward must be a built-in name, 'file.py:function' or a callable, got {short_repr(spec)}"
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
    for that row, NaN when none did; `per_fn`: each function's raw scores, NaN for None;
    `logged`: what the functions gave `log_metric` and `log_extra` while scoring."""

    total: torch.Tensor  # [N] float32
    per_fn: dict[str, torch.Tensor]  # name -> [N] float32
    logged: RewardLog | None = None

    @staticmethod
    def concat(parts: Sequence[RewardScores]) -> RewardScores:
        """Several scored batches as one, in order (a column one batch did not log is None there)."""
        n = sum(len(part.total) for part in parts)
        logged = RewardLog(n)
        for part in parts:
            for name, values in (part.logged.metrics if part.logged else {}).items():
                logged.metrics.setdefault(name, []).extend(values)
        columns = {column for part in parts if part.logged for column in part.logged.extra}
        for column in sorted(columns):
            logged.extra[column] = [
                value
                for part in parts
                for value in (
                    part.logged.extra[column]
                    if part.logged and column in part.logged.extra
                    else [None] * len(part.total)
                )
            ]
        return RewardScores(
            total=torch.cat([part.total for part in parts]),
            per_fn={name: torch.cat([part.per_fn[name] for part in parts]) for name in parts[0].per_fn},
            logged=logged,
        )


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
                f"reward function '{name}' returned {type(value).__name__} {short_repr(value)} "
                f"for row {row}, expected a float or None"
            )
    return values


def score_completions(
    reward_fns: list[tuple[str, RewardFn, float]],
    prompts: list[Any],
    completions: list[Any],
    columns: dict[str, Any],
    *,
    completion_ids: list[list[int]] | None = None,
    trainer_state: TrainerState | None = None,
) -> RewardScores:
    """Score N completions with every (name, fn, weight); see RewardScores for the result.

    Each function is called as TRL calls it (see `posttrain.rewards.calling`): `prompts`,
    `completions`, `completion_ids`, every column of `columns` (one value per completion),
    `trainer_state`, `log_extra` and `log_metric`; `async def` functions run concurrently.
    total[i] = sum over functions f with a number for row i of weight_f * score_f[i], NaN if none.
    Raises RewardError naming the function (and the sample or row) on any bad call or output.
    """
    if not reward_fns:
        raise ConfigError("no reward functions given")
    names = [name for name, _, _ in reward_fns]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"reward function names must be unique, repeated: {', '.join(duplicates)}")
    clashes = sorted(set(columns) & set(TRAINER_ARGUMENTS))
    if clashes:
        raise ConfigError(
            f"dataset column(s) {', '.join(clashes)} have the name of an argument every reward function "
            "receives from the trainer; rename them in the data"
        )
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} completions; repeat each prompt per completion")
    log = RewardLog(n)
    kwargs = {
        "prompts": prompts,
        "completions": completions,
        "completion_ids": completion_ids,
        **columns,
        "trainer_state": trainer_state if trainer_state is not None else TrainerState(),
    }
    results = call_reward_fns([(name, fn) for name, fn, _ in reward_fns], kwargs, log)
    per_fn: dict[str, torch.Tensor] = {}
    total_N = torch.zeros(n, dtype=torch.float64)
    any_number_N = torch.zeros(n, dtype=torch.bool)
    for (name, _, weight), result in zip(reward_fns, results):
        scores_N = torch.tensor(_to_floats(name, result, n), dtype=torch.float64)
        has_number_N = ~torch.isnan(scores_N)
        total_N += torch.where(has_number_N, scores_N * weight, torch.zeros_like(scores_N))
        any_number_N |= has_number_N
        per_fn[name] = scores_N.float()
    total_N = torch.where(any_number_N, total_N, torch.full_like(total_N, math.nan))
    return RewardScores(total=total_N.float(), per_fn=per_fn, logged=log)


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
