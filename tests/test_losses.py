"""Losses on hand-computed numbers, edge cases (masks, overflow, extreme margins) and every error."""

import math

import pytest
import torch

from posttrain.losses import (
    aggregate,
    bradley_terry_loss,
    clipped_surrogate,
    dpo_loss,
    importance_metrics,
    kl_penalty,
    kto_loss,
    orpo_loss,
    policy_loss,
    sft_loss,
    truncated_is_weights,
    value_loss,
)

LOG2 = math.log(2)
NAN, INF = math.nan, math.inf


def t(values, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=requires_grad)


def close(actual: torch.Tensor | float, expected: float, tol: float = 1e-5) -> bool:
    value = float(actual.detach()) if isinstance(actual, torch.Tensor) else actual
    return abs(value - expected) <= tol


# ---------------------------------------------------------------- aggregate

# Row 0 has tokens 1, 2 (padding NaN); row 1 has token 4 (padding +inf, 6).
PER_TOKEN = [[1.0, 2.0, NAN], [4.0, INF, 6.0]]
MASK = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("mode", "max_tokens", "expected"),
    [
        ("sequence_mean", None, 2.75),  # ((1 + 2) / 2 + 4 / 1) / 2
        ("token_mean", None, 7 / 3),  # (1 + 2 + 4) / 3
        ("constant", 4, 0.875),  # (1 + 2 + 4) / (2 · 4)
    ],
)
def test_aggregate_modes_on_hand_example(mode: str, max_tokens: int | None, expected: float) -> None:
    per_token = t(PER_TOKEN, requires_grad=True)
    loss = aggregate(per_token, t(MASK), mode, max_tokens)
    assert close(loss, expected)
    loss.backward()
    assert torch.isfinite(per_token.grad).all()  # NaN/inf padding must not leak into gradients
    assert per_token.grad[0, 2] == 0 and per_token.grad[1, 1] == 0


def test_aggregate_gradients_weigh_tokens_by_mode() -> None:
    per_token = t(PER_TOKEN, requires_grad=True)
    aggregate(per_token, t(MASK), "sequence_mean").backward()
    # each of 2 rows weighs 1/2; row 0 splits it over 2 tokens, row 1 gives it to its one token
    assert torch.allclose(per_token.grad, t([[0.25, 0.25, 0.0], [0.5, 0.0, 0.0]]))
    per_token.grad = None
    aggregate(per_token, t(MASK), "token_mean").backward()
    assert torch.allclose(per_token.grad, t([[1 / 3, 1 / 3, 0.0], [1 / 3, 0.0, 0.0]]))


