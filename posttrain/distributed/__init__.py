"""Scale-out: a run's roles on a Ray cluster, chosen by its ``cluster`` config section.

The only package that imports ray or torch.distributed (tests/test_style.py checks it). With an
empty ``cluster.address`` (the default) nothing here imports Ray and a run is one process, as it
always was. Otherwise ``start_run`` (posttrain/runner.py) calls ``start`` once per run and
``Run.finish`` calls ``stop``; in between, the shared RL step looks its reward scorer up with
``reward_scorer()``, which is ``score_completions`` itself in one process and a pool of reward
workers (``reward_workers.RewardPool``) on a cluster, and its sampler with ``rollout_sampler()``:
``posttrain.rollout.generate`` itself, or a pool of rollout workers (``rollout_workers.RolloutPool``),
whose rollouts ``check_on_policy`` compares with the policy's current weight version (``sample_ahead``
starts the next step's sampling early when ``cluster.max_staleness`` > 0).

What runs on a cluster: reward workers (reward functions and the code sandbox), rollout workers
(a copy of the policy and its engine each, the weights pushed after each optimizer step), and with
``cluster.trainers > 1`` the recipe itself on trainer ranks (``trainers.py``). ``launch(train, config)``
(the CLI calls it) runs the recipe's unchanged ``train`` on every rank of one torch.distributed group,
torchrun-style (as OpenRLHF's and verl's trainer actors do): each rank holds the same batch and backs
its own share of the rows; rollout and reward workers, placed by the driver with the ranks, are called
by rank 0 alone, which broadcasts their rollouts and scores (``use_workers``). The recipe meets the
ranks only through the seams below, which are plain no-ops in one process: ``rank_rows``
(``training.accumulate``: this rank's rows and its part of the batch's loss normaliser),
``reduce_gradients`` (``Stepper.step``: gradients summed over the ranks), ``sum_over_ranks`` (metrics
of the whole batch), ``from_writer`` / ``is_writer`` / ``barrier`` (rank 0 alone writes the run
directory and checkpoints). With ``cluster.sharding: fsdp`` (``fsdp.py``) a few more: ``shard`` (the
policy split over the ranks), ``through_root`` (the log-prob code's forward, so the weights are
gathered), ``full_weights`` (sampling), ``lockstep`` (as many micro-batches on every rank),
``full_state_dict`` (final/); checkpoint.py writes and reads sharded checkpoints through ``fsdp.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from posttrain.config import ClusterConfig
from posttrain.errors import ConfigError, PosttrainError

T = TypeVar("T")
Scorer = Callable[..., Any]
"""``score_completions``'s signature: (reward_fns, prompts, completions, columns) -> RewardScores."""


class ClusterError(PosttrainError):
    """The Ray cluster cannot be reached, cannot place what a run asks for, or lost a role for good."""


class _Session:
    """The cluster of the run in progress (one at a time per process), its reward and rollout pools. On
    a trainer rank: the pools the driver placed (``use_workers``) and no cluster of its own."""

    def __init__(self, config: ClusterConfig, cluster: Any, reward_pool: Any, rollout_pool: Any) -> None:
        self.config, self.cluster, self.depth = config, cluster, 1
        self.reward_pool, self.rollout_pool = reward_pool, rollout_pool

    @classmethod
    def start(cls, config: ClusterConfig, model: Any) -> _Session:
        from posttrain.distributed.cluster import Cluster, roles

        cluster = Cluster(config)
        try:
            cluster.check_fits(roles(config, trainers=False, rollouts=model is not None))
            return cls(config, cluster, *place_workers(cluster, config, model))
        except BaseException:
            cluster.stop()
            raise


def place_workers(cluster: Any, config: ClusterConfig, model: Any) -> tuple[Any, Any]:
    """The run's reward pool and rollout pool on ``cluster`` (None where ``config`` asks for none; no
    rollout workers without a ``model`` config to load the policy from)."""
    from posttrain.distributed.reward_workers import RewardPool
    from posttrain.distributed.rollout_workers import RolloutPool

    reward_pool = RewardPool(cluster, config) if config.reward_workers else None
    wants_rollouts = config.rollout_workers and model is not None
    return reward_pool, RolloutPool(cluster, config, model) if wants_rollouts else None


