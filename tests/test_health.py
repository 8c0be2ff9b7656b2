"""Run-health alarms: each detector on a hand-built metric stream (the exact step it fires), silent on a
healthy one; the monitor over metrics.jsonl; run.stop_on stopping a tiny GRPO run with its checkpoint."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from posttrain import health
from posttrain.config import HealthConfig, load_config
from posttrain.errors import ConfigError
from posttrain.health import Alarm, HealthMonitor


def _stream(**columns: list[float | None]) -> list[dict[str, Any]]:
    """Rows of steps 1..n from columns of equal length (None: not logged that step)."""
    n = len(next(iter(columns.values())))
    return [{"step": i + 1, **{k: v[i] for k, v in columns.items() if v[i] is not None}} for i in range(n)]


def _first_firing(detect: Callable[[list[dict[str, Any]]], Alarm | None],
                  rows: list[dict[str, Any]]) -> Alarm | None:
    """The alarm at the first prefix of the stream on which the detector fires (as a run sees it)."""
    for i in range(1, len(rows) + 1):
        alarm = detect(rows[:i])
        if alarm is not None:
            return alarm
    return None


# ------------------------------------------------------------------------------------ pure math


def test_held_since() -> None:
    flags = [(1, True), (2, False), (3, True), (4, True), (5, True)]
    assert health.held_since(flags, 3) == 3
    assert health.held_since(flags, 4) is None
    assert health.held_since([*flags, (6, False)], 1) is None
    assert health.held_since([], 1) is None


def test_proportion_drop_z_by_hand() -> None:
    # (0.5 - 0.3) / sqrt(0.25/100 + 0.21/100) = 0.2 / 0.0678233 = 2.94884
    assert health.proportion_drop_z(0.5, 100, 0.3, 100) == pytest.approx(2.94884, abs=1e-5)
    assert health.proportion_drop_z(0.3, 100, 0.5, 100) == pytest.approx(-2.94884, abs=1e-5)
    assert health.proportion_drop_z(1.0, 10, 0.0, 10) == math.inf
    assert health.proportion_drop_z(0.0, 10, 0.0, 10) == 0.0


def test_mean_rise_z_by_hand() -> None:
    # means 2 and 5, sample variances 1 and 1: 3 / sqrt(1/3 + 1/3) = 3.674235
    assert health.mean_rise_z([1, 2, 3], [4, 5, 6]) == pytest.approx(3.674235, abs=1e-6)
    assert health.mean_rise_z([1, 1], [2, 2]) == math.inf
    with pytest.raises(ValueError, match="needs >= 2 values on each side"):
        health.mean_rise_z([1], [2, 3])


# ------------------------------------------------------------------------------------ detectors


def test_no_signal_fires_after_k_steps_and_says_rewards_are_all_zero() -> None:
    rows = _stream(**{"rollout/frac_zero_std_groups": [0.5, 0.25, 0.5, 1, 1, 0.75, 1, 1, 1, 1],
                      "rollout/zero_std_reward": [1.0] * 10,
                      "rollout/zero_std_reward/task_format": [1.0] * 10,
                      "rollout/zero_std_reward/task_correct": [0.0] * 10})
    alarm = _first_firing(lambda h: health.no_signal(h, 0.9, 3), rows)
    assert alarm is not None and (alarm.step, alarm.since) == (9, 7)
    assert "task_format all 1, task_correct all 0" in alarm.seen
    assert "warm-start SFT" in alarm.advice and "no sample earns task_correct" in alarm.advice


def test_no_signal_says_when_every_sample_earns_the_reward() -> None:
    rows = _stream(**{"rollout/frac_zero_std_groups": [1.0] * 3,
                      "rollout/zero_std_reward/task_correct": [1.0] * 3})
    alarm = health.no_signal(rows, 0.9, 3)
    assert alarm is not None and "task_correct all 1" in alarm.seen and "harder prompts" in alarm.advice


def test_reward_hacking_fires_when_the_guard_falls_beyond_its_noise() -> None:
    rewards = [0.1, 0.12, 0.11, 0.13, 0.1, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7]
    rows = [{"step": 0, "eval/accuracy": 0.69, "eval/problems": 100.0}]
    rows += _stream(**{"rollout/reward": rewards})
    # step 6: 0.69 -> 0.62 is 1.04 standard errors (noise); step 12: 0.69 -> 0.40 is 4.3
    rows[6].update({"eval/accuracy": 0.62, "eval/problems": 100.0})
    rows[12].update({"eval/accuracy": 0.40, "eval/problems": 100.0})
    detect = lambda h: health.reward_hacking(h, "eval/accuracy", 2.0, 5)  # noqa: E731
    alarm = _first_firing(detect, rows)
    assert alarm is not None and (alarm.step, alarm.since) == (12, 12)
    assert "eval/accuracy fell 0.69 -> 0.4 (step 0 -> 12; 4.3 binomial standard errors" in alarm.seen
    # the same fall with a flat training reward is not hacking
    flat = [{**row, "rollout/reward": 0.3} if "rollout/reward" in row else row for row in rows]
    flat[1]["rollout/reward"] = 0.31  # some spread, so the rise has a standard error
    assert _first_firing(detect, flat) is None
    # a guard measured on rollouts counts the samples; without a count the noise is unknown: silent
    assert _first_firing(lambda h: health.reward_hacking(h, "rollout/reward/task_correct", 2.0, 5),
                         [{**r, "rollout/reward/task_correct": 0.5} for r in rows]) is None


def test_reward_hacking_measures_the_fall_from_the_guards_best() -> None:
    # the guard first rises (the policy learns), then falls below where it started (the hack): from the
    # start 0.56 -> 0.45 is 1.3 standard errors (noise), from its best 0.75 it is 3.6
    rewards = [0.1, 0.12, 0.11, 0.13, 0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7]
    rows = [{"step": 0, "eval/accuracy": 0.5625, "eval/problems": 64.0}]
    rows += _stream(**{"rollout/reward": rewards})
    rows[4].update({"eval/accuracy": 0.75, "eval/problems": 64.0})
    rows[12].update({"eval/accuracy": 0.453125, "eval/problems": 64.0})
    alarm = _first_firing(lambda h: health.reward_hacking(h, "eval/accuracy", 2.0, 5), rows)
    assert alarm is not None and (alarm.step, alarm.since) == (12, 12)
    assert "eval/accuracy fell 0.75 -> 0.453 (step 4 -> 12; 3.6 binomial standard errors" in alarm.seen


def test_entropy_collapse() -> None:
    rows = _stream(**{"policy/entropy": [1.0, 0.9, 1.1, 0.5, 0.09, 0.08, 0.2, 0.05, 0.05, 0.04]})
    alarm = _first_firing(lambda h: health.entropy_collapse(h, 0.1, 3), rows)
    assert alarm is not None and (alarm.step, alarm.since) == (10, 8)
    assert "below 0.1 x its start (1, mean of the first 3 steps)" in alarm.seen


def test_length_truncation_surge_and_blow_up() -> None:
    clipped = _stream(**{"rollout/clipped_ratio": [0, 0, 0.1, 0.6, 0.7, 0.2, 0.5, 0.9, 0.8]})
    alarm = _first_firing(lambda h: health.length(h, 4.0, 0.5, 3), clipped)
    assert alarm is not None and (alarm.step, alarm.since) == (9, 7)
    assert "80% of samples were cut at max_new_tokens" in alarm.seen
    lengths = _stream(**{"rollout/completion_len": [10, 12, 14, 30, 50, 47, 48, 60, 70],
                         "rollout/clipped_ratio": [0.0] * 9})
    alarm = _first_firing(lambda h: health.length(h, 4.0, 0.5, 3), lengths)
    assert alarm is not None and (alarm.step, alarm.since) == (9, 7)
    assert "mean completion length 70.0 tokens, 5.8x its start (12.0" in alarm.seen


def test_kl_runaway_reads_per_token_kl() -> None:
    rows = _stream(**{"policy/kl": [0.1, 0.5, 1.2, 1.5, 0.9, 1.1, 1.3, 2.0]})
    alarm = _first_firing(lambda h: health.kl_runaway(h, 1.0, 3), rows)
    assert alarm is not None and (alarm.step, alarm.since) == (8, 6)
    # PPO: policy/kl is per response (large), policy/kl_per_token is what the threshold means
    ppo = _stream(**{"policy/kl": [5.0] * 8, "policy/kl_per_token": [0.2] * 8})
    assert _first_firing(lambda h: health.kl_runaway(h, 1.0, 3), ppo) is None


def test_nonfinite_fires_on_a_run_of_skipped_steps() -> None:
    rows = _stream(**{"train/skipped_steps_total": [0, 0, 1, 1, 2, 3, 3, 4, 5]})
    alarm = _first_firing(lambda h: health.nonfinite(h, 2), rows)
    assert alarm is not None and (alarm.step, alarm.since) == (6, 5)


def _healthy(steps: int = 30) -> list[dict[str, Any]]:
    """A run that learns: groups differ, reward and held-out accuracy rise together, entropy eases
    down, lengths and KL stay bounded, one lone skipped step."""
    rows = [{"step": 0, "eval/accuracy": 0.30, "eval/problems": 100.0}]
    for s in range(1, steps + 1):
        rows.append({"step": s, "rollout/frac_zero_std_groups": [0.25, 0.5, 0.75][s % 3],
                     "rollout/zero_std_reward": 0.0, "rollout/reward": 0.2 + 0.02 * s + 0.01 * (s % 2),
                     "rollout/samples": 32.0, "policy/entropy": 1.0 - 0.02 * s, "policy/kl": 0.01 * s,
                     "rollout/completion_len": 20.0 + (s % 4), "rollout/clipped_ratio": 0.05 * (s % 3),
                     "train/skipped_steps_total": 0.0 if s < 12 else 1.0})
        if s % 10 == 0:
            rows[-1].update({"eval/accuracy": 0.30 + 0.01 * s, "eval/problems": 100.0})
    return rows


def test_every_alarm_is_silent_on_a_healthy_run() -> None:
    config = HealthConfig()
    rows = _healthy()
    for name, detect in health.DETECTORS.items():
        assert _first_firing(lambda h, d=detect: d(h, config), rows) is None, name


# ------------------------------------------------------------------------------------ the monitor


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a") as handle:
        handle.writelines(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                      for k, v in row.items()}) + "\n" for row in rows)


def test_monitor_tails_metrics_and_writes_its_summary(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.touch()
    monitor = HealthMonitor(HealthConfig(off=["length"]), ["no_signal"], path)
    fracs = [0.5, 0.25, 0.5, 1, 1, 0.75, 1, 1, 1, 1]
    firing_steps = []
    for step, frac in enumerate(fracs, start=1):
        # two rows for one step (training metrics, then an evaluation), as recipes log them
        _append(path, [{"step": step, "rollout/frac_zero_std_groups": frac, "rollout/zero_std_reward": 0.0},
                       {"step": step, "eval/accuracy": math.nan}])
        metrics, started = monitor.update()
        assert "health/length" not in metrics
        if metrics["health/no_signal"]:
            firing_steps.append(step)
        assert [a.step for a in started] == ([9] if step == 9 else [])
    assert firing_steps == [9, 10]
    assert [a.name for a in monitor.stop_reasons()] == ["no_signal"]
    text = monitor.markdown()
    assert "| no_signal | fired at step 9 (since 7); still firing | yes |" in text
    assert "| length | off (health.off) | no |" in text
    assert "| kl_runaway | not checked: policy/kl_per_token / policy/kl never logged | no |" in text
    assert "- [health] no_signal at step 9 (since step 7): 100% of prompt groups" in text
    # a resumed run replays metrics.jsonl: the same firings, nothing printed again
    assert HealthMonitor(HealthConfig(), [], path).fired == monitor.fired


def test_config_names_alarms() -> None:
    from posttrain.recipes import grpo, sft

    with pytest.raises(ConfigError, match=r"run.stop_on: unknown alarm 'no_sginal'; choose from no_signal"):
        load_config(grpo.Config, overrides=["run.stop_on=[no_sginal]"])
    with pytest.raises(ConfigError, match=r"health.off: unknown alarm 'kl'"):
        load_config(grpo.Config, overrides=["health.off=[kl]"])
    with pytest.raises(ConfigError, match=r"run.stop_on: this command has no run-health alarms"):
        load_config(sft.Config, overrides=["run.stop_on=[all]"])
    with pytest.raises(ConfigError, match=r"run.stop_on names length, which health.off turns off"):
        load_config(grpo.Config, overrides=["run.stop_on=[length]", "health.off=[length]"])
    assert load_config(grpo.Config, overrides=["run.stop_on=[all]"]).run.stop_on == ["all"]


# ------------------------------------------------------------------------------------ a real run


def no_reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    return [0.0 for _ in completions]


def test_stop_on_stops_a_grpo_run_with_its_checkpoint(tiny_model_dir: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from posttrain.checkpoint import Checkpointer
    from posttrain.recipes import grpo
    from posttrain.tracking import read_metrics

    config = load_config(grpo.Config, None, [
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={tmp_path}", "run.name=t",
        "run.progress=false", "run.steps=6", "prompts_per_step=2", "samples_per_prompt=2",
        "micro_batch_size=4", "sampling.max_new_tokens=4", "sampling.dtype=float32", "data.train_size=20",
        "data.eval_size=2", "health.steps=2", "run.stop_on=[no_signal]"])
    run_dir = grpo.train(config, reward_fns=[no_reward])
    steps = [row["step"] for row in read_metrics(run_dir) if "rollout/reward" in row]
    assert steps == [1, 2]
    checkpoint = Checkpointer(run_dir).latest()
    assert checkpoint is not None and checkpoint.name == "step-00000002"
    assert (run_dir / "final" / "config.json").is_file()
    summary = (run_dir / "summary.md").read_text()
    assert "| no_signal | fired at step 2 (since 1); still firing | yes |" in summary
    assert "| stopped_after_step | 2 |" in summary
    out = capsys.readouterr().out
    assert "[health] no_signal at step 2 (since step 1): 100% of prompt groups had all-equal rewards" in out
    assert "no sample earns no_reward" in out
    assert out.count("[health] stopping after step 2: run.stop_on names no_signal; final/") == 1
    assert "health/" not in out and "| reward_hacking" not in out  # no progress line of the health row


@pytest.mark.parametrize("recipe", ["ppo", "best_of_n"])
def test_alarms_are_on_in_every_rl_recipe(recipe: str, tiny_model_dir: str, tmp_path: Path) -> None:
    """PPO (one sample per prompt: the batch is the group) and best-of-n (x = round) check the alarms,
    stop on them, and write the section; a reward nobody earns is no signal."""
    import importlib

    from posttrain.tracking import read_metrics

    module = importlib.import_module(f"posttrain.recipes.{recipe}")
    common = [f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={tmp_path}",
              "run.name=t", "run.progress=false", "sampling.max_new_tokens=4", "sampling.dtype=float32",
              "data.train_size=20", "data.eval_size=2", "health.steps=2", "run.stop_on=[no_signal]",
              "micro_batch_size=2"]
    own = ["run.steps=4", "prompts_per_step=2", "ppo_epochs=1", "beta=0.1"] if recipe == "ppo" else [
        "rounds=3", "n=2", "prompts_per_round=2", "batch_size=2"]
    run_dir = module.train(load_config(module.Config, None, common + own), reward_fns=[no_reward])
    rows = read_metrics(run_dir)
    assert max(row["step"] for row in rows if "rollout/frac_zero_std_groups" in row) == 2
    assert [row["health/no_signal"] for row in rows if "health/no_signal" in row][:2] == [0.0, 1.0]
    if recipe == "ppo":
        assert any("policy/kl_per_token" in row for row in rows)
    summary = (run_dir / "summary.md").read_text()
    assert "| no_signal | fired at step 2 (since 1); still firing | yes |" in summary


def test_reward_hacking_is_not_checked_without_a_count_for_its_guard(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _append(path, [{"step": 1, "rollout/reward": 0.5, "rollout/reward/task_correct": 0.5}])
    monitor = HealthMonitor(HealthConfig(guard="rollout/reward/task_correct"), [], path)
    assert "| reward_hacking | not checked: rollout/samples never logged | no |" in monitor.markdown()
    _append(path, [{"step": 2, "rollout/reward": 0.5, "rollout/samples": 8.0}])
    monitor.update()
    assert "| reward_hacking | silent | no |" in monitor.markdown()


def test_example_guard_scores_the_last_number() -> None:
    from posttrain.rewards.base import resolve_reward

    spec = Path(__file__).parents[1] / "examples" / "guards.py:last_number_correct"
    name, guard = resolve_reward(str(spec))
    assert name == "last_number_correct"
    completions = ["7 + 5 = 12", "<answer>12</answer>", "12, no: 13",
                   [{"role": "assistant", "content": "-3"}], ""]
    assert guard([None] * 5, completions, answer=["12", "12", "12", "-3", "1"]) == [1.0, 1.0, 0.0, 1.0, 0.0]
