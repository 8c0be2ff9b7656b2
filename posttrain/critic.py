"""The critic of actor-critic RL (PPO): a value head on a language model's last hidden states.

V(s_t), the expected return from completion token t on, is read like the token's log-prob: from
the hidden state of the token before it (the state in which token t is chosen), so ``values [N, T]``
lines up with ``logprobs [N, T]`` and is non-zero exactly on completion tokens.

Two layouts (``critic``):
- ``shared``: one linear head on the policy's own last hidden states (the layout of TRL's former
  ``AutoModelForCausalLMWithValueHead``). One backbone pass gives log-probs and values, and the
  value loss also trains the policy's backbone; costs one ``hidden -> 1`` layer.
- ``separate``: a backbone of its own, trained by the value loss only (TRL's current PPO, OpenRLHF,
  verl). Initialised from the policy's starting weights or from a trained reward model, whose score
  head then becomes the first value head (InstructGPT, arXiv:2203.02155, starts its value function
  from the RM). Costs a second model, its gradients and its optimizer state.

``ActorCritic`` holds the policy and the critic in one module so that one optimizer, one gradient
clip and one checkpoint cover both: resuming a run restores the critic with the policy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from posttrain.config import ModelConfig
from posttrain.errors import ConfigError
from posttrain.logprobs import token_logprobs, unwrap

CRITICS = ("shared", "separate")


class ValueHead(nn.Module):
    """hidden [..., H] -> value [...], computed in fp32 outside autocast (returns are compared to
    values at a precision bf16 does not have). Starts at exactly 0 unless given a weight."""

    def __init__(self, hidden_size: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.linear.bias.zero_()
            if weight is None:
                self.linear.weight.zero_()
            else:
                self.linear.weight.copy_(weight.reshape(1, hidden_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.linear(hidden.float()).squeeze(-1)


class ActorCritic(nn.Module):
    """The policy (a causal LM, possibly with LoRA) and its critic: a value head, with a backbone of
    its own when ``backbone`` is given, else reading the policy's hidden states."""

    def __init__(self, policy: nn.Module, value_head: ValueHead, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.critic_backbone = backbone

    @property
    def shared(self) -> bool:
        return self.critic_backbone is None

    def logprobs_and_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            completion_mask: torch.Tensor, *, temperature: float = 1.0,
                            with_entropy: bool = False,
                            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Right-padded ``[prompt, completion]`` rows ``[N, T]`` -> the policy's token log-probs
        (and entropies, see ``token_logprobs``) and the critic's values, all ``[N, T]`` and 0 off the
        completion tokens."""
        captured: list[torch.Tensor] = []
        hook = None
        if self.shared:  # the policy's own pass also yields the critic's input
            hook = unwrap(self.policy).get_decoder().register_forward_hook(
                lambda _module, _args, output: captured.append(output.last_hidden_state))
        try:
            logprobs_NT, entropy_NT = token_logprobs(self.policy, input_ids, attention_mask, completion_mask,
                                                     temperature=temperature, with_entropy=with_entropy)
        finally:
            if hook is not None:
                hook.remove()
        if self.shared:
            hidden_NTH = captured[0]
        else:
            positions_NT = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            hidden_NTH = self.critic_backbone(input_ids=input_ids, attention_mask=attention_mask,
                                              position_ids=positions_NT, use_cache=False).last_hidden_state
        values_NT = F.pad(self.value_head(hidden_NTH[:, :-1]), (1, 0))  # V of token t from position t - 1
        return logprobs_NT, entropy_NT, torch.where(completion_mask.bool(), values_NT, 0.0)


def build_actor_critic(policy: nn.Module, model_config: ModelConfig, critic: str,
                       init_from: str | None = None) -> ActorCritic:
    """Wrap ``policy`` with a new critic: ``shared``, or ``separate`` with the backbone of
    ``model_config.name`` (the policy's starting weights) or, given ``init_from``, of the reward
    model in that folder (its score head as the first value head)."""
    from posttrain.models import load_model

    if critic not in CRITICS:
        raise ConfigError(f"critic must be one of {', '.join(CRITICS)}; got {critic!r}")
    device = next(policy.parameters()).device
    if critic == "shared":
        hidden = unwrap(policy).config.get_text_config().hidden_size
        return ActorCritic(policy, ValueHead(hidden).to(device))
    head_weight = None
    if init_from is None:
        backbone = load_model(model_config.name, dtype=model_config.dtype, device=str(device)).get_decoder()
    else:
        from posttrain.rewards.reward_model import load_score_model

        reward_model, _ = load_score_model(init_from, model_config.dtype, str(device))
        backbone = getattr(reward_model, reward_model.base_model_prefix)
        head_weight = reward_model.score.weight.detach().float()
        policy_vocab = unwrap(policy).config.get_text_config().vocab_size
        if reward_model.config.vocab_size != policy_vocab:
            raise ConfigError(f"critic_init: the reward model at {init_from} has a vocabulary of "
                              f"{reward_model.config.vocab_size} tokens, the policy {policy_vocab}: the "
                              "critic reads the policy's tokens, so they must share a tokenizer")
    backbone.train()
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)
    if model_config.gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    head = ValueHead(backbone.config.hidden_size, head_weight)
    return ActorCritic(policy, head.to(device), backbone)


def load_actor_critic(model_config: ModelConfig, critic: str,
                      init_from: str | None = None) -> tuple[ActorCritic, Any, torch.device]:
    """The policy (as ``runner.load_policy`` loads it) with a new critic, its tokenizer and device:
    the ``load`` a recipe passes to ``runner.setup``."""
    from posttrain.runner import load_policy

    policy, tokenizer, device = load_policy(model_config)
    return build_actor_critic(policy, model_config, critic, init_from).train(), tokenizer, device
