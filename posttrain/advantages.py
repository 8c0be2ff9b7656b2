"""What turns rewards into signal: group-relative advantages, GAE, whitening, KL-shaped rewards
and the adaptive KL coefficient. Everything here is pure except `AdaptiveKLController`, whose
whole state is one number, saved and restored with `state_dict` / `load_state_dict`.

Shapes: P prompts, G samples per prompt (`group_size`), N = P·G rows, T tokens. Rows of one
prompt are contiguous: row i belongs to group i // G. Masks are float or bool `[N, T]` with a
non-zero entry on tokens that count; values under a zero mask are never read.
"""

import math

import torch


def _check_choice(kind: str, name: str, table: dict) -> None:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table))}")


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")


def _valid(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


# ---------------------------------------------------------------- group-relative


def _grouped(rewards_N: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and reshape to (rewards_PG, valid_PG); rewards in at least fp32, NaN = missing."""
    if rewards_N.dim() != 1:
        raise ValueError(f"rewards_N must be a 1-D [N] tensor, got shape {tuple(rewards_N.shape)}")
    if group_size < 2:
        raise ValueError(
            f"group_size (samples_per_prompt) must be at least 2 to compare samples of one prompt, "
            f"got {group_size}"
        )
    n = rewards_N.shape[0]
    if n % group_size:
        raise ValueError(
            f"got N={n} rewards, not a multiple of group_size (samples_per_prompt) = {group_size}"
        )
    rewards = rewards_N.to(torch.promote_types(rewards_N.dtype, torch.float32))
    infinite = torch.isinf(rewards)
    if bool(infinite.any()):
        rows = infinite.nonzero().flatten().tolist()
        raise ValueError(f"rewards_N has ±inf at rows {rows}; only NaN (a missing reward) is allowed")
    rewards_PG = rewards.view(-1, group_size)
    return rewards_PG, ~torch.isnan(rewards_PG)


def _zero_spread(rewards_PG: torch.Tensor, valid_PG: torch.Tensor) -> torch.Tensor:
    """[P] bool: all valid rewards of the group are equal (true for groups with 0 or 1 valid)."""
    highest = torch.where(valid_PG, rewards_PG, -math.inf).amax(-1)
    lowest = torch.where(valid_PG, rewards_PG, math.inf).amin(-1)
    return (highest == lowest) | (valid_PG.sum(-1) <= 1)


def zero_std_groups(rewards_N: torch.Tensor, group_size: int) -> torch.Tensor:
    """[P] bool: True where a group's valid (non-NaN) rewards are all equal, so it carries no
    learning signal (DAPO's dynamic sampling, arXiv:2503.14476, drops such groups). A group with
    0 or 1 valid reward counts as zero-std. Errors as in `group_advantages`.
    """
    return _zero_spread(*_grouped(rewards_N, group_size))


def _std(centered: torch.Tensor, valid: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Unbiased (n - 1) standard deviation of already-centred values over valid entries."""
    squares = torch.where(valid, centered.square(), 0.0)
    count = valid.sum() if dim is None else valid.sum(dim, keepdim=True)
    total = squares.sum() if dim is None else squares.sum(dim, keepdim=True)
    return (total / (count - 1).clamp(min=1)).sqrt()


_BASELINES = {"mean", "leave_one_out"}
_SCALES = {"group_std", "batch_std", "none"}


def group_advantages(
    rewards_N: torch.Tensor,
    group_size: int,
    baseline: str = "mean",
    scale: str = "group_std",
    eps: float = 1e-4,
) -> torch.Tensor:
    """One advantage per sequence [N] from the rewards of the G samples of each prompt.

    Baseline b_i (over the valid rewards of row i's group, n of them):
    - "mean": b_i = mean_j r_j (GRPO, DeepSeekMath, arXiv:2402.03300);
    - "leave_one_out": b_i = (Σ_{j≠i} r_j) / (n - 1) (RLOO, arXiv:2402.14740).
    Scale s (A_i = (r_i - b_i) / s):
    - "group_std": s = std of the group + eps (GRPO);
    - "batch_std": s = std of all valid rewards in the batch + eps (group mean, batch std: Lite PPO,
      arXiv:2508.08221; REINFORCE++ with baseline, arXiv:2501.03262);
    - "none": s = 1 (Dr. GRPO, arXiv:2503.20783; RLOO).
    Standard deviations are unbiased (divide by n - 1), as torch.std and TRL do.

    NaN rewards (missing) are left out of every statistic and get advantage exactly 0. A group
    whose valid rewards are all equal (or that has at most one) gets exactly 0: no NaN, and no
    rounding noise divided by eps. Note eps dominates when rewards vary by much less than eps.
    Stats are computed in at least fp32; the result has that dtype.
    """
    _check_choice("baseline", baseline, _BASELINES)
    _check_choice("scale", scale, _SCALES)
    if eps < 0:
        raise ValueError(f"eps must be ≥ 0, got {eps}")
    rewards_PG, valid_PG = _grouped(rewards_N, group_size)
    n_P1 = valid_PG.sum(-1, keepdim=True).to(rewards_PG.dtype)  # [P, 1]
    masked_PG = torch.where(valid_PG, rewards_PG, 0.0)
    deviation_PG = rewards_PG - masked_PG.sum(-1, keepdim=True) / n_P1.clamp(min=1)
    advantages_PG = deviation_PG
    if baseline == "leave_one_out":
        # r_i - (S - r_i)/(n - 1) = n/(n - 1) · (r_i - mean): same direction, larger by n/(n-1).
        advantages_PG = deviation_PG * (n_P1 / (n_P1 - 1).clamp(min=1))
    if scale == "group_std":
        advantages_PG = advantages_PG / (_std(deviation_PG, valid_PG, dim=-1) + eps)
    elif scale == "batch_std":
        batch_mean = masked_PG.sum() / valid_PG.sum().clamp(min=1)
        advantages_PG = advantages_PG / (_std(rewards_PG - batch_mean, valid_PG, dim=None) + eps)
    no_signal_PG = _zero_spread(rewards_PG, valid_PG).unsqueeze(-1) | ~valid_PG
    return torch.where(no_signal_PG, 0.0, advantages_PG).flatten()


# ---------------------------------------------------------------- per-token (PPO)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al., arXiv:1506.02438) over token sequences.

    δ_t = r_t + γ V_{t+1} - V_t,   A_t = δ_t + γλ A_{t+1},   returns R_t = A_t + V_t,
    with V_{t+1} = 0 and A_{t+1} = 0 after each row's last valid token (the episode ends there).
    rewards, values, mask: [N, T], right-padded (the valid tokens are a prefix of each row; left
    padding works too, but a gap inside a row ends the episode at the gap).
    Returns (advantages [N, T], returns [N, T]), both exactly 0 where mask is 0.
    """
    _check_same_shape("rewards", rewards, "values", values)
    _check_same_shape("rewards", rewards, "mask", mask)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, T], got shape {tuple(rewards.shape)}")
    for name, x in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {x}")
    valid = _valid(mask)
    rewards = torch.where(valid, rewards, 0.0)
    values = torch.where(valid, values, 0.0)  # so V beyond the last token bootstraps as 0
    continues = valid.to(rewards.dtype)
    n, t_len = rewards.shape
    advantages = torch.zeros_like(rewards)  # [N, T]
    next_value = rewards.new_zeros(n)  # [N]
    next_advantage = rewards.new_zeros(n)
    for t in reversed(range(t_len)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * continues[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, torch.where(valid, advantages + values, 0.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - μ) / sqrt(σ² + eps) over the masked entries; with shift_mean=False the mean is added
    back, so only the scale changes. μ, σ² are the mean and unbiased variance of x over entries
    where mask is non-zero (σ² = 0 with fewer than two). Returns [N, T], 0 where mask is 0.
    Used on PPO advantages (e.g. Ziegler et al., arXiv:1909.08593) to make their scale uniform.
    """
    _check_same_shape("x", x, "mask", mask)
    valid = _valid(mask)
    count = valid.sum().to(x.dtype)
    mean = torch.where(valid, x, 0.0).sum() / count.clamp(min=1)
    var = torch.where(valid, (x - mean).square(), 0.0).sum() / (count - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(valid, whitened, 0.0)


def kl_shaped_rewards(
    scores_N: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-token PPO rewards [N, T]: r_t = -β (log π(y_t) - log π_ref(y_t)), plus the sequence
    score s at each row's last valid token (Ziegler et al., arXiv:1909.08593; InstructGPT,
    arXiv:2203.02155). 0 where mask is 0. A row with no valid token is all 0: its score is
    dropped, as such a row contributes nothing to the loss either.
    """
    _check_same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    _check_same_shape("logprobs", logprobs, "mask", mask)
    if logprobs.dim() != 2 or scores_N.shape != logprobs.shape[:1]:
        raise ValueError(
            f"scores_N must be [N] and logprobs [N, T], got shapes {tuple(scores_N.shape)} "
            f"and {tuple(logprobs.shape)}"
        )
    if beta < 0:
        raise ValueError(f"beta must be ≥ 0, got {beta}")
    valid = _valid(mask)
    rewards = torch.where(valid, -beta * (logprobs - ref_logprobs), 0.0)  # [N, T]
    positions = torch.arange(logprobs.shape[1], device=logprobs.device)
    last_N = torch.where(valid, positions, -1).amax(-1)  # [N]; -1 for a row without tokens
    is_last = positions == last_N.unsqueeze(-1)  # never true in a row without tokens (last = -1)
    return rewards + torch.where(is_last, scores_N.to(rewards.dtype).unsqueeze(-1), 0.0)


def _check_positive(name: str, x: float) -> None:
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"AdaptiveKLController {name} must be a finite number > 0, got {x}")


class AdaptiveKLController:
    """Proportional controller for the KL coefficient β (Ziegler et al., arXiv:1909.08593, §2.2):

    e = clip((KL - target) / target, -0.2, 0.2),   β ← β · (1 + e · n_steps / horizon).

    β grows when the measured KL is above target and shrinks when it is below. `value` is the
    current β; `state_dict()` / `load_state_dict()` carry it across a resume.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        for name, x in (("init_kl_coef", init_kl_coef), ("target", target), ("horizon", horizon)):
            _check_positive(name, x)
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move β after `n_steps` samples (or steps) whose mean KL was `current_kl`; returns β.

        n_steps must stay below 5 · horizon, where a -0.2 error would drive β to 0 or below.
        """
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl must be finite, got {current_kl}; β left at {self.value}")
        if not 0 <= n_steps < 5 * self.horizon:
            raise ValueError(f"n_steps must be in [0, 5 · horizon = {5 * self.horizon:g}), got {n_steps}")
        error = min(max((current_kl - self.target) / self.target, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        missing = sorted({"value", "target", "horizon"} - set(state))
        if missing:
            raise ValueError(f"AdaptiveKLController state is missing {', '.join(missing)}")
        for name in ("value", "target", "horizon"):
            _check_positive(name, state[name])
        self.value, self.target, self.horizon = (float(state[k]) for k in ("value", "target", "horizon"))
