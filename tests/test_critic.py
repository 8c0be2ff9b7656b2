"""The critic: values aligned with token log-probs, shared vs separate backbones, RM initialisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import ModelConfig
from posttrain.critic import ActorCritic, ValueHead, build_actor_critic
from posttrain.errors import ConfigError
from posttrain.logprobs import hidden_states, token_logprobs


def _batch() -> dict[str, torch.Tensor]:
    """Two right-padded rows: a 3-token prompt, then 3 and 2 completion tokens."""
    ids = torch.randint(5, 500, (2, 6), generator=torch.Generator().manual_seed(0))
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    completion = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0]])
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


def _with_head(model: torch.nn.Module, seed: int = 1) -> ActorCritic:
    ac = build_actor_critic(model, ModelConfig(), "shared")
    with torch.no_grad():
        ac.value_head.linear.weight.normal_(generator=torch.Generator().manual_seed(seed))
        ac.value_head.linear.bias.fill_(0.5)
    return ac


def test_value_head_starts_at_zero_and_computes_in_fp32_under_autocast() -> None:
    head = ValueHead(8)
    hidden = torch.randn(2, 3, 8)
    assert torch.equal(head(hidden), torch.zeros(2, 3))
    with torch.no_grad():
        head.linear.weight.fill_(1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = head(hidden.bfloat16())
    assert values.dtype == torch.float32


@torch.no_grad()
def test_shared_values_read_the_hidden_state_before_each_token(tiny_model: torch.nn.Module) -> None:
    ac = _with_head(tiny_model)
    b = _batch()
    logprobs, _, values = ac.logprobs_and_values(b["input_ids"], b["attention_mask"], b["completion_mask"])
    # the log-probs are exactly token_logprobs'
    want, _ = token_logprobs(tiny_model, b["input_ids"], b["attention_mask"], b["completion_mask"])
    assert torch.equal(logprobs, want)
    # V of token t = head(hidden at t - 1), only on completion tokens
    positions = (b["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    hidden = hidden_states(tiny_model, b["input_ids"], b["attention_mask"], position_ids=positions)
    head = ac.value_head.linear
    for row, col in [(0, 3), (0, 5), (1, 3), (1, 4)]:
        expected = float(hidden[row, col - 1] @ head.weight[0] + head.bias[0])
        assert float(values[row, col]) == pytest.approx(expected, abs=1e-5)
    assert bool((values[b["completion_mask"] == 0] == 0).all())


def test_shared_critic_trains_the_policy_backbone_in_one_pass(tiny_model: torch.nn.Module) -> None:
    ac = _with_head(tiny_model)
    b = _batch()
    calls = []
    hook = tiny_model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    _, _, values = ac.logprobs_and_values(b["input_ids"], b["attention_mask"], b["completion_mask"])
    hook.remove()
    assert len(calls) == 1  # log-probs and values from one backbone pass
    values.sum().backward()
    assert tiny_model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_separate_critic_has_its_own_backbone(tiny_model_dir: str, tiny_model: torch.nn.Module) -> None:
    ac = build_actor_critic(tiny_model, ModelConfig(name=tiny_model_dir), "separate")
    with torch.no_grad():
        ac.value_head.linear.weight.fill_(0.01)
    policy_params = {id(p) for p in tiny_model.parameters()}
    assert not policy_params & {id(p) for p in ac.critic_backbone.parameters()}
    b = _batch()
    _, _, values = ac.logprobs_and_values(b["input_ids"], b["attention_mask"], b["completion_mask"])
    values.sum().backward()
    assert all(p.grad is None for p in tiny_model.parameters())  # the value loss never reaches the policy
    assert ac.critic_backbone.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    # its backbone starts as the policy's starting weights
    start = tiny_model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(ac.critic_backbone.layers[0].mlp.up_proj.weight, start)


@pytest.fixture(scope="module")
def tiny_reward_model_dir(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    from posttrain.models import save_pretrained, tiny_model
    from posttrain.rewards.reward_model import score_model_from_causal_lm

    rm = score_model_from_causal_lm(tiny_model(tokenizer, seed=3), tokenizer.pad_token_id, init_std=0.1)
    path = tmp_path_factory.mktemp("rm") / "final"
    save_pretrained(rm, tokenizer, path)
    return str(path)


def test_critic_from_reward_model_values_are_the_rm_scores_of_prefixes(
        tiny_model: torch.nn.Module, tiny_reward_model_dir: str) -> None:
    from posttrain.rewards.reward_model import load_score_model, sequence_scores

    ac = build_actor_critic(tiny_model, ModelConfig(), "separate", init_from=tiny_reward_model_dir)
    rm, _ = load_score_model(tiny_reward_model_dir)
    assert torch.equal(ac.value_head.linear.weight, rm.score.weight)
    b = _batch()
    with torch.no_grad():
        _, _, values = ac.logprobs_and_values(b["input_ids"], b["attention_mask"], b["completion_mask"])
        for col in (3, 4, 5):  # V of token t = r(the row up to token t - 1)
            prefix = b["attention_mask"][:1].clone()
            prefix[:, col:] = 0
            score = sequence_scores(rm, b["input_ids"][:1], prefix)
            assert float(values[0, col]) == pytest.approx(float(score), abs=1e-5)


def test_critic_errors(tiny_model: torch.nn.Module, tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="critic must be one of shared, separate; got 'both'"):
        build_actor_critic(tiny_model, ModelConfig(), "both")
    from transformers import LlamaConfig, LlamaForSequenceClassification

    other = LlamaForSequenceClassification(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32,
                                                       num_hidden_layers=1, num_attention_heads=2,
                                                       num_labels=1))
    other.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    with pytest.raises(ConfigError, match="vocabulary of 100 tokens"):
        build_actor_critic(tiny_model, ModelConfig(), "separate", init_from=str(tmp_path / "rm"))
