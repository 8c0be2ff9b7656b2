"""``run.keep_best``: final/ holds the weights of the best held-out evaluation, not the last step's.

The rules (Hugging Face Trainer's ``load_best_model_at_end`` with ``metric_for_best_model``, made
explicit):

- the candidates are the held-out evaluations after training steps: every ``run.eval_every`` steps
  and the final one (best-of-N: after every round). The evaluation before training is not one, so
  final/ always holds trained weights;
- better means strictly greater (``max``) or smaller (``min``): on a tie the earlier step stays;
- ``run.keep_best_mode: auto`` takes the direction from the name (accuracy, reward, pass@k -> max;
  loss, perplexity, error -> min); a name that says neither (format, margin) needs max or min;
- an evaluation that did not produce the metric, or produced NaN / inf, is not a candidate (a
  warning names the step); if the evaluation before training does not produce it at all, the run
  stops with a ConfigError before its first checkpoint;
- a name the recipe never logs is a ConfigError when the config is loaded (before any model),
  naming the nearest name it does log: each recipe's ``Config.eval_metrics()`` lists them;
- each new best is checkpointed at once (a full checkpoint, so resuming from it works too) and
  rotation keeps it (``posttrain.checkpoint``); a resumed run keeps the best recorded in the
  checkpoint it resumes from.
"""

from __future__ import annotations

import difflib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError
from posttrain.tracking import _write_atomic, metric_direction

MODES = ("auto", "max", "min")
RECORD_FILE = "best.json"  # in the run directory: which step final/ came from


def direction(metric: str, mode: str) -> str | None:
    """"max" or "min": ``mode`` when given, else what the metric's name says (None: it says neither)."""
    return mode if mode in ("max", "min") else metric_direction(metric)


