"""DPO: Direct Preference Optimization (arXiv:2305.18290), with the IPO (arXiv:2310.12036), hinge
(SLiC, arXiv:2305.10425) and conservative (label smoothing) variants of its loss.

1. pairs (x, y_w, y_l): a task's procedural pairs, a file of pairs, or rankings expanded into pairs;
   the log-probability of a response is the sum over its tokens (after the chat-rendered prompt);
2. the reference π_ref: a frozen copy of the starting weights, the policy with its LoRA adapter
   switched off, or ``precomputed``: the starting policy's log-probs of every pair the run will
   visit (and of the held-out pairs), computed once before the first update, so no copy is kept;
3. each step, B pairs, chosen and rejected rows of a pair adjacent in one batch and their prompt
   through the model once (``pairs.share_prompts``); h = (log π(y_w) - log π_ref(y_w)) -
   (log π(y_l) - log π_ref(y_l));
4. loss = mean over pairs of -log σ(βh) (sigmoid; with label smoothing ε: -(1-ε) log σ(βh) -
   ε log σ(-βh)), (h - 1/(2β))² (ipo) or max(0, 1 - βh) (hinge); micro-batches accumulate, one
   guarded optimizer step;
5. log the implicit rewards β(log π - log π_ref) of chosen and rejected, their accuracy and margin;
   held-out preference accuracy (the implicit reward ranks chosen above rejected; ties count one
   half, so the starting policy scores 50%) and greedy task accuracy on held-out prompts before,
   every ``run.eval_every`` steps and after; checkpoint every ``run.save_every`` steps.
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
from posttrain.losses import dpo_loss
from posttrain.models import ReferencePolicy
from posttrain.preference_training import (
    ImplicitRewards,
    paired_logps,
    preference_evaluation,
    reference_policy,
    reference_problems,
    sequence_logps,
)
from posttrain.runner import Setup, held_out_metrics, load_policy, setup

REFERENCES = ("frozen", "adapter", "precomputed")
LOSSES = ("sigmoid", "ipo", "hinge")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(train_size=2000, eval_size=100))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6, schedule="cosine",
                                                                     warmup_steps=3))
    run: RunConfig = field(default_factory=lambda: RunConfig(steps=60, eval_every=20))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48))
    """Greedy generation settings for the held-out task evaluation (max_new_tokens, dtype)."""
    pairs: PairsConfig = field(default_factory=PairsConfig)
    """Preference pairs: pairs per step and per forward pass, length limit, rankings, prompt sharing."""
    beta: float = 0.1
    """β: strength of the implicit KL constraint to the reference (> 0)."""
    loss: str = "sigmoid"
    """sigmoid (DPO), ipo, or hinge (SLiC)."""
    label_smoothing: float = 0.0
    """ε in [0, 0.5): the chance a label is flipped (conservative DPO; sigmoid loss only)."""
    reference: str = "frozen"
    """frozen (a copy), adapter (LoRA switched off; needs model.lora_rank > 0) or precomputed."""

    def eval_metrics(self) -> list[str]:
        """What the held-out evaluation logs (run.keep_best chooses by one of them)."""
        return [*held_out_metrics(), "eval/preference_accuracy", "eval/reward_margin"]

    def check(self) -> list[str]:
        problems = reference_problems(self.beta, self.reference, REFERENCES, self.model.lora_rank)
        if self.loss not in LOSSES:
            problems.append(f"'loss' must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"'label_smoothing' must be in [0, 0.5); got {self.label_smoothing}")
        if self.label_smoothing > 0 and self.loss != "sigmoid":
            problems.append(f"'label_smoothing' applies to loss sigmoid only, not {self.loss!r}")
        return problems


def reference_logps(config: Config, model: nn.Module, pairs: list[EncodedPair], pad_id: int,
                    device: torch.device) -> torch.Tensor:
    """Step 2: log π_ref of chosen and rejected for each pair -> [B, 2], in the step's micro-batches."""
    return paired_logps(model, [(pair.chosen, pair.rejected) for pair in pairs], config.model,
                        config.pairs.share_prompts, config.pairs.micro_batch_size, pad_id, device)


