"""A reward that tells random completions apart (the task's would score a random model's all 0)."""

from typing import Any


def length(completions: list[Any], **kwargs: Any) -> list[float]:
    return [float(len(str(completion))) for completion in completions]
