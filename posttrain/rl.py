"""The parts of an RL step that GRPO, PPO and best-of-N share around their own algorithm box.

- ``sample_and_score``: sample n completions of prompt rows with the rollout engine and score them
  with the weighted reward functions;
- ``training_batch``, ``rollout_metrics`` and ``group_metrics``: the padded batch of a rollout, which
  rows were cut at max_new_tokens, and the rollout/ metrics every recipe logs;
- ``RolloutCorrection``: truncated importance weights (TIS) against the sampler's own log-probs, for
  ``rollout_correction: tis`` and for sampling that runs ahead of training (``cluster.max_staleness``);
- ``reference_policy``: the frozen starting policy of a KL penalty (none when β = 0);
- ``update_passes``: μ passes over a rollout batch in mini-batches, one guarded optimizer step each;
- ``held_out_rewards``: the rewards of a policy's greedy responses to held-out prompts, and
  ``reward_evaluation``, which logs them at each held-out evaluation (PPO);
- ``config_problems``: the checks every RL config makes (reward weights, choice fields).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from posttrain import distributed
from posttrain.advantages import zero_std_groups
from posttrain.config import DataConfig, ModelConfig, SamplingConfig
from posttrain.data.chat import prompt_messages
from posttrain.data.sources import reward_columns
from posttrain.errors import RewardError
from posttrain.losses import importance_metrics, truncated_is_weights
from posttrain.models import ReferencePolicy
from posttrain.rewards.base import RewardScores
from posttrain.rewards.calling import TrainerState, reward_inputs
from posttrain.rewards.setup import reward_metrics
from posttrain.rollout import Rollouts, SamplingParams
from posttrain.training import Stepper, accumulate, micro_batches

MicroLoss = Callable[[slice], tuple[torch.Tensor, dict[str, float]]]


def sample_and_score(model: nn.Module, tokenizer: Any, rows: list[dict[str, Any]],
                     reward_fns: list[tuple[str, Any, float]], n: int, sampling: SamplingConfig,
                     data: DataConfig, seed: int | None = None, *, trainer_state: TrainerState,
                     ahead: list[dict[str, Any]] | None = None,
                     ) -> tuple[Rollouts, RewardScores, list[dict[str, Any]]]:
    """``n`` completions of each prompt row, scored by the weighted reward functions, which are
    called as TRL calls them (``score_completions``; ``trainer_state`` is passed on as is).

    Samples are prompt-major (sample i belongs to ``rows[i // n]``); returns the rollouts, their
    scores and the row of each sample (its columns are what the reward functions were given).
    ``seed`` None draws the sampler's seed from torch's global RNG (restored on resume). ``ahead``:
    the rows the next call will ask for; with ``cluster.max_staleness`` > 0 the rollout workers start
    sampling them now, with these weights, while the caller trains (``distributed.sample_ahead``).
    """
    s = sampling
    params = SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                            max_new_tokens=s.max_new_tokens, seed=seed)
    prompts = [prompt_messages(row, data.system_prompt or None) for row in rows]
    options = {"backend": s.backend, "max_prompt_tokens": data.max_prompt_tokens,
               "engine_options": {"dtype": s.dtype}}
    sample = distributed.rollout_sampler()  # generate, or its rollout workers on a cluster
    rollouts = sample(model, tokenizer, prompts, n=n, sampling=params, **options)
    distributed.check_on_policy(model, rollouts)
    if ahead:
        distributed.sample_ahead(model, tokenizer, [prompt_messages(row, data.system_prompt or None)
                                                    for row in ahead], n=n, sampling=params, **options)
    sample_rows = [rows[i // n] for i in range(len(rollouts))]
    reward_prompts, completions = reward_inputs(sample_rows, [prompts[i // n] for i in range(len(rollouts))],
                                                rollouts.texts)
    score = distributed.reward_scorer()  # score_completions, or its reward workers on a cluster
    scores = score(reward_fns, reward_prompts, completions, reward_columns(sample_rows),
                   completion_ids=rollouts.completion_ids, trainer_state=trainer_state)
    return rollouts, scores, sample_rows


def scoring_temperature(sampling: SamplingConfig) -> float:
    """The temperature that training log-probs are computed at: the sampler's (1 when it is greedy),
    so that they score the distribution the samples came from."""
    return sampling.temperature or 1.0


def training_batch(rollouts: Rollouts, pad_id: int,
                   device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The rollouts as a right-padded batch (``Rollouts.to_batch``) and ``truncated_N``: the rows
    that hit max_new_tokens without ending."""
    truncated_N = torch.tensor([reason == "length" for reason in rollouts.finish_reasons], device=device)
    return rollouts.to_batch(pad_id, device), truncated_N


def rollout_metrics(rollouts: Rollouts, scores: RewardScores) -> dict[str, float]:
    """rollout/reward (its std and each function's mean), completion length, the fraction cut at
    max_new_tokens, the number of samples, the engine's completion tokens per second, and
    ``rollout/<name>`` for each metric the reward functions logged (the mean of the values given to
    ``log_metric``)."""
    metrics = reward_metrics(scores)
    metrics["rollout/samples"] = float(len(rollouts))
    metrics["rollout/completion_len"] = sum(map(len, rollouts.completion_ids)) / len(rollouts)
    metrics["rollout/clipped_ratio"] = sum(r == "length" for r in rollouts.finish_reasons) / len(rollouts)
    metrics["rollout/tokens_per_s"] = rollouts.timing.get("tokens_per_s", 0.0)
    if rollouts.staleness is not None:  # sampled on rollout workers: weight versions behind the policy
        metrics["rollout/staleness"] = float(rollouts.staleness)
    return {**metrics, **logged_metrics(scores, "rollout", metrics)}


def logged_metrics(scores: RewardScores, prefix: str, taken: dict[str, float]) -> dict[str, float]:
    """``<prefix>/<name>``: the mean of each metric the reward functions logged with ``log_metric``
    (as TRL averages them per step). A name that would replace one of the metrics in ``taken``
    raises RewardError."""
    logged = scores.logged.metrics if scores.logged else {}
    out = {f"{prefix}/{name}": sum(values) / len(values) for name, values in logged.items()}
    clashes = sorted(set(out) & set(taken))
    if clashes:
        raise RewardError(f"a reward function logged {', '.join(clashes)} with log_metric, a metric "
                          "posttrain logs itself; choose another name")
    return out


class RolloutCorrection:
    """Truncated importance sampling (TIS) of a policy loss against the sampler's own log-probs
    (``losses.truncated_is_weights``), on when a recipe's ``rollout_correction`` is ``tis`` or when
    sampling runs ahead of training (``cluster.max_staleness`` > 0), and its per-step metrics."""

    def __init__(self, config: Any) -> None:
        cluster = getattr(config, "cluster", None)
        self.on = config.rollout_correction == "tis" or (cluster is not None and cluster.max_staleness > 0)
        self.cap = config.tis_cap
        self.sums: dict[str, float] = {}

    def weights(self, old_NT: torch.Tensor, batch: dict[str, torch.Tensor], rows: slice,
                mask_NT: torch.Tensor) -> torch.Tensor | None:
        """[n, T] detached weights of the policy loss of ``batch``'s ``rows`` (None when off), given their
        old log-probs and loss mask [n, T]; their sums are kept for the step's metrics. Rows seen again
        (a second pass) count again: means are unchanged by it."""
        if not self.on:
            return None
        sampler_NT = batch["sampler_logprobs"][rows] if "sampler_logprobs" in batch else None
        if sampler_NT is None:
            raise ValueError("rollout_correction: tis needs the sampler's log-probs "
                             "(Rollouts.sampler_logprobs), which this rollout engine did not return")
        weights_NT, sums = truncated_is_weights(old_NT, sampler_NT, mask_NT, self.cap)
        for key, value in sums.items():
            self.sums[key] = max(self.sums.get(key, 0.0), value) if key == "ratio_max" else (
                self.sums.get(key, 0.0) + value)
        return weights_NT

    def step_metrics(self) -> dict[str, float]:
        """rollout/is_weight_mean, is_weight_std, is_ratio_max, is_truncated_frac and logprob_gap over
        the step's rows on every trainer rank (empty when off); the sums start again."""
        if not self.on:
            return {}
        rank = distributed.this_rank().index  # a max does not add up: one key per rank, then their max
        sums = {key: value for key, value in self.sums.items() if key != "ratio_max"}
        total = distributed.sum_over_ranks({**sums, f"ratio_max@{rank}": self.sums.get("ratio_max", 0.0)})
        total["ratio_max"] = max(value for key, value in total.items() if key.startswith("ratio_max@"))
        self.sums = {}
        return {f"rollout/{key}": value for key, value in importance_metrics(total).items()}


def group_metrics(scores: RewardScores, group_size: int) -> dict[str, float]:
    """rollout/frac_zero_std_groups: the share of prompt groups (``group_size`` consecutive samples; with
    one sample per prompt, the whole batch) whose rewards are all equal, so a group-relative advantage
    is 0; and rollout/zero_std_reward (and /<function>): the mean reward of those groups' samples (NaN
    when there are none), which tells whether they were all 0 or all 1."""
    size = group_size if group_size > 1 else len(scores.total)
    equal_P = zero_std_groups(scores.total, size)
    equal_N = equal_P.repeat_interleave(size)
    per_fn = {name: values[equal_N] for name, values in scores.per_fn.items()}
    equal = RewardScores(total=scores.total[equal_N], per_fn=per_fn)
    metrics = reward_metrics(equal, prefix="rollout/zero_std_reward")
    metrics.pop("rollout/zero_std_reward_std")
    return {"rollout/frac_zero_std_groups": float(equal_P.float().mean()), **metrics}


def reference_policy(model_config: ModelConfig, policy: nn.Module, beta: float, mode: str,
                     resumed: bool) -> ReferencePolicy | None:
    """The reference of a KL penalty: the starting weights (``frozen``) or the policy with its LoRA
    adapter off (``adapter``); None when β = 0, so nothing is loaded. A resumed run's policy has
    moved, so a frozen reference is loaded again from ``model_config`` (so is a sharded policy's: fsdp)."""
    from posttrain.runner import load_policy

    if beta <= 0:
        return None
    again = (resumed or distributed.sharded()) and mode == "frozen"
    return ReferencePolicy(load_policy(model_config)[0] if again else policy, mode)


def update_passes(stepper: Stepper, epochs: int, mini_batches: int, micro_batch_size: int, agg: str,
                  next_pass: Callable[[], tuple[torch.Tensor, MicroLoss]]) -> dict[str, float]:
    """μ = ``epochs`` passes over a rollout batch, each split into ``mini_batches`` consecutive parts
    with one optimizer step per part; ``next_pass()`` gives a pass's loss mask ``[N, T]`` and its
    micro-batch loss (PPO reshuffles the rows there). Returns the loss metrics averaged over every
    part of every pass, and the last step's train/ metrics."""
    totals: dict[str, float] = {}
    for _ in range(epochs):
        mask_NT, micro_loss = next_pass()
        n_rows = mask_NT.shape[0]
        parts = list(micro_batches(n_rows, -(-n_rows // mini_batches)))
        for part in parts:
            metrics = accumulate(stepper, mask_NT, micro_batch_size, agg, micro_loss, within=part)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value / (epochs * len(parts))
            totals.update(stepper.step())
    return totals


def held_out_rewards(model: nn.Module, tokenizer: Any, rows: list[dict[str, Any]],
                     reward_fns: list[tuple[str, Any, float]], sampling: SamplingConfig,
                     data: DataConfig, trainer_state: TrainerState) -> dict[str, float]:
    """Mean reward of the model's greedy responses to held-out prompt rows: ``reward``,
    ``reward_std``, ``reward/<function>`` and ``greedy/<name>`` for each metric the functions
    logged (empty without rows)."""
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    greedy = dataclasses.replace(sampling, temperature=0.0)
    # a fixed seed: evaluating must not move the global RNG that training samples from
    _, scores, _ = sample_and_score(model, tokenizer, rows, reward_fns, 1, greedy, data, seed=0,
                                    trainer_state=trainer_state)
    model.train(was_training)
    metrics = reward_metrics(scores, prefix="reward")
    return {**metrics, **logged_metrics(scores, "greedy", metrics)}


def reward_evaluation(config: Any, s: Any, policy: nn.Module,
                      rewards: list[Any]) -> Callable[[int], dict[str, float]]:
    """What a recipe adds to its held-out evaluation (``s.also_evaluate``; the task's check() runs on
    ``policy``, see ``runner.setup``): the rewards of the policy's greedy responses (eval/reward)."""

    def evaluate(step: int) -> dict[str, float]:
        metrics = held_out_rewards(policy, s.tokenizer, s.eval_rows, rewards, config.sampling, config.data,
                                   TrainerState(step, config.run.steps))
        if metrics:
            s.run.tracker.log(step, {f"eval/{k}": v for k, v in metrics.items()})
            print(f"[eval] step {step}: mean reward {metrics['reward']:.4f} of greedy responses to "
                  f"{len(s.eval_rows)} held-out prompts")
        return metrics

    return evaluate


def config_problems(config: Any, choices: dict[str, tuple[str, ...]]) -> list[str]:
    """What an RL recipe's ``Config.check`` reports for its ``rewards`` and ``reward_weights`` and for
    its fields with a fixed set of values (``choices``: field name -> allowed values)."""
    problems = []
    if hasattr(config, "rollout_correction"):  # GRPO and PPO
        choices = {**choices, "rollout_correction": ("none", "tis")}
        if config.cluster.max_staleness > 0 and config.cluster.rollout_workers == 0:
            problems.append(f"cluster.max_staleness={config.cluster.max_staleness} needs cluster."
                            "rollout_workers > 0: sampling runs ahead of training on rollout workers")
        if not config.tis_cap >= 1:
            problems.append(f"tis_cap must be >= 1 (where the weights are truncated); got {config.tis_cap}")
        if config.rollout_correction == "tis" and config.sampling.temperature == 0:
            problems.append("rollout_correction: tis needs sampling.temperature > 0 (greedy samples have no "
                            "sampling distribution to correct for)")
    if config.reward_weights and len(config.reward_weights) != len(config.rewards):
        problems.append(f"reward_weights has {len(config.reward_weights)} values for "
                        f"{len(config.rewards)} rewards")
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            problems.append(f"'{key}' must be one of {', '.join(allowed)}; got {getattr(config, key)!r}")
    return problems
