"""Tests of the torch rollout engine on a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from posttrain.errors import ConfigError, DataError
from posttrain.rollout import Rollouts, SamplingParams, encode_prompts, generate, sync_weights
from posttrain.rollout.torch_engine import StopChecker, TorchEngine, sample_tokens

PROMPTS = ["Hello there, how", "The capital of France is a city that is known for", "A"]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny-model ops gain nothing from a second thread, and on a shared, loaded machine OpenMP's
    spinning barriers made this file ~50x slower with two (measured: 0.2 s -> 5-12 s per generate)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rescore(model: torch.nn.Module, rollouts: Rollouts, pad_id: int, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of every completion token from one full forward pass, [N, T]."""
    batch = rollouts.to_batch(pad_id, "cpu")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
    token_logp = logp.gather(2, batch["input_ids"][:, 1:, None])[..., 0]
    return torch.nn.functional.pad(token_logp, (1, 0)) * batch["completion_mask"]


def hf_greedy(model: torch.nn.Module, ids: list[int], new_tokens: int, pad_id: int) -> list[int]:
    prompt = torch.tensor([ids])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("decoder", ["lean", "hf"])
def test_greedy_matches_hf_generate_with_left_padding(tiny_model: Any, tokenizer: Any, decoder: str) -> None:
    # 40 new tokens: the KV slabs grow past their first 32-slot chunk.
    sampling = SamplingParams(temperature=0, max_new_tokens=40)
    rollouts = generate(tiny_model, tokenizer, PROMPTS, 2, sampling,
                        engine_options={"ignore_eos": True, "decoder": decoder})
    tiny_model.eval()
    for p, ids in enumerate(encode_prompts(tokenizer, PROMPTS)):
        expected = hf_greedy(tiny_model, ids, 40, tokenizer.pad_token_id)
        assert rollouts.completion_ids[2 * p] == expected
        assert rollouts.completion_ids[2 * p + 1] == expected
    assert rollouts.prompt_index == [0, 0, 1, 1, 2, 2]
    assert rollouts.finish_reasons == ["length"] * 6


@pytest.mark.parametrize(("temperature", "decoder"),
                         [(1.0, "lean"), (0.7, "lean"), (0.0, "lean"), (0.7, "hf")])
def test_logprobs_equal_a_rescoring_pass(tiny_model: Any, tokenizer: Any, temperature: float,
                                         decoder: str) -> None:
    sampling = SamplingParams(temperature=temperature, max_new_tokens=30, seed=3)
    rollouts = generate(tiny_model, tokenizer, PROMPTS, 3, sampling, engine_options={"decoder": decoder})
    batch = rollouts.to_batch(tokenizer.pad_token_id)
    expected = rescore(tiny_model, rollouts, tokenizer.pad_token_id, temperature or 1.0)
    assert (expected - batch["logprobs"]).abs().max().item() <= 1e-4
    assert batch["logprobs"][batch["completion_mask"].bool()].lt(0).all()


def test_stop_string_cuts_text_after_it_and_keeps_tokens_through_it(tiny_model: Any, tokenizer: Any) -> None:
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16, seed=0)
    free = generate(tiny_model, tokenizer, ["Once upon a time"], 1, sampling,
                    engine_options={"ignore_eos": True})
    tokens = free.completion_ids[0]
    # A stop string that first becomes complete with the 6th token: the tail of its text.
    text6 = tokenizer.decode(tokens[:6], skip_special_tokens=True)
    stop = text6[-3:]
    assert stop not in tokenizer.decode(tokens[:5], skip_special_tokens=True)
    stopped = generate(tiny_model, tokenizer, ["Once upon a time"], 1,
                       SamplingParams(temperature=1.0, max_new_tokens=16, seed=0, stop=["@@never@@", stop]),
                       engine_options={"ignore_eos": True})
    assert stopped.completion_ids[0] == tokens[:6]
    assert stopped.texts[0] == text6[: text6.find(stop) + len(stop)]
    assert stopped.finish_reasons == ["stop"]
    assert stopped.logprobs[0].shape == (6,)
    assert torch.allclose(stopped.logprobs[0], free.logprobs[0][:6])


def test_stop_checker_cuts_at_the_earliest_stop() -> None:
    checker = StopChecker(tokenizer=None, stops=["</answer>", "\n\n"])
    assert checker.cut("x\n\ny</answer>") == ("x\n\n", True)
    assert checker.cut("<answer>4</answer> more\n\n") == ("<answer>4</answer>", True)
    assert checker.cut("no stop here") == ("no stop here", False)
    assert checker.window == len("</answer>") + 3


