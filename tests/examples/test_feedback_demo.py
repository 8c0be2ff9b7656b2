"""examples/feedback_demo.py end to end on a tiny model: sample, label over HTTP, export, three recipes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from posttrain.data.formats import load_rows

DEMO = Path(__file__).resolve().parents[2] / "examples" / "feedback_demo.py"


def _demo() -> Any:
    spec = importlib.util.spec_from_file_location("feedback_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_labels_exports_and_trains_each_recipe(tmp_path: Path, tiny_model_dir: str) -> None:
    # error rate 0.5: the tiny model never answers correctly, so only a coin-flipping annotator
    # yields A/B choices and thumbs up as well as down
    out = tmp_path / "demo"
    options = {"--model": tiny_model_dir, "--out": str(out), "--prompts": 6, "--candidates": 3,
               "--max-new-tokens": 6, "--error-rate": 0.5, "--steps": 1, "--eval-size": 2, "--held-out": 0.34}
    results = _demo().main([str(part) for pair in options.items() for part in pair])
    # every item labelled through the server: one per prompt in rank and thumbs, one per pair in A/B
    assert results["labels"] == {"rank": 6, "ab": 6 * 3, "thumbs": 6}
    rankings = load_rows(out / "export" / "rank" / "rankings.jsonl", "rankings")
    assert len(rankings) == 6 and all(sorted(row["ranking"]) == [0, 1, 2] for row in rankings)
    thumbs = load_rows(out / "export" / "thumbs" / "unpaired.jsonl", "unpaired")
    assert len(thumbs) == results["kto"]["rows"] and 0 < results["kto"]["thumbs_up"] < len(thumbs)
    ab_pairs = load_rows(out / "export" / "ab" / "pairs.jsonl", "preferences")
    assert 0 < len(ab_pairs) == results["orpo"]["pairs"] <= 18
    # the reward model trained on the rankings of 4 prompts (3 pairs each); the tiny model answers
    # nothing correctly, so the 2 held-out prompts give no right-over-wrong pairs to measure
    assert results["rm"]["train_pairs"] == 12 and results["rm"]["collected_pairwise_accuracy"]["pairs"] == 0
    assert set(results["rm"]["task_pairwise_accuracy"]) == {"before", "after", "pairs"}
    for recipe in ("rm", "kto", "orpo"):
        assert (Path(results[recipe]["run"]) / "final" / "config.json").exists()
    for recipe in ("kto", "orpo"):
        assert set(results[recipe]["before"]) >= {"preference_accuracy", "accuracy"}
        assert results[recipe]["after"].keys() == results[recipe]["before"].keys()
    assert results["kto"]["before"]["preference_accuracy"] == 0.5  # every implicit reward is 0 at the start
    saved = json.loads((out / "summary.json").read_text())
    assert saved["labels"] == results["labels"] and saved["rm"] == results["rm"]


def test_correctness_pairs_put_every_right_answer_over_every_wrong_one() -> None:
    demo = _demo()
    row = {"prompt": [{"role": "user", "content": "47 + 38"}], "answer": "85", "style": "tags"}
    right, untagged, wrong = "<answer>85</answer>", "85", "<answer>84</answer>"
    ranking = {"prompt": row["prompt"], "responses": [wrong, right, untagged], "ranking": [1, 2, 0]}
    pairs = demo.correctness_pairs([ranking], {demo.prompt_key(row["prompt"]): row})
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(right, wrong), (right, untagged)]
