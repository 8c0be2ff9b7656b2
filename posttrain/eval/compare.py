"""Evaluation results side by side: ``posttrain eval --compare DIR [DIR ...]``.

A DIR is an evaluation output (its summary.json) or a training run directory (its first and last
held-out evaluation in metrics.jsonl: before and after training; the greedy ``eval/accuracy`` is
shown as pass@1; a run with ``run.keep_best`` also shows the evaluation whose weights final/ holds,
labelled ``(final/)``). Writes a table (printed, compare.md), compare.json and one bar chart per metric.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError
from posttrain.keep_best import read_record, sentence
from posttrain.tracking import make_run_dir, read_metrics

_HIDDEN_RUN_METRICS = ("accuracy_any", "problems")  # pass@n with n = 1, and a count


def cell(value: Any) -> str:
    """A table cell: 4 significant digits, "-" for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)



def compare_entries(source: str) -> list[tuple[str, dict[str, float]]]:
    """``(label, metrics)`` of an evaluation output, or the first and last evaluation of a run."""
    path = Path(source)
    if (path / "summary.json").is_file():
        summary = json.loads((path / "summary.json").read_text())
        metrics = {k: (math.nan if v is None else float(v)) for k, v in summary.get("metrics", {}).items()}
        return [(path.name, metrics)]
    if not (path / "metrics.jsonl").is_file():
        raise ConfigError(f"--compare: {path} is neither an evaluation output (summary.json) nor a training "
                          f"run directory (metrics.jsonl)")
    evals = evaluations(read_metrics(path))
    if not evals:
        raise ConfigError(f"--compare: {path / 'metrics.jsonl'} holds no held-out evaluation (no eval/ "
                          f"metrics): the run evaluated nothing (set data.eval_size > 0)")
    steps = list(evals)
    kept = read_record(path)
    final_step = kept["final_step"] if kept else None
    shown = sorted({steps[0], steps[-1], *([final_step] if final_step in evals else [])})
    return [(f"{path.name}@step{step}" + (" (final/)" if step == final_step else ""), evals[step])
            for step in shown]


def evaluations(rows: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """step -> the held-out metrics logged at that step (an evaluation's parts may be logged on several
    rows, e.g. the task's check() and held-out rewards), in step order; ``eval/accuracy`` as pass@1."""
    merged: dict[int, dict[str, float]] = {}
    for row in rows:
        shown = [key for key in row if key.startswith("eval/") and key[5:] not in _HIDDEN_RUN_METRICS]
        if shown:
            merged.setdefault(int(row["step"]), {}).update(
                {("pass@1" if key == "eval/accuracy" else key[5:]): float(row[key]) for key in shown})
    return dict(sorted(merged.items()))


def compare(sources: list[str], output_dir: str = "evals", name: str = "", overwrite: bool = False) -> Path:
    """Side-by-side table (printed, compare.md, compare.json) and a bar chart PNG per metric."""
    entries: list[tuple[str, dict[str, float]]] = []
    for source in sources:
        entries.extend(compare_entries(source))
    labels = _unique([label for label, _ in entries])
    metric_names = list(dict.fromkeys(key for _, metrics in entries for key in metrics))
    out_dir = make_run_dir(output_dir, name or None, "compare", resume=False, overwrite=overwrite)
    table = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for metric in metric_names:
        table.append(f"| {metric} | " + " | ".join(cell(m.get(metric)) for _, m in entries) + " |")
    text = "\n".join(table)
    (out_dir / "compare.md").write_text(text + "\n")
    values = {label: {k: (None if math.isnan(v) else v) for k, v in m.items()}
              for label, (_, m) in zip(labels, entries)}
    kept = {source: record for source in sources if (record := read_record(Path(source))) is not None}
    report = {"sources": sources, "entries": values, "final": kept}
    (out_dir / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
    for metric in metric_names:
        _bar_chart(out_dir / f"{chart_name(metric)}.png", metric,
                   [(label, m.get(metric, math.nan)) for label, (_, m) in zip(labels, entries)])
    print(text)
    for source, record in kept.items():
        print(f"{source}: {sentence(record)}")
    return out_dir


def chart_name(metric: str) -> str:
    """A file name for a metric's chart: "pass@10" -> "pass_at_10"."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in metric.replace("@", "_at_"))


def _unique(labels: list[str]) -> list[str]:
    seen: Counter[str] = Counter(labels)
    count: Counter[str] = Counter()
    out = []
    for label in labels:
        count[label] += 1
        out.append(f"{label} ({count[label]})" if seen[label] > 1 else label)
    return out


def _bar_chart(path: Path, metric: str, bars: list[tuple[str, float]]) -> None:
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no GUI backend, no global state

    figure = Figure(figsize=(max(4.0, 1.3 * len(bars) + 1.5), 3.6), layout="constrained")
    axes = figure.add_subplot()
    heights = [0.0 if math.isnan(value) else value for _, value in bars]
    drawn = axes.bar(range(len(bars)), heights, color="#4c72b0")
    axes.bar_label(drawn, labels=[cell(value) for _, value in bars], fontsize=8)
    axes.set_xticks(range(len(bars)), [label for label, _ in bars], rotation=20, ha="right", fontsize=8)
    axes.set_title(metric, fontsize=10)
    finite = [value for _, value in bars if not math.isnan(value)]
    if finite and min(finite) >= 0 and max(finite) <= 1:
        axes.set_ylim(0, 1.08)
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png", dpi=100)


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
