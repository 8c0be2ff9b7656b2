"""Reward functions written for TRL run unchanged: TRL's documented examples through the real
sampling path (``rl.sample_and_score`` on a tiny model), standard and conversational rows, and in
GRPO, PPO and best-of-N runs: ``trainer_state`` per step, ``log_metric`` in metrics.jsonl and
``log_extra`` in samples.jsonl."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import DataConfig, SamplingConfig, load_config
from posttrain.recipes import best_of_n, grpo, ppo
from posttrain.rewards.base import TrainerState
from posttrain.rl import sample_and_score
from posttrain.tracking import read_metrics

# ---- TRL's documented reward functions, as its GRPO docs write them ----


def reward_len(completion_ids, **kwargs):  # Example 1: longer completions, in tokens
    return [float(len(ids)) for ids in completion_ids]


def reward_chars(completions, **kwargs):  # Example 1.1, standard format: in characters
    return [float(len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):  # Example 2, conversational format
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def boxed_reward(completions, ground_truth, **kwargs):  # Example 3, standard format
    matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]


def math_reward_func(prompts, completions, task, **kwargs):  # Example 4: None where it does not judge
    return [1.0 if t == "math" else None for prompt, t in zip(prompts, task)]


async def async_reward_func(prompts, completions, **kwargs):  # Example 5
    await asyncio.sleep(0.01)
    return [1.0 if completion else 0.0 for completion in completions]


class ContentLength:  # a callable object
    def __call__(self, completions, **kwargs):
        return [float(len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


def scaled_len(completion_ids, scale, **kwargs):
    return [scale * len(ids) for ids in completion_ids]


def truth_value(ground_truth, **kwargs):  # the row's own column value, aligned with each sample
    return [float(gt) for gt in ground_truth]


def curriculum(completions, trainer_state, **kwargs):  # dynamic shaping from the trainer's state
    return [trainer_state.global_step / trainer_state.max_steps] * len(completions)


# expected score of each sample from (text, completion ids, row, prompt as the model saw it)
Expect = Callable[[str, list[int], dict[str, Any]], float | None]
COMMON: list[tuple[str, Any, Expect]] = [
    ("reward_len", reward_len, lambda text, ids, row: float(len(ids))),
    ("math_reward_func", math_reward_func,
     lambda text, ids, row: 1.0 if row["task"] == "math" else None),
    ("async_reward_func", async_reward_func, lambda text, ids, row: 1.0),  # a completion is never empty
    ("ContentLength", ContentLength(), lambda text, ids, row: float(len(text))),
    ("scaled_len", functools.partial(scaled_len, scale=0.5), lambda text, ids, row: 0.5 * len(ids)),
    ("truth_value", truth_value, lambda text, ids, row: float(row["ground_truth"])),
    ("curriculum", curriculum, lambda text, ids, row: 3 / 8),
]
STANDARD = [
    *COMMON,
    ("reward_chars", reward_chars, lambda text, ids, row: float(len(text))),
    ("boxed_reward", boxed_reward,
     lambda text, ids, row: float(bool(re.search(r"\\boxed\{(.*?)\}", text))
                                  and re.search(r"\\boxed\{(.*?)\}", text).group(1) == row["ground_truth"])),
]
CONVERSATIONAL = [
    *COMMON,
    ("format_reward_func", format_reward_func,
     lambda text, ids, row: 1.0 if re.match(r"^<think>.*?</think><answer>.*?</answer>$", text) else 0.0),
]


def _rows(conversational: bool) -> list[dict[str, Any]]:
    texts = ["What is 2+2?", "Write a function that returns the sum of two numbers."]
    return [{"prompt": [{"role": "user", "content": text}] if conversational else text,
             "task": task, "ground_truth": truth}
            for text, task, truth in zip(texts, ["math", "code"], ["4", "7"])]


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_trl_documented_reward_functions_through_sampling(tiny_model: torch.nn.Module, tokenizer: Any,
                                                         conversational: bool) -> None:
    seen: dict[str, Any] = {}

    def spy(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, columns=kwargs)
        return [None] * len(completions)

    table = CONVERSATIONAL if conversational else STANDARD
    rows = _rows(conversational)
    fns = [(name, fn, 1.0) for name, fn, _ in table] + [("spy", spy, 1.0)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=5, dtype="float32")
    data = DataConfig(system_prompt="Answer briefly.")
    state = TrainerState(global_step=3, max_steps=8)
    rollouts, scores, sample_rows = sample_and_score(tiny_model, tokenizer, rows, fns, 2, sampling, data,
                                                     seed=0, trainer_state=state)
    assert sample_rows == [rows[0], rows[0], rows[1], rows[1]]
    for name, _, expect in table:
        want = [expect(text, ids, row) for text, ids, row in zip(rollouts.texts, rollouts.completion_ids,
                                                                 sample_rows)]
        got = [None if value != value else value for value in scores.per_fn[name].tolist()]
        assert got == pytest.approx(want), name
    assert seen["completion_ids"] == rollouts.completion_ids
    assert seen["columns"] == {"task": ["math", "math", "code", "code"], "ground_truth": ["4", "4", "7", "7"]}
    if conversational:  # messages in (with the system prompt the model saw), an assistant turn out
        system = {"role": "system", "content": "Answer briefly."}
        assert seen["prompts"] == [[system, *row["prompt"]] for row in sample_rows]
        assert seen["completions"] == [[{"role": "assistant", "content": text}] for text in rollouts.texts]
    else:  # strings in, strings out
        assert seen["prompts"] == [row["prompt"] for row in sample_rows]
        assert seen["completions"] == rollouts.texts


def _logging_reward(calls: list[tuple[int, int]]) -> Any:
    """A reward that records the trainer state it sees and logs a metric and a column, as TRL's
    Example 6 does."""

    def tokens_logged(completions, completion_ids, trainer_state, log_extra, log_metric, **kwargs):
        calls.append((trainer_state.global_step, trainer_state.max_steps))
        lengths = [len(ids) for ids in completion_ids]
        log_extra("token_count", lengths)
        log_metric("mean_tokens", sum(lengths) / len(lengths))
        return [float(length) for length in lengths]

    return tokens_logged


def _samples(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def test_grpo_passes_trainer_state_and_logs_what_functions_log(tiny_model_dir: str, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    config = load_config(grpo.Config, None, [
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={tmp_path}", "run.name=t",
        "run.progress=false", "run.steps=3", "prompts_per_step=2", "samples_per_prompt=2",
        "micro_batch_size=4", "sampling.max_new_tokens=5", "sampling.dtype=float32", "data.train=arithmetic",
        "data.train_size=8", "data.eval_size=0"])
    run_dir = grpo.train(config, reward_fns=[_logging_reward(calls)])
    assert calls == [(0, 3), (1, 3), (2, 3)]  # steps finished before each rollout, as in TRL
    samples = _samples(run_dir)
    assert [s["token_count"] for s in samples] == [s["tokens"] for s in samples]
    metrics = [m for m in read_metrics(run_dir) if "rollout/mean_tokens" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        tokens = [s["tokens"] for s in samples if s["step"] == m["step"]]
        assert m["rollout/mean_tokens"] == pytest.approx(sum(tokens) / len(tokens))


def test_ppo_and_held_out_scoring_use_the_convention(tiny_model_dir: str, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    config = load_config(ppo.Config, None, [
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={tmp_path}", "run.name=t",
        "run.progress=false", "run.steps=2", "run.eval_every=1", "prompts_per_step=2", "samples_per_prompt=2",
        "micro_batch_size=4", "sampling.max_new_tokens=4", "sampling.dtype=float32", "data.train=arithmetic",
        "data.train_size=8", "data.eval_size=2"])
    run_dir = ppo.train(config, reward_fns=[_logging_reward(calls)])
    # held-out before training (0), step 1's rollout (0), held-out after it (1), step 2's rollout (1),
    # the final held-out (2)
    assert calls == [(0, 2), (0, 2), (1, 2), (1, 2), (2, 2)]
    samples = _samples(run_dir)
    assert [s["token_count"] for s in samples] == [s["tokens"] for s in samples]
    keys = set().union(*read_metrics(run_dir))
    assert {"rollout/mean_tokens", "eval/greedy/mean_tokens"} <= keys


def test_best_of_n_passes_trainer_state_and_logs_metrics(tiny_model_dir: str, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    config = load_config(best_of_n.Config, None, [
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={tmp_path}", "run.name=t",
        "run.progress=false", "rounds=2", "n=2", "prompts_per_round=2", "batch_size=2",
        "sampling.max_new_tokens=4", "sampling.dtype=float32", "data.train=arithmetic", "data.train_size=8",
        "data.eval_size=0"])
    run_dir = best_of_n.train(config, reward_fns=[_logging_reward(calls)])
    assert calls == [(0, 2), (1, 2)]
    assert [m["step"] for m in read_metrics(run_dir) if "rollout/mean_tokens" in m] == [1, 2]
