"""The rollout engine follows the training weights by itself, through the public API only.

Fused AdamW (the library's default optimizer) writes the weights without moving their version
counters, so before the global step hook of ``posttrain/rollout/weights.py`` a bf16 engine kept
sampling the old weights after a step: on that code the three "follows" tests below measured
returned log-probs 2.1-2.2 nats (the rank-2 adapter: 0.57) away from a re-scoring with the new weights.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from posttrain.config import OptimConfig, SamplingConfig
from posttrain.logprobs import token_logprobs
from posttrain.models import add_lora
from posttrain.models import tiny_model as build
from posttrain.rollout import Rollouts, SamplingParams, TorchEngine, generate
from posttrain.training import Stepper, build_optimizer

PROMPTS = ["Hello there, how", "The capital of France is"]
BF16 = {"dtype": "bfloat16"}
SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=8, seed=0)
# |bf16 sampled - fp32 re-scored| log-prob on these tiny models is ~0.004-0.04 nats; a step at
# lr 0.05 moves them by ~2 nats (a rank-2 adapter's step at lr 0.2: ~0.5).
BF16_TOLERANCE = 0.05


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny-model ops gain nothing from a second thread on this shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rescoring_gap(model: torch.nn.Module, rollouts: Rollouts, pad_id: int) -> float:
    """Largest |returned log-prob - log-prob of a re-scoring pass with ``model``| over the completions."""
    batch = rollouts.to_batch(pad_id)
    with torch.no_grad():
        rescored, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                     batch["completion_mask"])
    mask = batch["completion_mask"].bool()
    return (rescored[mask] - batch["logprobs"][mask]).abs().max().item()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rollouts: Rollouts, pad_id: int
               ) -> None:
    """One plain PyTorch step raising the sampled completions' likelihood."""
    batch = rollouts.to_batch(pad_id)
    model.train()
    logprobs, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    (-logprobs.sum()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()


def assert_samples_follow(model: torch.nn.Module, old: torch.nn.Module, rollouts: Rollouts, pad_id: int
                          ) -> None:
    assert rescoring_gap(model, rollouts, pad_id) < BF16_TOLERANCE
    assert rescoring_gap(old, rollouts, pad_id) > 5 * BF16_TOLERANCE  # what a stale copy would match


def test_generate_follows_a_stepper_step_with_the_default_fused_adamw(tokenizer: Any) -> None:
    model, pad = build(tokenizer, seed=1), tokenizer.pad_token_id
    optim = OptimConfig(lr=0.05)
    optimizer = build_optimizer(model, optim)
    assert optimizer.defaults["fused"]  # the case that moves no version counter
    stepper = Stepper(model, optimizer, None, optim)
    before = generate(model, tokenizer, PROMPTS, 2, SAMPLING, engine_options=BF16)
    old = copy.deepcopy(model)
    batch = before.to_batch(pad)
    model.train()
    logprobs, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    stepper.backward(-logprobs.sum())
    assert stepper.step()["train/skipped_step"] == 0.0
    after = generate(model, tokenizer, PROMPTS, 2, SAMPLING, engine_options=BF16)
    assert_samples_follow(model, old, after, pad)


def test_generate_follows_a_plain_torch_fused_adamw_loop_and_load_state_dict(tokenizer: Any) -> None:
    model, pad = build(tokenizer, seed=2), tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    old = copy.deepcopy(model)
    rollouts = generate(model, tokenizer, PROMPTS, 2, SAMPLING, engine_options=BF16)
    for _ in range(2):  # the engine follows every step, not only the first after it was built
        train_step(model, optimizer, rollouts, pad)
        stepped = copy.deepcopy(model)
        rollouts = generate(model, tokenizer, PROMPTS, 2, SAMPLING, engine_options=BF16)
        assert_samples_follow(model, old, rollouts, pad)
        old = stepped
    # a checkpoint load writes the weights back in place: the copy follows that too
    model.load_state_dict(build(tokenizer, seed=2).state_dict())
    reloaded = generate(model, tokenizer, PROMPTS, 2, SAMPLING, engine_options=BF16)
    assert_samples_follow(model, old, reloaded, pad)


def test_generate_follows_a_lora_adapter_stepped_by_fused_adamw(tokenizer: Any) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the adapter's initialisation
        model, pad = add_lora(build(tokenizer, seed=3), rank=2), tokenizer.pad_token_id
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.2, fused=True)
    rollouts = generate(model, tokenizer, PROMPTS, 2, SAMPLING, engine_options=BF16)
    old = copy.deepcopy(model)
    train_step(model, optimizer, rollouts, pad)
    after = generate(model, tokenizer, PROMPTS, 2, SAMPLING, engine_options=BF16)
    assert_samples_follow(model, old, after, pad)


def test_generate_and_the_recipes_share_one_default_dtype(tokenizer: Any) -> None:
    """``generate`` without engine options samples like a recipe left at its default ``sampling.dtype``."""
    model = build(tokenizer, seed=4)
    default = generate(model, tokenizer, PROMPTS, 2, SAMPLING)
    recipe_default = {"dtype": SamplingConfig().dtype}
    recipe = generate(model, tokenizer, PROMPTS, 2, SAMPLING, engine_options=recipe_default)
    assert default.completion_ids == recipe.completion_ids
    assert all(torch.equal(a, b) for a, b in zip(default.logprobs, recipe.logprobs))
    assert rescoring_gap(model, default, tokenizer.pad_token_id) < 1e-4  # the default is exact


def test_a_bf16_engine_samples_a_bf16_model_itself_rather_than_a_copy(tokenizer: Any) -> None:
    model = build(tokenizer, seed=5).to(torch.bfloat16)
    assert TorchEngine("bfloat16").sampling_model(model) is model
