"""Errors meant for people: the CLI prints one of these as a single block and exits with status 2.

Every error says where (file, line, field or config key), what was expected and what was found,
so a user can fix the input without reading a traceback.
"""

from __future__ import annotations

from typing import Any


class PosttrainError(Exception):
    """Base of the errors caused by user input (config, data, reward functions, checkpoints)."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(PosttrainError):
    """One or more problems in a configuration, all reported together."""

    def __init__(self, problems: str | list[str], source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
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


class RewardError(PosttrainError):
    """A reward function raised, returned the wrong length, or returned a non-finite value."""


class CheckpointError(PosttrainError):
    """A checkpoint is missing, incomplete, corrupted or does not match the model."""


class ModelLoadError(PosttrainError):
    """A model could not be loaded from the given source."""


class SandboxError(PosttrainError):
    """The sandbox cannot provide the isolation that was asked for."""
