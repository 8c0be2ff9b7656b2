"""SFT end to end on a tiny model: the loss falls, packing works, resume is exact, errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import DataError
from posttrain.recipes import sft
from posttrain.tracking import read_metrics


def _config(tiny_model_dir: str, out: Path, *overrides: str) -> sft.Config:
    return load_config(sft.Config, None, [
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=3", "batch_size=4", "micro_batch_size=2", "optim.lr=3e-3",
        "optim.schedule=constant", "optim.warmup_steps=0", "data.train=arithmetic", "data.train_size=16",
        "data.eval_size=2",
        "sampling.max_new_tokens=4", "sampling.dtype=float32", "data.options={style: think}", *overrides])


def test_loss_falls_on_tiny_model(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir = sft.train(_config(tiny_model_dir, tmp_path, "run.steps=25", "data.eval_size=0"))
    losses = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3, losses


def test_packing_trains_and_writes_run(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir = sft.train(_config(tiny_model_dir, tmp_path, "packing=true", "max_length=256", "batch_size=2"))
    metrics = read_metrics(run_dir)
    assert all(m["train/loss"] > 0 for m in metrics if "train/loss" in m)
    assert (run_dir / "final" / "model.safetensors").exists()
    assert "eval/format" in set().union(*metrics)


def test_resume_after_kill_gives_same_weights(tiny_model_dir: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    full = sft.train(_config(tiny_model_dir, tmp_path / "a", "run.steps=4", "run.save_every=1",
                             "data.eval_size=0"))
    half = _config(tiny_model_dir, tmp_path / "b", "run.steps=4", "run.save_every=1", "data.eval_size=0")
    half.run.steps = 3  # as if killed after the checkpoint of step 3
    sft.train(half)
    resumed = sft.train(_config(tiny_model_dir, tmp_path / "b", "run.steps=4", "run.save_every=1",
                                "data.eval_size=0", "run.resume=true"))
    want = load_file(str(full / "final" / "model.safetensors"))
    got = load_file(str(resumed / "final" / "model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)
    losses_full = [m["train/loss"] for m in read_metrics(full) if "train/loss" in m]
    losses_resumed = [m["train/loss"] for m in read_metrics(resumed) if "train/loss" in m]
    assert losses_full == losses_resumed


def test_bad_data_file_is_reported_with_line(tiny_model_dir: str, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    data.write_text(good + '\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2"):
        sft.train(_config(tiny_model_dir, tmp_path, f"data.train={data}"))
