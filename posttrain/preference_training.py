"""What the recipes that train a policy on preferences share (DPO, KTO, ORPO).

- the policy's log-probabilities of the responses in a padded batch (rows from
  ``posttrain.data.chat.collate_padded`` or ``posttrain.data.preferences.collate_pairs``: the
  ``loss_mask`` marks each response), per token or summed per response;
- the reference policy π_ref (DPO, KTO): a frozen copy of the starting weights, or the policy with
  its LoRA adapter switched off;
- held-out preference accuracy on pairs: the chosen response scored above the rejected one, where
  the score is the implicit reward β(log π - log π_ref) (DPO, KTO) or a recipe's own (ORPO).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from posttrain.config import ModelConfig
from posttrain.data.chat import collate_padded
from posttrain.data.preferences import EncodedPair, ScoreOf, pairwise_metrics, score_pairs
from posttrain.logprobs import shared_prompt_logprobs, token_logprobs
from posttrain.models import ReferencePolicy
from posttrain.training import autocast, micro_batches

if TYPE_CHECKING:
    from posttrain.runner import Setup

Example = tuple[list[int], list[int]]  # token ids and response mask of one sequence


def response_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], model_config: ModelConfig,
                      share_prompts: bool) -> torch.Tensor:
    """log π of each response token of a padded batch, 0 elsewhere -> [N, T]. ``share_prompts`` runs
    adjacent rows with the same prompt through the model once (same values and gradients)."""
    mask_NT = batch["loss_mask"]
    score = shared_prompt_logprobs if share_prompts else token_logprobs
    with autocast(model_config, batch["input_ids"].device):
        logprobs_NT, _ = score(model, batch["input_ids"], batch["attention_mask"], mask_NT)
    return logprobs_NT * mask_NT  # the shared path also scores what follows the end of turn


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor], model_config: ModelConfig,
                   share_prompts: bool) -> torch.Tensor:
    """log π(y|x) of each row's response, summed over its tokens -> [N]."""
    return response_logprobs(model, batch, model_config, share_prompts).sum(-1)


def paired_logps(model: nn.Module, sides: Sequence[tuple[Example, Example]], model_config: ModelConfig,
                 share_prompts: bool, micro_batch_size: int, pad_id: int, device: torch.device,
                 ) -> torch.Tensor:
    """``sequence_logps`` of two sequences per item without gradients -> [B, 2]; the two are adjacent
    in their batch (so a prompt they share goes through once), ``micro_batch_size`` items per pass."""
    parts = []
    with torch.no_grad():
        for rows in micro_batches(len(sides), micro_batch_size):
            sequences = [sequence for pair in sides[rows] for sequence in pair]
            batch = collate_padded(sequences, pad_id, device=device)
            parts.append(sequence_logps(model, batch, model_config, share_prompts).view(-1, 2))
    return torch.cat(parts)


def reference_problems(beta: float, reference: str, allowed: tuple[str, ...], lora_rank: int) -> list[str]:
    """Config checks of a recipe with an implicit reward β(log π - log π_ref): β > 0, a known
    reference mode, and a LoRA policy for the ``adapter`` reference."""
    problems = []
    if beta <= 0:
        problems.append(f"'beta' must be > 0; got {beta}")
    if reference not in allowed:
        problems.append(f"'reference' must be one of {', '.join(allowed)}; got {reference!r}")
    if reference == "adapter" and lora_rank == 0:
        problems.append("reference 'adapter' needs a LoRA policy: set model.lora_rank > 0")
    return problems


def reference_policy(mode: str, s: Setup) -> ReferencePolicy:
    """π_ref: ``frozen`` (a copy of the starting weights) or ``adapter`` (the policy, LoRA off). A
    resumed run's weights have moved, so its frozen reference is the starting model, loaded again (so is
    a sharded policy's: fsdp)."""
    from posttrain import distributed
    from posttrain.runner import load_policy

    again = mode == "frozen" and (s.run.start_step > 0 or distributed.sharded())
    return ReferencePolicy(load_policy(s.run.config.model)[0] if again else s.model, mode)


class ImplicitRewards:
    """β(log π - log π_ref) of the held-out pairs. π_ref's log-probs are the policy's at its first
    evaluation (step 0 of a fresh run, when the policy is the reference); they are saved with every
    checkpoint (``state()``), so a resumed run compares against the same numbers."""

    def __init__(self, beta: float, saved: dict[str, Any]) -> None:
        self.beta = beta
        self.reference_B2 = torch.tensor(saved["ref_eval"]) if "ref_eval" in saved else None

    def __call__(self, chosen_B: torch.Tensor, rejected_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_B2 is None:
            self.reference_B2 = torch.stack([chosen_B, rejected_B], dim=1).cpu()
        ref_B2 = self.reference_B2.to(chosen_B.device)
        return self.beta * (chosen_B - ref_B2[:, 0]), self.beta * (rejected_B - ref_B2[:, 1])

    def state(self) -> dict[str, Any]:
        return {} if self.reference_B2 is None else {"ref_eval": self.reference_B2.tolist()}


def preference_evaluation(recipe: str, s: Setup, eval_pairs: Sequence[EncodedPair], batch_size: int,
                          score: ScoreOf, rewards: ImplicitRewards | None = None,
                          margin: str = "reward_margin") -> Callable[[int], dict[str, float]]:
    """``evaluate(step)`` logging eval/preference_accuracy (chosen scored above rejected; a tie counts
    one half, so equal scores give 50%) and eval/<margin> (mean chosen - rejected) on the held-out
    pairs. ``score(batch) -> [2b]`` scores each row; ``rewards`` turns those scores into implicit
    rewards first."""

    def evaluate(step: int) -> dict[str, float]:
        if not eval_pairs:
            return {}
        chosen_B, rejected_B = score_pairs(s.model, eval_pairs, score, batch_size, s.tokenizer.pad_token_id,
                                           s.device)
        if rewards is not None:
            chosen_B, rejected_B = rewards(chosen_B, rejected_B)
        scores = pairwise_metrics(chosen_B, rejected_B)
        metrics = {"preference_accuracy": scores["pairwise_accuracy"], margin: scores["mean_margin"]}
        s.run.tracker.log(step, {f"eval/{k}": v for k, v in metrics.items()})
        print(f"[eval] step {step}: preference accuracy {metrics['preference_accuracy']:.1%}, "
              f"{margin.replace('_', ' ')} {metrics[margin]:.4f} on {len(eval_pairs)} held-out pairs")
        if step == s.run.config.run.steps and "preference_accuracy" in s.eval_before:
            print(f"[{recipe}] held-out preference accuracy {s.eval_before['preference_accuracy']:.1%} -> "
                  f"{metrics['preference_accuracy']:.1%}")
        return metrics

    return evaluate