def test_eos_finishes_a_row_and_other_rows_keep_going(tiny_model: Any, tokenizer: Any) -> None:
    sampling = SamplingParams(temperature=0, max_new_tokens=10)
    free = generate(tiny_model, tokenizer, PROMPTS, 1, sampling, engine_options={"ignore_eos": True})
    # Make the 4th greedy token of prompt 0 an EOS id (through the generation config, as HF does).
    eos = free.completion_ids[0][3]
    assert all(eos not in ids for ids in free.completion_ids[1:])
    tiny_model.generation_config.eos_token_id = [eos]
    for compact_min in (0.0, 0.9):
        out = generate(tiny_model, tokenizer, PROMPTS, 1, sampling,
                       engine_options={"compact_min": compact_min})
        first = free.completion_ids[0].index(eos)
        assert out.completion_ids[0] == free.completion_ids[0][: first + 1]
        assert out.finish_reasons == ["stop", "length", "length"]
        assert out.completion_ids[1:] == free.completion_ids[1:]
        assert torch.allclose(out.logprobs[2], free.logprobs[2], atol=1e-5)


def test_samples_differ_within_a_group_and_follow_the_seed(tiny_model: Any, tokenizer: Any) -> None:
    def run(seed: int | None) -> list[list[int]]:
        sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=seed)
        return generate(tiny_model, tokenizer, PROMPTS[:2], 4, sampling).completion_ids

    first = run(7)
    assert len({tuple(ids) for ids in first}) == 8
    assert run(7) == first
    assert run(8) != first
    torch.manual_seed(0)
    unseeded = run(None)
    torch.manual_seed(0)
    assert run(None) == unseeded


@pytest.mark.parametrize("decoder", ["lean", "hf"])
def test_batch_engine_samples_do_not_depend_on_the_rows_beside_them(tiny_model: Any, tokenizer: Any,
                                                                     decoder: str) -> None:
    # slots=0: the batch engine, as a LoRA policy or a model the slots cannot hold gets; each sample's
    # stream comes from (seed, its prompt, its index), so prompts split over calls (or rollout workers)
    # sample what they sample together
    options = {"slots": 0, "decoder": decoder}
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
    together = generate(tiny_model, tokenizer, PROMPTS, 3, sampling, engine_options=options)
    assert len({tuple(ids) for ids in together.completion_ids}) == 9
    for p, prompt in enumerate(PROMPTS):
        alone = generate(tiny_model, tokenizer, [prompt], 3, sampling, engine_options=options)
        assert alone.completion_ids == together.completion_ids[3 * p: 3 * p + 3]
        for mine, theirs in zip(alone.logprobs, together.logprobs[3 * p: 3 * p + 3]):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


def test_top_k_one_equals_greedy(tiny_model: Any, tokenizer: Any) -> None:
    greedy = generate(tiny_model, tokenizer, PROMPTS, 2, SamplingParams(temperature=0, max_new_tokens=8))
    top1 = generate(tiny_model, tokenizer, PROMPTS, 2,
                    SamplingParams(temperature=1.3, top_k=1, max_new_tokens=8, seed=5))
    assert top1.completion_ids == greedy.completion_ids


KEPT_TWO = torch.tensor([0.5 / 0.8, 0.3 / 0.8, 1, 1])  # tokens 0 and 1 of (.5, .3, .15, .05) renormalised


@pytest.mark.parametrize("sampler", ["inverse_cdf", "multinomial", "exponential"])
def test_top_p_and_top_k_keep_only_the_allowed_tokens(sampler: str) -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    # Mass before each token: 0, .5, .8, .95 -> top_p 0.7 keeps tokens 0 and 1 only.
    tokens, logprobs, sampler_logprobs = sample_tokens(logits, SamplingParams(top_p=0.7), generator, sampler)
    counts = torch.bincount(tokens, minlength=4) / 4000
    assert counts[2:].sum() == 0
    assert abs(counts[0].item() - 0.5 / 0.8) < 0.03
    # Log-probs are those of the untruncated distribution; the sampler's, of the kept tokens renormalised.
    assert torch.allclose(logprobs, probs.log()[tokens], atol=1e-6)
    assert torch.allclose(sampler_logprobs, KEPT_TWO.log()[tokens], atol=1e-6)
    top_k_p = SamplingParams(top_k=3, top_p=0.8)
    tokens, _, sampler_logprobs = sample_tokens(logits, top_k_p, generator, sampler)
    # Within the top 3 (renormalised .5/.95, .3/.95, ...), top_p 0.8 keeps tokens 0 and 1.
    assert set(tokens.tolist()) == {0, 1}
    assert torch.allclose(sampler_logprobs, KEPT_TWO.log()[tokens], atol=1e-6)
    tokens, _, sampler_logprobs = sample_tokens(logits, SamplingParams(top_k=3), generator, sampler)
    counts = torch.bincount(tokens, minlength=4) / 4000
    assert counts[3] == 0
    assert abs(counts[2].item() - 0.15 / 0.95) < 0.03
    assert torch.allclose(sampler_logprobs, (probs / 0.95).log()[tokens], atol=1e-6)
    tokens, logprobs, sampler_logprobs = sample_tokens(logits, SamplingParams(), generator, sampler)
    assert abs((torch.bincount(tokens, minlength=4) / 4000)[3].item() - 0.05) < 0.015
    assert torch.equal(sampler_logprobs, logprobs), "nothing truncated: the sampler's log-probs are the same"


