"""Start, join and stop a run's Ray cluster, and place a role's actors on it.

A role (reward workers, rollout workers, trainer ranks) is ``count`` actors each asking for
``cpus`` and ``gpus``. It gets a placement group, one bundle per actor, as OpenRLHF and verl do. Unlike
OpenRLHF's ``ray.get(pg.ready())`` (launcher.py), which waits forever for resources that never come,
a request is first compared with the cluster's totals and largest node (an error at once), then given
``placement_timeout_s`` to be placed (resources held by other jobs), and either way the error names
what was asked, what the cluster has and what to change.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from posttrain.config import ClusterConfig
from posttrain.distributed import ClusterError

RESTARTS = 3
"""Restarts of a dead worker (and re-sends of its share) before the run stops with a ClusterError."""
START_TIMEOUT_S = 120.0
"""Time for a role's actors to start: a fresh process imports torch and posttrain (seconds each)."""


@dataclass(frozen=True)
class Role:
    """``count`` actors of one kind, each asking the cluster for ``cpus`` and ``gpus``."""

    name: str  # the config's prefix: "reward" for cluster.reward_workers / reward_cpus / reward_gpus
    count: int
    cpus: float
    gpus: float
    strategy: str = "SPREAD"  # Ray's: SPREAD over nodes (reward workers), PACK on few (trainer ranks)

    @property
    def bundle(self) -> dict[str, float]:
        return {key: value for key, value in (("CPU", self.cpus), ("GPU", self.gpus)) if value > 0}

    def describe(self) -> str:
        asks = " and ".join(f"{value:g} {key}" for key, value in self.bundle.items())
        return f"{self.count} {self.name} worker(s) of {asks} each (cluster.{self.count_key})"

    @property
    def count_key(self) -> str:
        return "trainers" if self.name == "trainer" else f"{self.name}_workers"

    @classmethod
    def of(cls, config: ClusterConfig, name: str) -> Role:
        """The role ``name`` (trainer, rollout, reward) as ``config`` asks for it; trainer ranks PACK."""
        count = config.trainers if name == "trainer" else getattr(config, f"{name}_workers")
        return cls(name, count, getattr(config, f"{name}_cpus"), getattr(config, f"{name}_gpus"),
                   strategy="PACK" if name == "trainer" else "SPREAD")


def roles(config: ClusterConfig, trainers: bool, rollouts: bool = True) -> list[Role]:
    """The roles a run of ``config`` places: its trainer ranks (when ``trainers``), rollout workers (when
    ``rollouts``: a run with a model to sample from) and reward workers, each only when asked for."""
    wanted = [("trainer", trainers), ("rollout", rollouts), ("reward", True)]
    return [role for name, asked in wanted if asked and (role := Role.of(config, name)).count > 0]


def _resources(resources: dict[str, float]) -> str:
    shown = {key: resources.get(key, 0.0) for key in ("CPU", "GPU")}
    return ", ".join(f"{value:g} {key}" for key, value in shown.items())


