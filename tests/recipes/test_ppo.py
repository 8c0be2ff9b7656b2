"""PPO: the targets on a hand-computed trajectory, value clipping in the loss, learning on a tiny
model, the reward-model path, resume with the critic, config errors."""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_critic import tiny_reward_model_dir  # noqa: F401  (a fixture)

from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.recipes import ppo
from posttrain.rl import RolloutCorrection
from posttrain.tracking import read_metrics


def _config(model_dir: str, out: Path, *overrides: str) -> ppo.Config:
    return load_config(ppo.Config, None, [
        f"model.name={model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=4", "prompts_per_step=4", "micro_batch_size=4", "ppo_epochs=2",
        "sampling.max_new_tokens=6", "sampling.dtype=float32", "optim.lr=1e-3", "data.train=arithmetic",
        "data.train_size=40", "data.eval_size=2", *overrides])


def vowel_start(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """Easy to learn for a random model: does the completion start with a lower-case vowel?"""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [1.0 if t[:1] in "aeiou" and t[:1] else 0.0 for t in texts]


class _Given:
    """Stands in for the ActorCritic and the reference: fixed log-probs and values."""

    def __init__(self, logprobs: torch.Tensor, values: torch.Tensor) -> None:
        self.logprobs, self.values = logprobs, values

    def logprobs_and_values(self, *_: Any, **__: Any) -> tuple[torch.Tensor, None, torch.Tensor]:
        return self.logprobs, None, self.values

    @contextlib.contextmanager
    def active(self) -> Iterator[_Given]:
        yield self


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_targets_on_a_hand_computed_trajectory(monkeypatch: pytest.MonkeyPatch) -> None:
    # row 0: completion at columns 1-3; row 1: columns 1-2, cut at max_new_tokens; row 2: no reward
    completion = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 1, 0]])
    batch = {"input_ids": torch.zeros(3, 4, dtype=torch.long), "attention_mask": torch.ones(3, 4),
             "completion_mask": completion}
    old = t([[0, -1.0, -2.0, -0.5], [0, -1.5, -0.5, 0], [0, -1.0, -1.0, 0]])
    ref = t([[0, -1.2, -1.5, -0.5], [0, -1.0, -0.5, 0], [0, -3.0, -3.0, 0]])
    values = t([[0, 0.5, 0.4, 0.3], [0, 0.2, 0.1, 0], [0, 9.0, 9.0, 0]])
    reference = _Given(ref, values)
    monkeypatch.setattr(ppo, "token_logprobs", lambda model, *_, **__: (model.logprobs, None))
    config = load_config(ppo.Config, None, ["beta=0.1", "gamma=1.0", "lam=0.5", "missing_eos_penalty=0.5",
                                            "micro_batch_size=8"])
    scores, truncated = torch.tensor([1.0, 2.0, float("nan")]), torch.tensor([False, True, False])
    targets, metrics = ppo.ppo_targets(config, _Given(old, values), reference, batch, scores, truncated,
                                       beta=0.1)
    # rewards r_t = -0.1 (log π - log π_ref) + score at the last token (row 1: 2.0 - 0.5 = 1.5)
    #   row 0: [-0.02, 0.05, 1.0]; row 1: [0.05, 1.5]
    # GAE, γ = 1, λ = 0.5: row 0 δ = [-0.02 + 0.4 - 0.5, 0.05 + 0.3 - 0.4, 1.0 - 0.3] = [-0.12, -0.05, 0.7]
    #   A = [-0.12 + 0.5·0.3, -0.05 + 0.5·0.7, 0.7] = [0.03, 0.3, 0.7]
    #   row 1 δ = [0.05 + 0.1 - 0.2, 1.5 - 0.1] = [-0.05, 1.4], A = [-0.05 + 0.5·1.4, 1.4] = [0.65, 1.4]
    raw = [0.03, 0.3, 0.7, 0.65, 1.4]
    assert torch.allclose(targets["returns"], t([[0, 0.53, 0.7, 1.0], [0, 0.85, 1.5, 0], [0, 0, 0, 0]]),
                          atol=1e-6)
    mean, std = statistics.mean(raw), statistics.stdev(raw)
    whitened = [(a - mean) / std for a in raw]
    assert torch.allclose(targets["advantages"][0, 1:], torch.tensor(whitened[:3]), atol=1e-5)
    assert torch.allclose(targets["advantages"][1, 1:3], torch.tensor(whitened[3:]), atol=1e-5)
    assert torch.equal(targets["mask"][2], torch.zeros(4))  # a response nobody scored leaves the loss
    assert torch.equal(targets["advantages"][2], torch.zeros(4))
    # KL per response Σ (log π - log π_ref): 0.2 - 0.5 and -0.5; RLHF reward = score - β·KL
    assert metrics["policy/kl"] == pytest.approx(-0.4)
    assert metrics["rollout/rlhf_reward"] == pytest.approx(((1.0 + 0.03) + (1.5 + 0.05)) / 2)
    returns, old_values = [0.53, 0.7, 1.0, 0.85, 1.5], [0.5, 0.4, 0.3, 0.2, 0.1]
    explained = 1 - statistics.pvariance(raw) / statistics.pvariance(returns)
    assert metrics["value/explained_variance"] == pytest.approx(explained, abs=1e-5)
    assert metrics["value/mean"] == pytest.approx(statistics.mean(old_values))


