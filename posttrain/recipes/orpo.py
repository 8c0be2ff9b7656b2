"""ORPO: Odds Ratio Preference Optimization (Hong et al. 2024, arXiv:2403.07691): supervised
fine-tuning and preference learning in one loss, with no reference model.

1. pairs (x, y_w, y_l): a task's procedural pairs, a file of pairs, or rankings expanded into pairs
   (read exactly as DPO reads them); each response after the chat-rendered prompt;
2. each step, B pairs, chosen and rejected rows of a pair adjacent in one batch and their prompt
   through the model once (``pairs.share_prompts``); per token log π(y_t | x, y_<t);
3. log p(y|x) = the mean of the response's token log-probs (length-normalised, as in the paper),
   odds(y|x) = p / (1 - p);
4. loss = NLL of y_w (mean over its tokens) + λ · mean over pairs of
   -log σ(log odds(y_w|x) - log odds(y_l|x)); micro-batches accumulate, one guarded optimizer step;
5. log the NLL, the odds-ratio term, the log odds ratio and how often it is positive; held-out
   preference accuracy (chosen's mean token log-prob above rejected's, which orders the log odds
   the same way; ties count one half) with the mean log-prob margin, and greedy task accuracy on
   held-out prompts, before, every ``run.eval_every`` steps and after; checkpoint every
   ``run.save_every`` steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posttrain.config import ClusterConfig, DataConfig, ModelConfig, OptimConfig, RunConfig, SamplingConfig
from posttrain.data.preferences import (
    EncodedPair,
    PairsConfig,
    describe_pairs,
    encoded_splits,
    pair_step,
    step_throughput,
)
from posttrain.data.sources import DataOrder
from posttrain.losses import orpo_loss
from posttrain.preference_training import preference_evaluation, response_logprobs
from posttrain.runner import held_out_metrics, setup


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(train_size=2000, eval_size=100))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=8e-6, schedule="cosine",
                                                                     warmup_steps=3))
    run: RunConfig = field(default_factory=lambda: RunConfig(steps=60, eval_every=20))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48))
    """Greedy generation settings for the held-out task evaluation (max_new_tokens, dtype)."""
    pairs: PairsConfig = field(default_factory=PairsConfig)
    """Preference pairs: pairs per step and per forward pass, length limit, rankings, prompt sharing."""
    lam: float = 0.1
    """λ: weight of the odds-ratio term against the NLL of the chosen response (TRL calls it beta)."""

    def eval_metrics(self) -> list[str]:
        """What the held-out evaluation logs (run.keep_best chooses by one of them)."""
        return [*held_out_metrics(), "eval/preference_accuracy", "eval/logp_margin"]

    def check(self) -> list[str]:
        return [f"'lam' must be >= 0; got {self.lam}"] if self.lam < 0 else []


def mean_logps(config: Config, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Step 3: log p(y|x), the mean token log-prob of each row's response -> [2B] (the held-out score)."""
    logprobs_NT = response_logprobs(model, batch, config.model, config.pairs.share_prompts)
    return logprobs_NT.sum(-1) / batch["loss_mask"].sum(-1)


def orpo_step(config: Config, model: nn.Module, stepper: Any, pairs: list[EncodedPair], pad_id: int,
              device: torch.device) -> dict[str, float]:
    """Steps 2-4: the ORPO loss over the step's pairs, micro-batch by micro-batch; one optimizer step."""
    started = time.perf_counter()

    def loss_of(batch: dict[str, torch.Tensor], rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs_NT = response_logprobs(model, batch, config.model, config.pairs.share_prompts)
        mask_NT = batch["loss_mask"]
        return orpo_loss(logprobs_NT[0::2], mask_NT[0::2], logprobs_NT[1::2], mask_NT[1::2], config.lam)

    metrics = pair_step(stepper, pairs, config.pairs.micro_batch_size, pad_id, device, loss_of)
    return {**metrics, **step_throughput(pairs, started)}


def train(config: Config, *, train_rows: list[dict[str, Any]] | None = None,
          eval_rows: list[dict[str, Any]] | None = None) -> Path:
    """Run ORPO; preference rows given in Python replace the configured data (``eval_rows`` are pairs;
    the greedy task evaluation uses the task's own held-out prompts)."""
    rows, train_pairs, held_out_pairs = encoded_splits(config, train_rows, eval_rows)
    s = setup(config, "orpo", "preferences", train_rows=rows)
    score = lambda batch: mean_logps(config, s.model, batch)  # noqa: E731
    s.also_evaluate(preference_evaluation("orpo", s, held_out_pairs, config.pairs.micro_batch_size, score,
                                          margin="logp_margin"))
    describe_pairs("orpo", config.pairs, train_pairs, held_out_pairs,
                   f"; λ = {config.lam}, no reference model")
    order = DataOrder(train_pairs, config.run.seed, used=s.run.state.get("rows_used", 0))
    pad_id = s.tokenizer.pad_token_id
    for step in range(s.run.start_step + 1, config.run.steps + 1):
        s.run.tracker.log(step, orpo_step(config, s.model, s.stepper, order.take(config.pairs.batch_size),
                                          pad_id, s.device))
        s.end_of_step(step, {"rows_used": order.used})
    return s.finish("orpo", plot_keys=["train/loss", "train/nll", "train/log_odds_ratio",
                                       "eval/preference_accuracy", "eval/accuracy"])
