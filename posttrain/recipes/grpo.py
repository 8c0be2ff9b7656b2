"""GRPO: group-relative policy optimisation with programmable and verifiable rewards.

DeepSeekMath (arXiv:2402.03300), the RL stage of DeepSeek-R1-Zero (arXiv:2501.12948). Each step:

1. take P prompts (``prompts_per_step``) from the training data;
2. sample G completions for each (``samples_per_prompt``) with the rollout engine, keeping the
   log-probs of the sampling policy;
3. score every completion with the reward functions, weighted and summed;
4. advantage of each completion = its reward minus its group's mean, divided by the group's std
   (or the batch std, or nothing; or a leave-one-out baseline as in RLOO);
5. μ times (``ppo_epochs``): the clipped surrogate with ε_low/ε_high plus β·KL(π‖π_ref), averaged
   per sequence, per token or by a constant, summed over micro-batches, one optimizer step (with
   ``rollout_correction: tis`` each token's surrogate weighted by min(π_old / q_sampler, C), TIS);
6. log the rollouts and metrics, evaluate held-out problems with the task's own check() every
   ``run.eval_every`` steps, checkpoint every ``run.save_every`` steps.

Variants are configs, not code: Dr. GRPO, DAPO and RLOO are in ``configs/papers/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.advantages import group_advantages, zero_std_groups
from posttrain.config import (
    ClusterConfig,
    DataConfig,
    HealthConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SamplingConfig,
)
from posttrain.data.sources import DataOrder, resolve_task
from posttrain.logprobs import shared_prompt_logprobs, token_logprobs
from posttrain.losses import policy_loss
from posttrain.models import ReferencePolicy
from posttrain.rewards.base import RewardScores, TrainerState
from posttrain.rewards.setup import build_reward_fns
from posttrain.rl import (
    RolloutCorrection,
    config_problems,
    group_metrics,
    reference_policy,
    rollout_metrics,
    sample_and_score,
    scoring_temperature,
    training_batch,
    update_passes,
)
from posttrain.rollout import Rollouts
from posttrain.runner import log_rollout_samples, setup
from posttrain.training import Stepper, autocast, micro_batches


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    prompts_per_step: int = 4
    """P: prompts per step."""
    samples_per_prompt: int = 8
    """G: completions sampled per prompt (the group)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass (gradients accumulate over the N = P·G sequences)."""
    ppo_epochs: int = 1
    """μ: passes over each rollout batch, reusing the sampling policy's log-probs."""
    optimizer_steps_per_rollout: int = 1
    """Mini-batches per pass: the P·G sequences split into this many optimizer steps (DAPO: 16)."""
    rewards: list[str] = field(default_factory=lambda: ["task_format", "task_correct"])
    """Reward functions: task_format, task_correct, a built-in name, or path/file.py:function."""
    reward_weights: list[float] = field(default_factory=list)
    """One weight per reward function (empty: all 1)."""
    beta: float = 0.0
    """KL coefficient β; 0 loads and runs no reference model."""
    kl_estimator: str = "k3"
    """KL estimator: k1, k2 or k3 (Schulman's unbiased, non-negative estimator)."""
    reference: str = "frozen"
    """Reference policy: frozen (a copy of the starting weights) or adapter (LoRA disabled)."""
    clip_eps_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 - ε_low."""
    clip_eps_high: float = 0.2
    """ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher: 0.28)."""
    loss_agg: str = "sequence_mean"
    """sequence_mean (DeepSeekMath), token_mean (DAPO) or constant (Dr. GRPO: / (N·max_new_tokens))."""
    advantage_baseline: str = "mean"
    """mean (group mean) or leave_one_out (RLOO)."""
    advantage_scale: str = "group_std"
    """group_std, batch_std, or none (Dr. GRPO)."""
    filter_zero_std_groups: bool = False
    """Leave groups whose rewards are all equal out of the loss (they carry no signal)."""
    dynamic_sampling_rounds: int = 0
    """DAPO dynamic sampling: extra sampling rounds to replace all-equal groups with fresh prompts."""
    mask_truncated: bool = False
    """Leave completions that hit max_new_tokens out of the loss (DAPO's overlong filtering)."""
    share_prompts: bool = True
    """Run each group's prompt through the model once per update pass, not G times (same numbers)."""
    rollout_correction: str = "none"
    """none, or tis: each token's clipped loss times min(π_old / q, tis_cap), q the sampler's own
    log-probs (bf16 copy, top-p/top-k; Yao et al. 2025). On by itself with cluster.max_staleness > 0."""
    tis_cap: float = 2.0
    """C, where the truncated importance weights of rollout_correction are cut (the paper's 2)."""

    def check(self) -> list[str]:
        problems = []
        n_sequences = self.prompts_per_step * self.samples_per_prompt
        if not 1 <= self.optimizer_steps_per_rollout <= n_sequences:
            problems.append(f"optimizer_steps_per_rollout must be in 1..{n_sequences} (P·G sequences); "
                            f"got {self.optimizer_steps_per_rollout}")
        if self.samples_per_prompt < 2:
            problems.append("samples_per_prompt must be >= 2: a group of one has no relative advantage")
        if self.dynamic_sampling_rounds > 0 and self.cluster.max_staleness > 0:
            problems.append("dynamic_sampling_rounds > 0 with cluster.max_staleness > 0: not supported (a "
                            "step's rounds would mix weight versions); set one of them to 0")
        choices = {"kl_estimator": ("k1", "k2", "k3"), "reference": ("frozen", "adapter"),
                   "loss_agg": ("sequence_mean", "token_mean", "constant"),
                   "advantage_baseline": ("mean", "leave_one_out"),
                   "advantage_scale": ("group_std", "batch_std", "none")}
        return problems + config_problems(self, choices)


def _sample_groups(config: Config, model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                   reward_fns: list[Any], step: int,
                   ahead: list[dict[str, Any]] | None = None) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Steps 2-3 for a list of prompt rows: rollouts, their reward scores, one row per sample."""
    return sample_and_score(model, tokenizer, rows, reward_fns, config.samples_per_prompt, config.sampling,
                            config.data, trainer_state=TrainerState(step - 1, config.run.steps), ahead=ahead)


def _concat(parts: list[tuple[Any, Any, list[dict[str, Any]]]]) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Several sampling rounds as one batch (dynamic sampling)."""
    rollouts = Rollouts.concat([p[0] for p in parts])
    return rollouts, RewardScores.concat([p[1] for p in parts]), [row for p in parts for row in p[2]]


def rollout_step(config: Config, model: Any, tokenizer: Any, next_rows: Callable[[], list[dict[str, Any]]],
                 reward_fns: list[Any], step: int, next_step_rows: Callable[[], list[Any]] | None = None,
                 ) -> tuple[Any, Any, list[dict[str, Any]], torch.Tensor]:
    """Sample, score and compute advantages at ``step``; with dynamic sampling, refill all-equal groups.
    ``next_step_rows()``: the next step's rows, which rollout workers may sample ahead."""
    G = config.samples_per_prompt
    rows = next_rows()
    ahead = next_step_rows() if next_step_rows is not None else None
    parts = [_sample_groups(config, model, tokenizer, rows, reward_fns, step, ahead)]
    for _ in range(config.dynamic_sampling_rounds):
        flat = torch.cat([p[1].total for p in parts])
        n_informative = int((~zero_std_groups(flat, G)).sum())
        if n_informative >= config.prompts_per_step:
            break
        parts.append(_sample_groups(config, model, tokenizer, next_rows(), reward_fns, step))
    rollouts, scores, sample_rows = _concat(parts) if len(parts) > 1 else parts[0]
    advantages_N = group_advantages(scores.total, G, baseline=config.advantage_baseline,
                                    scale=config.advantage_scale)
    return rollouts, scores, sample_rows, advantages_N


def policy_update(config: Config, model: Any, stepper: Stepper, reference: ReferencePolicy | None,
                  batch: dict[str, torch.Tensor], advantages_N: torch.Tensor,
                  loss_mask_NT: torch.Tensor) -> dict[str, float]:
    """Step 5: μ optimizer steps of the clipped objective over micro-batches of the rollout batch (with
    TIS weights against the sampler when ``rollout_correction`` is on)."""
    tis = RolloutCorrection(config)  # off unless rollout_correction: tis or cluster.max_staleness > 0
    temperature = scoring_temperature(config.sampling)

    def logprobs_of(m: Any, rows: slice, entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        score = shared_prompt_logprobs if config.share_prompts else token_logprobs
        with autocast(config.model, batch["input_ids"].device):
            return score(m, batch["input_ids"][rows], batch["attention_mask"][rows],
                         batch["completion_mask"][rows], temperature=temperature, with_entropy=entropy)

    all_rows = list(micro_batches(loss_mask_NT.shape[0], config.micro_batch_size))
    with torch.no_grad():
        ref_NT = None
        if reference is not None:
            with reference.active() as ref_model:
                ref_NT = torch.cat([logprobs_of(ref_model, rows)[0] for rows in all_rows])
        # one optimizer step per batch: the sampling policy is the current one, its log-probs come
        # from the same pass
        old_NT = None
        if config.ppo_epochs > 1 or config.optimizer_steps_per_rollout > 1:
            old_NT = torch.cat([logprobs_of(model, rows)[0] for rows in all_rows])

    def micro_loss(rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs_NT, entropy_NT = logprobs_of(model, rows, entropy=True)
        old = old_NT[rows] if old_NT is not None else logprobs_NT.detach()
        loss, metrics = policy_loss(
            logprobs_NT, old, advantages_N[rows],
            loss_mask_NT[rows], clip_eps_low=config.clip_eps_low, clip_eps_high=config.clip_eps_high,
            agg=config.loss_agg, max_tokens=config.sampling.max_new_tokens,
            ref_logprobs=ref_NT[rows] if ref_NT is not None else None, beta=config.beta,
            kl_estimator=config.kl_estimator,
            is_weights=tis.weights(old, batch, rows, loss_mask_NT[rows]))
        mask = loss_mask_NT[rows]
        metrics["entropy"] = float((entropy_NT * mask).sum() / mask.sum().clamp(min=1))
        return loss, metrics

    metrics = update_passes(stepper, config.ppo_epochs, config.optimizer_steps_per_rollout,
                            config.micro_batch_size, config.loss_agg, lambda: (loss_mask_NT, micro_loss))
    return {**metrics, **tis.step_metrics()}


def train(config: Config, *, reward_fns: list[Callable[..., list[float | None]]] | None = None,
          train_rows: list[dict[str, Any]] | None = None,
          eval_rows: list[dict[str, Any]] | None = None) -> Path:
    """Run GRPO; Python reward functions and rows override the config's. Returns the run directory."""
    rewards = build_reward_fns(config.rewards, config.reward_weights, resolve_task(config.data), reward_fns)
    s = setup(config, "grpo", "prompts", train_rows, eval_rows,
              optimizer_steps_per_step=config.ppo_epochs * config.optimizer_steps_per_rollout)
    reference = reference_policy(config.model, s.model, config.beta, config.reference, s.run.start_step > 0)
    P, G = config.prompts_per_step, config.samples_per_prompt
    print(f"[grpo] N = P·G = {P}·{G} = {P * G} sequences per step, "
          f"{-(-P * G // config.micro_batch_size)} micro-batches of {config.micro_batch_size}, "
          f"{config.ppo_epochs * config.optimizer_steps_per_rollout} optimizer step(s) per rollout "
          f"(μ = {config.ppo_epochs} x {config.optimizer_steps_per_rollout} mini-batches), "
          f"≤ {config.sampling.max_new_tokens} new tokens, β = {config.beta}, "
          f"{len(s.train_rows)} training prompts, {len(s.eval_rows)} held-out")
    order = DataOrder(s.train_rows, config.run.seed, used=s.run.state.get("rows_used", 0))
    for step in range(s.run.start_step + 1, config.run.steps + 1):
        started = time.perf_counter()
        s.model.eval()
        rollouts, scores, sample_rows, advantages_N = rollout_step(
            config, s.model, s.tokenizer, lambda: order.take(P), rewards, step,
            (lambda: order.peek(P)) if step < config.run.steps else None)
        rollout_s = time.perf_counter() - started
        s.model.train()
        batch, truncated_N = training_batch(rollouts, s.tokenizer.pad_token_id, s.device)
        loss_mask_NT = batch["completion_mask"].float()
        if config.filter_zero_std_groups:
            informative_N = (~zero_std_groups(scores.total, G)).repeat_interleave(G).to(s.device)
            loss_mask_NT = loss_mask_NT * informative_N[:, None]
        if config.mask_truncated:
            loss_mask_NT = loss_mask_NT * (~truncated_N)[:, None]
        update = policy_update(config, s.model, s.stepper, reference, batch, advantages_N.to(s.device),
                               loss_mask_NT)
        metrics = {k if k.startswith(("train/", "rollout/")) else f"policy/{k}": v for k, v in update.items()}
        metrics["train/loss"] = metrics.pop("policy/loss", 0.0)
        metrics.update(rollout_metrics(rollouts, scores))
        metrics.update({**group_metrics(scores, G), "time/rollout_s": rollout_s,
                        "time/update_s": time.perf_counter() - started - rollout_s})
        s.run.tracker.log(step, metrics)
        log_rollout_samples(s.run, step, rollouts, scores, sample_rows, advantages_N)
        if s.end_of_step(step, {"rows_used": order.used}):
            break
    kl = ["policy/kl"] if config.beta > 0 else []
    return s.finish("grpo", plot_keys=["rollout/reward", "eval/accuracy", "eval/format", *kl,
                                       "rollout/completion_len", "train/loss"])
