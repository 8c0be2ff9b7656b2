"""RLHF judged by win rate: the ``label`` stage (sample, label through the real labelling server with a
scripted labeller, export pairs), the labeller of configs/rlhf-judged.yaml, and that config planned."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from posttrain.collect import label
from posttrain.collect.db import Collection, prompt_key
from posttrain.config import load_config, to_dict
from posttrain.data.formats import load_rows
from posttrain.errors import ConfigError
from posttrain.eval.judge import JudgeError
from posttrain.recipes import pipeline, ppo

ROOT = Path(__file__).resolve().parents[2]
SHORTER = ("def shorter(prompt, answer_a, answer_b):\n"
           "    a, b = len(answer_a), len(answer_b)\n"
           "    return 'tie' if a == b else 'a' if a < b else 'b'\n")


def _labeller() -> Any:
    spec = importlib.util.spec_from_file_location("labeller", ROOT / "examples" / "labeller.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _label_config(tmp_path: Path, model: str, **values: Any) -> label.Config:
    judge = tmp_path / "judges.py"
    judge.write_text(SHORTER + "def junk(prompt, answer_a, answer_b):\n    return 'maybe'\n")
    return load_config(label.Config, values={
        "model": model, "data": {"train": "instructions", "train_size": 6}, "labeller": f"{judge}:shorter",
        "n": 3, "max_new_tokens": 6, "held_out": 0.34, "output_dir": str(tmp_path), "name": "label",
        **values})


def test_label_stage_labels_every_pair_through_the_server_and_splits_by_prompt(tmp_path: Path,
                                                                               tiny_model_dir: str) -> None:
    out = label.train(_label_config(tmp_path, tiny_model_dir))
    summary = json.loads((out / "summary.json").read_text())
    # ab mode: every pair of 3 candidates of 6 prompts is one item, each labelled over HTTP
    assert summary["items_labelled"] == 6 * 3 == sum(summary["verdicts"].values())
    labels = Collection(out / "collection.db", create=False).labels()
    assert len(labels) == 18 and {lab["annotator"] for lab in labels} == {"scripted"}
    train_pairs = load_rows(out / "pairs.jsonl", "preferences")
    held = load_rows(out / "held_out_pairs.jsonl", "preferences")
    decisive = 18 - summary["verdicts"].get("tie", 0)
    assert len(train_pairs) + len(held) == decisive > 0
    for row in train_pairs + held:  # the labeller's preference, whichever position it was shown in
        assert len(row["chosen"]) < len(row["rejected"])
    held_prompts = {prompt_key(r["prompt"]) for r in held}
    assert len(held_prompts) <= 2 and not held_prompts & {prompt_key(r["prompt"]) for r in train_pairs}


def test_rank_mode_sorts_candidates_by_the_labellers_verdicts(tmp_path: Path, tiny_model_dir: str) -> None:
    out = label.train(_label_config(tmp_path, tiny_model_dir, mode="rank", held_out=0.0))
    for ranking in load_rows(out / "export" / "rankings.jsonl", "rankings"):
        lengths = [len(ranking["responses"][i]) for i in ranking["ranking"]]
        assert lengths == sorted(lengths)
    assert (out / "held_out_pairs.jsonl").read_text() == ""  # held_out 0: every pair to train on


def test_a_labeller_answering_something_else_stops_with_the_item(tmp_path: Path, tiny_model_dir: str) -> None:
    config = _label_config(tmp_path, tiny_model_dir)
    config.labeller = config.labeller.replace(":shorter", ":junk")
    with pytest.raises(JudgeError, match=r"returned 'maybe' for problem 0 \(item \d+\)"):
        label.train(config)


def test_label_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(label.Config, values={"labeller": "nofunction", "mode": "thumbs", "n": 1,
                                          "held_out": 1.5})
    text = str(caught.value)
    for expected in ("labeller: expected path/file.py:function", "mode: one of ab, rank", "n: at least 2",
                     "held_out: a fraction"):
        assert expected in text


@pytest.mark.parametrize(("reply", "tier"), [
    ("elppa", 3), ("BREAD FOX", 3), ("apple, dog, pear.", 3), ("7", 3), ('"jacket"', 3),
    ('The first word of the sentence "able sand school train tomato frog" is "S".', 2),
    ("The sentence contains 12 words.", 2), ("Sure! elppa", 2), ("Answer: 5", 2),
    ("The kitchen is a kitchen.", 2),
    ("one two three four five six seven eight nine", 2), ("elppa\n\nThe word reversed.", 1), ("  ", 0),
])
def test_labeller_tiers_replies_by_how_well_they_keep_to_only_the_answer(reply: str, tier: int) -> None:
    assert _labeller().tier(reply) == tier


def test_labeller_prefers_the_bare_answer_from_either_position_then_clearly_less_framing() -> None:
    judge = _labeller().only_the_answer
    framed, bare = 'The word "berry" reversed is "yrreb".', "yrreb"
    assert judge("Reverse...", framed, bare) == "b" and judge("Reverse...", bare, framed) == "a"
    assert judge("Reverse...", "yrreb", "berry") == "tie"  # right or wrong is check()'s business
    long = 'The word "berry" written with its letters in reverse order is "yrreb".'  # 12 words to 5
    assert judge("Reverse...", long, framed) == "b" and judge("Reverse...", framed, long) == "a"
    assert judge("Reverse...", framed, 'The reversed word is "yrreb".') == "tie"  # 5 to 5: no clear gap


def test_the_rlhf_pipeline_config_plans_every_stage(tmp_path: Path) -> None:
    config = load_config(pipeline.Config, ROOT / "configs" / "rlhf-judged.yaml")
    stages = {s.name: s for s in pipeline.plan(config, tmp_path / "p")}
    assert [s.recipe for s in stages.values()] == ["label", "rm", "ppo", "grpo", "eval", "eval"]
    labelled = tmp_path / "p" / "label"
    assert stages["rm"].config.data.train == str(labelled / "pairs.jsonl")
    assert stages["rm"].config.data.eval == str(labelled / "held_out_pairs.jsonl")
    reward = f"reward_model:{tmp_path / 'p' / 'rm' / 'final'}"
    assert stages["ppo"].config.rewards == [reward] and stages["grpo"].config.rewards == [reward]
    for policy in ("ppo", "grpo"):
        judged = stages[f"judge_{policy}"].config
        assert judged.model == str(tmp_path / "p" / policy / "final")
        assert judged.judge == stages["label"].config.labeller == "examples/labeller.py:only_the_answer"
        assert judged.baseline == stages["label"].config.model == stages[policy].config.model.name


def test_the_rlhf_pipeline_runs_end_to_end_on_a_tiny_model(tmp_path: Path, tiny_model_dir: str) -> None:
    # configs/rlhf-judged.yaml itself, shrunk: a tiny model, a few prompts and steps, the shorter-wins
    # labeller (the tiny model's random text rarely differs in the real rule's tiers)
    raw = yaml.safe_load((ROOT / "configs" / "rlhf-judged.yaml").read_text())
    stages = {stage["name"]: stage["config"] for stage in raw["stages"]}
    judge = tmp_path / "judges.py"
    judge.write_text(SHORTER)
    stages["label"].update(model=tiny_model_dir, labeller=f"{judge}:shorter", n=3, max_new_tokens=6,
                           held_out=0.34, data={"train": "instructions", "train_size": 6})
    for name in ("rm", "ppo", "grpo"):
        stages[name]["model"]["autocast"] = "none"
        stages[name]["run"] = {"steps": 2, "eval_every": 0, "progress": False}
    stages["rm"]["pairs"].update(batch_size=4, micro_batch_size=4)
    for name in ("ppo", "grpo"):
        stages[name].update(data={"train": "instructions", "train_size": 16, "eval_size": 2},
                            sampling={"max_new_tokens": 6, "dtype": "float32"}, micro_batch_size=4)
    stages["ppo"]["prompts_per_step"] = 4
    stages["grpo"].update(prompts_per_step=2, samples_per_prompt=2)
    for name in ("judge_ppo", "judge_grpo"):
        stages[name].update(problems=4, sampling={"max_new_tokens": 6})
    config = load_config(pipeline.Config, values={**raw, "output_dir": str(tmp_path), "name": "p"})
    out = pipeline.train(config)
    state = json.loads((out / "state.json").read_text())["stages"]
    assert all(state[name]["status"] == "done" for name in stages)
    for policy in ("ppo", "grpo"):
        summary = json.loads((out / f"judge_{policy}" / "summary.json").read_text())
        assert summary["baseline"] == tiny_model_dir and summary["judge"] == f"{judge}:shorter"
        metrics = summary["metrics"]
        assert metrics["wins"] + metrics["ties"] + metrics["losses"] == 4
        assert metrics["win_rate_low"] <= metrics["win_rate"] <= metrics["win_rate_high"]
        assert {"accuracy", "baseline_accuracy"} <= set(metrics)


def test_the_rounds_config_relabels_the_latest_policy_and_retrains_on_all_labels(tmp_path: Path) -> None:
    config = load_config(pipeline.Config, ROOT / "configs" / "rlhf-rounds-arithmetic.yaml")
    stages = {s.name: s for s in pipeline.plan(config, tmp_path / "p")}
    p = tmp_path / "p"
    assert stages["label_2"].config.model == str(p / "ppo_1" / "final")  # sampled from the round-1 policy
    assert stages["label_2"].config.previous == [str(p / "label_1" / "pairs.jsonl")]
    assert stages["rm_2"].config.data.train == str(p / "label_2" / "pairs.jsonl")
    assert stages["ppo_2"].config.model.name == str(p / "ppo_1" / "final")
    assert stages["ppo_2"].config.rewards == [f"reward_model:{p / 'rm_2' / 'final'}"]
    assert stages["judge_2"].config.baseline == "smollm2-135m-instruct"


def test_label_stage_puts_earlier_rounds_pairs_first(tmp_path: Path, tiny_model_dir: str) -> None:
    earlier = tmp_path / "round1.jsonl"
    earlier.write_text(json.dumps({"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}) + "\n")
    out = label.train(_label_config(tmp_path, tiny_model_dir, previous=[str(earlier)], held_out=0.0))
    rows = load_rows(out / "pairs.jsonl", "preferences")
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]) == ("What is 2 + 2?", "4", "5")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["earlier_pairs"] == 1 and len(rows) == 1 + summary["train_pairs"]


def test_correct_answer_labeller_prefers_the_right_number() -> None:
    judge = _labeller().correct_answer
    prompt = "What is 7 * 8? Give the final answer as a number inside <answer></answer> tags."
    assert judge(prompt, "<answer>54</answer>", "7 * 8 = 56") == "b"
    assert judge(prompt, "<answer>56</answer>", "56") == "tie" and judge(prompt, "54", "15") == "tie"
    with pytest.raises(ValueError, match="arithmetic task's prompts"):
        judge("Reverse the word.", "a", "b")


def test_plain_right_answer_labeller_wants_the_right_result_then_the_plainer_reply() -> None:
    labeller = _labeller()
    judge, prompt = labeller.plain_right_answer, "What is 7 * 8? Answer with just the number."
    assert [labeller.plainness(r) for r in ("56", "7 * 8 = 56.", "The answer is 56.", "56\n\nEasy!", "")] == \
        [3, 3, 2, 1, 0]
    assert judge(prompt, "54", "To solve this, multiply.\n\n7 * 8 = 56") == "b"  # right beats plain
    assert judge(prompt, "The answer is 56.", "56") == "b" and judge(prompt, "54", "It is 54.") == "a"
    assert judge(prompt, "56", "7 * 8 = 56") == "tie" and judge(prompt, "It is 56.", "So, 56.") == "tie"


def test_plain_answer_labeller_reads_the_form_only() -> None:
    judge, prompt = _labeller().plain_answer, "What is 7 * 8? Answer with just the number."
    assert judge(prompt, "54", "To solve this, multiply.\n\n7 * 8 = 56") == "a"  # plain wins, wrong or not
    assert judge(prompt, "The answer is 56.", "15") == "b" and judge(prompt, "7 * 8 = 54", "56") == "tie"
    assert judge(prompt, "It is 56.", "56\n\nEasy!") == "a" and judge(prompt, "", "It is 54.") == "b"


FIRST = 'What is the first word of the sentence "drum road crab"? Reply with only the answer.'
SORT = "Sort these words alphabetically: pear, dog, apple. Reply with only the answer."
REVERSE = 'Reverse the letters of the word "berry". Reply with only the answer.'


@pytest.mark.parametrize(("reply", "prompt", "tier"), [
    ("drum", FIRST, 3), ("DRUM ROAD", FIRST, 3), ("apple, dog, pear.", SORT, 3), ("yrreb", REVERSE, 3),
    ('"crab"', FIRST, 3), ("7", FIRST, 3),
    ("Hangman.", FIRST, 2), ("Answer.", FIRST, 2),  # bare, but no answer to this question
    ('The first word of the sentence "drum road crab" is "drum".', FIRST, 2), ("Sure! yrreb", REVERSE, 2),
    ("drum road crab drum road crab drum road crab", FIRST, 2), ("drum\n\nThe first word.", FIRST, 1),
    ("  ", FIRST, 0),
])
def test_the_stricter_labeller_wants_a_bare_reply_made_of_the_questions_words(reply: str, prompt: str,
                                                                            tier: int) -> None:
    assert _labeller().grounded_tier(reply, prompt) == tier


def test_the_stricter_labeller_ties_a_bare_non_answer_with_a_framed_reply() -> None:
    judge = _labeller().an_answer_to_this
    framed = 'The word "berry" reversed is "yrreb".'
    assert judge(REVERSE, framed, "yrreb") == "b" and judge(REVERSE, "yrreb", framed) == "a"
    assert judge(REVERSE, framed, "Despicable.") == "tie"  # only_the_answer prefers "Despicable."
    assert _labeller().only_the_answer(REVERSE, framed, "Despicable.") == "b"
    long = 'The word "berry" written with its letters in reverse order is "yrreb".'
    assert judge(REVERSE, long, framed) == "tie"  # no preference for the shorter framing


def test_the_sft_variant_starts_every_later_stage_from_the_sft_model(tmp_path: Path) -> None:
    config = load_config(pipeline.Config, ROOT / "configs" / "rlhf-judged-sft.yaml")
    stages = {s.name: s for s in pipeline.plan(config, tmp_path / "p")}
    sft = str(tmp_path / "p" / "sft" / "final")
    assert stages["label"].config.model == sft == stages["ppo"].config.model.name
    assert stages["grpo"].config.model.name == sft == stages["judge_ppo"].config.baseline
    assert stages["judge_grpo"].config.judge == "examples/labeller.py:an_answer_to_this"


def test_hacked_rounds_config_starts_from_ppo_arithmetic_and_retrains_on_all_labels(tmp_path: Path) -> None:
    config = load_config(pipeline.Config, ROOT / "configs" / "rlhf-rounds-hacked.yaml")
    stages = {s.name: s for s in pipeline.plan(config, tmp_path / "p")}
    p = tmp_path / "p"
    hacked = to_dict(load_config(ppo.Config, ROOT / "configs" / "ppo-arithmetic.yaml"))
    round_1 = to_dict(stages["ppo_1"].config)
    for key in set(hacked) - {"run", "rewards", "reward_weights", "health"}:  # + a weight-0 guard
        assert round_1[key] == hacked[key], key
    rm_1, rm_2 = stages["rm_1"].config, stages["rm_2"].config
    assert (rm_1.data.train, rm_1.data.options["kind"], rm_1.data.train_size) == ("arithmetic", "both", 200)
    assert stages["ppo_1"].config.rewards[0] == f"reward_model:{p / 'rm_1' / 'final'}"
    # round 2: the original pairs again (same task, size and seed) plus the round-1 policy's labelled ones
    assert rm_2.model.name == str(p / "rm_1" / "final") and rm_2.data.options == rm_1.data.options
    assert rm_2.data.mix == [{"train": str(p / "label_2" / "pairs.jsonl"), "fraction": 0.5}]
    assert rm_2.data.eval == str(p / "label_2" / "held_out_pairs.jsonl")
    assert stages["label_2"].config.model == stages["ppo_2"].config.model.name == str(p / "ppo_1" / "final")
    assert stages["ppo_2"].config.rewards[0] == f"reward_model:{p / 'rm_2' / 'final'}"
    assert stages["judge_1"].config.judge == stages["label_2"].config.labeller


def test_the_plain_config_judges_with_its_labeller_on_plain_prompts_and_guards_check(tmp_path: Path) -> None:
    config = load_config(pipeline.Config, ROOT / "configs" / "rlhf-judged-plain.yaml")
    stages = {s.name: s for s in pipeline.plan(config, tmp_path / "p")}
    labeller = stages["label"].config.labeller
    assert labeller == "examples/labeller.py:plain_right_answer"
    # check() is logged as eval/reward/task_correct by PPO and as eval/accuracy by GRPO
    for policy, guard in (("ppo", "eval/reward/task_correct"), ("grpo", "eval/accuracy")):
        trained, judged = stages[policy].config, stages[f"judge_{policy}"].config
        assert judged.judge == labeller
        assert judged.options["style"] == trained.data.options["style"] == "plain"
        assert trained.rewards[1:] == ["task_correct"] and trained.reward_weights == [1, 0]  # measured only
        assert trained.health.guard == guard


def test_the_plainness_config_learns_the_form_and_verifies_the_number_in_ppo_verified(tmp_path: Path) -> None:
    config = load_config(pipeline.Config, ROOT / "configs" / "rlhf-judged-plainness.yaml")
    stages = {s.name: s for s in pipeline.plan(config, tmp_path / "p")}
    labeller = stages["label"].config.labeller
    assert labeller == "examples/labeller.py:plain_answer"
    reward_model = f"reward_model:{tmp_path / 'p' / 'rm' / 'final'}"
    ppo_alone, verified = to_dict(stages["ppo"].config), to_dict(stages["ppo_verified"].config)
    assert {k for k in ppo_alone if ppo_alone[k] != verified[k]} == {"run", "reward_weights"}  # run.name
    assert verified["rewards"] == [reward_model, "task_correct"] and verified["reward_weights"] == [1, 1]
    for policy in ("ppo", "grpo", "ppo_verified"):
        trained, judged = stages[policy].config, stages[f"judge_{policy}"].config
        assert judged.judge == labeller and judged.model == str(stages[policy].model)
        assert judged.options == trained.data.options and trained.data.options["style"] == "plain"
    assert stages["ppo"].config.reward_weights == stages["grpo"].config.reward_weights == [1, 0]
