"""Trainer ranks: Ray actors forming one torch.distributed group, each running the recipe itself.

``run_on_ranks`` (``distributed.launch`` with ``cluster.trainers > 1``) places the ranks together
(PACK), has rank 0 pick the rendezvous address, joins them in one process group (gloo on CPU, nccl
when the ranks have GPUs) and calls the recipe's ``train(config, **arguments)`` on every rank, as
torchrun would start the same script on every rank (OpenRLHF's and verl's trainer actors do the same
inside Ray). Every rank seeds and loads alike and holds the same batch: each samples and scores its
share of the prompts and the shares are gathered on every rank (``sampled_in_shares``,
``scored_in_shares``; with rollout or reward workers, which the driver places with the ranks, rank 0
alone has them sample and score and broadcasts the results: ``distributed.use_workers``); the seams in
``posttrain.distributed`` make the step data-parallel:

- ``rank_rows``: ``training.accumulate`` backs only this rank's contiguous share of the rows, its
  loss weighted by the share's part of the batch's normaliser (its tokens for ``token_mean``, rows
  with a token for ``sequence_mean``, rows for ``constant``), so the shares' losses add up to the
  whole batch's loss, not to a mean of per-rank means;
- ``reduce_gradients``: ``Stepper.step`` sums the gradients over the ranks (one all-reduce per
  optimizer step, as DDP does under ``no_sync`` until the last micro-batch); every rank then takes
  the step of one process on the whole batch, and a non-finite loss on any rank skips it on all;
- rank 0 alone writes the run directory, logs and checkpoints (``runner.start_run`` / ``Run.save``);
  the others write into a scratch folder removed at the end, and print nothing.

Faults: a rank that dies (SIGKILL, out of memory, a lost node) stops the run with a ClusterError
naming it; the others are stopped (they cannot go on without its share) and the last checkpoint
resumes with ``--resume``, with the same or another number of ranks (a ddp checkpoint is one process's;
an fsdp one, written by every rank with torch.distributed.checkpoint, is resharded on load).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import ray
import torch
import torch.distributed as dist

from posttrain import distributed
from posttrain.config import ClusterConfig
from posttrain.distributed import ClusterError, Rank
from posttrain.distributed.cluster import Cluster, Role, roles, share_bounds
from posttrain.distributed.reward_workers import pickle_by_value, share_of_columns, shifted
from posttrain.distributed.rollout_workers import counted_from, joined, share_options, with_seed
from posttrain.errors import PosttrainError, RewardError
from posttrain.rewards.base import RewardScores
from posttrain.rollout import Rollouts, checked_prompt_ids
from posttrain.training import micro_batch_weights

GROUP_TIMEOUT = timedelta(minutes=30)
"""How long a collective waits for the other ranks: long, since only rank 0 writes checkpoints and a
dead rank is noticed by Ray (``TrainerGroup.run``), not by this timeout."""
FAILURE_GRACE_S = 20.0
"""After one rank fails, how long to wait for the others' outcome before stopping them: a rank that
died makes its peers' collectives fail within seconds, and the death is the error to report."""


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
        role = Role.of(config, "trainer")
        self.ranks = [TrainerRank.options(**option).remote() for option in cluster.place(role)]
        backend = "nccl" if config.trainer_gpus > 0 else "gloo"
        address = ray.get(self.ranks[0].rendezvous_address.remote())
        ray.get([rank.join.remote(address, index, len(self.ranks), backend)
                 for index, rank in enumerate(self.ranks)])

    def run(self, fn: Callable[..., Any], *args: Any, run_dir: str = "RUN_DIR") -> list[Any]:
        """``fn(rank, world, *args)`` on every rank at once; the results in rank order. The first
        failure stops every rank: a dead rank raises ClusterError (saying to resume ``run_dir``), a
        rank's exception is raised again."""
        pending = [rank.run.remote(fn, *args) for rank in self.ranks]
        results: dict[int, Any] = {}
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            index = pending.index(done[0])
            try:
                results[index] = ray.get(done[0])
            except ray.exceptions.RayError as error:
                raise self._failure(pending, index, error, run_dir) from None
        return [results[index] for index in range(len(self.ranks))]

    def _failure(self, pending: list[Any], failed: int, error: BaseException, run_dir: str) -> BaseException:
        """The error to raise for a run whose rank ``failed`` raised ``error``: the first death among the
        ranks if any died, else that rank's own exception. Stops every rank. A PosttrainError (a config,
        data or checkpoint problem, said for people) is raised at once; anything else may be a peer's
        death seen through a failed collective, so the others' outcomes are awaited a while."""
        outcomes = {failed: error}
        if not isinstance(getattr(error, "cause", None), PosttrainError):
            ray.wait(pending, num_returns=len(pending), timeout=FAILURE_GRACE_S)
        for index, ref in enumerate(pending):
            if index != failed:
                try:
                    ray.get(ref, timeout=0)
                except ray.exceptions.GetTimeoutError:
                    pass
                except ray.exceptions.RayError as other:
                    outcomes[index] = other
        self.kill()
        deaths = {index: e for index, e in outcomes.items() if isinstance(e, ray.exceptions.RayActorError)}
        if deaths:
            index, death = min(deaths.items())
            return ClusterError(
                f"trainer rank {index} of {len(self.ranks)} died ({type(death).__name__}: "
                f"{str(death).splitlines()[0][:300]}); the run stopped, since the other ranks cannot take "
                "a step without its share of the batch. Its last checkpoint is intact: continue with "
                f"--resume {run_dir} (run.resume=true), with this or another number of cluster.trainers")
        cause = getattr(error, "cause", None)
        return cause if isinstance(cause, BaseException) else error

    def kill(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)

    def stop(self) -> None:
        ray.get([rank.leave.remote() for rank in self.ranks])
        self.kill()


