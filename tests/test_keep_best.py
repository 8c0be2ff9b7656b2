"""run.keep_best: final/ holds the best held-out evaluation's weights (bit for bit), rotation keeps
them, resume keeps the best so far, ties and missing metrics behave as documented, and a metric the
recipe never logs is a config error before any model loads."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from posttrain import runner
from posttrain.checkpoint import Checkpointer
from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.keep_best import BestSoFar, improves, keep_best_problems
from posttrain.recipes import best_of_n, dpo, grpo, orpo, ppo, reward_model, sft

# ----------------------------------------------------------------------------- the rules


def test_improves_is_strict_and_skips_non_finite_values() -> None:
    assert improves(0.5, None, "max") and improves(0.6, 0.5, "max") and not improves(0.4, 0.5, "max")
    assert not improves(0.5, 0.5, "max") and not improves(0.5, 0.5, "min")  # a tie keeps the earlier
    assert improves(0.4, 0.5, "min") and not improves(0.6, 0.5, "min")
    assert not improves(math.nan, None, "max") and not improves(math.inf, 0.5, "max")


def test_consider_keeps_the_earliest_of_equal_values_and_warns_on_missing_ones() -> None:
    best = BestSoFar("eval/accuracy", "max")
    assert best.consider(1, {"accuracy": 0.5}) and not best.consider(2, {"accuracy": 0.5})
    with pytest.warns(UserWarning, match=r"at step 3 did not produce eval/accuracy: not a candidate "
                                         r"\(the best stays step 1\)"):
        assert not best.consider(3, {"format": 1.0})
    with pytest.warns(UserWarning, match=r"at step 4 gave nan for eval/accuracy"):
        assert not best.consider(4, {"accuracy": math.nan})
    assert (best.step, best.value) == (1, 0.5)
    with pytest.raises(ConfigError, match=r"before training did not produce eval/accuracy; it produced "
                                          r"eval/format\. Check data.eval"):
        best.check_produced({"format": 0.0})


def _problems(cls: type, *overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(cls, None, list(overrides))
    return raised.value.problems


def test_a_metric_the_recipe_never_logs_is_a_config_error_naming_the_nearest() -> None:
    assert _problems(sft.Config, "run.keep_best=accuracy", "run.eval_every=5") == [
        "run.keep_best: 'accuracy' is not a held-out metric sft logs; did you mean 'eval/accuracy'? "
        "(sft logs eval/accuracy, eval/format, eval/mean_length, eval/problems, eval/accuracy_any)"]
    (problem,) = _problems(reward_model.Config, "run.keep_best=eval/pairwise_acuracy")
    assert "did you mean 'eval/pairwise_accuracy'?" in problem
    (problem,) = _problems(grpo.Config, "run.keep_best=eval/preference_accuracy", "run.eval_every=5")
    assert "not a held-out metric grpo logs; did you mean 'eval/accuracy'?" in problem
    # names that say no direction need one; eval_every 0 leaves nothing to choose from
    assert _problems(orpo.Config, "run.keep_best=eval/logp_margin") == [
        "run.keep_best: the name 'eval/logp_margin' does not say whether higher or lower is better: set "
        "run.keep_best_mode to max or min"]
    assert _problems(sft.Config, "run.keep_best=eval/accuracy") == [
        "run.keep_best needs run.eval_every > 0: it chooses among the held-out evaluations during training "
        "(with 0 only the last step is evaluated)"]
    assert "'run.keep_best_mode' must be one of auto, max, min; got 'up'" in _problems(
        sft.Config, "run.keep_best_mode=up")
    # accepted: an explicit direction, a reward function's held-out mean, best-of-N's rounds
    load_config(orpo.Config, None, ["run.keep_best=eval/logp_margin", "run.keep_best_mode=max"])
    load_config(dpo.Config, None, ["run.keep_best=eval/preference_accuracy"])
    load_config(ppo.Config, None, ["run.keep_best=eval/reward/task_correct", "run.eval_every=2"])
    load_config(best_of_n.Config, None, ["run.keep_best=eval/accuracy"])
    assert _problems(best_of_n.Config, "run.keep_best=eval/accuracy", "sft=false") == [
        "run.keep_best needs sft: true (without fine-tuning all rounds have one model)"]
    assert keep_best_problems(sft.Config()) == []


def test_the_config_error_comes_before_the_model_loads(tmp_path: Path) -> None:
    config = sft.Config()  # built in Python: load_config's checks never ran
    config.model.name = str(tmp_path / "no-such-model")
    config.run.keep_best, config.run.eval_every, config.run.output_dir = "eval/acc", 1, str(tmp_path)
    with pytest.raises(ConfigError, match=r"did you mean 'eval/accuracy'"):
        sft.train(config)
    assert not any(tmp_path.iterdir())  # no run directory either


def test_the_declared_names_are_what_the_evaluations_log(tiny_model: torch.nn.Module, tokenizer: Any) -> None:
    """Each recipe's eval_metrics() comes from the functions that compute its held-out metrics."""
    from posttrain.data.preferences import pairwise_metrics
    from posttrain.data.tasks import get_task
    from posttrain.eval.evaluate import evaluate_rows
    from posttrain.keep_best import _matches
    from posttrain.rewards.base import RewardScores
    from posttrain.rewards.setup import reward_metrics
    from posttrain.runner import held_out_metrics

    task = get_task("arithmetic")
    metrics, _ = evaluate_rows(tiny_model, tokenizer, task.rows(1, 0, "test"), task, max_new_tokens=2,
                               engine_options={"dtype": "float32"})
    assert [f"eval/{name}" for name in metrics] == held_out_metrics()  # sft, grpo: the default
    scores = RewardScores(total=torch.ones(2), per_fn={"task_correct": torch.ones(2)})
    rewards = [f"eval/{name}" for name in reward_metrics(scores, prefix="reward")]
    assert all(any(_matches(name, declared) for declared in ppo.Config().eval_metrics()) for name in rewards)
    pairs = [f"eval/{name}" for name in pairwise_metrics(torch.ones(2), torch.zeros(2))]
    assert pairs == reward_model.Config().eval_metrics()


