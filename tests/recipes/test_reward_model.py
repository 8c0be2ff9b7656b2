"""Reward model end to end on a tiny model: learning, HF reload, scoring command, reward function, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import ConfigError, DataError
from posttrain.recipes import reward_model as rm
from posttrain.rewards.reward_model import (
    load_score_model,
    score_model_from_causal_lm,
    score_texts,
    sequence_scores,
)
from posttrain.tracking import read_metrics


def _config(model_dir: str, out: Path, *overrides: str) -> rm.Config:
    return load_config(rm.Config, None, [
        f"model.name={model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=4", "pairs.batch_size=8", "pairs.micro_batch_size=4",
        "optim.lr=3e-3",
        "optim.warmup_steps=0", "optim.schedule=constant", "data.train=arithmetic", "data.train_size=64",
        "data.eval_size=16", "data.options={kind: format}", "run.eval_every=0", *overrides])


@pytest.fixture(scope="module")
def trained(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward model trained for 10 steps on format pairs (tagged answer over untagged)."""
    out = tmp_path_factory.mktemp("rm")
    return rm.train(_config(tiny_model_dir, out, "run.steps=10", "run.eval_every=5"))


def test_held_out_margin_and_accuracy_rise(trained: Path) -> None:
    evals = [m for m in read_metrics(trained) if "eval/pairwise_accuracy" in m]
    assert [m["step"] for m in evals] == [0, 5, 10]
    before, after = evals[0], evals[-1]
    assert abs(before["eval/mean_margin"]) < 0.05  # the head starts near zero
    assert after["eval/mean_margin"] > 1.0 and after["eval/pairwise_accuracy"] == 1.0
    train_metrics = [m for m in read_metrics(trained) if "train/loss" in m]
    assert train_metrics[0]["train/loss"] == pytest.approx(0.6931, abs=0.02)  # log 2 at a near-zero head
    keys = {"train/accuracy", "train/margin", "train/tokens_per_s", "train/grad_norm"}
    assert keys <= train_metrics[0].keys()
    assert "eval_after/pairwise_accuracy" in (trained / "summary.md").read_text()


def test_saved_model_reloads_in_transformers_with_the_same_scores(trained: Path, tokenizer: Any) -> None:
    from transformers import AutoModelForSequenceClassification

    from posttrain.data.chat import collate_padded
    from posttrain.data.preferences import encode_response

    hf = AutoModelForSequenceClassification.from_pretrained(trained / "final").eval()
    prompts = ["What is 2 + 3?", [{"role": "user", "content": "What is 10 + 7?"}]]
    responses = ["2 + 3 = 5\n<answer>5</answer>", "17"]
    examples = [encode_response(tokenizer, p, r, 512) for p, r in zip(prompts, responses)]
    batch = collate_padded(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        ours = sequence_scores(hf, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(theirs, ours, atol=1e-5)
    assert score_texts(hf, tokenizer, prompts, responses) == pytest.approx(theirs.tolist(), abs=1e-5)


def test_shared_prompts_give_the_same_scores(tiny_model: torch.nn.Module, tokenizer: Any) -> None:
    from posttrain.data.preferences import collate_pairs, encode_pairs

    model = score_model_from_causal_lm(tiny_model, tokenizer.pad_token_id, init_std=0.5).eval()
    rows = [{"prompt": "q one", "chosen": "a long answer here", "rejected": "no"},
            {"prompt": "a longer second question", "chosen": "x", "rejected": "y z"}]
    batch = collate_pairs(encode_pairs(tokenizer, rows, 512), tokenizer.pad_token_id)
    with torch.no_grad():
        plain = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        shared = sequence_scores(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                 share_prompts=True)
    assert torch.allclose(plain, shared, atol=1e-5) and plain.abs().min() > 0


def test_score_command_writes_scores(trained: Path, tokenizer: Any, tmp_path: Path) -> None:
    from posttrain.cli import main

    rows = [{"prompt": "What is 1 + 1?", "completion": "1 + 1 = 2\n<answer>2</answer>"},
            {"messages": [{"role": "user", "content": "What is 1 + 1?"},
                          {"role": "assistant", "content": "1 + 1 = 2. The answer is 2."}]}]
    source = tmp_path / "answers.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", f"model={trained / 'final'}", f"input={source}"]) == 0
    written = [json.loads(line) for line in (tmp_path / "answers.scored.jsonl").read_text().splitlines()]
    model, _ = load_score_model(str(trained / "final"))
    responses = [rows[0]["completion"], rows[1]["messages"][1]["content"]]
    want = score_texts(model, tokenizer, ["What is 1 + 1?"] * 2, responses)
    assert [w["score"] for w in written] == pytest.approx(want, abs=1e-5)
    assert written[0]["score"] > written[1]["score"]  # the tagged answer is preferred, as trained


def test_reward_model_as_reward_function(trained: Path) -> None:
    from posttrain.rewards.base import resolve_reward

    name, fn = resolve_reward(f"reward_model:{trained / 'final'}")
    assert name == f"reward_model:{trained / 'final'}"
    prompt = [{"role": "user", "content": "What is 4 + 4?"}]
    texts = ["4 + 4 = 8\n<answer>8</answer>", "4 + 4 = 8. The answer is 8."]
    scores = fn(prompts=[prompt, prompt], completions=[[{"role": "assistant", "content": t}] for t in texts])
    assert len(scores) == 2 and scores[0] > scores[1]
    with pytest.raises(ConfigError, match="needs the path of a trained reward model"):
        resolve_reward("reward_model:")
    with pytest.raises(ConfigError, match="is not a reward model folder"):
        resolve_reward(f"reward_model:{trained}")


def test_killed_run_resumes_to_same_weights(tiny_model_dir: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    full = rm.train(_config(tiny_model_dir, tmp_path / "a", "run.save_every=2", "data.eval_size=0"))
    half = _config(tiny_model_dir, tmp_path / "b", "run.save_every=2", "data.eval_size=0")
    half.run.steps = 2  # as if killed after the checkpoint of step 2
    rm.train(half)
    resumed = rm.train(_config(tiny_model_dir, tmp_path / "b", "run.save_every=2", "data.eval_size=0",
                               "run.resume=true"))
    want = load_file(str(full / "final" / "model.safetensors"))
    got = load_file(str(resumed / "final" / "model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    losses = [[m["train/loss"] for m in read_metrics(d) if "train/loss" in m] for d in (full, resumed)]
    assert losses[0] == losses[1]


def test_config_and_data_errors(tiny_model_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.lora_rank must be 0"):
        load_config(rm.Config, None, ["model.lora_rank=8"])
    with pytest.raises(ConfigError, match=r"pairs\.rankings must be one of all, adjacent; got 'some'"):
        load_config(rm.Config, None, ["pairs.rankings=some"])
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2, field 'chosen': missing required field"):
        rm.train(_config(tiny_model_dir, tmp_path, f"data.train={data}"))


def test_shipped_config_loads() -> None:
    config = load_config(rm.Config, Path(__file__).parents[2] / "configs" / "rm-arithmetic.yaml")
    assert config.data.options["kind"] == "correctness" and config.pairs.batch_size == 16
