"""``posttrain score``: score (prompt, response) rows with a trained reward model and write the scores.

Input rows (JSONL, JSON, CSV or Parquet, validated with file:line errors) hold ``prompt`` and
``completion``, or ``messages`` ending with the assistant turn to score (the earlier messages are
its prompt). The output is the same rows, each with a ``score`` field: r(prompt, response) from
the reward model's head on the last token, exactly as in training (``posttrain.rewards.reward_model``).

    posttrain score model=runs/rm-arithmetic/final input=answers.jsonl output=answers.scored.jsonl
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import DataError


@dataclass
class Config:
    model: str = ""
    """The trained reward model: the final/ folder of a `posttrain rm` run (an HF folder)."""
    input: str = ""
    """Rows to score: prompt + completion, or messages ending with an assistant turn."""
    output: str = ""
    """Where to write the rows with their scores as JSONL (default: <input>.scored.jsonl)."""
    batch_size: int = 16
    """Rows per forward pass."""
    max_length: int = 2048
    """Longer prompt + response sequences are cut at the end and scored there."""
    system_prompt: str = ""
    """System message prepended to every prompt (empty: the chat template's default)."""
    device: str = "auto"
    """Device: auto (CUDA when present), cpu, or cuda."""
    dtype: str = "float32"
    """Weights' dtype: float32 or bfloat16."""

    def check(self) -> list[str]:
        missing = [key for key in ("model", "input") if not getattr(self, key)]
        return [f"'{key}' is required (e.g. posttrain score model=runs/rm/final input=rows.jsonl)"
                for key in missing]


def _prompt_and_response(row: dict[str, Any]) -> tuple[Any, str]:
    if "messages" not in row:
        return row["prompt"], row["completion"]
    messages = row["messages"]
    if messages[-1]["role"] != "assistant":
        raise DataError("the last message is not an assistant turn, so there is no response to score",
                        file=row.get("_where"), field=f"messages[{len(messages) - 1}].role",
                        expected="assistant", got=messages[-1]["role"])
    return messages[:-1], messages[-1]["content"]


def train(config: Config) -> Path:
    """Score every row of ``config.input``; returns the output path."""
    from posttrain.data.formats import load_rows, write_jsonl
    from posttrain.rewards.reward_model import load_score_model, score_texts

    rows = load_rows(config.input, "conversations")
    prompts, responses = zip(*(_prompt_and_response(row) for row in rows))
    model, tokenizer = load_score_model(config.model, config.dtype, config.device)
    scores = score_texts(model, tokenizer, list(prompts), list(responses), batch_size=config.batch_size,
                         max_length=config.max_length, system_prompt=config.system_prompt or None,
                         wheres=[row.get("_where") for row in rows])
    output = Path(config.output or Path(config.input).with_suffix(".scored.jsonl"))
    write_jsonl([{**row, "score": score} for row, score in zip(rows, scores)], output)
    print(f"[score] {len(scores)} rows scored with {config.model}: mean {statistics.fmean(scores):.4f}, "
          f"min {min(scores):.4f}, max {max(scores):.4f} -> {output}")
    return output
