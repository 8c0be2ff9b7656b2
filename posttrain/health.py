"""Run-health alarms: small pure detectors over a run's metric stream, and the monitor RL recipes call.

A metric stream is the run's history as one dict per step (the rows of metrics.jsonl merged by
step, e.g. ``{"step": 7, "rollout/reward": 0.4, "eval/accuracy": 0.3, ...}``). Each detector reads
the stream up to now and returns an ``Alarm`` when its condition holds at the latest step, else None.
Thresholds are ``HealthConfig`` fields (the ``health`` section of grpo, ppo and best-of-n):

- ``no_signal``: rollout/frac_zero_std_groups >= ``no_signal_frac`` for ``steps`` steps in a row:
  (nearly) every group's rewards are equal, so group-relative advantages are 0. Says what those
  groups scored (rollout/zero_std_reward/<function>: all 0, all 1, or the mean).
- ``reward_hacking``: at a step where the guard (``guard``, default eval/accuracy: the task's
  check() on held-out prompts) is measured, it has fallen from its best earlier value (the first
  of equal ones) by ``guard_z`` standard errors while the training reward (rollout/reward) rose by
  ``guard_z`` standard errors.
  The guard's noise is binomial: z = (p0 - p1) / sqrt(p0(1-p0)/n0 + p1(1-p1)/n1), n the problems
  (eval/problems) or samples (rollout/samples) it was measured on. The reward's rise is Welch's z of
  the mean of the first ``reward_window`` steps against the last ones up to that step (each window
  at most half the steps so far, at least 2), treating steps as independent draws.
- ``entropy_collapse``: policy/entropy below ``entropy_ratio`` x its mean over the first 3 steps, for
  ``steps`` steps in a row.
- ``length``: rollout/clipped_ratio >= ``truncation_frac`` (truncation surge), or
  rollout/completion_len >= ``length_growth`` x its mean over the first 3 steps (blow-up), for
  ``steps`` steps in a row.
- ``kl_runaway``: KL to the reference per token >= ``kl_max`` for ``steps`` steps in a row
  (policy/kl_per_token when logged, as PPO does, whose policy/kl is per response; else policy/kl).
- ``nonfinite``: an optimizer step skipped for a non-finite loss or gradient (a rise of
  train/skipped_steps_total) in each of ``nonfinite_steps`` steps in a row.

``HealthMonitor`` tails metrics.jsonl, so it sees every metric the recipe and its evaluation
logged, and a resumed run's history as it was; it logs ``health/<alarm>`` (1 while firing, else 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.config import ALARMS, HealthConfig

Row = dict[str, Any]
Series = list[tuple[int, float]]
BASELINE_STEPS = 3  # entropy_collapse and length compare with the mean of a series' first steps
COUNT_KEYS = {"eval": "eval/problems", "rollout": "rollout/samples"}


@dataclass(frozen=True)
class Alarm:
    """An alarm firing at ``step``; its condition has held since ``since``."""

    name: str
    step: int
    since: int
    seen: str
    advice: str

    def line(self) -> str:
        return (f"[health] {self.name} at step {self.step} (since step {self.since}): {self.seen}. "
                f"Try {self.advice}.")


# ------------------------------------------------------------------------------------ pure math


def series(history: list[Row], key: str) -> Series:
    """``(step, value)`` of each finite value of ``key`` in the stream, in order."""
    out = []
    for row in history:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.append((int(row["step"]), float(value)))
    return out


def held_since(flags: list[tuple[int, bool]], patience: int) -> int | None:
    """The first step of the run of True flags that ends at the last flag, when that run is at least
    ``patience`` long; else None."""
    since, count = None, 0
    for step, flag in reversed(flags):
        if not flag:
            break
        since, count = step, count + 1
    return since if count >= patience else None


def proportion_drop_z(p_before: float, n_before: float, p_after: float, n_after: float) -> float:
    """How many standard errors a share fell: (p0 - p1) / sqrt(p0(1-p0)/n0 + p1(1-p1)/n1), the
    unpooled two-sample z of binomial proportions. Both shares at 0 or 1 give a standard error of 0:
    then any fall is +inf, any rise -inf, no change 0."""
    diff = p_before - p_after
    se = math.sqrt(p_before * (1 - p_before) / n_before + p_after * (1 - p_after) / n_after)
    if se == 0:
        return math.copysign(math.inf, diff) if diff else 0.0
    return diff / se


def mean_rise_z(before: list[float], after: list[float]) -> float:
    """Welch's z of a rise: (mean(after) - mean(before)) / sqrt(s_b²/n_b + s_a²/n_a), sample variances
    (n - 1). Needs 2 values on each side; a standard error of 0 gives ±inf (or 0 for no change)."""
    if len(before) < 2 or len(after) < 2:
        raise ValueError(f"mean_rise_z needs >= 2 values on each side; got {len(before)} and {len(after)}")

    def mean_var(xs: list[float]) -> tuple[float, float]:
        mean = math.fsum(xs) / len(xs)
        return mean, math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)

    (mb, vb), (ma, va) = mean_var(before), mean_var(after)
    se = math.sqrt(vb / len(before) + va / len(after))
    if se == 0:
        return math.copysign(math.inf, ma - mb) if ma != mb else 0.0
    return (ma - mb) / se


def _held_against_start(values: Series, holds: Callable[[float, float], bool],
                        patience: int) -> tuple[int, float] | None:
    """``(since, start)`` when ``holds(value, start)`` for the last ``patience`` values after the first
    BASELINE_STEPS ones, ``start`` being their mean; else None."""
    if len(values) <= BASELINE_STEPS:
        return None
    start = math.fsum(v for _, v in values[:BASELINE_STEPS]) / BASELINE_STEPS
    since = held_since([(s, holds(v, start)) for s, v in values[BASELINE_STEPS:]], patience)
    return None if since is None else (since, start)


def _row(history: list[Row], step: int) -> Row:
    return next((row for row in reversed(history) if row["step"] == step), {})


# ------------------------------------------------------------------------------------ detectors


def no_signal(history: list[Row], min_frac: float, patience: int) -> Alarm | None:
    """(Nearly) every prompt group with all-equal rewards for ``patience`` steps in a row."""
    fracs = series(history, "rollout/frac_zero_std_groups")
    since = held_since([(s, v >= min_frac) for s, v in fracs], patience)
    if since is None:
        return None
    step, frac = fracs[-1]
    row = _row(history, step)
    prefix = "rollout/zero_std_reward/"
    per_fn = {k[len(prefix):]: float(v) for k, v in row.items() if k.startswith(prefix) and _finite(v)}
    total = row.get("rollout/zero_std_reward")
    scored = ", ".join(f"{name} {_level(v)}" for name, v in per_fn.items())
    if not scored and _finite(total):
        scored = _level(total)
    never = [name for name, v in per_fn.items() if v == 0] or (["the reward"] if total == 0 else [])
    if never:
        advice = (f"easier data (data.options), more samples per prompt (samples_per_prompt), a format or "
                  f"partial-credit shaping reward, or a warm-start SFT first: no sample earns "
                  f"{', '.join(never)}")
    elif all(v == 1 for v in per_fn.values()) if per_fn else total == 1:
        advice = "harder prompts: every sample already earns the reward, nothing is left to learn"
    else:
        advice = ("more samples per prompt (samples_per_prompt), a higher sampling.temperature, or a reward "
                  "that tells samples apart")
    seen = (f"{frac:.0%} of prompt groups had all-equal rewards at step {step} (>= {min_frac:.0%} at every "
            f"step since {since}); rewards in those groups: {scored or 'not logged'}")
    return Alarm("no_signal", step, since, seen, advice)


def reward_hacking(history: list[Row], guard: str, z: float, window: int,
                   reward_key: str = "rollout/reward") -> Alarm | None:
    """The training reward rose while the guard fell, both by ``z`` standard errors (module docstring)."""
    guard_s = series(history, guard)
    if len(guard_s) < 2 or any(not 0 <= v <= 1 for _, v in guard_s):
        return None
    count_key = COUNT_KEYS.get(guard.split("/")[0], "")
    flagged: list[tuple[int, Any]] = []
    for index, (step, p1) in enumerate(guard_s[1:], start=1):
        # against the guard's best so far: a policy often first gains on the guard, then hacks it away
        s0, p0 = max(guard_s[:index], key=lambda measured: measured[1])
        n0, n1 = _row(history, s0).get(count_key), _row(history, step).get(count_key)
        rewards = [v for s, v in series(history, reward_key) if s <= step]
        w = min(window, len(rewards) // 2)
        if not (_finite(n0) and _finite(n1)) or w < 2:
            flagged.append((step, None))
            continue
        drop = proportion_drop_z(p0, n0, p1, n1)
        rise = mean_rise_z(rewards[:w], rewards[-w:])
        evidence = (s0, p0, n0, p1, n1, drop, rise, rewards[:w], rewards[-w:])
        flagged.append((step, evidence if drop >= z and rise >= z else None))
    since = held_since([(s, e is not None) for s, e in flagged], 1)
    if since is None:
        return None
    step, (s0, p0, n0, p1, n1, drop, rise, first, last) = flagged[-1]
    seen = (f"{guard} fell {p0:.3g} -> {p1:.3g} (step {s0} -> {step}; {drop:.1f} binomial standard errors, "
            f"n = {n0:g} and {n1:g}) while {reward_key} rose {_mean(first):.3g} -> {_mean(last):.3g} "
            f"(mean of its first {len(first)} steps vs its last {len(last)}; {rise:.1f} standard errors)")
    advice = ("a guard in the reward (e.g. task_correct through reward_weights), a better reward model (more "
              "or harder labels), a larger beta, or the checkpoint from before the fall")
    return Alarm("reward_hacking", history[-1]["step"], since, seen, advice)


def entropy_collapse(history: list[Row], ratio: float, patience: int) -> Alarm | None:
    """policy/entropy below ``ratio`` x its mean over the first steps, ``patience`` steps in a row."""
    entropy = series(history, "policy/entropy")
    held = _held_against_start(entropy, lambda value, start: value < ratio * start, patience)
    if held is None:
        return None
    (since, start), (step, value) = held, entropy[-1]
    seen = (f"policy/entropy {value:.3g} nats per token, below {ratio:g} x its start ({start:.3g}, mean of "
            f"the first {BASELINE_STEPS} steps)")
    advice = ("a lower learning rate, a higher sampling.temperature, clip_eps_high above clip_eps_low "
              "(DAPO's clip-higher), or a KL penalty (beta)")
    return Alarm("entropy_collapse", step, since, seen, advice)


def length(history: list[Row], growth: float, truncation_frac: float, patience: int) -> Alarm | None:
    """A truncation surge (rollout/clipped_ratio) or a length blow-up (rollout/completion_len)."""
    clipped = series(history, "rollout/clipped_ratio")
    since = held_since([(s, v >= truncation_frac) for s, v in clipped], patience)
    if since is not None:
        step, value = clipped[-1]
        seen = f"{value:.0%} of samples were cut at max_new_tokens (>= {truncation_frac:.0%})"
        advice = ("a larger sampling.max_new_tokens, mask_truncated (GRPO) or missing_eos_penalty (PPO), "
                  "or a lower learning rate if lengths keep growing")
        return Alarm("length", step, since, seen, advice)
    lengths = series(history, "rollout/completion_len")
    held = _held_against_start(lengths, lambda value, start: value >= growth * start, patience)
    if held is None:
        return None
    (since, start), (step, value) = held, lengths[-1]
    seen = (f"mean completion length {value:.1f} tokens, {value / start:.1f}x its start ({start:.1f}, "
            f"mean of the first {BASELINE_STEPS} steps)")
    advice = ("a length penalty or format reward, loss_agg: constant (Dr. GRPO's fix of the length bias), "
              "or a lower learning rate")
    return Alarm("length", step, since, seen, advice)


def kl_runaway(history: list[Row], kl_max: float, patience: int) -> Alarm | None:
    """KL to the reference per token at or above ``kl_max`` for ``patience`` steps in a row."""
    key = "policy/kl_per_token" if series(history, "policy/kl_per_token") else "policy/kl"
    kl = series(history, key)
    since = held_since([(s, v >= kl_max) for s, v in kl], patience)
    if since is None:
        return None
    step, value = kl[-1]
    seen = f"{key} {value:.3g} nats per token (>= health.kl_max = {kl_max:g})"
    advice = "a larger beta (or kl_target, PPO's adaptive β), a lower learning rate, or fewer ppo_epochs"
    return Alarm("kl_runaway", step, since, seen, advice)


def nonfinite(history: list[Row], patience: int) -> Alarm | None:
    """An optimizer step skipped (non-finite loss or gradient) in each of ``patience`` steps in a row."""
    totals = series(history, "train/skipped_steps_total")
    flags = [(s, v > (totals[i - 1][1] if i else 0.0)) for i, (s, v) in enumerate(totals)]
    since = held_since(flags, patience)
    if since is None:
        return None
    step, total = totals[-1]
    seen = (f"optimizer steps skipped for a non-finite loss or gradient at every step since {since} "
            f"({total:g} in all)")
    advice = ("a lower optim.lr, optim.max_grad_norm > 0, model.autocast: none (fp32), or reward functions "
              "that never return inf; the run aborts after optim.max_bad_steps skipped steps in a row")
    return Alarm("nonfinite", step, since, seen, advice)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _level(value: float) -> str:
    return "all 0" if value == 0 else "all 1" if value == 1 else f"mean {value:.3g}"


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


DETECTORS: dict[str, Callable[[list[Row], HealthConfig], Alarm | None]] = {
    "no_signal": lambda h, c: no_signal(h, c.no_signal_frac, c.steps),
    "reward_hacking": lambda h, c: reward_hacking(h, c.guard, c.guard_z, c.reward_window),
    "entropy_collapse": lambda h, c: entropy_collapse(h, c.entropy_ratio, c.steps),
    "length": lambda h, c: length(h, c.length_growth, c.truncation_frac, c.steps),
    "kl_runaway": lambda h, c: kl_runaway(h, c.kl_max, c.steps),
    "nonfinite": lambda h, c: nonfinite(h, c.nonfinite_steps),
}


def inputs(name: str, config: HealthConfig) -> list[tuple[str, ...]]:
    """The metrics an alarm reads: it is checked when, for every tuple, one of its metrics was logged."""
    count = COUNT_KEYS.get(config.guard.split("/")[0], f"a count for {config.guard}")
    return {"no_signal": [("rollout/frac_zero_std_groups",)],
            "reward_hacking": [(config.guard,), (count,), ("rollout/reward",)],
            "entropy_collapse": [("policy/entropy",)],
            "length": [("rollout/clipped_ratio", "rollout/completion_len")],
            "kl_runaway": [("policy/kl_per_token", "policy/kl")],
            "nonfinite": [("train/skipped_steps_total",)]}[name]


# ------------------------------------------------------------------------------------ the monitor


class HealthMonitor:
    """Checks the alarms after each step over the run's metrics.jsonl (tailed; a resumed run's
    earlier rows replayed silently) and remembers when each fired, for the log and summary.md."""

    def __init__(self, config: HealthConfig, stop_on: list[str], metrics_path: Path) -> None:
        self.config = config
        self.names = [name for name in ALARMS if name not in config.off]
        self.stop_on = set(ALARMS) if "all" in stop_on else set(stop_on)
        self.path, self.offset = Path(metrics_path), 0
        self.history: list[Row] = []
        self.firing: dict[str, Alarm] = {}
        self.fired: list[Alarm] = []  # each time an alarm started firing
        self._read()
        replay, self.history = self.history, []
        for row in replay:
            self.history.append(row)
            self._evaluate()

    def _read(self) -> None:
        """New complete lines of metrics.jsonl, merged into the history by step (null -> NaN)."""
        if not self.path.is_file():
            return
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict) or not _finite(row.get("step")):
                continue
            values = {k: math.nan if v is None else v for k, v in row.items() if not k.startswith("health/")}
            if self.history and self.history[-1]["step"] == row["step"]:
                self.history[-1].update(values)
            else:
                self.history.append(values)

    def _evaluate(self) -> list[Alarm]:
        now = {name: DETECTORS[name](self.history, self.config) for name in self.names}
        started = [alarm for name, alarm in now.items() if alarm is not None and name not in self.firing]
        self.firing = {name: alarm for name, alarm in now.items() if alarm is not None}
        self.fired += started
        return started

    def update(self) -> tuple[dict[str, float], list[Alarm]]:
        """Read what was logged since the last call and check every alarm: ``health/<alarm>`` metrics
        (1 while firing) and the alarms that started firing now."""
        self._read()
        started = self._evaluate() if self.history else []
        return {f"health/{name}": float(name in self.firing) for name in self.names}, started

    def stop_reasons(self) -> list[Alarm]:
        """The alarms firing now that ``run.stop_on`` names."""
        return [alarm for name, alarm in self.firing.items() if name in self.stop_on]

    def markdown(self) -> str:
        """summary.md's section: each alarm's status, then what each firing saw and what to try."""
        logged = {key for row in self.history for key in row}
        lines = ["## Run health", "", "| alarm | status | stops the run |", "|---|---|---|"]
        for name in ALARMS:
            times = [a for a in self.fired if a.name == name]
            if name in self.config.off:
                status = "off (health.off)"
            elif times:
                status = ", ".join(f"fired at step {a.step} (since {a.since})" for a in times)
                status += "; still firing" if name in self.firing else ""
            elif missing := [" / ".join(keys) for keys in inputs(name, self.config)
                             if not any(key in logged for key in keys)]:
                status = f"not checked: {', '.join(missing)} never logged"
            else:
                status = "silent"
            lines.append(f"| {name} | {status} | {'yes' if name in self.stop_on else 'no'} |")
        lines.append("")
        lines += [f"- {alarm.line()}" for alarm in self.fired]
        return "\n".join(lines) + ("\n" if self.fired else "")
