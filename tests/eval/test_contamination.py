"""Contamination: n-gram extraction, a planted duplicate found, a near miss not, boilerplate, the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.cli import main as cli_main
from posttrain.config import load_config
from posttrain.errors import ConfigError, DataError
from posttrain.eval import contamination
from posttrain.eval.contamination import Config, find_overlaps, ngrams, words

ITEM_A = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
          "quebec romeo sierra tango")
ITEM_B = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen")
ITEM_C = "red orange yellow green blue indigo violet black white grey brown pink purple cyan magenta"
BENCHMARK = [("A", ITEM_A), ("B", ITEM_B), ("C", ITEM_C)]


def test_words_normalise_case_punctuation_and_keep_operators() -> None:
    assert words("Hello, World! 47 + 38 = 85; snake_case x-y <answer>") == [
        "hello", "world", "47", "+", "38", "=", "85", "snake", "case", "x", "-", "y", "<", "answer", ">"]
    assert words("47 + 38") != words("47 - 38")
    assert words("  \n") == []


def test_ngrams() -> None:
    assert ngrams(["a", "b", "c", "d"], 3) == [("a", "b", "c"), ("b", "c", "d")]
    assert ngrams(["a", "b"], 3) == []
    assert ngrams([], 3) == []
    with pytest.raises(ValueError, match="n-grams need n >= 1, got 0"):
        ngrams(["a"], 0)


def test_planted_duplicate_is_found_and_a_near_miss_is_not() -> None:
    tokens_b = ITEM_B.split()
    planted = "Intro text. " + " ".join(tokens_b[2:15]).upper().replace(" ", ", ") + " and more."
    near = ITEM_A.split()
    near[12] = "MIKEY"  # the longest run shared with item A is now 12 words: no 13-gram
    training = [("train.jsonl:1", ["nothing to see here"]), ("train.jsonl:2", [planted]),
                ("train.jsonl:3", [" ".join(near)]), ("train.jsonl:4", ["x " + " ".join(tokens_b[2:15])])]
    overlaps, stats = find_overlaps(BENCHMARK, training, n=13)
    assert [o.benchmark_id for o in overlaps] == ["B"]
    hit = overlaps[0].record()
    assert hit == {"benchmark_id": "B", "ngram": " ".join(tokens_b[2:15]), "train_where": "train.jsonl:2",
                   "train_rows": 2, "matched_ngrams": 1, "item_ngrams": 6, "short": False, "overlap": 1 / 6}
    assert stats == {"items": 3, "contaminated": 1, "fraction": 1 / 3, "training_rows": 4,
                     "boilerplate_ngrams_ignored": 0, "n": 13}
    assert find_overlaps(BENCHMARK, [("t", [" ".join(near)])], n=12)[0][0].benchmark_id == "A"


def test_ngrams_never_span_two_fields_of_a_training_row() -> None:
    tokens = ITEM_C.split()
    split_row = [("row", [" ".join(tokens[:7]), " ".join(tokens[7:14])])]
    assert find_overlaps(BENCHMARK, split_row, n=13)[0] == []
    assert find_overlaps(BENCHMARK, [("row", [" ".join(tokens[:13])])], n=13)[0][0].benchmark_id == "C"


def test_template_boilerplate_is_ignored() -> None:
    template = "please give the final answer as a number inside answer tags and nothing else at all"
    pairs = [(1, 2), (3, 4), (5, 6)]
    items = [(f"q{i}", f"what is {a} plus {b} ? {template}") for i, (a, b) in enumerate(pairs)]
    training = [("t:1", [f"what is 7 plus 8 ? {template}"])]
    overlaps, stats = find_overlaps(items, training, n=13)
    assert overlaps == [] and stats["boilerplate_ngrams_ignored"] > 0
    everything, _ = find_overlaps(items, training, n=13, boilerplate_fraction=1.0)
    assert [o.benchmark_id for o in everything] == ["q0", "q1", "q2"]
    planted, _ = find_overlaps(items, [("t:2", [f"what is 3 plus 4 ? {template}"])], n=13)
    assert [o.benchmark_id for o in planted] == ["q1"]


def test_short_items_must_occur_whole() -> None:
    items = [("short", "Tiny unique phrase here"), ("long", ITEM_A)]
    found = find_overlaps(items, [("t", ["a tiny, unique phrase here!"])])[0]
    assert [(o.benchmark_id, o.ngram, o.short) for o in found] == [("short", "tiny unique phrase here", True)]
    assert find_overlaps(items, [("t", ["a tiny unique phrase"])])[0] == []


def test_content_grams_set_the_template_aside() -> None:
    template = words("give the final answer as a number inside <answer></answer> tags")
    items = [words(f"What is {a} + {b}?") + template for a, b in [(47, 38), (47, 53), (12, 61), (80, 5)]]
    ignored = contamination.boilerplate([set(ngrams(t, 13)) for t in items], 0.5)
    assert len(ignored) == len(template) - 13 + 1
    assert contamination.content_grams(items[0], ignored, 13) == {("what", "is", "47", "+", "38")}
    # Without the boilerplate rule the item has 21 - 13 + 1 = 9 n-grams, most of them template.
    assert len(contamination.content_grams(items[0], set(), 13)) == 9


def test_row_texts_skip_roles_and_private_keys() -> None:
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
           "answer": "4", "score": 1.5, "_where": "f.jsonl:1"}
    assert contamination.row_texts(row) == ["hi", "yo", "4"]


# ------------------------------------------------------------------------------------ the command


def _config(**values: Any) -> Config:
    return load_config(Config, values=values)


def test_command_finds_a_planted_humaneval_problem(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from posttrain.eval.humaneval import problems

    docstring = problems(3)[2]["prompt"]  # HumanEval/2, truncate_number
    rows = [{"messages": [{"role": "user", "content": "Write a haiku about autumn leaves."},
                          {"role": "assistant", "content": "Red leaves drift and fall."}]},
            {"prompt": "Solve this:", "completion": "Sure. " + docstring},
            {"prompt": "What is 2 + 2?", "completion": "4"}]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert cli_main(["contamination", f"train={path}", "benchmark=humaneval", "benchmark_size=5",
                     f"output_dir={tmp_path}", "name=report"]) == 0
    report = (tmp_path / "report" / "contamination.jsonl").read_text()
    found = [json.loads(line) for line in report.splitlines()]
    assert [(f["benchmark_id"], f["train_where"]) for f in found] == [("HumanEval/2", f"{path}:2")]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert (summary["items"], summary["contaminated"], summary["fraction"]) == (5, 1, 0.2)
    assert "1 of 5 humaneval items (20.0%) share a 13-gram" in capsys.readouterr().out


def test_command_arithmetic_splits_are_clean_until_a_test_prompt_is_planted(tmp_path: Path) -> None:
    from posttrain.data.tasks import arithmetic

    options = {"ops": ["+", "-"], "digits": 2}
    clean = contamination.run(_config(train="arithmetic", train_size=300, benchmark="arithmetic",
                                      benchmark_size=30, options=options, output_dir=str(tmp_path), name="a"))
    assert json.loads((clean / "summary.json").read_text())["contaminated"] == 0
    test_row = arithmetic.rows(30, seed=0, split="test", **options)[7]
    path = tmp_path / "leak.jsonl"
    path.write_text(json.dumps({"prompt": "warm-up", "chosen": test_row["prompt"][0]["content"] + " 5",
                                "rejected": "no idea"}) + "\n")
    leaked = contamination.run(_config(train=str(path), benchmark="arithmetic", benchmark_size=30,
                                       options=options, output_dir=str(tmp_path), name="b"))
    found = [json.loads(line) for line in (leaked / "contamination.jsonl").read_text().splitlines()]
    assert [f["benchmark_id"] for f in found] == ["arithmetic:test[7]"]


@pytest.mark.parametrize(("values", "message"), [
    ({"ngram": 0}, r"'ngram' must be >= 1; got 0"),
    ({"boilerplate_fraction": 0}, r"'boilerplate_fraction' must be in \(0, 1\]; got 0"),
    ({"train_kind": "chats"}, r"'train_kind' must be auto or one of prompts, conversations"),
    ({"benchmark": "mbpp"},
     r"'benchmark' must be arithmetic, instructions, humaneval or a data file \(\.jsonl"),
    ({"train": "wiki"}, r"'train' must be arithmetic, instructions or a data file"),
])
def test_config_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**values)


def test_training_file_that_fits_no_kind(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"text": "a plain document"}) + "\n")
    message = r"(?s)odd\.jsonl: no dataset kind fits every row .* as prompts: .*field 'prompt'"
    with pytest.raises(DataError, match=message):
        contamination.training_rows(_config(train=str(path)))
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        contamination.training_rows(_config(train=str(tmp_path / "missing.jsonl")))