def run_on_ranks(train: Callable[..., Any], config: Any, arguments: dict[str, Any]) -> Any:
    """``train(config, **arguments)`` on ``config.cluster.trainers`` ranks of the cluster its
    ``cluster.address`` names; rank 0's result (the run directory)."""
    pickle_by_value(arguments.get("reward_fns") or [])  # a notebook's reward functions go by value
    cluster = Cluster(config.cluster)
    try:
        cluster.check_fits(roles(config.cluster, trainers=True))  # every role at once, before any starts
        group = TrainerGroup(cluster, config.cluster)
        workers = distributed.place_workers(cluster, config.cluster, getattr(config, "model", None))
        named = config.run.name and os.path.join(config.run.output_dir, config.run.name)
        results = group.run(run_recipe, train, config, arguments, os.getcwd(), config.cluster.sharding,
                            workers, run_dir=named or "RUN_DIR (the run directory printed at its start)")
        group.stop()
        return results[0]
    finally:
        cluster.stop()


def run_recipe(index: int, world: int, train: Callable[..., Any], config: Any, arguments: dict[str, Any],
               cwd: str, sharding: str, workers: tuple[Any, Any] = (None, None)) -> Any:
    """On a rank: ``train(config, **arguments)`` in the driver's working folder (relative data and
    output paths mean the same; on several machines they must be on a shared file system), rank 0
    printing for all and driving the run's reward and rollout ``workers`` for all."""
    distributed.set_rank(Rank(index, world, sharding))
    distributed.use_workers(config.cluster, *workers)
    os.chdir(cwd)
    stdout = sys.stdout
    if index > 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (closed below)
    try:
        return train(config, **arguments)
    finally:
        if index > 0:
            sys.stdout.close()
            sys.stdout = stdout
        distributed.set_rank(Rank())
        distributed.use_workers(config.cluster, None, None)
        remove_scratch()


_scratch: dict[int, str] = {}


def scratch_dir() -> str:
    """A folder of this process for what a rank other than 0 would write into the run directory."""
    if os.getpid() not in _scratch:
        _scratch[os.getpid()] = tempfile.mkdtemp(prefix="posttrain-rank-")
    return _scratch[os.getpid()]


