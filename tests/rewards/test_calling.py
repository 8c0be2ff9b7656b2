"""TRL's calling convention at the scoring level: arguments, async functions, logging callbacks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from posttrain.errors import ConfigError, RewardError
from posttrain.rewards.base import RewardScores, TrainerState, score_completions
from posttrain.rewards.calling import reward_inputs

CHAT_ROW = {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}
TEXT_ROW = {"prompt": "2+2 =", "answer": "4"}


def test_reward_inputs_follow_the_row_format() -> None:
    system = [{"role": "system", "content": "Be brief."}]
    messages = [system + CHAT_ROW["prompt"], [*system, {"role": "user", "content": "2+2 ="}]]
    prompts, completions = reward_inputs([CHAT_ROW, TEXT_ROW], messages, [" 4", " 5"])
    assert prompts == [messages[0], "2+2 ="]  # what the model saw, or the row's own string
    assert completions == [[{"role": "assistant", "content": " 4"}], " 5"]
    messages_row = {"messages": [{"role": "user", "content": "hi"}]}
    assert reward_inputs([messages_row], [messages_row["messages"]], ["yo"])[1] == [
        [{"role": "assistant", "content": "yo"}]
    ]


def test_async_functions_run_concurrently_and_mix_with_plain_ones() -> None:
    # each waits for the other to start: they only finish if awaited at the same time
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    def waits_for(me: str, other: str) -> Any:
        async def reward(completions: list[str], **kwargs: Any) -> list[float]:
            started[me].set()
            await asyncio.wait_for(started[other].wait(), timeout=10)
            return [1.0] * len(completions)

        return reward

    def plain(completions: list[str], **kwargs: Any) -> list[float]:
        return [0.5] * len(completions)

    fns = [("a", waits_for("a", "b"), 1.0), ("plain", plain, 1.0), ("b", waits_for("b", "a"), 1.0)]
    # Events made here bind to the scoring loop on first use; Python >= 3.10 allows that.
    scores = score_completions(fns, ["p", "p"], ["x", "y"], {})
    assert scores.total.tolist() == [2.5, 2.5]


def test_async_functions_work_inside_a_running_event_loop() -> None:
    async def judge(completions: list[str], **kwargs: Any) -> list[float]:
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]

    async def notebook_cell() -> RewardScores:  # Jupyter runs cells inside an event loop
        return score_completions([("judge", judge, 1.0)], ["p"], ["abc"], {})

    assert asyncio.run(notebook_cell()).total.tolist() == [3.0]


def test_async_errors_name_the_function_and_sample() -> None:
    async def picky(completions: list[str], **kwargs: Any) -> list[float]:
        if "bad" in completions:
            raise ValueError("cannot judge")
        return [1.0] * len(completions)

    with pytest.raises(RewardError,
                       match=r"'picky' raised ValueError: cannot judge on sample 1 \(completion 'bad'\)"):
        score_completions([("picky", picky, 1.0)], ["p", "p"], ["ok", "bad"], {})

    async def returns_nan(completions: list[str], **kwargs: Any) -> list[float]:
        return [float("nan")] * len(completions)

    with pytest.raises(RewardError, match="'returns_nan' returned nan for row 0; rewards must be finite"):
        score_completions([("returns_nan", returns_nan, 1.0)], ["p"], ["x"], {})


def test_log_metric_and_log_extra_are_collected() -> None:
    def accuracy(completions: list[str], answer: list[str], log_extra: Any, log_metric: Any,
                 **kwargs: Any) -> list[float]:
        rewards = [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]
        if any(rewards):  # a column may be logged for some batches only
            log_extra("golden_answer", list(answer))
        log_metric("accuracy", sum(rewards) / len(rewards))
        return rewards

    async def also_accuracy(completions: list[str], log_metric: Any, **kwargs: Any) -> list[float]:
        log_metric("accuracy", 0.0)
        return [0.0] * len(completions)

    fns = [("accuracy", accuracy, 1.0), ("also", also_accuracy, 1.0)]
    first = score_completions(fns, ["p", "p"], ["4", "5"], {"answer": ["4", "4"]})
    assert first.logged.metrics == {"accuracy": [0.5, 0.0]}  # the step logs their mean, as TRL does
    assert first.logged.extra == {"golden_answer": ["4", "4"]}
    second = score_completions(fns, ["p"], ["5"], {"answer": ["4"]})
    both = RewardScores.concat([first, second])  # dynamic sampling's extra rounds
    assert both.logged.metrics == {"accuracy": [0.5, 0.0, 0.0, 0.0]}
    assert both.logged.extra == {"golden_answer": ["4", "4", None]}
    assert both.total.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda extra, metric: extra("col", [1]), r"'f' called log_extra\('col', ...\) with 1 values; "
                                                  r"expected a list of 2 \(one per completion\)"),
        (lambda extra, metric: extra("col", "ab"), r"'f' called log_extra\('col', ...\) with str"),
        (lambda extra, metric: (extra("col", [1, 2]), extra("col", [3, 4])),
         "'f' logged column 'col' that was already logged for this batch"),
        (lambda extra, metric: metric("m", "high"),
         r"'f' called log_metric\('m', 'high'\); expected a finite"),
        (lambda extra, metric: metric("m", float("inf")), r"'f' called log_metric\('m', inf\)"),
        (lambda extra, metric: metric("", 1.0), "'f' called log_metric with name ''"),
    ],
)
def test_bad_logging_calls_name_the_function(call: Any, message: str) -> None:
    def f(completions: list[str], log_extra: Any, log_metric: Any, **kwargs: Any) -> list[float]:
        call(log_extra, log_metric)
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=message):
        score_completions([("f", f, 1.0)], ["p", "p"], ["a", "b"], {})


def test_trainer_state_defaults_and_column_clashes() -> None:
    seen = []

    def spy(completions: list[str], trainer_state: TrainerState, **kwargs: Any) -> list[float]:
        seen.append((trainer_state.global_step, trainer_state.max_steps))
        return [0.0] * len(completions)

    score_completions([("spy", spy, 1.0)], ["p"], ["a"], {}, trainer_state=TrainerState(2, 7))
    score_completions([("spy", spy, 1.0)], ["p"], ["a"], {})  # outside training: step 0 of 0
    assert seen == [(2, 7), (0, 0)]
    with pytest.raises(ConfigError, match="dataset column\\(s\\) completion_ids, log_metric have the name "
                                          "of an argument every reward function receives"):
        score_completions([("spy", spy, 1.0)], ["p"], ["a"], {"completion_ids": [1], "log_metric": [2]})


def test_logged_names_must_not_replace_posttrains_own() -> None:
    from types import SimpleNamespace

    from posttrain.rl import logged_metrics
    from posttrain.rollout import Rollouts
    from posttrain.runner import log_rollout_samples

    def logs(completions: list[str], log_extra: Any, log_metric: Any, **kwargs: Any) -> list[float]:
        log_metric("reward", 1.0)
        log_extra("advantage", [0] * len(completions))
        return [1.0] * len(completions)

    scores = score_completions([("logs", logs, 1.0)], ["p"], ["a"], {})
    assert logged_metrics(scores, "greedy", {"reward": 1.0}) == {"greedy/reward": 1.0}
    with pytest.raises(RewardError, match="logged rollout/reward with log_metric, a metric posttrain logs"):
        logged_metrics(scores, "rollout", {"rollout/reward": 1.0})
    rollouts = Rollouts(prompt_ids=[[1]], completion_ids=[[2]], texts=["a"], logprobs=[torch.zeros(1)],
                        finish_reasons=["stop"], prompt_index=[0])
    run = SimpleNamespace(tracker=SimpleNamespace(log_samples=lambda step, rows: None))
    with pytest.raises(RewardError, match=r"column\(s\) advantage with log_extra; samples.jsonl uses"):
        log_rollout_samples(run, 1, rollouts, scores, [{"prompt": "p"}], torch.zeros(1))
