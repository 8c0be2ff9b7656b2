"""Best-of-N rejection sampling into SFT data, then SFT, in rounds: Llama 2's rejection-sampling
fine-tuning (arXiv:2307.09288, §3.2.3) and RAFT (arXiv:2304.06767); with a reward threshold and
every passing response kept, the filter of ReST (arXiv:2308.08998) and expert iteration.

Each round r = 1..``rounds``:

1. take ``prompts_per_round`` training prompts (fresh ones each round, then epoch after epoch);
2. sample N responses to each (``n``, at ``sampling.temperature``) from the current model: the
   starting model in round 1, the previous round's fine-tuned model after that (Llama 2);
3. score every response with the reward functions or a reward model (``reward_model:PATH``), the
   same specs as GRPO and PPO;
4. keep each prompt's best response (``keep: best``; a tie goes to the first sampled) or every
   distinct response (``keep: all``) whose reward reaches ``min_reward``; a response cut at
   max_new_tokens (with ``drop_truncated``) or without text is never kept;
5. write the kept ones to ``round-r/data.jsonl`` in a format ``posttrain sft`` reads: ``prompt``
   (the chat turns sampled from) and ``completion`` (the response, the only text trained on), with
   the reward and round of each;
6. with ``sft: true``, fine-tune the current model on that file with the SFT recipe itself
   (``sft_epochs`` passes; with ``accumulate``, on the kept rows of every round so far, as Llama 2
   did), in ``round-r/sft/``;
7. evaluate greedily on held-out prompts before round 1 and after each round: the task's check()
   (``eval/accuracy``) and, when some reward is not the task's own, the rewards (``eval/reward``).

Logged per round (x = round): kept fraction, mean best reward, mean reward of all samples, the SFT
loss, held-out metrics. ``run.steps`` is not used: ``rounds`` and ``sft_epochs`` set the length.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posttrain.config import DataConfig, HealthConfig, ModelConfig, OptimConfig, RunConfig, SamplingConfig
from posttrain.data.chat import prompt_messages
from posttrain.data.formats import write_jsonl
from posttrain.data.sources import DataOrder, load_split, resolve_task
from posttrain.models import load_model, load_tokenizer, resolve_device
from posttrain.recipes import sft
from posttrain.rewards.base import TrainerState
from posttrain.rewards.setup import build_reward_fns
from posttrain.rl import group_metrics, held_out_rewards, rollout_metrics, sample_and_score
from posttrain.runner import Run, eval_summary, evaluate_and_log, seed_everything, start_run
from posttrain.tracking import read_metrics

KEEP = ("best", "all")
TASK_REWARDS = ("task_correct", "task_format")  # what the task's own evaluation already measures


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(train_size=2000, eval_size=100))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, schedule="cosine"))
    """The SFT stage's optimizer."""
    run: RunConfig = field(default_factory=RunConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=96))
    """Sampling of the N responses (and max_new_tokens of the greedy held-out evaluation)."""
    health: HealthConfig = field(default_factory=HealthConfig)
    """Run-health alarms, checked after each round (x = round)."""
    n: int = 8
    """N: responses sampled per prompt."""
    prompts_per_round: int = 64
    """Training prompts sampled in each round."""
    rounds: int = 1
    """Rounds of sample, select, fine-tune; each samples from the previous round's model."""
    rewards: list[str] = field(default_factory=lambda: ["task_correct"])
    """Rewards: task_correct, task_format, reward_model:PATH, a built-in name, or path/file.py:function."""
    reward_weights: list[float] = field(default_factory=list)
    """One weight per reward (empty: all 1)."""
    keep: str = "best"
    """best (each prompt's highest-reward response) or all (every distinct response >= min_reward)."""
    min_reward: float | None = None
    """A response is kept only with at least this reward (empty: no threshold; needed by keep: all)."""
    drop_truncated: bool = True
    """Never keep a response cut at max_new_tokens (it never ended)."""
    sft: bool = True
    """Fine-tune on each round's data right away (false: only write the data)."""
    sft_epochs: int = 1
    """Passes of SFT over the round's data."""
    accumulate: bool = False
    """Fine-tune each round on the kept responses of all rounds so far (Llama 2), not only its own."""
    batch_size: int = 16
    """SFT: conversations per optimizer step."""
    micro_batch_size: int = 8
    """SFT: rows per forward/backward pass."""
    max_length: int = 512
    """SFT: longest tokenized conversation."""

    def check(self) -> list[str]:
        problems = []
        if self.keep not in KEEP:
            problems.append(f"'keep' must be one of {', '.join(KEEP)}; got {self.keep!r}")
        if self.keep == "all" and self.min_reward is None:
            problems.append("keep: all needs min_reward (the threshold a kept response must reach)")
        for key in ("n", "prompts_per_round", "rounds", "sft_epochs"):
            if getattr(self, key) < 1:
                problems.append(f"'{key}' must be >= 1; got {getattr(self, key)}")
        if self.rounds > 1 and not self.sft:
            problems.append("rounds > 1 needs sft: true (each round samples from the previous round's "
                            "fine-tuned model)")
        if self.run.resume:
            problems.append("run.resume: best-of-n does not resume; each round's SFT run is in "
                            "<run>/round-<r>/sft: start a new run from its final/ (model.name)")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            problems.append(f"reward_weights has {len(self.reward_weights)} values for "
                            f"{len(self.rewards)} rewards")
        return problems