class Cluster:
    """The Ray cluster of one run: started here (``local``) or joined (``auto``, host:port, ray://)."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.address = config.address.strip()
        self.groups: list[PlacementGroup] = []
        # a process the user already connected (ray.init in a notebook) keeps its connection as it is
        self.connected_here = not ray.is_initialized()
        if not self.connected_here:
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from a training run
        _check_listening(self.address)
        try:
            if self.address == "local":
                ray.init(include_dashboard=False, logging_level="WARNING",
                         runtime_env={"env_vars": {"PYTHONPATH": _python_path()}})
            else:
                ray.init(address=self.address, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ClusterError(
                f"cluster.address={self.address!r}: cannot reach a Ray cluster there ({error}). Start one "
                "with `ray start --head --port 6379` and join it with cluster.address=HOST:6379, or use "
                "cluster.address=local for a cluster on this machine for the run") from error

    def place(self, role: Role) -> list[dict[str, Any]]:
        """Reserve ``role``'s resources; returns the ``.options(...)`` of each of its actors. Raises
        ClusterError at once when the cluster could never hold the role, and after
        ``placement_timeout_s`` when it cannot now."""
        self.check_fits([role])
        total = ray.cluster_resources()
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        sizes = "; ".join(_resources(node) for node in nodes)
        group = placement_group([role.bundle] * role.count, strategy=role.strategy)
        try:
            ray.get(group.ready(), timeout=self.config.placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(group)
            raise ClusterError(
                f"the Ray cluster at {self.address!r} could not place {role.describe()} within "
                f"cluster.placement_timeout_s={self.config.placement_timeout_s:g} s: it has "
                f"{_resources(total)} in all, {_resources(ray.available_resources())} free now ({sizes} "
                "per node); other jobs hold the rest. Wait for them, lower the request, or raise "
                "cluster.placement_timeout_s on a cluster that adds nodes on demand") from None
        self.groups.append(group)
        return [{"num_cpus": role.cpus, "num_gpus": role.gpus,
                 "scheduling_strategy": PlacementGroupSchedulingStrategy(
                     placement_group=group, placement_group_bundle_index=index)}
                for index in range(role.count)]

    def check_fits(self, wanted: list[Role]) -> None:
        """Raise ClusterError at once when the cluster could never hold the ``wanted`` roles together:
        their resources summed exceed its totals, or one worker's share exceeds every node."""
        total = ray.cluster_resources()
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        asks: dict[str, float] = {}
        for role in wanted:
            for key, value in role.bundle.items():
                asks[key] = asks.get(key, 0.0) + value * role.count
        short = [key for key, value in asks.items() if value > total.get(key, 0.0)]
        too_big = [role for role in wanted
                   if not any(all(node.get(k, 0.0) >= v for k, v in role.bundle.items()) for node in nodes)]
        if not short and not too_big:
            return
        why = (f"{' and '.join(f'{asks[k]:g} {k}' for k in short)} in all" if short
               else f"a node with one worker's share ({too_big[0].name})")
        counts = ", ".join(f"cluster.{role.count_key}" for role in wanted)
        shares = ", ".join(f"cluster.{role.name}_cpus / _gpus" for role in wanted)
        raise ClusterError(
            f"the run asks for {', '.join(role.describe() for role in wanted)}, that is {why}, but the Ray "
            f"cluster at {self.address!r} has {_resources(total)} in all ({len(nodes)} node(s): "
            f"{'; '.join(_resources(node) for node in nodes)}). Lower {counts} (how many) or {shares} "
            "(each one's share), or add a node (`ray start --address HOST:PORT` on another machine)")

    def stop(self) -> None:
        """Release the run's placement groups (their actors end with them) and disconnect, unless the
        process was connected before the run; a cluster started for the run (``local``) stops."""
        for group in self.groups:
            remove_placement_group(group)
        self.groups.clear()
        if self.connected_here:
            ray.shutdown()


def share_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` shares of ``n`` rows for up to ``workers`` workers or ranks, sizes
    differing by at most one, none empty: ``share_bounds(5, 2) == [(0, 3), (3, 5)]``."""
    count = max(1, min(workers, n))
    size, extra = divmod(n, count)
    bounds, start = [], 0
    for index in range(count):
        stop = start + size + (index < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def pin_to_share_of_cores(bundle_index: int, cpus: float) -> None:
    """Restrict this process (and the sandboxed programs it starts) to ``cpus`` cores of its node: the
    k-th worker placed on a node takes the k-th group of cores."""
    group = ray.util.get_current_placement_group()
    if group is None:
        return
    nodes = ray.util.placement_group_table(group)["bundles_to_node_id"]
    slot = sum(1 for index in range(bundle_index) if nodes[index] == nodes[bundle_index])
    cores = sorted(os.sched_getaffinity(0))
    width = min(len(cores), max(1, round(cpus)))
    os.sched_setaffinity(0, {cores[(slot * width + k) % len(cores)] for k in range(width)})
    torch.set_num_threads(width)


def started(workers: list[Any], role: str, address: str) -> list[int]:
    """The process ids of a role's just-created actors once each has started (each has a ``pid``
    method); a ClusterError when one has not within START_TIMEOUT_S."""
    try:
        return ray.get([worker.pid.remote() for worker in workers], timeout=START_TIMEOUT_S)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as error:
        raise ClusterError(
            f"the {role} workers did not start on the Ray cluster at {address!r} within "
            f"{START_TIMEOUT_S:g} s ({type(error).__name__}: {error}); every node needs posttrain "
            "installed (pip install 'posttrain[distributed]')") from error


def _python_path() -> str:
    """PYTHONPATH for the workers of a local cluster: the folder holding this posttrain package first,
    so that they import the driver's code even where another copy is installed."""
    import posttrain

    root = os.path.dirname(os.path.dirname(os.path.abspath(posttrain.__file__)))
    return os.pathsep.join([root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def _check_listening(address: str) -> None:
    """Fail at once when nothing answers at a host:port address: ``ray.init`` keeps retrying for
    minutes. A cluster started with token authentication (Ray does so when ~/.ray/auth_token
    exists) needs RAY_AUTH_MODE=token in the run's environment as well."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address in ("local", "auto") or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise ClusterError(
            f"cluster.address={address!r}: nothing answers there ({error}). Is the head running? Start it "
            f"with `ray start --head --port {port}`, or use cluster.address=local for a cluster on this "
            "machine for the run") from error
