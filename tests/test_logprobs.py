"""Chunked token log-probs against the naive full-logits computation."""

from __future__ import annotations

import torch

from posttrain.logprobs import naive_token_logprobs, share_prompts, shared_prompt_logprobs, token_logprobs


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5000, (3, 14), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # right padding
    return ids, mask


def test_chunked_equals_naive_fp32(tiny_model: torch.nn.Module) -> None:
    ids, mask = _batch()
    for chunk in (1, 5, 1024):
        chunked, _ = token_logprobs(tiny_model, ids, mask, chunk_size=chunk)
        naive = naive_token_logprobs(tiny_model, ids, mask)
        scored = mask.clone()
        scored[:, 0] = 0
        assert (chunked - naive * scored).abs().max() <= 1e-5
        assert torch.all(chunked[scored == 0] == 0)


def test_temperature_and_score_mask(tiny_model: torch.nn.Module) -> None:
    ids, mask = _batch()
    score = torch.zeros_like(mask)
    score[:, 8:] = 1
    chunked, _ = token_logprobs(tiny_model, ids, mask, score, temperature=0.7, chunk_size=3)
    naive = naive_token_logprobs(tiny_model, ids, mask, temperature=0.7)
    expected = naive * (score & mask)
    assert (chunked - expected).abs().max() <= 1e-5
    assert torch.all(chunked[:, :8] == 0)


def test_left_padding_gives_same_values_as_unpadded(tiny_model: torch.nn.Module) -> None:
    ids = torch.randint(0, 5000, (1, 9), generator=torch.Generator().manual_seed(1))
    alone, _ = token_logprobs(tiny_model, ids, torch.ones_like(ids))
    padded_ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    padded_mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    padded, _ = token_logprobs(tiny_model, padded_ids, padded_mask)
    assert torch.allclose(padded[:, 3:], alone, atol=1e-5)
    assert torch.all(padded[:, :4] == 0)  # padding and the first real token are not scored


def test_gradients_match_naive(tiny_model: torch.nn.Module) -> None:
    ids, mask = _batch()
    chunked, _ = token_logprobs(tiny_model, ids, mask, chunk_size=4)
    chunked.sum().backward()
    grads = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    naive_token_logprobs(tiny_model, ids, mask).sum().backward()
    for got, want in zip(grads, (p.grad for p in tiny_model.parameters())):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_entropy_of_scored_positions(tiny_model: torch.nn.Module) -> None:
    ids, mask = _batch()
    _, entropy = token_logprobs(tiny_model, ids, mask, with_entropy=True)
    logits = tiny_model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    expected = -(logp.exp() * logp).sum(-1)
    assert entropy is not None
    assert torch.allclose(entropy[0, 1:], expected[0], atol=1e-4)
    assert entropy[1, 11] == 0


def _grouped_batch(pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two prompts x three completions of different lengths, right-padded like Rollouts.to_batch."""
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(5, 500, (n,), generator=gen).tolist() for n in (5, 7)]
    rows = [(p, torch.randint(5, 500, (n,), generator=gen).tolist()) for p in prompts for n in (3, 6, 1)]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    completion = torch.zeros_like(ids)
    for i, (p, c) in enumerate(rows):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        mask[i, :len(p) + len(c)] = 1
        completion[i, len(p):len(p) + len(c)] = 1
    return ids, mask, completion


def test_share_prompts_packs_each_run_of_equal_prompts_once() -> None:
    ids, mask, completion = _grouped_batch()
    shared = share_prompts(ids, mask, completion)
    assert shared.input_ids.shape == (2, 7 + 3 + 6 + 1)  # one row per prompt: prompt + its completions
    assert shared.input_ids[0, :5].tolist() == ids[0, :5].tolist()
    assert shared.position_ids[0, :10].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 5, 6]  # restarts at 5
    assert shared.previous[:4].tolist() == [4, 5, 6, 4]  # first tokens: from the prompt
    # max 12 tokens: [5+3], [5+6+1]; [7+3], [7+6] (13: alone, over the cap), [7+1]
    split = share_prompts(ids, mask, completion, max_tokens=12)
    assert split.input_ids.shape[0] == 5


def test_shared_prompt_logprobs_equal_unshared_values_and_gradients(tiny_model: torch.nn.Module) -> None:
    ids, mask, completion = _grouped_batch()
    for max_tokens in (2048, 12):
        tiny_model.zero_grad()
        plain, plain_entropy = token_logprobs(tiny_model, ids, mask, completion, temperature=0.7,
                                              with_entropy=True)
        plain.sum().backward()
        plain_grads = [p.grad.clone() for p in tiny_model.parameters()]
        tiny_model.zero_grad()
        shared, shared_entropy = shared_prompt_logprobs(tiny_model, ids, mask, completion, temperature=0.7,
                                                        with_entropy=True, max_tokens=max_tokens)
        shared.sum().backward()
        assert torch.allclose(shared, plain, atol=1e-5)
        assert torch.allclose(shared_entropy, plain_entropy, atol=1e-5)
        assert (shared[completion == 0] == 0).all()
        for a, b in zip(plain_grads, (p.grad for p in tiny_model.parameters())):
            assert torch.allclose(a, b, atol=1e-5)


def test_shared_prompt_logprobs_under_bf16_autocast_stay_close(tiny_model: torch.nn.Module) -> None:
    ids, mask, completion = _grouped_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain, _ = token_logprobs(tiny_model, ids, mask, completion)
        shared, _ = shared_prompt_logprobs(tiny_model, ids, mask, completion)
    assert (shared - plain).abs().max() < 0.05
