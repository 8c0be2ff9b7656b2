"""GRPO side by side: posttrain's recipe against Hugging Face TRL's ``GRPOTrainer`` on this machine.

What is compared: the same GRPO run done by both libraries on the embedded SmolLM2-135M-Instruct
(fp32 weights, our converted HF folder), on the same arithmetic prompts in the same order
(``arithmetic.rows(..., style="tags", shots=1)``: one solved example as a previous turn, as in the
main job, so that rewards vary and both curves mean something; shuffled by posttrain's
``DataOrder``; TRL gets exactly that sequence with ``shuffle_dataset=False``), with the same rewards
(the task's own ``format_ok`` and ``check`` as TRL-signature functions, weights 1), P prompts x G
samples per optimizer step, at most ``--max-new-tokens`` new tokens, temperature 1 (top-p 1, no
top-k), learning rate 1e-5 constant, AdamW (0.9, 0.99), gradient clipping at 1, clip ε 0.2, μ = 1, β
= 0 (no reference model), group-std advantages and per-sequence loss averaging (TRL
``loss_type="grpo"``; its default is ``"dapo"``, so it is set explicitly), and the same micro-batch
size (sequences per forward/backward; TRL's ``per_device_train_batch_size`` with
``gradient_accumulation_steps`` = N / micro so that one optimizer step sees exactly N = P·G samples
from one generation of all N), and activation checkpointing on both sides (TRL's GRPO default;
``--no-gradient-checkpointing`` turns it off on both).

How: each side runs in its own child process, one after the other. TRL lives in its own virtual
environment (created on first use at ``~/.cache/posttrain-bench/trl-venv``: the torch version of
this environment first, then ``trl==TRL_VERSION``), never a dependency of posttrain; its child is
this very file run by that environment's Python with ``--trl-child CONFIG.json``, logging the wall
time between optimizer steps and TRL's own metrics (``reward``, ``completions/mean_length``) through a
``TrainerCallback``. Ours is ``python -m posttrain.cli grpo`` with the same settings as overrides;
its per-step metrics come from ``<run>/metrics.jsonl``.

Measured for each: seconds per step (median over steps after the first, which includes warm-up;
a step is the wall time between two consecutive optimizer steps, logging included), completion
tokens per second (completion tokens of steps 2..S, EOS included, over their seconds), the rollout
share (generate + score; TRL's timed around its ``_generate_and_score_completions``), the peak RSS
of each child (``os.wait4``'s ``ru_maxrss``), and both reward curves. Printed as a table with the
ratios ours/TRL; everything, with the exact commands, goes to ``--out`` as JSON.

Precision: TRL runs fp32 compute (``bf16=False``). Ours runs ``--ours-precision`` (default bf16:
fp32 weights with bf16 autocast and a bf16 rollout copy, our recommended CPU setting; fp32 is the
like-for-like setting; ``both`` runs the two).

    .venv/bin/python benchmarks/grpo_vs_trl.py                    # 5 steps of 4x8, 64 tokens (long)
    .venv/bin/python benchmarks/grpo_vs_trl.py --ours-precision both --steps 10
    .venv/bin/python benchmarks/grpo_vs_trl.py --quick            # 2 steps of 2x4, 16 tokens
    .venv/bin/python benchmarks/grpo_vs_trl.py --only ours --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRL_VERSION = "1.16.0"
DEFAULT_VENV = Path.home() / ".cache" / "posttrain-bench" / "trl-venv"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "grpo_vs_trl.json"
DEFAULT_MICRO_BATCH = 8  # our recipe's default micro_batch_size
TRAIN_SIZE = 5000  # our recipe's default data.train_size
# precision -> (model.autocast, sampling.dtype); weights stay fp32 in both
PRECISIONS = {"fp32": ("none", "float32"), "bf16": ("bfloat16", "bfloat16")}
TRL_LOSS = {"sequence_mean": "grpo", "token_mean": "dapo"}  # our loss_agg -> TRL loss_type
CHILD_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


@dataclasses.dataclass(frozen=True)
class Settings:
    steps: int
    prompts: int
    samples: int
    max_new_tokens: int
    seed: int
    lr: float
    beta: float
    loss_agg: str
    temperature: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = 1.0
    clip_eps: float = 0.2
    shots: int = 1
    max_micro_batch: int = DEFAULT_MICRO_BATCH
    gradient_checkpointing: bool = True  # TRL's GRPOConfig default; set on both sides

    @property
    def sequences(self) -> int:
        return self.prompts * self.samples

    @property
    def micro_batch(self) -> int:
        """Largest divisor of N up to max_micro_batch: TRL needs N to be a whole number of micro-batches."""
        top = min(self.max_micro_batch, self.sequences)
        return max(d for d in range(1, top + 1) if self.sequences % d == 0)


# ------------------------------------------------------------------------------ child processes


@dataclasses.dataclass
class Child:
    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    log: Path


def run_child(label: str, command: list[str], log: Path, cwd: Path) -> Child:
    """Run one child, echoing its output prefixed by ``label`` and keeping it in ``log``; its peak RSS
    comes from ``wait4`` on that one process (children it waited for included)."""
    print(f"\n[{label}] $ {shlex.join(command)}", flush=True)
    env = {**os.environ, **CHILD_ENV}
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            print(f"  [{label}] {line.rstrip()}", flush=True)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"[{label}] exited with status {proc.returncode}; full log: {log}", flush=True)
    return Child(command, proc.returncode, wall, usage.ru_maxrss / 1024, log)  # ru_maxrss is in KiB


def summarize(steps: list[dict[str, Any]], sequences: int) -> dict[str, Any]:
    """Per-step records -> medians over steps 2..S, throughput, and the reward curves."""
    timed = steps[1:]
    tokens = [s["completion_len"] * sequences for s in timed if s.get("completion_len") is not None]
    rollouts = [s["rollout_s"] for s in timed if s.get("rollout_s") is not None]
    seconds = sum(s["seconds"] for s in timed)
    return {
        "sec_per_step": statistics.median(s["seconds"] for s in timed) if timed else None,
        "first_step_s": steps[0]["seconds"] if steps else None,
        "rollout_s_per_step": statistics.median(rollouts) if rollouts else None,
        "completion_tokens_per_s": sum(tokens) / seconds if tokens and seconds > 0 else None,
        "completion_len": [s.get("completion_len") for s in steps],
        "reward": [s.get("reward") for s in steps],
        "reward_format": [s.get("reward_format") for s in steps],
        "reward_correct": [s.get("reward_correct") for s in steps],
    }


# ------------------------------------------------------------------------------ data


def planned_rows(s: Settings) -> list[dict[str, Any]]:
    """The prompts our recipe takes, in its order: P per step for S steps."""
    from posttrain.data.sources import DataOrder
    from posttrain.data.tasks import arithmetic

    rows = arithmetic.rows(TRAIN_SIZE, s.seed, split="train", style="tags", shots=s.shots)
    order = DataOrder(rows, s.seed)
    return [row for _ in range(s.steps) for row in order.take(s.prompts)]


def _question(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else str(prompt[-1]["content"])


def prompts_per_step(questions: list[str], prompts: int) -> list[list[str]]:
    """The distinct prompts of each step, in order (a step's samples repeat each prompt G times)."""
    unique = list(dict.fromkeys(questions))
    return [unique[i:i + prompts] for i in range(0, len(unique), prompts)]


# ------------------------------------------------------------------------------ ours


def ours_overrides(s: Settings, model: Path, precision: str, output_dir: Path, name: str) -> list[str]:
    autocast, sampling_dtype = PRECISIONS[precision]
    return [
        f"model.name={model}", "model.dtype=float32", f"model.autocast={autocast}", "model.device=cpu",
        "data.train=arithmetic", f"data.options={{style: tags, shots: {s.shots}}}",
        f"data.train_size={TRAIN_SIZE}",
        "data.eval_size=0", f"prompts_per_step={s.prompts}", f"samples_per_prompt={s.samples}",
        f"micro_batch_size={s.micro_batch}",
        f"model.gradient_checkpointing={str(s.gradient_checkpointing).lower()}", "ppo_epochs=1",
        f"sampling.max_new_tokens={s.max_new_tokens}",
        f"sampling.temperature={s.temperature}", "sampling.top_p=1.0", "sampling.top_k=0",
        f"sampling.dtype={sampling_dtype}", "sampling.backend=torch", f"optim.lr={s.lr}",
        "optim.warmup_steps=0", "optim.schedule=constant", f"optim.beta1={s.adam_betas[0]}",
        f"optim.beta2={s.adam_betas[1]}", "optim.weight_decay=0.0", f"optim.max_grad_norm={s.max_grad_norm}",
        f"beta={s.beta}", "kl_estimator=k3",
        f"clip_eps_low={s.clip_eps}", f"clip_eps_high={s.clip_eps}", f"loss_agg={s.loss_agg}",
        "advantage_baseline=mean", "advantage_scale=group_std", "rewards=[task_format,task_correct]",
        "reward_weights=[]", f"run.steps={s.steps}", f"run.seed={s.seed}", "run.progress=false",
        "run.eval_every=0", "run.save_every=0", f"run.output_dir={output_dir}", f"run.name={name}",
    ]


def read_ours(run_dir: Path, prompts: int) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Per-step records from metrics.jsonl (step time = gap between logged times) and each step's prompts."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "time/rollout_s" in r]
    steps = []
    for i, row in enumerate(rows):
        seconds = row["time"] - rows[i - 1]["time"] if i else row["time/rollout_s"] + row["time/update_s"]
        steps.append({"step": row["step"], "seconds": seconds, "rollout_s": row["time/rollout_s"],
                      "update_s": row["time/update_s"], "completion_len": row.get("rollout/completion_len"),
                      "reward": row.get("rollout/reward"),
                      "reward_format": row.get("rollout/reward/task_format"),
                      "reward_correct": row.get("rollout/reward/task_correct"),
                      "rollout_tokens_per_s": row.get("rollout/tokens_per_s")})
    seen: dict[int, list[str]] = {}
    samples = run_dir / "samples.jsonl"
    for line in samples.read_text().splitlines() if samples.exists() else []:
        sample = json.loads(line)
        seen.setdefault(sample["step"], []).append(str(sample["prompt"]))
    return steps, [prompts_per_step(seen[k], prompts)[0] if seen[k] else [] for k in sorted(seen)]


def run_ours(s: Settings, model: Path, precision: str, workdir: Path, log: Path) -> dict[str, Any]:
    name = f"ours-{precision}"
    command = [sys.executable, "-m", "posttrain.cli", "grpo",
               *ours_overrides(s, model, precision, workdir, name)]
    child = run_child(name, command, log, REPO)
    result: dict[str, Any] = {"label": f"posttrain ({precision})", **_child_fields(child)}
    if child.returncode == 0:
        steps, seen = read_ours(workdir / name, s.prompts)
        result.update(steps=steps, prompts_seen=seen, **summarize(steps, s.sequences))
    return result


def _child_fields(child: Child) -> dict[str, Any]:
    return {"command": shlex.join(child.command), "returncode": child.returncode, "wall_s": child.wall_s,
            "peak_rss_mb": child.peak_rss_mb, "log": str(child.log)}


# ------------------------------------------------------------------------------ TRL (parent side)


def _trl_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"], capture_output=True,
                           text=True, env={**os.environ, **CHILD_ENV})
    return (probe.stdout.strip() or None) if probe.returncode == 0 else None