def test_loss_clips_the_value_update(monkeypatch: pytest.MonkeyPatch) -> None:
    logprobs = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    values = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    fake = _Given(logprobs, values)
    fake.logprobs_and_values = lambda *_, **__: (logprobs, torch.zeros(1, 3), values)  # type: ignore[method-assign]
    b = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3),
         "completion_mask": torch.tensor([[0, 1, 1]]), "mask": t([[0, 1, 1]]),
         "old_logprobs": t([[0, -1.0, -2.0]]), "advantages": t([[0, 1.0, 3.0]]),
         "old_values": t([[0, 0.5, 2.1]]), "returns": t([[0, 2.0, 1.0]])}
    config = load_config(ppo.Config, None, ["vf_coef=0.1", "value_clip=0.2", "model.autocast=none"])
    loss, metrics = ppo._loss_of(config, fake, b, RolloutCorrection(config))(slice(0, 1))  # type: ignore
    # ratio 1: policy loss = -mean(A) = -2; value: token 1 moved 0.5 > 0.2, so V_clip = 0.7 and
    # ½·max(1², 1.3²) = 0.845; token 2 moved -0.1, ½·1² = 0.5; mean 0.6725
    assert float(loss.detach()) == pytest.approx(-2.0 + 0.1 * 0.6725)
    assert metrics["value/clipfrac"] == 0.5 and metrics["value/loss"] == pytest.approx(0.6725)
    loss.backward()
    assert values.grad[0, 1] == 0  # the clipped term holds: no gradient pushes V further from V_old
    assert float(values.grad[0, 2]) == pytest.approx(0.1 * (2.0 - 1.0) / 2)


def test_reward_rises_on_tiny_model(peaked_tiny_model_dir: str, tmp_path: Path) -> None:
    config = _config(peaked_tiny_model_dir, tmp_path, "run.steps=20", "prompts_per_step=64",
                     "micro_batch_size=64", "ppo_epochs=2", "sampling.max_new_tokens=3", "optim.lr=5e-3",
                     "beta=0.0", "data.eval_size=0")
    run_dir = ppo.train(config, reward_fns=[vowel_start])
    metrics = read_metrics(run_dir)
    rewards = [m["rollout/reward"] for m in metrics if "rollout/reward" in m]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.5, f"reward did not rise: first steps {rewards[:5]}, last {rewards[-5:]}"
    values = [m["value/mean"] for m in metrics if "value/mean" in m]
    assert values[0] == 0 and sum(values[-5:]) / 5 > 0.6  # the critic follows the return up


