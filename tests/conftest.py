"""Shared fixtures: the embedded model's tokenizer and tiny random models built on it."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """SmolLM2's real tokenizer and chat template (converted once from the embedded GGUF)."""
    from posttrain.models import EMBEDDED_DEFAULT, load_tokenizer

    return load_tokenizer(EMBEDDED_DEFAULT)


@pytest.fixture
def tiny_model(tokenizer: Any) -> torch.nn.Module:
    """A 2-layer, 64-wide random Llama with the real vocabulary; a fresh copy per test."""
    from posttrain.models import tiny_model as build

    return build(tokenizer, layers=2, hidden=64, seed=0)
