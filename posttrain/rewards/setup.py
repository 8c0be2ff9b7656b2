"""Turn a recipe's reward settings into the ``(name, function, weight)`` list that scoring takes.

``task_correct`` and ``task_format`` are the data task's own ``check`` and ``format_ok`` as
rewards; anything else is a built-in name or ``path/file.py:function`` (see ``resolve_reward``).
Python callables passed to a recipe's ``train`` replace the configured list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from posttrain.errors import ConfigError
from posttrain.rewards.base import check_reward, format_reward, resolve_reward


def build_reward_fns(
    specs: list[str], weights: list[float], task: Any, python_fns: list[Callable[..., Any]] | None = None
) -> list[tuple[str, Any, float]]:
    entries: list[tuple[str, Any]] = []
    if python_fns:
        entries = [resolve_reward(fn) for fn in python_fns]
    else:
        for spec in specs:
            if spec in ("task_correct", "task_format"):
                if task is None:
                    raise ConfigError(f"reward '{spec}' needs a task: set data.task (e.g. arithmetic)")
                entries.append((spec, check_reward(task) if spec == "task_correct" else format_reward(task)))
            else:
                entries.append(resolve_reward(spec))
    if not entries:
        raise ConfigError("no reward functions: set `rewards` (e.g. [task_format, task_correct])")
    if weights and len(weights) != len(entries):
        raise ConfigError(f"reward_weights has {len(weights)} values for {len(entries)} reward functions")
    weights = weights or [1.0] * len(entries)
    return [(name, fn, float(w)) for (name, fn), w in zip(entries, weights)]


def reward_metrics(scores: Any, prefix: str = "rollout/reward") -> dict[str, float]:
    """Mean total reward, its std, and each function's mean (NaN entries ignored)."""

    def nanmean(t: torch.Tensor) -> float:
        valid = t[~torch.isnan(t)]
        return float(valid.mean()) if valid.numel() else float("nan")

    total = scores.total
    valid = total[~torch.isnan(total)]
    metrics = {prefix: nanmean(total), f"{prefix}_std": float(valid.std()) if valid.numel() > 1 else 0.0}
    metrics.update({f"{prefix}/{name}": nanmean(values) for name, values in scores.per_fn.items()})
    return metrics