def remove_scratch() -> None:
    folder = _scratch.pop(os.getpid(), None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def rank_rows(rank: Rank, mask_NT: torch.Tensor, within: slice, agg: str) -> tuple[slice, float]:
    """``distributed.rank_rows`` on a rank: contiguous shares of ``within`` differing by at most a row
    (``share_bounds``); a rank beyond the rows gets none."""
    shards = [slice(within.start + start, within.start + stop)
              for start, stop in share_bounds(within.stop - within.start, rank.world)]
    if rank.index >= len(shards) or within.stop <= within.start:
        return slice(within.stop, within.stop), 0.0
    return shards[rank.index], micro_batch_weights(mask_NT, shards, agg)[rank.index]


def reduce_gradients(params: list[torch.nn.Parameter], loss_finite: bool) -> bool:
    """``distributed.reduce_gradients`` on a rank: one all-reduce of every gradient flattened together.
    A parameter no rank has a gradient for keeps none (the optimizer skips it, as in one process)."""
    device = params[0].device
    flags = torch.tensor([p.grad is not None for p in params] + [not loss_finite], dtype=torch.float32,
                         device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    with_grad = [p for p, had in zip(params, flags[:-1].tolist()) if had]
    for param in with_grad:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    if with_grad:
        flat = torch.cat([param.grad.reshape(-1) for param in with_grad])
        dist.all_reduce(flat)
        for param, part in zip(with_grad, flat.split([param.numel() for param in with_grad])):
            param.grad.copy_(part.view_as(param.grad))
    return not bool(flags[-1])


def sum_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """``distributed.sum_over_ranks`` on a rank (a few floats, gathered as objects whatever their keys)."""
    total: dict[str, float] = {}
    for part in gathered(metrics):
        for name, value in part.items():
            total[name] = total.get(name, 0.0) + value
    return total


def gathered(part: Any) -> list[Any]:
    """Every rank's ``part``, in rank order, on every rank."""
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts


def sampled_in_shares(sample: Callable[..., Rollouts]) -> Callable[..., Rollouts]:
    """``sample`` (``generate``'s arguments) with each rank sampling its contiguous share of the prompts
    and every rank getting the whole batch: one process's samples (each prompt's random streams follow
    its occurrence in the whole request, as on rollout workers), in 1/world of the time. Fewer prompts
    than ranks: every rank samples them all."""

    def shared(model: Any, tokenizer: Any, prompts: list[Any], n: int, sampling: Any,
               **options: Any) -> Rollouts:  # fmt: skip
        started, world = time.perf_counter(), dist.get_world_size()
        seeded = with_seed(sampling)  # drawn on every rank, as the engine would draw it: the RNG moves alike
        if len(prompts) < world:
            return sample(model, tokenizer, prompts, n, seeded, **options)
        ids = checked_prompt_ids(model, tokenizer, prompts, n, seeded, options.get("max_prompt_tokens"))
        first, stop = share_bounds(len(prompts), world)[dist.get_rank()]
        backend = options.get("backend", "torch")
        options["engine_options"] = share_options(options.get("engine_options"), backend, ids, first, stop)
        part = sample(model, tokenizer, prompts[first:stop], n, seeded, **options)
        counted_from(part, first)
        return joined(gathered(part), started)

    return shared


def scored_in_shares(score: Callable[..., RewardScores]) -> Callable[..., RewardScores]:
    """``score`` (``score_completions``' arguments) with each rank scoring its contiguous share of the
    completions and every rank getting all the scores and what the functions logged, in order."""

    def shared(reward_fns: list[tuple[str, Any, float]], prompts: list[Any], completions: list[Any],
               columns: dict[str, Any], **options: Any) -> RewardScores:
        n, world = len(completions), dist.get_world_size()
        if n < world or len(prompts) != n:  # too few to share, or score's own error to raise
            return score(reward_fns, prompts, completions, columns, **options)
        first, stop = share_bounds(n, world)[dist.get_rank()]
        ids = options.get("completion_ids")
        try:
            part = score(reward_fns, prompts[first:stop], completions[first:stop],
                         share_of_columns(columns, first, stop, n),
                         **{**options, "completion_ids": ids[first:stop] if ids else None})
        except RewardError as error:  # its indices count from the share's first sample
            raise RewardError(shifted(str(error), first)) from None
        return RewardScores.concat(gathered(part))

    return shared


def broadcast_from_writer(make: Callable[[], Any] | None) -> Any:
    box = [make() if make is not None else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist.barrier()

