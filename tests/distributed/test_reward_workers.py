"""Reward workers on a real two-node Ray cluster: the same scores as one process, errors that name the
function and the sample, a clear and fast error for a request the cluster cannot place."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from posttrain import distributed
from posttrain.config import ClusterConfig
from posttrain.data.tasks import arithmetic
from posttrain.distributed import ClusterError
from posttrain.errors import RewardError
from posttrain.rewards.base import check_reward, resolve_reward, score_completions
from posttrain.rewards.calling import TrainerState
from posttrain.rewards.code import code_tests_reward


def scorer_process(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """Which process scored each sample."""
    return [float(os.getpid())] * len(completions)


def explode_on_bad(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    if "bad" in completions:
        raise ValueError("cannot score this one")
    return [1.0] * len(completions)


def logging_reward(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                   trainer_state: Any, log_extra: Any, log_metric: Any, **kwargs: Any) -> list[float]:
    """Reads completion_ids and trainer_state, logs through both callbacks (TRL's convention)."""
    log_extra("ids_at_step", [len(ids) * trainer_state.global_step for ids in completion_ids])
    log_metric("share_size", float(len(completions)))
    return [0.0] * len(completions)


def _start(address: str, **cluster: Any) -> None:
    distributed.start(SimpleNamespace(cluster=ClusterConfig(address=address, **cluster)))


def _batch(tmp_path: Path) -> tuple[list[Any], list[str], dict[str, Any]]:
    """8 samples: arithmetic answers (right and wrong), and HumanEval-style programs for the sandbox."""
    prompts = ["What is 2 + 3?"] * 8
    completions = ["<answer>5</answer>", "<answer>6</answer>", "5", "", "    return a + b\n",
                   "    return a - b\n", "def add(a, b):\n    return a + b", "def add(a, b):\n    1 / 0"]
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    columns = {"answer": ["5"] * 8, "tests": [tests] * 8, "entry_point": ["add"] * 8}
    return prompts, completions, columns


def test_reward_workers_give_the_scores_of_one_process(ray_cluster: str, tmp_path: Path) -> None:
    rewards_file = tmp_path / "my_rewards.py"  # a user's reward file, loaded by path: sent by value
    rewards_file.write_text("def short(prompts, completions, **kw):\n"
                            "    return [None if not c else 1.0 / len(c) for c in completions]\n")
    code_prompt = 'def add(a, b):\n    """The sum."""\n'
    prompts, completions, columns = _batch(tmp_path)
    prompts[4:] = [code_prompt] * 4
    fns = [("task_correct", check_reward(arithmetic), 1.0), (*resolve_reward(f"{rewards_file}:short"), 0.5),
           ("code", lambda prompts, completions, **kw: code_tests_reward(prompts, completions, **kw), 2.0),
           ("pid", scorer_process, 0.0), ("logs", logging_reward, 0.0)]
    trainer = {"completion_ids": [[7] * (i + 1) for i in range(8)],
               "trainer_state": TrainerState(global_step=2, max_steps=3)}
    want = score_completions(fns, prompts, completions, columns, **trainer)
    _start(ray_cluster, reward_workers=2)
    got = distributed.reward_scorer()(fns, prompts, completions, columns, **trainer)
    assert got.logged is not None and want.logged is not None
    assert got.logged.extra == want.logged.extra == {"ids_at_step": [2 * (i + 1) for i in range(8)]}
    assert sorted(got.logged.metrics) == ["share_size"]  # one log_metric call per worker's share
    assert sum(got.logged.metrics["share_size"]) == 8
    assert torch.equal(got.total.nan_to_num(-1), want.total.nan_to_num(-1))
    for name in ("task_correct", "short", "code"):
        assert torch.equal(got.per_fn[name].nan_to_num(-1), want.per_fn[name].nan_to_num(-1)), name
    assert got.per_fn["code"].tolist()[4:] == [1.0, 0.0, 1.0, 0.0]  # the sandbox ran in the workers
    first, second = got.per_fn["pid"][:4].unique().tolist(), got.per_fn["pid"][4:].unique().tolist()
    assert len(first) == len(second) == 1 and first != second, "each half on its own worker"
    assert os.getpid() not in first + second


def test_reward_error_names_function_and_sample_of_the_whole_batch(ray_cluster: str) -> None:
    completions = ["ok"] * 7 + ["bad"]
    _start(ray_cluster, reward_workers=2)
    with pytest.raises(RewardError, match=r"'explode_on_bad' raised ValueError: cannot score this one "
                                          r"on sample 7"):
        distributed.reward_scorer()([("explode_on_bad", explode_on_bad, 1.0)], ["p"] * 8, completions, {})


def test_more_workers_than_the_cluster_has_fails_at_once(ray_cluster: str) -> None:
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"5 reward worker\(s\) of 1 CPU each.*5 CPU in all.*has 2 CPU"):
        _start(ray_cluster, reward_workers=5)
    assert time.monotonic() - started < 15


def test_a_worker_larger_than_every_node_fails_at_once(ray_cluster: str) -> None:
    with pytest.raises(ClusterError, match=r"a node with one worker's share.*2 node\(s\): 1 CPU, 0 GPU; "):
        _start(ray_cluster, reward_workers=1, reward_cpus=2)


def test_resources_held_elsewhere_fail_after_the_placement_timeout(ray_cluster: str) -> None:
    from posttrain.distributed.cluster import Role

    _start(ray_cluster, reward_workers=1, placement_timeout_s=2)  # holds 1 of the 2 CPUs
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"could not place 2 reward worker.*within "
                                           r"cluster.placement_timeout_s=2 s.*1 CPU, 0 GPU free now"):
        distributed._session.cluster.place(Role("reward", 2, 1.0, 0.0))
    assert time.monotonic() - started < 10


def test_an_address_where_nothing_listens_fails_at_once() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once the probe is closed: nothing listens there
    started = time.monotonic()
    with pytest.raises(ClusterError, match=rf"cluster.address='127.0.0.1:{port}': nothing answers there"):
        _start(f"127.0.0.1:{port}", reward_workers=1)
    assert time.monotonic() - started < 10


def test_a_connection_made_before_the_run_is_kept(ray_cluster: str) -> None:
    import ray

    ray.init(address=ray_cluster, logging_level="WARNING")  # a notebook's own connection
    try:
        _start(ray_cluster, reward_workers=1)
        distributed.shutdown()
        assert ray.is_initialized()
        deadline = time.monotonic() + 20  # placement groups are removed asynchronously
        while ray.available_resources().get("CPU") != 2.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU") == 2.0, "the run's placement group was released"
    finally:
        ray.shutdown()
