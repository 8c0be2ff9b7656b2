"""Trainer ranks on a real two-node Ray cluster: one data-parallel step (gloo, 2 ranks) gives the
weights of the single-process step on the same batch, the loss normaliser being the whole batch's
(each rank's mean over its own tokens, averaged as DDP does, would not: the shares' token counts
differ here)."""

from __future__ import annotations

import sys
from typing import Any

import torch
from ray import cloudpickle

from posttrain.config import ClusterConfig, OptimConfig
from posttrain.logprobs import token_logprobs
from posttrain.losses import sft_loss
from posttrain.models import load_model
from posttrain.training import Stepper, accumulate

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the ranks run this module's functions


def _batch() -> dict[str, torch.Tensor]:
    """6 rows of different lengths: each rank's share holds a different number of loss tokens."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(10, 1000, (6, 12), generator=generator)
    lengths = torch.tensor([12, 3, 9, 4, 12, 6])
    attention_mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    loss_mask = attention_mask.clone()
    loss_mask[:, :2] = 0  # the "prompt"
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def _one_step(model_dir: str, batch: dict[str, torch.Tensor], rank: int | None, world: int,
              agg: str) -> dict[str, torch.Tensor]:
    """SFT's step (token NLL of the response tokens, micro-batches of 2) from the same start; with a
    rank, this rank's part of the data-parallel step."""
    from posttrain.distributed.trainers import data_parallel_step

    torch.manual_seed(0)
    model = load_model(model_dir, dtype="float32", device="cpu")
    model.train()
    # SGD: the weights move by lr x the gradient the ranks summed. (AdamW's first step, lr·g/(|g|+ε),
    # turns float-order differences in near-zero gradients into up to 1.6e-3 on this random model.)
    stepper = Stepper(model, torch.optim.SGD(model.parameters(), lr=0.5), None, OptimConfig())
    mask_NT = batch["loss_mask"].float()

    def micro_loss(rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs_NT, _ = token_logprobs(model, batch["input_ids"][rows], batch["attention_mask"][rows],
                                        batch["loss_mask"][rows])
        return sft_loss(logprobs_NT, mask_NT[rows], mode=agg), {}

    if rank is None:
        accumulate(stepper, mask_NT, 2, agg, micro_loss)
        stepper.step()
    else:
        data_parallel_step(stepper, mask_NT, 2, agg, micro_loss, rank, world)
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_two_ranks_take_the_single_process_step(ray_cluster: str, tiny_model_dir: str) -> None:
    from posttrain.distributed.cluster import Cluster
    from posttrain.distributed.trainers import TrainerGroup

    batch, aggs = _batch(), ("token_mean", "sequence_mean")
    want = [_one_step(tiny_model_dir, batch, None, 1, agg) for agg in aggs]
    cluster = Cluster(ClusterConfig(address=ray_cluster, trainers=2))
    try:
        group = TrainerGroup(cluster, cluster.config)
        ranks: list[Any] = group.run(
            lambda rank, world: [_one_step(tiny_model_dir, batch, rank, world, agg) for agg in aggs])
        group.stop()
    finally:
        cluster.stop()
    start = load_model(tiny_model_dir, dtype="float32", device="cpu").state_dict()
    for index, agg in enumerate(aggs):
        assert max(float((want[index][k] - start[k]).abs().max()) for k in start) > 1e-3, "the step moved"
        for rank, got in enumerate(ranks):
            worst = max(float((got[index][k] - want[index][k]).abs().max()) for k in start)
            assert worst < 1e-5, f"{agg}: rank {rank}'s weights are {worst:.2e} from the one-process step"
