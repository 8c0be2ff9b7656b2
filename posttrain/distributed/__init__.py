"""Scale-out: a run's roles on a Ray cluster, chosen by its ``cluster`` config section.

The only package that imports ray or torch.distributed (tests/test_style.py checks it). With an
empty ``cluster.address`` (the default) nothing here imports Ray and a run is one process, as it
always was. Otherwise ``start_run`` (posttrain/runner.py) calls ``start`` once per run and
``Run.finish`` calls ``stop``; in between, the shared RL step looks its reward scorer up with
``reward_scorer()``, which is ``score_completions`` itself in one process and a pool of reward
workers (``reward_workers.RewardPool``) on a cluster.

What runs on a cluster so far: reward workers (reward functions and the code sandbox). Trainer ranks
(``trainers.py``: a torch.distributed group of Ray actors and its data-parallel step) are tested but
no recipe uses them yet, so the config check refuses ``cluster.trainers > 1``, and rollout workers,
until they are wired in (issue 20).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from posttrain.config import ClusterConfig
from posttrain.errors import PosttrainError

Scorer = Callable[..., Any]
"""``score_completions``'s signature: (reward_fns, prompts, completions, columns) -> RewardScores."""


class ClusterError(PosttrainError):
    """The Ray cluster cannot be reached, cannot place what a run asks for, or lost a role for good."""


class _Session:
    """The cluster of the run in progress (one at a time per process) and its reward pool."""

    def __init__(self, config: ClusterConfig) -> None:
        from posttrain.distributed.cluster import Cluster
        from posttrain.distributed.reward_workers import RewardPool

        self.config = config
        self.depth = 1
        self.cluster = Cluster(config)
        try:
            self.reward_pool = RewardPool(self.cluster, config) if config.reward_workers else None
        except BaseException:
            self.cluster.stop()
            raise


_session: _Session | None = None


def start(config: Any) -> None:
    """Connect the run of ``config`` (a recipe config) to the cluster its ``cluster`` section names, if
    any, and place its roles. Raises ClusterError (within ``placement_timeout_s``) when it cannot.

    A run started inside another (best-of-n's SFT rounds) with no cluster of its own, or the same
    one, shares the outer run's; one with a different cluster replaces a session left behind by a
    run that raised before ``stop``."""
    global _session
    cluster: ClusterConfig | None = getattr(config, "cluster", None)
    wanted = cluster is not None and bool(cluster.address.strip())
    if _session is not None and (not wanted or cluster == _session.config):
        _session.depth += 1
        return
    shutdown()
    if wanted:
        _session = _Session(cluster)


def stop() -> None:
    """End the current run's use of the cluster: when the outermost run ends, its actors go and a
    cluster it started stops."""
    if _session is not None:
        _session.depth -= 1
        if _session.depth <= 0:
            shutdown()


def shutdown() -> None:
    """End the session now, however many runs share it (a run that raised never called ``stop``)."""
    global _session
    session, _session = _session, None
    if session is not None:
        session.cluster.stop()


def reward_scorer() -> Scorer:
    """What scores a batch of completions now: the run's reward workers, or this process."""
    if _session is not None and _session.reward_pool is not None:
        return _session.reward_pool.score
    from posttrain.rewards.base import score_completions

    return score_completions


__all__ = ["ClusterError", "Scorer", "reward_scorer", "shutdown", "start", "stop"]
