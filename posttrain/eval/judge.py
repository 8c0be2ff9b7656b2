"""``posttrain eval --judge JUDGE --baseline MODEL``: a model against a baseline, judged pairwise.

InstructGPT's evaluation (arXiv:2203.02155, section 4.1): on held-out prompts, the evaluated model's
answer and the baseline's (e.g. the starting model's), shown to a judge who says which is better.

1. the benchmark's problems, drawn as ``posttrain eval`` draws them, answered greedily (n = 1,
   temperature 0) by the evaluated model (``model``) and by ``baseline``, one model loaded at a time;
2. both answers judged by the task's own check() (or the file's gold answer, or its tests):
   ``accuracy`` and ``baseline_accuracy``, so a win bought with wrong answers shows;
3. each pair judged by ``JUDGE``:

   - ``path/file.py:function`` (or ``package.module:function``): ``function(prompt, answer_a, answer_b)``
     with ``prompt`` the text of the last user turn (a string) and the two answers (strings); it
     returns ``"a"``, ``"b"`` or ``"tie"`` (any case, surrounding spaces ignored; anything else stops
     the evaluation with an error naming the problem). Positions alternate to cancel a judge's
     position bias: the evaluated model's answer is ``answer_a`` on problems 0, 2, 4, ... and
     ``answer_b`` on problems 1, 3, 5, ..., so each model gains equally from a judge that favours a
     position (exactly so with an even number of problems). ``judge_chose_a`` (the share of
     decisive verdicts for position a) shows how biased the judge is.
   - ``reward_model:PATH`` (a ``posttrain rm`` run's final/): each answer scored after its prompt; the
     higher score wins, equal scores tie (positions play no part).
4. wins, ties and losses of the evaluated model; ``win_rate`` = (wins + ties / 2) / problems with its
   95% Wilson interval ``win_rate_low`` .. ``win_rate_high`` (``posttrain.eval.metrics.win_rate``).

Writes ``problems.jsonl`` (per problem: the prompt, both answers, the evaluated model's position, the
verdict, the outcome and each answer's correctness), ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from posttrain.config import to_dict
from posttrain.data.formats import write_jsonl
from posttrain.errors import ConfigError, PosttrainError
from posttrain.eval import command
from posttrain.eval.compare import cell
from posttrain.eval.metrics import win_rate
from posttrain.tracking import make_run_dir

REWARD_MODEL = "reward_model:"
VERDICTS = ("a", "b", "tie")
OUTCOMES = {("a", "a"): "win", ("b", "b"): "win", ("a", "b"): "loss", ("b", "a"): "loss"}
BatchJudge = Callable[[list[Any], list[str], list[str]], list[str]]


class JudgeError(PosttrainError):
    """The judge function returned something other than "a", "b" or "tie"."""


def spec_problems(spec: str) -> list[str]:
    """What is wrong with a judge spec, before any model loads."""
    where, _, name = spec.rpartition(":")
    if spec.startswith(REWARD_MODEL):
        return [] if spec[len(REWARD_MODEL):].strip() else [
            "judge: reward_model:PATH needs the path of a trained reward model (a posttrain rm run's final/)"]
    if not where or not name.isidentifier():
        return [f"judge: expected path/file.py:function or reward_model:PATH; got {spec!r}"]
    return []


def prompt_text(prompt: Any) -> str:
    """The text a judge function is given: a string prompt as is, else the last user turn's content."""
    if isinstance(prompt, str):
        return prompt
    users = [turn.get("content", "") for turn in prompt if turn.get("role") == "user"]
    return str(users[-1] if users else prompt[-1].get("content", ""))


def parse_verdict(value: Any, spec: str, index: int, problem_id: str) -> str:
    """The judge's answer for one pair as "a", "b" or "tie"; anything else is a JudgeError."""
    verdict = value.strip().lower() if isinstance(value, str) else None
    if verdict not in VERDICTS:
        raise JudgeError(f"judge {spec} returned {value!r} for problem {index} ({problem_id}); a judge "
                         f"returns \"a\", \"b\" or \"tie\" (which of answer_a and answer_b is better)")
    return verdict


def load_judge(spec: str, problem_ids: list[str]) -> BatchJudge:
    """``judge(prompts, answers_a, answers_b) -> verdicts`` for a judge spec (see the module docstring);
    the function is loaded the way reward functions are, with the same errors."""
    from posttrain.rewards.base import resolve_reward

    try:
        _, fn = resolve_reward(spec)
    except ConfigError as error:
        raise ConfigError([f"judge: {problem}" for problem in error.problems]) from None
    if spec.startswith(REWARD_MODEL):
        def by_score(prompts: list[Any], answers_a: list[str], answers_b: list[str]) -> list[str]:
            scores_a, scores_b = fn(prompts, answers_a), fn(prompts, answers_b)
            return ["a" if x > y else "b" if y > x else "tie" for x, y in zip(scores_a, scores_b)]

        return by_score

    def pairwise(prompts: list[Any], answers_a: list[str], answers_b: list[str]) -> list[str]:
        return [parse_verdict(fn(prompt_text(p), a, b), spec, i, problem_ids[i])
                for i, (p, a, b) in enumerate(zip(prompts, answers_a, answers_b))]

    return pairwise