# ----------------------------------------------------------------------------- rotation


def test_rotation_keeps_the_best_checkpoint_that_a_kept_one_names(tiny_model: torch.nn.Module,
                                                                  tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, keep_last=1)
    for step, best in ((1, 1), (2, 1), (3, 1)):
        checkpointer.save(step, tiny_model, None, None, {"keep_best": {"step": best}})
    assert [step for step, _ in checkpointer.step_dirs()] == [3, 1]
    checkpointer.save(4, tiny_model, None, None, {"keep_best": {"step": 4}})  # a new best frees the old
    assert [step for step, _ in checkpointer.step_dirs()] == [4]
    # with keep_last 2 the older kept checkpoint still names its own best: a fallback to it finds it
    checkpointer = Checkpointer(tmp_path / "two", keep_last=2)
    for step, best in ((2, 2), (4, 2), (6, 6), (8, 6)):
        checkpointer.save(step, tiny_model, None, None, {"keep_best": {"step": best}})
    assert [step for step, _ in checkpointer.step_dirs()] == [8, 6]
    checkpointer.save(10, tiny_model, None, None, {"keep_best": {"step": 10}})
    assert [step for step, _ in checkpointer.step_dirs()] == [10, 8, 6]


# ----------------------------------------------------------------------------- end to end


def _scripted(values: dict[int, float | None], stop_at: int | None = None) -> Callable[..., Any]:
    """In place of ``evaluate_and_log``: eval/accuracy = ``values[step]`` (None: not produced),
    logged as the real one logs it; raises KeyboardInterrupt (a kill) at ``stop_at``."""

    def factory(run: Any, model: Any, tokenizer: Any, rows: Any, task: Any, config: Any) -> Any:
        def evaluate(step: int) -> dict[str, float]:
            if step == stop_at:
                raise KeyboardInterrupt
            metrics = {"format": 1.0} if values[step] is None else {"accuracy": values[step], "format": 1.0}
            run.tracker.log(step, {f"eval/{k}": v for k, v in metrics.items()})
            return metrics

        return evaluate

    return factory


