"""Turn a config's ``data`` section into rows: a procedural task's split, or a user's file."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from posttrain.config import DataConfig
from posttrain.data.formats import load_rows
from posttrain.data.tasks import TASKS, get_task


def _is_task(source: str) -> bool:
    return source in TASKS or not (Path(source).suffix or Path(source).exists())


def resolve_task(data: DataConfig) -> ModuleType | None:
    """The task that judges answers: ``data.task``, else the task named in ``data.train``."""
    if data.task:
        return get_task(data.task)
    if _is_task(data.train):
        return get_task(data.train)
    return None


def load_split(data: DataConfig, split: str, kind: str, seed: int, *,
               pairs: str = "all") -> list[dict[str, Any]]:
    """Rows for ``split`` ("train" or "eval") of ``kind`` ("prompts", "conversations" or
    "preferences"). Preferences come from a task's ``preference_rows`` or from a file of pairs or
    of rankings, the latter expanded into pairs by ``pairs`` ("all" or "adjacent")."""
    if split == "eval" and not data.eval and not _is_task(data.train):
        return []  # a file dataset has no held-out split unless data.eval names one
    source = data.train if split == "train" else (data.eval or data.train)
    size = data.train_size if split == "train" else data.eval_size
    task_split = "train" if split == "train" else "test"
    if _is_task(source):
        task = get_task(source)
        if kind == "preferences":
            return task.preference_rows(size, seed=seed, split=task_split, **data.options)
        make = task.sft_rows if kind == "conversations" else task.rows
        # `kind` chooses the preference pairs of a task; prompts and demonstrations do not take it
        options = {k: v for k, v in data.options.items() if k != "kind"}
        return make(size, seed=seed, split=task_split, **options)
    rows = _load_preferences(source, pairs) if kind == "preferences" else load_rows(source, kind)
    return rows[:size] if split == "eval" else rows


def _load_preferences(source: str, pairs: str) -> list[dict[str, Any]]:
    """A file of pairs (prompt, chosen, rejected) or of rankings (prompt, responses, ranking), told
    apart by its rows: a file whose rows lack 'chosen' but validate as rankings is a rankings file."""
    from posttrain.data.preferences import rankings_to_pairs
    from posttrain.errors import DataError

    try:
        return load_rows(source, "preferences")
    except DataError as pair_error:
        if pair_error.field != "chosen":
            raise
        try:
            rankings = load_rows(source, "rankings")
        except DataError as ranking_error:
            # rows with no 'responses' either were meant as pairs: report what pairs lack
            missing = ranking_error.field == "responses" and "missing required field" in str(ranking_error)
            raise (pair_error if missing else ranking_error) from None
    return rankings_to_pairs(rankings, pairs)


class DataOrder:
    """Rows in a seeded shuffled order, epoch after epoch; ``used`` counts rows handed out.

    The order depends only on the seed and the count, so a resumed run continues exactly where
    the killed one stopped (the count is saved in the checkpoint).
    """

    def __init__(self, rows: list[dict[str, Any]], seed: int, used: int = 0) -> None:
        if not rows:
            raise ValueError("no training rows")
        self.rows, self.seed, self.used = rows, seed, used
        self._epoch, self._perm = -1, list(range(len(rows)))

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.rows))
        if epoch != self._epoch:
            import random

            self._perm = list(range(len(self.rows)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._perm)
            self._epoch = epoch
        return self._perm[offset]

    def take(self, k: int) -> list[dict[str, Any]]:
        out = [self.rows[self._index(self.used + i)] for i in range(k)]
        self.used += k
        return out


def reward_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Dataset columns passed to reward functions by name (TRL's convention): all but the prompt."""
    keys = [k for k in rows[0] if k not in ("prompt", "messages") and not k.startswith("_")] if rows else []
    return {k: [row.get(k) for row in rows] for k in keys}
