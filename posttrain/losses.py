"""What is minimised: the pure losses of SFT, GRPO/PPO, reward models, DPO, KTO and ORPO.

Every function takes tensors and plain scalars and returns a tensor or `(loss, metrics)`, where
`metrics` is a `dict[str, float]` of detached Python floats. Shapes: N sequences, T tokens,
B preference pairs. Masks are float or bool `[N, T]`; a non-zero entry marks a token that counts
(masks are meant to be 0/1: a float mask is not used as a weight). Values under a zero mask are
never read, so padding may hold anything, even inf or NaN.

Variants are strings looked up in explicit dicts (`_AGGREGATIONS`, `_KL_ESTIMATORS`,
`_DPO_VARIANTS`); a wrong name is a ValueError that lists the valid ones.
"""

import math

import torch
import torch.nn.functional as F

# exp(20) ≈ 4.9e8 stays finite in fp32 and bf16 even after multiplying by an advantage (not in fp16,
# whose max is 65504: log-probs are expected in fp32 or bf16).
_MAX_LOG_RATIO = 20.0


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")


def _check_2d(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be [N, T], got shape {tuple(x.shape)}")


def _check_pairs(**tensors: torch.Tensor) -> None:
    """All tensors must be [B] with the same B ≥ 1 (one entry per preference pair)."""
    (first_name, first), *rest = tensors.items()
    if first.dim() != 1 or first.numel() == 0:
        raise ValueError(f"{first_name} must be a non-empty [B] tensor, got shape {tuple(first.shape)}")
    for name, x in rest:
        _check_same_shape(first_name, first, name, x)


def _check_choice(kind: str, name: str, table: dict) -> None:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table))}")


