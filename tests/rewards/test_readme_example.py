"""The README's reward-function example, run verbatim (read from README.md, so the two cannot drift):
a conversational and a standard run, on a tiny model instead of the embedded one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import posttrain.config
from posttrain.tracking import read_metrics

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Python API and reward functions"


def readme_example() -> str:
    """The first python block of the README's reward-function section."""
    readme = (REPO / "README.md").read_text()
    assert SECTION in readme, f"README.md lost its '{SECTION}' section"
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, f"no python block in README.md's '{SECTION}'"
    return blocks[0]


def test_readme_reward_example_runs_verbatim(tiny_model_dir: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    load_config = posttrain.config.load_config

    def small(cls: Any, path: Any, overrides: list[str]) -> Any:
        # the README's own settings, then only the sizes shrunk to a tiny model's
        return load_config(cls, path, [*overrides, f"model.name={tiny_model_dir}", "model.autocast=none",
                                       f"run.output_dir={tmp_path}", "run.progress=false", "run.eval_every=0",
                                       "prompts_per_step=2", "samples_per_prompt=2", "micro_batch_size=4",
                                       "sampling.max_new_tokens=4", "sampling.dtype=float32",
                                       "data.train_size=8", "data.eval_size=0"])

    monkeypatch.setattr(posttrain.config, "load_config", small)
    monkeypatch.chdir(REPO)  # the example names configs/ relative to the repository
    code = readme_example()
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)

    chat = read_metrics(namespace["chat_run"])
    assert [m["step"] for m in chat if "rollout/mean_tokens" in m] == [1, 2, 3, 4, 5]
    assert all(m["rollout/reward/brevity"] == 1.0 for m in chat if "rollout/reward/brevity" in m)

    text_run = namespace["text_run"]
    samples = [json.loads(line) for line in (text_run / "samples.jsonl").read_text().splitlines()]
    truth = {row["prompt"]: row["ground_truth"] for row in namespace["rows"]}
    assert samples and all(s["truth"] == truth[s["prompt"]] for s in samples)  # log_extra's column
    steps = [m for m in read_metrics(text_run) if "rollout/reward/gets_shorter" in m]
    assert steps[0]["rollout/reward/gets_shorter"] == 0.0  # trainer_state.global_step 0 at step 1
    assert all(m["rollout/reward/gets_shorter"] <= 0.0 for m in steps) and len(steps) == 5
