"""Reward model: a causal LM's backbone with a scalar head, trained on preference pairs with the
Bradley-Terry loss (InstructGPT, arXiv:2203.02155; the margin from Llama 2, arXiv:2307.09288).

1. pairs (x, y_w, y_l): a task's procedural pairs, a file of pairs, or a file of rankings expanded
   into every implied pair or the adjacent ones (``pairs.rankings``); each side rendered by the
   chat template;
2. the model: the backbone of ``model.name`` with a one-output score head initialised near zero,
   a transformers ``*ForSequenceClassification`` (so ``final/`` loads with
   ``AutoModelForSequenceClassification``);
3. each step, B pairs (``pairs.batch_size``), chosen and rejected rows in one batch, each pair's prompt
   through the backbone once (``pairs.share_prompts``); r(x, y) = the head on the last token;
4. loss = mean over pairs of -log σ(r(x, y_w) - r(x, y_l) - m), m = ``margin`` or the row's own
   ``margin`` column; micro-batches accumulate, one guarded optimizer step;
5. log training accuracy and margin; held-out pairwise accuracy and mean margin before, every
   ``run.eval_every`` steps and after; checkpoint every ``run.save_every`` steps.

The trained model scores files with ``posttrain score`` and rewards RL with
``rewards: ["reward_model:RUN/final"]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posttrain.config import ClusterConfig, DataConfig, ModelConfig, OptimConfig, RunConfig
from posttrain.data.preferences import (
    EncodedPair,
    PairsConfig,
    describe_pairs,
    encoded_splits,
    pair_step,
    pairwise_metrics,
    score_pairs,
    step_throughput,
)
from posttrain.data.sources import DataOrder
from posttrain.losses import bradley_terry_loss
from posttrain.rewards.reward_model import is_score_model, score_model_from_causal_lm, sequence_scores
from posttrain.runner import Setup, eval_summary, load_policy, setup
from posttrain.training import autocast


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(train_size=2000, eval_size=200))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, schedule="cosine",
                                                                     warmup_steps=5))
    run: RunConfig = field(default_factory=lambda: RunConfig(steps=60, eval_every=20))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    """Preference pairs: pairs per step and per forward pass, length limit, rankings, prompt sharing."""
    margin: float = 0.0
    """Margin m in -log σ(r_w - r_l - m) for every pair; a row's own numeric 'margin' column wins."""

    def eval_metrics(self) -> list[str]:
        """What the held-out evaluation logs (run.keep_best chooses by one of them)."""
        return ["eval/pairwise_accuracy", "eval/mean_margin"]

    def check(self) -> list[str]:
        if self.model.lora_rank > 0:
            return ["model.lora_rank must be 0: the reward model trains every weight (LoRA with a "
                    "trainable score head is not supported)"]
        return []


def load_reward_model(model_config: ModelConfig) -> tuple[nn.Module, Any, torch.device]:
    """Step 2: a reward model to continue training, or a causal LM's backbone with a new score head."""
    from posttrain.models import enable_activation_checkpointing, resolve_device, resolve_model_path
    from posttrain.rewards.reward_model import load_score_model

    path, gguf = resolve_model_path(model_config.name)
    if gguf is None and is_score_model(path):
        model, tokenizer = load_score_model(path, model_config.dtype, model_config.device)
        device = resolve_device(model_config.device)
    else:
        causal_lm, tokenizer, device = load_policy(model_config)
        model = score_model_from_causal_lm(causal_lm, tokenizer.pad_token_id)
        del causal_lm  # the backbone's weights were copied; the output layer is not needed
    if model_config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model.train(), tokenizer, device


def scores_of(config: Config, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Step 3: r(x, y) of each row of a pair batch [2B] (chosen at even rows, rejected at odd)."""
    with autocast(config.model, batch["input_ids"].device):
        return sequence_scores(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                               share_prompts=config.pairs.share_prompts)


def rm_step(config: Config, s: Setup, pairs: list[EncodedPair]) -> dict[str, float]:
    """Step 4: the Bradley-Terry loss over the step's pairs, micro-batch by micro-batch; one step."""

    def loss_of(batch: dict[str, torch.Tensor], rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        scores_N = scores_of(config, s.model, batch)
        return bradley_terry_loss(scores_N[0::2], scores_N[1::2], batch["margin"])

    return pair_step(s.stepper, pairs, config.pairs.micro_batch_size, s.tokenizer.pad_token_id, s.device,
                     loss_of)


def held_out_evaluation(config: Config, s: Setup, eval_pairs: list[EncodedPair]) -> Any:
    """Step 5: ``evaluate(step)`` logging eval/pairwise_accuracy and eval/mean_margin."""

    def evaluate(step: int) -> dict[str, float]:
        if not eval_pairs:
            return {}
        chosen_B, rejected_B = score_pairs(s.model, eval_pairs, lambda b: scores_of(config, s.model, b),
                                           2 * config.pairs.micro_batch_size, s.tokenizer.pad_token_id,
                                           s.device)
        metrics = pairwise_metrics(chosen_B, rejected_B)
        s.run.tracker.log(step, {f"eval/{k}": v for k, v in metrics.items()})
        print(f"[eval] step {step}: pairwise accuracy {metrics['pairwise_accuracy']:.1%}, mean margin "
              f"{metrics['mean_margin']:.3f} on {len(eval_pairs)} held-out pairs")
        return metrics

    return evaluate


def train(config: Config, *, train_rows: list[dict[str, Any]] | None = None,
          eval_rows: list[dict[str, Any]] | None = None) -> Path:
    """Train a reward model; preference rows given in Python replace the configured data."""
    rows, pairs, eval_pairs = encoded_splits(config, train_rows, eval_rows)
    s = setup(config, "rm", "preferences", train_rows=rows, eval_rows=[], load=load_reward_model)
    s.also_evaluate(held_out_evaluation(config, s, eval_pairs))
    describe_pairs("rm", config.pairs, pairs, eval_pairs)
    order = DataOrder(pairs, config.run.seed, used=s.run.state.get("rows_used", 0))
    for step in range(s.run.start_step + 1, config.run.steps + 1):
        started = time.perf_counter()
        step_pairs = order.take(config.pairs.batch_size)
        metrics = rm_step(config, s, step_pairs)
        s.run.tracker.log(step, {**metrics, **step_throughput(step_pairs, started)})
        s.end_of_step(step, {"rows_used": order.used})
    return s.finish("rm", ["train/loss", "train/accuracy", "eval/pairwise_accuracy"], summarize=summarize)


def summarize(recipe: str, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Held-out pairwise accuracy and margin before and after training, printed and for summary.md."""
    if before and after:
        print(f"[{recipe}] held-out pairwise accuracy {before['pairwise_accuracy']:.1%} -> "
              f"{after['pairwise_accuracy']:.1%}, mean margin {before['mean_margin']:.3f} -> "
              f"{after['mean_margin']:.3f}")
    return eval_summary(recipe, before, after)
