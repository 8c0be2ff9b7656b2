"""Turn a config's ``data`` section into rows: a procedural task's split, or a user's file; ranking
rows into preference pairs (``ranking_pairs``), and a seeded order over the rows (``DataOrder``).

Everything here is rows in, rows out: nothing tokenizes. ``posttrain.data.preferences`` and
``posttrain.data.feedback`` build on it, never the other way round (no import circle)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from posttrain.config import DataConfig
from posttrain.data.formats import load_rows
from posttrain.data.tasks import TASKS, get_task
from posttrain.errors import ConfigError, DataError

Row = dict[str, Any]
PAIR_MODES = ("all", "adjacent")


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
    of rankings, the latter expanded into pairs by ``pairs`` ("all" or "adjacent"). Training rows
    get ``data.mix`` added (see ``_mix``)."""
    if split == "eval" and not data.eval and not _is_task(data.train):
        return []  # a file dataset has no held-out split unless data.eval names one
    problems = data.check() if split == "train" else []  # a DataConfig built in Python skips load_config
    if problems:
        raise ConfigError([f"data.{problem}" for problem in problems])
    source = data.train if split == "train" else (data.eval or data.train)
    size = data.train_size if split == "train" else data.eval_size
    task_split = "train" if split == "train" else "test"
    rows = _source_rows(source, kind, size, seed, task_split, data.options, pairs)
    if split == "eval":
        return rows[:size]
    return _mix(rows, data, kind, seed, pairs) if data.mix else rows


def _source_rows(source: str, kind: str, size: int, seed: int, task_split: str, options: dict[str, Any],
                 pairs: str) -> list[dict[str, Any]]:
    """``size`` rows of a task's ``task_split``, or every row of a file."""
    if _is_task(source):
        task = get_task(source)
        if kind == "preferences":
            return task.preference_rows(size, seed=seed, split=task_split, **options)
        make = task.sft_rows if kind == "conversations" else task.rows
        # `kind` chooses the preference pairs of a task; prompts and demonstrations do not take it
        return make(size, seed=seed, split=task_split, **{k: v for k, v in options.items() if k != "kind"})
    return _load_preferences(source, pairs) if kind == "preferences" else load_rows(source, kind)


def _mix(rows: list[dict[str, Any]], data: DataConfig, kind: str, seed: int,
         pairs: str) -> list[dict[str, Any]]:
    """``rows`` with each ``data.mix`` source's rows added so that it makes up its ``fraction`` of
    the result (counts rounded to whole rows), shuffled by ``seed``. A task source gives exactly
    the rows needed (its train split, seed ``seed + 1 + i``); a file source's rows are drawn in a
    seeded order, cycling through them again when the file holds fewer. Rows keep their ``_where``."""
    total = len(rows) / (1 - sum(entry["fraction"] for entry in data.mix))
    mixed = list(rows)
    for i, entry in enumerate(data.mix):
        count, options = round(entry["fraction"] * total), entry.get("options") or {}
        try:
            drawn = _source_rows(entry["train"], kind, count, seed + 1 + i, "train", options, pairs)
        except ConfigError as error:
            raise ConfigError([f"data.mix[{i}] ({entry['train']}): {p}" for p in error.problems]) from None
        if not _is_task(entry["train"]):
            order = list(range(len(drawn)))
            random.Random(f"mix-{seed}-{i}").shuffle(order)
            drawn = [dict(drawn[order[j % len(order)]]) for j in range(count)]
        mixed.extend(drawn)
    random.Random(f"mix-{seed}").shuffle(mixed)
    return mixed


def ranking_pairs(row: Row, mode: str = "all") -> list[Row]:
    """The pairs a ranking row implies (``responses``, ``ranking`` = response indices, best first).

    ``all``: every (better, worse) pair, n(n-1)/2 of them; ``adjacent``: each response over the next
    one in the ranking, n-1 pairs. Other columns are kept; ``_where`` gains the two ranks
    ("data.jsonl:3 ranks 0>2") so errors point at the pair.
    """
    if mode not in PAIR_MODES:
        raise ConfigError(f"ranking pairs must be one of {', '.join(PAIR_MODES)}; got {mode!r}")
    responses, ranking = row["responses"], row["ranking"]
    rest = {k: v for k, v in row.items() if k not in ("responses", "ranking", "_where")}
    n = len(ranking)
    ranks = [(i, i + 1) for i in range(n - 1)] if mode == "adjacent" else [
        (i, j) for i in range(n) for j in range(i + 1, n)]
    where = row.get("_where", "rankings")
    return [{**rest, "chosen": responses[ranking[i]], "rejected": responses[ranking[j]],
             "_where": f"{where} ranks {i}>{j}"} for i, j in ranks]


def rankings_to_pairs(rows: Sequence[Row], mode: str = "all") -> list[Row]:
    """``ranking_pairs`` of every row, in row order."""
    return [pair for row in rows for pair in ranking_pairs(row, mode)]


def load_pairs(data: Any, split: str, seed: int, mode: str = "all") -> list[Row]:
    """Preference rows of ``split`` ("train" or "eval") for a config's data section: a task's
    procedural pairs, or a file of pairs or rankings (expanded with ``mode``)."""
    if mode not in PAIR_MODES:
        raise ConfigError(f"ranking pairs must be one of {', '.join(PAIR_MODES)}; got {mode!r}")
    return load_split(data, split, "preferences", seed, pairs=mode)


def _load_preferences(source: str, pairs: str) -> list[dict[str, Any]]:
    """A file of pairs (prompt, chosen, rejected) or of rankings (prompt, responses, ranking), told
    apart by its rows: a file whose rows lack 'chosen' but validate as rankings is a rankings file."""
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
            self._perm = list(range(len(self.rows)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._perm)
            self._epoch = epoch
        return self._perm[offset]

    def take(self, k: int) -> list[dict[str, Any]]:
        out = self.peek(k)
        self.used += k
        return out

    def peek(self, k: int) -> list[dict[str, Any]]:
        """The rows the next ``take(k)`` will hand out, without handing them out."""
        return [self.rows[self._index(self.used + i)] for i in range(k)]


def reward_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Dataset columns passed to reward functions by name (TRL's convention): all but the prompt."""
    keys = [k for k in rows[0] if k not in ("prompt", "messages") and not k.startswith("_")] if rows else []
    return {k: [row.get(k) for row in rows] for k in keys}
