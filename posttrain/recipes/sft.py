"""SFT: supervised fine-tuning on demonstrations, the loss on the responses only.

Each step:

1. take ``batch_size`` conversations (chat-formatted by the tokenizer's own template; the loss
   mask is 1 on assistant turns and their end-of-turn token, 0 on system and user text);
2. optionally pack several conversations into rows of ``max_length`` tokens that cannot attend to
   each other;
3. negative log-likelihood of the response tokens, averaged over tokens, accumulated over
   micro-batches, one guarded optimizer step;
4. log (loss, tokens, epoch: passes over the training rows so far); evaluate held-out prompts
   with the task's check() and format check every ``run.eval_every`` steps (greedy generation),
   checkpoint every ``run.save_every`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.config import ClusterConfig, DataConfig, ModelConfig, OptimConfig, RunConfig, SamplingConfig
from posttrain.data.chat import collate_packed, collate_padded, pack
from posttrain.data.sources import DataOrder
from posttrain.logprobs import token_logprobs
from posttrain.losses import sft_loss
from posttrain.runner import setup
from posttrain.training import Stepper, accumulate, autocast


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, schedule="cosine",
                                                                     warmup_steps=5))
    run: RunConfig = field(default_factory=lambda: RunConfig(steps=60))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=96))
    """Greedy generation settings for held-out evaluation (max_new_tokens, dtype)."""
    batch_size: int = 16
    """Conversations (or packed rows) per optimizer step."""
    micro_batch_size: int = 8
    """Rows per forward/backward pass."""
    max_length: int = 512
    """Longest tokenized conversation; longer ones are an error naming the row."""
    packing: bool = False
    """Pack several conversations into each row of max_length tokens (no cross-attention)."""


def collate(examples: list[Any], pad_id: int, device: torch.device, packing: bool) -> dict[str, torch.Tensor]:
    if packing:
        return collate_packed(examples, pad_id, dtype=torch.float32, device=device)
    return collate_padded(examples, pad_id, device=device)


def sft_step(config: Config, model: Any, stepper: Stepper,
             batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Step 3: token-mean NLL over the response tokens of the batch, one optimizer step."""
    loss_mask_NT = batch["loss_mask"].float()

    def micro_loss(rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        extra = {k: batch[k][rows] for k in ("position_ids",) if k in batch}
        with autocast(config.model, batch["input_ids"].device):
            logprobs_NT, _ = token_logprobs(model, batch["input_ids"][rows], batch["attention_mask"][rows],
                                            batch["loss_mask"][rows], **extra)
        return sft_loss(logprobs_NT, loss_mask_NT[rows], mode="token_mean"), {}

    metrics = accumulate(stepper, loss_mask_NT, config.micro_batch_size, "token_mean", micro_loss)
    metrics = {"train/loss": metrics.get("loss", 0.0), "train/tokens": float(loss_mask_NT.sum())}
    metrics.update(stepper.step())
    return metrics


def train(config: Config, *, train_rows: list[dict[str, Any]] | None = None,
          eval_rows: list[dict[str, Any]] | None = None) -> Path:
    """Run SFT; rows passed here replace the config's data. Returns the run directory."""
    s = setup(config, "sft", "conversations", train_rows, eval_rows)  # encodes (and checks) every row
    examples = s.examples or []
    if config.packing:
        examples = pack(examples, config.max_length)
    print(f"[sft] {len(s.train_rows)} conversations -> {len(examples)} rows, {config.batch_size} rows per "
          f"step in micro-batches of {config.micro_batch_size}, {config.run.steps} steps, "
          f"{len(s.eval_rows)} held-out prompts")
    order = DataOrder(examples, config.run.seed, used=s.run.state.get("rows_used", 0))
    for step in range(s.run.start_step + 1, config.run.steps + 1):
        batch = collate(order.take(config.batch_size), s.tokenizer.pad_token_id, s.device, config.packing)
        with s.run.tracker.timer("step"):
            metrics = sft_step(config, s.model, s.stepper, batch)
        s.run.tracker.log(step, {**metrics, "train/epoch": order.used / len(examples)})
        s.end_of_step(step, {"rows_used": order.used})
    return s.finish("sft", plot_keys=["train/loss", "eval/format", "eval/accuracy", "train/lr"])