def ensure_trl_venv(venv: Path) -> str:
    """TRL's own environment: created once with this environment's torch (CPU build) installed before
    trl, so that pip does not pull a different (CUDA) torch as trl's dependency. Returns TRL's version."""
    python = venv / "bin" / "python"
    version = _trl_version(python)
    if version is None:
        torch_version = metadata.version("torch").split("+")[0]
        print(f"[setup] creating TRL's virtual environment at {venv} (torch=={torch_version}, "
              f"trl=={TRL_VERSION}); this takes a few minutes", flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, f"torch=={torch_version}"], check=True)
        subprocess.run([*pip, f"trl=={TRL_VERSION}"], check=True)
        version = _trl_version(python)
        if version is None:
            raise SystemExit(f"[setup] trl does not import in {venv}; delete it and run again")
    if version != TRL_VERSION:
        print(f"[setup] note: {venv} has trl {version}, this script pins {TRL_VERSION}", flush=True)
    print(f"[setup] TRL {version} in {venv}", flush=True)
    return version


def run_trl(s: Settings, model: Path, venv: Path, workdir: Path, log: Path) -> dict[str, Any]:
    rows = planned_rows(s)
    config = {"settings": dataclasses.asdict(s), "model": str(model), "repo": str(REPO),
              "output_dir": str(workdir / "trl"), "result": str(workdir / "trl-result.json"),
              "rows": [{"prompt": row["prompt"], "answer": row["answer"]} for row in rows]}
    config_path = workdir / "trl-config.json"
    config_path.write_text(json.dumps(config))
    command = [str(venv / "bin" / "python"), str(Path(__file__).resolve()), "--trl-child", str(config_path)]
    child = run_child("trl", command, log, REPO)
    result: dict[str, Any] = {"label": "TRL (fp32)", **_child_fields(child)}
    if child.returncode == 0:
        out = json.loads(Path(config["result"]).read_text())
        questions = out.pop("questions")
        result.update(out)
        result["label"] = f"TRL {out['versions']['trl']} (fp32)"
        result.update(summarize(out["steps"], s.sequences))
        result["prompts_seen"] = [prompts_per_step(q, s.prompts)[0] if q else [] for q in questions]
    return result


