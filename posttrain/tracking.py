"""Run tracking: the run directory, metrics.jsonl, samples.jsonl, timers, progress, plots, summary.

A run directory holds ``config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, final/, plots/,
summary.md``. ``metrics.jsonl`` has one JSON object per ``log()`` call,
``{"step": s, "time": unix_seconds, "<namespace>/<metric>": value, ...}``, values floats or ``null``
for NaN / inf. On resume from step ``k``, lines with a step after ``k`` are dropped first (the
killed run may have logged past its last checkpoint), so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from posttrain.errors import ConfigError

_KEY_METRICS = ("reward", "loss", "acc")
_LOWER_IS_BETTER = ("loss", "perplexity", "error")
_HIGHER_IS_BETTER = ("reward", "acc", "pass@", "maj@", "exact_match", "score", "win_rate", "f1")
_RESERVED = ("step", "time")


# ------------------------------------------------------------------------------- run directory


def make_run_dir(output_dir: str | Path, name: str | None, recipe: str, resume: bool,
                 overwrite: bool = False) -> Path:
    """Create (or, with ``resume``, find) ``<output_dir>/<name>``; never reuse a run by accident.

    ``name`` defaults to ``<recipe>-<YYYYmmdd-HHMMSS>``. ``overwrite`` deletes an existing run.
    """
    if resume and overwrite:
        raise ConfigError("run.resume and run.overwrite are both true: choose one (resume continues "
                          "the run, overwrite deletes it and starts again)")
    if name is None:
        if resume:
            raise ConfigError("run.resume=true needs run.name: the name of the run directory to "
                              f"continue, inside {output_dir}")
        name = f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
        base, suffix = name, 2
        while (Path(output_dir) / name).exists():  # two runs started within the same second
            name, suffix = f"{base}-{suffix}", suffix + 1
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ConfigError(f"run.name {name!r} must be a relative name without '..' components")
    path = Path(output_dir) / name
    if resume:
        if not path.is_dir():
            raise ConfigError(f"cannot resume: the run directory {path} does not exist (check "
                              f"run.name and run.output_dir, or drop --resume to start a new run)")
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise ConfigError(f"the run directory {path} already exists and is not empty: pass "
                              f"--resume to continue it, run.overwrite=true to replace it, or "
                              f"choose another run.name")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_atomic(path: Path, write: Any, mode: str = "w") -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------- value conversions


def _plain(value: Any) -> Any:
    """A YAML/JSON-safe copy of a config value (paths, tuples, dataclasses, enums, functions)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.tolist()
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}:{value.__qualname__}"
    return str(value)


