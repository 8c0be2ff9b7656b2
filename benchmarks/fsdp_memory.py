"""Trainer ranks, ddp against fsdp: what each rank holds and how long an SFT step takes.

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/fsdp_memory.py [--model M] [--rounds 2] [--steps 3]

Two trainer ranks (Ray actors of a local cluster, gloo, 1 CPU each) each load the model, then with
``cluster.sharding`` ddp (a full copy each) or fsdp (``posttrain.distributed.fsdp.shard``) take
``--steps`` SFT steps through the recipes' own seams (``training.accumulate``, ``Stepper``, the chunked
log-probs) on 8 random rows of 128 tokens, micro-batches of 2. Each rank reports the bytes it holds
(its parameters, its gradients before the optimizer step and its AdamW state: local shards under fsdp),
its peak resident memory (``ru_maxrss``: model loading, torch and Ray included; the malloc setting above
makes freed tensors go back to the system, so the peak follows what is live, not what glibc keeps) and
the median step time after the first. The cases alternate for ``--rounds`` rounds (a busy machine slows
them alike). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import statistics
import time
from typing import Any

import torch

from posttrain import distributed
from posttrain.config import ClusterConfig, ModelConfig, OptimConfig
from posttrain.distributed.cluster import Cluster
from posttrain.distributed.trainers import TrainerGroup


def held_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of this rank's part of ``tensors`` (a DTensor's local shard)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)


def sft_steps(index: int, world: int, model_name: str, sharding: str, steps: int) -> dict[str, Any]:
    """On a rank: load, shard (fsdp), ``steps`` SFT steps; what it holds, its peak memory, step times."""
    from posttrain.logprobs import token_logprobs
    from posttrain.losses import aggregate
    from posttrain.runner import load_policy
    from posttrain.training import Stepper, accumulate, build_optimizer

    distributed.set_rank(distributed.Rank(index, world, sharding))
    try:
        torch.manual_seed(0)
        model = distributed.shard(load_policy(ModelConfig(name=model_name, autocast="none"))[0])
        optim = OptimConfig(lr=1e-5)
        optimizer = build_optimizer(model, optim)
        stepper = Stepper(model, optimizer, None, optim)
        ids = torch.randint(0, model.config.vocab_size, (8, 128))
        mask = torch.ones_like(ids)

        def micro_loss(rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
            logprobs, _ = token_logprobs(model, ids[rows], mask[rows], mask[rows])
            return aggregate(-logprobs, mask[rows].float(), "token_mean"), {}

        seconds, grads = [], 0
        for _ in range(steps):
            started = time.perf_counter()
            accumulate(stepper, mask, 2, "token_mean", micro_loss)
            grads = held_bytes([p.grad for p in model.parameters() if p.grad is not None])  # freed by step()
            stepper.step()
            seconds.append(time.perf_counter() - started)
        state = [t for per_param in optimizer.state.values() for t in per_param.values()
                 if torch.is_tensor(t) and t.dim() > 0]
        return {"params_mib": held_bytes(list(model.parameters())) / 2**20, "grads_mib": grads / 2**20,
                "adamw_mib": held_bytes(state) / 2**20,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "step_s": statistics.median(seconds[1:] or seconds)}
    finally:
        distributed.set_rank(distributed.Rank())


def one_case(model_name: str, sharding: str, steps: int) -> list[dict[str, Any]]:
    config = ClusterConfig(address="local", trainers=2, sharding=sharding)
    cluster = Cluster(config)
    try:
        group = TrainerGroup(cluster, config)
        # by reference (this file imported as a module), not pickled by value as __main__'s would be
        on_rank = importlib.import_module("benchmarks.fsdp_memory").sft_steps
        results = group.run(on_rank, model_name, sharding, steps)
        group.stop()
        return results
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[list[dict[str, Any]]]] = {"ddp": [], "fsdp": []}
    for _ in range(args.rounds):
        for sharding in runs:
            runs[sharding].append(one_case(args.model, sharding, args.steps))
    summary: dict[str, Any] = {"model": args.model, "rounds": args.rounds, "steps": args.steps}
    for sharding, rounds in runs.items():
        ranks = [rank for one_round in rounds for rank in one_round]
        summary[sharding] = {key: round(statistics.median(rank[key] for rank in ranks), 3)
                             for key in ranks[0]}
    summary["fsdp_over_ddp"] = {key: round(summary["fsdp"][key] / summary["ddp"][key], 3)
                                for key in summary["ddp"]}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