def _valid(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean of x over valid entries as a float; 0.0 when nothing is valid."""
    count = int(valid.sum())
    return float(torch.where(valid, x.detach(), 0.0).sum()) / count if count else 0.0


def _mean_where(x: torch.Tensor, which: torch.Tensor) -> float:
    return float(x.detach()[which].mean()) if bool(which.any()) else 0.0


# ---------------------------------------------------------------- aggregation


def _sequence_mean(masked: torch.Tensor, valid: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    tokens_N = valid.sum(-1).to(masked.dtype)  # [N]
    per_seq_N = masked.sum(-1) / tokens_N.clamp(min=1)
    n_seqs = (tokens_N > 0).sum().to(masked.dtype)
    return per_seq_N.sum() / n_seqs.clamp(min=1)  # rows without tokens contribute 0 to the sum


def _token_mean(masked: torch.Tensor, valid: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    return masked.sum() / valid.sum().to(masked.dtype).clamp(min=1)


def _constant(masked: torch.Tensor, valid: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    if max_tokens is None:
        raise ValueError(
            "aggregation 'constant' needs max_tokens (the fixed per-sequence denominator, "
            "usually max_new_tokens)"
        )
    return masked.sum() / (max(masked.shape[0], 1) * max_tokens)


_AGGREGATIONS = {
    "sequence_mean": _sequence_mean,
    "token_mean": _token_mean,
    "constant": _constant,
}


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, mode: str, max_tokens: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss `[N, T]` to a scalar over the tokens where `mask` is non-zero.

    - "sequence_mean": (1/|S|) Σ_{i∈S} (1/|o_i|) Σ_t ℓ_{i,t}, S = rows with ≥ 1 valid token
      (DeepSeekMath GRPO, arXiv:2402.03300). Long answers weigh as much as short ones in total.
    - "token_mean": Σ_{i,t} ℓ_{i,t} / Σ_i |o_i| (DAPO, arXiv:2503.14476). Every token weighs the same.
    - "constant": Σ_{i,t} ℓ_{i,t} / (N · max_tokens) (Dr. GRPO, arXiv:2503.20783). No length bias;
      needs `max_tokens` (usually max_new_tokens).

    A fully masked batch gives 0.0 that is still connected to `per_token` (its gradient is 0), so a
    training step sees an ordinary zero loss instead of NaN.
    """
    _check_2d("per_token", per_token)
    _check_same_shape("per_token", per_token, "mask", mask)
    _check_choice("aggregation", mode, _AGGREGATIONS)
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")
    valid = _valid(mask)
    masked = torch.where(valid, per_token, 0.0)  # [N, T]; where, not *, so NaN padding cannot leak
    return _AGGREGATIONS[mode](masked, valid, max_tokens)


def sft_loss(
    token_logprobs: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", max_tokens: int | None = None
) -> torch.Tensor:
    """Negative log-likelihood of the target tokens: aggregate(-log π(y_t | y_<t), mask, mode).

    token_logprobs: [N, T] log-probabilities of the target tokens; mask: [N, T] (1 on completion
    tokens). `mode` and `max_tokens` as in `aggregate`.
    """
    return aggregate(-token_logprobs, mask, mode, max_tokens)


# ---------------------------------------------------------------- KL


def _k1(log_ratio: torch.Tensor) -> torch.Tensor:
    return -log_ratio


def _k2(log_ratio: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio.square()


def _k3(log_ratio: torch.Tensor) -> torch.Tensor:
    return torch.expm1(log_ratio) - log_ratio  # = e^x - x - 1, expm1 keeps precision near 0


_KL_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π. Returns [N, T].

    With x = log π_ref(y_t) - log π(y_t) clamped to ±20 (so log-ratios of ±100 stay finite):
    k1 = -x (unbiased, can be negative), k2 = x²/2 (biased, low variance),
    k3 = e^x - x - 1 (unbiased and ≥ 0; used by DeepSeekMath GRPO, arXiv:2402.03300).
    Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html.
    """
    _check_same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    _check_choice("KL estimator", estimator, _KL_ESTIMATORS)
    log_ratio = (ref_logprobs - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # [N, T]
    return _KL_ESTIMATORS[estimator](log_ratio)


# ---------------------------------------------------------------- policy gradient


def _ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    return torch.exp((logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token (arXiv:1707.06347), with DAPO's separate ε (arXiv:2503.14476).

    ℓ_t = -min(r_t A, clip(r_t, 1 - ε_low, 1 + ε_high) A), r_t = exp(log π - log π_old) with the
    log-ratio clamped to ±20 so overflow cannot give inf or NaN.

    logprobs, old_logprobs: [N, T]; advantages: [N] (one per sequence) or [N, T].
    Returns (per_token_loss [N, T], clipped_low [N, T] bool, clipped_high [N, T] bool); the flags
    mark tokens whose gradient the clip removes: r < 1 - ε_low with A < 0, r > 1 + ε_high with A > 0.
    """
    _check_2d("logprobs", logprobs)
    _check_same_shape("logprobs", logprobs, "old_logprobs", old_logprobs)
    if not 0.0 <= clip_eps_low < 1.0:
        raise ValueError(f"clip_eps_low must be in [0, 1), got {clip_eps_low}")
    if clip_eps_high < 0.0:
        raise ValueError(f"clip_eps_high must be ≥ 0, got {clip_eps_high}")
    if advantages.shape == logprobs.shape[:1]:
        advantages = advantages.unsqueeze(-1)  # [N, 1] broadcasts over tokens
    elif advantages.shape != logprobs.shape:
        raise ValueError(
            f"advantages must be [N] or [N, T] = {tuple(logprobs.shape)}, got shape {tuple(advantages.shape)}"
        )
    ratio = _ratio(logprobs, old_logprobs)  # [N, T]
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    clipped_low = (ratio < 1.0 - clip_eps_low) & (advantages < 0)
    clipped_high = (ratio > 1.0 + clip_eps_high) & (advantages > 0)
    return per_token, clipped_low, clipped_high


def truncated_is_weights(
    old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance sampling against the sampler (TIS; Yao et al. 2025, "Your Efficient RL
    Framework Secretly Brings You Off-Policy RL Training", as verl's token-level ``rollout_is``).

    w_t = min(exp(log π_old - log q), C), detached, with π_old the trainer's log-probs of the tokens
    (its recomputation with the weights being trained) and q the distribution the tokens were actually
    sampled from (a bf16 copy, top-p/top-k truncation, older weights); 0 where the mask is 0. The
    log-ratio is clamped to ±20 so it cannot overflow.

    Shapes: old_logprobs, sampler_logprobs, mask [N, T]. Returns the weights [N, T] and their sums over
    valid tokens, which add up across micro-batches and ranks (``importance_metrics`` turns them into
    means): "tokens", "weight_sum", "weight_sq_sum", "truncated" (tokens whose ratio exceeded C),
    "gap_sum" (Σ |log π_old - log q|), and "ratio_max" (the largest ratio before truncation; combine
    with max, not a sum).
    """
    _check_2d("old_logprobs", old_logprobs)
    _check_same_shape("old_logprobs", old_logprobs, "sampler_logprobs", sampler_logprobs)
    _check_same_shape("old_logprobs", old_logprobs, "mask", mask)
    if not cap >= 1.0:
        raise ValueError(f"the TIS cap C must be >= 1 (a weight of 1 is no correction), got {cap}")
    valid = _valid(mask)
    log_ratio = torch.where(valid, old_logprobs.detach().float() - sampler_logprobs.float(), 0.0)
    ratio = torch.exp(log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))  # [N, T]
    weights = torch.where(valid, ratio.clamp(max=cap), 0.0)
    sums = {"tokens": float(valid.sum()), "weight_sum": float(weights.sum()),
            "weight_sq_sum": float(weights.square().sum()), "truncated": float((valid & (ratio > cap)).sum()),
            "gap_sum": float(log_ratio.abs().sum()),
            "ratio_max": float(ratio[valid].max()) if bool(valid.any()) else 0.0}
    return weights, sums


def importance_metrics(sums: dict[str, float]) -> dict[str, float]:
    """The per-step summary of ``truncated_is_weights``' sums: "is_weight_mean", "is_weight_std",
    "is_ratio_max", "is_truncated_frac" (share of tokens whose ratio exceeded C) and "logprob_gap"
    (mean |log π_old - log q| in nats); all 0.0 with no token."""
    tokens = sums.get("tokens", 0.0)
    if tokens <= 0:
        return dict.fromkeys(("is_weight_mean", "is_weight_std", "is_ratio_max", "is_truncated_frac",
                              "logprob_gap"), 0.0)
    mean = sums["weight_sum"] / tokens
    variance = max(sums["weight_sq_sum"] / tokens - mean**2, 0.0)  # rounding may leave it a hair below 0
    return {"is_weight_mean": mean, "is_weight_std": math.sqrt(variance),
            "is_ratio_max": sums["ratio_max"], "is_truncated_frac": sums["truncated"] / tokens,
            "logprob_gap": sums["gap_sum"] / tokens}


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    agg: str = "sequence_mean",
    max_tokens: int | None = None,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO/PPO policy objective: aggregate(w · ℓ_clip + β · KL_est(π ‖ π_ref), mask, agg).

    GRPO (arXiv:2402.03300) = agg "sequence_mean", β > 0, k3; DAPO (arXiv:2503.14476) = "token_mean",
    clip_eps_high 0.28, β = 0; Dr. GRPO (arXiv:2503.20783) = "constant" with max_tokens.
    Shapes: logprobs, old_logprobs, mask, ref_logprobs, is_weights [N, T]; advantages [N] or [N, T].
    is_weights (``truncated_is_weights``, detached; None = 1) multiply the clipped surrogate of each
    token, not the KL term (as verl applies its rollout IS weights).

    Metrics, over valid tokens: "clipfrac" (clip active on either side), "clipfrac_low",
    "clipfrac_high" (see `clipped_surrogate`), "ratio_mean", "ratio_max", and "kl" (mean of the
    estimator) whenever ref_logprobs are given, even with β = 0. With no valid token they are 0.0.
    """
    if beta < 0:
        raise ValueError(f"beta (KL coefficient) must be ≥ 0, got {beta}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError(
            f"beta={beta} > 0 needs ref_logprobs (the reference policy's token log-probs); "
            "pass them or set beta=0"
        )
    _check_same_shape("logprobs", logprobs, "mask", mask)
    per_token, clipped_low, clipped_high = clipped_surrogate(
        logprobs, old_logprobs, advantages, clip_eps_low, clip_eps_high
    )
    if is_weights is not None:
        _check_same_shape("logprobs", logprobs, "is_weights", is_weights)
        per_token = per_token * is_weights.detach()
    valid = _valid(mask)
    metrics: dict[str, float] = {}
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)  # [N, T]
        metrics["kl"] = _masked_mean(kl, valid)
        if beta > 0:
            per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, agg, max_tokens)
    ratio = _ratio(logprobs.detach(), old_logprobs)  # [N, T]
    has_tokens = bool(valid.any())
    metrics.update(
        clipfrac=_masked_mean((clipped_low | clipped_high).float(), valid),
        clipfrac_low=_masked_mean(clipped_low.float(), valid),
        clipfrac_high=_masked_mean(clipped_high.float(), valid),
        ratio_mean=_masked_mean(ratio, valid),
        ratio_max=float(ratio[valid].max()) if has_tokens else 0.0,
    )
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None,
    agg: str = "token_mean",
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss (arXiv:1707.06347; the clipping follows OpenAI baselines' ppo2).

    ℓ_t = ½ · max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, -c, c); with
    clip_range None, ℓ_t = ½ (V - R)². All inputs [N, T]; reduced by `aggregate(..., agg)`.

    Metrics over valid tokens: "value_clipfrac" (fraction where the clipped term is the larger, so
    the clip is what the gradient sees) and "explained_variance" = 1 - Var[R - V] / Var[R]
    (NaN when Var[R] = 0, where it is undefined).
    """
    for name, x in (("old_values", old_values), ("returns", returns), ("mask", mask)):
        _check_same_shape("values", values, name, x)
    if clip_range is not None and clip_range <= 0:
        raise ValueError(f"clip_range must be > 0 or None (no clipping), got {clip_range}")
    valid = _valid(mask)
    unclipped = (values - returns).square()  # [N, T]
    if clip_range is None:
        per_token = 0.5 * unclipped
        clip_active = torch.zeros_like(valid)
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
        clipped = (clipped_values - returns).square()
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clip_active = clipped > unclipped
    loss = aggregate(per_token, mask, agg, max_tokens)
    returns_v, residual_v = returns.detach()[valid].float(), (returns - values).detach()[valid].float()
    var_returns = float(returns_v.var(unbiased=False)) if returns_v.numel() else 0.0
    explained = 1.0 - float(residual_v.var(unbiased=False)) / var_returns if var_returns > 0 else math.nan
    return loss, {"value_clipfrac": _masked_mean(clip_active.float(), valid), "explained_variance": explained}


# ---------------------------------------------------------------- preferences


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward-model loss: mean over pairs of -log σ(r_w - r_l - m) (InstructGPT, arXiv:2203.02155;
    the margin m from Llama 2, arXiv:2307.09288). Shapes: chosen_scores, rejected_scores, margin [B].

    Uses logsigmoid, so score gaps of ±1e4 stay finite. Metrics: "accuracy" (fraction with
    r_w > r_l), "margin" (mean r_w - r_l).
    """
    _check_pairs(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    gap_B = chosen_scores - rejected_scores
    if margin is not None:
        _check_same_shape("chosen_scores", chosen_scores, "margin", margin)
        gap_B = gap_B - margin
    loss = -F.logsigmoid(gap_B).mean()
    diff = (chosen_scores - rejected_scores).detach()
    return loss, {"accuracy": float((diff > 0).float().mean()), "margin": float(diff.mean())}


def _dpo_sigmoid(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def _dpo_ipo(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return (h - 1 / (2 * beta)).square()


def _dpo_hinge(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return torch.relu(1 - beta * h)


_DPO_VARIANTS = {
    "sigmoid": _dpo_sigmoid,
    "ipo": _dpo_ipo,
    "hinge": _dpo_hinge,
}


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    variant: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Direct preference losses on summed sequence log-probs [B], averaged over the B pairs.

    h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l)).
    - "sigmoid" (DPO, arXiv:2305.18290): -(1-ε) log σ(βh) - ε log σ(-βh); ε = label_smoothing > 0
      is conservative DPO (labels flipped with probability ε). h = 0 gives log 2.
    - "ipo" (IPO, arXiv:2310.12036): (h - 1/(2β))².
    - "hinge" (SLiC, arXiv:2305.10425): max(0, 1 - βh).
    Metrics: "rewards/chosen", "rewards/rejected" (means of β(log π - log π_ref)), "rewards/accuracy"
    (fraction with chosen reward > rejected reward), "rewards/margin" (mean difference).
    """
    _check_pairs(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    _check_choice("DPO variant", variant, _DPO_VARIANTS)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing > 0 and variant != "sigmoid":
        raise ValueError(f"label_smoothing applies only to variant 'sigmoid', not {variant!r}")
    chosen_logratio_B = policy_chosen_logps - ref_chosen_logps
    rejected_logratio_B = policy_rejected_logps - ref_rejected_logps
    h_B = chosen_logratio_B - rejected_logratio_B
    loss = _DPO_VARIANTS[variant](h_B, beta, label_smoothing).mean()
    chosen_rewards, rejected_rewards = beta * chosen_logratio_B.detach(), beta * rejected_logratio_B.detach()
    return loss, {
        "rewards/chosen": float(chosen_rewards.mean()),
        "rewards/rejected": float(rejected_rewards.mean()),
        "rewards/accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
        "rewards/margin": float((chosen_rewards - rejected_rewards).mean()),
    }


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_ref_point: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Kahneman-Tversky Optimization (KTO, arXiv:2402.01306) on unpaired examples.

    r = log π(y|x) - log π_ref(y|x) per example [B]; z0 = max(kl_ref_point, 0), detached (the
    reference point: an estimate of KL(π ‖ π_ref), usually from mismatched prompt/completion pairs).
    Loss = mean over B of λ_y - v(x, y), with v = λ_D σ(β(r - z0)) if desirable else
    λ_U σ(β(z0 - r)); written as λ_y σ(-β(r - z0)) and λ_y σ(β(r - z0)), which are equal.
    desirable: [B] bool. The paper's advice: keep λ_D·n_D / (λ_U·n_U) in [1, 4/3].
    Metrics: "rewards/chosen", "rewards/rejected" (mean βr over desirable / undesirable examples,
    0.0 if there are none) and "kl" (z0).
    """
    _check_pairs(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if desirable_weight <= 0 or undesirable_weight <= 0:
        raise ValueError(
            f"desirable_weight and undesirable_weight must be > 0, got {desirable_weight} and "
            f"{undesirable_weight}"
        )
    z0 = torch.as_tensor(kl_ref_point, dtype=policy_logps.dtype, device=policy_logps.device)
    z0 = z0.detach().clamp(min=0)
    desirable = desirable.bool()
    rewards_B = policy_logps - ref_logps
    logits_B = beta * (rewards_B - z0)
    losses_B = torch.where(
        desirable, desirable_weight * torch.sigmoid(-logits_B), undesirable_weight * torch.sigmoid(logits_B)
    )
    scaled = beta * rewards_B.detach()
    return losses_B.mean(), {
        "rewards/chosen": _mean_where(scaled, desirable),
        "rewards/rejected": _mean_where(scaled, ~desirable),
        "kl": float(z0),
    }


def _log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, accurate on both sides of -log 2 (Mächler 2012, "Accurately
    Computing log(1 - exp(-|a|))")."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    chosen_logprobs: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    rejected_mask: torch.Tensor,
    lam: float = 0.1,
    nll_agg: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Odds Ratio Preference Optimization (ORPO, arXiv:2403.07691): SFT and preference in one loss.

    L = NLL(y_w) + λ · mean_B[-log σ(log odds(y_w) - log odds(y_l))], with
    log odds(y) = log p - log(1 - p), log p = mean over y's valid tokens of log π(y_t) (length
    normalised, as in the paper). NLL(y_w) = aggregate(-chosen_logprobs, chosen_mask, nll_agg).
    Shapes: chosen_logprobs, chosen_mask [B, T_w]; rejected_logprobs, rejected_mask [B, T_l].
    log p is capped at -1e-6 so a row with p = 1 cannot make the odds infinite.
    Metrics: "nll", "or_loss", "log_odds_ratio" (mean), "accuracy" (log odds_w > log odds_l),
    "logps/chosen", "logps/rejected" (mean per-token log p).
    """
    _check_2d("chosen_logprobs", chosen_logprobs)
    _check_2d("rejected_logprobs", rejected_logprobs)
    _check_same_shape("chosen_logprobs", chosen_logprobs, "chosen_mask", chosen_mask)
    _check_same_shape("rejected_logprobs", rejected_logprobs, "rejected_mask", rejected_mask)
    if chosen_logprobs.shape[0] != rejected_logprobs.shape[0]:
        raise ValueError(
            f"chosen has {chosen_logprobs.shape[0]} rows but rejected has {rejected_logprobs.shape[0]}"
        )
    if lam < 0:
        raise ValueError(f"lam must be ≥ 0, got {lam}")
    mean_logps = []
    for name, logprobs, mask in (
        ("chosen_mask", chosen_logprobs, chosen_mask),
        ("rejected_mask", rejected_logprobs, rejected_mask),
    ):
        valid = _valid(mask)
        tokens_B = valid.sum(-1)
        if not bool((tokens_B > 0).all()):
            empty = (tokens_B == 0).nonzero().flatten().tolist()
            raise ValueError(f"{name} rows {empty} have no valid token, so their mean log-prob is undefined")
        summed_B = torch.where(valid, logprobs, 0.0).sum(-1)
        mean_logps.append((summed_B / tokens_B.to(summed_B.dtype)).clamp(max=-1e-6))
    chosen_B, rejected_B = mean_logps
    log_odds_B = (chosen_B - _log1m_exp(chosen_B)) - (rejected_B - _log1m_exp(rejected_B))
    or_loss = -F.logsigmoid(log_odds_B).mean()
    nll = aggregate(-chosen_logprobs, chosen_mask, nll_agg)
    return nll + lam * or_loss, {
        "nll": float(nll.detach()),
        "or_loss": float(or_loss.detach()),
        "log_odds_ratio": float(log_odds_B.detach().mean()),
        "accuracy": float((log_odds_B.detach() > 0).float().mean()),
        "logps/chosen": float(chosen_B.detach().mean()),
        "logps/rejected": float(rejected_B.detach().mean()),
    }