def test_run_with_a_reward_model_and_a_critic_from_it(tiny_model_dir: str, tiny_reward_model_dir: str,  # noqa: F811
                                                      tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir = ppo.train(_config(tiny_model_dir, tmp_path, "run.steps=2", "beta=0.1", "critic=separate",
                                f"rewards=reward_model:{tiny_reward_model_dir}", "critic_init=reward_model"))
    metrics = read_metrics(run_dir)
    keys = set().union(*metrics)
    for key in ("rollout/reward", "policy/kl", "policy/entropy", "policy/clipfrac", "value/loss",
                "value/explained_variance", "value/clipfrac", "train/grad_norm", "time/rollout_s",
                "time/update_s", "eval/reward", "eval/accuracy"):
        assert key in keys, key
    assert [m["step"] for m in metrics if "eval/reward" in m] == [0, 2]
    checkpoint = load_file(str(run_dir / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert "value_head.linear.weight" in checkpoint  # the critic is in the checkpoint
    assert any(k.startswith("critic_backbone.") for k in checkpoint)
    final = load_file(str(run_dir / "final" / "model.safetensors"))
    assert not any("value_head" in k or "critic" in k for k in final)  # final/ is the policy alone
    AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert list((run_dir / "plots").glob("*.png"))


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_killed_run_resumes_to_same_policy_and_critic(tiny_model_dir: str, tmp_path: Path,
                                                      critic: str) -> None:
    from safetensors.torch import load_file

    # adaptive β: the controller's state must come back too
    common = ("run.steps=4", "run.save_every=2", "data.eval_size=0", "beta=0.1", "kl_target=0.01",
              "kl_horizon=100", f"critic={critic}", "critic_lr=3e-3")  # the critic's own param group
    full = ppo.train(_config(tiny_model_dir, tmp_path / "a", *common), reward_fns=[vowel_start])
    first_half = _config(tiny_model_dir, tmp_path / "b", *common)
    first_half.run.steps = 2  # a kill after step 2: 2 steps of the 4-step schedule, then resume
    ppo.train(first_half, reward_fns=[vowel_start])
    resumed = ppo.train(_config(tiny_model_dir, tmp_path / "b", *common, "run.resume=true"),
                        reward_fns=[vowel_start])
    for name in ("final/model.safetensors", "checkpoints/step-00000004/model.safetensors"):
        want, got = load_file(str(full / name)), load_file(str(resumed / name))
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    betas = [[m["policy/beta"] for m in read_metrics(run) if "policy/beta" in m] for run in (full, resumed)]
    assert betas[0] == betas[1] and betas[0][0] != betas[0][-1]
    groups = torch.load(resumed / "checkpoints/step-00000004/optimizer.pt")["param_groups"]
    assert sorted(g["initial_lr"] for g in groups) == [1e-3, 3e-3]  # policy at optim.lr, critic its own


def test_config_errors() -> None:
    cases = {
        "critic=both": "'critic' must be one of shared, separate; got 'both'",
        "critic_init=reward_model": "critic_init: reward_model needs critic: separate",
        "lam=1.5": r"'lam' must be in \[0, 1\]; got 1.5",
        "clip_eps=0": r"'clip_eps' must be in \(0, 1\); got 0",
        "mini_batches=17": r"mini_batches must be in 1..16 \(P·G sequences\); got 17",
        "kl_target=6": "kl_target > 0 \\(adaptive β\\) needs beta > 0",
        "reward_weights=[1.0]": "reward_weights has 1 values for 2 rewards",
        "vf_coef=-1": "'vf_coef' must be >= 0; got -1",
    }
    for override, message in cases.items():
        extra = ["beta=0"] if override.startswith("kl_target") else []
        with pytest.raises(ConfigError, match=message):
            load_config(ppo.Config, None, [override, *extra])
    with pytest.raises(ConfigError, match=r"needs a reward model in 'rewards' \(reward_model:PATH\)"):
        load_config(ppo.Config, None, ["critic=separate", "critic_init=reward_model"])


LN3 = math.log(3)


def test_tis_weights_the_policy_loss_against_the_sampler() -> None:
    """rollout_correction: tis: each token's surrogate times min(exp(old - sampler), tis_cap)."""
    logprobs = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    fake = _Given(logprobs, torch.zeros(1, 3))
    fake.logprobs_and_values = lambda *_, **__: (logprobs, torch.zeros(1, 3), torch.zeros(1, 3))  # type: ignore
    # old - sampler = ln 3 (ratio 3, cut at 2) and ln 0.5: weights 2 and 0.5
    b = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3),
         "completion_mask": torch.tensor([[0, 1, 1]]), "mask": t([[0, 1, 1]]),
         "old_logprobs": t([[0, -1.0, -2.0]]), "sampler_logprobs": t([[0, -1 - LN3, -2 + math.log(2)]]),
         "advantages": t([[0, 1.0, 3.0]]), "old_values": t([[0, 0.0, 0.0]]), "returns": t([[0, 0.0, 0.0]])}
    config = load_config(ppo.Config, None, ["vf_coef=0.1", "model.autocast=none", "rollout_correction=tis"])
    correction = RolloutCorrection(config)
    loss, _ = ppo._loss_of(config, fake, b, correction)(slice(0, 1))  # type: ignore[arg-type]
    assert float(loss.detach()) == pytest.approx(-(2 * 1.0 + 0.5 * 3.0) / 2)
    metrics = correction.step_metrics()
    assert metrics["rollout/is_weight_mean"] == pytest.approx(1.25)
    assert metrics["rollout/is_ratio_max"] == pytest.approx(3) and metrics["rollout/is_truncated_frac"] == 0.5
    assert metrics["rollout/logprob_gap"] == pytest.approx(math.log(6) / 2)
    off = load_config(ppo.Config, None, ["vf_coef=0.1", "model.autocast=none"])
    plain, _ = ppo._loss_of(off, fake, b, RolloutCorrection(off))(slice(0, 1))  # type: ignore[arg-type]
    assert float(plain.detach()) == pytest.approx(-(1.0 + 3.0) / 2)
    assert RolloutCorrection(off).step_metrics() == {}
