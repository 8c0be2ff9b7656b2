"""DPO end to end on a tiny model: learning, loss variants, reference modes, resume, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import ConfigError, DataError
from posttrain.recipes import dpo
from posttrain.tracking import read_metrics


def _config(model_dir: str, out: Path, *overrides: str) -> dpo.Config:
    return load_config(dpo.Config, None, [
        f"model.name={model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=2", "pairs.batch_size=4", "pairs.micro_batch_size=2",
        "optim.lr=3e-3",
        "optim.warmup_steps=0", "optim.schedule=constant", "data.train=arithmetic", "data.train_size=32",
        "data.eval_size=0", "data.options={kind: format}", "sampling.max_new_tokens=3",
        "sampling.dtype=float32", *overrides])


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_held_out_preference_accuracy_rises(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir = dpo.train(_config(tiny_model_dir, tmp_path, "run.steps=6", "pairs.batch_size=8",
                                "pairs.micro_batch_size=4", "data.eval_size=8", "run.eval_every=3"))
    metrics = read_metrics(run_dir)
    key = "eval/preference_accuracy"
    preference = [(m["step"], m[key]) for m in metrics if key in m]
    assert preference[0] == (0, 0.5)  # the policy is the reference: every implicit reward is 0
    assert preference[-1] == (6, 1.0)
    margins = [m["train/rewards/margin"] for m in metrics if "train/rewards/margin" in m]
    assert margins[0] == 0.0 and margins[-1] > 0.5
    assert {"eval/accuracy", "eval/format"} <= set().union(*metrics)  # the greedy task evaluation too
    summary = (run_dir / "summary.md").read_text()
    assert "eval_before/preference_accuracy" in summary and "eval_after/accuracy" in summary


@pytest.mark.parametrize(("overrides", "first_loss"), [
    ((), 0.6931471805599453),  # -log σ(0)
    (("label_smoothing=0.1",), 0.6931471805599453),  # -(0.9 + 0.1) log σ(0)
    (("loss=ipo", "beta=0.1"), 25.0),  # (0 - 1/(2·0.1))²
    (("loss=hinge",), 1.0),  # max(0, 1 - 0)
])
def test_first_step_loss_of_each_variant(tiny_model: torch.nn.Module, tokenizer: Any,
                                         overrides: tuple[str, ...], first_loss: float) -> None:
    from posttrain.data.preferences import encode_pairs
    from posttrain.data.tasks import arithmetic
    from posttrain.training import Stepper, build_optimizer

    config = load_config(dpo.Config, None, ["model.autocast=none", "pairs.micro_batch_size=2", *overrides])
    pairs = encode_pairs(tokenizer, arithmetic.preference_rows(4, seed=0), 512)
    ref_B2 = dpo.reference_logps(config, tiny_model, pairs, tokenizer.pad_token_id, torch.device("cpu"))
    stepper = Stepper(tiny_model, build_optimizer(tiny_model, config.optim), None, config.optim)
    # the policy is the reference, so h = 0 for every pair
    cpu = torch.device("cpu")
    metrics = dpo.dpo_step(config, tiny_model, stepper, pairs, ref_B2, tokenizer.pad_token_id, cpu)
    assert metrics["train/loss"] == pytest.approx(first_loss, rel=1e-6)
    assert metrics["train/rewards/margin"] == 0.0 and metrics["train/logps/chosen"] < 0


def test_adapter_reference_with_lora(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir = dpo.train(_config(tiny_model_dir, tmp_path, "run.steps=3", "model.lora_rank=4",
                                "reference=adapter", "optim.lr=1e-2"))
    margins = [m["train/rewards/margin"] for m in read_metrics(run_dir) if "train/rewards/margin" in m]
    assert margins[0] == 0.0 and margins[-1] > 0.0


def test_precomputed_reference_and_resume_of_a_killed_run(tiny_model_dir: str, tmp_path: Path) -> None:
    full = dpo.train(_config(tiny_model_dir, tmp_path / "full", "run.steps=4", "reference=frozen"))
    want = _final_weights(full)
    want_losses = [m["train/loss"] for m in read_metrics(full) if "train/loss" in m]
    for reference in ("frozen", "precomputed"):
        common = ("run.steps=4", "run.save_every=2", f"reference={reference}")
        half = _config(tiny_model_dir, tmp_path / reference, *common)
        half.run.steps = 2  # as if killed after the checkpoint of step 2
        dpo.train(half)
        resumed = dpo.train(_config(tiny_model_dir, tmp_path / reference, *common, "run.resume=true"))
        # a resumed frozen reference is the starting model again; precomputed log-probs are the
        # frozen copy's to the bit, so both runs end where the uninterrupted frozen run does
        got = _final_weights(resumed)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), reference
        assert [m["train/loss"] for m in read_metrics(resumed) if "train/loss" in m] == want_losses, reference


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'beta' must be > 0; got 0\.0"):
        load_config(dpo.Config, None, ["beta=0"])
    with pytest.raises(ConfigError, match="'loss' must be one of sigmoid, ipo, hinge; got 'kto'"):
        load_config(dpo.Config, None, ["loss=kto"])
    with pytest.raises(ConfigError, match="'label_smoothing' applies to loss sigmoid only, not 'ipo'"):
        load_config(dpo.Config, None, ["loss=ipo", "label_smoothing=0.1"])
    with pytest.raises(ConfigError, match=r"'label_smoothing' must be in \[0, 0.5\); got 0.5"):
        load_config(dpo.Config, None, ["label_smoothing=0.5"])
    with pytest.raises(ConfigError, match="reference 'adapter' needs a LoRA policy"):
        load_config(dpo.Config, None, ["reference=adapter"])
    with pytest.raises(ConfigError, match="'reference' must be one of frozen, adapter, precomputed"):
        load_config(dpo.Config, None, ["reference=none"])


def test_data_errors_name_file_line_and_field(tiny_model_dir: str, tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n\n{"prompt": "q", "chosen": 3, '
                    '"rejected": "b"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:3, field 'chosen': wrong type: number"):
        dpo.train(_config(tiny_model_dir, tmp_path, f"data.train={data}"))
    data.write_text('{"prompt": "q", "chosen": "a long answer", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:1, field 'chosen': prompt \+ response is \d+ tokens, "
                                        r"over max_length"):
        dpo.train(_config(tiny_model_dir, tmp_path, f"data.train={data}", "pairs.max_length=8"))


def test_shipped_config_loads() -> None:
    config = load_config(dpo.Config, Path(__file__).parents[2] / "configs" / "dpo-arithmetic.yaml")
    assert config.data.options["kind"] == "both" and config.reference == "frozen"
    assert config.pairs.batch_size == 8 and config.run.steps == 40
