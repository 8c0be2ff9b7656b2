"""Best-of-N: the selection, the SFT data it writes (read back by the SFT loader), rounds that learn
on a tiny model, truncated responses, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import load_config
from posttrain.data.formats import load_rows
from posttrain.errors import ConfigError
from posttrain.recipes import best_of_n
from posttrain.tracking import read_metrics

NAN = math.nan


def _config(model_dir: str, out: Path, *overrides: str) -> best_of_n.Config:
    return load_config(best_of_n.Config, None, [
        f"model.name={model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "n=4", "prompts_per_round=3", "sampling.max_new_tokens=8",
        "sampling.dtype=float32", "optim.lr=1e-3", "batch_size=4", "micro_batch_size=4",
        "data.train=arithmetic", "data.train_size=40", "data.eval_size=2", *overrides])


def test_select_keeps_the_argmax_of_eligible_rewards() -> None:
    rewards = torch.tensor([[0.1, 0.9, 0.9, 0.3], [0.5, NAN, 0.2, 0.7], [NAN] * 4, [0.4, 0.8, 0.1, 0.0]])
    eligible = torch.ones(4, 4, dtype=torch.bool)
    eligible[3, 1] = False  # e.g. cut at max_new_tokens
    # a tie goes to the first sample; NaN (no reward) and ineligible samples never win
    assert best_of_n.select(rewards, eligible, "best", None) == [[1], [3], [], [0]]
    assert best_of_n.select(rewards, eligible, "best", 0.6) == [[1], [3], [], []]
    assert best_of_n.select(rewards, eligible, "all", 0.3) == [[1, 2, 3], [0, 3], [], [0]]


def test_rounds_write_the_best_responses_as_sft_data(tiny_model_dir: str, tmp_path: Path) -> None:
    batches: list[list[tuple[str, float]]] = []

    def spread(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        """Distinct scores for distinct texts; every call is recorded."""
        texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
        scores = [sum(map(ord, text)) % 97 / 97 for text in texts]
        batches.append(list(zip(texts, scores)))
        return scores

    config = _config(tiny_model_dir, tmp_path, "rounds=2", "drop_truncated=false")
    run_dir = best_of_n.train(config, reward_fns=[spread])
    sampled = [batch for batch in batches if len(batch) == 3 * 4]  # the rest: held-out evaluations
    assert len(sampled) == 2
    for round_, batch in enumerate(sampled, start=1):
        path = run_dir / f"round-{round_}" / "data.jsonl"
        rows = load_rows(path, "conversations")  # what `posttrain sft` reads
        groups = [batch[p * 4:(p + 1) * 4] for p in range(3)]
        assert len(rows) == sum(any(text.strip() for text, _ in group) for group in groups)
        for row in rows:
            group = next(g for g in groups if row["completion"] in dict(g))
            assert row["reward"] == pytest.approx(max(score for text, score in group if text.strip()))
            assert row["round"] == round_ and row["prompt"][-1]["role"] == "user" and "answer" in row
        assert (run_dir / f"round-{round_}" / "sft" / "final" / "config.json").exists()
        assert not (run_dir / f"round-{round_}" / "sft" / "checkpoints").exists()  # no resume: dropped
    metrics = read_metrics(run_dir)
    assert sorted({m["step"] for m in metrics if "eval/reward" in m}) == [0, 1, 2]
    per_round = [m for m in metrics if "rollout/kept_fraction" in m]
    assert [m["step"] for m in per_round] == [1, 2]
    assert {"rollout/best_reward", "rollout/reward", "sft/loss_last", "time/sft_s"} <= per_round[0].keys()
    assert (run_dir / "final" / "config.json").exists()
    assert "eval_after/reward" in (run_dir / "summary.md").read_text()


def vowel_start(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """Easy to learn for a random model: does the completion start with a lower-case vowel?"""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [1.0 if t[:1] in "aeiou" and t[:1] else 0.0 for t in texts]


def test_fine_tuning_on_the_best_raises_the_next_rounds_reward(peaked_tiny_model_dir: str,
                                                               tmp_path: Path) -> None:
    config = _config(peaked_tiny_model_dir, tmp_path, "rounds=2", "n=8", "prompts_per_round=16",
                     "min_reward=1", "drop_truncated=false", "sampling.max_new_tokens=3", "sft_epochs=10",
                     "optim.lr=3e-3", "optim.schedule=constant", "batch_size=16", "micro_batch_size=16",
                     "data.eval_size=0")
    run_dir = best_of_n.train(config, reward_fns=[vowel_start])
    rewards = [m["rollout/reward"] for m in read_metrics(run_dir) if "rollout/reward" in m]
    assert rewards[1] > rewards[0] + 0.3, rewards  # round 2 samples from the fine-tuned model
    rows = [json.loads(line) for line in (run_dir / "round-1" / "data.jsonl").read_text().splitlines()]
    assert rows and all(row["reward"] == 1.0 for row in rows)  # min_reward 1: only vowel starts


def test_truncated_responses_are_never_kept(tiny_model_dir: str, tmp_path: Path) -> None:
    # two new tokens: a random model does not end a response that fast, so every one is cut
    config = _config(tiny_model_dir, tmp_path, "sampling.max_new_tokens=2", "data.eval_size=0")
    run_dir = best_of_n.train(config, reward_fns=[vowel_start])
    (metrics,) = [m for m in read_metrics(run_dir) if "rollout/kept_fraction" in m]
    assert metrics["rollout/clipped_ratio"] == 1.0 and metrics["rollout/kept_fraction"] == 0.0
    assert (run_dir / "round-1" / "data.jsonl").read_text() == ""
    assert not (run_dir / "round-1" / "sft").exists()  # nothing to fine-tune on


def test_config_errors() -> None:
    cases = {
        "keep=first": "'keep' must be one of best, all; got 'first'",
        "keep=all": "keep: all needs min_reward",
        "rounds=2": "rounds > 1 needs sft: true",
        "run.resume=true": "run.resume: best-of-n does not resume",
        "n=0": "'n' must be >= 1; got 0",
        "reward_weights=[1.0, 2.0]": "reward_weights has 2 values for 1 rewards",
    }
    for override, message in cases.items():
        extra = ["sft=false"] if override == "rounds=2" else []
        with pytest.raises(ConfigError, match=message):
            load_config(best_of_n.Config, None, [override, *extra])