@pytest.mark.parametrize("sampler", ["inverse_cdf", "multinomial"])
def test_sampling_frequencies_over_a_vocabulary_spanning_blocks(sampler: str) -> None:
    # 600 entries (not a multiple of the 256-entry blocks): mass on a few tokens in different blocks,
    # zero on the rest, which must never be drawn.
    probs = torch.zeros(600)
    probs[[3, 255, 256, 599]] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().repeat(8000, 1)
    tokens, _, _ = sample_tokens(logits, SamplingParams(), torch.Generator().manual_seed(2), sampler)
    counts = torch.bincount(tokens, minlength=600) / 8000
    assert counts.sum().item() == pytest.approx(1.0)
    assert counts[[3, 255, 256, 599]].sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(counts[[3, 255, 256, 599]], probs[[3, 255, 256, 599]], atol=0.02, rtol=0)


def test_top_p_nucleus_wider_than_the_candidate_shortlist() -> None:
    # 1000 equally likely tokens: the 0.5 nucleus holds 500 of them, beyond the 256-token shortlist.
    logits = torch.zeros(2000, 1000)
    tokens, logprobs, sampler_logprobs = sample_tokens(logits, SamplingParams(top_p=0.5),
                                                       torch.Generator().manual_seed(1))
    assert 300 < len(set(tokens.tolist())) <= 500  # exactly 500 are allowed: ties do not widen the nucleus
    assert torch.allclose(logprobs, torch.full_like(logprobs, -torch.log(torch.tensor(1000.0)).item()))
    assert torch.allclose(sampler_logprobs, torch.full_like(logprobs, -torch.log(torch.tensor(500.0)).item()))


@pytest.mark.parametrize("slots", [0, 4])  # the batch engine and the slot engine
def test_sampler_logprobs_are_the_truncated_distributions(tiny_model: Any, tokenizer: Any,
                                                          slots: int) -> None:
    """Each sampled token's log-prob under top-k/top-p renormalised, recomputed from a re-scoring pass;
    the samples themselves are those of the same seed without asking for anything."""
    sampling = SamplingParams(temperature=0.8, top_k=20, top_p=0.7, max_new_tokens=12, seed=11)
    rollouts = generate(tiny_model, tokenizer, PROMPTS, 2, sampling, engine_options={"slots": slots})
    batch = rollouts.to_batch(tokenizer.pad_token_id)
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    probs = torch.softmax(logits[:, :-1].float() / 0.8, dim=-1)
    top_values, top_index = probs.topk(20, dim=-1)
    top_values = top_values / top_values.sum(-1, keepdim=True)
    kept = (top_values.cumsum(-1) - top_values) < 0.7
    kept_probs = torch.zeros_like(probs).scatter_(-1, top_index, top_values * kept)
    kept_probs = kept_probs / kept_probs.sum(-1, keepdim=True)
    expected = kept_probs.gather(2, batch["input_ids"][:, 1:, None])[..., 0].log()
    mask = batch["completion_mask"][:, 1:].bool()
    assert (expected[mask] - batch["sampler_logprobs"][:, 1:][mask]).abs().max() <= 1e-4
    gap = (batch["logprobs"] - batch["sampler_logprobs"])[batch["completion_mask"].bool()]
    assert gap.lt(0).sum() > 0 and gap.le(1e-6).all(), "truncation only ever raises a kept token's log-prob"
    assert rollouts.completion_ids == generate(tiny_model, tokenizer, PROMPTS, 2, sampling,
                                               engine_options={"slots": slots}).completion_ids


