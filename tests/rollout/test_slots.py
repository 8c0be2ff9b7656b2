"""Tests of the slot engine (posttrain/rollout/slots.py) on a tiny random Llama with the real tokenizer."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from posttrain.errors import ConfigError
from posttrain.rollout import Rollouts, SamplingParams, encode_prompts, generate
from posttrain.rollout.sampling import counter_uniforms, sample_keys
from posttrain.rollout.slots import bucket_for, bucket_sizes

# Prompt lengths 1 to 13 tokens: a slot refilled with a shorter prompt than its previous occupant
# would attend to the occupant's leftover keys if the per-slot mask were wrong.
PROMPTS = ["The capital of France is a city that is known for", "A", "Hello there, how",
           "Once upon a time in a land far away there lived", "Why"]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny-model ops gain nothing from a second thread (see test_torch_engine.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(model: Any, tokenizer: Any, prompts: list[Any], n: int, sampling: SamplingParams, slots: int,
        **options: Any) -> Rollouts:
    return generate(model, tokenizer, prompts, n, sampling, engine_options={"slots": slots, **options})


def rescore(model: torch.nn.Module, rollouts: Rollouts, pad_id: int, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of every completion token from one full forward pass, [N, T]."""
    batch = rollouts.to_batch(pad_id, "cpu")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    token_logp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1).gather(
        2, batch["input_ids"][:, 1:, None])[..., 0]
    return torch.nn.functional.pad(token_logp, (1, 0)) * batch["completion_mask"]


def test_same_samples_whatever_the_slot_count(tiny_model: Any, tokenizer: Any) -> None:
    # Early EOS on some rows (an id the peaked model often draws) makes refills happen mid-run.
    with torch.no_grad():
        tiny_model.model.norm.weight.mul_(4.0)
    sampling = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=12, seed=11)
    free = run(tiny_model, tokenizer, PROMPTS, 3, sampling, 15, ignore_eos=True)
    tiny_model.generation_config.eos_token_id = [free.completion_ids[0][2], free.completion_ids[7][4]]
    whole = run(tiny_model, tokenizer, PROMPTS, 3, sampling, 15)
    assert "stop" in whole.finish_reasons and "length" in whole.finish_reasons
    for slots in (1, 3, 8):
        out = run(tiny_model, tokenizer, PROMPTS, 3, sampling, slots)
        assert out.completion_ids == whole.completion_ids
        assert out.finish_reasons == whole.finish_reasons
        assert out.prompt_index == [i // 3 for i in range(15)]
        for mine, theirs in zip(out.logprobs, whole.logprobs):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    # A prompt's samples depend on its content, not on where it sits in the request.
    alone = run(tiny_model, tokenizer, PROMPTS[3:4], 3, sampling, 2)
    assert alone.completion_ids == whole.completion_ids[9:12]
    reseeded = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=12, seed=12)
    assert run(tiny_model, tokenizer, PROMPTS, 3, reseeded, 8).completion_ids != whole.completion_ids


def test_repeated_prompts_get_different_samples(tiny_model: Any, tokenizer: Any) -> None:
    out = run(tiny_model, tokenizer, ["Hello", "Hello"], 2, SamplingParams(max_new_tokens=6, seed=0), 4)
    assert len({tuple(ids) for ids in out.completion_ids}) == 4


def test_greedy_equals_the_batch_engine_token_for_token(tiny_model: Any, tokenizer: Any) -> None:
    # 45 tokens: attention widths cross 32-position chunks.
    sampling = SamplingParams(temperature=0, max_new_tokens=45)
    batch = run(tiny_model, tokenizer, PROMPTS, 2, sampling, 0, ignore_eos=True)
    for slots in (1, 3, 10):
        out = run(tiny_model, tokenizer, PROMPTS, 2, sampling, slots, ignore_eos=True)
        assert out.completion_ids == batch.completion_ids
        assert out.finish_reasons == ["length"] * 10


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 20, 0.8), (0.0, 0, 1.0)])
def test_logprobs_equal_a_rescoring(tiny_model: Any, tokenizer: Any, temperature: float, top_k: int,
                                    top_p: float) -> None:
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=20, seed=3)
    out = run(tiny_model, tokenizer, PROMPTS, 2, sampling, 3)
    batch = out.to_batch(tokenizer.pad_token_id)
    expected = rescore(tiny_model, out, tokenizer.pad_token_id, temperature or 1.0)
    assert (expected - batch["logprobs"]).abs().max().item() <= 1e-4


def test_refilled_slot_sees_only_its_own_prompt(tiny_model: Any, tokenizer: Any) -> None:
    """One slot runs a long prompt then a short one: the short one's greedy tokens equal those of
    the short prompt sampled alone (leftover keys of the long prompt would change them)."""
    sampling = SamplingParams(temperature=0, max_new_tokens=10)
    long, short = PROMPTS[3], PROMPTS[1]
    alone = run(tiny_model, tokenizer, [short], 1, sampling, 1, ignore_eos=True)
    after = run(tiny_model, tokenizer, [long, short], 1, sampling, 1, ignore_eos=True)
    assert after.completion_ids[1] == alone.completion_ids[0]
    torch.testing.assert_close(after.logprobs[1], alone.logprobs[0], atol=1e-5, rtol=0)