def test_aggregate_accepts_bool_mask() -> None:
    per_token = t(PER_TOKEN)
    for mode in ("sequence_mean", "token_mean"):
        assert aggregate(per_token, t(MASK).bool(), mode) == aggregate(per_token, t(MASK), mode)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("sequence_mean", 1.5), ("token_mean", 1.5), ("constant", 0.5)],  # constant: (1 + 2) / (2 · 3)
)
def test_aggregate_fully_masked_row_is_left_out(mode: str, expected: float) -> None:
    mask = t([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert close(aggregate(t(PER_TOKEN), mask, mode, max_tokens=3), expected)


@pytest.mark.parametrize("mode", ["sequence_mean", "token_mean", "constant"])
def test_aggregate_fully_masked_batch_is_zero_with_grad(mode: str) -> None:
    per_token = t(PER_TOKEN, requires_grad=True)
    loss = aggregate(per_token, torch.zeros(2, 3), mode, max_tokens=3)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(per_token.grad, torch.zeros(2, 3))


def test_aggregate_errors() -> None:
    with pytest.raises(
        ValueError, match=r"unknown aggregation 'mean'; choose one of: constant, sequence_mean, "
    ):
        aggregate(t(PER_TOKEN), t(MASK), "mean")
    with pytest.raises(ValueError, match=r"aggregation 'constant' needs max_tokens"):
        aggregate(t(PER_TOKEN), t(MASK), "constant")
    with pytest.raises(ValueError, match=r"max_tokens must be a positive integer, got 0"):
        aggregate(t(PER_TOKEN), t(MASK), "constant", max_tokens=0)
    with pytest.raises(ValueError, match=r"per_token has shape \(2, 3\) but mask has shape \(2, 2\)"):
        aggregate(t(PER_TOKEN), torch.ones(2, 2), "token_mean")
    with pytest.raises(ValueError, match=r"per_token must be \[N, T\], got shape \(3,\)"):
        aggregate(t([1.0, 2.0, 3.0]), t([1.0, 1.0, 1.0]), "token_mean")


def test_sft_loss_is_mean_negative_log_likelihood() -> None:
    logprobs = t([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert close(sft_loss(logprobs, mask), 3.5 / 3)  # (1 + 2 + 0.5) / 3 tokens
    assert close(sft_loss(logprobs, mask, mode="sequence_mean"), 1.0)  # (1.5 + 0.5) / 2
    assert close(sft_loss(logprobs, mask, mode="constant", max_tokens=5), 0.35)  # 3.5 / (2 · 5)


# ---------------------------------------------------------------- KL

# token 0: log π = -1, log π_ref = -1.5 (x = -0.5); token 1: log π = -2, log π_ref = -1 (x = 1)
LOGP, REF = [[-1.0, -2.0]], [[-1.5, -1.0]]


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        ("k1", [0.5, -1.0]),  # -x
        ("k2", [0.125, 0.5]),  # x² / 2
        ("k3", [0.1065307, 0.7182818]),  # e^-0.5 + 0.5 - 1, e - 1 - 1
    ],
)
def test_kl_estimators_on_hand_values(estimator: str, expected: list[float]) -> None:
    assert torch.allclose(kl_penalty(t(LOGP), t(REF), estimator), t([expected]), atol=1e-6)


def test_k3_is_nonnegative_and_zero_at_equal_policies() -> None:
    gen = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(8, 16, generator=gen) * 3, torch.randn(8, 16, generator=gen) * 3
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert torch.equal(kl_penalty(logp, logp, "k3"), torch.zeros(8, 16))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_log_ratio_of_100_stays_finite(estimator: str) -> None:
    logp = t([[0.0, -100.0]], requires_grad=True)
    kl = kl_penalty(logp, t([[-100.0, 0.0]]), estimator)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and torch.isfinite(logp.grad).all()
    if estimator == "k3":  # clamped to x = ±20: e^-20 + 20 - 1 and e^20 - 20 - 1
        assert close(kl[0, 0], 19.0, tol=1e-4)
        assert close(kl[0, 1] / 4.85165174e8, 1.0, tol=1e-6)


def test_kl_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'; choose one of: k1, k2, k3"):
        kl_penalty(t(LOGP), t(REF), "k4")
    with pytest.raises(ValueError, match=r"logprobs has shape \(1, 2\) but ref_logprobs has shape \(2,\)"):
        kl_penalty(t(LOGP), t([0.0, 0.0]), "k3")


# ---------------------------------------------------------------- clipped surrogate

# Four sequences of one token: ratios 1.5, 1.5, 0.5, 0.5 with advantages +1, -1, -1, +1.
RATIOS = [1.5, 1.5, 0.5, 0.5]
ADVANTAGES = [1.0, -1.0, -1.0, 1.0]


def quadrants() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logprobs = torch.log(t([[r] for r in RATIOS])).requires_grad_()
    return logprobs, torch.zeros(4, 1), t(ADVANTAGES)


def test_clipped_surrogate_four_quadrants() -> None:
    logprobs, old, advantages = quadrants()
    per_token, low, high = clipped_surrogate(logprobs, old, advantages, 0.2, 0.2)
    # A>0, r>1.2: -1.2 (clipped) | A<0, r>1: -(-1.5) | A<0, r<0.8: -(-0.8) (clipped) | A>0, r<1: -0.5
    assert torch.allclose(per_token, t([[-1.2], [1.5], [0.8], [-0.5]]))
    assert high.flatten().tolist() == [True, False, False, False]
    assert low.flatten().tolist() == [False, False, True, False]
    per_token.sum().backward()
    # d(-rA)/dlogπ = -rA where unclipped; 0 where the clip is active
    assert torch.allclose(logprobs.grad, t([[0.0], [1.5], [0.0], [-0.5]]))


def test_clipped_surrogate_separate_high_epsilon() -> None:
    logprobs = torch.log(t([[1.25]]))
    _, _, high_02 = clipped_surrogate(logprobs, torch.zeros(1, 1), t([1.0]), 0.2, 0.2)
    loss, _, high_028 = clipped_surrogate(logprobs, torch.zeros(1, 1), t([1.0]), 0.2, 0.28)
    assert high_02.item() and not high_028.item()  # DAPO's clip-higher leaves r = 1.25 unclipped
    assert close(loss, -1.25)


def test_clipped_surrogate_per_token_advantages_and_overflow() -> None:
    logprobs = t([[1000.0, -1000.0]], requires_grad=True)
    per_token, low, high = clipped_surrogate(logprobs, torch.zeros(1, 2), t([[1.0, -1.0]]), 0.2, 0.2)
    assert torch.isfinite(per_token).all()
    assert high.tolist() == [[True, False]] and low.tolist() == [[False, True]]
    per_token.sum().backward()
    assert torch.isfinite(logprobs.grad).all()


def test_clipped_surrogate_errors() -> None:
    logprobs, old, advantages = quadrants()
    with pytest.raises(ValueError, match=r"clip_eps_low must be in \[0, 1\), got 1.0"):
        clipped_surrogate(logprobs, old, advantages, 1.0, 0.2)
    with pytest.raises(ValueError, match=r"clip_eps_high must be ≥ 0, got -0.1"):
        clipped_surrogate(logprobs, old, advantages, 0.2, -0.1)
    with pytest.raises(
        ValueError, match=r"advantages must be \[N\] or \[N, T\] = \(4, 1\), got shape \(3,\)"
    ):
        clipped_surrogate(logprobs, old, t([1.0, 2.0, 3.0]), 0.2, 0.2)
    with pytest.raises(ValueError, match=r"logprobs must be \[N, T\], got shape \(4,\)"):
        clipped_surrogate(logprobs.flatten(), old.flatten(), advantages, 0.2, 0.2)


# ---------------------------------------------------------------- policy loss


def test_policy_loss_value_and_clip_metrics() -> None:
    logprobs, _, advantages = quadrants()
    # a second, masked token with a huge ratio must not show in the loss or the metrics
    logprobs = torch.cat([logprobs.detach(), torch.full((4, 1), 50.0)], dim=1)
    mask = t([[1.0, 0.0]] * 4)
    loss, metrics = policy_loss(logprobs, torch.zeros(4, 2), advantages, mask)
    assert close(loss, (-1.2 + 1.5 + 0.8 - 0.5) / 4)
    assert metrics["clipfrac"] == 0.5 and metrics["clipfrac_low"] == 0.25 and metrics["clipfrac_high"] == 0.25
    assert close(metrics["ratio_mean"], 1.0) and close(metrics["ratio_max"], 1.5)
    assert "kl" not in metrics


@pytest.mark.parametrize(("estimator", "kl_mean"), [("k1", -0.25), ("k2", 0.3125), ("k3", 0.41240624)])
def test_policy_loss_with_kl_penalty(estimator: str, kl_mean: float) -> None:
    # ratio 1 and A = 0: the surrogate is 0, so the loss is β · mean KL over the two tokens
    loss, metrics = policy_loss(
        t(LOGP),
        t(LOGP),
        t([0.0]),
        torch.ones(1, 2),
        ref_logprobs=t(REF),
        beta=0.1,
        kl_estimator=estimator,
        agg="token_mean",
    )
    assert close(loss, 0.1 * kl_mean)
    assert close(metrics["kl"], kl_mean)


def test_policy_loss_reports_kl_with_zero_beta() -> None:
    loss, metrics = policy_loss(t(LOGP), t(LOGP), t([0.0]), torch.ones(1, 2), ref_logprobs=t(REF))
    assert loss.item() == 0.0
    assert close(metrics["kl"], 0.41240624)


def test_policy_loss_fully_masked_batch() -> None:
    logprobs = t([[0.3, -0.2]], requires_grad=True)
    loss, metrics = policy_loss(logprobs, torch.zeros(1, 2), t([1.0]), torch.zeros(1, 2), ref_logprobs=t(REF))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["clipfrac"] == 0.0 and metrics["ratio_max"] == 0.0 and metrics["kl"] == 0.0


def test_policy_loss_errors() -> None:
    logprobs, old, advantages = quadrants()
    with pytest.raises(ValueError, match=r"beta=0.04 > 0 needs ref_logprobs .* pass them or set beta=0"):
        policy_loss(logprobs, old, advantages, torch.ones(4, 1), beta=0.04)
    with pytest.raises(ValueError, match=r"beta \(KL coefficient\) must be ≥ 0, got -0.1"):
        policy_loss(logprobs, old, advantages, torch.ones(4, 1), beta=-0.1)
    with pytest.raises(ValueError, match=r"logprobs has shape \(4, 1\) but mask has shape \(4, 2\)"):
        policy_loss(logprobs, old, advantages, torch.ones(4, 2))


# ---------------------------------------------------------------- truncated importance sampling

# log π_old - log q = ln 3, 0, ln 0.5 on the valid tokens (ratios 3, 1, 0.5) and 30 on a masked one
TIS_OLD, TIS_SAMPLER = [[math.log(3) - 1, -1.0, math.log(0.5) - 1, 29.0]], [[-1.0] * 4]
TIS_MASK = [[1, 1, 1, 0]]


def test_truncated_is_weights_on_hand_values() -> None:
    weights, sums = truncated_is_weights(t(TIS_OLD), t(TIS_SAMPLER), t(TIS_MASK), cap=2.0)
    torch.testing.assert_close(weights, t([[2.0, 1.0, 0.5, 0.0]]))
    assert sums["tokens"] == 3 and close(sums["weight_sum"], 3.5) and close(sums["weight_sq_sum"], 5.25)
    assert sums["truncated"] == 1 and close(sums["ratio_max"], 3.0) and close(sums["gap_sum"], math.log(6))
    metrics = importance_metrics(sums)
    assert close(metrics["is_weight_mean"], 3.5 / 3)
    assert close(metrics["is_weight_std"], math.sqrt(5.25 / 3 - (3.5 / 3) ** 2))
    assert close(metrics["is_truncated_frac"], 1 / 3) and close(metrics["logprob_gap"], math.log(6) / 3)
    assert close(metrics["is_ratio_max"], 3.0)
    assert set(importance_metrics({}).values()) == {0.0}
    with pytest.raises(ValueError, match=r"the TIS cap C must be >= 1 .* got 0.5"):
        truncated_is_weights(t(TIS_OLD), t(TIS_SAMPLER), t(TIS_MASK), cap=0.5)
    with pytest.raises(ValueError, match=r"old_logprobs has shape \(1, 4\) but sampler_logprobs has shape"):
        truncated_is_weights(t(TIS_OLD), t([[0.0] * 3]), t(TIS_MASK), cap=2.0)


def test_policy_loss_weights_the_surrogate_not_the_kl_term() -> None:
    weights, _ = truncated_is_weights(t(TIS_OLD), t(TIS_SAMPLER), t(TIS_MASK), cap=2.0)
    logprobs = t([[-1.0, -1.0, -1.0, 5.0]], requires_grad=True)
    # ratio 1 and A = 1: each valid token's surrogate is -1, weighted -2, -1, -0.5; token_mean over 3
    loss, _ = policy_loss(logprobs, logprobs.detach(), t([1.0]), t(TIS_MASK), agg="token_mean",
                          is_weights=weights)
    assert close(loss, -3.5 / 3)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, t([[-2.0, -1.0, -0.5, 0.0]]) / 3)
    ref = t([[-1.5, -1.0, -1.0, 0.0]])
    with_kl, metrics = policy_loss(logprobs, logprobs.detach(), t([1.0]), t(TIS_MASK), agg="token_mean",
                                   is_weights=weights, ref_logprobs=ref, beta=0.5, kl_estimator="k1")
    assert close(with_kl, -3.5 / 3 + 0.5 * metrics["kl"]) and close(metrics["kl"], 0.5 / 3)
    plain, _ = policy_loss(logprobs, logprobs.detach(), t([1.0]), t(TIS_MASK), agg="token_mean")
    ones, _ = policy_loss(logprobs, logprobs.detach(), t([1.0]), t(TIS_MASK), agg="token_mean",
                          is_weights=torch.ones(1, 4))
    assert torch.equal(plain, ones)


# ---------------------------------------------------------------- value loss

VALUES, OLD_VALUES, RETURNS = [[1.0, 2.0, 9.0]], [[0.5, 2.1, 0.0]], [[2.0, 1.0, 0.0]]
VALUE_MASK = [[1.0, 1.0, 0.0]]


def test_value_loss_clipped() -> None:
    loss, metrics = value_loss(t(VALUES), t(OLD_VALUES), t(RETURNS), t(VALUE_MASK), clip_range=0.2)
    # token 0: V_clip = 0.5 + 0.2 = 0.7, ½·max(1², 1.3²) = 0.845 (clip active)
    # token 1: V - V_old = -0.1 is inside ±0.2, ½·1² = 0.5
    assert close(loss, (0.845 + 0.5) / 2)
    assert metrics["value_clipfrac"] == 0.5
    # R = [2, 1], R - V = [1, -1]: 1 - Var[R - V] / Var[R] = 1 - 1 / 0.25
    assert close(metrics["explained_variance"], -3.0)


def test_value_loss_unclipped_and_explained_variance() -> None:
    loss, metrics = value_loss(t(VALUES), t(OLD_VALUES), t(RETURNS), t(VALUE_MASK), clip_range=None)
    assert close(loss, 0.5) and metrics["value_clipfrac"] == 0.0
    _, perfect = value_loss(t(RETURNS), t(RETURNS), t(RETURNS), t(VALUE_MASK), clip_range=None)
    assert perfect["explained_variance"] == 1.0
    _, constant = value_loss(t(VALUES), t(VALUES), t([[1.0, 1.0, 5.0]]), t(VALUE_MASK), clip_range=None)
    assert math.isnan(constant["explained_variance"])


def test_value_loss_errors() -> None:
    with pytest.raises(ValueError, match=r"clip_range must be > 0 or None \(no clipping\), got 0"):
        value_loss(t(VALUES), t(OLD_VALUES), t(RETURNS), t(VALUE_MASK), clip_range=0)
    with pytest.raises(ValueError, match=r"values has shape \(1, 3\) but returns has shape \(1, 2\)"):
        value_loss(t(VALUES), t(OLD_VALUES), t([[1.0, 2.0]]), t(VALUE_MASK), clip_range=0.2)


# ---------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_hand_values() -> None:
    loss, metrics = bradley_terry_loss(t([2.0, 0.0]), t([1.0, 1.0]))
    assert close(loss, 0.81326169)  # (log(1 + e^-1) + log(1 + e^1)) / 2
    assert metrics == {"accuracy": 0.5, "margin": 0.0}
    loss, _ = bradley_terry_loss(t([2.0, 0.0]), t([1.0, 1.0]), margin=t([0.5, 0.5]))
    assert close(loss, 1.08774513)  # (log(1 + e^-0.5) + log(1 + e^1.5)) / 2


def test_bradley_terry_identical_and_extreme_scores() -> None:
    loss, metrics = bradley_terry_loss(t([3.0, -7.0]), t([3.0, -7.0]))
    assert close(loss, LOG2) and metrics["accuracy"] == 0.0
    chosen = t([1e4, -1e4], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, t([-1e4, 1e4]))
    assert close(loss, 1e4, tol=1e-2)  # (≈0 + 2e4) / 2
    loss.backward()
    assert torch.isfinite(chosen.grad).all()


def test_bradley_terry_errors() -> None:
    with pytest.raises(
        ValueError, match=r"chosen_scores has shape \(2,\) but rejected_scores has shape \(3,\)"
    ):
        bradley_terry_loss(t([1.0, 2.0]), t([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"chosen_scores must be a non-empty \[B\] tensor, got shape \(0,\)"):
        bradley_terry_loss(t([]), t([]))
    with pytest.raises(ValueError, match=r"chosen_scores has shape \(2,\) but margin has shape \(1,\)"):
        bradley_terry_loss(t([1.0, 2.0]), t([1.0, 2.0]), margin=t([0.0]))


# ---------------------------------------------------------------- DPO

# h = (-1 - -2) - (-3 - -2.5) = 1.5, β = 0.1, βh = 0.15
PAIR = (t([-1.0]), t([-3.0]), t([-2.0]), t([-2.5]))


@pytest.mark.parametrize(
    ("variant", "label_smoothing", "expected"),
    [
        ("sigmoid", 0.0, 0.62095705),  # log(1 + e^-0.15)
        ("sigmoid", 0.1, 0.63595705),  # 0.9 · log(1 + e^-0.15) + 0.1 · log(1 + e^0.15)
        ("ipo", 0.0, 12.25),  # (1.5 - 1 / 0.2)²
        ("hinge", 0.0, 0.85),  # max(0, 1 - 0.15)
    ],
)
def test_dpo_variants_on_hand_numbers(variant: str, label_smoothing: float, expected: float) -> None:
    loss, metrics = dpo_loss(*PAIR, beta=0.1, variant=variant, label_smoothing=label_smoothing)
    assert close(loss, expected)
    assert close(metrics["rewards/chosen"], 0.1) and close(metrics["rewards/rejected"], -0.05)
    assert metrics["rewards/accuracy"] == 1.0 and close(metrics["rewards/margin"], 0.15)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_chosen_equal_rejected_is_log2(label_smoothing: float) -> None:
    logps = t([-5.0, -12.0])
    loss, metrics = dpo_loss(
        logps, logps, t([-4.0, -11.0]), t([-4.0, -11.0]), 0.1, label_smoothing=label_smoothing
    )
    assert close(loss, LOG2) and metrics["rewards/accuracy"] == 0.0


def test_dpo_extreme_margins_are_finite() -> None:
    chosen = t([0.0, -1e5], requires_grad=True)
    loss, _ = dpo_loss(chosen, t([-1e5, 0.0]), t([0.0, 0.0]), t([0.0, 0.0]), beta=0.1)
    assert close(loss, 5e3, tol=1e-1)  # βh = ±1e4: (≈0 + 1e4) / 2
    loss.backward()
    assert torch.isfinite(chosen.grad).all()


def test_dpo_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown DPO variant 'kto'; choose one of: hinge, ipo, sigmoid"):
        dpo_loss(*PAIR, beta=0.1, variant="kto")
    with pytest.raises(ValueError, match=r"beta must be > 0, got 0"):
        dpo_loss(*PAIR, beta=0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\), got 0.5"):
        dpo_loss(*PAIR, beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match=r"label_smoothing applies only to variant 'sigmoid', not 'ipo'"):
        dpo_loss(*PAIR, beta=0.1, variant="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"policy_chosen_logps has shape \(1,\) but ref_rejected_logps has"):
        dpo_loss(*PAIR[:3], t([1.0, 2.0]), beta=0.1)


# ---------------------------------------------------------------- KTO


def test_kto_hand_numbers() -> None:
    # r = [1, -0.5], z0 = 0.2, β = 0.5: desirable σ(-0.5·0.8), undesirable 2·σ(0.5·(-0.7))
    policy = t([1.0, -1.5], requires_grad=True)
    z0 = torch.tensor(0.2, requires_grad=True)
    loss, metrics = kto_loss(
        policy, t([0.0, -1.0]), torch.tensor([True, False]), z0, beta=0.5, undesirable_weight=2.0
    )
    assert close(loss, (0.40131234 + 0.82676484) / 2)
    assert metrics == pytest.approx({"rewards/chosen": 0.5, "rewards/rejected": -0.25, "kl": 0.2})
    loss.backward()
    assert z0.grad is None  # the reference point is detached


def test_kto_negative_reference_point_is_clamped_and_one_sided_batches() -> None:
    loss, metrics = kto_loss(
        t([1.0, -1.5]), t([0.0, -1.0]), torch.tensor([True, False]), -3.0, beta=0.5, undesirable_weight=2.0
    )
    assert close(loss, 0.62659383)  # z0 = 0: (σ(-0.5) + 2·σ(-0.25)) / 2
    assert metrics["kl"] == 0.0
    _, metrics = kto_loss(t([1.0]), t([0.0]), torch.tensor([True]), 0.0, beta=0.5)
    assert metrics["rewards/rejected"] == 0.0


def test_kto_errors() -> None:
    desirable = torch.tensor([True])
    with pytest.raises(ValueError, match=r"beta must be > 0, got -1"):
        kto_loss(t([1.0]), t([0.0]), desirable, 0.0, beta=-1)
    with pytest.raises(
        ValueError, match=r"desirable_weight and undesirable_weight must be > 0, got 0 and 1.0"
    ):
        kto_loss(t([1.0]), t([0.0]), desirable, 0.0, beta=0.1, desirable_weight=0)
    with pytest.raises(ValueError, match=r"policy_logps has shape \(1,\) but desirable has shape \(2,\)"):
        kto_loss(t([1.0]), t([0.0]), torch.tensor([True, False]), 0.0, beta=0.1)


# ---------------------------------------------------------------- ORPO

# chosen: two tokens of probability 1/2 (p = 1/2, log odds 0); rejected: one token of 1/5
# (p = 1/5, log odds = log(1/4)) and a padded position holding garbage.
CHOSEN, CHOSEN_MASK = [[math.log(0.5), math.log(0.5)]], [[1.0, 1.0]]
REJECTED, REJECTED_MASK = [[math.log(0.2), 123.0]], [[1.0, 0.0]]


def test_orpo_hand_numbers() -> None:
    chosen = t(CHOSEN, requires_grad=True)
    loss, metrics = orpo_loss(chosen, t(CHOSEN_MASK), t(REJECTED), t(REJECTED_MASK), lam=0.1)
    # NLL = log 2; odds-ratio term = -log σ(log 4) = log(1 + 1/4)
    assert close(loss, LOG2 + 0.1 * math.log(1.25))
    assert close(metrics["nll"], LOG2) and close(metrics["or_loss"], math.log(1.25))
    assert close(metrics["log_odds_ratio"], math.log(4)) and metrics["accuracy"] == 1.0
    assert close(metrics["logps/chosen"], math.log(0.5)) and close(metrics["logps/rejected"], math.log(0.2))
    loss.backward()
    assert torch.isfinite(chosen.grad).all()


def test_orpo_probability_one_stays_finite() -> None:
    chosen = t([[0.0, 0.0]], requires_grad=True)  # p = 1 would make the odds infinite
    loss, _ = orpo_loss(chosen, t(CHOSEN_MASK), t(REJECTED), t(REJECTED_MASK))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(chosen.grad).all()


def test_orpo_errors() -> None:
    with pytest.raises(ValueError, match=r"rejected_mask rows \[0\] have no valid token"):
        orpo_loss(t(CHOSEN), t(CHOSEN_MASK), t(REJECTED), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"lam must be ≥ 0, got -1"):
        orpo_loss(t(CHOSEN), t(CHOSEN_MASK), t(REJECTED), t(REJECTED_MASK), lam=-1)
    with pytest.raises(ValueError, match=r"chosen has 1 rows but rejected has 2"):
        orpo_loss(t(CHOSEN), t(CHOSEN_MASK), t(REJECTED * 2), t(REJECTED_MASK * 2))
    with pytest.raises(
        ValueError, match=r"chosen_logprobs has shape \(1, 2\) but chosen_mask has shape \(1, 3\)"
    ):
        orpo_loss(t(CHOSEN), torch.ones(1, 3), t(REJECTED), t(REJECTED_MASK))
