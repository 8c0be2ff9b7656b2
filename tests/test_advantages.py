"""Advantages on hand-computed numbers, reward edge cases (NaN, all-equal, 1e6, 1e-8) and every error."""

import math

import pytest
import torch

from posttrain.advantages import (
    AdaptiveKLController,
    gae,
    group_advantages,
    kl_shaped_rewards,
    whiten,
    zero_std_groups,
)

NAN, INF = math.nan, math.inf


def t(values, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def approx(actual: torch.Tensor, expected: list, tol: float = 1e-5) -> bool:
    return torch.allclose(actual, t(expected, actual.dtype), atol=tol, rtol=0)


# ---------------------------------------------------------------- group advantages


def test_grpo_advantages_and_all_equal_group() -> None:
    rewards = t([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    # group 0: mean 0.5, unbiased std √(1/3); ±0.5 / (0.57735 + 1e-4). Group 1: all equal.
    advantages = group_advantages(rewards, group_size=4)
    a = 0.86587543
    assert approx(advantages[:4], [a, -a, -a, a])
    assert torch.equal(advantages[4:], torch.zeros(4))
    assert zero_std_groups(rewards, 4).tolist() == [False, True]


@pytest.mark.parametrize("scale", ["group_std", "batch_std", "none"])
@pytest.mark.parametrize("baseline", ["mean", "leave_one_out"])
def test_all_equal_fp32_group_is_exactly_zero(baseline: str, scale: str) -> None:
    # 0.35 is not representable, so a computed mean can differ from it by rounding
    rewards = t([0.35] * 8 + [0.1] * 7 + [0.9])
    advantages = group_advantages(rewards, 8, baseline=baseline, scale=scale)
    assert torch.equal(advantages[:8], torch.zeros(8))
    assert (advantages[8:] != 0).all()
    assert zero_std_groups(rewards, 8).tolist() == [True, False]


def test_nan_rewards_are_left_out_and_get_zero() -> None:
    rewards = t([1.0, NAN, 0.0, 1.0, NAN, 0.7, NAN, NAN, NAN, NAN, NAN, NAN])
    advantages = group_advantages(rewards, 4)
    # group 0: valid [1, 0, 1], mean 2/3, unbiased std √(1/3)
    assert approx(advantages[:4], [0.57725029, 0.0, -1.15450057, 0.57725029])
    assert advantages[1] == 0
    # group 1: one valid reward; group 2: none. Both exactly 0 and flagged.
    assert torch.equal(advantages[4:], torch.zeros(8))
    assert zero_std_groups(rewards, 4).tolist() == [False, True, True]


def test_skewed_fp32_group_is_bounded() -> None:
    rewards = t([0.35] * 7 + [0.95])
    advantages = group_advantages(rewards, 8)
    # mean 0.425, unbiased std √(0.315 / 7) = 0.212132
    assert approx(advantages, [-0.35338680] * 7 + [2.47370762], tol=1e-4)
    assert advantages.abs().max() <= 7 / math.sqrt(8)  # the largest |z| with n - 1 in the std


def test_reward_magnitudes_1e6_and_1e_8() -> None:
    big = group_advantages(t([1e6, 1e6 + 2, 1e6 + 4, 1e6 + 6]), 4)
    # deviations -3, -1, 1, 3; unbiased std √(20/3)
    assert approx(big, [-1.16185001, -0.38728334, 0.38728334, 1.16185001], tol=1e-4)
    assert approx(group_advantages(t([-1e6, 1e6]), 2), [-0.70710678, 0.70710678])
    tiny = group_advantages(t([0.0, 1e-8, 0.0, 1e-8]), 4)
    # std 5.77e-9 is far below eps = 1e-4, so eps sets the scale: 5e-9 / (5.77e-9 + 1e-4)
    assert approx(tiny, [-4.99971e-5, 4.99971e-5, -4.99971e-5, 4.99971e-5], tol=1e-9)
    assert approx(group_advantages(t([0.0, 1e-8]), 2, eps=0.0), [-0.70710678, 0.70710678], tol=1e-4)


def test_leave_one_out_baseline() -> None:
    # [1, 0, 0, 1]: b_0 = (0 + 0 + 1) / 3, so A_0 = 2/3; b_1 = 2/3, A_1 = -2/3
    rloo = group_advantages(t([1.0, 0.0, 0.0, 1.0]), 4, baseline="leave_one_out", scale="none")
    assert approx(rloo, [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # with a missing reward the others are [1, 0, 4]: 1 - 4/2, 0 - 5/2, 4 - 1/2
    rloo = group_advantages(t([1.0, 0.0, NAN, 4.0]), 4, baseline="leave_one_out", scale="none")
    assert approx(rloo, [-1.0, -2.5, 0.0, 3.5])


def test_batch_std_and_no_scale() -> None:
    rewards = t([0.0, 1.0, 2.0, 4.0])
    assert approx(group_advantages(rewards, 2, scale="none"), [-0.5, 0.5, -1.0, 1.0])
    # group means 0.5 and 3; std of the batch [0, 1, 2, 4] (unbiased) = √(8.75 / 3)
    assert approx(
        group_advantages(rewards, 2, scale="batch_std"), [-0.29275288, 0.29275288, -0.58550576, 0.58550576]
    )


def test_dtypes() -> None:
    advantages = group_advantages(t([1.0, 0.0], torch.bfloat16), 2)
    assert advantages.dtype == torch.float32
    assert group_advantages(t([1.0, 0.0], torch.float64), 2).dtype == torch.float64
    assert approx(group_advantages(torch.tensor([3, 1]), 2, scale="none"), [1.0, -1.0])


def test_group_advantage_errors() -> None:
    rewards = t([1.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"group_size \(samples_per_prompt\) must be at least 2 .*got 1"):
        group_advantages(rewards, 1)
    with pytest.raises(
        ValueError, match=r"got N=4 rewards, not a multiple of group_size \(samples_per_prompt\) = 3"
    ):
        group_advantages(rewards, 3)
    with pytest.raises(ValueError, match=r"rewards_N has ±inf at rows \[1, 3\]; only NaN"):
        group_advantages(t([1.0, INF, 0.0, -INF]), 2)
    with pytest.raises(ValueError, match=r"rewards_N must be a 1-D \[N\] tensor, got shape \(2, 2\)"):
        group_advantages(rewards.view(2, 2), 2)
    with pytest.raises(ValueError, match=r"unknown baseline 'median'; choose one of: leave_one_out, mean"):
        group_advantages(rewards, 2, baseline="median")
    with pytest.raises(ValueError, match=r"unknown scale 'std'; choose one of: batch_std, group_std, none"):
        group_advantages(rewards, 2, scale="std")
    with pytest.raises(ValueError, match=r"eps must be ≥ 0, got -1"):
        group_advantages(rewards, 2, eps=-1)
    with pytest.raises(ValueError, match=r"samples_per_prompt"):
        zero_std_groups(rewards, 1)


# ---------------------------------------------------------------- GAE


def test_gae_three_steps_and_padding() -> None:
    rewards = t([[0.0, 0.0, 1.0], [0.0, 2.0, 99.0]])
    values = t([[0.5, 0.6, 0.7], [1.0, 0.5, 77.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: δ_2 = 1 - 0.7 = 0.3; δ_1 = 0.9·0.7 - 0.6 = 0.03; δ_0 = 0.9·0.6 - 0.5 = 0.04
    #        A_2 = 0.3, A_1 = 0.03 + 0.72·0.3 = 0.246, A_0 = 0.04 + 0.72·0.246 = 0.21712
    # row 1 (length 2): δ_1 = 2 - 0.5 = 1.5; δ_0 = 0.9·0.5 - 1 = -0.55; A_0 = -0.55 + 0.72·1.5 = 0.53
    assert approx(advantages, [[0.21712, 0.246, 0.3], [0.53, 1.5, 0.0]])
    assert approx(returns, [[0.71712, 0.846, 1.0], [1.53, 2.0, 0.0]])
    assert advantages[1, 2] == 0 and returns[1, 2] == 0


def test_gae_errors() -> None:
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        gae(x, x, x, gamma=1.5, lam=0.9)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got -0.1"):
        gae(x, x, x, gamma=1.0, lam=-0.1)
    with pytest.raises(ValueError, match=r"rewards has shape \(1, 3\) but values has shape \(1, 2\)"):
        gae(x, torch.zeros(1, 2), x, gamma=1.0, lam=1.0)
    with pytest.raises(ValueError, match=r"rewards must be \[N, T\], got shape \(3,\)"):
        gae(x[0], x[0], x[0], gamma=1.0, lam=1.0)


# ---------------------------------------------------------------- whiten


def test_whiten_over_masked_entries() -> None:
    x = t([[1.0, 2.0, 3.0], [4.0, 100.0, NAN]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    # valid [1, 2, 3, 4]: mean 2.5, unbiased variance 5/3
    assert approx(whiten(x, mask), [[-1.16189500, -0.38729833, 0.38729833], [1.16189500, 0.0, 0.0]])
    assert approx(
        whiten(x, mask, shift_mean=False), [[1.33810500, 2.11270167, 2.88729833], [3.66189500, 0.0, 0.0]]
    )
    assert torch.equal(whiten(x, torch.zeros(2, 3)), torch.zeros(2, 3))


def test_whiten_error() -> None:
    with pytest.raises(ValueError, match=r"x has shape \(1, 3\) but mask has shape \(1, 2\)"):
        whiten(torch.zeros(1, 3), torch.ones(1, 2))


# ---------------------------------------------------------------- KL-shaped rewards


def test_kl_shaped_rewards_places_score_on_last_valid_token() -> None:
    logprobs = t([[-1.0, -2.0, -3.0], [-1.0, -1.0, 5.0], [-1.0, -1.0, -1.0]])
    ref = t([[-1.5, -1.0, -3.0], [-1.0, -2.0, 0.0], [0.0, 0.0, 0.0]])
    mask = t([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    rewards = kl_shaped_rewards(t([10.0, 20.0, 30.0]), logprobs, ref, mask, beta=0.1)
    # -0.1 · (log π - log π_ref) per token, + score at the last valid token; row 2 has none
    assert approx(rewards, [[-0.05, 0.1, 10.0], [0.0, 19.9, 0.0], [0.0, 0.0, 0.0]])


def test_kl_shaped_rewards_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"scores_N must be \[N\] and logprobs \[N, T\], got shapes \(3,\) and \(2, 3\)"
    ):
        kl_shaped_rewards(torch.zeros(3), x, x, x, beta=0.1)
    with pytest.raises(ValueError, match=r"beta must be ≥ 0, got -0.1"):
        kl_shaped_rewards(torch.zeros(2), x, x, x, beta=-0.1)
    with pytest.raises(ValueError, match=r"logprobs has shape \(2, 3\) but mask has shape \(2, 2\)"):
        kl_shaped_rewards(torch.zeros(2), x, x, torch.zeros(2, 2), beta=0.1)


# ---------------------------------------------------------------- adaptive KL


def test_adaptive_kl_moves_toward_target() -> None:
    up = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # (12 - 6) / 6 = 1 is clipped to 0.2, (3 - 6) / 6 to -0.2; (6.6 - 6) / 6 = 0.1 passes
    assert up.update(12.0, n_steps=256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    down = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert down.update(3.0, n_steps=256) == pytest.approx(0.1 * (1 - 0.2 * 256 / 10000))
    near = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert near.update(6.6, n_steps=256) == pytest.approx(0.1 * (1 + 0.1 * 256 / 10000))
    assert near.value == pytest.approx(0.100256)


def test_adaptive_kl_resumes_exactly() -> None:
    first = AdaptiveKLController(0.05, target=4.0, horizon=500)
    for kl in (9.0, 1.0, 4.5):
        first.update(kl, n_steps=32)
    resumed = AdaptiveKLController(1.0, target=1.0, horizon=1)
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == first.state_dict()
    assert resumed.update(7.0, 32) == first.update(7.0, 32)


def test_adaptive_kl_errors() -> None:
    with pytest.raises(
        ValueError, match=r"AdaptiveKLController init_kl_coef must be a finite number > 0, got 0"
    ):
        AdaptiveKLController(0, target=6.0, horizon=10000)
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    with pytest.raises(ValueError, match=r"current_kl must be finite, got nan; β left at 0.1"):
        controller.update(math.nan, 10)
    with pytest.raises(ValueError, match=r"n_steps must be in \[0, 5 · horizon = 500\), got 500"):
        controller.update(1.0, 500)
    with pytest.raises(ValueError, match=r"AdaptiveKLController state is missing horizon, target"):
        controller.load_state_dict({"value": 0.2})
    with pytest.raises(ValueError, match=r"AdaptiveKLController value must be a finite number > 0, got -1"):
        controller.load_state_dict({"value": -1, "target": 6.0, "horizon": 100})
    assert controller.value == 0.1
