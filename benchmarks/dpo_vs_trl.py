"""DPO side by side: posttrain's recipe against Hugging Face TRL's ``DPOTrainer`` on this machine.

What is compared: the same DPO run done by both libraries on the embedded SmolLM2-135M-Instruct
(fp32 weights, our converted HF folder), on the same procedural arithmetic preference pairs
(``arithmetic.preference_rows``: chosen = the right sum in the tagged answer format, rejected = a
plausible wrong one or the untagged answer, ``--kind``), in the same order (posttrain's
``DataOrder``; TRL gets exactly that sequence with ``train_sampling_strategy="sequential"``), as chat
conversations rendered by the model's own template on both sides; the sigmoid loss with the same β,
B pairs per optimizer step in micro-batches of the same size (TRL's ``per_device_train_batch_size``
with ``gradient_accumulation_steps`` = B / micro), learning rate constant, AdamW (0.9, 0.99), no
weight decay, gradient clipping at 1, a frozen reference model (or, with ``--reference precomputed``,
reference log-probs computed once before training on both sides), the same number of steps.

How: each side runs in its own child process, one after the other (helpers shared with
``grpo_vs_trl.py``: TRL lives in its own virtual environment, never a dependency of posttrain; its
child is this file run by that environment's Python with ``--trl-child CONFIG.json``). Ours is
``python -m posttrain.cli dpo`` with the same settings as overrides (its greedy task evaluation is
cut to one token, since only the preference metric is compared).

Measured for each: seconds per step (median over steps 2..S of the wall time between two consecutive
optimizer steps), tokens per second (the non-pad tokens of each step's pairs, prompt counted on both
sides, as one plain batch holds them, counted once by our encoding for both sides so the ratio is
the work per second; steps 2..S), peak RSS of the child (``os.wait4``), and the held-out preference
accuracy after training (the implicit reward β(log π - log π_ref) ranks chosen above rejected, on
the same held-out pairs from the task's test split: ours ``eval/preference_accuracy``, TRL's
``eval_rewards/accuracies``; ours counts a tie as one half, TRL as a loss, which only matters before
any training). Printed as a table with the ratios ours/TRL; everything, with the exact commands,
goes to ``--out`` as JSON.

Precision: TRL runs fp32 (``bf16=False``). Ours runs ``--ours-precision`` (default bf16: fp32
weights with bf16 autocast, our recommended CPU setting; fp32 is like-for-like; ``both`` runs both).

    .venv/bin/python benchmarks/dpo_vs_trl.py                       # 4 steps of 8 pairs, 32 held-out
    .venv/bin/python benchmarks/dpo_vs_trl.py --ours-precision both --steps 6
    .venv/bin/python benchmarks/dpo_vs_trl.py --quick               # 2 steps of 4 pairs, 8 held-out
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grpo_vs_trl import DEFAULT_VENV, REPO, _child_fields, _fmt, ensure_trl_venv, run_child

DEFAULT_OUT = REPO / "benchmarks" / "results" / "dpo_vs_trl.json"
TRAIN_SIZE = 2000  # pairs drawn from the task's train split (our recipe's default data.train_size)
PRECISIONS = {"fp32": "none", "bf16": "bfloat16"}  # -> model.autocast; weights stay fp32


@dataclasses.dataclass(frozen=True)
class Settings:
    steps: int
    pairs: int
    micro: int
    eval_pairs: int
    beta: float
    lr: float
    seed: int
    kind: str
    shots: int
    reference: str = "frozen"
    max_length: int = 512
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = 1.0

    @property
    def options(self) -> dict[str, Any]:
        return {"style": "tags", "shots": self.shots, "kind": self.kind}


# ------------------------------------------------------------------------------ data


def planned_pairs(s: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int]]:
    """The pairs our recipe takes, in its order (B per step for S steps), the held-out pairs, and the
    tokens of each step's pairs as our encoding counts them."""
    from posttrain.data.preferences import encode_pairs, pair_tokens
    from posttrain.data.sources import DataOrder
    from posttrain.data.tasks import arithmetic
    from posttrain.models import EMBEDDED_DEFAULT, load_tokenizer

    rows = arithmetic.preference_rows(TRAIN_SIZE, s.seed, "train", **s.options)
    order = DataOrder(list(range(len(rows))), s.seed)
    steps = [[rows[i] for i in order.take(s.pairs)] for _ in range(s.steps)]
    held_out = arithmetic.preference_rows(s.eval_pairs, s.seed, "test", **s.options)
    tokenizer = load_tokenizer(EMBEDDED_DEFAULT)
    tokens = [pair_tokens(encode_pairs(tokenizer, step, s.max_length)) for step in steps]
    return [row for step in steps for row in step], held_out, tokens


