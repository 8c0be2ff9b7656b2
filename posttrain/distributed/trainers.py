"""Trainer ranks: Ray actors forming one torch.distributed group, and a data-parallel step on them.

``TrainerGroup`` places ``cluster.trainers`` actors together (PACK), has rank 0 pick the rendezvous
address, and joins them in one process group (gloo on CPU, nccl when the ranks have GPUs).
``TrainerGroup.run(fn, *args)`` calls ``fn(rank, world, *args)`` on every rank (a Ray actor call,
no RPC of ours) and returns the results in rank order.

``data_parallel_step`` is what each rank does for one optimizer step (DDP's gradient all-reduce,
written out so that the loss normaliser stays global): every rank holds the whole batch, backs its
own contiguous share of rows through ``training.accumulate``, weights those gradients by the
share's part of the batch's normaliser (its tokens for ``token_mean``, rows with a token for
``sequence_mean``, rows for ``constant``: ``training.micro_batch_weights``), and sums them over the
ranks; the sum is the gradient of the whole batch's loss, so every rank then takes the step of one
process on that batch. A non-finite loss on any rank makes every rank skip the step together.

Not yet wired to the recipes (issue 20): ``cluster.trainers > 1`` is still refused by the config check.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import ray
import torch
import torch.distributed as dist

from posttrain.config import ClusterConfig
from posttrain.distributed.cluster import Cluster, Role, share_bounds
from posttrain.training import Stepper, accumulate, micro_batch_weights

GROUP_TIMEOUT = timedelta(seconds=120)
"""How long a collective waits for a missing rank before failing (a dead rank stops the run)."""


@ray.remote
class TrainerRank:
    """One rank: a process of the torch.distributed group, running whatever the driver sends."""

    def rendezvous_address(self) -> str:
        """This node's address and a free port on it: rank 0's answer is where the group meets."""
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def join(self, address: str, rank: int, world: int, backend: str) -> None:
        self.rank, self.world = rank, world
        dist.init_process_group(backend, init_method=address, rank=rank, world_size=world,
                                timeout=GROUP_TIMEOUT)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.rank, self.world, *args)

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class TrainerGroup:
    """``cluster.trainers`` ranks placed on the run's cluster and joined in one process group."""

    def __init__(self, cluster: Cluster, config: ClusterConfig) -> None:
        role = Role("trainer", config.trainers, config.trainer_cpus, config.trainer_gpus, strategy="PACK")
        self.ranks = [TrainerRank.options(**option).remote() for option in cluster.place(role)]
        backend = "nccl" if config.trainer_gpus > 0 else "gloo"
        address = ray.get(self.ranks[0].rendezvous_address.remote())
        ray.get([rank.join.remote(address, index, len(self.ranks), backend)
                 for index, rank in enumerate(self.ranks)])

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(rank, world, *args)`` on every rank at once; the results in rank order."""
        return ray.get([rank.run.remote(fn, *args) for rank in self.ranks])

    def stop(self) -> None:
        ray.get([rank.leave.remote() for rank in self.ranks])
        for rank in self.ranks:
            ray.kill(rank)


def data_parallel_step(stepper: Stepper, loss_mask_NT: torch.Tensor, micro_batch_size: int, agg: str,
                       micro_loss: Any, rank: int, world: int) -> dict[str, float]:
    """This rank's part of one optimizer step on the whole batch ``loss_mask_NT [N, T]`` (same on every
    rank); ``micro_loss(rows)`` as for ``training.accumulate``. Returns the step's loss metrics
    (summed over ranks, so they are the whole batch's) and ``stepper.step()``'s train/ metrics."""
    n_rows = loss_mask_NT.shape[0]
    if n_rows < world:
        raise ValueError(f"a batch of {n_rows} rows cannot be shared by {world} trainer ranks")
    shards = [slice(start, stop) for start, stop in share_bounds(n_rows, world)]
    share = micro_batch_weights(loss_mask_NT, shards, agg)[rank]
    losses_finite = [True]

    def checked_loss(rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = micro_loss(rows)
        losses_finite[0] &= bool(torch.isfinite(loss.detach()).all())
        return loss, metrics

    metrics = accumulate(stepper, loss_mask_NT, micro_batch_size, agg, checked_loss, within=shards[rank])
    finite = torch.tensor([float(losses_finite[0])], device=stepper.params[0].device)
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    for param in stepper.params:  # a rank with no gradient for a parameter adds zeros
        gradient = param.grad if param.grad is not None else torch.zeros_like(param)
        gradient.mul_(share if finite.item() == 1.0 else float("nan"))  # NaN: every rank skips the step
        dist.all_reduce(gradient)
        param.grad = gradient
    shares: list[Any] = [None] * world  # metrics are few floats: gathered as objects, whatever their keys
    dist.all_gather_object(shares, {name: value * share for name, value in metrics.items()})
    result: dict[str, float] = {}
    for part in shares:
        for name, value in part.items():
            result[name] = result.get(name, 0.0) + value
    result.update(stepper.step())
    return result

