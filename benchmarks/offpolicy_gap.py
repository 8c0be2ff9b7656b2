"""How far the sampler's own log-probs are from the trainer's: bf16 vs fp32 weights, top-p on or off.

For each setting, P x G completions are sampled by the torch engine (``Rollouts.sampler_logprobs``: the
distribution actually sampled from) and re-scored by the fp32 model (``token_logprobs``, the trainer's
log-probs at the same temperature). Printed per setting: the mean and max |trainer - sampler| per token
(nats) and the truncated importance weights min(exp(trainer - sampler), 2) that ``rollout_correction: tis``
would apply (mean, std, share truncated). Tiny random models by default (seconds, CPU):

    python benchmarks/offpolicy_gap.py                      # 2-layer 64-wide random Llama, and a peaked one
    python benchmarks/offpolicy_gap.py --model smollm2-135m-instruct --prompts 4 --new-tokens 64
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from posttrain.logprobs import token_logprobs
from posttrain.losses import importance_metrics, truncated_is_weights
from posttrain.models import EMBEDDED_DEFAULT, load_tokenizer, tiny_model
from posttrain.rollout import SamplingParams, generate

PROMPTS = ["What is 12 + 7?", "Name a colour.", "Count to five:", "The capital of France is",
           "Write a haiku about rain.", "def add(a, b):", "Translate 'cat' to French.", "Once upon a time"]


def gap(model: torch.nn.Module, tokenizer: Any, dtype: str, top_p: float, args: argparse.Namespace) -> dict:
    sampling = SamplingParams(temperature=1.0, top_p=top_p, max_new_tokens=args.new_tokens, seed=0)
    rollouts = generate(model, tokenizer, PROMPTS[: args.prompts], args.samples, sampling,
                        engine_options={"dtype": dtype})
    batch = rollouts.to_batch(tokenizer.pad_token_id or 0)
    with torch.no_grad():
        trainer_NT, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                       batch["completion_mask"])
    mask_NT = batch["completion_mask"].bool()
    diff = (trainer_NT - batch["sampler_logprobs"])[mask_NT].abs()
    _, sums = truncated_is_weights(trainer_NT, batch["sampler_logprobs"], mask_NT, cap=2.0)
    summary = importance_metrics(sums)
    return {"sampler": dtype, "top_p": top_p, "tokens": int(mask_NT.sum()), "mean_gap": float(diff.mean()),
            "max_gap": float(diff.max()), "is_weight_mean": summary["is_weight_mean"],
            "is_weight_std": summary["is_weight_std"], "is_truncated_frac": summary["is_truncated_frac"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="an HF folder or the embedded name; default: tiny ones")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model:
        from posttrain.config import ModelConfig
        from posttrain.runner import load_policy

        model, tokenizer, _ = load_policy(ModelConfig(name=args.model, autocast="none"))
        models = {args.model: model}
    else:
        tokenizer = load_tokenizer(EMBEDDED_DEFAULT)
        peaked = tiny_model(tokenizer, layers=2, hidden=64, seed=0)
        with torch.no_grad():
            peaked.model.norm.weight.mul_(6.0)  # a next-token distribution that is not near uniform
        models = {"tiny": tiny_model(tokenizer, layers=2, hidden=64, seed=0), "tiny-peaked": peaked}
    for name, model in models.items():
        model.eval()
        for dtype in ("float32", "bfloat16"):
            for top_p in (1.0, 0.8):
                print(json.dumps({"model": name, **gap(model, tokenizer, dtype, top_p, args)}))


if __name__ == "__main__":
    main()
