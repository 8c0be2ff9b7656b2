"""Trainer ranks together with rollout and reward workers on a real two-node Ray cluster: rank 0 drives
the workers and broadcasts their rollouts and scores, and the run takes the single-process steps."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from posttrain import distributed
from posttrain.config import ClusterConfig, ModelConfig, load_config
from posttrain.distributed import ClusterError
from posttrain.recipes import grpo

LENGTHS = Path(__file__).parent / "lengths.py"
GRPO = ["model.autocast=none", "run.name=t", "run.progress=false", "run.steps=2", "data.train=arithmetic",
        "data.train_size=8", "data.eval_size=0", "sampling.max_new_tokens=4", "sampling.dtype=float32",
        "optim.warmup_steps=0", "optim.schedule=constant", "optim.lr=1e-3", "prompts_per_step=2",
        "samples_per_prompt=3", "micro_batch_size=2", "loss_agg=token_mean"]
# 2 ranks + 1 rollout worker + 1 reward worker at half a CPU each: the fixture's 2 CPUs
ON_CLUSTER = ["cluster.trainers=2", "cluster.rollout_workers=1", "cluster.reward_workers=1",
              "cluster.trainer_cpus=0.5", "cluster.rollout_cpus=0.5", "cluster.reward_cpus=0.5"]

SPY = '''
import json
import os

import posttrain.rollout
from posttrain.distributed import this_rank

if this_rank().world > 1:  # loaded on a trainer rank: the rollout workers sample, a rank never does
    def refused(*args, **kwargs):
        raise AssertionError("a trainer rank sampled the batch itself")

    posttrain.rollout.generate = refused


def length(completions, trainer_state, **kwargs):
    """The completions' lengths (as tests/distributed/lengths.py), each call logged with where it ran."""
    with open({log!r}, "a") as out:
        out.write(json.dumps({{"pid": os.getpid(), "world": this_rank().world, "samples": len(completions),
                              "step": trainer_state.global_step}}) + "\\n")
    return [float(len(str(completion))) for completion in completions]
'''


def _run(model_dir: str, out: Path, reward: str, *overrides: str) -> Path:
    config = load_config(grpo.Config, None, [f"model.name={model_dir}", f"run.output_dir={out}", *GRPO,
                                             f"rewards=[{reward}]", *overrides])
    return distributed.launch(grpo.train, config)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _losses(run_dir: Path) -> list[float]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [row["train/loss"] for row in rows if "train/loss" in row]


def test_two_ranks_with_rollout_and_reward_workers_take_the_single_process_steps(
        ray_cluster: str, tiny_model_dir: str, tmp_path: Path) -> None:
    spy, calls = tmp_path / "spy.py", tmp_path / "calls.jsonl"
    spy.write_text(SPY.format(log=str(calls)))
    one = _run(tiny_model_dir, tmp_path / "one", f"{LENGTHS}:length")
    two = _run(tiny_model_dir, tmp_path / "two", f"{spy}:length", f"cluster.address={ray_cluster}",
               *ON_CLUSTER)
    start, want, got = _weights(Path(tiny_model_dir)), _weights(one / "final"), _weights(two / "final")
    assert max(float((want[k] - start[k]).abs().max()) for k in want) > 1e-4, "the steps moved the weights"
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst < 1e-5, f"2 ranks + workers end {worst:.2e} from 2 single-process steps"
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5, abs=1e-6)
    samples = [[json.loads(line)["completion"] for line in (run / "samples.jsonl").read_text().splitlines()]
               for run in (one, two)]
    assert samples[0] == samples[1], "the rollout worker sampled what one process samples, step 2 included"
    scored = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [(c["step"], c["samples"], c["world"]) for c in scored] == [(0, 6, 1), (1, 6, 1)], \
        "each step's 6 samples scored once, by the reward worker (not on a rank, not once per rank)"


@pytest.mark.parametrize("trainers", [1, 2])
def test_roles_that_fit_alone_but_not_together_fail_at_once(ray_cluster: str, tiny_model_dir: str,
                                                            tmp_path: Path, trainers: int) -> None:
    """1 CPU each: every role alone fits the 2-CPU cluster, all of them together do not."""
    rollout = r"1 rollout worker\(s\) of 1 CPU each \(cluster.rollout_workers\)"
    started = time.monotonic()
    if trainers == 1:
        with pytest.raises(ClusterError, match=rf"asks for {rollout}, 2 reward .*that is 3 CPU in all"):
            distributed.start(SimpleNamespace(
                cluster=ClusterConfig(address=ray_cluster, rollout_workers=1, reward_workers=2),
                model=ModelConfig(name=tiny_model_dir, autocast="none")))
    else:
        trainer = r"2 trainer worker\(s\) of 1 CPU each \(cluster.trainers\)"
        with pytest.raises(ClusterError, match=rf"asks for {trainer}, {rollout}, 1 reward .*that is 4 CPU"):
            _run(tiny_model_dir, tmp_path, f"{LENGTHS}:length", f"cluster.address={ray_cluster}",
                 "cluster.trainers=2", "cluster.rollout_workers=1", "cluster.reward_workers=1")
    assert time.monotonic() - started < 15, "refused before any role was placed or started"
