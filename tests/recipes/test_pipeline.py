"""Pipelines: validation and reference resolution, the build-system fingerprints (unchanged ->
skipped, edited -> rerun from there, killed -> resumed), and three tiny-model stages end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.pipelines import fingerprint, plan
from posttrain.recipes import grpo, pipeline
from posttrain.tracking import read_metrics


def _sft(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": {"name": model, "autocast": "none"},
            "data": {"train": "arithmetic", "train_size": 16, "eval_size": 2, "options": {"style": "think"}},
            "run": {"steps": 2, "progress": False, **extra.pop("run", {})},
            "batch_size": 4, "micro_batch_size": 4, "sampling": {"max_new_tokens": 4}, **extra}


def _grpo(model: str, **run: Any) -> dict[str, Any]:
    return {"model": {"name": model, "autocast": "none"},
            "data": {"train": "arithmetic", "train_size": 16, "eval_size": 2},
            "run": {"steps": 2, "progress": False, **run}, "prompts_per_step": 2, "samples_per_prompt": 2,
            "micro_batch_size": 4, "sampling": {"max_new_tokens": 4, "dtype": "float32"}}


def _config(tmp_path: Path, stages: list[dict[str, Any]], **values: Any) -> pipeline.Config:
    return load_config(pipeline.Config, values={"output_dir": str(tmp_path), "name": "p", "stages": stages,
                                                **values})


def _three_stages(model: str) -> list[dict[str, Any]]:
    return [
        {"name": "cold", "recipe": "sft", "config": _sft(model)},
        {"name": "rl", "recipe": "grpo", "config": _grpo("${stages.cold.model}")},
        {"name": "check", "recipe": "eval",
         "config": {"model": "${stages.rl.model}", "problems": 2, "sampling": {"max_new_tokens": 4}}},
    ]


def test_references_resolve_to_earlier_stages_outputs_and_config(tmp_path: Path, tiny_model_dir: str) -> None:
    stages = _three_stages(tiny_model_dir)
    stages.append({"name": "again", "recipe": "sft",
                   "config": _sft("${stages.cold.config.model.name}",
                                  batch_size="${stages.cold.config.batch_size}")})
    planned = pipeline.plan(_config(tmp_path, stages), tmp_path / "p")
    by_name = {s.name: s for s in planned}
    assert by_name["rl"].config.model.name == str(tmp_path / "p" / "cold" / "final")
    assert by_name["check"].config.model == str(tmp_path / "p" / "rl" / "final")
    assert by_name["again"].config.model.name == tiny_model_dir  # the model stage 'cold' started from
    assert by_name["again"].config.batch_size == 4  # a whole-string reference keeps the value's type
    assert by_name["rl"].depends_on == ["cold"]
    # every stage runs inside the pipeline's directory
    run = by_name["rl"].config.run
    assert run.output_dir == str(tmp_path / "p") and run.name == "rl"
    assert by_name["check"].config.output_dir == str(tmp_path / "p")


def test_the_whole_file_is_checked_before_anything_runs(tmp_path: Path, tiny_model_dir: str) -> None:
    stages = [
        {"name": "ok", "recipe": "sft", "config": _sft(tiny_model_dir)},
        {"name": "a", "recipe": "sft", "config": _sft("${stages.b.model}")},  # a later stage
        {"name": "b", "recipe": "sft", "config": _sft(tiny_model_dir, batch_sise=3)},  # a typo'd key
        {"name": "c", "recipe": "grpo", "config": _grpo("${stages.ok.dataset}")},  # sft makes no dataset
        {"name": "d", "recipe": "grpo", "config": _grpo("${stages.nowhere.model}")},
        {"name": "e", "recipe": "grpo", "config": _grpo("${stages.ok.config.model.nme}")},
        {"name": "h", "recipe": "grpo", "config": _grpo("${stages.a.model}")},  # 'a' is wrong itself
        {"name": "f", "recipe": "sfft", "config": {}},
        {"name": "a", "recipe": "sft", "config": _sft(tiny_model_dir)},
        {"name": "g", "recipe": "sft", "config": _sft(tiny_model_dir, run={"name": "mine"})},
    ]
    with pytest.raises(ConfigError) as caught:
        pipeline.plan(_config(tmp_path, stages), tmp_path / "p")
    text = str(caught.value)
    assert "stage 'a': ${stages.b.model} refers to stage 'b', which does not run before this one" in text
    assert "stage 'b'.config" in text and "batch_sise" in text
    assert "stage 'c': ${stages.ok.dataset} names no output of stage 'ok' (sft)" in text
    assert "unknown stage 'nowhere'" in text
    assert "no config key 'model.nme'" in text
    assert "stage 'f'.recipe: 'sfft' is not one of" in text
    assert "stage 'a': the name is used twice" in text
    assert "stage 'g'.config.run.name: set by the pipeline" in text
    assert "stage 'h'" not in text  # a reference to a stage with problems adds none of its own
    assert not (tmp_path / "p").exists()  # nothing ran, nothing was written


def test_unknown_stage_flags_and_evaluate_keys(tmp_path: Path, tiny_model_dir: str) -> None:
    config = _config(tmp_path, _three_stages(tiny_model_dir), from_stage="nope",
                     evaluate={"model": "x", "n": 0})
    with pytest.raises(ConfigError) as caught:
        pipeline.plan(config, tmp_path / "p")
    text = str(caught.value)
    assert "--from nope: no stage of that name" in text
    assert "evaluate.model: set by the pipeline" in text
    assert "'n' must be >= 1" in text


def _stage_lines(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[pipeline] stage")]
    return {line.split("'")[1]: line.split(": ", 1)[1] for line in lines}


def test_three_stages_end_to_end_then_skip_edit_and_resume(tmp_path: Path, tiny_model_dir: str,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate = {"problems": 2, "options": {"style": "think"}, "sampling": {"max_new_tokens": 4}}
    config = _config(tmp_path, _three_stages(tiny_model_dir), evaluate=evaluate)
    out = pipeline.train(config)
    assert _stage_lines(capsys) == {"cold": "running", "rl": "running", "check": "running"}
    state = json.loads((out / "state.json").read_text())["stages"]
    assert [state[n]["status"] for n in ("cold", "rl", "check")] == ["done"] * 3
    assert (out / "cold" / "final" / "config.json").is_file() and (out / "rl" / "final").is_dir()
    assert (out / "check" / "summary.json").is_file()
    # held-out evaluation of the start model and after each stage, side by side
    assert {p.name for p in (out / "evals").iterdir()} == {"start", "cold", "rl"}
    report = json.loads((out / "report" / "compare.json").read_text())["entries"]
    assert list(report) == ["start", "cold", "rl", "check"]
    assert (out / "report" / "pass_at_1.png").is_file() and (out / "report" / "response_length.png").is_file()

    # unchanged: everything skipped, nothing retrained
    finished = {n: state[n]["finished"] for n in state if not n.startswith("eval:")}
    pipeline.train(config)
    assert set(_stage_lines(capsys).values()) == {"unchanged, skipped"}
    state = json.loads((out / "state.json").read_text())["stages"]
    assert {n: state[n]["finished"] for n in finished} == finished

    # editing stage 2 reruns it and every stage after it, nothing before it
    edited = _three_stages(tiny_model_dir)
    edited[1]["config"]["optim"] = {"lr": 1e-4}
    pipeline.train(_config(tmp_path, edited, evaluate=evaluate))
    assert _stage_lines(capsys) == {"cold": "unchanged, skipped", "rl": "config or inputs changed, rerunning",
                                    "check": "config or inputs changed, rerunning"}

    # killed midway through stage 2 (after its step-2 checkpoint): the next run resumes it there
    killed = _three_stages(tiny_model_dir)
    killed[1]["config"]["run"].update(steps=4, save_every=2)
    real_update, calls = grpo.policy_update, []

    def dies_at_step_3(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(grpo, "policy_update", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train(_config(tmp_path, killed))
    assert json.loads((out / "state.json").read_text())["stages"]["rl"]["status"] == "running"
    monkeypatch.setattr(grpo, "policy_update", real_update)
    pipeline.train(_config(tmp_path, killed))
    lines = _stage_lines(capsys)
    assert lines["rl"] == "resuming from its last checkpoint" and lines["cold"] == "unchanged, skipped"
    steps = [m["step"] for m in read_metrics(out / "rl") if "rollout/reward" in m]
    assert steps == [1, 2, 3, 4]  # steps 1-2 kept from the killed attempt, 3-4 run once

    # the response-length curve takes RL stages only, even when another stage logs a length
    with (out / "cold" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 1, "rollout/completion_len": 9.0}) + "\n")
    curves = pipeline.response_lengths(plan(_config(tmp_path, killed), out))
    assert [(name, steps) for name, steps, _ in curves] == [("rl", [1, 2, 3, 4])]


def test_only_and_from(tmp_path: Path, tiny_model_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    stages = _three_stages(tiny_model_dir)
    with pytest.raises(ConfigError, match="--only rl: it reads stage 'cold', which has not finished"):
        pipeline.train(_config(tmp_path, stages, only_stage="rl"))
    pipeline.train(_config(tmp_path, stages))
    capsys.readouterr()
    pipeline.train(_config(tmp_path, stages, only_stage="rl"))
    assert _stage_lines(capsys) == {"rl": "forced rerun"}
    # 'check' read the old 'rl': the next full run redoes it
    pipeline.train(_config(tmp_path, stages))
    assert _stage_lines(capsys) == {"cold": "unchanged, skipped", "rl": "unchanged, skipped",
                                    "check": "config or inputs changed, rerunning"}
    pipeline.train(_config(tmp_path, stages, from_stage="rl"))
    assert _stage_lines(capsys) == {"cold": "unchanged, skipped", "rl": "forced rerun",
                                    "check": "forced rerun"}


PAPERS = Path(__file__).resolve().parents[2] / "configs" / "papers"


@pytest.mark.parametrize("name", ["r1.yaml", "r1-zero.yaml", "r1-mini.yaml", "r1-zero-mini.yaml"])
def test_paper_pipelines_plan(name: str, tmp_path: Path) -> None:
    config = load_config(pipeline.Config, PAPERS / name)
    stages = pipeline.plan(config, tmp_path / "p")
    assert stages, name
    fingerprints = {fingerprint(stage, None) for stage in stages}  # R1-Zero's prompt is no file name
    assert len(fingerprints) == len(stages)
    if name.startswith("r1-zero"):
        assert [s.recipe for s in stages] == ["grpo"] and stages[0].config.data.system_prompt.startswith(
            "A conversation between User and Assistant.")
    else:  # cold start, reasoning RL, rejection sampling + SFT, reward model + final RL (§2.3)
        assert [s.recipe for s in stages] == ["sft", "grpo", "best-of-n", "sft", "rm", "grpo"]
        by_name = {s.name: s for s in stages}
        # the rejection-sampling SFT restarts from the model the cold start started from (the base)
        assert by_name["rejection_sft"].config.model.name == by_name["cold_start"].config.model.name
        dataset = by_name["rejection_sampling"].outputs["dataset"]
        assert by_name["rejection_sft"].config.data.train == str(dataset)
        assert by_name["final_rl"].depends_on == ["rejection_sft", "reward_model"]
