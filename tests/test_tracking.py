"""Run tracking: run directories, metrics/samples files, resume truncation, timers, plots, summary."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from posttrain.errors import ConfigError
from posttrain.tracking import Tracker, make_run_dir, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tracker(run_dir: Path, **kwargs: Any) -> Tracker:
    options = {"total_steps": 6, "config": {"train": {"lr": 0.1}}, "progress": False, **kwargs}
    return Tracker(run_dir, **options)


# ------------------------------------------------------------------------------- run directory


def test_make_run_dir_default_name_and_collisions(tmp_path: Path) -> None:
    first = make_run_dir(tmp_path, None, "sft", resume=False)
    assert re.fullmatch(r"sft-\d{8}-\d{6}", first.name) and first.is_dir()
    (first / "metrics.jsonl").write_text("{}\n")
    second = make_run_dir(tmp_path, None, "sft", resume=False)
    assert second != first and second.is_dir()
    assert make_run_dir(tmp_path, "empty", "sft", resume=False) == tmp_path / "empty"
    assert make_run_dir(tmp_path, "empty", "sft", resume=False) == tmp_path / "empty"  # still empty


def test_make_run_dir_never_reuses_a_run_by_accident(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, "exp", "grpo", resume=False)
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"run directory .*exp already exists and is not empty: pass "
                                          r"--resume to continue it, run.overwrite=true to replace it"):
        make_run_dir(tmp_path, "exp", "grpo", resume=False)
    assert make_run_dir(tmp_path, "exp", "grpo", resume=True) == run
    assert (run / "metrics.jsonl").exists()
    assert make_run_dir(tmp_path, "exp", "grpo", resume=False, overwrite=True) == run
    assert list(run.iterdir()) == []
    with pytest.raises(ConfigError, match=r"cannot resume: the run directory .*missing does not exist"):
        make_run_dir(tmp_path, "missing", "grpo", resume=True)
    with pytest.raises(ConfigError, match=r"run.resume=true needs run.name"):
        make_run_dir(tmp_path, None, "grpo", resume=True)
    with pytest.raises(ConfigError, match=r"run.resume and run.overwrite are both true"):
        make_run_dir(tmp_path, "exp", "grpo", resume=True, overwrite=True)
    with pytest.raises(ConfigError, match=r"run.name '../escape' must be a relative name"):
        make_run_dir(tmp_path, "../escape", "grpo", resume=False)


# --------------------------------------------------------------------------- metrics and samples


def test_log_writes_floats_and_null_for_non_finite(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class Optim:
        lr: float = 0.1

    config = {"model": {"path": Path("/m"), "dims": (1, 2)}, "train": Optim(), "reward_fn": len}
    tracker = _tracker(tmp_path, config=config)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {
        "model": {"path": "/m", "dims": [1, 2]}, "train": {"lr": 0.1}, "reward_fn": "builtins:len"}
    before = time.time()
    tracker.log(1, {"train/loss": torch.tensor(0.5), "train/n": 3, "rollout/reward": np.float32(0.25),
                    "policy/kl": float("nan"), "train/grad_norm": float("inf")})
    tracker.close()
    (row,) = _lines(tmp_path / "metrics.jsonl")
    assert before - 1 <= row.pop("time") <= time.time() + 1
    assert row == {"step": 1, "train/loss": 0.5, "train/n": 3.0, "rollout/reward": 0.25,
                   "policy/kl": None, "train/grad_norm": None}
    assert isinstance(row["train/n"], float)
    (read,) = read_metrics(tmp_path)
    assert math.isnan(read["policy/kl"]) and read["train/loss"] == 0.5


def test_log_rejects_non_scalars_and_reserved_names(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    with pytest.raises(ValueError, match=r"metric 'train/loss' is a tensor of shape \[2\]; log a scalar"):
        tracker.log(1, {"train/loss": torch.ones(2)})
    with pytest.raises(TypeError, match=r"metric 'train/mode' must be a number, got str: 'fast'"):
        tracker.log(1, {"train/mode": "fast"})
    with pytest.raises(ValueError, match=r"metric name 'step' is reserved"):
        tracker.log(1, {"step": 1.0})
    tracker.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_timer_adds_time_to_the_next_log_only(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    with tracker.timer("rollout"):
        time.sleep(0.05)
    with tracker.timer("rollout"):  # timed twice before one log: summed
        time.sleep(0.05)
    with tracker.timer("update"):
        pass
    tracker.log(1, {"train/loss": 1.0})
    tracker.log(2, {"train/loss": 0.5})
    tracker.close()
    first, second = _lines(tmp_path / "metrics.jsonl")
    assert 0.1 <= first["time/rollout_s"] < 2.0
    assert 0.0 <= first["time/update_s"] < 0.05
    assert "time/rollout_s" not in second


def test_samples_are_one_line_each_with_step(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    tracker.log_samples(3, [{"prompt": "2+2?", "completion": "4", "reward": float("nan"),
                             "tokens": torch.tensor([1, 2])}, {"prompt": "é", "reward": 1.0}])
    tracker.close()
    assert _lines(tmp_path / "samples.jsonl") == [
        {"step": 3, "prompt": "2+2?", "completion": "4", "reward": None, "tokens": [1, 2]},
        {"step": 3, "prompt": "é", "reward": 1.0}]


def test_resume_drops_rows_logged_after_the_checkpoint(tmp_path: Path) -> None:
    uninterrupted = tmp_path / "a"
    tracker = _tracker(uninterrupted)
    for step in range(1, 7):
        tracker.log(step, {"train/loss": 1.0 / step})
    tracker.close()

    killed = tmp_path / "b"
    tracker = _tracker(killed)
    for step in range(1, 6):  # checkpoint at 3, killed after logging 5
        tracker.log(step, {"train/loss": 1.0 / step})
        tracker.log_samples(step, [{"completion": f"c{step}"}])
    tracker._metrics.write('{"step": 6, "train/lo')  # torn by the kill
    tracker._metrics.flush()

    resumed = _tracker(killed, resume_step=3)
    assert [row["step"] for row in _lines(killed / "metrics.jsonl")] == [1, 2, 3]
    assert [row["step"] for row in _lines(killed / "samples.jsonl")] == [1, 2, 3]
    for step in range(4, 7):
        resumed.log(step, {"train/loss": 1.0 / step})
    resumed.close()
    strip = [{k: v for k, v in row.items() if k != "time"} for row in read_metrics(killed)]
    assert strip == [{k: v for k, v in row.items() if k != "time"} for row in read_metrics(uninterrupted)]


def test_resume_with_changed_config_warns_per_key(tmp_path: Path) -> None:
    _tracker(tmp_path, config={"train": {"lr": 0.1, "seed": 1}}).close()
    with pytest.warns(UserWarning, match=r"changed config: train.lr: 0.1 -> 0.2; train.seed: 1 -> None"):
        tracker = _tracker(tmp_path, config={"train": {"lr": 0.2}}, resume_step=2)
    assert tracker.config_changes == ["train.lr: 0.1 -> 0.2", "train.seed: 1 -> None"]
    tracker.close()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"train": {"lr": 0.2}}


# ----------------------------------------------------------------------------- progress display


def test_plain_progress_line_every_n_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tracker = _tracker(tmp_path, total_steps=5, log_every=2, desc="grpo")
    for step in range(1, 6):
        tracker.log(step, {"rollout/reward": 0.25 * step, "train/loss": 2.0, "eval/loss": 1.0,
                           "train/lr": 1e-5})
    tracker.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["[grpo] step 2/5", "[grpo] step 4/5",
                                                        "[grpo] step 5/5"]
    assert lines[0].split(" | ")[1:4] == ["reward 0.5", "loss 2", "eval/loss 1"]
    assert re.search(r"\| [\d.]+ s/step, ETA \dm\d\ds$", lines[0])
    assert "lr" not in lines[0]


def test_tqdm_bar_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    tracker = _tracker(tmp_path, total_steps=4, progress=True, resume_step=0)
    tracker.log(1, {"train/loss": 0.125, "train/acc": 0.5})
    tracker.close()
    captured = capsys.readouterr()
    assert "loss=0.125" in captured.err and "acc=0.5" in captured.err and "1/4" in captured.err
    assert captured.out == ""


# ------------------------------------------------------------------------------ TensorBoard


def test_tensorboard_missing_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"needs the tensorboard package: pip install tensorboard"):
        _tracker(tmp_path, tensorboard=True)


def test_tensorboard_writes_event_files(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    tracker = _tracker(tmp_path, tensorboard=True)
    tracker.log(1, {"train/loss": 1.0, "policy/kl": float("nan")})
    tracker.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


# --------------------------------------------------------------------------- plots and summary


def _logged_run(run_dir: Path) -> Tracker:
    tracker = _tracker(run_dir, total_steps=4)
    for step, (loss, reward) in enumerate([(2.0, 0.1), (1.0, 0.7), (1.5, 0.4), (1.25, float("nan"))], 1):
        tracker.log(step, {"train/loss": loss, "train/lr": 1e-5, "rollout/reward": reward})
    tracker.log(4, {"eval/accuracy": 0.75})
    return tracker


def test_close_writes_one_valid_png_per_namespace(tmp_path: Path) -> None:
    from matplotlib.image import imread

    _logged_run(tmp_path).close()
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["eval.png", "rollout.png", "train.png"]
    for name in plots:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = imread(tmp_path / "plots" / name).shape
        assert height > 100 and width > 100
    train_width = imread(tmp_path / "plots" / "train.png").shape[1]
    assert train_width > imread(tmp_path / "plots" / "eval.png").shape[1]  # two subplots vs one


def test_plot_keys_restrict_the_plots(tmp_path: Path) -> None:
    tracker = _logged_run(tmp_path)
    with pytest.warns(UserWarning, match=r"plot_keys never logged, not plotted: \['train/typo'\]"):
        tracker.close(plot_keys=["rollout/reward", "train/typo"])
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["rollout.png"]


def test_summary_has_final_and_best_values_and_the_given_summary(tmp_path: Path) -> None:
    tracker = _logged_run(tmp_path)
    tracker.close(summary={"eval": {"before": {"accuracy": 0.25}, "after": {"accuracy": 0.75}},
                           "note": "a|b"})
    tracker.close()  # idempotent
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith(f"# Run {tmp_path.name}\n\nLast logged step: 4 of 4.\n")
    assert "| train/loss | 1.25 | 1 | 2 |" in text  # lower is better: min at step 2
    assert "| rollout/reward | nan | 0.7 | 2 |" in text  # higher is better; final was NaN
    assert "| train/lr | 1e-05 | - | - |" in text  # no direction, no best
    assert "| eval/accuracy | 0.75 | 0.75 | 4 |" in text
    assert "| eval.before.accuracy | 0.25 |" in text and "| eval.after.accuracy | 0.75 |" in text
    assert "| note | a\\|b |" in text
