"""What every recipe does around its own loop: policy, run directory, tracking, checkpoints, resume.

A recipe calls ``load_policy`` and ``start_run`` before its loop, ``run.save(...)`` inside it and
``run.finish(...)`` after it; the loop itself stays in the recipe.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from posttrain import distributed
from posttrain.checkpoint import Checkpointer, find_resume_checkpoint, verify_checkpoint
from posttrain.config import ModelConfig, RunConfig, to_dict
from posttrain.errors import CheckpointError, RewardError
from posttrain.health import HealthMonitor
from posttrain.keep_best import BestSoFar, sentence, write_record
from posttrain.keep_best import check_config as check_keep_best
from posttrain.models import (
    add_lora,
    count_parameters,
    enable_activation_checkpointing,
    load_model,
    load_tokenizer,
    resolve_device,
)
from posttrain.models import save_pretrained as save_hf
from posttrain.tracking import Tracker, make_run_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_policy(model_config: ModelConfig) -> tuple[nn.Module, Any, torch.device]:
    """The trainable policy (full or LoRA), its tokenizer, and the device it lives on."""
    device = resolve_device(model_config.device)
    tokenizer = load_tokenizer(model_config.name)
    model = load_model(model_config.name, dtype=model_config.dtype, device=str(device))
    if model_config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if model_config.lora_rank > 0:
        targets: list[str] | str = model_config.lora_targets
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        model = add_lora(model, rank=model_config.lora_rank, alpha=model_config.lora_alpha,
                         dropout=model_config.lora_dropout, target_modules=targets)
    model.train()
    return model, tokenizer, device


@dataclass
class Run:
    """A run in progress: its directory, tracker, checkpointer and where it (re)starts."""

    dir: Path
    tracker: Tracker
    checkpointer: Checkpointer
    config: Any
    start_step: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    health: HealthMonitor | None = None
    """The run-health alarms of a config with a ``health`` section (the RL recipes)."""

    def save(self, step: int, model: nn.Module, optimizer: Any, scheduler: Any, state: dict[str, Any],
             *, force: bool = False) -> None:
        """Checkpoint every ``run.save_every`` steps (and whenever ``force``)."""
        every = self.config.run.save_every
        if force or (every > 0 and step % every == 0):
            # trainer ranks hold the same state: rank 0 writes it (under fsdp each rank its shards too)
            if distributed.is_writer() or distributed.sharded():
                self.checkpointer.save(step, model, optimizer, scheduler, {**state, "step": step})
            distributed.barrier()

    def finish(self, model: nn.Module, tokenizer: Any, summary: dict[str, Any] | None = None,
               plot_keys: list[str] | None = None, kept: dict[str, Any] | None = None) -> Path:
        """Write final/ (an HF folder), the plots and summary.md; return the run directory. ``kept``
        (``run.keep_best``: which step ``model`` holds) goes to best.json, summary.md and the last line."""
        weights = distributed.full_state_dict(model)  # fsdp: gathered to rank 0, which alone exports
        if weights is None or distributed.is_writer():
            save_hf(model, tokenizer, self.dir / "final", state_dict=weights)
        notes = None
        if kept is not None:
            write_record(self.dir, kept)
            summary = {**(summary or {}), **{f"keep_best/{key}": value for key, value in kept.items()}}
            notes = [sentence(kept)]
        sections = [self.health.markdown()] if self.health is not None else []
        self.tracker.close(summary=summary, plot_keys=plot_keys, notes=notes, sections=sections)
        distributed.stop()
        if notes:
            print(f"[{self.tracker.desc}] {notes[0]}")
        return self.dir

    def check_health(self, step: int, can_stop: bool = True) -> bool:
        """Check the run-health alarms on everything logged so far: log ``health/`` metrics, print one
        line per alarm that starts firing; True when one that ``run.stop_on`` names is firing (and
        ``can_stop``: not after the last step's final evaluation)."""
        if self.health is None:
            return False
        metrics, started = self.health.update()
        self.tracker.log(step, metrics, show=False)  # the step printed its progress line already
        for alarm in started:
            print(alarm.line(), flush=True)
        stopping = self.health.stop_reasons() if can_stop else []
        if stopping:
            print(f"[health] stopping after step {step}: run.stop_on names "
                  f"{', '.join(a.name for a in stopping)}; final/ (and a checkpoint, where the recipe keeps "
                  f"them) holds the model of step {step}", flush=True)
        return bool(stopping)


def start_run(config: Any, recipe: str, model: nn.Module, optimizer: Any, scheduler: Any,
              total_steps: int | None = None) -> Run:
    """Create (or reopen with ``run.resume``) the run directory and restore the last checkpoint."""
    run_config: RunConfig = config.run
    distributed.check_launched(config)
    # on trainer ranks, rank 0 makes the run directory and the others write theirs to scratch
    run_dir = distributed.from_writer(lambda: make_run_dir(
        run_config.output_dir, run_config.name or None, recipe, resume=run_config.resume,
        overwrite=run_config.overwrite))
    checkpointer = Checkpointer(run_dir, keep_last=run_config.keep_last)
    start_step, state = 0, {}
    config_dict = to_dict(config)
    if run_config.resume:  # the tracker warns about each changed config key
        state = checkpointer.load(find_resume_checkpoint(run_dir), model, optimizer, scheduler)
        start_step = int(state["step"])
    own_dir = distributed.own_dir(run_dir)
    tracker = Tracker(own_dir, total_steps=total_steps or run_config.steps, config=config_dict,
                      resume_step=start_step, tensorboard=run_config.tensorboard,
                      progress=run_config.progress and distributed.is_writer(), desc=recipe)
    health = getattr(config, "health", None)  # the RL recipes' alarms; on trainer ranks, rank 0 decides
    monitor = (None if health is None or not distributed.is_writer()
               else HealthMonitor(health, run_config.stop_on, run_dir / "metrics.jsonl"))
    trainable, total = count_parameters(model)
    print(f"[{recipe}] run dir {run_dir}; {trainable / 1e6:.1f}M of {total / 1e6:.1f}M parameters trainable"
          + (f"; resuming after step {start_step}" if start_step else ""))
    distributed.start(config)  # the cluster of config.cluster, if any; Run.finish lets it go
    return Run(dir=own_dir, tracker=tracker, checkpointer=checkpointer, config=config,
               start_step=start_step, state=state, health=monitor)


def replace(config: Any, **changes: Any) -> Any:
    """A copy of a config dataclass with some fields changed (sections copied, not shared)."""
    return dataclasses.replace(config, **changes)


def held_out_metrics(rewards: bool = False) -> list[str]:
    """What ``evaluate_and_log``'s task evaluation logs and, with ``rewards``, ``rl.held_out_rewards``
    (a recipe's ``Config.eval_metrics()`` lists its own; ``run.keep_best`` chooses by one of them)."""
    task = ["eval/accuracy", "eval/format", "eval/mean_length", "eval/problems", "eval/accuracy_any"]
    return task + (["eval/reward", "eval/reward_std", "eval/reward/<function>"] if rewards else [])


def evaluate_and_log(run: Run, model: nn.Module, tokenizer: Any, rows: list[dict[str, Any]], task: Any,
                     config: Any) -> Any:
    """A function ``evaluate(step) -> metrics`` for held-out greedy evaluation with the task's check().

    Metrics go to ``eval/`` in metrics.jsonl; per-problem results to ``eval/step-000040.jsonl``.
    """
    from posttrain.data.formats import write_jsonl
    from posttrain.eval.evaluate import evaluate_rows

    def evaluate(step: int) -> dict[str, float]:
        if not rows or task is None:
            return {}
        was_training = model.training
        model.eval()
        started = __import__("time").perf_counter()
        metrics, per_row = evaluate_rows(
            model, tokenizer, rows, task, max_new_tokens=config.sampling.max_new_tokens,
            system_prompt=config.data.system_prompt or None,
            engine_options={"dtype": config.sampling.dtype})
        model.train(was_training)
        (run.dir / "eval").mkdir(exist_ok=True)
        write_jsonl(per_row, run.dir / "eval" / f"step-{step:06d}.jsonl")
        logged = {f"eval/{k}": v for k, v in metrics.items()}
        logged["time/eval_s"] = __import__("time").perf_counter() - started
        run.tracker.log(step, logged)
        print(f"[eval] step {step}: accuracy {metrics['accuracy']:.1%}, format {metrics['format']:.1%}, "
              f"mean length {metrics['mean_length']:.1f} tokens on {len(per_row)} held-out problems")
        return metrics

    return evaluate


def log_rollout_samples(run: Run, step: int, rollouts: Any, scores: Any, rows: list[dict[str, Any]],
                        advantages_N: torch.Tensor) -> None:
    """Every rollout of the step to samples.jsonl: prompt, completion, each reward, advantage, and the
    columns reward functions gave ``log_extra`` (a name samples.jsonl already uses is refused)."""
    extra = scores.logged.extra if scores.logged else {}
    samples = []
    for i, text in enumerate(rollouts.texts):
        row = rows[i]
        prompt = row.get("prompt") if isinstance(row.get("prompt"), str) else (
            (row.get("prompt") or row.get("messages") or [{}])[-1].get("content"))
        sample = {"prompt": prompt, "completion": text, "reward": _float(scores.total[i]),
                  "advantage": _float(advantages_N[i]), "finish_reason": rollouts.finish_reasons[i],
                  "tokens": len(rollouts.completion_ids[i])}
        sample.update({f"reward/{name}": _float(values[i]) for name, values in scores.per_fn.items()})
        if "answer" in row:
            sample["answer"] = row["answer"]
        clashes = sorted(set(extra) & {*sample, "step"})
        if clashes:
            raise RewardError(f"a reward function logged column(s) {', '.join(clashes)} with log_extra; "
                              "samples.jsonl uses those names itself, choose others")
        sample.update({column: values[i] for column, values in extra.items()})
        samples.append(sample)
    run.tracker.log_samples(step, samples)


def _float(value: Any) -> float | None:
    number = float(value)
    return None if number != number else number


def eval_summary(recipe: str, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Held-out metrics before and after training, printed and returned for summary.md."""
    summary = {f"eval_before/{k}": v for k, v in before.items()}
    summary.update({f"eval_after/{k}": v for k, v in after.items()})
    if "accuracy" in before and "accuracy" in after:
        print(f"[{recipe}] held-out accuracy {before.get('accuracy', 0):.1%} -> "
              f"{after.get('accuracy', 0):.1%}, format {before.get('format', 0):.1%} -> "
              f"{after.get('format', 0):.1%}")
    return summary


@dataclass
class Setup:
    """Everything a recipe's loop needs, built the same way for every recipe by ``setup``."""

    model: nn.Module
    tokenizer: Any
    device: torch.device
    optimizer: Any
    scheduler: Any
    stepper: Any
    run: Run
    task: Any
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    evaluate: Any
    eval_before: dict[str, float]
    examples: list[tuple[list[int], list[int]]] | None = None
    """The training conversations encoded (ids, loss mask) while they were checked ("conversations")."""
    best: BestSoFar | None = None
    """``run.keep_best``: the best held-out evaluation so far (None: final/ is the last step's)."""
    checkpointed: nn.Module | None = None
    """The module the checkpoints hold (PPO's actor-critic, while ``model`` ends as its policy)."""
    stopped_at: int | None = None
    """The step after which a run-health alarm named in ``run.stop_on`` stopped the run."""
    evaluated: tuple[int, dict[str, float]] | None = None

    def __post_init__(self) -> None:
        self.checkpointed = self.checkpointed or self.model

    def end_of_step(self, step: int, state: dict[str, Any]) -> bool:
        """Held-out evaluation every ``run.eval_every`` steps, the run-health alarms, a checkpoint every
        ``run.save_every`` steps, at once when the evaluation is the best so far (``run.keep_best``:
        rotation keeps that one) and when an alarm stops the run (then True)."""
        config = self.run.config
        if self.best is not None and step == 1:  # the evaluation before training is complete by now
            self.best.check_produced(self.eval_before)
        improved = False
        if config.run.eval_every and step % config.run.eval_every == 0 and step < config.run.steps:
            self.evaluated = (step, self.evaluate(step))
            improved = self.best is not None and self.best.consider(step, self.evaluated[1])
        stop = distributed.from_writer(lambda: self.run.check_health(step))  # trainer ranks stop together
        kept = self.best.state() if self.best is not None else {}
        self.run.save(step, self.model, self.optimizer, self.scheduler,
                      {**state, "eval_before": self.eval_before, **kept},
                      force=step == config.run.steps or improved or stop)
        self.stopped_at = step if stop else None
        return stop

    def also_evaluate(self, extra: Callable[[int], dict[str, float]]) -> None:
        """Run ``extra(step)`` (which logs its own metrics) with every held-out evaluation from now on,
        and add its step-0 metrics to ``eval_before`` on a fresh run (a resumed one has them saved)."""
        task_evaluate = self.evaluate
        self.evaluate = lambda step: {**task_evaluate(step), **extra(step)}
        if self.run.start_step == 0:
            self.eval_before.update(extra(0))

    def finish(self, recipe: str, plot_keys: list[str],
               summarize: Callable[[str, dict[str, float], dict[str, float]], dict[str, Any]] = eval_summary,
               ) -> Path:
        """Final evaluation (at the step an alarm stopped the run, else the last), ``summarize(recipe,
        before, after)`` for summary.md, export and plots (eval/ curves of the metrics the evaluation
        produced). With ``run.keep_best`` the final evaluation is the last candidate and final/ is
        exported from the best one's checkpoint."""
        last = self.stopped_at or self.run.config.run.steps
        after = self.evaluated[1] if self.evaluated and self.evaluated[0] == last else self.evaluate(last)
        self.run.check_health(last, can_stop=False)  # the final evaluation may show a fall of the guard
        summary = summarize(recipe, self.eval_before, after)
        if self.stopped_at is not None:
            summary["stopped_after_step"] = self.stopped_at
        plot_keys = [key for key in plot_keys if not key.startswith("eval/") or key[5:] in self.eval_before]
        kept = None
        if self.best is not None:
            self.best.consider(last, after)
            kept = self.best.record(last, after)
            if self.best.step not in (None, last):
                self.run.checkpointer.load_weights(self.best.step, self.checkpointed)
        return self.run.finish(self.model, self.tokenizer, summary=summary, plot_keys=plot_keys, kept=kept)


def setup(config: Any, recipe: str, train_kind: str, train_rows: list[dict[str, Any]] | None = None,
          eval_rows: list[dict[str, Any]] | None = None, optimizer_steps_per_step: int = 1,
          load: Callable[[ModelConfig], tuple[nn.Module, Any, torch.device]] = load_policy,
          lr_by_prefix: dict[str, float] | None = None,
          evaluated: Callable[[nn.Module], nn.Module] | None = None) -> Setup:
    """Seed, load data and check it with the tokenizer alone (``data.preflight``: before any weights
    load or the run folder exists), load the model (``load``: the policy, or e.g. a reward model),
    build optimizer/schedule/stepper, open (or resume) the run, and evaluate the starting policy on the
    held-out rows (``evaluated``: the part of the loaded module that generates, e.g. PPO's policy inside
    its actor-critic). The LR schedule spans ``run.steps * optimizer_steps_per_step`` optimizer steps
    (RL recipes step several times per rollout); ``lr_by_prefix``: see ``build_optimizer``."""
    from posttrain.data.preflight import check_inputs
    from posttrain.data.sources import load_split, resolve_task
    from posttrain.training import Stepper, build_optimizer, build_scheduler

    check_keep_best(config)
    seed_everything(config.run.seed)
    task = resolve_task(config.data)
    if train_rows is None:
        train_rows = load_split(config.data, "train", train_kind, config.run.seed)
    if eval_rows is None:
        eval_rows = load_split(config.data, "eval", "prompts", config.run.seed)
    examples = check_inputs(config, load_tokenizer(config.model.name), train_kind, train_rows, eval_rows)
    model, tokenizer, device = load(config.model)
    model = distributed.shard(model)  # cluster.sharding: fsdp, before the optimizer holds the parameters
    optimizer = build_optimizer(model, config.optim, lr_by_prefix)
    scheduler = build_scheduler(optimizer, config.optim, config.run.steps * optimizer_steps_per_step)
    stepper = Stepper(model, optimizer, scheduler, config.optim)
    run = start_run(config, recipe, model, optimizer, scheduler)
    policy = evaluated(model) if evaluated is not None else model
    evaluate = evaluate_and_log(run, policy, tokenizer, eval_rows, task, config)
    before = evaluate(0) if run.start_step == 0 else run.state.get("eval_before", {})
    return Setup(model=model, tokenizer=tokenizer, device=device, optimizer=optimizer, scheduler=scheduler,
                 stepper=stepper, run=run, task=task, train_rows=train_rows, eval_rows=eval_rows,
                 evaluate=evaluate, eval_before=before, best=best_so_far(run),
                 examples=examples)


def best_so_far(run: Run) -> BestSoFar | None:
    """``run.keep_best``'s record: fresh, or the best recorded in the checkpoint the run resumed from."""
    best = BestSoFar.start(run.config.run, run.state)
    if best is not None and best.step is not None:
        try:
            verify_checkpoint(run.checkpointer.step_path(best.step))
        except CheckpointError as error:  # removed by hand: rotation keeps it
            print(f"[keep_best] the best so far, step {best.step}, cannot be restored ({error}); "
                  f"choosing again from step {run.start_step + 1} on")
            best = BestSoFar(best.metric, best.mode)
        else:
            print(f"[keep_best] best so far: step {best.step}, {best.metric} {best.value:.4g}")
    return best
