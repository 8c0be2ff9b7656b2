"""KTO end to end on a tiny model: z0 from mismatched pairs, learning, weights, resume, errors."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.cli import main as cli_main
from posttrain.config import load_config
from posttrain.data.feedback import encode_feedback
from posttrain.data.preferences import encode_response
from posttrain.errors import ConfigError, DataError
from posttrain.logprobs import naive_token_logprobs
from posttrain.models import ReferencePolicy
from posttrain.recipes import kto
from posttrain.tracking import read_metrics
from posttrain.training import Stepper, build_optimizer

ROWS = [{"prompt": "What is 2 + 2?", "completion": "4", "label": True},
        {"prompt": "Name a colour.", "completion": "Blue, like the sky.", "label": False},
        {"prompt": "Say hi", "completion": "Hi there!", "label": True},
        {"prompt": "Count to three.", "completion": "One, two, three.", "label": False}]


def _config(model_dir: str, out: Path, *overrides: str) -> kto.Config:
    return load_config(kto.Config, None, [
        f"model.name={model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=2", "feedback.batch_size=4", "feedback.micro_batch_size=2",
        "optim.lr=3e-3", "optim.warmup_steps=0", "optim.schedule=constant", "data.train=arithmetic",
        "data.train_size=32", "data.eval_size=0", "data.options={kind: format}", "sampling.max_new_tokens=3",
        "sampling.dtype=float32", *overrides])


def _sequence_logp(model: torch.nn.Module, ids: list[int], mask: list[int]) -> float:
    """log π of the masked tokens, through the full logits (an independent path)."""
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        logprobs = naive_token_logprobs(model, input_ids, torch.ones_like(input_ids))
    return float((logprobs * torch.tensor([mask])).sum())


def test_z0_and_rewards_from_mismatched_pairs_on_a_hand_made_batch(tiny_model: torch.nn.Module,
                                                                      tokenizer: Any) -> None:
    beta = 0.02  # β(r - z0) stays where σ is not flat
    config = load_config(kto.Config, None, ["model.autocast=none", "feedback.micro_batch_size=4",
                                            f"beta={beta}"])
    peaked = copy.deepcopy(tiny_model)  # a reference that differs from the policy
    with torch.no_grad():
        peaked.model.norm.weight.mul_(6.0)
    rows = encode_feedback(tokenizer, ROWS, 128)
    log_ratios, rewards = [], []
    for i, row in enumerate(ROWS):  # the mismatched pair: row i's prompt, row i+1's response
        ids, mask = encode_response(tokenizer, row["prompt"], ROWS[(i + 1) % 4]["completion"], 128)
        log_ratios.append(_sequence_logp(tiny_model, ids, mask) - _sequence_logp(peaked, ids, mask))
        rewards.append(beta * (_sequence_logp(tiny_model, rows[i].ids, rows[i].mask)
                              - _sequence_logp(peaked, rows[i].ids, rows[i].mask)))
    z0 = sum(log_ratios) / 4
    assert z0 > 1.0  # not clamped, so the comparison below can fail
    optim = load_config(kto.Config, None, ["optim.lr=1e-9"]).optim

    def step(policy: torch.nn.Module, reference: torch.nn.Module) -> dict[str, float]:
        stepper = Stepper(policy, build_optimizer(policy, optim), None, optim)
        return kto.kto_step(config, policy, stepper, ReferencePolicy(reference, "frozen"), rows,
                            tokenizer.pad_token_id, torch.device("cpu"))

    swapped = step(copy.deepcopy(peaked), tiny_model)  # every log-ratio negated: z0 clamped at 0
    assert swapped["train/kl"] == 0.0 and swapped["train/kl_estimate"] == pytest.approx(-z0, rel=1e-4)
    metrics = step(tiny_model, peaked)
    assert metrics["train/kl"] == metrics["train/kl_estimate"] == pytest.approx(z0, rel=1e-4)
    assert metrics["train/rewards/chosen"] == pytest.approx((rewards[0] + rewards[2]) / 2, rel=1e-4)
    assert metrics["train/rewards/rejected"] == pytest.approx((rewards[1] + rewards[3]) / 2, rel=1e-4)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = [sigmoid(-(r - beta * z0)) if row["label"] else sigmoid(r - beta * z0)
            for row, r in zip(ROWS, rewards)]
    assert metrics["train/loss"] == pytest.approx(sum(want) / 4, rel=1e-4)


def test_first_step_loss_is_half_the_mean_weight(tiny_model: torch.nn.Module, tokenizer: Any) -> None:
    # the policy is the reference: r = 0 and z0 = 0 exactly, so each row's loss is λ_y σ(0)
    config = load_config(kto.Config, None, ["model.autocast=none", "feedback.micro_batch_size=2",
                                            "undesirable_weight=3"])
    stepper = Stepper(tiny_model, build_optimizer(tiny_model, config.optim), None, config.optim)
    metrics = kto.kto_step(config, tiny_model, stepper, ReferencePolicy(tiny_model, "frozen"),
                           encode_feedback(tokenizer, ROWS, 128), tokenizer.pad_token_id, torch.device("cpu"))
    assert metrics["train/loss"] == pytest.approx(0.5 * (1 + 3 + 1 + 3) / 4, rel=1e-6)
    assert metrics["train/kl"] == metrics["train/kl_estimate"] == metrics["train/rewards/margin"] == 0.0


def test_held_out_preference_accuracy_rises(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir = kto.train(_config(tiny_model_dir, tmp_path, "run.steps=6", "feedback.batch_size=8",
                                "feedback.micro_batch_size=4", "data.eval_size=8", "run.eval_every=3"))
    metrics = read_metrics(run_dir)
    key = "eval/preference_accuracy"
    preference = [(m["step"], m[key]) for m in metrics if key in m]
    assert preference[0] == (0, 0.5)  # the policy is the reference: every implicit reward is 0
    assert preference[-1][0] == 6 and preference[-1][1] >= 0.875
    margins = [m["train/rewards/margin"] for m in metrics if "train/rewards/margin" in m]
    assert margins[0] == 0.0 and margins[-1] > 0.5  # thumbs-up rows' rewards above thumbs-down rows'
    assert {"eval/accuracy", "eval/format"} <= set().union(*metrics)  # the greedy task evaluation too
    summary = (run_dir / "summary.md").read_text()
    assert "eval_before/preference_accuracy" in summary and "eval_after/accuracy" in summary


def test_adapter_reference_with_lora_and_pairs_as_feedback(tiny_model_dir: str, tmp_path: Path) -> None:
    from posttrain.data.tasks import arithmetic

    pairs = arithmetic.preference_rows(16, seed=0, kind="format")  # chosen -> thumbs up, rejected -> down
    config = _config(tiny_model_dir, tmp_path, "run.steps=6", "model.lora_rank=4", "reference=adapter",
                     "optim.lr=1e-2", "feedback.batch_size=8", "feedback.micro_batch_size=8",
                     "data.eval_size=8")
    run_dir = kto.train(config, train_rows=pairs)
    key = "eval/preference_accuracy"
    preference = [(m["step"], m[key]) for m in read_metrics(run_dir) if key in m]
    assert preference[0] == (0, 0.5) and preference[-1][1] > 0.5, preference


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_resume_of_a_killed_run(tiny_model_dir: str, tmp_path: Path) -> None:
    common = ("run.steps=4", "run.save_every=2", "data.eval_size=4")
    full = kto.train(_config(tiny_model_dir, tmp_path / "full", *common))
    half = _config(tiny_model_dir, tmp_path / "half", *common)
    half.run.steps = 2  # as if killed after the checkpoint of step 2
    kto.train(half)
    resumed = kto.train(_config(tiny_model_dir, tmp_path / "half", *common, "run.resume=true"))
    # the resumed frozen reference is the starting model again, and the held-out pairs' reference
    # log-probs come from the checkpoint: the run ends where the uninterrupted one does
    want, got = _final_weights(full), _final_weights(resumed)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    losses = [[m["train/loss"] for m in read_metrics(run) if "train/loss" in m] for run in (full, resumed)]
    assert losses[0] == losses[1]
    key = "eval/preference_accuracy"
    final = [[(m["step"], m[key]) for m in read_metrics(run) if key in m][-1] for run in (full, resumed)]
    assert final[0] == final[1]


def test_label_balance_warning() -> None:
    config = kto.Config()
    rows = encode_labels([True, True, True, False])
    advice = (r"= 1.0·3 / \(1.0·1\) = 3.000 is outside \[1, 4/3\].*desirable_weight in \[0.333, 0.444\] "
              r"or undesirable_weight in \[2.25, 3\]")
    with pytest.warns(UserWarning, match=advice):
        kto.warn_on_imbalance(config, rows)
    config.undesirable_weight = 2.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kto.warn_on_imbalance(config, rows)  # 3 / 2.5 = 1.2: inside, silent
    with pytest.warns(UserWarning, match="all 2 feedback rows are undesirable"):
        kto.warn_on_imbalance(config, encode_labels([False, False]))


def encode_labels(labels: list[bool]) -> list[Any]:
    from posttrain.data.feedback import EncodedFeedback

    return [EncodedFeedback([1, 2], [0, 1], 1, label, f"rows[{i}]") for i, label in enumerate(labels)]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'beta' must be > 0; got 0\.0"):
        load_config(kto.Config, None, ["beta=0"])
    with pytest.raises(ConfigError, match=r"'undesirable_weight' must be > 0; got 0\.0"):
        load_config(kto.Config, None, ["undesirable_weight=0"])
    with pytest.raises(ConfigError, match="'reference' must be one of frozen, adapter; got 'precomputed'"):
        load_config(kto.Config, None, ["reference=precomputed"])
    with pytest.raises(ConfigError, match="reference 'adapter' needs a LoRA policy"):
        load_config(kto.Config, None, ["reference=adapter"])
    with pytest.raises(ConfigError, match=r"'data\.mix' is not supported for feedback rows"):
        load_config(kto.Config, None, ["data.mix=[{train: arithmetic, fraction: 0.5}]"])
    with pytest.raises(ConfigError, match=r"cluster\.trainers=2: KTO's reference point z0 is estimated"):
        load_config(kto.Config, None, ["cluster.address=local", "cluster.trainers=2"])
    with pytest.raises(ConfigError, match=r"feedback\.batch_size must be at least 2"):
        load_config(kto.Config, None, ["feedback.batch_size=1"])
    with pytest.raises(ConfigError, match=r"'desirable_weigth'; did you mean 'desirable_weight'\?"):
        load_config(kto.Config, None, ["desirable_weigth=1"])


def test_data_errors_name_file_line_and_field(tiny_model_dir: str, tmp_path: Path) -> None:
    data = tmp_path / "thumbs.jsonl"
    data.write_text('{"prompt": "q", "completion": "a", "label": true}\n\n'
                    '{"prompt": "q", "completion": "b"}\n')
    with pytest.raises(DataError, match=r"thumbs.jsonl:3, field 'label': missing required field"):
        kto.train(_config(tiny_model_dir, tmp_path, f"data.train={data}"))
    data.write_text('{"prompt": "q", "completion": "a", "label": "yes"}\n')
    with pytest.raises(DataError, match=r"thumbs.jsonl:1, field 'label': wrong type: string"):
        kto.train(_config(tiny_model_dir, tmp_path, f"data.train={data}"))


def test_cli_and_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["kto", "--help"]) == 0
    assert "desirable_weight" in capsys.readouterr().out
    config = load_config(kto.Config, Path(__file__).parents[2] / "configs" / "kto-arithmetic.yaml")
    assert config.data.options["kind"] == "both" and config.reference == "frozen"
    assert config.feedback.batch_size == config.feedback.micro_batch_size  # one z0 over the whole step
