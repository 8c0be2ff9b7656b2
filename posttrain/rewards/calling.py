"""How reward functions are called: TRL's keyword arguments, `async def` functions, logging callbacks.

TRL 1.16's GRPOTrainer calls every reward function as

    fn(prompts=..., completions=..., completion_ids=..., **dataset_columns,
       trainer_state=..., log_extra=..., log_metric=...)

with, for a conversational row (its prompt is a list of messages), the prompt as messages and each
completion as ``[{"role": "assistant", "content": text}]``, and for a standard row (a string prompt)
both as strings. ``reward_inputs`` builds those shapes from rows and sampled texts; ``call_reward_fns``
makes the calls: plain functions one after another, the awaitables that ``async def`` functions
return all at once on one event loop (kept for the whole process, so an async client a function
creates stays bound to a live loop), and a failing call repeated per sample to name the sample.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from posttrain.errors import RewardError

# Keyword arguments every reward function receives besides the dataset's own columns.
TRAINER_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


@dataclass
class TrainerState:
    """What TRL passes as ``trainer_state`` (the attributes of transformers' TrainerState that
    describe progress): ``global_step`` = training steps finished before these samples were scored
    (0 at the first step, as in TRL), ``max_steps`` = the run's ``run.steps``. Held-out scoring after
    step k sees ``global_step = k``."""

    global_step: int = 0
    max_steps: int = 0


@dataclass
class RewardLog:
    """What reward functions logged while scoring one batch of ``n`` samples: ``metrics`` (name ->
    every value given to ``log_metric``; the step logs their mean) and ``extra`` (column -> one value
    per sample, given to ``log_extra``)."""

    n: int
    metrics: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def callbacks(self, fn_name: str) -> tuple[Callable[[str, Sequence[Any]], None],
                                               Callable[[str, Any], None]]:
        """``(log_extra, log_metric)`` for the function ``fn_name``; a bad call raises RewardError
        naming the function."""

        def log_extra(column: str, values: Sequence[Any]) -> None:
            if not isinstance(column, str) or not column:
                raise RewardError(f"reward function '{fn_name}' called log_extra with column {column!r}; "
                                  "expected a non-empty string")
            is_list = isinstance(values, Sequence) and not isinstance(values, str)
            if not is_list or len(values) != self.n:
                got = f"{len(values)} values" if is_list else type(values).__name__
                raise RewardError(f"reward function '{fn_name}' called log_extra('{column}', ...) with "
                                  f"{got}; expected a list of {self.n} (one per completion)")
            if column in self.extra:
                raise RewardError(f"reward function '{fn_name}' logged column '{column}' that was already "
                                  "logged for this batch; give each column one list of values")
            self.extra[column] = list(values)

        def log_metric(name: str, value: Any) -> None:
            if not isinstance(name, str) or not name:
                raise RewardError(f"reward function '{fn_name}' called log_metric with name {name!r}; "
                                  "expected a non-empty string")
            if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                raise RewardError(f"reward function '{fn_name}' called log_metric('{name}', {value!r}); "
                                  "expected a finite number")
            self.metrics.setdefault(name, []).append(float(value))

        return log_extra, log_metric


def is_conversational(row: dict[str, Any]) -> bool:
    """TRL's test: the row's prompt (or, without one, its ``messages``) is a list of messages."""
    return isinstance(row["prompt"] if "prompt" in row else row.get("messages"), list)


def reward_inputs(rows: Sequence[dict[str, Any]], messages: Sequence[Any],
                  texts: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """``(prompts, completions)`` as TRL gives them to reward functions, one per sample: sample i
    comes from ``rows[i]``, prompted with ``messages[i]`` (what the model saw, as chat messages) and
    sampled ``texts[i]``. Conversational rows give messages and ``[{"role": "assistant", "content":
    text}]``; standard rows give the row's prompt string and the text."""
    prompts: list[Any] = []
    completions: list[Any] = []
    for row, prompt, text in zip(rows, messages, texts, strict=True):
        chat = is_conversational(row)
        prompts.append(prompt if chat else row["prompt"])
        completions.append([{"role": "assistant", "content": text}] if chat else text)
    return prompts, completions


_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def _event_loop() -> asyncio.AbstractEventLoop:
    """One event loop on a daemon thread per process (a forked child starts its own): it works even
    when the caller's thread already runs a loop (a notebook), and outlives each batch."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="posttrain-async-rewards", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]


def _await_all(awaitables: list[Awaitable[Any]]) -> list[Any]:
    """The results of the awaitables, run concurrently; an exception is returned in its place."""
    if not awaitables:
        return []

    async def gather() -> list[Any]:
        return await asyncio.gather(*awaitables, return_exceptions=True)

    return asyncio.run_coroutine_threadsafe(gather(), _event_loop()).result()


def _call_now(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """fn's result (an awaitable for an ``async def`` function), or the exception it raised."""
    try:
        result = fn(**kwargs)
    except Exception as error:
        return error
    return result


def _per_row(value: Any, n: int) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n


def short_repr(value: Any, limit: int = 60) -> str:
    """repr(value) cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failing_sample(name: str, fn: Callable[..., Any], kwargs: dict[str, Any], n: int,
                    batch_error: BaseException) -> RewardError:
    """The error to raise for a call that failed on the batch: the first sample that fails alone
    (logging into a throw-away log), or the batch error when every sample alone succeeds."""
    for index in range(n):
        log_extra, log_metric = RewardLog(1).callbacks(name)
        one = {key: [value[index]] if _per_row(value, n) else value for key, value in kwargs.items()}
        one.update(log_extra=log_extra, log_metric=log_metric)
        result = _call_now(fn, one)
        if inspect.isawaitable(result):
            result = _await_all([result])[0]
        if isinstance(result, Exception):
            error = RewardError(
                f"reward function '{name}' raised {type(result).__name__}: {result} "
                f"on sample {index} (completion {short_repr(kwargs['completions'][index])})"
            )
            error.__cause__ = result
            return error
    error = RewardError(
        f"reward function '{name}' raised {type(batch_error).__name__}: {batch_error} "
        f"on the batch of {n} samples (each sample alone scored without error)"
    )
    error.__cause__ = batch_error
    return error


def call_reward_fns(fns: Sequence[tuple[str, Callable[..., Any]]], kwargs: dict[str, Any],
                    log: RewardLog) -> list[Any]:
    """Each function's raw result for the batch described by ``kwargs`` (every argument but the
    logging callbacks, which come from ``log``). Plain functions run in order; what ``async def``
    functions return is awaited concurrently afterwards. A call that raises is repeated per sample
    and reported as a RewardError naming the function and the first failing sample."""
    n = len(kwargs["completions"])
    results: list[Any] = []
    for name, fn in fns:
        log_extra, log_metric = log.callbacks(name)
        results.append(_call_now(fn, {**kwargs, "log_extra": log_extra, "log_metric": log_metric}))
    pending = [i for i, result in enumerate(results) if inspect.isawaitable(result)]
    for i, result in zip(pending, _await_all([results[i] for i in pending]), strict=True):
        results[i] = result
    for (name, fn), result in zip(fns, results, strict=True):
        if isinstance(result, RewardError):  # a logging callback's own message already names fn
            raise result
        if isinstance(result, Exception):
            error = _failing_sample(name, fn, kwargs, n, result)
            raise error from error.__cause__
    return results