def test_over_long_prompts_are_data_errors(tiny_model: Any, tokenizer: Any) -> None:
    long_prompt = list(range(100, 2100))  # 2000 tokens; the tiny model has 2048 positions
    with pytest.raises(DataError, match=r"prompt 1 has 2000 tokens; with max_new_tokens=64 that exceeds the "
                                        r"model's max_position_embeddings=2048"):
        generate(tiny_model, tokenizer, ["hi", long_prompt], 2, SamplingParams(max_new_tokens=64))
    with pytest.raises(DataError, match=r"prompt 0 has 4 tokens, more than max_prompt_tokens=3"):
        generate(tiny_model, tokenizer, [[1, 2, 3, 4]], 1, SamplingParams(), max_prompt_tokens=3)
    with pytest.raises(DataError, match=r"prompt 0 is empty \(0 tokens\)"):
        generate(tiny_model, tokenizer, [""], 1, SamplingParams())
    with pytest.raises(DataError, match=r"no prompts to generate from"):
        generate(tiny_model, tokenizer, [], 1, SamplingParams())
    with pytest.raises(DataError, match=r"prompt 0 is neither a string"):
        generate(tiny_model, tokenizer, [3.5], 1, SamplingParams())  # type: ignore[list-item]


def test_bad_options_are_config_errors(tiny_model: Any, tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match=r"unknown rollout backend 'jax'"):
        generate(tiny_model, tokenizer, ["hi"], 1, SamplingParams(), backend="jax")
    with pytest.raises(ConfigError, match=r"n \(samples per prompt\) must be >= 1, got 0"):
        generate(tiny_model, tokenizer, ["hi"], 0, SamplingParams())
    with pytest.raises(ConfigError, match=r"engine_options.dtype must be one of \['bfloat16', 'float32'\]"):
        TorchEngine(dtype="int8")
    with pytest.raises(ConfigError, match=r"engine_options.sampler must be one of"):
        generate(tiny_model, tokenizer, ["hi"], 1, SamplingParams(), engine_options={"sampler": "beam"})
    with pytest.raises(ConfigError, match=r"unknown engine_options \['beams'\] for backend 'torch'"):
        generate(tiny_model, tokenizer, ["hi"], 1, SamplingParams(), engine_options={"beams": 2})
    with pytest.raises(ConfigError, match=r"2 config errors"):
        SamplingParams(temperature=-1, top_p=0)
    with pytest.raises(ConfigError, match=r"sampling.stop must be a list of non-empty strings"):
        SamplingParams(stop=[""])


