"""Human feedback end to end on the embedded model: sample, label through the page's API, export, train.

1. Sample ``--candidates`` completions per prompt (temperature ``--temperature``) from the model with
   ``posttrain collect sample``'s function, for ``--prompts`` one-shot two-digit addition prompts of
   the arithmetic task's train split (the prompts of configs/kto-arithmetic.yaml and
   configs/orpo-arithmetic.yaml), into ``OUT/rank.db``; copies become ``ab.db`` and ``thumbs.db``.
2. For each mode start the real labelling server (``python -m posttrain.collect serve --mode M`` on
   127.0.0.1) and label every item over HTTP with a scripted annotator. It judges each candidate
   with the task's ``check()`` and gets that judgement wrong with probability ``--error-rate``
   (seeded). rank: judged-correct first, then well-formatted, then the rest (ties in random order);
   A/B: the better-judged one, "tie" when both are judged correct, "both bad" when both wrong
   (both dropped from the pairs); thumbs: up = judged correct.
3. Export each database (``posttrain collect export``'s function), read the JSONL back with the
   data loader, and train from it with the recipes' own configs (only steps, model, output changed):
   - reward model (configs/rm-arithmetic.yaml) on all pairs implied by the rankings of
     1 - ``--held-out`` of the prompts; held-out pairwise accuracy on the other prompts' collected
     candidates (every correct one over every wrong one, by check(): the annotator's intent without
     its errors) and on the arithmetic task's held-out correctness pairs;
   - KTO (configs/kto-arithmetic.yaml) on the thumbs, λ_D set to n_U / n_D (the paper's balance);
   - ORPO (configs/orpo-arithmetic.yaml) on the A/B pairs;
   KTO and ORPO report held-out preference accuracy on the task's test-split pairs and greedy
   accuracy on its test problems, before and after, as those configs do.
4. Print a table of the numbers before and after and write it to ``OUT/summary.json``.

    .venv/bin/python examples/feedback_demo.py --prompts 96 --candidates 4 --steps 24 --error-rate 0.1

Runs go under ``OUT/runs/{rm,kto,orpo}`` (metrics, plots, summary.md, final/).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from posttrain.collect.db import prompt_key
from posttrain.collect.export import export
from posttrain.collect.label import label_through_server, split_by_prompt
from posttrain.collect.sample import SampleConfig, sample
from posttrain.config import load_config
from posttrain.data.feedback import feedback_from
from posttrain.data.formats import load_rows, write_jsonl
from posttrain.data.preferences import encode_pairs, pairwise_metrics, score_pairs
from posttrain.data.sources import load_pairs, rankings_to_pairs
from posttrain.data.tasks import arithmetic
from posttrain.recipes import kto, orpo, reward_model
from posttrain.runner import replace
from posttrain.tracking import read_metrics

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
Row = dict[str, Any]


def arithmetic_prompts(n: int, seed: int) -> list[Row]:
    """The one-shot train prompts of the KTO/ORPO configs (their data.options, minus the pair kind)."""
    options = dict(load_config(kto.Config, CONFIGS / "kto-arithmetic.yaml").data.options)
    options.pop("kind")
    return arithmetic.rows(n, seed=seed, split="train", **options)


def sample_collections(out: Path, prompts: list[Row], args: argparse.Namespace) -> dict[str, Path]:
    """Step 1: sample once into rank.db, then copy it (SQLite's backup) to ab.db and thumbs.db."""
    prompts_file = write_jsonl(prompts, out / "prompts.jsonl")
    dbs = {mode: out / f"{mode}.db" for mode in ("rank", "ab", "thumbs")}
    sample(SampleConfig(prompts=str(prompts_file), db=str(dbs["rank"]), model=args.model, mode="rank",
                        n=args.candidates, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                        seed=args.seed))
    for mode in ("ab", "thumbs"):
        with sqlite3.connect(dbs["rank"]) as source, sqlite3.connect(dbs[mode]) as copy:
            source.backup(copy)
    return dbs


class Annotator:
    """Prefers correct answers; each judgement of a candidate is wrong with probability error_rate."""

    def __init__(self, rows_by_key: dict[str, Row], error_rate: float, seed: int) -> None:
        self.rows_by_key, self.error_rate, self.rng = rows_by_key, error_rate, random.Random(seed)

    def judge(self, text: str, row: Row) -> tuple[bool, bool]:
        """(judged correct, well formatted)."""
        correct = arithmetic.check(text, row) != (self.rng.random() < self.error_rate)
        return correct, arithmetic.format_ok(text, row)

    def value(self, item: Row) -> Row:
        row = self.rows_by_key[prompt_key(item["prompt"])]
        judged = [self.judge(c["text"], row) for c in item["candidates"]]
        if item["mode"] == "thumbs":
            return {"thumbs": [correct for correct, _ in judged]}
        if item["mode"] == "rank":
            tie_break = [self.rng.random() for _ in judged]
            best_first = sorted(range(len(judged)), key=lambda i: (judged[i], tie_break[i]), reverse=True)
            return {"ranking": best_first}
        if judged[0] != judged[1]:
            return {"choice": "a" if judged[0] > judged[1] else "b"}
        return {"choice": "tie" if judged[0][0] else "both_bad"}


def correctness_pairs(rankings: list[Row], rows_by_key: dict[str, Row]) -> list[Row]:
    """The pairs of each ranking's responses that the task's check() tells apart, correct one chosen:
    the held-out measure of whether the reward model learned the annotator's intent (pairs the
    annotator ordered at random, two wrong or two right answers, carry no truth to measure)."""
    pairs = []
    for ranking in rankings:
        row = rows_by_key[prompt_key(ranking["prompt"])]
        right = [text for text in ranking["responses"] if arithmetic.check(text, row)]
        wrong = [text for text in ranking["responses"] if not arithmetic.check(text, row)]
        pairs += [{"prompt": ranking["prompt"], "chosen": c, "rejected": r} for c in right for r in wrong]
    return pairs


def recipe_config(cls: type, name: str, args: argparse.Namespace, out: Path, *extra: str) -> Any:
    overrides = [f"model.name={args.model}", f"run.steps={args.steps}", f"run.output_dir={out / 'runs'}",
                 f"run.name={name}", "run.overwrite=true", "run.eval_every=0", "run.progress=false",
                 f"data.eval_size={args.eval_size}", *extra]
    return load_config(cls, CONFIGS / f"{name}-arithmetic.yaml", overrides)


def before_after(run_dir: Path) -> dict[str, dict[str, float]]:
    """The run's held-out metrics at step 0 and at its last evaluation."""
    evals = [row for row in read_metrics(run_dir) if any(k.startswith("eval/") for k in row)]
    pick = lambda step: {k[5:]: v for r in evals if r["step"] == step for k, v in r.items()  # noqa: E731
                         if k.startswith("eval/")}
    return {"before": pick(0), "after": pick(max((r["step"] for r in evals), default=0))}


def rm_accuracy(config: reward_model.Config, model_name: str, rows: list[Row]) -> float:
    """Pairwise accuracy of the reward model at ``model_name`` (a causal LM: the untrained head)."""
    model, tokenizer, device = reward_model.load_reward_model(replace(config.model, name=model_name))
    pairs = encode_pairs(tokenizer, rows, config.pairs.max_length)
    chosen, rejected = score_pairs(model, pairs, lambda batch: reward_model.scores_of(config, model, batch),
                                   config.pairs.micro_batch_size, tokenizer.pad_token_id, device)
    return pairwise_metrics(chosen, rejected)["pairwise_accuracy"]


def train_all(files: dict[str, Path], rows_by_key: dict[str, Row], args: argparse.Namespace,
              out: Path) -> dict[str, Any]:
    """Step 3: the reward model from the rankings, KTO from the thumbs, ORPO from the A/B pairs."""
    results: dict[str, Any] = {}
    train_rankings, held_rankings = split_by_prompt(load_rows(files["rankings"], "rankings"), args.held_out,
                                                    args.seed)
    rm_config = recipe_config(reward_model.Config, "rm", args, out)
    task_pairs = load_pairs(rm_config.data, "eval", rm_config.run.seed)
    rm_before = rm_accuracy(rm_config, args.model, task_pairs)
    held_pairs = correctness_pairs(held_rankings, rows_by_key)
    rm_dir = reward_model.train(rm_config, train_rows=rankings_to_pairs(train_rankings), eval_rows=held_pairs)
    collected = before_after(rm_dir)
    results["rm"] = {"run": str(rm_dir), "train_pairs": len(rankings_to_pairs(train_rankings)),
                     "collected_pairwise_accuracy": {"before": collected["before"].get("pairwise_accuracy"),
                                                     "after": collected["after"].get("pairwise_accuracy"),
                                                     "pairs": len(held_pairs)},
                     "task_pairwise_accuracy": {"before": rm_before,
                                                "after": rm_accuracy(rm_config, str(rm_dir / "final"),
                                                                     task_pairs),
                                                "pairs": len(task_pairs)}}
    thumbs = feedback_from(str(files["unpaired"]))
    n_up = sum(row["label"] for row in thumbs)
    weight = (len(thumbs) - n_up) / max(1, n_up)
    kto_config = recipe_config(kto.Config, "kto", args, out, f"desirable_weight={weight:.6g}")
    results["kto"] = {"run": str(kto_dir := kto.train(kto_config, train_rows=thumbs)), "rows": len(thumbs),
                      "thumbs_up": n_up, "desirable_weight": weight, **before_after(kto_dir)}
    pairs = load_rows(files["pairs"], "preferences")
    orpo_dir = orpo.train(recipe_config(orpo.Config, "orpo", args, out), train_rows=pairs)
    results["orpo"] = {"run": str(orpo_dir), "pairs": len(pairs), **before_after(orpo_dir)}
    return results


def table(results: dict[str, Any]) -> str:
    """The numbers before -> after, one line per recipe and metric."""
    lines = [f"{'recipe':6} {'held-out metric':40} {'before':>8} {'after':>8}"]

    def line(recipe: str, metric: str, before: float | None, after: float | None) -> None:
        shown = [f"{100 * v:7.1f}%" if v is not None else "     n/a" for v in (before, after)]
        lines.append(f"{recipe:6} {metric:40} {shown[0]} {shown[1]}")

    rm = results["rm"]
    line("rm", f"pairwise acc., collected ({rm['collected_pairwise_accuracy']['pairs']} pairs)",
         rm["collected_pairwise_accuracy"]["before"], rm["collected_pairwise_accuracy"]["after"])
    line("rm", f"pairwise acc., task ({rm['task_pairwise_accuracy']['pairs']} pairs)",
         rm["task_pairwise_accuracy"]["before"], rm["task_pairwise_accuracy"]["after"])
    for recipe in ("kto", "orpo"):
        for metric, label in (("preference_accuracy", "preference acc., task pairs"),
                              ("accuracy", "greedy accuracy, test problems"), ("format", "greedy format")):
            line(recipe, label, results[recipe]["before"].get(metric), results[recipe]["after"].get(metric))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model to sample and train")
    parser.add_argument("--out", default="runs/feedback-demo", help="output folder")
    parser.add_argument("--prompts", type=int, default=96, help="arithmetic prompts to sample")
    parser.add_argument("--candidates", type=int, default=4, help="candidates per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="most tokens per candidate")
    parser.add_argument("--error-rate", type=float, default=0.1, help="chance the annotator misjudges")
    parser.add_argument("--held-out", type=float, default=0.25, help="prompts held out for the RM (fraction)")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per recipe")
    parser.add_argument("--eval-size", type=int, default=100, help="held-out task problems/pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts, sampling and annotator")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prompts = arithmetic_prompts(args.prompts, args.seed)
    dbs = sample_collections(out, prompts, args)
    rows_by_key = {prompt_key(row["prompt"]): row for row in prompts}
    annotator = Annotator(rows_by_key, args.error_rate, args.seed)
    labelled = {mode: label_through_server(db, mode, annotator.value) for mode, db in dbs.items()}
    exports = {mode: export(db, out / "export" / mode) for mode, db in dbs.items()}
    files = {name: Path(exports[mode]["files"][name]["path"])  # the A/B pairs, not those the rankings imply
             for mode, name in (("rank", "rankings"), ("ab", "pairs"), ("thumbs", "unpaired"))}
    print(f"[demo] labelled {labelled}; exported {({n: str(p) for n, p in files.items()})}")
    rows = {mode: {name: info["rows"] for name, info in summary["files"].items()}
            for mode, summary in exports.items()}
    results = {"options": vars(args), "labels": labelled, "export_rows": rows,
               **train_all(files, rows_by_key, args, out)}
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(table(results))
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"[demo] {results['seconds']:.0f} s; summary in {out / 'summary.json'}")
    return results


if __name__ == "__main__":
    main()
