"""The guarded optimizer step, schedules and micro-batch weighting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from posttrain.config import OptimConfig
from posttrain.rollout.weights import weights_signature
from posttrain.training import (
    Stepper,
    TrainingDiverged,
    accumulate,
    build_optimizer,
    build_scheduler,
    counted_row,
    lr_factor,
    micro_batch_weights,
)


def _setup(max_bad_steps: int = 2) -> tuple[nn.Module, Stepper]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optim = OptimConfig(lr=0.1, max_bad_steps=max_bad_steps)
    optimizer = build_optimizer(model, optim)
    return model, Stepper(model, optimizer, build_scheduler(optimizer, optim, 10), optim)


def test_finite_step_updates_weights() -> None:
    model, stepper = _setup()
    before = [p.clone() for p in model.parameters()]
    stepper.backward(model(torch.ones(3, 4)).sum())
    stats = stepper.step()
    assert stats["train/skipped_step"] == 0.0 and stats["train/grad_norm"] > 0
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_non_finite_step_is_skipped_and_weights_are_bit_identical(poison: str) -> None:
    model, stepper = _setup()
    before = [p.clone() for p in model.parameters()]
    out = model(torch.ones(3, 4)).sum()
    if poison == "loss":
        stepper.backward(out * float("nan"))
    else:
        stepper.backward(out)
        model.weight.grad[0, 0] = float("inf")
    stats = stepper.step()
    assert stats["train/skipped_step"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_a_fused_step_advances_the_weights_version_the_rollout_engine_reads_and_a_skipped_one_does_not(
        ) -> None:
    model, stepper = _setup()
    assert stepper.optimizer.defaults["fused"]  # fused kernels move no version counter of their own
    start = weights_signature(model)
    stepper.backward(model(torch.ones(3, 4)).sum() * float("nan"))
    stepper.step()
    assert weights_signature(model) == start  # skipped: same weights, no needless refresh
    stepper.backward(model(torch.ones(3, 4)).sum())
    stepper.step()
    assert weights_signature(model) != start


def test_too_many_bad_steps_abort_with_message() -> None:
    model, stepper = _setup(max_bad_steps=2)
    for _ in range(2):
        stepper.backward(model(torch.ones(1, 4)).sum() * float("nan"))
        stepper.step()
    stepper.backward(model(torch.ones(1, 4)).sum() * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"3 optimizer steps in a row .*optim.max_bad_steps = 2"):
        stepper.step()


def test_schedules_by_hand() -> None:
    assert lr_factor(0, 10, 2, "constant") == 0.5
    assert lr_factor(1, 10, 2, "constant") == 1.0
    assert lr_factor(2, 10, 2, "linear") == 1.0
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(20, 10, 0, "cosine") == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        lr_factor(0, 10, 0, "step")


def test_micro_batch_weights_by_mode() -> None:
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.float)
    slices = [slice(0, 2), slice(2, 4)]
    assert micro_batch_weights(mask, slices, "token_mean") == pytest.approx([4 / 6, 2 / 6])
    assert micro_batch_weights(mask, slices, "sequence_mean") == pytest.approx([2 / 3, 1 / 3])
    assert micro_batch_weights(mask, slices, "constant") == pytest.approx([0.5, 0.5])


def test_accumulated_gradient_equals_full_batch_gradient() -> None:
    from posttrain.losses import aggregate

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(5, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]).float()
    for mode in ("token_mean", "sequence_mean", "constant"):
        model.zero_grad()
        aggregate(model(x).squeeze(-1), mask, mode, max_tokens=4).backward()
        full = model.weight.grad.clone()
        optim = OptimConfig(lr=0.1)
        stepper = Stepper(model, build_optimizer(model, optim), None, optim)
        model.zero_grad()
        accumulate(stepper, mask, 2, mode,
                   lambda rows, mode=mode: (aggregate(model(x[rows]).squeeze(-1), mask[rows], mode,
                                                      max_tokens=4), {}))
        assert torch.allclose(model.weight.grad, full, atol=1e-6), mode


def test_parameter_groups_take_their_own_learning_rate_and_share_the_schedule() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    optim = OptimConfig(lr=0.1, warmup_steps=0, schedule="linear")
    optimizer = build_optimizer(model, optim, {"1.": 0.5})
    scheduler = build_scheduler(optimizer, optim, 4)
    by_lr = {group["lr"]: sum(p.numel() for p in group["params"]) for group in optimizer.param_groups}
    assert by_lr == {0.1: 6, 0.5: 3}  # layer 0: 4 weights + 2 biases; layer 1: 2 + 1
    optimizer.step()
    scheduler.step()
    assert sorted(group["lr"] for group in optimizer.param_groups) == pytest.approx([0.075, 0.375])


def test_counted_row_is_the_first_row_whose_loss_is_finite() -> None:
    """What a fsdp rank with fewer micro-batches runs at weight 0: a row with a token that counts (a row
    without one has a 0/0 loss, whose zero-weighted gradient is still NaN), any row for ``constant``."""
    mask = torch.tensor([[1, 1], [0, 0], [0, 0], [0, 1]])
    assert counted_row(mask, slice(1, 4), "token_mean") == slice(3, 4)
    assert counted_row(mask, slice(1, 4), "sequence_mean") == slice(3, 4)
    assert counted_row(mask, slice(1, 4), "constant") == slice(1, 2)