# ------------------------------------------------------------------------------ TRL (child side)


def _trl_reward(kind: str, judge: Callable[[str, dict[str, Any]], bool],
                seen: list[list[str]] | None = None) -> Callable[..., list[float]]:
    """A TRL-signature reward: ``(prompts, completions, answer=..., **kwargs) -> [float]``."""

    def reward(prompts: list[Any], completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
        if seen is not None:
            seen.append([_question(p) for p in prompts])
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [float(judge(text, {"answer": a, "style": "tags"})) for text, a in zip(texts, answer)]

    reward.__name__ = kind  # TRL logs rewards/<__name__>/mean
    return reward


def _trl_config(s: Settings, output_dir: str) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir, max_steps=s.steps, seed=s.seed, use_cpu=True, bf16=False, fp16=False,
        model_init_kwargs={"dtype": "float32"}, per_device_train_batch_size=s.micro_batch,
        gradient_accumulation_steps=s.sequences // s.micro_batch, num_generations=s.samples,
        max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=1.0, top_k=0,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=s.adam_betas[0],
        adam_beta2=s.adam_betas[1], weight_decay=0.0, max_grad_norm=s.max_grad_norm, beta=s.beta,
        gradient_checkpointing=s.gradient_checkpointing, num_iterations=1, epsilon=s.clip_eps,
        loss_type=TRL_LOSS[s.loss_agg], scale_rewards="group",
        shuffle_dataset=False, remove_unused_columns=False, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, log_completions=False, dataloader_num_workers=0)