def _sft(tiny_model_dir: str, out: Path, *overrides: str) -> sft.Config:
    return load_config(sft.Config, None, [
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=4", "run.eval_every=1", "run.keep_last=1",
        "run.keep_best=eval/accuracy", "batch_size=4", "micro_batch_size=4", "optim.lr=3e-3",
        "optim.warmup_steps=0", "data.train_size=16", "data.eval_size=2", "data.options={style: think}",
        *overrides])


def _same_weights(final: Path, checkpoint: Path) -> bool:
    exported = load_file(str(final / "model.safetensors"))
    saved = load_file(str(checkpoint / "model.safetensors"))
    return set(exported) <= set(saved) and all(torch.equal(exported[k], saved[k]) for k in exported)


def test_final_is_the_peak_steps_weights_bit_for_bit(tiny_model_dir: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from posttrain.eval.compare import compare

    monkeypatch.setattr(runner, "evaluate_and_log", _scripted({0: 0.1, 1: 0.3, 2: 0.6, 3: 0.4, 4: 0.2}))
    run_dir = sft.train(_sft(tiny_model_dir, tmp_path))
    checkpoints = run_dir / "checkpoints"
    # save_every 0 and keep_last 1: the best (step 2) was checkpointed when found and rotation kept it
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002", "step-00000004"]
    assert _same_weights(run_dir / "final", checkpoints / "step-00000002")
    assert not _same_weights(run_dir / "final", checkpoints / "step-00000004")
    line = "final/ holds the weights of step 2, the best eval/accuracy (max): 0.6; the last step, 4, had 0.2"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"[sft] {line}"
    assert line in (run_dir / "summary.md").read_text()
    assert json.loads((run_dir / "best.json").read_text()) == {
        "metric": "eval/accuracy", "mode": "max", "step": 2, "value": 0.6, "last_step": 4, "last_value": 0.2,
        "final_step": 2}
    out = compare([str(run_dir)], output_dir=str(tmp_path), name="cmp")
    report = json.loads((out / "compare.json").read_text())
    assert list(report["entries"]) == ["t@step0", "t@step2 (final/)", "t@step4"]
    assert [entry["pass@1"] for entry in report["entries"].values()] == [0.1, 0.6, 0.2]
    assert f"{run_dir}: {line}" in capsys.readouterr().out


def test_ties_min_mode_and_missing_values(tiny_model_dir: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "evaluate_and_log", _scripted({0: 0.1, 1: 0.5, 2: 0.5, 3: None, 4: 0.2}))
    with pytest.warns(UserWarning, match="at step 3 did not produce eval/accuracy"):
        run_dir = sft.train(_sft(tiny_model_dir, tmp_path / "tie"))
    assert json.loads((run_dir / "best.json").read_text())["step"] == 1  # the earlier of two equal values
    assert _same_weights(run_dir / "final", run_dir / "checkpoints" / "step-00000001")
    with pytest.warns(UserWarning, match="at step 3 did not produce eval/accuracy"):
        lowest = sft.train(_sft(tiny_model_dir, tmp_path / "min", "run.keep_best_mode=min"))
    assert json.loads((lowest / "best.json").read_text())["step"] == 4
    # the last step is the best: final/ is the last step's weights, and the line says so
    assert "final/ holds the last step's weights (step 4)" in (lowest / "summary.md").read_text()
    assert _same_weights(lowest / "final", lowest / "checkpoints" / "step-00000004")


def test_a_metric_the_evaluation_does_not_produce_stops_the_run_before_a_checkpoint(
        tiny_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "evaluate_and_log", _scripted(dict.fromkeys(range(5))))
    with pytest.raises(ConfigError, match=r"before training did not produce eval/accuracy; it produced "
                                          r"eval/format"):
        sft.train(_sft(tiny_model_dir, tmp_path))
    assert not (tmp_path / "t" / "checkpoints").exists()


def test_resume_after_a_kill_keeps_the_earlier_best(tiny_model_dir: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    values = {0: 0.1, 1: 0.3, 2: 0.6, 3: 0.2, 4: 0.1}
    monkeypatch.setattr(runner, "evaluate_and_log", _scripted(values, stop_at=4))  # killed in step 4's eval
    with pytest.raises(KeyboardInterrupt):
        sft.train(_sft(tiny_model_dir, tmp_path, "run.save_every=1", "run.steps=5"))
    run_dir = tmp_path / "t"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    step_2 = load_file(str(run_dir / "checkpoints" / "step-00000002" / "model.safetensors"))
    monkeypatch.setattr(runner, "evaluate_and_log", _scripted({**values, 5: 0.05}))
    sft.train(_sft(tiny_model_dir, tmp_path, "run.save_every=1", "run.steps=5", "run.resume=true"))
    record = json.loads((run_dir / "best.json").read_text())
    assert (record["step"], record["value"], record["last_step"]) == (2, 0.6, 5)
    exported = load_file(str(run_dir / "final" / "model.safetensors"))
    assert all(torch.equal(exported[k], step_2[k]) for k in exported)


def test_reward_model_and_ppo_keep_their_best(tiny_model_dir: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The reward model's own evaluation (a scorer), and PPO, whose checkpoints hold the actor-critic
    while final/ is the policy alone."""
    values = {0: 0.5, 1: 0.7, 2: 0.9, 3: 0.6}

    def scripted_rm(config: Any, s: Any, eval_pairs: Any) -> Callable[[int], dict[str, float]]:
        def evaluate(step: int) -> dict[str, float]:
            metrics = {"pairwise_accuracy": values[step], "mean_margin": 0.0}
            s.run.tracker.log(step, {f"eval/{k}": v for k, v in metrics.items()})
            return metrics

        return evaluate

    monkeypatch.setattr(reward_model, "held_out_evaluation", scripted_rm)
    common = [f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={tmp_path}",
              "run.progress=false", "run.steps=3", "run.eval_every=1", "run.keep_last=1"]
    rm_dir = reward_model.train(load_config(reward_model.Config, None, [
        *common, "run.name=rm", "run.keep_best=eval/pairwise_accuracy", "data.train_size=8",
        "data.eval_size=2", "pairs.batch_size=2", "pairs.micro_batch_size=2"]))
    assert json.loads((rm_dir / "best.json").read_text())["step"] == 2
    assert _same_weights(rm_dir / "final", rm_dir / "checkpoints" / "step-00000002")

    monkeypatch.setattr(runner, "evaluate_and_log", _scripted({0: 0.1, 1: 0.6, 2: 0.3, 3: 0.2}))
    ppo_dir = ppo.train(load_config(ppo.Config, None, [
        *common, "run.name=ppo", "run.keep_best=eval/accuracy", "data.train_size=8", "data.eval_size=2",
        "prompts_per_step=2", "samples_per_prompt=2", "micro_batch_size=4", "sampling.max_new_tokens=4",
        "sampling.dtype=float32"]))
    assert json.loads((ppo_dir / "best.json").read_text())["step"] == 1
    exported = load_file(str(ppo_dir / "final" / "model.safetensors"))
    saved = load_file(str(ppo_dir / "checkpoints" / "step-00000001" / "model.safetensors"))
    assert all(torch.equal(exported[k], saved[f"policy.{k}"]) for k in exported)


def test_best_of_n_exports_the_best_rounds_model(tiny_model_dir: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    values = {0: 0.1, 1: 0.2, 2: 0.7, 3: 0.3}

    def scripted(config: Any, run: Any, model: Any, tokenizer: Any, rows: Any, task: Any, rewards: Any,
                 round_: int) -> dict[str, float]:
        run.tracker.log(round_, {"eval/accuracy": values[round_], "eval/reward": 0.5})
        return {"accuracy": values[round_]}

    def constant(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [0.5] * len(completions)

    monkeypatch.setattr(best_of_n, "evaluate", scripted)
    run_dir = best_of_n.train(load_config(best_of_n.Config, None, [
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={tmp_path}", "run.name=t",
        "run.progress=false", "run.keep_best=eval/accuracy", "rounds=3", "n=2", "prompts_per_round=2",
        "min_reward=-1", "drop_truncated=false", "sampling.max_new_tokens=4", "sampling.dtype=float32",
        "batch_size=2", "micro_batch_size=2", "data.train_size=8", "data.eval_size=2"]),
        reward_fns=[constant])
    assert json.loads((run_dir / "best.json").read_text())["step"] == 2
    exported = load_file(str(run_dir / "final" / "model.safetensors"))
    round_2 = load_file(str(run_dir / "round-2" / "sft" / "final" / "model.safetensors"))
    round_3 = load_file(str(run_dir / "round-3" / "sft" / "final" / "model.safetensors"))
    assert exported.keys() == round_2.keys() and all(torch.equal(exported[k], round_2[k]) for k in exported)
    assert not all(torch.equal(exported[k], round_3[k]) for k in exported)


def test_a_pipeline_passes_a_stages_best_to_the_next(tiny_model_dir: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from posttrain.pipelines import fingerprint, plan
    from posttrain.recipes import pipeline

    monkeypatch.setattr(runner, "evaluate_and_log", _scripted({0: 0.1, 1: 0.3, 2: 0.6, 3: 0.4, 4: 0.2}))
    stage = {"model": {"name": tiny_model_dir, "autocast": "none"}, "batch_size": 4, "micro_batch_size": 4,
             "data": {"train_size": 16, "eval_size": 2, "options": {"style": "think"}},
             "run": {"steps": 4, "eval_every": 1, "progress": False, "keep_best": "eval/accuracy"}}
    follow = {**stage, "model": {"name": "${stages.first.model}", "autocast": "none"},
              "run": {"steps": 1, "progress": False}}
    stages = [{"name": "first", "recipe": "sft", "config": stage},
              {"name": "second", "recipe": "sft", "config": follow}]
    where = {"output_dir": str(tmp_path), "name": "p"}
    config = load_config(pipeline.Config, values={**where, "stages": stages})
    misspelt = {**stage, "run": {**stage["run"], "keep_best": "eval/acc"}}
    with pytest.raises(ConfigError, match=r"stage 'first'.config: run.keep_best: 'eval/acc' is not a "
                                          r"held-out metric sft logs; did you mean 'eval/accuracy'"):
        stages_misspelt = [{**stages[0], "config": misspelt}, stages[1]]
        plan(load_config(pipeline.Config, values={**where, "stages": stages_misspelt}), tmp_path / "p")
    out = pipeline.train(config)
    first = out / "first"
    assert _same_weights(first / "final", first / "checkpoints" / "step-00000002")
    assert plan(config, out)[1].config.model.name == str(first / "final")
    kept = json.loads((out / "state.json").read_text())["stages"]["first"]["kept"]
    assert (kept["step"], kept["value"], kept["last_value"]) == (2, 0.6, 0.2)
    assert ("[pipeline] stage 'first': final/ holds the weights of step 2, the best eval/accuracy (max): "
            "0.6; the last step, 4, had 0.2") in capsys.readouterr().out
    # with keep_best the evaluation schedule decides what final/ holds: it is part of the fingerprint
    changed = {**stage, "run": {**stage["run"], "eval_every": 2}}
    without = [{**stage, "run": {**stage["run"], "keep_best": ""}},
               {**stage, "run": {**stage["run"], "keep_best": "", "eval_every": 2}}]

    def fingerprint_of(config_values: dict[str, Any]) -> str:
        planned = plan(load_config(pipeline.Config, values={
            "output_dir": str(tmp_path), "name": "q", "stages": [{"name": "s", "recipe": "sft",
                                                                  "config": config_values}]}), tmp_path / "q")
        return fingerprint(planned[0], None)

    assert fingerprint_of(stage) != fingerprint_of(changed)
    assert fingerprint_of(without[0]) == fingerprint_of(without[1])
