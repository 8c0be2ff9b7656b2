"""KTO: Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306) on unpaired feedback.

1. feedback rows (x, y, label): a task's procedural thumbs, a file of (prompt, completion, label)
   rows, or a file of pairs (chosen -> desirable, rejected -> undesirable); log π(y|x) is the sum
   over the response's tokens (after the chat-rendered prompt);
2. each step, B rows, each with its mismatched row (the prompt of row i, the response of row i+1);
   the reference point z0 = max(0, mean_i [log π(y_i+1|x_i) - log π_ref(y_i+1|x_i)]) over a
   micro-batch's mismatched rows, an estimate of KL(π ‖ π_ref) through which no gradient flows;
3. r = log π(y|x) - log π_ref(y|x), π_ref a frozen copy of the starting weights or the policy with
   its LoRA adapter switched off;
4. loss = mean over rows of λ_D (1 - σ(β(r - z0))) for desirable rows and λ_U (1 - σ(β(z0 - r))) for
   undesirable ones; micro-batches accumulate, one guarded optimizer step;
5. log the implicit rewards βr of desirable and undesirable rows, z0 and the estimate before the
   clamp; held-out preference accuracy on pairs (the implicit reward ranks chosen above rejected;
   ties count one half, so the starting policy scores 50%) and greedy task accuracy on held-out
   prompts before, every ``run.eval_every`` steps and after; checkpoint every ``run.save_every``
   steps.

The paper advises λ_D·n_D / (λ_U·n_U) in [1, 4/3] (n_D, n_U: desirable and undesirable rows); a run
outside that range warns, with the weights that would bring it inside, and goes on.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posttrain.config import ClusterConfig, DataConfig, ModelConfig, OptimConfig, RunConfig, SamplingConfig
from posttrain.data.chat import collate_padded
from posttrain.data.feedback import EncodedFeedback, FeedbackConfig, encoded_feedback_splits, mismatched
from posttrain.data.sources import DataOrder
from posttrain.losses import kto_loss
from posttrain.models import ReferencePolicy
from posttrain.preference_training import (
    ImplicitRewards,
    paired_logps,
    preference_evaluation,
    reference_policy,
    reference_problems,
    sequence_logps,
)
from posttrain.runner import held_out_metrics, setup
from posttrain.training import accumulate

REFERENCES = ("frozen", "adapter")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(train_size=2000, eval_size=100))
    """Training feedback rows (task or file) and held-out data: a task's test split, or data.eval, a
    file of pairs, for the preference accuracy."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6, schedule="cosine",
                                                                     warmup_steps=3))
    run: RunConfig = field(default_factory=lambda: RunConfig(steps=60, eval_every=20))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48))
    """Greedy generation settings for the held-out task evaluation (max_new_tokens, dtype)."""
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    """Feedback rows: rows per step and per forward pass, length limit."""
    beta: float = 0.1
    """β: strength of the implicit KL constraint to the reference (> 0)."""
    desirable_weight: float = 1.0
    """λ_D: weight of the desirable (thumbs-up) rows' loss."""
    undesirable_weight: float = 1.0
    """λ_U: weight of the undesirable (thumbs-down) rows' loss."""
    reference: str = "frozen"
    """frozen (a copy of the starting weights) or adapter (LoRA switched off; needs model.lora_rank > 0)."""

    def eval_metrics(self) -> list[str]:
        """What the held-out evaluation logs (run.keep_best chooses by one of them)."""
        return [*held_out_metrics(), "eval/preference_accuracy", "eval/reward_margin"]

    def check(self) -> list[str]:
        problems = reference_problems(self.beta, self.reference, REFERENCES, self.model.lora_rank)
        for key in ("desirable_weight", "undesirable_weight"):
            if getattr(self, key) <= 0:
                problems.append(f"'{key}' must be > 0; got {getattr(self, key)}")
        if self.data.mix:
            problems.append("'data.mix' is not supported for feedback rows: put the rows of every source "
                            "in one file")
        if self.cluster.trainers > 1:  # ranks cut the rows into other micro-batches, so another z0
            problems.append(f"cluster.trainers={self.cluster.trainers}: KTO's reference point z0 is "
                            "estimated per micro-batch, so a step on ranks would not be the one-process "
                            "step; run KTO in one process (cluster.trainers=1)")
        return problems


def warn_on_imbalance(config: Config, rows: list[EncodedFeedback]) -> None:
    """The paper's advice: λ_D·n_D / (λ_U·n_U) in [1, 4/3]; outside it, say which weights fit (as TRL)."""
    n_d = sum(row.desirable for row in rows)
    n_u = len(rows) - n_d
    if n_d == 0 or n_u == 0:
        warnings.warn(f"all {len(rows)} feedback rows are {'undesirable' if n_d == 0 else 'desirable'}: KTO "
                      "learns from one side only", stacklevel=2)
        return
    lam_d, lam_u = config.desirable_weight, config.undesirable_weight
    ratio = lam_d * n_d / (lam_u * n_u)
    if not 1 <= ratio <= 4 / 3:
        warnings.warn(f"λ_D·n_D / (λ_U·n_U) = {lam_d}·{n_d} / ({lam_u}·{n_u}) = {ratio:.3f} is outside "
                      "[1, 4/3], the range the KTO paper advises; set desirable_weight in "
                      f"[{lam_u * n_u / n_d:.3g}, {4 / 3 * lam_u * n_u / n_d:.3g}] or undesirable_weight in "
                      f"[{0.75 * lam_d * n_d / n_u:.3g}, {lam_d * n_d / n_u:.3g}]", stacklevel=2)


