"""Reward workers: Ray actors that score shares of a batch with the reward functions and the sandbox.

``RewardPool.score`` has ``score_completions``'s signature and result: the batch is cut into one
contiguous share per worker, each worker runs ``score_completions`` on its share (the code reward's
sandbox included, so code rewards use the cores of every node), and the shares come back in order.
A worker pins itself to its share of its node's cores (``cluster.reward_cpus`` of them): Ray counts
CPUs but does not pin, and the sandbox would otherwise start one program per core of the machine in
every worker at once.

Faults: a worker that dies (SIGKILL, out of memory, a lost node) is restarted by Ray and the share it
was scoring is sent again (``max_restarts`` / ``max_task_retries``), up to ``RESTARTS`` times; a
reward function that raises is not retried: its RewardError names the function and the sample's
index in the whole batch, as in one process.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import ray
from ray import cloudpickle

from posttrain.config import ClusterConfig
from posttrain.distributed import ClusterError
from posttrain.distributed.cluster import (
    RESTARTS,
    Cluster,
    Role,
    pin_to_share_of_cores,
    share_bounds,
    started,
)
from posttrain.errors import RewardError
from posttrain.rewards.base import RewardScores, score_completions
from posttrain.rewards.calling import TrainerState


@ray.remote
class RewardWorker:
    """Scores shares of batches in its own process, on its share of its node's cores."""

    def __init__(self, bundle_index: int, cpus: float) -> None:
        pin_to_share_of_cores(bundle_index, cpus)

    def pid(self) -> int:
        return os.getpid()

    def score(self, reward_fns: list[tuple[str, Any, float]], prompts: list[Any], completions: list[Any],
              columns: dict[str, Any], **trainer_arguments: Any) -> RewardScores:
        return score_completions(reward_fns, prompts, completions, columns, **trainer_arguments)


class RewardPool:
    """``cluster.reward_workers`` reward workers placed on the run's cluster."""

    def __init__(self, cluster: Cluster, config: ClusterConfig) -> None:
        role = Role.of(config, "reward")
        options = cluster.place(role)
        self._sent: tuple[list[Any], Any] | None = None  # the reward functions last sent, and their object
        self.workers = [RewardWorker.options(**option, max_restarts=RESTARTS, max_task_retries=RESTARTS)
                        .remote(index, role.cpus) for index, option in enumerate(options)]
        self.pids = started(self.workers, "reward", cluster.address)

    def score(self, reward_fns: list[tuple[str, Any, float]], prompts: list[Any], completions: list[Any],
              columns: dict[str, Any], *, completion_ids: list[list[int]] | None = None,
              trainer_state: TrainerState | None = None) -> RewardScores:
        """``score_completions(reward_fns, prompts, completions, columns, ...)``, the batch shared out;
        what the functions log (``log_metric``, ``log_extra``) comes back in order with the scores."""
        n = len(completions)
        if n == 0 or len(prompts) != n:  # nothing to share out, or its own error to raise
            return score_completions(reward_fns, prompts, completions, columns, completion_ids=completion_ids,
                                     trainer_state=trainer_state)
        if self._sent is None or self._sent[0] is not reward_fns:  # a recipe scores with one list: sent once
            pickle_by_value([fn for _, fn, _ in reward_fns])
            self._sent = (reward_fns, ray.put(reward_fns))  # a reward model's weights too, not every step
        fns = self._sent[1]
        shares = share_bounds(n, len(self.workers))
        pending = [worker.score.remote(fns, prompts[start:stop], completions[start:stop],
                                       share_of_columns(columns, start, stop, n),
                                       completion_ids=completion_ids[start:stop] if completion_ids else None,
                                       trainer_state=trainer_state)
                   for worker, (start, stop) in zip(self.workers, shares)]
        parts = [self._result(ref, index, start, stop)
                 for index, (ref, (start, stop)) in enumerate(zip(pending, shares))]
        return RewardScores.concat(parts)

    def _result(self, ref: Any, worker: int, start: int, stop: int) -> RewardScores:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, RewardError):  # its indices count from the share's first sample
                raise RewardError(shifted(str(cause), start)) from None
            raise (cause if isinstance(cause, Exception) else error) from None
        except ray.exceptions.RayActorError as error:
            raise ClusterError(
                f"reward worker {worker} died {RESTARTS + 1} times while scoring samples {start}-{stop - 1} "
                f"(restarted {RESTARTS} times, the share sent again each time); the last death: {error}. "
                "A reward function that exhausts the worker's memory or kills its process does this"
            ) from None


def share_of_columns(columns: dict[str, Any], start: int, stop: int, n: int) -> dict[str, Any]:
    """Per-sample columns (sequences of length n) cut to the share; other values (trainer_state) whole."""
    return {key: value[start:stop] if isinstance(value, list | tuple) and len(value) == n else value
            for key, value in columns.items()}


def shifted(message: str, offset: int) -> str:
    """A RewardError's message with its sample and row indices counted in the whole batch."""
    return re.sub(r"\b(sample|row) (\d+)\b", lambda m: f"{m[1]} {int(m[2]) + offset}", message)


def pickle_by_value(functions: list[Any]) -> None:
    """Send the code of user reward functions to the workers: a reward file loaded by path, or a test
    or notebook module, cannot be imported by name on another node. posttrain's own, the standard
    library's and installed packages' functions go by reference."""
    for fn in functions:
        name = getattr(getattr(fn, "func", fn), "__module__", None) or ""
        module = sys.modules.get(name)
        top = name.partition(".")[0]
        if module is None or name == "__main__" or top == "posttrain" or top in sys.stdlib_module_names:
            continue
        where = getattr(module, "__file__", None) or ""
        if "site-packages" not in where and "dist-packages" not in where:
            cloudpickle.register_pickle_by_value(module)
