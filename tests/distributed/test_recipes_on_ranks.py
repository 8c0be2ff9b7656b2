"""Recipes on 2 trainer ranks of a real two-node Ray cluster: one step gives the weights of the
single-process step on the same batch (the loss normaliser is the whole batch's, not each rank's),
rank 0 alone writes the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from posttrain import distributed
from posttrain.config import load_config
from posttrain.recipes import dpo, grpo, sft

COMMON = ["model.autocast=none", "run.name=t", "run.progress=false", "run.steps=1", "data.train=arithmetic",
          "data.eval_size=0", "sampling.max_new_tokens=4", "sampling.dtype=float32", "optim.warmup_steps=0",
          "optim.schedule=constant"]
LENGTHS = Path(__file__).parent / "lengths.py"  # the task's reward scores a random model's samples all 0
RECIPES: dict[str, tuple[Any, list[str]]] = {
    # 5 rows shared 3 + 2 by the ranks, micro-batches of 2: the shares' token counts differ
    "sft": (sft, ["batch_size=5", "micro_batch_size=2", "data.train_size=16", "optim.lr=1e-3"]),
    "dpo": (dpo, ["pairs.batch_size=3", "pairs.micro_batch_size=2", "data.train_size=16",
                  "data.options={kind: format}", "optim.lr=1e-3"]),
    "grpo": (grpo, ["prompts_per_step=2", "samples_per_prompt=3", "micro_batch_size=2", "data.train_size=8",
                    "loss_agg=token_mean", "optim.lr=1e-3", f"rewards=[{LENGTHS}:length]"]),
}


def _run(recipe: str, model_dir: str, out: Path, *overrides: str) -> Path:
    module, own = RECIPES[recipe]
    config = load_config(module.Config, None, [f"model.name={model_dir}", f"run.output_dir={out}", *COMMON,
                                               *own, *overrides])
    return distributed.launch(module.train, config)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _losses(run_dir: Path) -> list[float]:
    return [row["train/loss"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in row]


_ONE_PROCESS: dict[tuple[str, ...], Path] = {}
"""The one-process run of each case, shared by its ddp and fsdp tests."""


@pytest.mark.parametrize(("recipe", "overrides", "sharding"), [
    ("sft", [], "ddp"), ("dpo", [], "ddp"), ("grpo", [], "ddp"),
    ("grpo", ["loss_agg=constant", "prompts_per_step=1", "samples_per_prompt=5"], "ddp"),  # rows shared 3 + 2
    # fsdp: rank 0 runs 2 micro-batches (3 rows), rank 1 one and a zero-weight one (every forward is a
    # collective there); held-out evaluation and GRPO's sampling read the gathered weights, step 2's bf16
    # engine copy those of step 1
    ("sft", ["data.eval_size=2"], "fsdp"), ("dpo", ["model.gradient_checkpointing=true"], "fsdp"),
    ("grpo", ["run.steps=2", "sampling.dtype=bfloat16"], "fsdp"),
])
def test_two_ranks_take_the_single_process_step(recipe: str, overrides: list[str], sharding: str,
                                                ray_cluster: str, tiny_model_dir: str, tmp_path: Path,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    case = (recipe, *overrides)
    if case not in _ONE_PROCESS:
        _ONE_PROCESS[case] = _run(recipe, tiny_model_dir, tmp_path_factory.mktemp("one"), *overrides)
    one = _ONE_PROCESS[case]
    two = _run(recipe, tiny_model_dir, tmp_path / "two", *overrides, f"cluster.address={ray_cluster}",
               "cluster.trainers=2", f"cluster.sharding={sharding}")
    start, want, got = _weights_of(tiny_model_dir), _weights(one), _weights(two)
    assert max(float((want[k] - start[k]).abs().max()) for k in want) > 1e-4, "the step moved the weights"
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst < 1e-5, f"{recipe}: 2 ranks' weights are {worst:.2e} from the one-process step"
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5, abs=1e-6)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    if sharding == "fsdp":  # each rank wrote its own shards of the last step's checkpoint
        shards = sorted((two / "checkpoints").glob("step-*"))[-1] / "sharded"
        assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


SHARES = '''
import json

import posttrain.rollout
from posttrain.distributed import this_rank

_generate = posttrain.rollout.generate


def _log(**entry):
    with open({log!r}, "a") as out:
        out.write(json.dumps({{"rank": this_rank().index, **entry}}) + "\\n")


def counted(model, tokenizer, prompts, *args, **kwargs):
    _log(sampled=len(prompts))
    return _generate(model, tokenizer, prompts, *args, **kwargs)


posttrain.rollout.generate = counted


def length(completions, **kwargs):
    _log(scored=len(completions))
    return [float(len(str(completion))) for completion in completions]
'''


def test_each_rank_samples_and_scores_its_share(ray_cluster: str, tiny_model_dir: str,
                                                tmp_path: Path) -> None:  # fmt: skip
    """4 prompts x 3 samples on 2 ranks: each samples 2 prompts and scores 6 completions (each did the
    whole batch before), and the step sees all 12 samples (its one-process equality: the test above)."""
    spy, log = tmp_path / "shares.py", tmp_path / "shares.jsonl"
    spy.write_text(SHARES.format(log=str(log)))
    run = _run("grpo", tiny_model_dir, tmp_path / "two", "prompts_per_step=4", f"rewards=[{spy}:length]",
               f"cluster.address={ray_cluster}", "cluster.trainers=2")
    calls = sorted(map(json.loads, log.read_text().splitlines()), key=lambda call: sorted(call.items()))
    assert calls == [{"rank": 0, "sampled": 2}, {"rank": 0, "scored": 6},
                     {"rank": 1, "sampled": 2}, {"rank": 1, "scored": 6}]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["rollout/samples"] for row in rows if "rollout/samples" in row] == [12.0]


def _weights_of(model_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def test_fsdp_checkpoints_resume_on_any_shape(ray_cluster: str, tiny_model_dir: str, tmp_path: Path) -> None:
    """Step 1 on 2 fsdp ranks (a sharded DCP checkpoint), step 2 after --resume on 2 fsdp ranks or in one
    process; and step 1 in one process, step 2 resumed on fsdp ranks: all 2 steps of one process."""
    fsdp = [f"cluster.address={ray_cluster}", "cluster.trainers=2", "cluster.sharding=fsdp"]
    one = _run("sft", tiny_model_dir, tmp_path / "one", "run.steps=2", "run.save_every=1")
    _run("sft", tiny_model_dir, tmp_path / "sharded", *fsdp)
    shutil.copytree(tmp_path / "sharded", tmp_path / "sharded-then-one")
    shutil.copytree(one, tmp_path / "one-then-sharded" / "t")
    shutil.rmtree(tmp_path / "one-then-sharded" / "t" / "checkpoints" / "step-00000002")
    resumed = [_run("sft", tiny_model_dir, tmp_path / "sharded", *fsdp, "run.steps=2", "run.resume=true"),
               _run("sft", tiny_model_dir, tmp_path / "sharded-then-one", "run.steps=2", "run.resume=true"),
               _run("sft", tiny_model_dir, tmp_path / "one-then-sharded", *fsdp, "run.steps=2",
                    "run.resume=true")]
    want = _weights(one)
    for run_dir in resumed:
        worst = max(float((_weights(run_dir)[k] - want[k]).abs().max()) for k in want)
        assert worst < 1e-5, f"{run_dir}: resumed, {worst:.2e} from 2 steps in one process"
        assert _losses(run_dir) == pytest.approx(_losses(one), rel=1e-5, abs=1e-6)


def test_a_ranks_config_error_reaches_the_driver_at_once(ray_cluster: str, tiny_model_dir: str,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 refuses to reuse a run directory while rank 1 waits for its path: the driver raises rank
    0's own error and stops rank 1 at once, not after the grace it gives a failed collective."""
    import time

    from posttrain.distributed import trainers
    from posttrain.errors import ConfigError

    monkeypatch.setattr(trainers, "FAILURE_GRACE_S", 300.0)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "metrics.jsonl").write_text("")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        _run("sft", tiny_model_dir, tmp_path, f"cluster.address={ray_cluster}", "cluster.trainers=2")
    assert time.monotonic() - started < 120, "rank 1, blocked in the broadcast, was waited for"


