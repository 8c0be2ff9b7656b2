"""rollout_correction: tis on GRPO end to end on a tiny model: the bf16 sampler with top-p samples slightly
off-policy and the run logs by how much and the weights it corrects with; off, the step is the one it was."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.recipes import grpo
from posttrain.tracking import read_metrics

IS_METRICS = ("rollout/is_weight_mean", "rollout/is_weight_std", "rollout/is_ratio_max",
              "rollout/is_truncated_frac", "rollout/logprob_gap")


def _config(tiny_model_dir: str, out: Path, *overrides: str) -> grpo.Config:
    return load_config(grpo.Config, None, [
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.progress=false",
        "run.steps=2", "prompts_per_step=2", "samples_per_prompt=4", "micro_batch_size=8",
        "sampling.max_new_tokens=6", "sampling.dtype=float32", "optim.lr=1e-3", "data.train=arithmetic",
        "data.train_size=20", "data.eval_size=0", *overrides])


def _step_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [m for m in read_metrics(run_dir) if "rollout/reward" in m]


def test_bf16_sampler_with_top_p_is_off_policy_and_the_weights_are_logged(tiny_model_dir: str,
                                                                          tmp_path: Path) -> None:
    off_policy = grpo.train(_config(tiny_model_dir, tmp_path, "run.name=bf16", "sampling.dtype=bfloat16",
                                    "sampling.top_p=0.8", "rollout_correction=tis"))
    matched = grpo.train(_config(tiny_model_dir, tmp_path, "run.name=fp32", "rollout_correction=tis"))
    for metrics in _step_metrics(off_policy):
        assert all(math.isfinite(metrics[key]) for key in IS_METRICS)
        assert metrics["rollout/logprob_gap"] > 1e-3, "bf16 + top-p: the trainer scores the tokens otherwise"
        assert 0 < metrics["rollout/is_weight_mean"] <= 2.0 and metrics["rollout/is_weight_std"] > 0
        assert 0 <= metrics["rollout/is_truncated_frac"] <= 1
    for metrics in _step_metrics(matched):  # the fp32 model samples itself, untruncated: q = π_old
        assert metrics["rollout/logprob_gap"] < 1e-4 and abs(metrics["rollout/is_weight_mean"] - 1) < 1e-4
    assert "rollout/staleness" not in _step_metrics(matched)[0], "one process: no weight versions"


def test_with_tis_off_the_step_is_the_one_it_was(tiny_model_dir: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Off (the default), policy_loss gets no weights and no metric is added: the final weights are bit for
    bit those of the loss called without the argument at all, as before the option existed."""
    calls: list[Any] = []
    original = grpo.policy_loss

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.pop("is_weights"))
        return original(*args, **kwargs)

    default = grpo.train(_config(tiny_model_dir, tmp_path, "run.name=default", "sampling.top_p=0.8"))
    monkeypatch.setattr(grpo, "policy_loss", spy)
    without = grpo.train(_config(tiny_model_dir, tmp_path, "run.name=without", "sampling.top_p=0.8"))
    assert calls and all(weights is None for weights in calls)
    a, b = (load_file(run / "final" / "model.safetensors") for run in (default, without))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not any(key in m for m in read_metrics(default) for key in IS_METRICS)


@pytest.mark.parametrize(("overrides", "message"), [
    (["rollout_correction=is"], r"'rollout_correction' must be one of none, tis; got 'is'"),
    (["tis_cap=0.5"], r"tis_cap must be >= 1 \(where the weights are truncated\); got 0.5"),
    (["rollout_correction=tis", "sampling.temperature=0"], r"tis needs sampling.temperature > 0"),
    (["cluster.max_staleness=1"], r"cluster.max_staleness=1 needs cluster.rollout_workers > 0"),
    (["cluster.max_staleness=-1"], r"max_staleness: must be >= 0; got -1"),
])
def test_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(grpo.Config, None, overrides)
