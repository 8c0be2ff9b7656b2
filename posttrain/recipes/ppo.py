"""PPO: RLHF with a reward model, a frozen reference and a learned critic (InstructGPT's third step).

PPO (arXiv:1707.06347) with GAE (arXiv:1506.02438) on language, as in Ziegler et al.
(arXiv:1909.08593) and InstructGPT (arXiv:2203.02155), with the details of TRL's PPOTrainer and
"The N+ Implementation Details of RLHF with PPO" (arXiv:2403.17031). Four roles: the policy π
(trained), the reference π_ref (its starting weights, frozen), the reward model (frozen; or reward
functions, the same specs as GRPO: ``reward_model:PATH`` is a run of ``posttrain rm``) and the critic
V (trained; a value head on the policy's backbone or its own, ``posttrain.critic``). Each step:

1. take P prompts (``prompts_per_step``) and sample G responses to each (``samples_per_prompt``,
   default 1) with the rollout engine;
2. score each response once, at its end: s = the weighted sum of the rewards, minus
   ``missing_eos_penalty`` when the response was cut at max_new_tokens;
3. without gradients: log π_old and log π_ref of every response token, and the values V_old;
4. per-token rewards r_t = -β (log π_old - log π_ref), plus s on the last token;
5. GAE(γ, λ): advantages A_t and returns R_t = A_t + V_old; A whitened over the batch;
6. μ epochs (``ppo_epochs``) over the batch, shuffled into ``mini_batches`` optimizer steps each, of
   the clipped surrogate (ε; TIS-weighted with ``rollout_correction``) + ``vf_coef`` · the clipped value
   loss, both averaged over tokens;
7. with ``kl_target``, β follows Ziegler et al.'s proportional controller. Every ``run.eval_every``
   steps greedy held-out responses are scored by the rewards (``eval/reward``) and the task's check()
   (``eval/accuracy``). Checkpoints hold the policy and the critic; final/ the policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from posttrain.advantages import AdaptiveKLController, gae, kl_shaped_rewards, whiten
from posttrain.config import (
    ClusterConfig,
    DataConfig,
    HealthConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SamplingConfig,
)
from posttrain.critic import CRITICS, ActorCritic, load_actor_critic
from posttrain.data.sources import DataOrder, resolve_task
from posttrain.logprobs import token_logprobs
from posttrain.losses import policy_loss, value_loss
from posttrain.models import ReferencePolicy
from posttrain.rewards.base import TrainerState
from posttrain.rewards.setup import build_reward_fns
from posttrain.rl import (
    RolloutCorrection,
    config_problems,
    group_metrics,
    reference_policy,
    reward_evaluation,
    rollout_metrics,
    sample_and_score,
    scoring_temperature,
    training_batch,
    update_passes,
)
from posttrain.runner import held_out_metrics, log_rollout_samples, setup
from posttrain.training import Stepper, autocast, micro_batches

REWARD_MODEL = "reward_model:"
Tensors = dict[str, torch.Tensor]


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-6))
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    prompts_per_step: int = 16
    """P: prompts per step."""
    samples_per_prompt: int = 1
    """G: responses sampled per prompt (N = P·G sequences per step)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass."""
    ppo_epochs: int = 4
    """μ: passes over each rollout batch."""
    mini_batches: int = 1
    """Optimizer steps per pass: the N sequences, shuffled, split into this many mini-batches."""
    rewards: list[str] = field(default_factory=lambda: ["task_format", "task_correct"])
    """Rewards: reward_model:PATH (a `posttrain rm` run's final/), task_*, a built-in, or file.py:fn."""
    reward_weights: list[float] = field(default_factory=list)
    """One weight per reward (empty: all 1)."""
    beta: float = 0.05
    """β: per-token KL penalty against the reference, folded into the rewards; 0 loads no reference."""
    kl_target: float = 0.0
    """Adaptive β: the KL per response (nats) it steers towards (Ziegler et al.: 6); 0 keeps β fixed."""
    kl_horizon: float = 10000.0
    """Adaptive β: responses over which a KL error is corrected."""
    gamma: float = 1.0
    """γ: discount over the tokens of a response."""
    lam: float = 0.95
    """λ: GAE's bias-variance trade-off (1: Monte-Carlo returns, 0: one-step TD)."""
    clip_eps: float = 0.2
    """ε: the probability ratio is clipped to [1 - ε, 1 + ε]."""
    vf_coef: float = 0.1
    """Weight of the value loss in the loss."""
    value_clip: float = 0.2
    """Values move at most this far from V_old within a rollout batch (0: no clipping)."""
    critic: str = "shared"
    """shared (a value head on the policy's hidden states) or separate (a backbone of its own)."""
    critic_init: str = "policy"
    """A separate critic's starting backbone: policy, or reward_model (the reward_model:PATH in rewards)."""
    reference: str = "frozen"
    """Reference policy: frozen (a copy of the starting weights) or adapter (LoRA switched off)."""
    critic_lr: float = 0.0
    """The critic's learning rate (0: optim.lr); a new value head learns slowly at a policy's rate."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of a response cut at max_new_tokens (it never ended)."""
    rollout_correction: str = "none"
    """none, or tis: truncated importance weights against the sampler (as grpo's; on with max_staleness)."""
    tis_cap: float = 2.0
    """C, where the truncated importance weights of rollout_correction are cut (the paper's 2)."""

    def eval_metrics(self) -> list[str]:  # what run.keep_best may choose by
        return held_out_metrics(rewards=True)

    def check(self) -> list[str]:
        problems = config_problems(self, {"critic": CRITICS, "critic_init": ("policy", "reward_model"),
                                          "reference": ("frozen", "adapter")})
        if self.critic_init == "reward_model" and self.critic != "separate":
            problems.append("critic_init: reward_model needs critic: separate (shared is the policy's own)")
        if self.critic_init == "reward_model" and not any(r.startswith(REWARD_MODEL) for r in self.rewards):
            problems.append("critic_init: reward_model needs a reward model in 'rewards' (reward_model:PATH)")
        for key in ("gamma", "lam"):
            if not 0 <= getattr(self, key) <= 1:
                problems.append(f"'{key}' must be in [0, 1]; got {getattr(self, key)}")
        if not 0 < self.clip_eps < 1:
            problems.append(f"'clip_eps' must be in (0, 1); got {self.clip_eps}")
        for key in ("vf_coef", "value_clip", "kl_target", "missing_eos_penalty", "critic_lr"):
            if getattr(self, key) < 0:
                problems.append(f"'{key}' must be >= 0; got {getattr(self, key)}")
        if self.kl_target > 0 and (self.beta <= 0 or self.kl_horizon <= 0):
            problems.append("kl_target > 0 (adaptive β) needs beta > 0 (its start value) and kl_horizon > 0")
        if self.samples_per_prompt < 1:
            problems.append(f"samples_per_prompt must be >= 1; got {self.samples_per_prompt}")
        elif not 1 <= self.mini_batches <= self.prompts_per_step * self.samples_per_prompt:
            problems.append(f"mini_batches must be in 1..{self.prompts_per_step * self.samples_per_prompt} "
                            f"(P·G sequences); got {self.mini_batches}")
        return problems


def _rows(batch: Tensors, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch["input_ids"][rows], batch["attention_mask"][rows], batch["completion_mask"][rows]


def _mean(x_N: torch.Tensor, where_N: torch.Tensor) -> float:
    return float(x_N[where_N].mean()) if bool(where_N.any()) else 0.0


def ppo_targets(config: Config, ac: ActorCritic, reference: ReferencePolicy | None, batch: Tensors,
                scores_N: torch.Tensor, truncated_N: torch.Tensor,
                beta: float) -> tuple[Tensors, dict[str, float]]:
    """Steps 2-5: old log-probs and values, KL-shaped rewards, whitened GAE advantages, returns."""
    temperature = scoring_temperature(config.sampling)
    all_rows = list(micro_batches(batch["input_ids"].shape[0], config.micro_batch_size))
    with torch.no_grad(), autocast(config.model, batch["input_ids"].device):
        passes = [ac.logprobs_and_values(*_rows(batch, rows), temperature=temperature) for rows in all_rows]
        old_NT, values_NT = torch.cat([p[0] for p in passes]), torch.cat([p[2] for p in passes])
        ref_NT = old_NT  # β = 0: no reference, no penalty
        if reference is not None:
            with reference.active() as ref_model:
                ref_NT = torch.cat([token_logprobs(ref_model, *_rows(batch, rows), temperature=temperature)[0]
                                    for rows in all_rows])
    valid_N = ~torch.isnan(scores_N)  # no reward function applied: the response leaves the loss
    mask_NT = batch["completion_mask"].float() * valid_N[:, None]
    score_N = torch.nan_to_num(scores_N, nan=0.0) - config.missing_eos_penalty * truncated_N.float()
    rewards_NT = kl_shaped_rewards(score_N, old_NT, ref_NT, mask_NT, beta)
    advantages_NT, returns_NT = gae(rewards_NT, values_NT, mask_NT, config.gamma, config.lam)
    kl_N = ((old_NT - ref_NT) * mask_NT).sum(-1)
    _, before = value_loss(values_NT, values_NT, returns_NT, mask_NT, clip_range=None)
    metrics = {"value/explained_variance": before["explained_variance"],
               "value/mean": float((values_NT * mask_NT).sum() / mask_NT.sum().clamp(min=1))}
    if reference is not None:
        tokens = mask_NT.sum()
        metrics.update({"policy/kl": _mean(kl_N, valid_N), "policy/beta": beta,
                        "policy/kl_per_token": float(kl_N[valid_N].sum() / tokens) if tokens > 0 else 0.0,
                        "rollout/rlhf_reward": _mean(score_N - beta * kl_N, valid_N)})
    targets = {"old_logprobs": old_NT, "old_values": values_NT, "returns": returns_NT, "mask": mask_NT,
               "advantages": whiten(advantages_NT, mask_NT)}
    return targets, metrics


def _loss_of(config: Config, ac: ActorCritic, b: Tensors,
             correction: RolloutCorrection) -> Callable[[slice], tuple[torch.Tensor, dict[str, float]]]:
    """Step 6's loss on rows of the (shuffled) batch ``b``: clipped surrogate (TIS-weighted when the
    correction is on) + vf_coef · value loss."""
    temperature = scoring_temperature(config.sampling)

    def micro_loss(rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(config.model, b["input_ids"].device):
            logprobs_NT, entropy_NT, values_NT = ac.logprobs_and_values(
                *_rows(b, rows), temperature=temperature, with_entropy=True)
        mask_NT = b["mask"][rows]
        old_NT = b["old_logprobs"][rows]
        pg_loss, pg_metrics = policy_loss(logprobs_NT, old_NT, b["advantages"][rows], mask_NT,
                                          clip_eps_low=config.clip_eps, clip_eps_high=config.clip_eps,
                                          agg="token_mean",
                                          is_weights=correction.weights(old_NT, b, rows, mask_NT))
        vf_loss, vf_metrics = value_loss(values_NT, b["old_values"][rows], b["returns"][rows], mask_NT,
                                         clip_range=config.value_clip or None, agg="token_mean")
        metrics = {f"policy/{k}": v for k, v in pg_metrics.items()}
        metrics.update({"policy/loss": float(pg_loss.detach()), "value/loss": float(vf_loss.detach()),
                        "value/clipfrac": vf_metrics["value_clipfrac"],
                        "policy/entropy": float((entropy_NT * mask_NT).sum() / mask_NT.sum().clamp(min=1))})
        return pg_loss + config.vf_coef * vf_loss, metrics

    return micro_loss


def ppo_update(config: Config, ac: ActorCritic, stepper: Stepper, batch: Tensors,
               targets: Tensors) -> dict[str, float]:
    """Step 6: μ passes over the batch, each reshuffled, ``mini_batches`` optimizer steps each."""
    correction = RolloutCorrection(config)

    def shuffled_pass() -> tuple[torch.Tensor, Callable[[slice], tuple[torch.Tensor, dict[str, float]]]]:
        order_N = torch.randperm(len(targets["mask"])).to(targets["mask"].device)  # global RNG: resumes alike
        shuffled = {key: value[order_N] for key, value in {**batch, **targets}.items()}
        return shuffled["mask"], _loss_of(config, ac, shuffled, correction)

    metrics = update_passes(stepper, config.ppo_epochs, config.mini_batches, config.micro_batch_size,
                            "token_mean", shuffled_pass)
    metrics["train/loss"] = metrics.pop("loss", 0.0)
    return {**metrics, **correction.step_metrics()}


def train(config: Config, *, reward_fns: list[Callable[..., list[float | None]]] | None = None,
          train_rows: list[dict[str, Any]] | None = None,
          eval_rows: list[dict[str, Any]] | None = None) -> Path:
    """Run PPO; Python reward functions and rows override the config's. Returns the run directory."""
    rewards = build_reward_fns(config.rewards, config.reward_weights, resolve_task(config.data), reward_fns)
    critic_init = next((r[len(REWARD_MODEL):] for r in config.rewards if r.startswith(REWARD_MODEL)), None)
    load = partial(load_actor_critic, critic=config.critic,
                   init_from=critic_init if config.critic_init == "reward_model" else None)
    s = setup(config, "ppo", "prompts", train_rows, eval_rows, load=load, evaluated=lambda ac: ac.policy,
              optimizer_steps_per_step=config.ppo_epochs * config.mini_batches,
              lr_by_prefix={"value_head.": config.critic_lr, "critic_backbone.": config.critic_lr}
              if config.critic_lr > 0 else None)
    ac: ActorCritic = s.model
    s.also_evaluate(reward_evaluation(config, s, ac.policy, rewards))
    reference = reference_policy(config.model, ac.policy, config.beta, config.reference, s.run.start_step > 0)
    kl_control = None
    if config.kl_target > 0:
        kl_control = AdaptiveKLController(config.beta, config.kl_target, config.kl_horizon)
        if "kl_controller" in s.run.state:
            kl_control.load_state_dict(s.run.state["kl_controller"])
    P, G = config.prompts_per_step, config.samples_per_prompt
    print(f"[ppo] N = P·G = {P}·{G} = {P * G} sequences per step, {-(-P * G // config.micro_batch_size)} "
          f"micro-batches of {config.micro_batch_size}, {config.ppo_epochs * config.mini_batches} optimizer "
          f"step(s) per rollout (μ = {config.ppo_epochs} x {config.mini_batches} mini-batches), critic "
          f"{config.critic}, β = {config.beta}{' (adaptive)' if kl_control else ''}, γ = {config.gamma}, "
          f"λ = {config.lam}, ≤ {config.sampling.max_new_tokens} new tokens, {len(s.train_rows)} training "
          f"prompts, {len(s.eval_rows)} held-out")
    order = DataOrder(s.train_rows, config.run.seed, used=s.run.state.get("rows_used", 0))
    for step in range(s.run.start_step + 1, config.run.steps + 1):
        started = time.perf_counter()
        ac.eval()
        progress = TrainerState(global_step=step - 1, max_steps=config.run.steps)
        rows, ahead = order.take(P), (order.peek(P) if step < config.run.steps else None)  # see max_staleness
        rollouts, scores, sample_rows = sample_and_score(ac.policy, s.tokenizer, rows, rewards, G,
                                                         config.sampling, config.data, trainer_state=progress,
                                                         ahead=ahead)
        rollout_s = time.perf_counter() - started
        batch, truncated_N = training_batch(rollouts, s.tokenizer.pad_token_id, s.device)
        beta = kl_control.value if kl_control is not None else config.beta
        targets, metrics = ppo_targets(config, ac, reference, batch, scores.total.to(s.device), truncated_N,
                                       beta)
        ac.train()
        metrics.update(ppo_update(config, ac, s.stepper, batch, targets))
        if kl_control is not None:
            kl_control.update(metrics["policy/kl"], n_steps=len(rollouts))
        metrics.update({**rollout_metrics(rollouts, scores), **group_metrics(scores, G)})
        s.run.tracker.log(step, {**metrics, "time/rollout_s": rollout_s,
                                 "time/update_s": time.perf_counter() - started - rollout_s})
        mask_NT = targets["mask"]  # each sample's mean advantage over its tokens
        log_rollout_samples(s.run, step, rollouts, scores, sample_rows,
                            (targets["advantages"] * mask_NT).sum(-1) / mask_NT.sum(-1).clamp(min=1))
        kl_state = {"kl_controller": kl_control.state_dict()} if kl_control is not None else {}
        if s.end_of_step(step, {"rows_used": order.used, **kl_state}):
            break
    s.model = ac.policy  # final/ is the policy alone, an HF folder; the critic lives in the checkpoints
    kl = ["policy/kl"] if reference is not None else []
    task = ["eval/accuracy"] if s.task is not None else []
    return s.finish("ppo", plot_keys=["rollout/reward", "eval/reward", *kl, *task, "value/explained_variance",
                                      "value/loss", "policy/entropy", "rollout/completion_len"])
