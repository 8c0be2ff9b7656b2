"""Peak memory of PPO against GRPO on the same model and batch, each run in a child process of its own.

Every run: the same model (default the embedded SmolLM2-135M-Instruct: fp32 weights, bf16 autocast,
bf16 rollout copy), the same one-shot arithmetic prompts and rewards (the task's format and
correctness checks), N = P·G sequences per step, the same micro-batch size, μ (``ppo_epochs``),
max_new_tokens, learning rate and β > 0, so both hold a frozen reference. GRPO samples G responses
to each of P prompts; PPO samples one response to each of P·G prompts (its usual shape, the same N).
PPO also holds its critic: ``shared`` (a value head on the policy) and ``separate`` (a second
backbone, with its gradients and AdamW state) are measured as two variants. ``--reward-model PATH``
rewards every variant with a trained reward model instead (one more frozen model in each).

Measured per child: peak RSS (``os.wait4``'s ru_maxrss, through ``grpo_vs_trl.run_child``), wall
time, and the median seconds per step (rollout + update, from the run's metrics.jsonl, steps after
the first). Printed as a table with each variant's ratio to GRPO; everything goes to ``--out``.

    .venv/bin/python benchmarks/ppo_vs_grpo_memory.py              # 3 steps of 4 x 8 = 32 sequences
    .venv/bin/python benchmarks/ppo_vs_grpo_memory.py --quick      # 2 steps of 2 x 4, 16 tokens
    .venv/bin/python benchmarks/ppo_vs_grpo_memory.py --only grpo,ppo-shared
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from grpo_vs_trl import run_child  # this folder is on sys.path when the script runs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "ppo_vs_grpo_memory.json"
VARIANTS = ("grpo", "ppo-shared", "ppo-separate")


def overrides(args: argparse.Namespace, variant: str, output_dir: Path) -> list[str]:
    """The command-line overrides of one variant: everything but the algorithm is the same."""
    rewards = f"[reward_model:{args.reward_model}]" if args.reward_model else "[task_format, task_correct]"
    common = [f"model.name={args.model}", "model.autocast=bfloat16", "sampling.dtype=bfloat16",
              "sampling.temperature=1.0", f"sampling.max_new_tokens={args.max_new_tokens}",
              "data.train=arithmetic", "data.options={style: tags, digits: 2, ops: ['+'], shots: 1}",
              "data.train_size=500", "data.eval_size=0", f"run.steps={args.steps}", "run.progress=false",
              f"run.output_dir={output_dir}", f"run.name={variant}", f"micro_batch_size={args.micro_batch}",
              f"ppo_epochs={args.ppo_epochs}", f"beta={args.beta}", "optim.lr=1e-5", f"rewards={rewards}"]
    if variant == "grpo":
        return [*common, f"prompts_per_step={args.prompts}", f"samples_per_prompt={args.samples}"]
    critic = variant.removeprefix("ppo-")
    return [*common, f"prompts_per_step={args.prompts * args.samples}", "samples_per_prompt=1",
            f"critic={critic}"]


def seconds_per_step(run_dir: Path) -> float | None:
    """Median of rollout + update seconds over the steps after the first (which warms up)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r["time/rollout_s"] + r["time/update_s"] for r in rows if "time/update_s" in r][1:]
    return statistics.median(steps) if steps else None


def run_variant(args: argparse.Namespace, variant: str, workdir: Path, logs: Path) -> dict[str, Any]:
    recipe = variant.split("-")[0]
    command = [sys.executable, "-m", "posttrain.cli", recipe, *overrides(args, variant, workdir)]
    child = run_child(variant, command, logs / f"{variant}.log", REPO)
    run_dir = workdir / variant
    return {"command": child.command, "returncode": child.returncode, "wall_s": round(child.wall_s, 1),
            "peak_rss_mb": round(child.peak_rss_mb), "log": str(child.log),
            "sec_per_step": seconds_per_step(run_dir) if child.returncode == 0 else None}


def print_table(results: dict[str, dict[str, Any]]) -> None:
    base = results.get("grpo", {}).get("peak_rss_mb")
    print(f"\n{'variant':<14} {'peak RSS MB':>12} {'x GRPO':>7} {'s/step':>8} {'wall s':>8}")
    for variant, r in results.items():
        ratio = f"{r['peak_rss_mb'] / base:.2f}" if base and r["returncode"] == 0 else "-"
        per_step = f"{r['sec_per_step']:.1f}" if r["sec_per_step"] is not None else "-"
        print(f"{variant:<14} {r['peak_rss_mb']:>12} {ratio:>7} {per_step:>8} {r['wall_s']:>8}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4, help="GRPO's P (PPO gets P·G prompts)")
    parser.add_argument("--samples", type=int, default=8, help="GRPO's G")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=1, help="μ, the same for both")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--reward-model", default="", help="final/ of a `posttrain rm` run (every variant)")
    parser.add_argument("--only", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--quick", action="store_true", help="2 steps of 2 x 4 sequences, 16 new tokens")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.prompts, args.samples, args.max_new_tokens = 2, 2, 4, 16
    unknown = set(args.only.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    logs = args.out.with_name(args.out.stem + "-logs")
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ppo-vs-grpo-") as tmp:  # run dirs: checkpoints are large
        for variant in [v for v in VARIANTS if v in args.only.split(",")]:
            results[variant] = run_variant(args, variant, Path(tmp), logs)
    print_table(results)
    base = results.get("grpo", {}).get("peak_rss_mb")
    ratios = {v: round(r["peak_rss_mb"] / base, 3) for v, r in results.items()
              if base and r["returncode"] == 0}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "only")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {**settings, "out": str(args.out)}, "results": results,
                                    "peak_rss_ratio_to_grpo": ratios}, indent=1, default=str) + "\n")
    print(f"\nwritten to {args.out}")
    return 0 if all(r["returncode"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
