"""Held-out evaluation of a policy on a task: sample, judge with the task's own check(), aggregate.

Recipes call ``evaluate_rows`` inside their loops (``eval/`` metrics) and the ``posttrain eval``
command calls it on a saved model; both use the task's ``check`` and ``format_ok``, never a
training reward, so a hacked reward cannot inflate the reported accuracy.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from posttrain import distributed
from posttrain.data.chat import prompt_messages
from posttrain.eval.metrics import mean_pass_at_k
from posttrain.rollout import SamplingParams, generate


def evaluate_rows(model: nn.Module, tokenizer: Any, rows: list[dict[str, Any]], task: Any, *,
                  max_new_tokens: int, n: int = 1, temperature: float = 0.0,
                  system_prompt: str | None = None, prompts_per_batch: int = 64,
                  engine_options: dict[str, Any] | None = None, seed: int = 0,
                  ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Accuracy (mean pass@1), format compliance and mean length over ``rows``.

    Returns ``(metrics, per_row)`` where ``per_row`` holds each prompt's completions and verdicts.
    """
    sampling = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    per_row: list[dict[str, Any]] = []
    for start in range(0, len(rows), prompts_per_batch):
        batch = rows[start:start + prompts_per_batch]
        prompts = [prompt_messages(row, system_prompt) for row in batch]
        with distributed.full_weights(model) as whole:  # fsdp trainer ranks: the engine reads whole weights
            rollouts = generate(whole, tokenizer, prompts, n=n, sampling=sampling,
                                engine_options=engine_options)
        for i, row in enumerate(batch):
            texts = rollouts.texts[i * n:(i + 1) * n]
            lengths = [len(ids) for ids in rollouts.completion_ids[i * n:(i + 1) * n]]
            per_row.append({
                "where": row.get("_where"), "answer": row.get("answer"), "completions": texts,
                "correct": [bool(task.check(t, row)) for t in texts],
                "format_ok": [bool(task.format_ok(t, row)) for t in texts],
                "lengths": lengths,
            })
    count = max(1, len(per_row))
    samples = max(1, sum(len(r["completions"]) for r in per_row))
    metrics = {
        "accuracy": mean_pass_at_k([(len(r["correct"]), sum(r["correct"])) for r in per_row], 1)
        if per_row else 0.0,
        "format": sum(sum(r["format_ok"]) for r in per_row) / samples,
        "mean_length": sum(sum(r["lengths"]) for r in per_row) / samples,
        "problems": float(len(per_row)),
    }
    metrics["accuracy_any"] = sum(any(r["correct"]) for r in per_row) / count
    return metrics, per_row