def dpo_step(config: Config, model: nn.Module, stepper: Any, pairs: list[EncodedPair],
             ref_B2: torch.Tensor, pad_id: int, device: torch.device) -> dict[str, float]:
    """Steps 3-4: the DPO loss over the step's pairs, micro-batch by micro-batch; one optimizer step."""

    def loss_of(batch: dict[str, torch.Tensor], rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        logps_N = sequence_logps(model, batch, config.model, config.pairs.share_prompts)  # step 1
        ref_b2 = ref_B2[rows].to(logps_N.device)
        loss, metrics = dpo_loss(logps_N[0::2], logps_N[1::2], ref_b2[:, 0], ref_b2[:, 1], config.beta,
                                 config.loss, config.label_smoothing)
        metrics.update({"logps/chosen": float(logps_N[0::2].detach().mean()),
                        "logps/rejected": float(logps_N[1::2].detach().mean())})
        return loss, metrics

    return pair_step(stepper, pairs, config.pairs.micro_batch_size, pad_id, device, loss_of)


class References:
    """Where π_ref's log-probs of the training pairs come from (step 2), kept for resumes."""

    def __init__(self, config: Config, s: Setup, pairs: list[EncodedPair]):
        self.config, self.s, self.pairs = config, s, pairs
        self.policy: ReferencePolicy | None = None
        if config.reference != "precomputed":
            self.policy = reference_policy(config.reference, s)
        saved = s.run.state
        self.train: dict[int, list[float]] = {int(k): v for k, v in saved.get("ref_train", {}).items()}
        if config.reference == "precomputed" and s.run.start_step == 0:
            self._precompute()

    def _precompute(self) -> None:
        """The starting policy's log-probs of every pair the run will take, step by step (the same
        micro-batches as training, so step 1 starts at h = 0 exactly)."""
        started = time.perf_counter()
        plan = DataOrder(list(range(len(self.pairs))), self.config.run.seed)
        for _ in range(self.config.run.steps):
            indices = plan.take(self.config.pairs.batch_size)
            values = self.compute(self.s.model, [self.pairs[i] for i in indices])
            self.train.update({i: v for i, v in zip(indices, values.tolist())})
        print(f"[dpo] reference log-probs of {len(self.train)} training pairs precomputed in "
              f"{time.perf_counter() - started:.1f} s")

    def compute(self, model: nn.Module, pairs: list[EncodedPair]) -> torch.Tensor:
        was_training = model.training
        model.eval()
        values = reference_logps(self.config, model, pairs, self.s.tokenizer.pad_token_id, self.s.device)
        model.train(was_training)
        return values.float().cpu()

    def for_step(self, indices: list[int]) -> torch.Tensor:
        if self.policy is None and all(i in self.train for i in indices):
            return torch.tensor([self.train[i] for i in indices])
        if self.policy is None:  # a resumed run extended past its plan: the starting model, loaded again
            print("[dpo] pairs beyond the precomputed plan: loading the starting model as the reference")
            self.policy = ReferencePolicy(load_policy(self.config.model)[0], "frozen")
        with self.policy.active() as ref_model:
            return self.compute(ref_model, [self.pairs[i] for i in indices])

    def state(self) -> dict[str, Any]:
        return {"ref_train": {str(k): v for k, v in self.train.items()}} if self.train else {}


def train(config: Config, *, train_rows: list[dict[str, Any]] | None = None,
          eval_rows: list[dict[str, Any]] | None = None) -> Path:
    """Run DPO; preference rows given in Python replace the configured data (``eval_rows`` are pairs;
    the greedy task evaluation uses the task's own held-out prompts)."""
    rows, pairs, eval_pairs = encoded_splits(config, train_rows, eval_rows)
    s = setup(config, "dpo", "preferences", train_rows=rows)
    refs = References(config, s, pairs)
    implicit_rewards = ImplicitRewards(config.beta, s.run.state)
    logps = lambda batch: sequence_logps(s.model, batch, config.model, config.pairs.share_prompts)  # noqa: E731
    s.also_evaluate(preference_evaluation("dpo", s, eval_pairs, config.pairs.micro_batch_size, logps,
                                          implicit_rewards))
    describe_pairs("dpo", config.pairs, pairs, eval_pairs,
                   f"; β = {config.beta}, loss {config.loss}, reference {config.reference}")
    order = DataOrder(list(range(len(pairs))), config.run.seed, used=s.run.state.get("rows_used", 0))
    for step in range(s.run.start_step + 1, config.run.steps + 1):
        started = time.perf_counter()
        indices = order.take(config.pairs.batch_size)
        step_pairs = [pairs[i] for i in indices]
        ref_B2 = refs.for_step(indices)
        reference_s = time.perf_counter() - started
        metrics = dpo_step(config, s.model, s.stepper, step_pairs, ref_B2, s.tokenizer.pad_token_id, s.device)
        metrics.update({"time/reference_s": reference_s, **step_throughput(step_pairs, started)})
        s.run.tracker.log(step, metrics)
        s.end_of_step(step, {"rows_used": order.used, **refs.state(), **implicit_rewards.state()})
    plot_keys = ["train/loss", "train/rewards/margin", "eval/preference_accuracy", "eval/accuracy"]
    return s.finish("dpo", plot_keys=plot_keys)
