"""Token log-probabilities of given tokens, computed in chunks.

The full ``[N, T, vocab]`` logits never exist: the backbone's hidden states are gathered at the
positions whose next token is scored (completion tokens only, usually a fraction of the batch),
and the output layer + log-softmax run on chunks of those rows. In training, each chunk is
recomputed in the backward pass (activation checkpointing), so peak memory holds one chunk of
logits instead of all of them. Skipping prompt positions also skips their share of the output
layer's FLOPs (about a fifth of a small model's forward pass).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying ``*ForCausalLM`` of a PEFT or DDP wrapper (LoRA layers stay in place)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / FSDP
            model = model.module
        elif hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  **kwargs: Any) -> torch.Tensor:
    """Last hidden states of the decoder stack ``[N, T, H]`` (no output layer)."""
    causal_lm = unwrap(model)
    decoder = causal_lm.get_decoder()
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return out.last_hidden_state


def _chunk_logprobs(head: nn.Module, hidden_MH: torch.Tensor, targets_M: torch.Tensor,
                    temperature: float, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits_MV = head(hidden_MH).float()
    if temperature != 1.0:
        logits_MV = logits_MV / temperature
    logprobs_MV = F.log_softmax(logits_MV, dim=-1)
    chosen_M = logprobs_MV.gather(-1, targets_M.unsqueeze(-1)).squeeze(-1)
    entropy_M = torch.zeros_like(chosen_M)
    if with_entropy:  # a metric: no gradient, so nothing of it is kept for the backward pass
        with torch.no_grad():
            detached = logprobs_MV.detach()
            entropy_M = -(detached.exp() * detached).sum(-1)
    return chosen_M, entropy_M


def token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each token given the tokens before it.

    Args:
        input_ids, attention_mask: ``[N, T]``, right- or left-padded.
        score_mask: ``[N, T]``, 1 on the tokens to score (e.g. completion tokens); default every
            attended token after the first.
        temperature: logits are divided by it (match the sampler's temperature in RL).
        chunk_size: rows of ``[chunk, vocab]`` logits materialised at once.
    Returns:
        ``logprobs [N, T]`` with ``logprobs[i, t] = log p(input_ids[i, t] | input_ids[i, :t])`` on
        scored positions and 0 elsewhere, and ``entropy [N, T]`` of the predictive distribution at
        the same positions when ``with_entropy`` (else None).
    """
    packed = attention_mask.dim() == 4  # a block-diagonal mask of packed examples, [N, 1, T, T]
    if score_mask is None:
        if packed:
            raise ValueError("packed batches need an explicit score_mask")
        score_mask = attention_mask.long().cumsum(-1) > 1  # every attended token but the first
    score_mask = score_mask.bool() if packed else score_mask.bool() & attention_mask.bool()
    score_mask[:, 0] = False  # the first token has no context to be predicted from
    if position_ids is None:  # positions count attended tokens, so left padding is handled too
        if packed:
            raise ValueError("packed batches need position_ids restarting at each example")
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden_NTH = hidden_states(model, input_ids, attention_mask, position_ids=position_ids)
    # position t's token is predicted by the hidden state at t - 1
    rows, cols = score_mask.nonzero(as_tuple=True)  # [M], [M]
    hidden_MH = hidden_NTH[rows, cols - 1]
    targets_M = input_ids[rows, cols]
    head = unwrap(model).get_output_embeddings()
    # one chunk's logits are kept for backward anyway; with several, each is recomputed instead
    recompute = torch.is_grad_enabled() and hidden_MH.requires_grad and hidden_MH.shape[0] > chunk_size
    pieces_lp, pieces_ent = [], []
    for start in range(0, hidden_MH.shape[0], chunk_size):
        chunk = (head, hidden_MH[start:start + chunk_size], targets_M[start:start + chunk_size],
                 temperature, with_entropy)
        if recompute:
            lp, ent = checkpoint(_chunk_logprobs, *chunk, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*chunk)
        pieces_lp.append(lp)
        pieces_ent.append(ent)
    logprobs_NT = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    entropy_NT = torch.zeros_like(logprobs_NT) if with_entropy else None
    if pieces_lp:
        logprobs_NT = logprobs_NT.index_put((rows, cols), torch.cat(pieces_lp))
        if entropy_NT is not None:
            entropy_NT = entropy_NT.index_put((rows, cols), torch.cat(pieces_ent).detach())
    return logprobs_NT, entropy_NT


def naive_token_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """Reference implementation through the full ``[N, T, V]`` logits (tests and benchmarks only)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    logprobs = F.log_softmax(logits[:, :-1] / temperature, dim=-1)
    chosen = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = chosen * attention_mask[:, 1:]
    return out