_session: _Session | None = None


@dataclass(frozen=True)
class Rank:
    """Which trainer rank this process is: ``Rank()`` (0 of 1) in one process and in the driver."""

    index: int = 0
    world: int = 1
    sharding: str = "ddp"


_rank = Rank()


def this_rank() -> Rank:
    return _rank


def set_rank(rank: Rank) -> None:
    """Called by a trainer rank's actor around the recipe it runs (``trainers.run_recipe``)."""
    global _rank
    _rank = rank


def is_writer() -> bool:
    """Whether this process writes the run directory, logs and checkpoints: rank 0 (or the only one)."""
    return _rank.index == 0


def launch(train: Callable[..., T], config: Any, **arguments: Any) -> T:
    """``train(config, **arguments)``: here, or with ``cluster.trainers > 1`` on every trainer rank of the
    cluster at once (rank 0's result returned). A recipe's ``train`` called directly with trainers > 1
    raises a ConfigError saying to come through here (the CLI does)."""
    cluster: ClusterConfig | None = getattr(config, "cluster", None)
    if cluster is None or cluster.trainers <= 1 or _rank.world > 1:
        return train(config, **arguments)
    from posttrain.distributed.trainers import run_on_ranks

    return run_on_ranks(train, config, arguments)


def check_launched(config: Any) -> None:
    """Raise a ConfigError for a run with ``cluster.trainers > 1`` that is not on its trainer ranks."""
    cluster: ClusterConfig | None = getattr(config, "cluster", None)
    if cluster is not None and cluster.trainers > 1 and _rank.world == 1:
        raise ConfigError(
            f"cluster.trainers={cluster.trainers}: the recipe runs on the trainer ranks, so it is started "
            "with posttrain.distributed.launch(recipe.train, config, ...) (the CLI does this), not by "
            "calling its train() directly")


def rank_rows(mask_NT: Any, within: slice, agg: str) -> tuple[slice, float]:
    """This rank's contiguous share of the rows ``within`` and that share's part of their loss
    normaliser (``training.micro_batch_weights``); ``(within, 1.0)`` in one process."""
    if _rank.world == 1:
        return within, 1.0
    from posttrain.distributed.trainers import rank_rows as on_ranks

    return on_ranks(_rank, mask_NT, within, agg)


def reduce_gradients(params: list[Any], loss_finite: bool) -> bool:
    """Sum the ranks' gradients into every rank's ``params`` (weighted shares of the batch's loss add
    up to its gradient); returns whether every rank's losses were finite. Nothing in one process."""
    if _rank.world == 1:
        return loss_finite
    if sharded():  # FSDP reduce-scattered them in backward
        from posttrain.distributed.fsdp import loss_flags

        return loss_flags(loss_finite)
    from posttrain.distributed.trainers import reduce_gradients as on_ranks

    return on_ranks(params, loss_finite)