def _metric_value(key: str, value: Any) -> float | None:
    """A float, or ``None`` for NaN / inf (strict JSON has neither)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {key!r} is a tensor of shape {list(value.shape)}; log a scalar")
        value = value.item()
    elif isinstance(value, np.ndarray | np.generic):
        if np.size(value) != 1:
            raise ValueError(f"metric {key!r} is an array of shape {np.shape(value)}; log a scalar")
        value = np.asarray(value).item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """Sample rows: tensors to lists, non-finite floats to null, unknown objects to strings."""
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# --------------------------------------------------------------------------- reading metrics


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parsed rows and the number of unreadable lines (a line torn by a kill mid-write)."""
    rows, bad = [], 0
    if not path.is_file():
        return rows, bad
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int | float):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` in order; ``null`` values come back as ``float('nan')``."""
    rows, _ = _read_jsonl(Path(run_dir) / "metrics.jsonl")
    return [{key: (math.nan if value is None else value) for key, value in row.items()} for row in rows]


def _truncate_jsonl(path: Path, last_step: int) -> int:
    """Drop rows logged after ``last_step`` (and torn lines); return how many were dropped."""
    if not path.is_file():
        return 0
    rows, bad = _read_jsonl(path)
    kept = [row for row in rows if row["step"] <= last_step]
    dropped = len(rows) - len(kept) + bad
    if dropped:
        _write_atomic(path, lambda f: f.writelines(json.dumps(row) + "\n" for row in kept))
    return dropped


# ------------------------------------------------------------------------------------ Tracker


class Tracker:
    """Writes a run's config, metrics, samples and, on ``close()``, its plots and summary.

    ``resume_step`` > 0 continues an existing run: rows logged after that step are removed and the
    config is compared with the one saved before (a warning per changed key). ``resume_step`` = 0
    starts fresh files. With ``progress`` and a terminal, a tqdm bar shows the key metrics (names
    with reward / loss / acc); otherwise (logs, CI) one plain line is printed every ``log_every``
    steps (default: about 20 lines per run).
    """

    def __init__(self, run_dir: Path, *, total_steps: int, config: dict[str, Any], resume_step: int = 0,
                 tensorboard: bool = False, progress: bool = True, desc: str = "train",
                 log_every: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps, self.resume_step, self.desc = total_steps, resume_step, desc
        self.log_every = log_every or max(1, round(total_steps / 20))
        self.config_changes = self._write_config(_plain(config))
        mode = "a" if resume_step > 0 else "w"
        if resume_step > 0:
            for name in ("metrics.jsonl", "samples.jsonl"):
                _truncate_jsonl(self.run_dir / name, resume_step)
        self._metrics: TextIO = open(self.run_dir / "metrics.jsonl", mode, encoding="utf-8")  # noqa: SIM115
        self._samples: TextIO = open(self.run_dir / "samples.jsonl", mode, encoding="utf-8")  # noqa: SIM115
        self._pending_times: dict[str, float] = {}
        self._start = time.time()
        self._last_step = resume_step
        self._closed = False
        self._tensorboard = self._open_tensorboard() if tensorboard else None
        self._bar = None
        if progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=resume_step, desc=desc, dynamic_ncols=True)

    def _write_config(self, config: dict[str, Any]) -> list[str]:
        """Write config.yaml; on resume, warn about each key that differs from the saved one."""
        import yaml

        path = self.run_dir / "config.yaml"
        changes: list[str] = []
        if self.resume_step > 0 and path.is_file():
            previous = _flatten(yaml.safe_load(path.read_text()) or {})
            current = _flatten(config)
            for key in sorted(set(previous) | set(current)):
                if key in ("run.resume", "run.overwrite"):  # how this attempt started, not what it computes
                    continue
                if previous.get(key) != current.get(key):
                    changes.append(f"{key}: {previous.get(key)!r} -> {current.get(key)!r}")
            if changes:
                warnings.warn(f"resuming {self.run_dir} with a changed config: " + "; ".join(changes),
                              stacklevel=3)
        _write_atomic(path, lambda f: yaml.safe_dump(config, f, sort_keys=False))
        return changes

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ConfigError("run.tensorboard=true needs the tensorboard package: pip install "
                              "tensorboard (or set run.tensorboard=false)") from error
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Time a block; the next ``log()`` gets ``time/<name>_s`` (summed if timed twice)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{name}_s"
            self._pending_times[key] = self._pending_times.get(key, 0.0) + time.perf_counter() - start

    def log(self, step: int, metrics: dict[str, Any], show: bool = True) -> None:
        """Append one row to metrics.jsonl (plus TensorBoard and, with ``show``, the progress display)."""
        for key in _RESERVED:
            if key in metrics:
                raise ValueError(f"metric name {key!r} is reserved; use e.g. 'train/{key}'")
        values = {key: _metric_value(key, value) for key, value in metrics.items()}
        values.update(self._pending_times)
        self._pending_times = {}
        row = {"step": step, "time": round(time.time(), 3), **values}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._tensorboard is not None:
            for key, value in values.items():
                if value is not None:
                    self._tensorboard.add_scalar(key, value, step)
        if show:
            self._show_progress(step, values)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Append one line per sample to samples.jsonl, each with its ``step``."""
        for row in rows:
            self._samples.write(json.dumps({"step": step, **_json_safe(row)}, ensure_ascii=False) + "\n")
        self._samples.flush()

    def _show_progress(self, step: int, values: dict[str, float | None]) -> None:
        shown: dict[str, str] = {}
        for key, value in values.items():
            if len(shown) == 4 or key.startswith("time/") or not any(w in key for w in _KEY_METRICS):
                continue
            short = key.split("/", 1)[-1]  # "train/loss" -> "loss", unless two namespaces clash
            shown[key if short in shown else short] = "nan" if value is None else f"{value:.4g}"
        if self._bar is not None:
            self._bar.update(max(0, step - self._last_step))
            self._bar.set_postfix(shown, refresh=True)
        elif step % self.log_every == 0 or step >= self.total_steps:
            done = max(1, step - self.resume_step)
            per_step = (time.time() - self._start) / done
            eta = max(0.0, per_step * (self.total_steps - step))
            parts = [f"[{self.desc}] step {step}/{self.total_steps}"]
            parts += [f"{key} {value}" for key, value in shown.items()]
            parts.append(f"{per_step:.2f} s/step, ETA {_duration(eta)}")
            print(" | ".join(parts), flush=True)
        self._last_step = step

    def close(self, summary: dict[str, Any] | None = None, plot_keys: list[str] | None = None,
              sections: list[str] | None = None) -> None:
        """Close the files, then write plots/*.png and summary.md (both atomically; ``sections``: markdown
        appended to summary.md, e.g. the run-health alarms). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._metrics.close()
        self._samples.close()
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        rows = read_metrics(self.run_dir)
        write_plots(self.run_dir, rows, plot_keys)
        text = summary_markdown(self.run_dir.name, rows, summary, self.total_steps)
        text += "".join(f"\n{section}" for section in sections or [])
        _write_atomic(self.run_dir / "summary.md", lambda f: f.write(text))

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# ---------------------------------------------------------------------------- plots and summary


def _series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``metric -> (steps, values)`` in logging order; NaN kept so plots show gaps."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in _RESERVED:
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(row["step"])
            values.append(float(value))
    return series


def write_plots(run_dir: Path, rows: list[dict[str, Any]], plot_keys: list[str] | None = None) -> list[Path]:
    """One PNG per namespace (``train``, ``rollout``, ...) with a subplot per metric; x = step."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    series = _series(rows)
    if plot_keys is not None:
        missing = [key for key in plot_keys if key not in series]
        if missing:
            warnings.warn(f"plot_keys never logged, not plotted: {missing}", stacklevel=2)
        series = {key: series[key] for key in plot_keys if key in series}
    groups: dict[str, list[str]] = {}
    for key in series:
        groups.setdefault(key.split("/")[0] if "/" in key else "other", []).append(key)
    written = []
    for namespace, keys in groups.items():
        columns = min(3, len(keys))
        rows_count = math.ceil(len(keys) / columns)
        figure = Figure(figsize=(4.5 * columns, 3.0 * rows_count), layout="constrained")
        for index, key in enumerate(keys):
            axes = figure.add_subplot(rows_count, columns, index + 1)
            steps, values = series[key]
            axes.plot(steps, values, marker="." if len(steps) < 50 else None, linewidth=1.2)
            axes.set_title(key, fontsize=9)
            axes.set_xlabel("step", fontsize=8)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.tick_params(labelsize=7)
            axes.grid(alpha=0.3)
        path = Path(run_dir) / "plots" / f"{namespace.replace(os.sep, '_')}.png"
        _write_atomic(path, lambda f, figure=figure: figure.savefig(f, format="png", dpi=100), mode="wb")
        written.append(path)
    return written


def _best(key: str, steps: list[float], values: list[float]) -> tuple[float, float] | None:
    """``(best value, its step)`` for metrics with a known direction, else ``None``."""
    finite = [(value, step) for step, value in zip(steps, values) if math.isfinite(value)]
    if not finite or key.startswith("time/"):
        return None
    name = key.lower()
    if any(word in name for word in _LOWER_IS_BETTER):
        return min(finite, key=lambda pair: pair[0])
    if any(word in name for word in _HIGHER_IS_BETTER):
        return max(finite, key=lambda pair: pair[0])
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_markdown(name: str, rows: list[dict[str, Any]], summary: dict[str, Any] | None,
                     total_steps: int) -> str:
    """summary.md: final and best value of every metric, then the recipe's ``summary`` dict."""
    last_step = rows[-1]["step"] if rows else 0
    lines = [f"# Run {name}", "", f"Last logged step: {last_step} of {total_steps}.", ""]
    series = _series(rows)
    if series:
        lines += ["| metric | final | best | best at step |", "|---|---|---|---|"]
        for key, (steps, values) in series.items():
            best = _best(key, steps, values)
            best_cells = f"{_fmt(best[0])} | {_fmt(best[1])}" if best else "- | -"
            lines.append(f"| {key} | {_fmt(values[-1])} | {best_cells} |")
        lines.append("")
    if summary:
        lines += ["## Summary", "", "| key | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in _flatten(_plain(summary)).items()]
        lines.append("")
    return "\n".join(lines)
