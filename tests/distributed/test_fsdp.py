"""cluster.sharding=fsdp without a cluster: what it refuses, and its checkpoints read in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import OptimConfig
from posttrain.distributed import fsdp
from posttrain.errors import ConfigError
from posttrain.models import add_lora
from posttrain.training import Stepper, build_optimizer


def test_shard_refuses_a_lora_policy_and_a_module_without_decoder_layers(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ConfigError, match=r"model\.lora_rank > 0 .* use cluster\.sharding=ddp"):
        fsdp.shard(add_lora(tiny_model, rank=2))
    with pytest.raises(ConfigError, match=r"Linear is not one: use cluster\.sharding=ddp"):
        fsdp.shard(torch.nn.Linear(2, 2))


def _stepped(model: torch.nn.Module) -> tuple[torch.nn.Module, Any]:
    """``model`` after one AdamW step on a made-up loss, and its optimizer (with state)."""
    optim = OptimConfig(lr=1e-2)
    optimizer = build_optimizer(model, optim)
    stepper = Stepper(model, optimizer, None, optim)
    ids = torch.arange(12).view(2, 6)
    stepper.backward(model(input_ids=ids).logits.float().square().mean())
    stepper.step()
    return model, optimizer


def test_a_sharded_checkpoint_loads_in_one_process(tokenizer: Any, tmp_path: Path) -> None:
    """The DCP format the fsdp ranks write reads back into a whole model and optimizer (DCP without a
    process group), so a second step from it equals a second step of the original."""
    from posttrain.models import tiny_model

    saved, saved_optimizer = _stepped(tiny_model(tokenizer, seed=0))
    fsdp.save_sharded(tmp_path / "sharded", saved, saved_optimizer)
    loaded = tiny_model(tokenizer, seed=1)
    optimizer = build_optimizer(loaded, OptimConfig(lr=1e-2))
    fsdp.load_sharded(tmp_path / "sharded", loaded, optimizer)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    first = next(iter(saved_optimizer.state.values()))
    again = next(iter(optimizer.state.values()))
    assert torch.equal(first["exp_avg_sq"], again["exp_avg_sq"])
    assert float(first["step"]) == float(again["step"]) == 1.0
