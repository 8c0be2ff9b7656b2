"""Scale-out: code rewards on 1 and 2 reward workers, and the main job's GRPO step on rollout workers
(Ray actors), each against one process.

    python benchmarks/scaling.py [--cases rewards,grpo] [--address local] [--rounds 2] [--limit 0]
                                 [--steps 3]

rewards: HumanEval's canonical solutions (164 programs with their tests) scored by the `code_tests`
reward: in this process (the sandbox's thread pool over every core of the machine), then on a cluster
(`cluster.address`, default `local`: a Ray cluster on this machine for the measurement) with 1 and
with 2 reward workers of 1 CPU each. Each worker runs its share on its own core, so on a 2-core
machine 2 workers should approach 2x one (target >= 1.7x). Each round starts its own cluster session
and scores the batch once untimed (worker start, sandbox check) before timing it.

grpo: configs/grpo-arithmetic.yaml on the embedded SmolLM2-135M for `--steps` steps (no held-out
evaluation), in one process, then with `cluster.address` and 1 rollout worker holding every core of
the machine (the cost of the Ray path: target <= 10% slower per step), then with 2 rollout workers of
half the cores each, then on 2 trainer ranks of half the cores each (every rank samples, scores and
trains its share of the batch). A step's seconds are its time/rollout_s + time/update_s; step 1 (the
first weight push, the engines' first batch) is not counted. On the Ray path the driver's pushes
(seconds, MB), the rollout calls' wall time against their workers' own sampling time, and the
rollouts' size are recorded; a short profile after the rounds times a weight push, a worker fetching
and loading it, and an actor call's round trip.

The cases alternate for `--rounds` rounds so that a busy machine slows them alike. Prints one JSON
object: seconds per round, medians and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from posttrain import distributed
from posttrain.config import ClusterConfig, load_config
from posttrain.eval.humaneval import problems
from posttrain.recipes import grpo
from posttrain.rewards.base import BUILTIN_REWARDS, RewardScores, score_completions
from posttrain.rollout import Rollouts

GRPO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "grpo-arithmetic.yaml"

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


def reward_cases(args: argparse.Namespace) -> dict[str, Any]:
    """Code rewards in one process and on 1 and 2 reward workers, alternating over the rounds."""
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
    return {
        "programs": len(batch[2]), "seconds": seconds, "median_s": median, "passed": passed,
        "ratio_2_workers_vs_1": round(median["reward_workers_1"] / median["reward_workers_2"], 3),
        "ratio_2_workers_vs_one_process": round(median["one_process"] / median["reward_workers_2"], 3),
    }


class RayPathProbe:
    """Records, in the driver, what the Ray path adds to a GRPO step: each weight push (seconds, MB) and
    each rollout call (its wall time, its workers' own sampling seconds, the rollouts' pickled size), and
    the workers restarted meanwhile (a new process id: Ray's memory monitor kills a worker when the
    machine runs short of memory, and the call waits for the restart)."""

    def __init__(self) -> None:
        self.pushes: list[list[tuple[float, float]]] = []  # per run: (seconds, MB) of each push
        self.calls: list[list[dict[str, float]]] = []  # per run: each rollout call
        self.restarts = 0
        self._parts: list[Rollouts] = []

    @contextmanager
    def installed(self) -> Iterator[RayPathProbe]:
        """The probe's wrappers around the rollout pool's push and generate, for one run."""
        from posttrain.distributed.rollout_workers import RolloutPool

        push, generate, concat = RolloutPool.push, RolloutPool.generate, Rollouts.concat.__func__
        probe = self
        self.pushes.append([])
        self.calls.append([])

        def timed_push(pool: Any, model: torch.nn.Module, engine_options: dict[str, Any] | None) -> str:
            from posttrain.distributed.rollout_workers import REDUCED_DTYPES

            started, before = time.perf_counter(), pool._weights
            sent_before = set(before)
            sent_as = push(pool, model, engine_options)
            if pool._weights is not before or sent_as not in sent_before:  # a new object was put
                cast = REDUCED_DTYPES.get(sent_as)
                size = sum(p.numel() * (cast.itemsize if cast else p.element_size())
                           for p in model.parameters() if p.requires_grad)
                probe.pushes[-1].append((time.perf_counter() - started, size / 2**20))
            return sent_as

        def timed_generate(pool: Any, *args: Any, **kwargs: Any) -> Rollouts:
            import ray

            started = time.perf_counter()
            rollouts = generate(pool, *args, **kwargs)
            wall_s = time.perf_counter() - started
            pids = ray.get([worker.pid.remote() for worker in pool.workers])
            probe.restarts += sum(now != before for now, before in zip(pids, pool.pids))
            pool.pids = pids
            parts, probe._parts = probe._parts, []
            probe.calls[-1].append({"wall_s": wall_s,
                                "workers_sampling_s": max(part.timing.get("seconds", 0.0) for part in parts),
                                "rollouts_kb": sum(len(pickle.dumps(part)) for part in parts) / 1024})
            return rollouts

        def kept_concat(cls: type[Rollouts], parts: list[Rollouts]) -> Rollouts:
            probe._parts = list(parts)  # the workers' own results, before the pool's timing replaces theirs
            return concat(cls, parts)

        RolloutPool.push, RolloutPool.generate = timed_push, timed_generate
        Rollouts.concat = classmethod(kept_concat)  # type: ignore[method-assign]
        try:
            yield self
        finally:
            RolloutPool.push, RolloutPool.generate = push, generate
            Rollouts.concat = classmethod(concat)  # type: ignore[method-assign]


def grpo_run(out: Path, steps: int, overrides: list[str]) -> dict[str, list[float]]:
    """One GRPO run of the main job's config; the seconds of each step after the first."""
    config = load_config(grpo.Config, GRPO_CONFIG, [
        f"run.output_dir={out}", "run.name=bench", "run.progress=false", f"run.steps={steps}",
        "run.eval_every=0", "run.save_every=0", "data.eval_size=0", *overrides])
    run_dir = distributed.launch(grpo.train, config)  # on trainer ranks with cluster.trainers > 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_logged = [row for row in rows if "time/rollout_s" in row and row["step"] > 1]
    return {key: [row[f"time/{key}"] for row in steps_logged] for key in ("rollout_s", "update_s")}