def _trl_recorder(rollout_times: list[float]) -> Any:
    """A TrainerCallback recording each optimizer step's wall time, rollout time and TRL's metrics."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.steps: dict[int, dict[str, Any]] = {}
            self.last = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            rollout = sum(rollout_times) if rollout_times else None
            rollout_times.clear()
            self.steps[state.global_step] = {"step": state.global_step, "seconds": now - self.last,
                                             "rollout_s": rollout}
            self.last = now

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "reward" in logs and state.global_step in self.steps:
                self.steps[state.global_step].update(
                    reward=logs["reward"], completion_len=logs.get("completions/mean_length"),
                    reward_format=logs.get("rewards/task_format/mean"),
                    reward_correct=logs.get("rewards/task_correct/mean"), trl_step_time=logs.get("step_time"))

    return Recorder()


def trl_child(config_path: Path) -> None:
    """Runs inside TRL's environment: train, then write per-step records and versions as JSON."""
    import warnings

    import datasets
    import torch
    import transformers
    import trl

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames, raised inside TRL
    config = json.loads(config_path.read_text())
    sys.path.insert(0, config["repo"])  # only for the task's judges, shared with our recipe
    from posttrain.data.tasks import arithmetic

    fields = config["settings"]
    s = Settings(**{**fields, "adam_betas": tuple(fields["adam_betas"])})
    rollout_times: list[float] = []

    class TimedGRPOTrainer(trl.GRPOTrainer):  # type: ignore[misc]
        def _generate_and_score_completions(self, inputs: Any) -> Any:
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            rollout_times.append(time.perf_counter() - start)
            return out

    questions: list[list[str]] = []
    rewards = [_trl_reward("task_format", arithmetic.format_ok),
               _trl_reward("task_correct", arithmetic.check, seen=questions)]
    args = _trl_config(s, config["output_dir"])
    recorder = _trl_recorder(rollout_times)
    trainer = TimedGRPOTrainer(model=config["model"], reward_funcs=rewards, args=args,
                               train_dataset=datasets.Dataset.from_list(config["rows"]), callbacks=[recorder])
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps", "generation_batch_size",
            "steps_per_generation", "num_generations", "loss_type", "scale_rewards", "optim",
            "lr_scheduler_type", "gradient_checkpointing")
    effective = {k: str(getattr(args, k)) for k in keys}
    print(f"[trl child] torch threads {torch.get_num_threads()}, GRPOConfig {effective}", flush=True)
    trainer.train()
    versions = {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
    steps = [recorder.steps[k] for k in sorted(recorder.steps)]
    result = {"steps": steps, "questions": questions, "versions": versions, "trl_config": effective}
    Path(config["result"]).write_text(json.dumps(result))


# ------------------------------------------------------------------------------ report


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    rows = [("s / step (median, steps 2..S)", "sec_per_step", ".2f"), ("first step s", "first_step_s", ".2f"),
            ("rollout s / step (median)", "rollout_s_per_step", ".2f"),
            ("completion tokens / s", "completion_tokens_per_s", ".1f"),
            ("peak RSS MB", "peak_rss_mb", ".0f"),
            ("child wall s (load, train, save)", "wall_s", ".1f")]
    names = list(results)
    width = max(16, *(len(results[n]["label"]) for n in names))
    print("\n" + " " * 34 + "".join(f"{results[n]['label']:>{width + 2}}" for n in names))
    for title, key, spec in rows:
        print(f"{title:<34}" + "".join(f"{_fmt(results[n].get(key), spec):>{width + 2}}" for n in names))
    for curve in ("reward", "reward_format", "reward_correct", "completion_len"):
        for n in names:
            values = " ".join(_fmt(v, ".2f") for v in results[n].get(curve, []))
            print(f"{curve + ' per step':<34}{results[n]['label']}: {values}")


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """ours/TRL for every ours run: throughput (>1: ours faster), step-time speed-up (TRL s / ours s),
    memory (<1: ours smaller)."""
    trl = results.get("trl", {})
    out = {}
    for name, ours in results.items():
        if name == "trl" or not trl:
            continue

        def ratio(a: Any, b: Any) -> float | None:
            return a / b if a and b else None

        out[f"{name}/trl"] = {
            "throughput": ratio(ours.get("completion_tokens_per_s"), trl.get("completion_tokens_per_s")),
            "step_speedup": ratio(trl.get("sec_per_step"), ours.get("sec_per_step")),
            "memory": ratio(ours.get("peak_rss_mb"), trl.get("peak_rss_mb")),
        }
    return out


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps (default 5; >= 2)")
    p.add_argument("--prompts", type=int, default=4, help="P, prompts per step (default 4)")
    p.add_argument("--samples", type=int, default=8, help="G, samples per prompt (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="default 64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--micro-batch", type=int, default=DEFAULT_MICRO_BATCH,
                   help="sequences per forward/backward on both sides (largest divisor of N up to this; "
                        "default %(default)s; the main job uses 32)")
    p.add_argument("--shots", type=int, default=1,
                   help="solved examples before each question, as in the main job (default 1)")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                   help="turn activation checkpointing off on both sides (on by default: TRL's GRPO default)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient β (0: no reference model)")
    p.add_argument("--loss-agg", choices=sorted(TRL_LOSS), default="sequence_mean",
                   help="sequence_mean (TRL loss_type grpo) or token_mean (TRL dapo, its default)")
    p.add_argument("--ours-precision", choices=["bf16", "fp32", "both"], default="bf16",
                   help="bf16: fp32 weights, bf16 autocast and rollout copy (default); fp32: all fp32")
    p.add_argument("--only", choices=["ours", "trl"], help="run one side only")
    p.add_argument("--quick", action="store_true", help="2 steps of 2x4 samples, 16 tokens: tests the script")
    p.add_argument("--trl-venv", type=Path, default=DEFAULT_VENV, help=f"default {DEFAULT_VENV}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default %(default)s)")
    p.add_argument("--keep-runs", action="store_true", help="keep the children's run folders")
    p.add_argument("--trl-child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.prompts, args.samples, args.max_new_tokens = 2, 2, 4, 16
    if args.steps < 2 or args.prompts < 1 or args.samples < 2 or args.max_new_tokens < 1:
        p.error("need --steps >= 2 (the first is warm-up), --prompts >= 1, --samples >= 2, "
                "--max-new-tokens >= 1")
    return args


def run_all(args: argparse.Namespace, s: Settings, workdir: Path) -> dict[str, dict[str, Any]]:
    from posttrain.models import embedded_default_path

    model = embedded_default_path()
    logs = args.out.parent / f"{args.out.stem}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"[setup] model {model}; N = P·G = {s.prompts}·{s.samples} = {s.sequences} sequences per step in "
          f"micro-batches of {s.micro_batch}; ≤ {s.max_new_tokens} new tokens; {s.steps} steps; "
          f"loss {s.loss_agg}; β {s.beta}; {os.cpu_count()} CPUs", flush=True)
    results: dict[str, dict[str, Any]] = {}
    if args.only != "trl":
        for precision in ["bf16", "fp32"] if args.ours_precision == "both" else [args.ours_precision]:
            name = f"ours-{precision}"
            results[name] = run_ours(s, model, precision, workdir, logs / f"{name}.log")
    if args.only != "ours":
        ensure_trl_venv(args.trl_venv)
        results["trl"] = run_trl(s, model, args.trl_venv, workdir, logs / "trl.log")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trl_child is not None:
        trl_child(args.trl_child)
        return 0
    s = Settings(steps=args.steps, prompts=args.prompts, samples=args.samples,
                 max_new_tokens=args.max_new_tokens, seed=args.seed, lr=args.lr, beta=args.beta,
                 loss_agg=args.loss_agg, shots=args.shots, max_micro_batch=args.micro_batch,
                 gradient_checkpointing=args.gradient_checkpointing)
    workdir = Path(tempfile.mkdtemp(prefix="grpo-vs-trl-"))
    try:
        results = run_all(args, s, workdir)
    finally:
        if args.keep_runs:
            print(f"[setup] run folders kept in {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    print_table(results)
    seen = [r["prompts_seen"] for r in results.values() if "prompts_seen" in r]
    same_prompts = all(x == seen[0] for x in seen) if len(seen) > 1 else None
    report = {"settings": {**dataclasses.asdict(s), "sequences": s.sequences, "micro_batch": s.micro_batch},
              "cpus": os.cpu_count(), "results": results, "ratios": ratios(results),
              "same_prompts": same_prompts}
    for pair, values in report["ratios"].items():
        shown = ", ".join(f"{k} {_fmt(v, '.2f')}x" for k, v in values.items())
        print(f"{pair}: {shown}")
    if same_prompts is not None:
        print(f"same prompts in the same order on every side: {same_prompts}")
    print("\ncommands:\n" + "\n".join(f"  {r['command']}" for r in results.values()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"results -> {args.out}")
    return 0 if all(r["returncode"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