def _conversation(row: dict[str, Any]) -> dict[str, Any]:
    """A pair in TRL's conversational format (prompt messages, one-message responses)."""
    return {"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def summarize(step_seconds: list[float], tokens: list[int]) -> dict[str, Any]:
    """Median seconds per step over steps 2..S and the tokens per second of those steps."""
    timed, timed_tokens = step_seconds[1:], tokens[1:len(step_seconds)]
    return {"sec_per_step": statistics.median(timed) if timed else None,
            "first_step_s": step_seconds[0] if step_seconds else None,
            "tokens_per_s": sum(timed_tokens) / sum(timed) if timed else None, "step_seconds": step_seconds}


# ------------------------------------------------------------------------------ ours


def ours_overrides(s: Settings, model: Path, precision: str, output_dir: Path, name: str) -> list[str]:
    options = json.dumps(s.options)
    return [
        f"model.name={model}", "model.dtype=float32", f"model.autocast={PRECISIONS[precision]}",
        "model.device=cpu", "data.train=arithmetic", f"data.options={options}",
        f"data.train_size={TRAIN_SIZE}",
        f"data.eval_size={s.eval_pairs}", f"pairs.batch_size={s.pairs}", f"pairs.micro_batch_size={s.micro}",
        f"pairs.max_length={s.max_length}", f"beta={s.beta}", "loss=sigmoid", "label_smoothing=0.0",
        f"reference={s.reference}", f"optim.lr={s.lr}", "optim.schedule=constant", "optim.warmup_steps=0",
        f"optim.beta1={s.adam_betas[0]}", f"optim.beta2={s.adam_betas[1]}", "optim.weight_decay=0.0",
        f"optim.max_grad_norm={s.max_grad_norm}", f"run.steps={s.steps}", f"run.seed={s.seed}",
        "run.progress=false", "run.eval_every=0", "run.save_every=0", f"run.output_dir={output_dir}",
        f"run.name={name}", "sampling.max_new_tokens=1",
    ]


def run_ours(s: Settings, model: Path, precision: str, workdir: Path, log: Path,
             tokens: list[int]) -> dict[str, Any]:
    name = f"ours-{precision}"
    overrides = ours_overrides(s, model, precision, workdir, name)
    command = [sys.executable, "-m", "posttrain.cli", "dpo", *overrides]
    child = run_child(name, command, log, REPO)
    result: dict[str, Any] = {"label": f"posttrain ({precision})", **_child_fields(child)}
    if child.returncode == 0:
        rows = [json.loads(line) for line in (workdir / name / "metrics.jsonl").read_text().splitlines()]
        trained = [r for r in rows if "train/loss" in r]
        seconds = [r["time"] - trained[i - 1]["time"] if i else r["time/step_s"]
                   for i, r in enumerate(trained)]
        evals = [r for r in rows if "eval/preference_accuracy" in r]
        result.update(summarize(seconds, tokens), loss=[r["train/loss"] for r in trained],
                      held_out_accuracy=evals[-1]["eval/preference_accuracy"] if evals else None,
                      held_out_accuracy_before=evals[0]["eval/preference_accuracy"] if evals else None)
    return result


# ------------------------------------------------------------------------------ TRL


def run_trl(s: Settings, model: Path, venv: Path, workdir: Path, log: Path, train: list[dict[str, Any]],
            held_out: list[dict[str, Any]], tokens: list[int]) -> dict[str, Any]:
    config = {"settings": dataclasses.asdict(s), "model": str(model), "output_dir": str(workdir / "trl"),
              "result": str(workdir / "trl-result.json"), "train": [_conversation(r) for r in train],
              "eval": [_conversation(r) for r in held_out]}
    config_path = workdir / "trl-config.json"
    config_path.write_text(json.dumps(config))
    command = [str(venv / "bin" / "python"), str(Path(__file__).resolve()), "--trl-child", str(config_path)]
    child = run_child("trl", command, log, REPO)
    result: dict[str, Any] = {"label": "TRL (fp32)", **_child_fields(child)}
    if child.returncode == 0:
        out = json.loads(Path(config["result"]).read_text())
        result.update(summarize(out.pop("step_seconds"), tokens), **out)
        result["label"] = f"TRL {out['versions']['trl']} (fp32)"
    return result


def trl_child(config_path: Path) -> None:
    """Runs inside TRL's environment: train, evaluate on the held-out pairs, write the records as JSON."""
    import warnings

    import datasets
    import torch
    import transformers
    import trl
    from transformers import TrainerCallback

    warnings.filterwarnings("ignore", category=FutureWarning)
    config = json.loads(config_path.read_text())
    s = config["settings"]
    step_seconds: list[float] = []

    class Recorder(TrainerCallback):  # type: ignore[misc]
        last = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            step_seconds.append(now - self.last)
            self.last = now

    args = trl.DPOConfig(
        output_dir=config["output_dir"], max_steps=s["steps"], seed=s["seed"], use_cpu=True, bf16=False,
        fp16=False, model_init_kwargs={"dtype": "float32"}, per_device_train_batch_size=s["micro"],
        per_device_eval_batch_size=s["micro"], gradient_accumulation_steps=s["pairs"] // s["micro"],
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, adam_beta1=s["adam_betas"][0],
        adam_beta2=s["adam_betas"][1], weight_decay=0.0, max_grad_norm=s["max_grad_norm"], beta=s["beta"],
        loss_type=["sigmoid"], label_smoothing=0.0, max_length=s["max_length"],
        precompute_ref_log_probs=s["reference"] == "precomputed",
        train_sampling_strategy="sequential", logging_steps=1, report_to="none", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = trl.DPOTrainer(model=config["model"], args=args,
                             train_dataset=datasets.Dataset.from_list(config["train"]),
                             eval_dataset=datasets.Dataset.from_list(config["eval"]), callbacks=[Recorder()])
    print(f"[trl child] torch threads {torch.get_num_threads()}, {s['pairs']} pairs per step in "
          f"micro-batches of {s['micro']}", flush=True)
    trainer.train()
    metrics = trainer.evaluate()
    versions = {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    Path(config["result"]).write_text(json.dumps({
        "step_seconds": step_seconds, "loss": losses, "versions": versions,
        "held_out_accuracy": metrics.get("eval_rewards/accuracies"),
        "held_out_margin": metrics.get("eval_rewards/margins")}))


# ------------------------------------------------------------------------------ report


def print_table(results: dict[str, dict[str, Any]]) -> None:
    rows = [("s / step (median, steps 2..S)", "sec_per_step", ".2f"), ("first step s", "first_step_s", ".2f"),
            ("tokens / s (steps 2..S)", "tokens_per_s", ".1f"), ("peak RSS MB", "peak_rss_mb", ".0f"),
            ("held-out preference accuracy", "held_out_accuracy", ".3f"),
            ("child wall s (load, train, eval, save)", "wall_s", ".1f")]
    names = list(results)
    width = max(16, *(len(results[n]["label"]) for n in names))
    print("\n" + " " * 40 + "".join(f"{results[n]['label']:>{width + 2}}" for n in names))
    for title, key, spec in rows:
        print(f"{title:<40}" + "".join(f"{_fmt(results[n].get(key), spec):>{width + 2}}" for n in names))
    for n in names:
        losses = " ".join(_fmt(v, ".4f") for v in results[n].get("loss", []))
        print(f"{'loss per step':<40}{results[n]['label']}: {losses}")


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """ours/TRL: throughput (> 1: ours faster), memory (< 1: ours smaller), held-out accuracy difference."""
    trl = results.get("trl", {})
    out: dict[str, dict[str, float | None]] = {}
    for name, ours in results.items():
        if name == "trl" or not trl:
            continue
        a, b = ours.get("tokens_per_s"), trl.get("tokens_per_s")
        m, n = ours.get("peak_rss_mb"), trl.get("peak_rss_mb")
        x, y = ours.get("held_out_accuracy"), trl.get("held_out_accuracy")
        out[f"{name}/trl"] = {"throughput": a / b if a and b else None, "memory": m / n if m and n else None,
                              "held_out_accuracy_diff": x - y if x is not None and y is not None else None}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps (default 4; >= 2)")
    p.add_argument("--pairs", type=int, default=8, help="B, pairs per optimizer step (default 8)")
    p.add_argument("--micro", type=int, default=8, help="pairs per forward/backward pass (default 8)")
    p.add_argument("--eval-pairs", type=int, default=32, help="held-out pairs (default 32)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=["correctness", "format", "both"], default="both")
    p.add_argument("--shots", type=int, default=0, help="solved examples before each question (default 0)")
    p.add_argument("--reference", choices=["frozen", "precomputed"], default="frozen",
                   help="a frozen copy, or log-probs computed once before training "
                   "(TRL: precompute_ref_log_probs)")
    p.add_argument("--ours-precision", choices=["bf16", "fp32", "both"], default="bf16")
    p.add_argument("--only", choices=["ours", "trl"], help="run one side only")
    p.add_argument("--quick", action="store_true", help="2 steps of 4 pairs, 8 held-out: tests the script")
    p.add_argument("--model", type=Path, help="an HF folder with the embedded model's tokenizer "
                   "(default: the embedded SmolLM2-135M-Instruct; a tiny model tests the script)")
    p.add_argument("--trl-venv", type=Path, default=DEFAULT_VENV, help=f"default {DEFAULT_VENV}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default %(default)s)")
    p.add_argument("--trl-child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.pairs, args.micro, args.eval_pairs = 2, 4, 4, 8
    if args.steps < 2 or args.pairs < 1 or args.micro < 1 or args.pairs % args.micro or args.eval_pairs < 1:
        p.error("need --steps >= 2 (the first is warm-up), --pairs a multiple of --micro, --eval-pairs >= 1")
    return args


def run_all(args: argparse.Namespace, s: Settings, workdir: Path) -> dict[str, dict[str, Any]]:
    from posttrain.models import embedded_default_path

    model = args.model or embedded_default_path()
    logs = args.out.parent / f"{args.out.stem}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    train, held_out, tokens = planned_pairs(s)
    print(f"[setup] model {model}; B = {s.pairs} pairs per step in micro-batches of {s.micro}; "
          f"{s.steps} steps; β {s.beta}; lr {s.lr}; {s.eval_pairs} held-out pairs; tokens per step {tokens}; "
          f"{os.cpu_count()} CPUs", flush=True)
    results: dict[str, dict[str, Any]] = {}
    if args.only != "trl":
        for precision in ["bf16", "fp32"] if args.ours_precision == "both" else [args.ours_precision]:
            name = f"ours-{precision}"
            results[name] = run_ours(s, model, precision, workdir, logs / f"{name}.log", tokens)
    if args.only != "ours":
        ensure_trl_venv(args.trl_venv)
        results["trl"] = run_trl(s, model, args.trl_venv, workdir, logs / "trl.log", train, held_out, tokens)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trl_child is not None:
        trl_child(args.trl_child)
        return 0
    s = Settings(steps=args.steps, pairs=args.pairs, micro=args.micro, eval_pairs=args.eval_pairs,
                 beta=args.beta, lr=args.lr, seed=args.seed, kind=args.kind, shots=args.shots,
                 reference=args.reference)
    workdir = Path(tempfile.mkdtemp(prefix="dpo-vs-trl-"))
    try:
        results = run_all(args, s, workdir)
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print_table(results)
    report = {"settings": dataclasses.asdict(s), "cpus": os.cpu_count(), "results": results,
              "ratios": ratios(results)}
    for pair, values in report["ratios"].items():
        print(f"{pair}: " + ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in values.items()))
    print("\ncommands:\n" + "\n".join(f"  {r['command']}" for r in results.values()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"results -> {args.out}")
    return 0 if all(r["returncode"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