def grpo_cases(args: argparse.Namespace) -> dict[str, Any]:
    """The GRPO step in one process, with 1 and 2 rollout workers, and on 2 trainer ranks (each samples,
    scores and trains its share of the batch), alternating over the rounds."""
    cores = len(os.sched_getaffinity(0))
    ray_path = [f"cluster.address={args.address}"]
    cases = {
        "one_process": [],
        "rollout_workers_1": [*ray_path, "cluster.rollout_workers=1", f"cluster.rollout_cpus={cores}"],
        "rollout_workers_2": [*ray_path, "cluster.rollout_workers=2", f"cluster.rollout_cpus={cores / 2:g}"],
        "trainer_ranks_2": [*ray_path, "cluster.trainers=2", f"cluster.trainer_cpus={cores / 2:g}"],
    }
    step_s: dict[str, list[list[float]]] = {name: [] for name in cases}  # per round: each counted step
    parts: dict[str, dict[str, list[float]]] = {name: {"rollout_s": [], "update_s": []} for name in cases}
    probes: dict[str, RayPathProbe] = {name: RayPathProbe() for name in cases}
    out = Path(tempfile.mkdtemp(prefix="posttrain-scaling-"))
    try:
        for round_index in range(args.rounds):
            for name, overrides in cases.items():
                with probes[name].installed():
                    seconds = grpo_run(out / f"{name}-{round_index}", args.steps, overrides)
                pairs = zip(seconds["rollout_s"], seconds["update_s"])
                step_s[name].append([round(rollout + update, 3) for rollout, update in pairs])
                for key, values in seconds.items():
                    parts[name][key] += values
    finally:
        shutil.rmtree(out, ignore_errors=True)
    median = {name: round(statistics.median(x for run in runs for x in run), 3)
              for name, runs in step_s.items()}
    per_round = {name: [statistics.median(run) for run in runs] for name, runs in step_s.items()}
    return {
        "config": str(GRPO_CONFIG.relative_to(GRPO_CONFIG.parents[1])), "steps_per_run": args.steps,
        "cases": cases, "step_s": step_s, "median_step_s": median,
        "ratio_vs_one_process_per_round": {  # each round's cases ran back to back: paired on a busy machine
            name: [round(mine / theirs, 3) for mine, theirs in zip(rounds, per_round["one_process"])]
            for name, rounds in per_round.items() if name != "one_process"},
        "median_rollout_s": {name: round(statistics.median(v["rollout_s"]), 3) for name, v in parts.items()},
        "median_update_s": {name: round(statistics.median(v["update_s"]), 3) for name, v in parts.items()},
        "ratio_1_worker_vs_one_process": round(median["rollout_workers_1"] / median["one_process"], 3),
        "ratio_2_workers_vs_one_process": round(median["rollout_workers_2"] / median["one_process"], 3),
        "ratio_2_ranks_vs_one_process": round(median["trainer_ranks_2"] / median["one_process"], 3),
        "ray_path": {name: probe_summary(probe) for name, probe in probes.items() if any(probe.calls)},
        "profile": ray_profile(args.address),
    }


