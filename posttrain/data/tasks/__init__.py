"""Procedural and benchmark tasks, each a module with one `check()` used by rewards and evaluation.

A task module provides:
- `rows(n, seed, split="train", **options) -> list[dict]`: prompt rows (`prompt`, gold columns,
  `_where`), train and test never sharing a problem;
- `check(completion, row) -> bool`: is the completion correct for this row;
- `format_ok(completion, row) -> bool`: does it have the shape the prompt asked for;
- `sft_rows(n, seed, split="train", **options) -> list[dict]`: demonstrations (`messages`).
"""

from __future__ import annotations

import difflib
from types import ModuleType

from posttrain.data.tasks import arithmetic, instructions
from posttrain.errors import ConfigError

TASKS: dict[str, ModuleType] = {
    "arithmetic": arithmetic,
    "instructions": instructions,
}


def get_task(name: str) -> ModuleType:
    """The task module called `name`; an unknown name is a ConfigError with a suggestion."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown task {name!r}{hint} (known tasks: {', '.join(sorted(TASKS))})")
    return TASKS[name]