def test_chat_messages_go_through_the_template(tiny_model: Any, tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    rollouts = generate(tiny_model, tokenizer, [messages, "raw text"], 1, SamplingParams(max_new_tokens=2))
    prompt_text = tokenizer.decode(rollouts.prompt_ids[0])
    # SmolLM2's template adds its default system turn when none is given.
    assert prompt_text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(rollouts.prompt_ids[1]) == "raw text"


def test_to_batch_shapes_and_masks() -> None:
    rollouts = Rollouts(
        prompt_ids=[[5, 6, 7], [8]], completion_ids=[[1, 2], [3, 4, 9]], texts=["", ""],
        logprobs=[torch.tensor([-0.5, -1.0]), torch.tensor([-0.1, -0.2, -0.3])],
        finish_reasons=["stop", "length"], prompt_index=[0, 1],
    )
    batch = rollouts.to_batch(pad_id=0, device="cpu")
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1, 2], [8, 3, 4, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    expected = torch.tensor([[0, 0, 0, -0.5, -1.0], [0, -0.1, -0.2, -0.3, 0]])
    torch.testing.assert_close(batch["logprobs"], expected)
    assert batch["prompt_lengths"].tolist() == [3, 1]
    assert "sampler_logprobs" not in batch  # a hand-built Rollouts without them
    rollouts.sampler_logprobs = [torch.tensor([-0.25, -0.5]), torch.tensor([0.0, -0.1, -0.2])]
    sampler = rollouts.to_batch(pad_id=0, device="cpu")["sampler_logprobs"]
    torch.testing.assert_close(sampler, torch.tensor([[0, 0, 0, -0.25, -0.5], [0, 0.0, -0.1, -0.2, 0]]))


def test_model_state_is_left_as_it_was(tiny_model: Any, tokenizer: Any) -> None:
    tiny_model.train()
    use_cache = tiny_model.config.use_cache
    generate(tiny_model, tokenizer, ["hi"], 2, SamplingParams(max_new_tokens=3))
    assert tiny_model.training and tiny_model.config.use_cache == use_cache
    tiny_model.eval()
    generate(tiny_model, tokenizer, ["hi"], 2, SamplingParams(max_new_tokens=3),
             engine_options={"dtype": "bfloat16"})
    assert not tiny_model.training


# Measured on this tiny model: max |bf16 - fp32 re-scoring| ≈ 0.004-0.02 nats. On SmolLM2-135M
# (benchmarks/rollout.py, 64 rows x 4787 sampled tokens): max 0.36, mean 0.034 nats.
BF16_TOLERANCE = 0.05


def bf16_error(model: Any, rollouts: Rollouts, pad_id: int) -> float:
    return (rescore(model, rollouts, pad_id, 1.0) - rollouts.to_batch(pad_id)["logprobs"]).abs().max().item()


def test_bf16_engine_logprobs_close_to_fp32_rescoring_and_follow_weight_updates(
        tiny_model: Any, tokenizer: Any) -> None:
    options, pad = {"dtype": "bfloat16"}, tokenizer.pad_token_id
    sampling = SamplingParams(temperature=1.0, max_new_tokens=10, seed=0)
    rollouts = generate(tiny_model, tokenizer, PROMPTS, 2, sampling, engine_options=options)
    assert bf16_error(tiny_model, rollouts, pad) < BF16_TOLERANCE
    # An optimizer step changes the weights in place: the bf16 copy follows without being told.
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=5.0)
    batch = rollouts.to_batch(pad)
    tiny_model.train()
    tiny_model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    tiny_model.eval()
    assert bf16_error(tiny_model, rollouts, pad) > 10 * BF16_TOLERANCE  # what a stale copy would give
    updated = generate(tiny_model, tokenizer, PROMPTS, 2, sampling, engine_options=options)
    assert bf16_error(tiny_model, updated, pad) < BF16_TOLERANCE
    # Edits through .data bypass version counters: sync_weights is the explicit refresh.
    with torch.no_grad():
        tiny_model.lm_head.weight.data.mul_(3.0)
    assert bf16_error(tiny_model, updated, pad) > 10 * BF16_TOLERANCE
    sync_weights(tiny_model)
    synced = generate(tiny_model, tokenizer, PROMPTS, 2, sampling, engine_options=options)
    assert bf16_error(tiny_model, synced, pad) < 3 * BF16_TOLERANCE


def test_lora_policy_samples_like_its_base_in_fp32_and_bf16(tokenizer: Any) -> None:
    from posttrain.models import add_lora
    from posttrain.models import tiny_model as build

    base = build(tokenizer, layers=2, hidden=64, seed=0)
    sampling = SamplingParams(temperature=0, max_new_tokens=6)
    expected = generate(base, tokenizer, PROMPTS, 1, sampling).completion_ids
    lora = add_lora(build(tokenizer, layers=2, hidden=64, seed=0), rank=2)  # B = 0: same function as base
    assert generate(lora, tokenizer, PROMPTS, 1, sampling).completion_ids == expected
    sampled = generate(lora, tokenizer, PROMPTS, 2, SamplingParams(max_new_tokens=6, seed=0),
                       engine_options={"dtype": "bfloat16"})
    assert bf16_error(lora, sampled, tokenizer.pad_token_id) < BF16_TOLERANCE


def test_vllm_backend_without_vllm_names_the_extra(tiny_model: Any, tokenizer: Any) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ConfigError, match=r"pip install posttrain\[vllm\]"):
        generate(tiny_model, tokenizer, ["hi"], 1, SamplingParams(), backend="vllm")


def test_bf16_copy_follows_fused_adamw_after_sync_weights(tokenizer: Any) -> None:
    """Fused AdamW updates weights without bumping version counters, so recipes call sync_weights
    after optimizer steps; without it the bf16 copy would keep sampling the old weights."""
    from posttrain.models import tiny_model

    model = tiny_model(tokenizer, seed=4)
    greedy = SamplingParams(temperature=0, max_new_tokens=5)
    before = generate(model, tokenizer, ["hello"], n=1, sampling=greedy, engine_options={"dtype": "bfloat16"})
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5, fused=True)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    sync_weights(model)
    after = generate(model, tokenizer, ["hello"], n=1, sampling=greedy, engine_options={"dtype": "bfloat16"})
    reference = generate(model, tokenizer, ["hello"], n=1, sampling=greedy,
                         engine_options={"dtype": "float32"})
    assert after.completion_ids != before.completion_ids
    assert after.completion_ids == reference.completion_ids