def positions(count: int) -> list[str]:
    """The evaluated model's position per problem: a, b, a, b, ..."""
    return ["a" if i % 2 == 0 else "b" for i in range(count)]


def outcomes(verdicts: list[str], evaluated_at: list[str]) -> list[str]:
    """"win", "tie" or "loss" of the evaluated model per problem."""
    return ["tie" if v == "tie" else OUTCOMES[(v, at)] for v, at in zip(verdicts, evaluated_at)]


def _answers(source: str, items: list[dict[str, Any]], config: command.Config) -> list[dict[str, Any]]:
    """Greedy answers of one model, judged for correctness; the model is freed afterwards."""
    model, tokenizer = command.load_for_eval(source, config.dtype, config.device)
    stops = command.humaneval.stop_strings(config.prompt_style) if config.benchmark == "humaneval" else []
    prompts = [command.model_prompt(item, config, tokenizer) for item in items]
    samples = command.sample(model, tokenizer, prompts, config, stops)
    del model
    verifier = None
    if config.answer_match == "math" and any(item["kind"] == "answer" for item in items):
        from posttrain.rewards.math import MathVerifier

        verifier = MathVerifier()
    try:
        command.judge(items, samples, config, verifier)
    finally:
        if verifier is not None:
            verifier.close()
    return [{**records[0], "prompt": prompt} for records, prompt in zip(samples, prompts)]


def _accuracy(answers: list[dict[str, Any]]) -> float:
    decided = [a["correct"] for a in answers if a.get("correct") is not None]
    return sum(decided) / len(decided) if decided else float("nan")


def run(config: command.Config) -> Path:
    """Evaluate ``config.model`` against ``config.baseline`` with ``config.judge``; the output folder."""
    started = time.perf_counter()
    config = dataclasses.replace(config, greedy=True)
    items = command.load_benchmark(config)
    ids = [str(item["id"]) for item in items]
    judge = load_judge(config.judge, ids)  # a broken judge file fails before any model loads
    default_name = f"judge-{command.name_tag(config.benchmark)}-{command.name_tag(config.model)}"
    out_dir = make_run_dir(config.output_dir, config.name or None, default_name, resume=False,
                           overwrite=config.overwrite)
    print(f"[eval] {len(items)} problems: {config.model} against {config.baseline}, judged by "
          f"{config.judge}; greedy answers, the evaluated model's answer as answer_a on even problems, "
          "answer_b on odd ones")
    evaluated = _answers(config.model, items, config)
    baseline = _answers(config.baseline, items, config)
    at = positions(len(items))
    first = [e["completion"] if p == "a" else b["completion"] for e, b, p in zip(evaluated, baseline, at)]
    second = [b["completion"] if p == "a" else e["completion"] for e, b, p in zip(evaluated, baseline, at)]
    verdicts = judge([e["prompt"] for e in evaluated], first, second)
    results = outcomes(verdicts, at)
    counts = Counter(results)
    metrics = win_rate(counts["win"], counts["tie"], counts["loss"])
    decisive = [v for v in verdicts if v != "tie"]
    chose_a = sum(v == "a" for v in decisive) / len(decisive) if decisive else float("nan")
    metrics.update({"judge_chose_a": chose_a,
                    "accuracy": _accuracy(evaluated), "baseline_accuracy": _accuracy(baseline),
                    "mean_length": sum(e["tokens"] for e in evaluated) / len(evaluated),
                    "baseline_mean_length": sum(b["tokens"] for b in baseline) / len(baseline)})
    rows = [{"id": i, "prompt": e["prompt"], "evaluated_position": p, "verdict": v, "outcome": o,
             "evaluated": e["completion"], "baseline": b["completion"], "evaluated_correct": e.get("correct"),
             "baseline_correct": b.get("correct")}
            for i, p, v, o, e, b in zip(ids, at, verdicts, results, evaluated, baseline)]
    write_jsonl(rows, out_dir / "problems.jsonl")
    summary = {"model": config.model, "baseline": config.baseline, "judge": config.judge,
               "benchmark": config.benchmark, "problems": len(items), "metrics": metrics,
               "interval": "95% Wilson interval of (wins + ties/2) / problems",
               "seconds": round(time.perf_counter() - started, 1), "config": to_dict(config)}
    clean = {k: (None if v != v else v) for k, v in metrics.items()}  # NaN is not JSON
    (out_dir / "summary.json").write_text(json.dumps({**summary, "metrics": clean}, indent=1) + "\n")
    table = summary_table(summary)
    (out_dir / "summary.md").write_text(table + "\n")
    print(table)
    return out_dir


def summary_table(summary: dict[str, Any]) -> str:
    """summary.md: the win rate with its interval, the counts, both models' check() accuracy."""
    m = summary["metrics"]
    head = (f"# {summary['model']} vs {summary['baseline']}, judged by {summary['judge']}\n\n"
            f"{summary['problems']} problems of {summary['benchmark']}, greedy answers. Win rate "
            f"{m['win_rate']:.1%} (95% Wilson interval {m['win_rate_low']:.1%} - {m['win_rate_high']:.1%}; "
            f"a tie counts half): {m['wins']:g} wins, {m['ties']:g} ties, {m['losses']:g} losses.")
    rows = [f"| {key} | {cell(value)} |" for key, value in m.items()]
    return "\n".join([head, "", "| metric | value |", "|---|---|", *rows])
