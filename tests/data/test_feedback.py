"""Unpaired feedback (KTO): loading files of thumbs or of pairs, errors, encoding, mismatched rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.config import DataConfig
from posttrain.data import feedback
from posttrain.data.preferences import encode_response
from posttrain.data.tasks import arithmetic
from posttrain.errors import ConfigError, DataError


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_feedback_file_rows_keep_their_lines(tmp_path: Path) -> None:
    rows = [{"prompt": "q", "completion": "a", "label": True, "annotator": "x"},
            {"prompt": "q", "completion": "b", "label": False}]
    path = _write(tmp_path / "thumbs.jsonl", rows)
    rows = feedback.load_feedback(DataConfig(train=str(path)), seed=0)
    assert [(r["completion"], r["label"], r["_where"]) for r in rows] == [
        ("a", True, f"{path}:1"), ("b", False, f"{path}:2")]
    assert rows[0]["annotator"] == "x"


def test_csv_labels_may_be_words_or_digits(tmp_path: Path) -> None:
    path = tmp_path / "thumbs.csv"
    path.write_text("prompt,completion,label\nq,a,true\nq,b,0\n")
    assert [r["label"] for r in feedback.feedback_from(str(path))] == [True, False]


def test_pairs_become_a_thumbs_up_and_a_thumbs_down(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad", "id": 3}])
    rows = feedback.load_feedback(DataConfig(train=str(path)), seed=0)
    assert rows == [
        {"prompt": "q", "id": 3, "completion": "good", "label": True, "_where": f"{path}:1 chosen"},
        {"prompt": "q", "id": 3, "completion": "bad", "label": False, "_where": f"{path}:1 rejected"}]


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "q", "completion": "a"}, r"thumbs.jsonl:2, field 'label': missing required field"),
    ({"prompt": "q", "completion": "a", "label": "true"},
     r"thumbs.jsonl:2, field 'label': wrong type: string \(expected a boolean \(true = desirable\), "
     r"got 'true'\)"),
    ({"prompt": "q", "completion": "a", "label": 1}, r"thumbs.jsonl:2, field 'label': wrong type: number"),
    ({"prompt": "q", "answer": "a", "label": True},
     r"thumbs.jsonl:2, field 'completion': missing required field"),  # neither feedback nor a pair
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, r"thumbs.jsonl:2, field 'chosen': wrong type: number"),
])
def test_bad_rows_name_file_line_and_field(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    first = {"prompt": "q", "chosen": "x", "rejected": "y"} if "chosen" in row else {
        "prompt": "q", "completion": "x", "label": True}
    path = _write(tmp_path / "thumbs.jsonl", [first, row])
    with pytest.raises(DataError, match=message):
        feedback.load_feedback(DataConfig(train=str(path)), seed=0)


def test_unknown_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown task 'arithmetc'; did you mean 'arithmetic'"):
        feedback.load_feedback(DataConfig(train="arithmetc"), seed=0)


def test_arithmetic_thumbs_are_unpaired_and_balanced() -> None:
    rows = arithmetic.feedback_rows(9, seed=1, kind="both", shots=1)
    assert [r["_where"] for r in rows] == [f"arithmetic:train[{i}]" for i in range(9)]  # one row per problem
    assert sum(r["label"] for r in rows) == 5  # half rounded up: λ_D·n_D / (λ_U·n_U) = 5/4 ≤ 4/3
    for row in rows:  # thumbs up exactly on the right, tagged answer
        assert arithmetic.check(row["completion"], row) is row["label"]
        assert "chosen" not in row and "rejected" not in row
    assert rows == arithmetic.feedback_rows(9, seed=1, kind="both", shots=1)
    other_seed = arithmetic.feedback_rows(9, seed=2, kind="both")
    assert [r["label"] for r in rows] != [r["label"] for r in other_seed]
    held_out = arithmetic.feedback_rows(9, seed=1, split="test")
    assert {r["question"] for r in held_out}.isdisjoint({r["question"] for r in rows})


def test_mismatched_rows_are_the_next_rows_response_after_this_rows_prompt(tokenizer: Any) -> None:
    rows = [{"prompt": "What is 2 + 2?", "completion": "4", "label": True},
            {"prompt": [{"role": "user", "content": "Name a colour."}], "completion": "Blue, like the sky.",
             "label": False},
            {"prompt": "Say hi", "completion": "Hi there!", "label": True}]
    encoded = feedback.encode_feedback(tokenizer, rows, 128)
    for row, enc in zip(rows, encoded):
        assert (enc.ids, enc.mask) == encode_response(tokenizer, row["prompt"], row["completion"], 128)
        assert enc.mask.index(1) == enc.prompt_length and enc.desirable is row["label"]
    kl_rows = feedback.mismatched(encoded, 128)
    for i, (ids, mask) in enumerate(kl_rows):  # the same tokens as encoding the mismatched pair itself
        other = rows[(i + 1) % 3]
        assert (ids, mask) == encode_response(tokenizer, rows[i]["prompt"], other["completion"], 128)
    short = feedback.mismatched(encoded, encoded[0].prompt_length + 1)[0]
    assert len(short[0]) == encoded[0].prompt_length + 1 and short[1][-1] == 1  # cut, a response token left


def test_over_long_rows(tokenizer: Any) -> None:
    rows = [{"prompt": "q", "completion": "a long answer " * 20, "label": True, "_where": "t.jsonl:4"}]
    with pytest.raises(DataError, match=r"t.jsonl:4, field 'completion': prompt \+ response is \d+ tokens, "
                                        r"over max_length 40"):
        feedback.encode_feedback(tokenizer, rows, 40)
    (cut,) = feedback.encode_feedback(tokenizer, rows, 40, truncate=True)
    assert len(cut.ids) == 40 and cut.mask[-1] == 1
