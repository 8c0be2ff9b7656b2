"""How far a reward model can follow an arithmetic labeller: held-out pairwise accuracy split by what
decided the pair, beside a probe of what the starting model itself knows.

For each held-out pair of a ``label`` stage on the arithmetic task (``held_out_pairs.jsonl``, whole
prompts the reward model never saw), the pair is "correctness" when ``examples/labeller.py``'s
``correct_answer`` prefers one side (one reply ends in the right number, the other not) and "form"
otherwise. Printed per kind: the reward model's accuracy (chosen scored above rejected) and the
starting language model's, taking its log-likelihood of each reply (summed and per token) as the
score. The second is the probe: a reward model is this model with a score head, so where the model's
own likelihood cannot tell a right number from a wrong one on problems it has not seen, the reward
model has to learn arithmetic from the labelled pairs alone.

    python benchmarks/rm_ceiling.py --run runs/rlhf-judged-plain
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from posttrain.config import ModelConfig
from posttrain.data.formats import load_rows
from posttrain.data.preferences import encode_pairs, pair_batches
from posttrain.models import EMBEDDED_DEFAULT, load_model, load_tokenizer
from posttrain.preference_training import response_logprobs
from posttrain.rewards.reward_model import load_score_model, score_texts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.labeller import correct_answer


def reply_likelihoods(model_name: str, rows: list[dict], max_length: int) -> tuple[list[float], list[float]]:
    """(summed, per-token) log-likelihood under ``model_name`` of each pair's chosen and rejected reply,
    interleaved chosen, rejected."""
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name).eval()
    totals: list[float] = []
    means: list[float] = []
    with torch.no_grad():
        for batch in pair_batches(encode_pairs(tokenizer, rows, max_length, truncate=True), 16,
                                  tokenizer.pad_token_id):
            logprobs_NT = response_logprobs(model, batch, ModelConfig(name=model_name, autocast="none"),
                                            share_prompts=False)
            totals += logprobs_NT.sum(-1).tolist()
            means += (logprobs_NT.sum(-1) / batch["loss_mask"].sum(-1)).tolist()
    return totals, means


def accuracy_by_kind(rows: list[dict], scores: list[float]) -> dict[str, tuple[int, int]]:
    """{kind: (right, pairs)} with scores interleaved chosen, rejected; kinds as in the module doc."""
    out: dict[str, tuple[int, int]] = {}
    for i, row in enumerate(rows):
        question = row["prompt"][-1]["content"] if isinstance(row["prompt"], list) else row["prompt"]
        kind = "correctness" if correct_answer(question, row["chosen"], row["rejected"]) != "tie" else "form"
        for key in (kind, "all"):
            right, total = out.get(key, (0, 0))
            out[key] = (right + (scores[2 * i] > scores[2 * i + 1]), total + 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a pipeline folder with label/ and rm/ stages")
    parser.add_argument("--label", default="label", help="the label stage's name")
    parser.add_argument("--rm", default="rm", help="the reward model stage's name")
    parser.add_argument("--model", default=EMBEDDED_DEFAULT, help="the starting model (the probe)")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    run = Path(args.run)
    rows = load_rows(str(run / args.label / "held_out_pairs.jsonl"), "preferences")
    reward_model, tokenizer = load_score_model(str(run / args.rm / "final"))
    rm_scores = score_texts(reward_model, tokenizer, [r["prompt"] for r in rows for _ in range(2)],
                            [r[side] for r in rows for side in ("chosen", "rejected")],
                            max_length=args.max_length)
    totals, means = reply_likelihoods(args.model, rows, args.max_length)
    report = {name: accuracy_by_kind(rows, scores) for name, scores in
              (("reward model", rm_scores), ("start log-likelihood", totals),
               ("start log-likelihood per token", means))}
    print(f"{len(rows)} held-out pairs of {run / args.label}")
    for name, kinds in report.items():
        cells = ", ".join(f"{kind} {right}/{total} = {100 * right / total:.1f}%"
                          for kind, (right, total) in sorted(kinds.items()))
        print(f"{name}: {cells}")
    print(json.dumps({name: {k: list(v) for k, v in kinds.items()} for name, kinds in report.items()}))


if __name__ == "__main__":
    main()
