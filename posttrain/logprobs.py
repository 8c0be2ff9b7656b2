"""Token log-probabilities of given tokens, computed in chunks.

The full ``[N, T, vocab]`` logits never exist: the backbone's hidden states are gathered at the
positions whose next token is scored (completion tokens only, usually a fraction of the batch),
and the output layer + log-softmax run on chunks of those rows. In training, each chunk is
recomputed in the backward pass (activation checkpointing), so peak memory holds one chunk of
logits instead of all of them. Skipping prompt positions also skips their share of the output
layer's FLOPs (about a fifth of a small model's forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from posttrain import distributed


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
    rows, cols = score_mask.nonzero(as_tuple=True)  # [M], [M]

    def forward() -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_NTH = hidden_states(model, input_ids, attention_mask, position_ids=position_ids)
        # position t's token is predicted by the hidden state at t - 1
        return _score(model, hidden_NTH[rows, cols - 1], input_ids[rows, cols], (rows, cols), input_ids.shape,
                      temperature, chunk_size, with_entropy)

    return distributed.through_root(model, forward)  # sharded weights gathered (cluster.sharding: fsdp)


def _score(model: nn.Module, hidden_MH: torch.Tensor, targets_M: torch.Tensor,
           where: tuple[torch.Tensor, torch.Tensor], shape: torch.Size, temperature: float, chunk_size: int,
           with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output layer + log-softmax on the gathered hidden states, in chunks; scattered to ``shape``."""
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
    logprobs_NT = torch.zeros(shape, dtype=torch.float32, device=targets_M.device)
    entropy_NT = torch.zeros_like(logprobs_NT) if with_entropy else None
    if pieces_lp:
        logprobs_NT = logprobs_NT.index_put(where, torch.cat(pieces_lp))
        if entropy_NT is not None:
            entropy_NT = entropy_NT.index_put(where, torch.cat(pieces_ent).detach())
    return logprobs_NT, entropy_NT


@dataclass
class SharedPrompts:
    """Rows that repeat one prompt, rewritten as packed rows ``[prompt, completion_1, ..., completion_k]``.

    Each completion attends to the prompt and to itself (causally), never to its neighbours, and its
    positions continue from the prompt's length, so every token sees exactly what it saw in its own
    row; the prompt's tokens go through the model once per packed row instead of once per sample.
    """

    input_ids: torch.Tensor  # [R, S]
    attention_mask: torch.Tensor  # [R, 1, S, S] additive
    position_ids: torch.Tensor  # [R, S]
    source: tuple[torch.Tensor, torch.Tensor]  # ([M], [M]): scored (row, col) in the original [N, T]
    packed: tuple[torch.Tensor, torch.Tensor]  # ([M], [M]): the same token in the packed rows
    previous: torch.Tensor  # [M]: packed column of the hidden state that predicts it


def share_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor,
                  dtype: torch.dtype = torch.float32, max_tokens: int = 2048) -> SharedPrompts:
    """Packs right-padded rows ``[prompt, completion]`` whose prompts are equal and adjacent.

    ``score_mask`` marks each row's completion (a contiguous run after the prompt). A run of rows with
    one prompt becomes one packed row, split when it would pass ``max_tokens`` (the mask is S x S).
    """
    device = input_ids.device
    lengths = attention_mask.long().sum(-1).tolist()
    starts = [int(row.nonzero()[0]) if row.any() else length
              for row, length in zip(score_mask.bool(), lengths)]
    ids_cpu = input_ids.tolist()
    packs: list[list[int]] = []  # the original rows of each packed row
    for i in range(len(ids_cpu)):
        prompt = ids_cpu[i][:starts[i]]
        if packs:
            head = packs[-1][0]
            size = starts[head] + sum(lengths[j] - starts[j] for j in packs[-1])
            if ids_cpu[head][:starts[head]] == prompt and size + lengths[i] - starts[i] <= max_tokens:
                packs[-1].append(i)
                continue
        packs.append([i])
    rows_ids, rows_pos, rows_seg = [], [], []
    source_r, source_c, packed_r, packed_c, previous = [], [], [], [], []
    for r, members in enumerate(packs):
        prompt_len = starts[members[0]]
        ids, pos, seg = ids_cpu[members[0]][:prompt_len], list(range(prompt_len)), [0] * prompt_len
        for k, i in enumerate(members, start=1):
            offset = len(ids)
            completion = ids_cpu[i][starts[i]:lengths[i]]
            ids += completion
            pos += range(prompt_len, prompt_len + len(completion))
            seg += [k] * len(completion)
            for t in range(len(completion)):
                source_r.append(i)
                source_c.append(starts[i] + t)
                packed_r.append(r)
                packed_c.append(offset + t)
                previous.append(offset + t - 1 if t else prompt_len - 1)
        rows_ids.append(ids)
        rows_pos.append(pos)
        rows_seg.append(seg)
    width = max(map(len, rows_ids))
    pad_id = ids_cpu[0][-1] if lengths[0] < len(ids_cpu[0]) else 0
    for ids, pos, seg in zip(rows_ids, rows_pos, rows_seg):
        tail = width - len(ids)
        ids += [pad_id] * tail
        pos += range(tail)
        seg += [-1] * tail  # the padding tail attends only to itself, so no attention row is empty
    seg_RS = torch.tensor(rows_seg, device=device)
    same_RSS = (seg_RS[:, :, None] == seg_RS[:, None, :]) | (seg_RS[:, None, :] == 0)
    allowed_RSS = same_RSS & torch.ones(width, width, dtype=torch.bool, device=device).tril()
    mask = torch.zeros(allowed_RSS.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed_RSS, torch.finfo(dtype).min)

    def as_tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return SharedPrompts(as_tensor(rows_ids), mask[:, None], as_tensor(rows_pos),
                         (as_tensor(source_r), as_tensor(source_c)),
                         (as_tensor(packed_r), as_tensor(packed_c)), as_tensor(previous))


def shared_prompt_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           completion_mask: torch.Tensor, *, temperature: float = 1.0, chunk_size: int = 1024,
                           with_entropy: bool = False, max_tokens: int = 2048,
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` on the completion tokens, with each run of equal prompts computed once.

    Same result (and gradients) as ``token_logprobs(model, input_ids, attention_mask, completion_mask)``
    on right-padded ``[prompt, completion]`` rows; for GRPO groups (G samples of one prompt) the
    forward and backward passes shrink from ``G·(prompt + completion)`` to ``prompt + G·completion``
    tokens per group.
    """
    shared = share_prompts(input_ids, attention_mask, completion_mask, _compute_dtype(model), max_tokens)
    rows, _ = shared.packed

    def forward() -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_RSH = hidden_states(model, shared.input_ids, shared.attention_mask,
                                   position_ids=shared.position_ids)
        return _score(model, hidden_RSH[rows, shared.previous], input_ids[shared.source], shared.source,
                      input_ids.shape, temperature, chunk_size, with_entropy)

    return distributed.through_root(model, forward)


def _compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the attention scores are computed in (autocast's when it is on)."""
    device_type = next(model.parameters()).device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return next(model.parameters()).dtype


def naive_token_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """Reference implementation through the full ``[N, T, V]`` logits (tests and benchmarks only)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    logprobs = F.log_softmax(logits[:, :-1] / temperature, dim=-1)
    chosen = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = chosen * attention_mask[:, 1:]
    return out
