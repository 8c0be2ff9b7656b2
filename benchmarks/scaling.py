"""Scale-out: code rewards on 1 and 2 reward workers (Ray actors), against one process.

    python benchmarks/scaling.py [--address local] [--rounds 2] [--limit 0]

HumanEval's canonical solutions (164 programs with their tests) scored by the `code_tests` reward:
in this process (the sandbox's thread pool over every core of the machine), then on a cluster
(`cluster.address`, default `local`: a Ray cluster on this machine for the measurement) with 1 and
with 2 reward workers of 1 CPU each. Each worker runs its share on its own core, so on a 2-core
machine 2 workers should approach 2x one (target >= 1.7x). The cases alternate for `--rounds`
rounds so that a busy machine slows them alike; each round starts its own cluster session and
scores the batch once untimed (worker start, sandbox check) before timing it. Prints one JSON object:
seconds per round, medians, the ratios and how many programs passed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from posttrain import distributed
from posttrain.config import ClusterConfig
from posttrain.eval.humaneval import problems
from posttrain.rewards.base import BUILTIN_REWARDS, RewardScores, score_completions

Batch = tuple[list[Any], list[Any], list[Any], dict[str, Any]]


def humaneval_batch(limit: int) -> Batch:
    """(reward functions, prompts, completions, columns): each problem's stub and canonical body."""
    rows = problems(limit)
    columns = {"tests": [row["tests"] for row in rows], "entry_point": [row["entry_point"] for row in rows]}
    fns = [("code_tests", BUILTIN_REWARDS["code_tests"], 1.0)]
    return fns, [row["prompt"] for row in rows], [row["canonical_solution"] for row in rows], columns


def timed(score: Callable[..., RewardScores], batch: Batch) -> tuple[float, int]:
    started = time.perf_counter()
    scores = score(*batch)
    return time.perf_counter() - started, int((scores.total == 1.0).sum())


def on_cluster(address: str, workers: int, batch: Batch) -> tuple[float, int]:
    distributed.start(SimpleNamespace(cluster=ClusterConfig(address=address, reward_workers=workers)))
    try:
        score = distributed.reward_scorer()
        score(*batch)  # untimed: the workers' first sandbox runs check the isolation layers
        return timed(score, batch)
    finally:
        distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="local", help="cluster.address: local, auto or host:port")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of every case")
    parser.add_argument("--limit", type=int, default=0, help="first N problems (0: all 164)")
    args = parser.parse_args()
    batch = humaneval_batch(args.limit)
    cases: dict[str, Callable[[], tuple[float, int]]] = {
        "one_process": lambda: timed(score_completions, batch),
        "reward_workers_1": lambda: on_cluster(args.address, 1, batch),
        "reward_workers_2": lambda: on_cluster(args.address, 2, batch),
    }
    timed(score_completions, batch)  # untimed warm-up of the in-process sandbox
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    passed: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, run in cases.items():
            elapsed, passed[name] = run()
            seconds[name].append(round(elapsed, 3))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(json.dumps({
        "programs": len(batch[2]), "cores": len(os.sched_getaffinity(0)), "address": args.address,
        "rounds": args.rounds, "seconds": seconds, "median_s": median, "passed": passed,
        "ratio_2_workers_vs_1": round(median["reward_workers_1"] / median["reward_workers_2"], 3),
        "ratio_2_workers_vs_one_process": round(median["one_process"] / median["reward_workers_2"], 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
