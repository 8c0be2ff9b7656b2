"""Errors meant for people: the CLI prints one of these as a single block and exits with status 2.

Every error says where (file, line, field or config key), what was expected and what was found,
so a user can fix the input without reading a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_LISTED = 20  # further problems an aggregate DataError shows in full; the rest are counted


class PosttrainError(Exception):
    """Base of the errors caused by user input (config, data, reward functions, checkpoints)."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


COMMAND_LINE = "command line"
"""The ``source`` of problems in ``key=value`` overrides (a file's path names problems in a YAML file)."""


def config_source(source: str) -> str:
    """How an error says where a config problem came from: "on the command line" or "in <file>"."""
    return "on the command line" if source == COMMAND_LINE else f"in {source}"


class ConfigError(PosttrainError):
    """One or more problems in a configuration, all reported together; ``source`` is the YAML file
    they are in, or ``COMMAND_LINE`` for ``key=value`` overrides."""

    def __init__(self, problems: str | list[str], source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" {config_source(source)}" if source else ""
        if len(self.problems) == 1:
            message = f"config error{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} config errors{where}:\n{lines}"
        super().__init__(message)


class DataError(PosttrainError):
    """A problem with one row of a dataset, located by file, physical line (1-based) and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        got: Any = None,
        has_got: bool = False,
    ) -> None:
        self.file, self.line, self.row, self.field = file, line, row, field
        self.expected = expected
        self.problems: list[DataError] = [self]
        parts = []
        if file is not None:
            parts.append(f"{file}:{line}" if line is not None else str(file))
        if row is not None and line is None:
            parts.append(f"row {row}")
        if field is not None:
            parts.append(f"field '{field}'")
        detail = message
        if expected is not None:
            detail += f" (expected {expected}"
            detail += f", got {_short(got)})" if has_got or got is not None else ")"
        where = ", ".join(parts)
        super().__init__(f"{where}: {detail}" if where else detail)


def data_errors(errors: Sequence[DataError]) -> DataError:
    """One DataError reporting every problem at once: the first in full (its file, line and field
    stay the error's attributes, so callers can branch on them), then each further problem on its
    own line, up to 20, and a count of the rest. ``problems`` holds them all."""
    first = errors[0]
    if len(errors) == 1:
        return first
    listed = "".join(f"\n  - {error}" for error in errors[1 : 1 + _LISTED])
    rest = len(errors) - 1 - _LISTED
    tail = f"\n  - and {rest} more" if rest > 0 else ""
    combined = DataError(f"{first}\n  {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}:"
                         f"{listed}{tail}")
    combined.file, combined.line, combined.row = first.file, first.line, first.row
    combined.field, combined.expected, combined.problems = first.field, first.expected, list(errors)
    return combined


class RewardError(PosttrainError):
    """A reward function raised, returned the wrong length, or returned a non-finite value."""


class CheckpointError(PosttrainError):
    """A checkpoint is missing, incomplete, corrupted or does not match the model."""


class ModelLoadError(PosttrainError):
    """A model could not be loaded from the given source."""


class SandboxError(PosttrainError):
    """The sandbox cannot provide the isolation that was asked for."""
