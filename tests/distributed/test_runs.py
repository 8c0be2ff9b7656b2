"""Whole GRPO runs with reward workers: a worker SIGKILLed mid-run is restarted and its share redone,
``cluster.address=local`` starts and stops its own cluster, and a one-process run never imports Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.config import load_config
from posttrain.recipes import grpo

REPO = Path(__file__).resolve().parents[2]


def _config(model_dir: str, out: Path, *overrides: str) -> grpo.Config:
    return load_config(grpo.Config, None, [
        f"model.name={model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=3", "prompts_per_step=2", "samples_per_prompt=4",
        "micro_batch_size=8", "sampling.max_new_tokens=4", "sampling.dtype=float32",
        "data.train=arithmetic", "data.train_size=20", "data.eval_size=0", *overrides])


def _steps(run_dir: Path, name: str) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / name).read_text().splitlines()]


DIES_ONCE = '''
import os, signal
from pathlib import Path

MARKS = Path({marks!r})


def dies_once(prompts, completions, **kwargs):
    """Scores 1.0; in the second step, the worker scoring it SIGKILLs itself, once."""
    with open(MARKS / "calls", "a") as calls:
        calls.write(f"{{os.getpid()}}\\n")
    if len((MARKS / "calls").read_text().split()) >= 3 and not (MARKS / "killed").exists():
        (MARKS / "killed").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return [1.0] * len(completions)
'''


def test_killed_reward_worker_is_restarted_and_the_run_completes(ray_cluster: str, tiny_model_dir: str,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "marks").mkdir()
    (tmp_path / "dies_once.py").write_text(DIES_ONCE.format(marks=str(tmp_path / "marks")))
    config = _config(tiny_model_dir, tmp_path, f"rewards=[{tmp_path / 'dies_once.py'}:dies_once]",
                     f"cluster.address={ray_cluster}", "cluster.reward_workers=2")
    run_dir = grpo.train(config)
    killed = int((tmp_path / "marks" / "killed").read_text())
    callers = [int(pid) for pid in (tmp_path / "marks" / "calls").read_text().split()]
    assert len(callers) == 2 * 3 + 1, "2 shares a step, 3 steps, and the killed share sent again"
    assert callers.index(killed) < len(callers) - 1 and len(set(callers)) == 3, "a new worker took over"
    metrics = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
               if "rollout/reward" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["rollout/reward"] == 1.0 for m in metrics)
    assert sorted(set(_steps(run_dir, "samples.jsonl"))) == [1, 2, 3]
    assert len(_steps(run_dir, "samples.jsonl")) == 3 * 2 * 4


def test_local_cluster_is_started_for_the_run_and_stopped_after(tiny_model_dir: str, tmp_path: Path) -> None:
    import ray

    one_process = grpo.train(_config(tiny_model_dir, tmp_path / "one", "run.steps=2"))
    on_cluster = grpo.train(_config(tiny_model_dir, tmp_path / "ray", "run.steps=2",
                                    "cluster.address=local", "cluster.reward_workers=2"))
    assert not ray.is_initialized()
    rewards = [[m["rollout/reward"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "rollout/reward" in m] for run in (one_process, on_cluster)]
    assert rewards[0] == rewards[1] and len(rewards[0]) == 2


ONE_PROCESS_RUN = """
import sys
from posttrain.config import load_config
from posttrain.recipes import grpo
config = load_config(grpo.Config, None, sys.argv[1:])
grpo.train(config)
print(sorted(name for name in sys.modules if name == "ray" or name.startswith("ray.")))
"""


def test_one_process_run_imports_no_ray(tiny_model_dir: str, tmp_path: Path) -> None:
    overrides = [f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={tmp_path}",
                 "run.progress=false", "run.steps=1", "prompts_per_step=1", "samples_per_prompt=2",
                 "sampling.max_new_tokens=2", "data.train_size=4", "data.eval_size=0"]
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS_RUN, *overrides], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("overrides", "message"), [
    (["cluster.reward_worker=2"], "unknown key 'cluster.reward_worker'; did you mean 'cluster.reward_work"),
    (["cluster.sharding=zero3"], "cluster.sharding: must be one of ddp, fsdp; got 'zero3'"),
    (["cluster.reward_workers=2"], "reward_workers=2 needs a Ray cluster: set cluster.address to local"),
    (["cluster.address=somewhere"], "cluster.address: expected empty, local, auto, host:port or ray://"),
    (["cluster.address=local", "cluster.trainers=2", "cluster.sharding=fsdp", "cluster.rollout_workers=2"],
     "cluster.sharding=fsdp with rollout_workers=2: not implemented yet; rank 0 pushes the weights"),
    (["cluster.address=local", "cluster.trainers=2", "cluster.rollout_workers=1", "cluster.max_staleness=1"],
     "cluster.max_staleness=1 with trainers=2: not implemented yet"),
    (["cluster.reward_cpus=0"], "cluster.reward_cpus and reward_gpus are both 0"),
])
def test_cluster_config_errors(overrides: list[str], message: str) -> None:
    from posttrain.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        load_config(grpo.Config, None, overrides)
    assert message in str(error.value)
