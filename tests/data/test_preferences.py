"""Preference data: rankings to pairs, response-only masks, pair batches, procedural arithmetic pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import DataConfig
from posttrain.data import preferences as prefs
from posttrain.data import sources
from posttrain.data.sources import load_split
from posttrain.data.tasks import arithmetic
from posttrain.errors import ConfigError, DataError


def _ranking() -> dict[str, Any]:
    return {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1], "id": 7, "_where": "f.jsonl:3"}


def test_every_implied_pair_of_a_ranking() -> None:
    pairs = sources.ranking_pairs(_ranking(), "all")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c", "a"), ("c", "b"), ("a", "b")]
    assert [p["_where"] for p in pairs] == [f"f.jsonl:3 ranks {r}" for r in ("0>1", "0>2", "1>2")]
    assert all(p["prompt"] == "q" and p["id"] == 7 and "responses" not in p for p in pairs)


def test_adjacent_pairs_of_a_ranking() -> None:
    pairs = sources.rankings_to_pairs([_ranking(), {**_ranking(), "ranking": [0, 1, 2]}], "adjacent")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c", "a"), ("a", "b"), ("a", "b"), ("b", "c")]


def test_unknown_pair_mode() -> None:
    with pytest.raises(ConfigError, match="ranking pairs must be one of all, adjacent; got 'best'"):
        sources.ranking_pairs(_ranking(), "best")


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rankings_file_becomes_pairs(tmp_path: Path) -> None:
    path = _write(tmp_path / "ranked.jsonl", [{k: v for k, v in _ranking().items() if k != "_where"}])
    rows = sources.load_pairs(DataConfig(train=str(path)), "train", 0, "adjacent")
    assert [(r["chosen"], r["rejected"], r["_where"]) for r in rows] == [
        ("c", "a", f"{path}:1 ranks 0>1"), ("a", "b", f"{path}:1 ranks 1>2")]


def test_pairs_file_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                             {"prompt": "q", "chosen": "a"}])
    with pytest.raises(DataError, match=r"train.jsonl:2, field 'rejected': missing required field"):
        load_split(DataConfig(train=str(path)), "train", "preferences", 0)


def test_bad_rankings_file_reports_the_ranking_problem(tmp_path: Path) -> None:
    path = _write(tmp_path / "ranked.jsonl", [{"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]}])
    with pytest.raises(DataError, match=r"ranked.jsonl:1, field 'ranking': not a permutation"):
        load_split(DataConfig(train=str(path)), "train", "preferences", 0)


def test_response_mask_skips_assistant_turns_of_the_prompt(tokenizer: Any) -> None:
    prompt = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
              {"role": "user", "content": "2+2?"}]
    ids, mask = prefs.encode_response(tokenizer, prompt, "four", 512)
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "four<|im_end|>"
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\nfour<|im_end|>\n")
    reply = [{"role": "assistant", "content": "4"}, {"role": "user", "content": "sure?"},
             {"role": "assistant", "content": "yes"}]
    ids, mask = prefs.encode_response(tokenizer, prompt, reply, 512)
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "4<|im_end|>yes<|im_end|>"


def test_collate_interleaves_chosen_and_rejected(tokenizer: Any) -> None:
    rows = [{"prompt": "q1", "chosen": "yes", "rejected": "no no no", "_where": "r[0]"},
            {"prompt": "q2", "chosen": "ok", "rejected": "fine", "margin": 2, "_where": "r[1]"}]
    pairs = prefs.encode_pairs(tokenizer, rows, 512, margin=0.5)
    batch = prefs.collate_pairs(pairs, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    assert torch.equal(batch["margin"], torch.tensor([0.5, 2.0]))
    texts = [tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["input_ids"], batch["loss_mask"])]
    assert texts == ["yes<|im_end|>", "no no no<|im_end|>", "ok<|im_end|>", "fine<|im_end|>"]
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert lengths == [len(pairs[0].chosen[0]), len(pairs[0].rejected[0]), len(pairs[1].chosen[0]),
                       len(pairs[1].rejected[0])]
    assert int(batch["input_ids"][0, -1]) == tokenizer.pad_token_id  # the shorter rows are right-padded
    assert pairs[0].tokens == lengths[0] + lengths[1]


def test_over_long_pair_is_an_error_or_truncated(tokenizer: Any) -> None:
    rows = [{"prompt": "q", "chosen": "same start and then yes", "rejected": "same start and then no",
             "_where": "p.jsonl:4"}]
    with pytest.raises(DataError, match=r"p.jsonl:4, field 'chosen': prompt \+ response is \d+ tokens, "
                                        r"over max_length 20"):
        prefs.encode_pairs(tokenizer, rows, 20)
    full = len(prefs.encode_response(tokenizer, "q", rows[0]["chosen"], 512)[0])
    kept = prefs.encode_pairs(tokenizer, rows, full - 2, truncate=True)  # "yes"/"no" still inside
    assert len(kept) == 1 and len(kept[0].chosen[0]) == full - 2
    with pytest.raises(DataError, match=r"all 1 pairs have identical chosen and rejected sides .* after "
                                        r"truncation to max_length"):
        prefs.encode_pairs(tokenizer, rows, full - 6, truncate=True)
    twice = [{"prompt": "q", "chosen": "same", "rejected": "same", "_where": "r.jsonl:2"}]
    with pytest.raises(DataError, match=r"the same response twice, e\.g\. duplicate candidates in a ranking"):
        prefs.encode_pairs(tokenizer, twice, 512)
    with pytest.warns(UserWarning, match="1 of 2 pairs dropped"):
        kept = prefs.encode_pairs(tokenizer, [*rows, {**rows[0], "chosen": "x"}], full - 6, truncate=True)
    assert len(kept) == 1


def test_margin_column_must_be_a_number(tokenizer: Any) -> None:
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big", "_where": "m.jsonl:1"}]
    with pytest.raises(DataError, match=r"m.jsonl:1, field 'margin': the pair's margin is not a finite"):
        prefs.encode_pairs(tokenizer, rows, 512)


def test_pairwise_metrics_count_ties_as_half() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0, 5.0]), torch.tensor([1.0, 0.0, 3.0, 1.0])
    metrics = prefs.pairwise_metrics(chosen, rejected)
    assert metrics == pytest.approx({"pairwise_accuracy": (1 + 0.5 + 0 + 1) / 4,
                                     "mean_margin": (1 + 0 - 2 + 4) / 4})


def test_arithmetic_correctness_pairs() -> None:
    rows = arithmetic.preference_rows(30, seed=3, split="test", kind="correctness")
    assert len({r["question"] for r in rows}) == 30
    for row in rows:
        a, op, b = row["question"].split(" ")
        assert arithmetic.split_of((int(a), op, int(b))) == "test"  # held out like every test row
        assert arithmetic.check(row["chosen"], row) and not arithmetic.check(row["rejected"], row)
        assert arithmetic.format_ok(row["rejected"], row)  # same format: only the number differs
        assert row["chosen"].startswith(f"{row['question']} = ")
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in arithmetic.rows(30, seed=3, split="test")]


def test_arithmetic_format_pairs() -> None:
    row = arithmetic.preference_rows(1, seed=0, kind="format")[0]
    assert row["chosen"] == f"{row['question']} = {row['answer']}\n<answer>{row['answer']}</answer>"
    assert row["rejected"] == f"{row['question']} = {row['answer']}. The answer is {row['answer']}."
    both = arithmetic.preference_rows(4, seed=0, kind="both", style="think")
    assert [r["pair_kind"] for r in both] == ["correctness", "format"] * 2
    assert all(arithmetic.check(r["chosen"], r) and not arithmetic.check(r["rejected"], r) for r in both)


def test_arithmetic_preference_errors() -> None:
    with pytest.raises(ConfigError, match="arithmetic: unknown preference kind 'corectness'; did you mean"):
        arithmetic.preference_rows(2, seed=0, kind="corectness")
    with pytest.raises(ConfigError, match="needs style tags or think: style plain has no answer block"):
        arithmetic.preference_rows(2, seed=0, kind="format", style="plain")


def test_task_pairs_through_load_split_and_prompts_ignore_kind() -> None:
    data = DataConfig(train="arithmetic", train_size=5, eval_size=3, options={"kind": "format", "shots": 1})
    train = load_split(data, "train", "preferences", 0)
    held_out = load_split(data, "eval", "preferences", 0)
    assert len(train) == 5 and len(held_out) == 3 and all(r["pair_kind"] == "format" for r in train)
    prompts = load_split(data, "eval", "prompts", 0)
    assert [r["prompt"] for r in prompts] == [r["prompt"] for r in held_out]
