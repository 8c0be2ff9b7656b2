"""ORPO end to end on a tiny model: the loss of a step by hand, learning, resume, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.cli import main as cli_main
from posttrain.config import load_config
from posttrain.data.preferences import collate_pairs, encode_pairs
from posttrain.data.tasks import arithmetic
from posttrain.errors import ConfigError, DataError
from posttrain.logprobs import naive_token_logprobs
from posttrain.recipes import orpo
from posttrain.tracking import read_metrics
from posttrain.training import Stepper, build_optimizer


def _config(model_dir: str, out: Path, *overrides: str) -> orpo.Config:
    return load_config(orpo.Config, None, [
        f"model.name={model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=2", "pairs.batch_size=4", "pairs.micro_batch_size=2",
        "optim.lr=3e-3", "optim.warmup_steps=0", "optim.schedule=constant", "data.train=arithmetic",
        "data.train_size=32", "data.eval_size=0", "data.options={kind: format}", "sampling.max_new_tokens=3",
        "sampling.dtype=float32", *overrides])


def test_step_loss_by_hand(tiny_model: torch.nn.Module, tokenizer: Any) -> None:
    config = load_config(orpo.Config, None, ["model.autocast=none", "pairs.micro_batch_size=4", "lam=0.5"])
    pairs = encode_pairs(tokenizer, arithmetic.preference_rows(4, seed=0), 512)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():  # through the full logits, each row on its own: independent of the recipe's path
        logprobs_NT = naive_token_logprobs(tiny_model, batch["input_ids"], batch["attention_mask"])
    mask_NT = batch["loss_mask"].float()
    nll = float(-(logprobs_NT[0::2] * mask_NT[0::2]).sum() / mask_NT[0::2].sum())  # chosen tokens only
    mean_logp = ((logprobs_NT * mask_NT).sum(-1) / mask_NT.sum(-1)).tolist()
    log_odds = [lp - math.log(1 - math.exp(lp)) for lp in mean_logp]
    or_terms = [math.log(1 + math.exp(-(log_odds[i] - log_odds[i + 1]))) for i in range(0, 8, 2)]  # -log σ
    stepper = Stepper(tiny_model, build_optimizer(tiny_model, config.optim), None, config.optim)
    metrics = orpo.orpo_step(config, tiny_model, stepper, pairs, tokenizer.pad_token_id, torch.device("cpu"))
    assert metrics["train/nll"] == pytest.approx(nll, rel=1e-5)
    assert metrics["train/or_loss"] == pytest.approx(sum(or_terms) / 4, rel=1e-5)
    assert metrics["train/loss"] == pytest.approx(nll + 0.5 * sum(or_terms) / 4, rel=1e-5)
    assert metrics["train/logps/chosen"] == pytest.approx(sum(mean_logp[0::2]) / 4, rel=1e-5)


def _untagged_preferred(n: int, split: str) -> list[dict[str, Any]]:
    """Format pairs turned around: the untagged answer is chosen, which the tiny model starts out
    ranking below the tagged one on every held-out pair."""
    rows = arithmetic.preference_rows(n, seed=0, split=split, kind="format")
    return [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in rows]


def test_held_out_preference_accuracy_rises(tiny_model_dir: str, tmp_path: Path) -> None:
    config = _config(tiny_model_dir, tmp_path, "run.steps=6", "pairs.batch_size=8",
                     "pairs.micro_batch_size=4", "data.eval_size=8", "run.eval_every=3")
    run_dir = orpo.train(config, train_rows=_untagged_preferred(32, "train"),
                         eval_rows=_untagged_preferred(8, "test"))
    metrics = read_metrics(run_dir)
    key = "eval/preference_accuracy"
    preference = [(m["step"], m[key]) for m in metrics if key in m]
    assert [step for step, _ in preference] == [0, 3, 6]
    assert preference[0][1] == 0.0 and preference[-1][1] == 1.0
    margins = [m["eval/logp_margin"] for m in metrics if "eval/logp_margin" in m]
    assert margins[0] < 0 < margins[-1]
    nll = [m["train/nll"] for m in metrics if "train/nll" in m]
    assert nll[-1] < nll[0]  # the SFT half of the loss: the chosen responses become likelier
    assert {"eval/accuracy", "eval/format"} <= set().union(*metrics)  # the greedy task evaluation too
    summary = (run_dir / "summary.md").read_text()
    assert "eval_before/preference_accuracy" in summary and "eval_after/accuracy" in summary


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_resume_of_a_killed_run(tiny_model_dir: str, tmp_path: Path) -> None:
    common = ("run.steps=4", "run.save_every=2")
    full = orpo.train(_config(tiny_model_dir, tmp_path / "full", *common))
    half = _config(tiny_model_dir, tmp_path / "half", *common)
    half.run.steps = 2  # as if killed after the checkpoint of step 2
    orpo.train(half)
    resumed = orpo.train(_config(tiny_model_dir, tmp_path / "half", *common, "run.resume=true"))
    want, got = _final_weights(full), _final_weights(resumed)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    losses = [[m["train/loss"] for m in read_metrics(run) if "train/loss" in m] for run in (full, resumed)]
    assert losses[0] == losses[1]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'lam' must be >= 0; got -1\.0"):
        load_config(orpo.Config, None, ["lam=-1"])
    with pytest.raises(ConfigError, match=r"unknown key 'lamda'; did you mean 'lam'\?"):
        load_config(orpo.Config, None, ["lamda=0.1"])
    with pytest.raises(ConfigError, match="rankings must be one of all, adjacent; got 'best'"):
        load_config(orpo.Config, None, ["pairs.rankings=best"])


def test_data_errors_name_file_line_and_field(tiny_model_dir: str, tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:2, field 'rejected': missing required field"):
        orpo.train(_config(tiny_model_dir, tmp_path, f"data.train={data}"))


def test_cli_and_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["orpo", "--help"]) == 0
    assert "lam" in capsys.readouterr().out
    config = load_config(orpo.Config, Path(__file__).parents[2] / "configs" / "orpo-arithmetic.yaml")
    assert config.data.options["kind"] == "both" and config.lam == 0.1 and config.pairs.batch_size == 8
