"""Sampling candidates into a collection with the tiny model: provenance recorded, re-runs add only
new prompts, problems reported before any model is loaded."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.collect.command import main
from posttrain.collect.db import Collection
from posttrain.collect.sample import SampleConfig, sample
from posttrain.config import load_config
from posttrain.errors import ConfigError, DataError


def _prompts(path: Path, prompts: list[Any]) -> str:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def _config(tmp_path: Path, prompts: str, **changes: Any) -> SampleConfig:
    values = {"prompts": prompts, "db": str(tmp_path / "c.db"), "model": "tiny-test", "n": 3,
              "temperature": 0.8, "max_new_tokens": 4, "seed": 11, "batch_size": 2, **changes}
    return SampleConfig(**values)


def test_sample_records_provenance_and_reruns_add_only_new_prompts(
        tmp_path: Path, tiny_model: torch.nn.Module, tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Say hi"}]
    first = _prompts(tmp_path / "a.jsonl", ["What is 2 + 2?", messages, "What is 2 + 2?", "Name a colour."])
    config = _config(tmp_path, first, mode="thumbs")
    assert sample(config, tiny_model, tokenizer, log=lambda _: None) == {"new": 3, "skipped": 1}
    collection = Collection(tmp_path / "c.db")
    assert collection.mode == "thumbs"
    assert collection.counts() == {"prompts": 3, "candidates": 9, "items": 3, "labels": 0}
    with sqlite3.connect(tmp_path / "c.db") as db:
        rows = db.execute("SELECT p.prompt, c.idx, c.model, c.sampling, c.seed, c.finish_reason "
                          "FROM candidates c JOIN prompts p ON p.id = c.prompt_id ORDER BY c.id").fetchall()
    assert [json.loads(r[0]) for r in rows[::3]] == ["What is 2 + 2?", messages, "Name a colour."]
    assert [r[1] for r in rows] == [0, 1, 2] * 3 and {r[2] for r in rows} == {"tiny-test"}
    assert json.loads(rows[0][3]) == {"temperature": 0.8, "top_p": 1.0, "top_k": 0, "max_new_tokens": 4,
                                      "stop": []}
    assert [r[4] for r in rows] == [11] * 6 + [13] * 3  # base seed + index of the batch's first prompt
    assert {r[5] for r in rows} <= {"stop", "length"}

    second = _prompts(tmp_path / "b.jsonl", ["Name a colour.", "What is 3 + 3?", messages])
    assert sample(_config(tmp_path, second), tiny_model, tokenizer, log=lambda _: None) == {
        "new": 1, "skipped": 2}
    assert collection.counts()["candidates"] == 12 and collection.mode == "thumbs"  # mode kept
    # Nothing new: returns before touching the model (None would otherwise be loaded by name).
    assert sample(_config(tmp_path, second, model="no-such-model"), log=lambda _: None) == {
        "new": 0, "skipped": 3}


def test_same_seed_same_candidates(tmp_path: Path, tiny_model: torch.nn.Module, tokenizer: Any) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", ["Count to three."])
    texts = []
    for name in ("one.db", "two.db"):
        config = _config(tmp_path, prompts, db=str(tmp_path / name))
        sample(config, tiny_model, tokenizer, log=lambda _: None)
        texts.append([c["text"] for c in Collection(tmp_path / name).next_item("ann")["candidates"]])
    assert texts[0] == texts[1] and len(texts[0]) == 3


def test_bad_prompts_are_reported_before_loading_a_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"promt": "typo"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2, field 'prompt'"):
        sample(_config(tmp_path, str(bad), model="no-such-model"))
    assert not (tmp_path / "c.db").exists()


def test_sample_config_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(SampleConfig, None, ["mode=stars", "n=0"])
    text = str(caught.value)
    assert "'prompts' is required" in text and "'mode' must be one of rank, ab, thumbs; got 'stars'" in text
    assert "'n' must be >= 1; got 0" in text
    assert main(["sample", "prompts=p.jsonl", "temperature=-1"]) == 2
    assert "'temperature' must be >= 0" in capsys.readouterr().err
    assert main(["sample", "--options"]) == 0
    assert "candidates per prompt" in capsys.readouterr().out.lower()