def select(rewards_PN: torch.Tensor, eligible_PN: torch.Tensor, keep: str,
           min_reward: float | None) -> list[list[int]]:
    """Step 4: the indices of each prompt's kept samples. A sample competes when it is eligible and
    its reward (not NaN: NaN compares false) reaches ``min_reward``; ``best`` keeps the highest of
    the competing ones (the first on ties, as argmax does), ``all`` every one."""
    floor = -math.inf if min_reward is None else min_reward
    competing_PN = eligible_PN & (rewards_PN >= floor)
    if keep == "all":
        return [row.nonzero().flatten().tolist() for row in competing_PN]
    best_P = torch.where(competing_PN, rewards_PN, -math.inf).argmax(-1)
    return [[b] if bool(competing_PN[p, b]) else [] for p, b in enumerate(best_P.tolist())]


def sft_row(row: dict[str, Any], response: str, reward: float, round_: int,
            system_prompt: str | None) -> dict[str, Any]:
    """Step 5: an SFT row, ``prompt`` = the chat turns the response was sampled after (system prompt
    included) and ``completion`` = the response, so SFT trains on the response alone (not on the
    assistant turns of a few-shot prompt); plus the prompt row's other columns (e.g. the gold
    answer), the reward and the round."""
    columns = {k: v for k, v in row.items() if k not in ("prompt", "messages") and not k.startswith("_")}
    return {"prompt": prompt_messages(row, system_prompt), "completion": response, **columns,
            "reward": reward, "round": round_}


