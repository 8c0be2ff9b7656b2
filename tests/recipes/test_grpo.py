"""GRPO end to end on a tiny model: learning, rollout logging, resume, reward errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import ConfigError, RewardError
from posttrain.recipes import grpo
from posttrain.tracking import read_metrics


def _config(tiny_model_dir: str, out: Path, *overrides: str) -> grpo.Config:
    return load_config(grpo.Config, None, [
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=4", "prompts_per_step=2", "samples_per_prompt=4",
        "micro_batch_size=4", "sampling.max_new_tokens=6", "sampling.dtype=float32", "optim.lr=1e-3",
        "data.train=arithmetic", "data.train_size=40", "data.eval_size=2", *overrides])


def vowel_start(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """Easy to learn for a random model: does the completion start with a lower-case vowel?"""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [1.0 if t[:1] in "aeiou" and t[:1] else 0.0 for t in texts]


def test_reward_rises_on_tiny_model(peaked_tiny_model_dir: str, tmp_path: Path) -> None:
    config = _config(peaked_tiny_model_dir, tmp_path, "run.steps=20", "prompts_per_step=4",
                     "samples_per_prompt=8", "micro_batch_size=16", "sampling.max_new_tokens=3",
                     "optim.lr=3e-3",
                     "data.eval_size=0")
    run_dir = grpo.train(config, reward_fns=[vowel_start])
    rewards = [m["rollout/reward"] for m in read_metrics(run_dir) if "rollout/reward" in m]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.4, f"reward did not rise: first steps {rewards[:5]}, last {rewards[-5:]}"
    entropies = [m["policy/entropy"] for m in read_metrics(run_dir) if "policy/entropy" in m]
    assert entropies[-1] < entropies[0]


def test_run_directory_contents(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir = grpo.train(_config(tiny_model_dir, tmp_path, "run.steps=2"))
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "summary.md", "final/config.json"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "plots").glob("*.png"))
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 * 4  # every rollout of every step
    assert {"prompt", "completion", "reward", "advantage", "reward/task_correct", "answer"} <= set(samples[0])
    metrics = read_metrics(run_dir)
    keys = set().union(*metrics)
    for key in ("rollout/reward", "rollout/frac_zero_std_groups", "rollout/clipped_ratio", "policy/entropy",
                "train/grad_norm", "eval/accuracy", "eval/format", "time/rollout_s"):
        assert key in keys, key


@pytest.mark.parametrize("beta", ["0.0", "0.5"])  # with β > 0 the reference must stay the start
def test_killed_run_resumes_to_same_weights(tiny_model_dir: str, tmp_path: Path, beta: str) -> None:
    from safetensors.torch import load_file

    common = ("run.steps=4", "run.save_every=2", "data.eval_size=0", f"beta={beta}")
    # a reward the random model's samples differ on, so the policy moves and the KL term matters
    full = grpo.train(_config(tiny_model_dir, tmp_path / "a", *common), reward_fns=[vowel_start])
    if beta != "0.0":
        assert max(m.get("policy/kl", 0.0) for m in read_metrics(full)) > 0
    first_half = _config(tiny_model_dir, tmp_path / "b", *common)
    # simulate a kill after step 2: run only 2 steps of a 4-step schedule, then resume
    first_half.run.steps = 2
    grpo.train(first_half, reward_fns=[vowel_start])
    resumed = _config(tiny_model_dir, tmp_path / "b", *common, "run.resume=true")
    resumed_dir = grpo.train(resumed, reward_fns=[vowel_start])
    want = load_file(str(full / "final" / "model.safetensors"))
    got = load_file(str(resumed_dir / "final" / "model.safetensors"))
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_beta_loads_reference_and_logs_kl(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir = grpo.train(_config(tiny_model_dir, tmp_path, "run.steps=2", "beta=0.1", "data.eval_size=0"),
                         reward_fns=[vowel_start])
    kls = [m["policy/kl"] for m in read_metrics(run_dir) if "policy/kl" in m]
    assert len(kls) == 2 and all(k >= 0 for k in kls)


def test_raising_reward_names_function(tiny_model_dir: str, tmp_path: Path) -> None:
    def broken(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        raise KeyError("no such column")

    with pytest.raises(RewardError, match="broken"):
        grpo.train(_config(tiny_model_dir, tmp_path, "run.steps=1", "data.eval_size=0"), reward_fns=[broken])


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="samples_per_prompt must be >= 2"):
        load_config(grpo.Config, None, ["samples_per_prompt=1"])
    with pytest.raises(ConfigError, match="'loss_agg' must be one of sequence_mean, token_mean, constant"):
        load_config(grpo.Config, None, ["loss_agg=mean"])
    with pytest.raises(ConfigError, match="reward_weights has 1 values for 2 rewards"):
        load_config(grpo.Config, None, ["reward_weights=[1.0]"])
    with pytest.raises(ConfigError, match=r"optimizer_steps_per_rollout must be in 1\.\.8"):
        load_config(grpo.Config, None, ["prompts_per_step=2", "samples_per_prompt=4",
                                        "optimizer_steps_per_rollout=9"])


class _RecordingStepper:
    """Stands in for Stepper: backward as usual, each step records the gradients and clears them."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.steps: list[list[torch.Tensor]] = []

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> dict[str, float]:
        self.steps.append([p.grad.clone() for p in self.model.parameters()])
        self.model.zero_grad(set_to_none=False)
        return {}


def test_optimizer_steps_per_rollout_steps_once_per_mini_batch(tiny_model: torch.nn.Module) -> None:
    config = load_config(grpo.Config, None, ["model.autocast=none", "prompts_per_step=2",
                                             "samples_per_prompt=2", "micro_batch_size=1",
                                             "optimizer_steps_per_rollout=2"])
    ids = torch.randint(5, 500, (4, 7), generator=torch.Generator().manual_seed(0))
    ids[1, :3], ids[3, :3] = ids[0, :3], ids[2, :3]  # groups share their 3-token prompt
    completion = torch.zeros_like(ids)
    completion[:, 3:] = 1
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}

    def run(advantages: list[float]) -> list[list[torch.Tensor]]:
        stepper = _RecordingStepper(tiny_model)
        grpo.policy_update(config, tiny_model, stepper, None, batch, torch.tensor(advantages),
                           completion.float())
        return stepper.steps

    first, second = run([1.0, -1.0, 0.5, -0.5]), run([1.0, -1.0, -2.0, 3.0])
    assert len(first) == 2  # two mini-batches of two sequences, one optimizer step each
    # the first step sees only the first group: changing the second group's advantages leaves it alone
    assert all(torch.equal(a, b) for a, b in zip(first[0], second[0]))
    assert not all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_lr_schedule_spans_every_optimizer_step_of_the_run(tiny_model_dir: str, tmp_path: Path) -> None:
    config = _config(tiny_model_dir, tmp_path, "run.steps=2", "optimizer_steps_per_rollout=2",
                     "optim.schedule=linear", "optim.warmup_steps=0", "data.eval_size=0")
    lrs = [m["train/lr"] for m in read_metrics(grpo.train(config)) if "train/lr" in m]
    # 4 optimizer steps, linear decay: factors 1, 3/4 (rollout 1), 1/2, 1/4 (rollout 2); the last is logged
    assert lrs == pytest.approx([0.75e-3, 0.25e-3])
