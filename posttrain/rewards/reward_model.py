"""Reward models: a causal LM's backbone with a scalar head, scoring (prompt, response) pairs.

The model is a transformers ``*ForSequenceClassification`` with one label, so a trained reward
model is an ordinary HF folder: ``AutoModelForSequenceClassification.from_pretrained(path)`` loads
it. The reward r(x, y) is the head applied to the hidden state of the last token of the rendered
conversation (right padding; for chat templates that end a turn with "<|im_end|>\\n" that token is
the newline, which is also the token transformers' own classifier reads, the rightmost non-pad one).

``reward_model_reward(path)`` turns a trained model into a reward function with TRL's signature,
so RL configs can say ``rewards: ["reward_model:runs/rm/final"]``: batched, without gradients, each
run of equal prompts (a GRPO group) through the backbone once.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from posttrain.errors import ConfigError, ModelLoadError

INIT_STD = 1e-3  # the head starts near zero: every pair starts at the loss log 2, no random preference


def score_model_from_causal_lm(causal_lm: nn.Module, pad_token_id: int | None, seed: int = 0,
                               init_std: float = INIT_STD) -> nn.Module:
    """A one-label ``*ForSequenceClassification`` with ``causal_lm``'s backbone weights and a fresh
    score head drawn from N(0, init_std²) (seeded); the output layer is dropped."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    config.architectures = None
    config.pad_token_id = pad_token_id
    dtype = next(causal_lm.parameters()).dtype
    model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    backbone = getattr(causal_lm, causal_lm.base_model_prefix)
    getattr(model, model.base_model_prefix).load_state_dict(backbone.state_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nn.init.normal_(model.score.weight, std=init_std)
    model.config.use_cache = False
    return model.to(next(causal_lm.parameters()).device)


def is_score_model(path: str) -> bool:
    """Whether the HF folder at ``path`` holds a sequence classifier (a trained reward model)."""
    import json
    from pathlib import Path

    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(str(name).endswith("ForSequenceClassification") for name in architectures)


def load_score_model(path: str, dtype: str = "float32", device: str = "cpu") -> tuple[nn.Module, Any]:
    """A trained reward model (HF folder) and its tokenizer, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.models import load_tokenizer, resolve_device, resolve_dtype

    if not is_score_model(path):
        raise ModelLoadError(f"{path} is not a reward model folder: expected config.json whose architectures "
                             "end in ForSequenceClassification (the final/ folder of `posttrain rm`)")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=resolve_dtype(dtype))
    if model.config.num_labels != 1:
        raise ModelLoadError(f"{path} has {model.config.num_labels} labels; a reward model has one")
    model.config.use_cache = False
    return model.to(resolve_device(device)).eval(), load_tokenizer(path)


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    from posttrain.logprobs import unwrap

    inner = unwrap(model)
    return getattr(inner, inner.base_model_prefix), inner.score


def sequence_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    score_mask: torch.Tensor | None = None, *, share_prompts: bool = False) -> torch.Tensor:
    """r(x, y) of right-padded rows [N, T]: the score head on each row's last attended token -> [N].

    With ``share_prompts`` (``score_mask`` marking each row's response), adjacent rows with the same
    prompt are packed so the prompt goes through the backbone once (same scores, fewer tokens).
    """
    from posttrain.logprobs import _compute_dtype
    from posttrain.logprobs import share_prompts as pack

    backbone, head = _parts(model)
    lengths_N = attention_mask.long().sum(-1)
    if share_prompts:
        if score_mask is None:
            raise ValueError("share_prompts needs score_mask (1 on each row's response)")
        shared = pack(input_ids, attention_mask, score_mask, _compute_dtype(model))
        hidden_RSH = backbone(input_ids=shared.input_ids, attention_mask=shared.attention_mask,
                              position_ids=shared.position_ids, use_cache=False).last_hidden_state
        rows_M, cols_M = shared.source
        last_M = cols_M == lengths_N[rows_M] - 1  # one token per row: its last
        order = rows_M[last_M].argsort()
        hidden_NH = hidden_RSH[shared.packed[0][last_M][order], shared.packed[1][last_M][order]]
    else:
        positions_NT = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden_NTH = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_NT,
                              use_cache=False).last_hidden_state
        hidden_NH = hidden_NTH[torch.arange(len(lengths_N), device=input_ids.device), lengths_N - 1]
    # the head outside autocast: bf16 scores would tie pairs that differ in the fourth digit
    with torch.autocast(device_type=hidden_NH.device.type, enabled=False):
        return head(hidden_NH.to(head.weight.dtype)).squeeze(-1).float()


def score_texts(model: nn.Module, tokenizer: Any, prompts: Sequence[Any], responses: Sequence[Any], *,
                batch_size: int = 16, max_length: int = 2048, system_prompt: str | None = None,
                wheres: Sequence[str | None] | None = None) -> list[float]:
    """r(prompt, response) for each pair, in batches, without gradients. Responses longer than
    ``max_length`` tokens (prompt included) are cut at the end and scored there."""
    from posttrain.data.chat import collate_padded
    from posttrain.data.preferences import encode_response

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    device = next(model.parameters()).device
    examples = [encode_response(tokenizer, prompt, response, max_length, truncate=True,
                                where=wheres[i] if wheres else None, system_prompt=system_prompt)
                for i, (prompt, response) in enumerate(zip(prompts, responses))]
    scores: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            part = examples[start:start + batch_size]
            batch = collate_padded(part, tokenizer.pad_token_id, device=device)
            share = all(any(mask) for _, mask in part)  # packing needs a response in every row
            scores += sequence_scores(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                      share_prompts=share).tolist()
    model.train(was_training)
    return scores


@functools.cache
def _cached_model(path: str) -> tuple[nn.Module, Any]:
    from posttrain.models import resolve_device

    return load_score_model(path, device=str(resolve_device("auto")))


def reward_model_reward(path: str) -> Any:
    """A TRL-signature reward function scoring each completion with the reward model at ``path``
    (loaded once per process)."""
    if not path:
        raise ConfigError("reward 'reward_model:PATH' needs the path of a trained reward model, e.g. "
                          "reward_model:runs/rm-arithmetic/final")
    try:
        model, tokenizer = _cached_model(path)
    except ModelLoadError as error:
        raise ConfigError(f"reward 'reward_model:{path}': {error}") from error

    def reward_model(prompts: list[Any], completions: list[Any], **_: Any) -> list[float | None]:
        from posttrain.rewards.answers import completion_text

        texts = [completion_text(c) for c in completions]
        return list(score_texts(model, tokenizer, prompts, texts))

    return reward_model