def sum_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric summed over the ranks (each rank's already weighted by its share of the batch)."""
    if _rank.world == 1:
        return metrics
    from posttrain.distributed.trainers import sum_over_ranks as on_ranks

    return on_ranks(metrics)


def from_writer(make: Callable[[], T]) -> T:
    """``make()`` on the writer (rank 0) and its result on every rank (a run directory's path)."""
    if _rank.world == 1:
        return make()
    from posttrain.distributed.trainers import broadcast_from_writer

    return broadcast_from_writer(make if is_writer() else None)


def own_dir(run_dir: Path) -> Path:
    """Where this process writes what belongs in ``run_dir``: ``run_dir`` itself on the writer, a scratch
    folder (removed when the rank's run ends) on the other ranks."""
    if is_writer():
        return run_dir
    from posttrain.distributed.trainers import scratch_dir

    return Path(scratch_dir())


def barrier() -> None:
    """Every rank waits here for the others (the writer's checkpoint is complete after it)."""
    if _rank.world > 1:
        from posttrain.distributed.trainers import barrier as on_ranks

        on_ranks()


def sharded() -> bool:
    """Whether this process is a trainer rank of ``cluster.sharding: fsdp`` (``fsdp.py``)."""
    return _rank.world > 1 and _rank.sharding == "fsdp"


def shard(model: Any) -> Any:
    """The policy sharded over the trainer ranks under fsdp (before its optimizer is built); else itself."""
    if not sharded():
        return model
    from posttrain.distributed.fsdp import shard as fully_shard

    return fully_shard(model)


def through_root(model: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, a computation calling ``model``'s submodules, run as a forward of its FSDP
    root so that the sharded weights are gathered (and the gradients reduced in backward)."""
    if not sharded():
        return fn(*args, **kwargs)
    from posttrain.distributed.fsdp import through_root as on_ranks

    return on_ranks(model, fn, *args, **kwargs)


def full_weights(model: Any) -> contextlib.AbstractContextManager[Any]:
    """A block in which a sharded ``model``'s parameters are whole, giving the module to sample with (it
    reads them directly); ``model`` itself when it is not sharded."""
    if not sharded():
        return contextlib.nullcontext(model)
    from posttrain.distributed.fsdp import full_weights as gathered

    return gathered(model)


def lockstep(passes: list[tuple[slice, float]], spare: Callable[[], slice]) -> list[tuple[slice, float]]:
    """The weighted micro-batches this rank runs: under fsdp padded with ``(spare(), 0.0)`` to the most any
    rank runs, since each forward and backward is a collective there; as given otherwise."""
    if not sharded():
        return passes
    from posttrain.distributed.fsdp import most_passes

    return passes + [(spare(), 0.0)] * (most_passes(len(passes)) - len(passes))


def full_state_dict(model: Any) -> dict[str, Any] | None:
    """A sharded model's full weights, on the writer (``{}`` elsewhere); None when the model is whole."""
    if not sharded():
        return None
    from posttrain.distributed.fsdp import full_state_dict as gathered

    return gathered(model)


def start(config: Any) -> None:
    """Connect the run of ``config`` (a recipe config) to the cluster its ``cluster`` section names, if
    any, and place its roles. Raises ClusterError (within ``placement_timeout_s``) when it cannot.

    A run started inside another (best-of-n's SFT rounds) with no cluster of its own, or the same
    one, shares the outer run's; one with a different cluster replaces a session left behind by a
    run that raised before ``stop``."""
    global _session
    cluster: ClusterConfig | None = getattr(config, "cluster", None)
    if _rank.world > 1:  # a trainer rank: the driver (``launch``) holds the cluster
        return
    wanted = cluster is not None and bool(cluster.address.strip())
    if _session is not None and (not wanted or cluster == _session.config):
        _session.depth += 1
        return
    shutdown()
    if wanted:
        _session = _Session.start(cluster, getattr(config, "model", None))


def stop() -> None:
    """End the current run's use of the cluster: when the outermost run ends, its actors go and a
    cluster it started stops. Nothing on a trainer rank: its workers are the driver's (``use_workers``)."""
    if _session is not None and _rank.world == 1:
        _session.depth -= 1
        if _session.depth <= 0:
            shutdown()


def shutdown() -> None:
    """End the session now, however many runs share it (a run that raised never called ``stop``)."""
    global _session
    session, _session = _session, None
    if session is not None and session.cluster is not None:
        session.cluster.stop()


def use_workers(config: ClusterConfig, reward_pool: Any, rollout_pool: Any) -> None:
    """On a trainer rank (``trainers.run_recipe``), around the recipe: the reward and rollout pools the
    driver placed. Rank 0 alone calls them and broadcasts what they return, so every rank trains on the
    same rollouts and scores and none samples or scores the whole batch itself."""
    global _session
    _session = _Session(config, None, reward_pool, rollout_pool) if reward_pool or rollout_pool else None


def reward_scorer() -> Scorer:
    """What scores a batch of completions now: the run's reward workers, or this process (on trainer
    ranks, each rank its share)."""
    if _session is not None and _session.reward_pool is not None:
        return _on_writer(_session.reward_pool.score) if _rank.world > 1 else _session.reward_pool.score
    from posttrain.rewards.base import score_completions

    if _rank.world > 1:
        from posttrain.distributed.trainers import scored_in_shares

        return scored_in_shares(score_completions)
    return score_completions


def rollout_sampler() -> Callable[..., Any]:
    """What samples rollouts now: the run's rollout workers, or ``posttrain.rollout.generate`` in this
    process (on trainer ranks, each rank its share); all take ``generate``'s arguments and return
    ``Rollouts``."""
    if _session is not None and _session.rollout_pool is not None:
        pool = _session.rollout_pool
        return _sample_on_writer(pool) if _rank.world > 1 else pool.generate
    from posttrain.rollout import generate

    if _rank.world == 1:
        return generate
    from posttrain.distributed.trainers import sampled_in_shares

    if sharded():  # the engine reads the weights directly: gathered whole for each call
        from posttrain.distributed.fsdp import with_full_weights

        return sampled_in_shares(with_full_weights(generate))
    return sampled_in_shares(generate)


def sample_ahead(model: Any, tokenizer: Any, prompts: list[Any], n: int, sampling: Any,
                 **options: Any) -> None:
    """With ``cluster.max_staleness`` > 0, start sampling ``prompts`` on the rollout workers now (the
    current weights), for the next ``rollout_sampler()`` call with the same arguments to take, so that
    sampling overlaps training; nothing otherwise."""
    if _session is not None and _session.rollout_pool is not None and _session.config.max_staleness > 0:
        _session.rollout_pool.sample_ahead(model, tokenizer, prompts, n, sampling, **options)


def _on_writer(call: Callable[..., T]) -> Callable[..., T]:
    """``call`` made by the writer (rank 0) alone, its result broadcast to every rank."""
    return lambda *args, **kwargs: from_writer(lambda: call(*args, **kwargs))


def _sample_on_writer(pool: Any) -> Callable[..., Any]:
    """``pool.generate`` made by the writer alone, its rollouts broadcast to every rank. The seed, when
    the call has none, is drawn on every rank, so that each rank's global RNG moves as one process's."""
    from posttrain.distributed.rollout_workers import with_seed

    def sample(model: Any, tokenizer: Any, prompts: list[Any], n: int, sampling: Any, **options: Any) -> Any:
        seeded = with_seed(sampling)
        return from_writer(lambda: pool.generate(model, tokenizer, prompts, n, seeded, **options))

    return sample


def check_on_policy(model: Any, rollouts: Any) -> None:
    """Raise a ClusterError when ``rollouts`` were sampled more than ``cluster.max_staleness`` weight
    versions (default 0) behind ``model``'s current weights, and set ``rollouts.staleness`` to how many
    they are. Nothing to check in one process, nor on a trainer rank but the writer, which alone pushes
    the weights and holds their versions."""
    if _session is None or _session.rollout_pool is None or not is_writer():
        return
    current = _session.rollout_pool.version_of(model)
    behind, allowed = current - rollouts.weight_version, _session.config.max_staleness
    if not 0 <= behind <= allowed:
        raise ClusterError(
            f"stale rollouts: sampled with weight version {rollouts.weight_version}, but the policy is at "
            f"version {current} ({behind} optimizer step(s) since), more than cluster.max_staleness="
            f"{allowed} allows. Training on them would be off-policy beyond what the run accepts; sample "
            "again after the step, or raise max_staleness (sampling ahead of training, corrected with "
            "truncated importance weights)")
    rollouts.staleness = behind


__all__ = ["ClusterError", "Rank", "Scorer", "barrier", "check_launched", "check_on_policy", "from_writer",
           "full_state_dict", "full_weights", "is_writer", "launch", "lockstep", "own_dir", "place_workers",
           "rank_rows", "reduce_gradients", "reward_scorer", "rollout_sampler", "sample_ahead", "set_rank",
           "shard", "sharded", "shutdown", "start", "stop", "sum_over_ranks", "this_rank", "through_root",
           "use_workers"]