def sample_round(config: Config, model: nn.Module, tokenizer: Any, rows: list[dict[str, Any]],
                 rewards: list[Any], round_: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Steps 2-5 for one round's prompt rows: the kept responses as SFT rows, and the round's metrics."""
    n = config.n
    rollouts, scores, _ = sample_and_score(model, tokenizer, rows, rewards, n, config.sampling, config.data,
                                           trainer_state=TrainerState(round_ - 1, config.rounds))
    rewards_PN = scores.total.view(-1, n)
    truncated_N = torch.tensor([reason == "length" for reason in rollouts.finish_reasons])
    has_text_N = torch.tensor([bool(text.strip()) for text in rollouts.texts])
    eligible_PN = (has_text_N & ~(truncated_N & config.drop_truncated)).view(-1, n)
    kept = select(rewards_PN, eligible_PN, config.keep, config.min_reward)
    sft_rows = []
    for p, indices in enumerate(kept):
        seen: set[str] = set()
        for i in indices:
            text = rollouts.texts[p * n + i]
            if text not in seen:  # keep: all keeps each distinct response once
                seen.add(text)
                sft_rows.append(sft_row(rows[p], text, float(rewards_PN[p, i]), round_,
                                        config.data.system_prompt or None))
    best_P = rewards_PN.nan_to_num(nan=-math.inf).amax(-1)
    has_reward_P = torch.isfinite(best_P)
    metrics = {**rollout_metrics(rollouts, scores), **group_metrics(scores, n)}
    metrics.update({
        "rollout/best_reward": float(best_P[has_reward_P].mean()) if has_reward_P.any() else math.nan,
        "rollout/kept_fraction": sum(map(bool, kept)) / len(kept),
        "rollout/kept_rows": float(len(sft_rows)),
        "rollout/kept_reward": sum(r["reward"] for r in sft_rows) / len(sft_rows) if sft_rows else math.nan,
    })
    return sft_rows, metrics


def evaluate(config: Config, run: Run, model: nn.Module, tokenizer: Any, rows: list[dict[str, Any]],
             task: Any, rewards: list[Any], round_: int) -> dict[str, float]:
    """Step 7: held-out greedy evaluation of the current model, logged at x = ``round_``."""
    metrics = evaluate_and_log(run, model, tokenizer, rows, task, config)(round_)
    scored = {}
    if rewards:
        scored = held_out_rewards(model, tokenizer, rows, rewards, config.sampling, config.data,
                                  TrainerState(round_, config.rounds))
    if scored:
        run.tracker.log(round_, {f"eval/{k}": v for k, v in scored.items()})
        print(f"[eval] round {round_}: mean reward {scored['reward']:.4f} of greedy responses")
    return {**metrics, **scored}


def sft_config(config: Config, model_name: str, data_path: Path, n_rows: int) -> sft.Config:
    """Step 6: the SFT recipe's config for one round: the current model on the round's data file,
    its run in ``round-r/sft/`` next to the data."""
    steps = math.ceil(config.sft_epochs * n_rows / config.batch_size)
    return sft.Config(model=dataclasses.replace(config.model, name=model_name),
                      data=dataclasses.replace(config.data, train=str(data_path), eval="", task=""),
                      optim=config.optim,
                      run=dataclasses.replace(config.run, output_dir=str(data_path.parent), name="sft",
                                              steps=steps, eval_every=0, overwrite=False),
                      sampling=config.sampling, batch_size=config.batch_size,
                      micro_batch_size=config.micro_batch_size, max_length=config.max_length)


def _load(config: Config, name: str) -> tuple[nn.Module, Any]:
    """A model to sample from (no LoRA: the SFT stage adds its own) and its tokenizer."""
    device = str(resolve_device(config.model.device))
    return load_model(name, dtype=config.model.dtype, device=device).eval(), load_tokenizer(name)


def train(config: Config, *, reward_fns: list[Callable[..., list[float | None]]] | None = None,
          train_rows: list[dict[str, Any]] | None = None,
          eval_rows: list[dict[str, Any]] | None = None) -> Path:
    """Run best-of-N rounds; Python reward functions and rows override the config's. Returns the run
    directory (its final/ is the last round's model)."""
    task = resolve_task(config.data)
    rewards = build_reward_fns(config.rewards, config.reward_weights, task, reward_fns)
    seed_everything(config.run.seed)
    if train_rows is None:
        train_rows = load_split(config.data, "train", "prompts", config.run.seed)
    if eval_rows is None:
        eval_rows = load_split(config.data, "eval", "prompts", config.run.seed)
    model_name = config.model.name
    model, tokenizer = _load(config, model_name)
    run = start_run(config, "best-of-n", model, None, None, total_steps=config.rounds)
    threshold = f" >= {config.min_reward}" if config.min_reward is not None else ""
    print(f"[best-of-n] {config.rounds} round(s) of {config.prompts_per_round} prompts x N = {config.n} "
          f"responses, keep {config.keep}{threshold}, SFT {'on' if config.sft else 'off'}; "
          f"{len(train_rows)} training prompts, {len(eval_rows)} held-out")
    # held-out rewards are scored unless the task's own evaluation (eval/accuracy, eval/format) measures them
    scored = rewards if any(name not in TASK_REWARDS for name, _, _ in rewards) else []
    before = after = evaluate(config, run, model, tokenizer, eval_rows, task, scored, 0)
    order = DataOrder(train_rows, config.run.seed)
    sft_rows: list[dict[str, Any]] = []
    for round_ in range(1, config.rounds + 1):
        started = time.perf_counter()
        kept, metrics = sample_round(config, model, tokenizer, order.take(config.prompts_per_round), rewards,
                                     round_)
        sft_rows = [*sft_rows, *kept] if config.accumulate else kept
        data_path = write_jsonl(sft_rows, run.dir / f"round-{round_}" / "data.jsonl")
        metrics["time/sample_s"] = time.perf_counter() - started
        print(f"[best-of-n] round {round_}: kept {len(kept)} responses "
              f"({metrics['rollout/kept_fraction']:.0%} of prompts), mean best reward "
              f"{metrics['rollout/best_reward']:.4f}, mean reward {metrics['rollout/reward']:.4f} "
              f"-> {data_path}")
        if config.sft and sft_rows:
            del model  # the SFT stage loads its own copy
            sft_dir = sft.train(sft_config(config, model_name, data_path, len(sft_rows)), eval_rows=[])
            # the stage finished and best-of-n does not resume: keep final/, drop the checkpoints
            # (weights and optimizer state, ~3 copies of the model)
            shutil.rmtree(sft_dir / "checkpoints", ignore_errors=True)
            model_name = str(sft_dir / "final")
            model, tokenizer = _load(config, model_name)
            losses = [m["train/loss"] for m in read_metrics(sft_dir) if "train/loss" in m]
            metrics.update({"sft/loss_first": losses[0], "sft/loss_last": losses[-1],
                            "sft/steps": len(losses),
                            "time/sft_s": time.perf_counter() - started - metrics["time/sample_s"]})
        elif config.sft:
            print(f"[best-of-n] round {round_}: no response kept, so no SFT; the model stays as it was")
        run.tracker.log(round_, metrics)
        after = evaluate(config, run, model, tokenizer, eval_rows, task, scored, round_)
        if run.check_health(round_):  # its SFT model is round-<r>/sft/final
            break
    keys = ["rollout/best_reward", "rollout/reward", "rollout/kept_fraction"]
    keys += ["sft/loss_last"] if model_name != config.model.name else []  # some round fine-tuned
    keys += [key for key, on in (("eval/accuracy", task), ("eval/reward", scored)) if on and eval_rows]
    return run.finish(model, tokenizer, summary=eval_summary("best-of-n", before, after), plot_keys=keys)


RESUMABLE = False  # a killed run starts again (see Config.check)


def outputs(config: Config) -> dict[str, str]:
    """What a run makes, relative to its directory (pipelines name them): the SFT data of the last
    round (all rounds' with ``accumulate``) and, when it fine-tunes, the last round's model."""
    return {"dataset": f"round-{config.rounds}/data.jsonl", **({"model": "final"} if config.sft else {})}
