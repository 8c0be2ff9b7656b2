"""`posttrain eval`: config and data errors, metrics from samples, end to end on tiny models, --compare."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.checkpoint import Checkpointer
from posttrain.cli import main as cli_main
from posttrain.config import load_config
from posttrain.errors import CheckpointError, ConfigError, DataError
from posttrain.eval import command, compare
from posttrain.eval.command import Config
from posttrain.models import save_pretrained


def _config(**values: Any) -> Config:
    return load_config(Config, values=values)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def silent_model_dir(tiny_model: torch.nn.Module, tokenizer: Any, tmp_path: Path) -> str:
    """A tiny model whose final norm is zero: every logit is 0, greedy picks token 0
    (<|endoftext|>, skipped when decoding), so every completion is the empty string."""
    with torch.no_grad():
        tiny_model.model.norm.weight.zero_()
    return str(save_pretrained(tiny_model, tokenizer, tmp_path / "silent"))


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("values", "message"), [
    ({"n": 2, "k": [1, 5], "sampling.temperature": 0.8},
     r"'k' holds 5: pass@5 needs 1 <= k <= n = 2 samples per problem \(raise n, or drop 5 from k\)"),
    ({"n": 4, "maj": [8], "sampling.temperature": 0.8}, r"'maj' holds 8: maj@8 needs 1 <= k <= n = 4"),
    ({"n": 4}, r"n=4 samples with greedy decoding would be 4 copies of one completion"),
    ({"n": 4, "greedy": True, "sampling.temperature": 0.8}, r"n=4 samples with greedy decoding"),
    ({"benchmark": "humaneva"}, r"unknown benchmark 'humaneva'; did you mean 'humaneval'\?"),
    ({"benchmark": "humaneval", "maj": [1]}, r"'maj' needs extracted answers; humaneval's programs have"),
    ({"prompt_style": "fim"}, r"'prompt_style' must be one of prefill, chat, raw; got 'fim'"),
    ({"answer_match": "fuzzy"}, r"'answer_match' must be one of exact, math; got 'fuzzy'"),
])
def test_config_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**values)


def test_default_k_is_one_and_n() -> None:
    assert _config().pass_ks() == [1]
    assert _config(n=10, **{"sampling.temperature": 0.8}).pass_ks() == [1, 10]
    assert _config(n=10, k=[5, 1, 5], **{"sampling.temperature": 0.8}).pass_ks() == [1, 5]


def test_cli_reports_a_bad_benchmark_in_one_block(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["eval", "benchmark=arithmetc"]) == 2
    assert "unknown benchmark 'arithmetc'; did you mean 'arithmetic'?" in capsys.readouterr().err
    assert cli_main(["eval", "--help"]) == 0
    assert "--compare DIR [DIR ...]" in capsys.readouterr().out


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "What is 2 + 2?"},
     r"bench\.jsonl:2, field 'answer': missing required field: a benchmark row needs 'answer'"),
    ({"prompt": "Write f.", "entry_point": "f"}, r"bench\.jsonl:2, field 'tests': missing required field"),
    ({"prompt": "Write f.", "tests": "assert f(1) ==", "entry_point": "f"},
     r"bench\.jsonl:2, field 'tests': the tests are not Python code that parses"),
    ({"prompt": "Write f.", "tests": "assert f(1) == 1", "entry_point": "f"},
     r"bench\.jsonl:2, field 'tests': an entry_point is given but the tests define no check\(candidate\)"),
    ({"prompt": "Sum?", "answer": ""}, r"bench\.jsonl:2, field 'answer': the gold answer must be a non-"),
    ({"prompt": "Sum?", "answer": "4", "tests": "assert True"}, r"bench\.jsonl:2, field 'answer': both"),
])
def test_user_file_errors_name_file_line_and_field(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    path = _jsonl(tmp_path / "bench.jsonl", [{"prompt": "What is 1 + 1?", "answer": 2}, row])
    with pytest.raises(DataError, match=message):
        command.load_benchmark(_config(benchmark=path))


# ------------------------------------------------------------------------------------- metrics


def test_problem_metrics_leave_out_undecided_samples() -> None:
    records = [{"correct": True, "answer": "7"}, {"correct": False, "answer": "8"},
               {"correct": None, "answer": "8"}]
    metrics = command.problem_metrics(records, [1, 2, 3], [1, 3], "7")
    # 2 decided, 1 correct: pass@1 = 1/2, pass@2 = 1 - C(1,2)/C(2,2) = 1; pass@3 undefined.
    assert metrics == {"decided": 2, "correct": 1, "pass@1": 0.5, "pass@2": 1.0, "pass@3": None,
                       "maj@1": True, "maj@3": False}
    tie = command.problem_metrics([{"correct": False, "answer": "8"}, {"correct": True, "answer": "7"}],
                                  [1], [2], "7")
    assert tie["maj@2"] is False  # a tie goes to the answer seen first


def test_aggregate_means_over_defined_problems() -> None:
    per_problem = [{"pass@1": 0.5, "pass@3": None}, {"pass@1": 0.0, "pass@3": 0.25}]
    samples = [[{"tokens": 4, "finish_reason": "stop", "correct": True, "format_ok": True},
                {"tokens": 8, "finish_reason": "length", "correct": None, "status": "sandbox_error"}],
               [{"tokens": 6, "finish_reason": "stop", "correct": False, "format_ok": False,
                 "status": "wrong"}]]
    summary = command.aggregate(per_problem, samples)
    assert summary["metrics"] == {"pass@1": 0.25, "pass@3": 0.25, "format": 0.5, "mean_length": 6.0}
    assert summary["problems_left_out"] == {"pass@3": 1}
    assert (summary["undecided_samples"], summary["truncated_samples"]) == (1, 1)
    assert summary["sandbox_statuses"] == {"sandbox_error": 1, "wrong": 1}


# --------------------------------------------------------------------------------- end to end


def test_arithmetic_end_to_end_matches_the_training_loops_evaluation(
        tiny_model: torch.nn.Module, tokenizer: Any, tmp_path: Path) -> None:
    from posttrain.data.tasks import arithmetic
    from posttrain.eval.evaluate import evaluate_rows

    model_dir = str(save_pretrained(tiny_model, tokenizer, tmp_path / "model"))
    out = command.run(_config(model=model_dir, problems=3, output_dir=str(tmp_path), name="arith",
                              **{"sampling.max_new_tokens": 6}))
    summary = json.loads((out / "summary.json").read_text())
    lines = _lines(out / "problems.jsonl")
    rows = arithmetic.rows(3, seed=0, split="test")
    assert [line["id"] for line in lines] == [row["_where"] for row in rows]
    assert [line["gold"] for line in lines] == [row["answer"] for row in rows]
    # Same rows, prompts and sampling as a recipe's in-loop evaluation: the same completions.
    model = command.load_for_eval(model_dir, "float32", "cpu")[0]
    _, per_row = evaluate_rows(model, tokenizer, rows, arithmetic, max_new_tokens=6,
                               engine_options={"dtype": "bfloat16"})
    assert [line["samples"][0]["completion"] for line in lines] == [r["completions"][0] for r in per_row]
    assert [line["samples"][0]["correct"] for line in lines] == [r["correct"][0] for r in per_row]
    tokens = [sample["tokens"] for line in lines for sample in line["samples"]]
    assert summary["metrics"]["mean_length"] == pytest.approx(sum(tokens) / len(tokens))
    assert summary["metrics"]["pass@1"] == pytest.approx(sum(line["correct"] for line in lines) / 3)
    assert (summary["problems"], summary["n"], summary["temperature"]) == (3, 1, 0.0)
    assert "| pass@1 |" in (out / "summary.md").read_text()


def test_user_file_with_tests_end_to_end(silent_model_dir: str, tmp_path: Path) -> None:
    check = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 6\n"
    path = _jsonl(tmp_path / "code.jsonl", [
        # The prompt is Python that already solves it: the (empty) completion continues it.
        {"prompt": "def double(x):\n    return 2 * x\n", "tests": check, "entry_point": "double"},
        {"prompt": "def double(x):\n    return x + 1\n", "tests": check, "entry_point": "double"},
        {"prompt": "Write double(x) in Python.", "tests": check, "entry_point": "double"},
    ])
    out = command.run(_config(model=silent_model_dir, benchmark=path, output_dir=str(tmp_path), name="code",
                              **{"sampling.max_new_tokens": 2}))
    lines = _lines(out / "problems.jsonl")
    assert [line["id"] for line in lines] == [f"{path}:{i}" for i in (1, 2, 3)]
    samples = [line["samples"][0] for line in lines]
    assert [s["completion"] for s in samples] == ["", "", ""]
    assert [s["status"] for s in samples] == ["passed", "wrong", "runtime_error"]
    assert [s["correct"] for s in samples] == [True, False, False]
    assert "does not define 'double'" in samples[2]["reason"] and "bwrap" in samples[0]["layers"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["pass@1"] == pytest.approx(1 / 3)
    assert summary["sandbox_statuses"] == {"passed": 1, "runtime_error": 1, "wrong": 1}
    assert summary["truncated_samples"] == 3 and summary["undecided_samples"] == 0


def test_answer_file_end_to_end_and_existing_output_dir(silent_model_dir: str, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "qa.jsonl", [{"prompt": "2 + 2?", "answer": 4}, {"prompt": "Capital of France?",
                                                                              "answer": "Paris"}])
    values = {"model": silent_model_dir, "benchmark": path, "output_dir": str(tmp_path), "name": "qa",
              "n": 2, "maj": [2], "sampling.temperature": 0.7, "sampling.max_new_tokens": 2}
    out = command.run(_config(**values))
    summary = json.loads((out / "summary.json").read_text())
    # Zero logits: uniform sampling over 49,152 tokens; with the fixed seed no pair of tokens
    # spells "4" or "Paris", so every sample and every vote is wrong.
    assert summary["metrics"]["pass@1"] == 0.0 and summary["metrics"]["maj@2"] == 0.0
    assert [line["gold"] for line in _lines(out / "problems.jsonl")] == ["4", "Paris"]
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        command.run(_config(**values))


# ------------------------------------------------------------------------------ run directories


def test_run_directory_final_then_checkpoint(tiny_model: torch.nn.Module, tokenizer: Any,
                                             tmp_path: Path) -> None:
    base = save_pretrained(tiny_model, tokenizer, tmp_path / "base")
    run_dir = tmp_path / "runs" / "sft-1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"model:\n  name: {base}\n  lora_rank: 0\n")
    message = r"sft-1 is a training run directory with neither final/ .* nor a valid checkpoint"
    with pytest.raises(CheckpointError, match=message):
        command.load_for_eval(str(run_dir), "float32", "cpu")
    with torch.no_grad():
        tiny_model.model.norm.weight.fill_(0.5)
    Checkpointer(run_dir).save(3, tiny_model, None, None, {})
    model, _ = command.load_for_eval(str(run_dir), "float32", "cpu")
    assert torch.equal(model.model.norm.weight, torch.full_like(model.model.norm.weight, 0.5))
    with torch.no_grad():
        tiny_model.model.norm.weight.fill_(2.0)
    save_pretrained(tiny_model, tokenizer, run_dir / "final")
    model, _ = command.load_for_eval(str(run_dir), "float32", "cpu")
    assert torch.equal(model.model.norm.weight, torch.full_like(model.model.norm.weight, 2.0))
    assert not model.training


def test_a_runs_task_options_and_system_prompt_are_adopted() -> None:
    data = {"train": "arithmetic", "options": {"style": "think"}, "system_prompt": "Be brief."}
    run_config = {"data": data}
    adopted = command.adopt_run_data(_config(), run_config)
    assert (adopted.options, adopted.system_prompt) == ({"style": "think"}, "Be brief.")
    assert command.load_benchmark(adopted)[0]["row"]["style"] == "think"
    explicit = command.adopt_run_data(_config(options={"style": "plain"}), run_config)
    assert (explicit.options, explicit.system_prompt) == ({"style": "plain"}, "")
    other_task = command.adopt_run_data(_config(benchmark="humaneval"), run_config)
    assert other_task.options == {}


# ------------------------------------------------------------------------------------ --compare


def _eval_dir(path: Path, metrics: dict[str, float]) -> str:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"metrics": metrics}))
    return str(path)


def _run_dir(path: Path, evals: list[tuple[int, float, float]]) -> str:
    path.mkdir(parents=True)
    rows = [{"step": 1, "time": 0.0, "train/loss": 2.0}]
    rows += [{"step": step, "time": 1.0, "eval/accuracy": accuracy, "eval/format": fmt,
              "eval/problems": 100.0, "eval/accuracy_any": accuracy, "time/eval_s": 3.0}
             for step, accuracy, fmt in evals]
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_compare_table_json_and_charts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _eval_dir(tmp_path / "in" / "base", {"pass@1": 0.25, "format": 0.5})
    b = _eval_dir(tmp_path / "in" / "tuned", {"pass@1": 0.5, "pass@10": 0.75})
    run = _run_dir(tmp_path / "in" / "grpo-1", [(0, 0.1, 0.0), (20, 0.3, 0.5), (40, 0.6, 0.9)])
    assert cli_main(["eval", f"output_dir={tmp_path}", "name=cmp", "--compare", a, b, run]) == 0
    out = tmp_path / "cmp"
    report = json.loads((out / "compare.json").read_text())
    assert report["entries"] == {
        "base": {"pass@1": 0.25, "format": 0.5}, "tuned": {"pass@1": 0.5, "pass@10": 0.75},
        "grpo-1@step0": {"pass@1": 0.1, "format": 0.0}, "grpo-1@step40": {"pass@1": 0.6, "format": 0.9}}
    table = (out / "compare.md").read_text()
    assert "| metric | base | tuned | grpo-1@step0 | grpo-1@step40 |" in table
    assert "| pass@1 | 0.25 | 0.5 | 0.1 | 0.6 |" in table and "| pass@10 | - | 0.75 | - | - |" in table
    assert "| pass@1 | 0.25 | 0.5 | 0.1 | 0.6 |" in capsys.readouterr().out
    for name in ("pass_at_1", "format", "pass_at_10"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_one_run_before_and_after(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "sft-1", [(0, 0.0, 0.0), (40, 0.9, 1.0)])
    out = compare.compare([run], output_dir=str(tmp_path), name="before-after")
    assert json.loads((out / "compare.json").read_text())["entries"] == {
        "sft-1@step0": {"pass@1": 0.0, "format": 0.0}, "sft-1@step40": {"pass@1": 0.9, "format": 1.0}}
    assert (out / "pass_at_1.png").stat().st_size > 1000 and (out / "format.png").is_file()
    assert compare.chart_name("maj@16") == "maj_at_16"
    assert not math.isnan(json.loads((out / "compare.json").read_text())["entries"]["sft-1@step0"]["pass@1"])


def test_compare_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty is neither an evaluation output \(summary.json\) nor a"):
        compare.compare([str(tmp_path / "empty")], output_dir=str(tmp_path))
    run = _run_dir(tmp_path / "no-eval", [])
    with pytest.raises(ConfigError, match=r"holds no held-out evaluation \(no eval/ metrics\)"):
        compare.compare([run], output_dir=str(tmp_path))
