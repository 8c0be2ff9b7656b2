"""Turning a step's logits into tokens: temperature, top-k, top-p, one uniform per row through a
two-level inverse CDF, and the two log-probs of each sampled token (``sample_tokens``); and the
counter-based uniforms (``sample_keys``, ``counter_uniforms``) that make a sample's random stream
depend on the seed, its prompt and its index only, not on which other rows share its batch.

Shared by the batch engine (``torch_engine.py``) and the slot engine (``slots.py``).
"""

from __future__ import annotations

import hashlib
from array import array

import torch

from posttrain.rollout.types import SamplingParams

# A nucleus is looked for among this many top tokens first; a full sort only when it is not there.
_TOP_P_CANDIDATES = 256

_BLOCK = 256  # vocabulary block of the two-level inverse CDF


def sample_workspace(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """A reusable fp32 [rows, vocab rounded up to a block] buffer for ``sample_tokens``.

    Reusing it matters on CPU: a fresh 12 MB tensor per step is fresh pages, and the page faults
    made the softmax of batch 64 x 49k vocabulary ~15x slower than on warm memory (measured here).
    """
    return torch.zeros((rows, -(-vocab // _BLOCK) * _BLOCK), dtype=torch.float32, device=device)


def sample_tokens(logits_BV: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None,
                  sampler: str = "inverse_cdf", workspace: torch.Tensor | None = None,
                  uniform_B: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one token per row; return ``(tokens_B, logprobs_B, sampler_logprobs_B)``. ``uniform_B``
    (float64 in [0, 1), inverse_cdf only) gives each row its uniform instead of drawing them from
    ``generator``.

    logprob = log_softmax(logits / T)[token] with T = temperature (1 when greedy), taken before the
    top-k/top-p truncation so that it equals a re-scoring forward pass at the same temperature.
    sampler_logprob = log q(token), q the distribution actually sampled from: softmax(logits / T) with
    the truncated tokens removed and the rest renormalised (= logprob when nothing is truncated; 0
    when greedy, a point mass). Importance weights against the sampler (TIS) need this one.
    Top-k keeps the k most likely tokens; top-p (Holtzman et al., arXiv:1904.09751) then keeps the
    smallest set of most likely tokens whose (renormalised) probability reaches p.
    """
    rows, vocab = logits_BV.shape
    if workspace is None:
        workspace = sample_workspace(rows, vocab, logits_BV.device)
    padded_BP = workspace[:rows]  # zeros beyond the vocabulary
    probs_BV = padded_BP[:, :vocab].copy_(logits_BV)
    if sampling.temperature == 0:
        tokens_B = logits_BV.argmax(dim=-1)
        chosen_B = probs_BV.gather(1, tokens_B[:, None])[:, 0]
        logprobs_B = chosen_B - _logsumexp_(probs_BV)
        return tokens_B, logprobs_B, torch.zeros_like(logprobs_B)
    if sampling.temperature != 1.0:
        probs_BV.mul_(1.0 / sampling.temperature)
    _logsumexp_(probs_BV)
    probs_BV.div_(probs_BV.sum(dim=-1, keepdim=True))  # softmax, in place
    weights_BV = _truncate(probs_BV, sampling.top_k, sampling.top_p)
    if sampler == "inverse_cdf":
        tokens_B = _inverse_cdf(padded_BP, generator, uniform_B)
    elif sampler == "exponential":
        # Exponential race: argmax w_i / E_i with E_i ~ Exp(1) draws i with probability ∝ w_i.
        noise_BV = torch.empty_like(weights_BV).exponential_(generator=generator)
        tokens_B = (weights_BV / noise_BV).argmax(dim=-1)
    else:
        tokens_B = torch.multinomial(weights_BV, 1, generator=generator)[:, 0]
    # Truncation zeroed only other tokens; a sampled token is never far in the tail, so log(p) of the
    # softmax loses no precision here.
    if sampling.top_k > 0 or sampling.top_p < 1.0:
        # q(token) = its kept probability over the kept mass: one gather and one sum, before the
        # untruncated softmax is written over the same buffer.
        kept_B = weights_BV.gather(1, tokens_B[:, None])[:, 0]
        sampler_logprobs_B = kept_B.log() - weights_BV.sum(dim=-1).log()
        probs_BV = _untruncated(probs_BV, logits_BV, sampling)
        return tokens_B, probs_BV.gather(1, tokens_B[:, None])[:, 0].log(), sampler_logprobs_B
    logprobs_B = probs_BV.gather(1, tokens_B[:, None])[:, 0].log()
    return tokens_B, logprobs_B, logprobs_B


def _logsumexp_(x_BV: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim [B]; leaves exp(x - max) in ``x_BV`` (no [B, V] allocation)."""
    max_B1 = x_BV.amax(dim=-1, keepdim=True)
    x_BV.sub_(max_B1).exp_()
    return max_B1[:, 0] + x_BV.sum(dim=-1).log()


def _untruncated(probs_BV: torch.Tensor, logits_BV: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """Softmax(logits / T) again, when top-k/top-p truncation zeroed entries in place."""
    probs_BV.copy_(logits_BV).mul_(1.0 / sampling.temperature)
    _logsumexp_(probs_BV)
    return probs_BV.div_(probs_BV.sum(dim=-1, keepdim=True))


def _inverse_cdf(weights_BP: torch.Tensor, generator: torch.Generator | None,
                 uniform_B: torch.Tensor | None = None) -> torch.Tensor:
    """Index drawn with probability ∝ weights [B, P] (P a multiple of the block), one uniform per row.

    Two levels (block masses, then a cumulative sum inside the chosen block) keep the rounding
    error of each token's interval at the size of its block, not of the whole vocabulary, and cost
    one pass over the weights (torch.multinomial draws one exponential per vocabulary entry).
    """
    rows = weights_BP.shape[0]
    blocks_BNb = weights_BP.view(rows, -1, _BLOCK)  # [B, nb, block]
    # Block sums in fp32 (a pass over the weights), their running total in float64 (tiny).
    mass_Bn = blocks_BNb.sum(dim=-1).double()  # [B, nb]
    cdf_Bn = mass_Bn.cumsum(dim=-1)
    total_B1 = cdf_Bn[:, -1:]
    uniform_B1 = uniform_B[:, None] if uniform_B is not None else torch.rand(
        (rows, 1), generator=generator, dtype=torch.float64, device=weights_BP.device)
    # Strictly below the total, so the first cdf entry above it belongs to a block with mass > 0.
    target_B1 = torch.minimum(uniform_B1 * total_B1, total_B1.nextafter(torch.zeros_like(total_B1)))
    block_B1 = torch.searchsorted(cdf_Bn, target_B1, right=True)
    inside_B1 = target_B1 - (cdf_Bn.gather(1, block_B1) - mass_Bn.gather(1, block_B1))
    chosen_Bb = blocks_BNb[torch.arange(rows, device=weights_BP.device), block_B1[:, 0]]  # [B, block]
    inner_Bb = chosen_Bb.double().cumsum(dim=-1)
    inside_B1 = torch.minimum(inside_B1, inner_Bb[:, -1:].nextafter(torch.zeros_like(inside_B1)))
    offset_B1 = torch.searchsorted(inner_Bb, inside_B1.clamp(min=0), right=True)
    return (block_B1 * _BLOCK + offset_B1)[:, 0]


def _truncate(probs_BV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """``probs_BV`` with the tokens cut by top-k, then top-p, set to 0 IN PLACE (exact counts, ties
    included); the same tensor when nothing is cut."""
    vocab = probs_BV.shape[-1]
    if top_k <= 0 and top_p >= 1.0:
        return probs_BV
    k = min(top_k, vocab) if top_k > 0 else min(_TOP_P_CANDIDATES, vocab)
    values_BK, index_BK = probs_BV.topk(k, dim=-1)  # sorted, descending
    keep_BK = torch.ones_like(values_BK, dtype=torch.bool)
    if top_p < 1.0:
        if top_k > 0:
            values_BK = values_BK / values_BK.sum(dim=-1, keepdim=True)
        keep_BK = _nucleus(values_BK, top_p)
    keep_BV = torch.zeros_like(probs_BV, dtype=torch.bool).scatter_(1, index_BK, keep_BK)
    if top_p < 1.0 and top_k <= 0:
        # Rows whose nucleus is wider than the shortlist: sort just those rows over the vocabulary.
        wide = (values_BK.sum(dim=-1) < top_p).nonzero()[:, 0]
        if wide.numel():
            values_RV, index_RV = probs_BV[wide].sort(dim=-1, descending=True)
            keep_BV[wide] = torch.zeros_like(values_RV, dtype=torch.bool).scatter_(
                1, index_RV, _nucleus(values_RV, top_p))
    return probs_BV.masked_fill_(~keep_BV, 0.0)


def _nucleus(sorted_BK: torch.Tensor, top_p: float) -> torch.Tensor:
    """Holtzman et al. (arXiv:1904.09751): a token stays while the mass before it is below top_p."""
    return (sorted_BK.cumsum(dim=-1) - sorted_BK) < top_p


def prompt_occurrences(prompt_ids: list[list[int]]) -> list[int]:
    """Each prompt's occurrence among the equal prompts before it (0 for the first of them)."""
    counts: dict[tuple[int, ...], int] = {}
    occurrences = []
    for ids in prompt_ids:
        counts[tuple(ids)] = counts.get(tuple(ids), -1) + 1
        occurrences.append(counts[tuple(ids)])
    return occurrences


def sample_keys(seed: int, prompt_ids: list[list[int]], n: int,
                occurrences: tuple[int, ...] = ()) -> list[int]:
    """[P·n] 62-bit key of each sample: a hash of the seed, its prompt's token ids, the occurrence of
    that prompt among equal ones before it in the request (``occurrences`` when given: this call is a
    share of a larger request), and its sample index."""
    if occurrences and len(occurrences) != len(prompt_ids):
        raise ValueError(f"occurrences has {len(occurrences)} entries for {len(prompt_ids)} prompts")
    keys = []
    for ids, occurrence in zip(prompt_ids, occurrences or prompt_occurrences(prompt_ids)):
        digest = hashlib.blake2b(array("q", ids).tobytes(), digest_size=16).digest()
        for j in range(n):
            key = hashlib.blake2b(digest + f"{seed}|{occurrence}|{j}".encode(), digest_size=8).digest()
            keys.append(int.from_bytes(key, "little") >> 2)
    return keys


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32), in int64 without overflow (16-bit halves of c)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons' integer hash): a bijection of [0, 2^32) with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_uniforms(key_B: torch.Tensor, step_B: torch.Tensor) -> torch.Tensor:
    """[B] float64 uniforms in [0, 1) that depend only on (key, step): 53 bits from two hashed words."""
    low, high = key_B & _M32, (key_B >> 32) & _M32
    words = [_mix32(_mix32(_mix32(low ^ stream) ^ high) ^ step_B) for stream in (0x243F6A88, 0x85A308D3)]
    return ((words[0] >> 5) * 2**26 + (words[1] >> 6)).double() / 2.0**53
