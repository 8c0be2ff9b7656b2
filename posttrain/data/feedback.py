"""Unpaired feedback for KTO: one response per row, with a thumbs up or down.

A row has ``prompt`` (a string or messages), ``completion`` (a string) and ``label`` (a boolean:
true = desirable). Sources, as TRL's KTO users know them:
- a task's procedural thumbs (``feedback_rows`` of the task module, e.g. arithmetic);
- a file of feedback rows (``posttrain collect export``'s unpaired.jsonl; JSONL, JSON, CSV or
  parquet; a CSV ``label`` may be true/false/1/0, elsewhere it must be a JSON boolean);
- a file of pairs (``prompt``, ``chosen``, ``rejected``): each pair becomes two rows, the chosen
  response labelled true and the rejected one false (TRL's ``unpair_preference_dataset``).
Every row is validated, and errors name the file, the physical line and the field, before a model
is loaded. A file whose rows have neither ``completion`` nor ``chosen`` is reported as feedback rows
missing ``completion``.

Each row is encoded like a response of a pair (``posttrain.data.preferences.encode_response``:
the chat-rendered prompt, then the response with the loss mask on it); an over-long row is a
DataError unless ``truncate`` cuts its end off. ``mismatched`` builds KTO's reference-point rows:
the prompt of row i followed by the response of row i+1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from posttrain.config import DataConfig
from posttrain.data.formats import load_rows
from posttrain.data.preferences import EncodedPair, encode_pairs, encode_response
from posttrain.data.sources import _is_task, load_pairs
from posttrain.errors import ConfigError, DataError, data_errors

Row = dict[str, Any]
Example = tuple[list[int], list[int]]


@dataclass
class FeedbackConfig:
    batch_size: int = 16
    """B: feedback rows per optimizer step (each also scored after the next row's prompt, for z0)."""
    micro_batch_size: int = 8
    """Rows per forward/backward pass; z0 is estimated over each micro-batch (held-out: pairs per pass)."""
    max_length: int = 512
    """Longest prompt + response in tokens; a longer row is an error naming it (see truncate)."""
    truncate: bool = False
    """Cut over-long rows (and held-out pairs) at max_length instead."""

    def check(self) -> list[str]:
        if self.batch_size < 2:
            return [f"batch_size must be at least 2: the reference point pairs each row's prompt with "
                    f"another row's response; got {self.batch_size}"]
        return []


@dataclass
class EncodedFeedback:
    """Token ids and response mask of one row, where its response starts, and its label."""

    ids: list[int]
    mask: list[int]
    prompt_length: int
    desirable: bool
    where: str

    @property
    def example(self) -> Example:
        return self.ids, self.mask


def pairs_to_feedback(rows: Sequence[Row]) -> list[Row]:
    """Two feedback rows per pair row: ``completion`` = chosen with ``label`` true, then rejected with
    false; other columns are kept and ``_where`` says which side ("pairs.jsonl:3 chosen")."""
    out = []
    for row in rows:
        rest = {k: v for k, v in row.items() if k not in ("chosen", "rejected", "_where")}
        where = row.get("_where", "pairs")
        out += [{**rest, "completion": row["chosen"], "label": True, "_where": f"{where} chosen"},
                {**rest, "completion": row["rejected"], "label": False, "_where": f"{where} rejected"}]
    return out


def feedback_from(source: Any) -> list[Row]:
    """Validated feedback rows of a file (or in-memory rows) of feedback rows or of pairs."""
    try:
        return load_rows(source, "unpaired")
    except DataError as feedback_error:
        if feedback_error.field != "completion" or "missing required field" not in str(feedback_error):
            raise
        try:
            pairs = load_rows(source, "preferences")
        except DataError as pairs_error:
            # rows with no 'chosen' either were meant as feedback rows: report what those lack
            missing = pairs_error.field == "chosen" and "missing required field" in str(pairs_error)
            raise (feedback_error if missing else pairs_error) from None
    return pairs_to_feedback(pairs)


def load_feedback(data: DataConfig, seed: int) -> list[Row]:
    """The training feedback rows of a config's data section: a task's ``feedback_rows`` (train split,
    ``data.train_size`` rows, ``data.options``) or a file (see ``feedback_from``)."""
    from posttrain.data.tasks import get_task

    if not _is_task(data.train):
        return feedback_from(data.train)
    task = get_task(data.train)
    if not hasattr(task, "feedback_rows"):
        raise ConfigError(f"task {data.train!r} has no procedural feedback rows; give data.train a file of "
                          "feedback rows (prompt, completion, label) or of pairs")
    return task.feedback_rows(data.train_size, seed=seed, split="train", **data.options)


def encode_feedback(tokenizer: Any, rows: Sequence[Row], max_length: int, *, truncate: bool = False,
                    system_prompt: str | None = None) -> list[EncodedFeedback]:
    """Encode every feedback row (an over-long one is a DataError unless ``truncate``); every bad row
    is reported in one DataError."""
    out, problems = [], []
    for row in rows:
        where = row.get("_where")
        try:
            ids, mask = encode_response(tokenizer, row["prompt"], row["completion"], max_length,
                                        truncate=truncate, where=where, system_prompt=system_prompt,
                                        field="completion")
            if not any(mask):
                raise DataError(f"no completion token left within max_length {max_length}", file=where,
                                field="completion", expected="a response that starts within max_length")
        except DataError as error:
            problems.append(error)
            continue
        out.append(EncodedFeedback(ids, mask, mask.index(1), bool(row["label"]), str(where)))
    if problems:
        raise data_errors(problems)
    return out


def mismatched(rows: Sequence[EncodedFeedback], max_length: int) -> list[Example]:
    """For each row i, its prompt followed by the response of row i+1 (the last row takes the first
    row's), cut at ``max_length``: pairs the policy was never asked about, whose log-ratio to the
    reference estimates KL(π ‖ π_ref) (KTO's reference point z0, as TRL builds it)."""
    out = []
    for i, row in enumerate(rows):
        other = rows[(i + 1) % len(rows)]
        ids = row.ids[:row.prompt_length] + other.ids[other.prompt_length:]
        mask = [0] * row.prompt_length + other.mask[other.prompt_length:]
        out.append((ids[:max_length], mask[:max_length]))  # the prompt fits, so a response token is left
    return out


def encoded_feedback_splits(config: Any, train_rows: list[Row] | None = None,
                            eval_rows: list[Row] | None = None,
                            ) -> tuple[list[Row], list[EncodedFeedback], list[EncodedPair]]:
    """Training feedback rows, their encodings, and the encoded held-out pairs of a feedback recipe's
    config (``data``, ``model.name``, ``feedback``, ``run.seed``). Rows given in Python replace the
    configured ones (``train_rows`` are feedback rows or pairs, validated like a file; ``eval_rows``
    are pairs). Everything is encoded, and any bad row reported, before a model is loaded."""
    from posttrain.models import load_tokenizer

    rows = load_feedback(config.data, config.run.seed) if train_rows is None else feedback_from(train_rows)
    if eval_rows is None:
        eval_rows = load_pairs(config.data, "eval", config.run.seed)
    tokenizer = load_tokenizer(config.model.name)
    options = {"truncate": config.feedback.truncate, "system_prompt": config.data.system_prompt or None}
    encoded = encode_feedback(tokenizer, rows, config.feedback.max_length, **options)
    held_out = encode_pairs(tokenizer, eval_rows, config.feedback.max_length, **options) if eval_rows else []
    return rows, encoded, held_out