def improves(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` replaces ``best``: finite and strictly better (a tie keeps the earlier one)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _matches(metric: str, logged: str) -> bool:
    """``logged`` is a name, or a family ending in ``<...>`` (eval/reward/<function>)."""
    if logged.endswith(">"):
        prefix = logged[:logged.index("<")]
        return metric.startswith(prefix) and len(metric) > len(prefix)
    return metric == logged


def keep_best_problems(config: Any) -> list[str]:
    """Config errors of ``run.keep_best`` for a recipe's whole config (its ``eval_metrics()``)."""
    from posttrain.config import RunConfig

    run = getattr(config, "run", None)
    if not isinstance(run, RunConfig):
        return []
    problems = []
    if run.keep_best_mode not in MODES:
        problems.append(f"'run.keep_best_mode' must be one of {', '.join(MODES)}; got {run.keep_best_mode!r}")
    if not run.keep_best:
        return problems
    recipe = type(config).__module__.rsplit(".", 1)[-1]
    from posttrain.runner import held_out_metrics

    # a recipe whose evaluation is only the task's greedy one (sft, grpo) declares nothing
    declared = getattr(config, "eval_metrics", None)
    logged: list[str] = declared() if callable(declared) else held_out_metrics()
    if not logged:
        return [*problems, f"run.keep_best: {recipe} logs no held-out metrics to choose by; remove "
                           f"run.keep_best"]
    if not any(_matches(run.keep_best, name) for name in logged):
        prefixed = f"eval/{run.keep_best}"
        nearest = prefixed if any(_matches(prefixed, name) for name in logged) else (
            difflib.get_close_matches(run.keep_best, logged, n=1, cutoff=0.0) or [logged[0]])[0]
        problems.append(f"run.keep_best: {run.keep_best!r} is not a held-out metric {recipe} logs; did you "
                        f"mean '{nearest}'? ({recipe} logs {', '.join(logged)})")
    elif direction(run.keep_best, run.keep_best_mode) is None and run.keep_best_mode == "auto":
        problems.append(f"run.keep_best: the name {run.keep_best!r} does not say whether higher or lower is "
                        f"better: set run.keep_best_mode to max or min")
    if run.eval_every == 0 and not getattr(config, "EVALUATED_EACH_ROUND", False):
        problems.append("run.keep_best needs run.eval_every > 0: it chooses among the held-out evaluations "
                        "during training (with 0 only the last step is evaluated)")
    return problems


def check_config(config: Any) -> None:
    """Raise ``keep_best_problems`` before any model loads (a config built in Python skips load_config)."""
    problems = keep_best_problems(config)
    if problems:
        raise ConfigError(problems)


@dataclass
class BestSoFar:
    """The best candidate so far: its step, its value and every metric of its evaluation."""

    metric: str
    mode: str  # "max" or "min"
    step: int | None = None
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, run: Any, saved: dict[str, Any]) -> BestSoFar | None:
        """None without ``run.keep_best``; else a fresh record, or the one saved in the state of the
        checkpoint a run resumes from (unless it was chosen by another metric or direction: then the
        choosing starts again, with a note)."""
        if not run.keep_best:
            return None
        metric, resolved = run.keep_best, direction(run.keep_best, run.keep_best_mode)
        if resolved is None:
            raise ConfigError(f"run.keep_best: set run.keep_best_mode to max or min for {metric!r}")
        best = cls(metric, resolved)
        record = saved.get("keep_best") or {}
        if record.get("step") is None:
            return best
        if (record.get("metric"), record.get("mode")) != (metric, resolved):
            print(f"[keep_best] the checkpoint's best was chosen by {record.get('metric')} "
                  f"({record.get('mode')}); choosing by {metric} ({resolved}) from here on")
            return best
        best.step, best.value = int(record["step"]), float(record["value"])
        best.metrics = dict(record.get("metrics") or {})
        return best

    def check_produced(self, before: dict[str, float]) -> None:
        """The evaluation before training must produce the metric (as a number, NaN allowed)."""
        key = self.metric.removeprefix("eval/")
        if key not in before:
            produced = ", ".join(f"eval/{k}" for k in before) or "nothing (no held-out rows)"
            raise ConfigError(f"run.keep_best: the held-out evaluation before training did not produce "
                              f"{self.metric}; it produced {produced}. Check data.eval, data.eval_size and "
                              f"data.task, or choose one of those metrics")

    def consider(self, step: int, metrics: dict[str, float]) -> bool:
        """Take the evaluation at ``step`` (metric names without ``eval/``) if it is better; say so."""
        value = metrics.get(self.metric.removeprefix("eval/"))
        if value is None or not math.isfinite(value):
            what = "did not produce" if value is None else f"gave {value} for"
            kept = f"the best stays step {self.step}" if self.step is not None else "no best yet"
            warnings.warn(f"run.keep_best: the held-out evaluation at step {step} {what} {self.metric}: "
                          f"not a candidate ({kept})", stacklevel=2)
            return False
        if not improves(float(value), self.value, self.mode):
            return False
        self.step, self.value, self.metrics = step, float(value), dict(metrics)
        return True

    def state(self) -> dict[str, Any]:
        """For the checkpoint's state.json (rotation keeps the checkpoint ``step`` names)."""
        return {"keep_best": {"metric": self.metric, "mode": self.mode, "step": self.step,
                              "value": self.value, "metrics": self.metrics}}

    def record(self, last_step: int, last: dict[str, float]) -> dict[str, Any]:
        """Which step final/ holds (the best, or the last when no evaluation was a candidate) and the
        metric there and at the last step."""
        last_value = last.get(self.metric.removeprefix("eval/"))
        if last_value is not None and not math.isfinite(last_value):
            last_value = None  # strict JSON has no NaN
        return {"metric": self.metric, "mode": self.mode, "step": self.step, "value": self.value,
                "last_step": last_step, "last_value": last_value,
                "final_step": last_step if self.step is None else self.step}


def sentence(record: dict[str, Any]) -> str:
    """One line saying where final/ came from: for summary.md, the last log line and --compare."""
    metric, step, last_step = record["metric"], record["step"], record["last_step"]
    if step is None:
        return (f"final/ holds the last step's weights (step {last_step}): no held-out evaluation after "
                f"training gave a finite {metric}")
    last = _number(record["last_value"])
    if step == last_step:
        return (f"final/ holds the last step's weights (step {step}), the best {metric} "
                f"({record['mode']}): {last}")
    return (f"final/ holds the weights of step {step}, the best {metric} ({record['mode']}): "
            f"{_number(record['value'])}; the last step, {last_step}, had {last}")


def _number(value: Any) -> str:
    return "none" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / RECORD_FILE
    _write_atomic(path, lambda f: f.write(json.dumps(record, indent=1, allow_nan=False,
                                                     default=str) + "\n"))
    return path


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``best.json``, or None when it did not keep the best (or has not finished)."""
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}): it is written when a run with "
                          f"run.keep_best finishes; delete it or finish the run again") from None
