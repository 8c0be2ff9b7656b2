"""Chunked token log-probs against the naive full-logits computation."""

from __future__ import annotations

import torch

from posttrain.logprobs import naive_token_logprobs, token_logprobs


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