def probe_summary(probe: RayPathProbe) -> dict[str, float]:
    """Medians over the rollout calls and pushes of the steps counted (each run's first left out)."""
    calls = [call for run in probe.calls for call in run[1:]]
    pushes = [push for run in probe.pushes for push in run[1:]]
    overhead_s = [call["wall_s"] - call["workers_sampling_s"] for call in calls]
    return {
        "push_s": round(statistics.median(seconds for seconds, _ in pushes), 3),
        "push_mb": round(pushes[0][1], 1),
        "rollout_call_s": round(statistics.median(call["wall_s"] for call in calls), 3),
        "workers_sampling_s": round(statistics.median(call["workers_sampling_s"] for call in calls), 3),
        "call_minus_sampling_s": round(statistics.median(overhead_s), 3),
        "rollouts_kb": round(statistics.median(call["rollouts_kb"] for call in calls), 1),
        "worker_restarts": probe.restarts,
    }


def fetch_and_load(worker: Any, box: list[Any]) -> None:
    """In a rollout worker (``__ray_call__``): fetch the pushed weights and load them, as a step does."""
    import ray

    from posttrain.distributed.rollout_workers import load_weights

    load_weights(worker.model, ray.get(box[0]))


def ray_profile(address: str, repeats: int = 3, calls: int = 20) -> dict[str, float]:
    """One rollout worker on ``address``: a weight push (ray.put of the policy's trainable tensors), the
    worker fetching and loading it, and an actor call's round trip (medians of the repeats)."""
    import ray

    from posttrain.distributed.rollout_workers import REDUCED_DTYPES
    from posttrain.runner import load_policy

    config = load_config(grpo.Config, GRPO_CONFIG, [])
    model_config, cast = config.model, REDUCED_DTYPES.get(config.sampling.dtype)
    model, _, _ = load_policy(model_config)
    trainable = {name: p.detach().to(cast) if cast else p.detach()  # as a push sends them
                 for name, p in model.named_parameters() if p.requires_grad}
    distributed.start(SimpleNamespace(cluster=ClusterConfig(address=address, rollout_workers=1),
                                      model=model_config))
    try:
        worker = distributed._session.rollout_pool.workers[0]
        put_s, load_s, call_s = [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            ref = ray.put(trainable)
            put_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            ray.get(worker.__ray_call__.remote(fetch_and_load, [ref]))
            load_s.append(time.perf_counter() - started)
            del ref
        for _ in range(calls):
            started = time.perf_counter()
            ray.get(worker.pid.remote())
            call_s.append(time.perf_counter() - started)
    finally:
        distributed.shutdown()
    return {"weights_mb": round(sum(t.numel() * t.element_size() for t in trainable.values()) / 2**20, 1),
            "parameters": sum(t.numel() for t in trainable.values()),
            "push_put_s": round(statistics.median(put_s), 3),
            "worker_fetch_and_load_s": round(statistics.median(load_s), 3),
            "actor_call_round_trip_ms": round(1000 * statistics.median(call_s), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="rewards,grpo", help="which parts: rewards, grpo or both")
    parser.add_argument("--address", default="local", help="cluster.address: local, auto or host:port")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of every case")
    parser.add_argument("--limit", type=int, default=0, help="rewards: first N problems (0: all 164)")
    parser.add_argument("--steps", type=int, default=3, help="grpo: steps per run (the first not counted)")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = sorted(set(chosen) - {"rewards", "grpo"})
    if unknown or args.steps < 2:
        parser.error(f"--cases takes rewards and/or grpo (got {', '.join(unknown)})" if unknown
                     else "--steps must be >= 2: the first step is not counted")
    started = time.perf_counter()
    result: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "address": args.address,
                              "rounds": args.rounds}
    if "rewards" in chosen:
        result["rewards"] = reward_cases(args)
    if "grpo" in chosen:
        result["grpo"] = grpo_cases(args)
    result.update(load_average_1min=round(os.getloadavg()[0], 2),
                  wall_s=round(time.perf_counter() - started, 1))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
