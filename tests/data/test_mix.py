"""data.mix: other sources added to the training rows at a fraction of the final set (exact counts),
tasks and files alike, shuffled by seed, held-out rows untouched; errors name data.mix[i].key."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from posttrain.config import DataConfig, load_config
from posttrain.data.sources import load_split
from posttrain.data.tasks import arithmetic
from posttrain.errors import ConfigError, DataError


@dataclass
class _Config:
    data: DataConfig = field(default_factory=DataConfig)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _conversations(path: Path, n: int, tag: str) -> Path:
    return _write(path, [{"messages": [{"role": "user", "content": f"{tag} question {i}"},
                                       {"role": "assistant", "content": f"{tag} answer {i}"}]}
                         for i in range(n)])


def _origin(row: dict[str, Any]) -> str:
    return row["_where"].split(":")[0].split("/")[-1]


def test_task_mix_makes_up_its_fraction_exactly_and_is_shuffled_by_seed() -> None:
    data = DataConfig(train="arithmetic", train_size=60,
                      mix=[{"train": "instructions", "fraction": 0.25, "options": {"families": ["reverse"]}}])
    rows = load_split(data, "train", "prompts", seed=0)
    assert Counter(_origin(r) for r in rows) == {"arithmetic": 60, "instructions": 20}
    assert {r["family"] for r in rows if _origin(r) == "instructions"} == {"reverse"}
    # shuffled: the mixed rows are spread through the set, not appended at the end
    assert sum(_origin(r) == "instructions" for r in rows[:40]) in range(5, 16)
    assert rows == load_split(data, "train", "prompts", seed=0)
    assert rows != load_split(data, "train", "prompts", seed=1)
    # held-out rows come from data.train's test split alone
    assert {_origin(r) for r in load_split(data, "eval", "prompts", seed=0)} == {"arithmetic"}
    # without a mix, rows are the task's as before: not shuffled, nothing added
    assert load_split(DataConfig(train="arithmetic", train_size=60), "train", "prompts", seed=0) == (
        arithmetic.rows(60, seed=0))


def test_files_and_tasks_mixed_keep_their_where_and_small_files_repeat(tmp_path: Path) -> None:
    base = _conversations(tmp_path / "reasoning.jsonl", 30, "r")
    small = _conversations(tmp_path / "chat.jsonl", 4, "c")
    data = DataConfig(train=str(base), mix=[{"train": "instructions", "fraction": 0.2},
                                            {"train": str(small), "fraction": 0.2}])
    rows = load_split(data, "train", "conversations", seed=3)
    assert Counter(_origin(r) for r in rows) == {"reasoning.jsonl": 30, "instructions": 10, "chat.jsonl": 10}
    small_rows = Counter(r["_where"] for r in rows if _origin(r) == "chat.jsonl")
    assert sorted(small_rows.values()) == [2, 2, 3, 3]
    assert set(small_rows) == {f"{small}:{line}" for line in range(1, 5)}
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    # a mixed file larger than its share gives a seeded sample of its rows
    big = _conversations(tmp_path / "big.jsonl", 50, "b")
    data = DataConfig(train=str(small), mix=[{"train": str(big), "fraction": 0.5}])
    rows = load_split(data, "train", "conversations", seed=0)
    drawn = [r["_where"] for r in rows if _origin(r) == "big.jsonl"]
    assert len(drawn) == len(set(drawn)) == 4


def test_counts_round_to_whole_rows_and_preferences_mix_too() -> None:
    data = DataConfig(train="arithmetic", train_size=100, options={"kind": "correctness"},
                      mix=[{"train": "instructions", "fraction": 0.3, "options": {"kind": "helpfulness"}}])
    rows = load_split(data, "train", "preferences", seed=0)
    counts = Counter(_origin(r) for r in rows)
    assert counts == {"arithmetic": 100, "instructions": 43}  # 0.3 * 100 / 0.7 = 42.86
    assert {r["pair_kind"] for r in rows if _origin(r) == "instructions"} == {"helpfulness"}


def _config_error(mix: Any) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(_Config, values={"data.mix": mix})
    return str(error.value)


def test_config_errors_name_the_entry_and_key() -> None:
    assert load_config(_Config, values={"data.mix": [{"train": "instructions", "fraction": 0.1}]}).data.mix
    assert "data.mix[0].fractoin: unknown key; did you mean 'fraction'?" in _config_error(
        [{"train": "instructions", "fractoin": 0.1}])
    message = _config_error([{"train": "instructions", "fraction": 1.5, "option": {}}, {"fraction": 0.2}])
    assert "data.mix[0].fraction: must be a number in (0, 1); got 1.5" in message
    assert "data.mix[0].option: unknown key; did you mean 'options'?" in message
    assert "data.mix[1].train: must name a task or a file; got None" in message
    assert "fractions sum to 1.1; they must sum to less than 1" in _config_error(
        [{"train": "instructions", "fraction": 0.6}, {"train": "instructions", "fraction": 0.5}])
    assert "data.mix[0].options: expected a mapping" in _config_error(
        [{"train": "instructions", "fraction": 0.2, "options": "reverse"}])
    assert "'data.mix': expected a mapping, got 'instructions'" in _config_error(["instructions"])


def test_load_errors_name_the_mix_source(tmp_path: Path) -> None:
    bad_option = DataConfig(train="arithmetic", train_size=10,
                            mix=[{"train": "instructions", "fraction": 0.5, "options": {"famlies": []}}])
    message = r"data.mix\[0\] \(instructions\): instructions: unknown option 'famlies'"
    with pytest.raises(ConfigError, match=message):
        load_split(bad_option, "train", "prompts", seed=0)
    with pytest.raises(ConfigError, match=r"data.mix\[0\].fraction: must be a number in \(0, 1\); got 0"):
        load_split(DataConfig(mix=[{"train": "instructions", "fraction": 0}]), "train", "prompts", seed=0)
    with pytest.raises(ConfigError, match=r"data.mix\[0\]: expected a mapping with keys train, fraction"):
        load_split(DataConfig(mix=["instructions"]), "train", "prompts", seed=0)  # type: ignore[list-item]
    broken = _write(tmp_path / "broken.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(DataError, match=r"broken.jsonl:1, field 'messages'"):
        data = DataConfig(train="instructions", train_size=5, mix=[{"train": str(broken), "fraction": 0.5}])
        load_split(data, "train", "conversations", seed=0)
