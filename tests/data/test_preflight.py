"""Every input checked with the tokenizer alone, before a model loads or a run folder exists."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest

from posttrain.checkpoint import Checkpointer
from posttrain.config import load_config
from posttrain.data import preflight
from posttrain.data.preferences import encode_pairs
from posttrain.errors import ConfigError, DataError
from posttrain.eval import command
from posttrain.models import EMBEDDED_DEFAULT, save_pretrained
from posttrain.recipes import best_of_n, grpo, ppo, sft


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading any model's weights fails the test: the checks must come first."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr("posttrain.runner.load_model", refuse)
    monkeypatch.setattr("posttrain.recipes.best_of_n.load_model", refuse)
    monkeypatch.setattr("posttrain.models.load_model", refuse)  # imported when called (eval, critic)


def _jsonl(path: Path, *rows: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _chat(user: str, reply: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


# ---------------------------------------------------------------- the character bound


def test_token_counts_lie_between_the_bounds(tokenizer: Any) -> None:
    """L = the longest vocabulary entry (SmolLM2: a newline and 80 spaces); any text of c characters
    is then at least c / L tokens (what lets a giant row be refused without tokenizing it), and at
    most its UTF-8 bytes + 1 (what lets a short one pass without tokenizing it)."""
    per_token = preflight.chars_per_token(tokenizer)
    assert per_token == 81
    for text in ["\n" + " " * 80, " " * 5000, "word " * 1000, "ééé😀" * 300, "<|im_start|>" * 50, "a",
                 "What is 12 + 35? Answer inside <answer></answer> tags.", "日本語のテキスト" * 20]:
        (tokens,) = preflight.token_counts(tokenizer, [text])
        assert math.ceil(len(text) / per_token) <= tokens <= preflight._tokens_at_most(tokenizer, text)


def test_a_giant_prompt_is_refused_without_tokenizing_it(tokenizer: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"prompt": "x " * 5_000_000, "_where": "d.jsonl:7"},
            {"prompt": "What is 2 + 2?", "_where": "d.jsonl:8"}]
    real = preflight.token_counts
    tokenized: list[int] = []

    def counting(tok: Any, texts: list[str]) -> list[int]:
        tokenized.extend(map(len, texts))
        return real(tok, texts)

    monkeypatch.setattr(preflight, "token_counts", counting)
    problems = preflight.prompt_problems(tokenizer, rows, max_prompt_tokens=256, max_new_tokens=64,
                                         context=8192, system_prompt=None)
    assert len(problems) == 1 and tokenized == []  # neither was tokenized: one is giant, one is short
    expected = (r"d.jsonl:7, field 'prompt': the prompt is at least 12345\d tokens \(10,000,\d{3} "
                r"characters\), over data.max_prompt_tokens 256 \(raise data.max_prompt_tokens or shorten "
                r"the prompt\) \(expected at most 256 tokens, got 12345\d\)")
    assert re.fullmatch(expected, str(problems[0]))


def test_max_new_tokens_filling_the_window_is_a_config_error(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match=r"sampling.max_new_tokens 2048 leaves no room for a prompt in the "
                                          r"model's context window of 2048 tokens"):
        preflight.prompt_problems(tokenizer, [{"prompt": "q"}], max_prompt_tokens=None, max_new_tokens=2048,
                                  context=2048, system_prompt=None)


def test_system_prompt_reaches_both_conversation_shapes(tokenizer: Any) -> None:
    """data.system_prompt goes in front of prompt/completion rows as well as messages rows, and the
    loss stays on the response only."""
    rows = [{"prompt": "What is 2 + 2?", "completion": "4"}, _chat("What is 2 + 2?", "4")]
    with_system = preflight.encode_conversations(tokenizer, rows, 256, "Answer tersely.")
    without = preflight.encode_conversations(tokenizer, rows, 256, None)
    for (ids, mask), (plain_ids, plain_mask) in zip(with_system, without):
        assert "Answer tersely." in tokenizer.decode(ids)
        assert "Answer tersely." not in tokenizer.decode(plain_ids)
        assert sum(mask) == sum(plain_mask) > 0
    assert with_system[0] == with_system[1]


def test_every_bad_pair_is_reported_at_once(tokenizer: Any) -> None:
    rows = [{"prompt": "q", "chosen": "a long answer " * 20, "rejected": "no", "_where": "p.jsonl:1"},
            {"prompt": "q", "chosen": "yes", "rejected": "no", "_where": "p.jsonl:2"},
            {"prompt": "q", "chosen": "yes", "rejected": "a long answer " * 30, "_where": "p.jsonl:3"}]
    with pytest.raises(DataError, match=r"^p.jsonl:1, field 'chosen': prompt \+ response is \d+ tok") as info:
        encode_pairs(tokenizer, rows, 40)
    assert "\n  1 more problem:\n  - p.jsonl:3, field 'rejected': prompt + response is" in str(info.value)


# ---------------------------------------------------------------- recipes: refused before the model loads


def test_sft_reports_every_long_row_before_loading_the_model(tiny_model_dir: str, tmp_path: Path,
                                                            no_model: None) -> None:
    data = _jsonl(tmp_path / "train.jsonl", _chat("hi", "yo"), _chat("hi", "a long reply " * 40),
                  _chat("a", "b"), {"prompt": "q", "completion": "another long reply " * 30})
    held_out = _jsonl(tmp_path / "eval.jsonl", {"prompt": "What is 2 + 2?", "answer": "4"},
                      {"prompt": "count: " + "one two three " * 20, "answer": "x"})
    config = load_config(sft.Config, None, [
        f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}", "run.name=t",
        "max_length=64", f"data.train={data}", f"data.eval={held_out}", "data.task=arithmetic",
        "sampling.max_new_tokens=1990"])
    with pytest.raises(DataError) as info:
        sft.train(config)
    text = str(info.value)
    assert text.startswith(f"{data}:2, field 'messages': the conversation is ")
    assert f"\n  2 more problems:\n  - {data}:4, field 'completion': the conversation is " in text
    assert f"\n  - {held_out}:2, field 'prompt': the prompt is " in text
    assert "with sampling.max_new_tokens 1990 that exceeds the model's context window of 2048 tokens" in text
    assert not (tmp_path / "runs").exists()


def test_grpo_refuses_a_50_mb_prompt_line_fast_before_loading_the_model(tiny_model_dir: str, tmp_path: Path,
                                                                        no_model: None) -> None:
    data = tmp_path / "prompts.jsonl"
    with open(data, "w") as out:
        out.write('{"prompt": "What is 2 + 2?"}\n')
        out.write(json.dumps({"prompt": "word " * 10_000_000}) + "\n")  # 50 MB
        out.write(json.dumps({"prompt": "Say " + "hello there " * 200}) + "\n")
    config = load_config(grpo.Config, None, [
        f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}", "run.name=t",
        f"data.train={data}", "data.task=arithmetic"])
    started = time.perf_counter()
    with pytest.raises(DataError) as info:
        grpo.train(config)
    seconds = time.perf_counter() - started
    text = str(info.value)
    assert text.startswith(f"{data}:2, field 'prompt': the prompt is at least 61728")
    assert re.search(r"\(50,000,\d{3} characters\), over data.max_prompt_tokens 256", text), text[:300]
    assert f"\n  - {data}:3, field 'prompt': the prompt is 4" in text  # an exact count when not giant
    assert not (tmp_path / "runs").exists()
    assert seconds < 15, seconds  # tokenizing 50 MB alone takes ~20 s here; this reads, renders and measures


def test_best_of_n_checks_prompts_before_loading_the_model(tiny_model_dir: str, tmp_path: Path,
                                                           no_model: None) -> None:
    data = _jsonl(tmp_path / "p.jsonl", {"prompt": "What is 2 + 2?"},
                  {"prompt": "Say " + "hello there " * 30})
    config = load_config(best_of_n.Config, None, [
        f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}", "run.name=t",
        f"data.train={data}", "data.task=arithmetic", "data.max_prompt_tokens=48"])
    with pytest.raises(DataError, match=rf"^{data}:2, field 'prompt': the prompt is \d+ tokens, over "
                                        r"data.max_prompt_tokens 48"):
        best_of_n.train(config)
    assert not (tmp_path / "runs").exists()


def test_ppo_checks_held_out_prompts_before_loading_the_model(tiny_model_dir: str, tmp_path: Path,
                                                              no_model: None) -> None:
    """PPO evaluates its policy, not the actor-critic it loads, on the held-out rows: they are checked
    with the others all the same."""
    data = _jsonl(tmp_path / "p.jsonl", {"prompt": "What is 2 + 2?"})
    held_out = _jsonl(tmp_path / "eval.jsonl", {"prompt": "What is 1 + 1?", "answer": "2"},
                      {"prompt": "count: " + "one two three " * 20, "answer": "x"})
    config = load_config(ppo.Config, None, [
        f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}", "run.name=t",
        f"data.train={data}", f"data.eval={held_out}", "data.task=arithmetic",
        "sampling.max_new_tokens=2000"])
    with pytest.raises(DataError, match=rf"^{held_out}:2, field 'prompt': the prompt is \d+ tokens; with "
                                        r"sampling.max_new_tokens 2000 that exceeds the model's context "
                                        r"window of 2048 tokens"):
        ppo.train(config)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- posttrain eval: refused before loading


def _eval_config(tmp_path: Path, **values: Any) -> command.Config:
    return load_config(command.Config, values={"output_dir": str(tmp_path / "evals"), **values})


def test_eval_reports_every_bad_row_of_a_file_before_loading_the_model(tiny_model_dir: str, tmp_path: Path,
                                                                       no_model: None) -> None:
    path = _jsonl(tmp_path / "bench.jsonl", {"prompt": "What is 2 + 2?", "answer": 4},
                  {"prompt": "Repeat: " + "one two three " * 20, "answer": "x"},
                  {"prompt": "Sum?", "tests": "assert f(1) =="},
                  {"prompt": "word " * 1_000_000, "answer": "y"})
    with pytest.raises(DataError) as info:
        command.run(_eval_config(tmp_path, model=tiny_model_dir, benchmark=str(path),
                                 **{"sampling.max_new_tokens": 1990}))
    text = str(info.value)
    assert text.startswith(f"{path}:3, field 'tests': the tests are not Python code that parses")
    assert "\n  2 more problems:\n" in text
    assert re.search(rf"\n  - {path}:2, field 'prompt': the prompt is \d+ tokens; with "
                     r"sampling.max_new_tokens 1990 that exceeds the model's context window of 2048 tokens",
                     text), text
    assert re.search(rf"\n  - {path}:4, field 'prompt': the prompt is at least \d+ tokens \(5,000,\d{{3}} "
                     r"characters\)", text), text
    assert not (tmp_path / "evals").exists()


@pytest.mark.parametrize("source", ["hf_folder", "run_final", "run_checkpoint", "embedded"])
def test_eval_checks_prompts_against_the_evaluated_models_window(source: str, tiny_model: Any, tokenizer: Any,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the source, its tokenizer and window are read without its weights: a run directory's
    final/, else the base model its checkpoint is loaded onto; an HF folder; the embedded default."""
    folder = str(save_pretrained(tiny_model, tokenizer, tmp_path / "hf"))  # a 2048-token window
    run_dir = tmp_path / "runs" / "grpo-1"
    sources = {"hf_folder": (folder, 2048), "embedded": (EMBEDDED_DEFAULT, 8192)}
    model, window = sources.get(source, (str(run_dir), 2048))
    if source == "run_final":
        save_pretrained(tiny_model, tokenizer, run_dir / "final")
    if source == "run_checkpoint":
        Checkpointer(run_dir).save(2, tiny_model, None, None, {})
        (run_dir / "config.yaml").write_text(f"model:\n  name: {folder}\n")

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the model was loaded before the prompts were checked")

    monkeypatch.setattr("posttrain.models.load_model", refuse)
    monkeypatch.setattr("posttrain.runner.load_model", refuse)
    with pytest.raises(DataError) as info:
        command.run(_eval_config(tmp_path, model=model, benchmark="arithmetic", problems=3,
                                 **{"sampling.max_new_tokens": window - 8}))
    assert len(info.value.problems) == 3
    assert all(f"that exceeds the model's context window of {window} tokens" in str(problem)
               for problem in info.value.problems)
    assert not (tmp_path / "evals").exists()


def test_eval_measures_a_raw_humaneval_prompt_as_the_engine_tokenizes_it(
        tiny_model_dir: str, tokenizer: Any, tmp_path: Path, no_model: None) -> None:
    """prompt_style=raw gives the model the stub as plain text (no chat template): that text is measured."""
    from posttrain.eval import humaneval

    stub = humaneval.problems(1)[0]["prompt"]
    tokens = len(tokenizer(stub, add_special_tokens=False)["input_ids"])
    message = (rf"^humaneval:HumanEval/0, field 'prompt': the prompt is {tokens} tokens; with "
               rf"sampling.max_new_tokens {2049 - tokens} that exceeds")
    with pytest.raises(DataError, match=message):
        command.run(_eval_config(tmp_path, model=tiny_model_dir, benchmark="humaneval", problems=1,
                                 prompt_style="raw", **{"sampling.max_new_tokens": 2049 - tokens}))
    assert not (tmp_path / "evals").exists()