def test_train_called_directly_with_trainers_says_to_launch(tiny_model_dir: str, tmp_path: Path) -> None:
    from posttrain.errors import ConfigError

    module, own = RECIPES["sft"]
    config = load_config(module.Config, None, [f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path}",
                                               *COMMON, *own, "cluster.address=local", "cluster.trainers=2"])
    with pytest.raises(ConfigError, match=r"posttrain.distributed.launch\(recipe.train, config"):
        module.train(config)
    assert not (tmp_path / "t").exists(), "nothing written"


KILLS_RANK_1 = '''
import os, signal
from pathlib import Path

from posttrain.distributed import this_rank


def length_or_die(completions, trainer_state, **kwargs):
    """The completions' lengths; trainer rank 1 SIGKILLs itself while scoring step 3 (once)."""
    mark = Path({mark!r})
    if this_rank().index == 1 and trainer_state.global_step == 2 and not mark.exists():
        mark.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return [float(len(str(completion))) for completion in completions]
'''


def test_killed_rank_stops_the_run_and_resume_continues_it_on_any_shape(ray_cluster: str, tiny_model_dir: str,
                                                          tmp_path: Path) -> None:
    from posttrain.distributed import ClusterError

    (tmp_path / "kills.py").write_text(KILLS_RANK_1.format(mark=str(tmp_path / "killed")))
    ranks = [f"cluster.address={ray_cluster}", "cluster.trainers=2", "run.steps=4", "run.save_every=1",
             f"rewards=[{tmp_path / 'kills.py'}:length_or_die]"]
    with pytest.raises(ClusterError, match=r"trainer rank 1 of 2 died .*--resume .*two/t "):
        _run("grpo", tiny_model_dir, tmp_path / "two", *ranks)
    assert (tmp_path / "killed").exists()
    shutil.copytree(tmp_path / "two", tmp_path / "other-shape")
    one = _run("grpo", tiny_model_dir, tmp_path / "one", "run.steps=4", f"rewards=[{LENGTHS}:length]")
    for resumed in (_run("grpo", tiny_model_dir, tmp_path / "two", *ranks, "run.resume=true"),
                    _run("grpo", tiny_model_dir, tmp_path / "other-shape", *ranks[2:], "run.resume=true")):
        steps = [row["step"] for row in map(json.loads, (resumed / "metrics.jsonl").read_text().splitlines())
                 if "train/loss" in row]
        assert steps == [1, 2, 3, 4], "every step once: the killed step 3 was taken again after the resume"
        worst = max(float((_weights(resumed)[k] - _weights(one)[k]).abs().max()) for k in _weights(one))
        assert worst < 1e-5, f"{resumed}: killed and resumed, {worst:.2e} from 4 steps in one process"
