"""Shared fixtures: the embedded model's tokenizer and tiny random models built on it."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see posttrain/cli.py
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> str:
    """A tiny random model saved as an HF folder, so recipes can load it by path like any model."""
    from posttrain.models import save_pretrained, tiny_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(tiny_model(tokenizer, layers=2, hidden=64, seed=0), tokenizer, path)
    return str(path)


@pytest.fixture(scope="session")
def peaked_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> str:
    """A tiny model whose final norm is scaled up so its next-token distribution is not uniform:
    RL tests then see their reward move within a few dozen steps, as with a pretrained model."""
    from posttrain.models import save_pretrained, tiny_model

    model = tiny_model(tokenizer, layers=2, hidden=64, seed=0)
    with torch.no_grad():
        model.model.norm.weight.mul_(6.0)
    path = tmp_path_factory.mktemp("peaked") / "model"
    save_pretrained(model, tokenizer, path)
    return str(path)