def test_stop_strings_and_eos_finish_rows_as_in_the_batch_engine(tiny_model: Any, tokenizer: Any) -> None:
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16, seed=0)
    free = run(tiny_model, tokenizer, PROMPTS, 2, sampling, 4, ignore_eos=True)
    tokens = free.completion_ids[0]
    text6 = tokenizer.decode(tokens[:6], skip_special_tokens=True)
    stop = text6[-3:]
    assert stop not in tokenizer.decode(tokens[:5], skip_special_tokens=True)
    tiny_model.generation_config.eos_token_id = [free.completion_ids[5][3]]
    stopped = run(tiny_model, tokenizer, PROMPTS, 2,
                  SamplingParams(temperature=1.0, max_new_tokens=16, seed=0, stop=["@@never@@", stop]), 4)
    assert stopped.completion_ids[0] == tokens[:6]
    assert stopped.texts[0] == text6[: text6.find(stop) + len(stop)]
    assert stopped.finish_reasons[0] == "stop" and stopped.finish_reasons[5] == "stop"
    assert len(stopped.completion_ids[5]) <= 4
    for mine, theirs in zip(stopped.logprobs, free.logprobs):
        torch.testing.assert_close(mine, theirs[: len(mine)], atol=1e-5, rtol=0)
    for i, ids in enumerate(stopped.completion_ids):
        reason = stopped.finish_reasons[i]
        assert reason == "stop" or (len(ids) == 16 and reason == "length")


def test_a_request_the_budget_cannot_hold_names_the_budget(tiny_model: Any, tokenizer: Any) -> None:
    # The tiny model: 2 layers x 2 (keys, values) x 2 KV heads x 16 dims x 4 bytes = 512 bytes a position.
    sampling = SamplingParams(max_new_tokens=100)
    with pytest.raises(ConfigError, match=r"engine_options.kv_budget_mb=0.05 holds no KV-cache slot: one "
                                          r"slot of 128 positions .* needs 0.0625 MB; raise kv_budget_mb"):
        run(tiny_model, tokenizer, ["Hello"], 1, sampling, 4, kv_budget_mb=0.05)
    # 32 positions (16 KB) a slot: 0.05 MB holds 3 of the 4 slots asked for; 4 rows take two rounds.
    out = run(tiny_model, tokenizer, ["Hello"], 4, SamplingParams(max_new_tokens=28, seed=0), 4,
              kv_budget_mb=0.05, ignore_eos=True)
    assert len(out) == 4 and out.timing["steps"] == 2 * 28
    with pytest.raises(ConfigError, match=r"engine_options.slots must be >= 0"):
        run(tiny_model, tokenizer, ["Hello"], 1, sampling, -1)


def test_buckets_cover_every_batch_size() -> None:
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert bucket_sizes(3) == [1, 2, 3]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert [bucket_for(rows, bucket_sizes(40)) for rows in (1, 3, 9, 17, 33, 40)] == [1, 4, 16, 32, 40, 40]


def test_sample_keys_of_a_share_are_the_whole_requests() -> None:
    whole = [[1, 2], [3], [1, 2], [1, 2]]
    keys = sample_keys(9, whole, 2)
    assert len(set(keys)) == 8  # equal prompts: other occurrences, other keys
    assert sample_keys(9, whole[2:], 2, occurrences=(1, 2)) == keys[4:]
    assert sample_keys(9, whole[2:], 2)[:2] == keys[:2]  # counted within the share: the first copy's again
    with pytest.raises(ValueError, match="occurrences has 1 entries for 2 prompts"):
        sample_keys(9, whole[2:], 2, occurrences=(1,))


def test_counter_uniforms_are_uniform_and_depend_only_on_key_and_step() -> None:
    keys = torch.tensor(sample_keys(0, [[1, 2, 3], [4, 5]], 500))
    steps = torch.arange(1000).repeat_interleave(1)[: keys.shape[0]]
    u = counter_uniforms(keys, steps)
    assert u.dtype == torch.float64 and bool(((u >= 0) & (u < 1)).all())
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert counts.min() > 60 and counts.max() < 140  # 1000 draws, 100 per decile expected
    # Consecutive steps of one key are not correlated, and a draw does not depend on its neighbours.
    one_key = counter_uniforms(keys[:1].repeat(2000), torch.arange(2000))
    assert abs(torch.corrcoef(torch.stack([one_key[:-1], one_key[1:]]))[0, 1].item()) < 0.1
    torch.testing.assert_close(counter_uniforms(keys[5:6], steps[5:6]), u[5:6])
    assert sample_keys(0, [[1, 2, 3]], 2) == sample_keys(0, [[9], [1, 2, 3]], 2)[2:]
    assert sample_keys(1, [[1, 2, 3]], 2) != sample_keys(0, [[1, 2, 3]], 2)


def test_uses_prompt_order_and_token_ids_like_the_batch_engine(tiny_model: Any, tokenizer: Any) -> None:
    out = run(tiny_model, tokenizer, PROMPTS, 2, SamplingParams(max_new_tokens=3, seed=0), 3)
    ids = encode_prompts(tokenizer, PROMPTS)
    assert out.prompt_ids == [ids[i // 2] for i in range(10)]
    assert out.timing["completion_tokens"] == sum(len(c) for c in out.completion_ids)
