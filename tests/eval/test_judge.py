"""`posttrain eval --judge --baseline`: two tiny models end to end with scripted judges and a reward model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_critic import tiny_reward_model_dir  # noqa: F401  (a fixture)

from posttrain.cli import main as cli_main
from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.eval import command, judge
from posttrain.eval.metrics import win_rate
from posttrain.models import save_pretrained

JUDGES = '''
def longer(prompt, answer_a, answer_b):
    """Prefers the longer answer; equal lengths tie."""
    assert isinstance(prompt, str) and "?" in prompt
    return "a" if len(answer_a) > len(answer_b) else " B " if len(answer_b) > len(answer_a) else "tie"


def always_a(prompt, answer_a, answer_b):
    return "a"


def left(prompt, answer_a, answer_b):
    return "left"
'''


@pytest.fixture
def judges(tmp_path: Path) -> str:
    path = tmp_path / "judges.py"
    path.write_text(JUDGES)
    return str(path)


@pytest.fixture
def silent_model_dir(tiny_model: torch.nn.Module, tokenizer: Any, tmp_path: Path) -> str:
    """Every greedy completion of this model is empty (its logits are all 0: token 0, end of text)."""
    with torch.no_grad():
        tiny_model.model.norm.weight.zero_()
    return str(save_pretrained(tiny_model, tokenizer, tmp_path / "silent"))


def _run(tmp_path: Path, model: str, baseline: str, judge_spec: str, name: str, problems: int = 5) -> Path:
    config = load_config(command.Config, values={
        "model": model, "baseline": baseline, "judge": judge_spec, "problems": problems,
        "output_dir": str(tmp_path / "evals"), "name": name, "sampling.max_new_tokens": 6})
    return command.run(config)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pure_parts() -> None:
    assert judge.positions(5) == ["a", "b", "a", "b", "a"]
    assert judge.outcomes(["a", "a", "tie", "b"], ["a", "b", "a", "a"]) == ["win", "loss", "tie", "loss"]
    assert judge.prompt_text([{"role": "system", "content": "s"}, {"role": "user", "content": "q?"},
                              {"role": "assistant", "content": "x"}]) == "q?"
    assert judge.parse_verdict(" Tie\n", "j.py:f", 0, "p0") == "tie"
    with pytest.raises(judge.JudgeError, match=r"judge j.py:f returned 'left' for problem 3 \(p3\); a judge "
                                                r"returns \"a\", \"b\" or \"tie\""):
        judge.parse_verdict("left", "j.py:f", 3, "p3")


def test_judged_comparison_end_to_end(tiny_model_dir: str, silent_model_dir: str, judges: str,
                                      tmp_path: Path) -> None:
    out = _run(tmp_path, tiny_model_dir, silent_model_dir, f"{judges}:longer", "longer", problems=5)
    lines = _lines(out / "problems.jsonl")
    assert [line["evaluated_position"] for line in lines] == ["a", "b", "a", "b", "a"]
    assert all(line["baseline"] == "" for line in lines)
    for line in lines:  # the judge saw the evaluated answer where evaluated_position says
        longer = "tie" if not line["evaluated"] else line["evaluated_position"]
        assert line["verdict"] == longer
        assert line["outcome"] == ("win" if line["evaluated"] else "tie")
    wins = sum(bool(line["evaluated"]) for line in lines)
    assert wins > 0
    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["metrics"]
    assert metrics == {**metrics, **win_rate(wins, 5 - wins, 0)}
    assert metrics["accuracy"] == sum(line["evaluated_correct"] for line in lines) / 5
    assert metrics["baseline_accuracy"] == 0.0  # an empty answer is never right
    text = (out / "summary.md").read_text()
    assert f"Win rate {metrics['win_rate']:.1%} (95% Wilson interval" in text
    assert "| baseline_accuracy | 0 |" in text


def test_alternating_positions_cancel_a_position_biased_judge(tiny_model_dir: str, silent_model_dir: str,
                                                             judges: str, tmp_path: Path) -> None:
    out = _run(tmp_path, tiny_model_dir, silent_model_dir, f"{judges}:always_a", "biased", problems=4)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert (metrics["wins"], metrics["losses"], metrics["win_rate"]) == (2, 2, 0.5)
    assert metrics["judge_chose_a"] == 1.0


def test_reward_model_judge(tiny_model_dir: str, silent_model_dir: str, tiny_reward_model_dir: str,  # noqa: F811
                            tmp_path: Path) -> None:
    from posttrain.rewards.base import resolve_reward

    out = _run(tmp_path, tiny_model_dir, silent_model_dir, f"reward_model:{tiny_reward_model_dir}", "rm", 3)
    lines = _lines(out / "problems.jsonl")
    _, score = resolve_reward(f"reward_model:{tiny_reward_model_dir}")
    prompts = [line["prompt"] for line in lines]
    evaluated = score(prompts, [line["evaluated"] for line in lines])
    baseline = score(prompts, [line["baseline"] for line in lines])
    assert [line["outcome"] for line in lines] == [
        "win" if e > b else "loss" if b > e else "tie" for e, b in zip(evaluated, baseline)]


def test_cli_flags_and_errors(tiny_model_dir: str, silent_model_dir: str, judges: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "evals"
    assert cli_main(["eval", f"model={tiny_model_dir}", "problems=2", f"output_dir={out}", "name=cli",
                     "sampling.max_new_tokens=4", "--judge", f"{judges}:left", "--baseline",
                     silent_model_dir]) == 2
    assert "returned 'left' for problem 0" in capsys.readouterr().err
    assert cli_main(["eval", f"model={tiny_model_dir}", "problems=2", f"output_dir={out}", "name=cli2",
                     "sampling.max_new_tokens=4", "--judge", f"{judges}:always_a", "--baseline",
                     silent_model_dir]) == 0
    assert (out / "cli2" / "summary.json").is_file()
    for values, message in [
        ({"judge": f"{judges}:longer"}, r"needs both judge and baseline; give baseline"),
        ({"baseline": "x", "judge": "longer"}, r"judge: expected path/file.py:function or reward_model:PATH"),
        ({"baseline": "x", "judge": "reward_model:"}, r"reward_model:PATH needs the path"),
        ({"baseline": "x", "judge": f"{judges}:longer", "n": 2, "sampling.temperature": 0.8},
         r"compares one greedy answer per model: drop n and maj"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(command.Config, values=values)
    with pytest.raises(ConfigError, match=r"config error: judge: reward '.*judges.py:shorter': no function"):
        _run(tmp_path, tiny_model_dir, silent_model_dir, f"{judges}:shorter", "missing")


def test_example_judge_prefers_a_plain_one_line_answer() -> None:
    _, plain = judge_module_function("examples/judges.py:plain_answer")
    assert plain("What is 2 + 3?", "5", "Sure! Let's add.\n2 + 3 = 5") == "a"
    assert plain("What is 2 + 3?", "Sure, it is 5", "The answer is 5") == "b"
    assert plain("What is 2 + 3?", "", "5") == "b"
    assert plain("What is 2 + 3?", "5", "6") == "tie"


def judge_module_function(spec: str) -> Any:
    from posttrain.rewards.base import resolve_reward

    return resolve_reward(str(Path(__file__).parents[2] / spec))