def kto_step(config: Config, model: nn.Module, stepper: Any, reference: ReferencePolicy,
             rows: list[EncodedFeedback], pad_id: int, device: torch.device) -> dict[str, float]:
    """Steps 2-4 on the step's rows, micro-batch by micro-batch; one optimizer step.

    Each row is followed in its batch by its mismatched row (same prompt, the next row's response),
    so the prompt goes through the model once for both; the mismatched rows' log-ratios give z0
    for their micro-batch (TRL also estimates it per forward batch; one micro-batch per step
    estimates it over the whole step) and are detached, so no gradient flows through z0. The
    reference scores the same batches as the policy: at the start r = z0 = 0 exactly.
    """
    sides = [(row.example, kl) for row, kl in zip(rows, mismatched(rows, config.feedback.max_length))]
    micro = config.feedback.micro_batch_size
    with reference.active() as ref_model:  # [B, 2]: log π_ref of (x_i, y_i) and of (x_i, y_i+1)
        ref_B2 = paired_logps(ref_model, sides, config.model, True, micro, pad_id, device)
    desirable_B = torch.tensor([row.desirable for row in rows], device=device)
    rewards: list[torch.Tensor] = []

    def micro_loss(part: slice) -> tuple[torch.Tensor, dict[str, float]]:
        batch = collate_padded([sequence for pair in sides[part] for sequence in pair], pad_id, device=device)
        logps_b2 = sequence_logps(model, batch, config.model, True).view(-1, 2)
        log_ratios_b2 = logps_b2 - ref_B2[part]
        rewards.append(config.beta * log_ratios_b2[:, 0].detach())
        z0 = log_ratios_b2[:, 1].detach().mean()  # kto_loss clamps it at 0 (logged as kl)
        loss, metrics = kto_loss(logps_b2[:, 0], ref_B2[part, 0], desirable_B[part], z0, config.beta,
                                 config.desirable_weight, config.undesirable_weight)
        return loss, {**metrics, "kl_estimate": float(z0)}

    every_row = torch.ones(len(rows), 1)  # each row weighs the same in the step's mean
    metrics = accumulate(stepper, every_row, micro, "sequence_mean", micro_loss)
    rewards_B = torch.cat(rewards)
    chosen, rejected = rewards_B[desirable_B], rewards_B[~desirable_B]  # the step's, not a micro-batch's
    metrics.update({"rewards/chosen": float(chosen.mean()) if len(chosen) else 0.0,
                    "rewards/rejected": float(rejected.mean()) if len(rejected) else 0.0,
                    "desirable_fraction": float(desirable_B.float().mean()),
                    "tokens": float(sum(len(ids) for pair in sides for ids, _ in pair))})
    if len(chosen) and len(rejected):
        metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    metrics.update(stepper.step())
    return {key if key.startswith("train/") else f"train/{key}": value for key, value in metrics.items()}


def train(config: Config, *, train_rows: list[dict[str, Any]] | None = None,
          eval_rows: list[dict[str, Any]] | None = None) -> Path:
    """Run KTO; rows given in Python replace the configured data (``train_rows``: feedback rows or
    pairs; ``eval_rows``: pairs; the greedy task evaluation uses the task's own held-out prompts)."""
    rows, examples, eval_pairs = encoded_feedback_splits(config, train_rows, eval_rows)
    warn_on_imbalance(config, examples)
    s = setup(config, "kto", "unpaired", train_rows=rows)
    reference = reference_policy(config.reference, s)
    implicit_rewards = ImplicitRewards(config.beta, s.run.state)
    logps = lambda batch: sequence_logps(s.model, batch, config.model, True)  # noqa: E731
    s.also_evaluate(preference_evaluation("kto", s, eval_pairs, config.feedback.micro_batch_size, logps,
                                          implicit_rewards))
    B, n_d = config.feedback.batch_size, sum(row.desirable for row in examples)
    print(f"[kto] B = {B} rows per step, each with its mismatched row for z0, in micro-batches of "
          f"{config.feedback.micro_batch_size}; {len(examples)} training rows ({n_d} desirable, "
          f"{len(examples) - n_d} undesirable), {len(eval_pairs)} held-out pairs; β = {config.beta}, "
          f"λ_D = {config.desirable_weight}, λ_U = {config.undesirable_weight}, reference {config.reference}")
    order = DataOrder(examples, config.run.seed, used=s.run.state.get("rows_used", 0))
    for step in range(s.run.start_step + 1, config.run.steps + 1):
        started = time.perf_counter()
        metrics = kto_step(config, s.model, s.stepper, reference, order.take(B), s.tokenizer.pad_token_id,
                           s.device)
        seconds = time.perf_counter() - started
        metrics.update({"train/tokens_per_s": metrics["train/tokens"] / seconds, "time/step_s": seconds})
        s.run.tracker.log(step, metrics)
        s.end_of_step(step, {"rows_used": order.used, **implicit_rewards.state()})
    plot_keys = ["train/loss", "train/kl", "train/rewards/chosen", "train/rewards/rejected",
                 "eval/preference_accuracy", "eval/accuracy"]
    return s.finish("kto", plot_keys=plot_keys)
