"""The slot engine: a fixed pool of KV-cache slots that refill, so the batch stays full.

How one ``generate`` call runs (``engine_options.slots`` > 0, a Llama-layout model):
1. A KV cache of S slots x L positions is allocated once per call: L = longest prompt +
   max_new_tokens (whole 32-position chunks), S = ``slots`` capped by the rows and by what
   ``kv_budget_mb`` holds (a request whose single slot does not fit is a ConfigError naming the budget).
2. The N = P·n samples wait in a queue, prompt-major. A free slot takes the next one: its prompt is
   prefilled once (HF decoder, batched with the other prompts needed at that moment), and the prompt's
   KV and last logits are copied into each slot that takes one of its n samples.
3. Every step samples one token for every slot of the current bucket, then runs ``LeanDecoder``
   on the bucket with each slot writing at its own position and attending only to its own filled
   positions (a refilled slot never sees its previous occupant). A finished row (EOS, stop string,
   length) frees its slot, which the queue refills at once; when the queue is empty, live rows move
   down into the lowest slots so that the bucket shrinks. Buckets (1, 2, 4, 8, then multiples of 16,
   and S) are the only batch shapes a step ever sees, which is what CUDA graphs need. Attention runs
   over whole 32-position chunks up to the longest live slot (a CPU saving; a captured graph would
   attend over all L positions, masked).
4. Randomness is counter-based: the uniform of a sample's t-th token is a hash of (seed, its prompt's
   token ids, how many equal prompts came before it in the request, its sample index, t). The samples
   therefore do not depend on the slot count, on which slot a sample lands in, or on how the prompts
   are split between calls or rollout workers (a prompt's identity is its content, not its index).
   Two copies of one prompt in a request get different samples (their occurrence numbers differ);
   split across two workers they would both be occurrence 0. Same samples means same up to
   floating-point rounding: matmuls over different batch shapes may differ in the last bits, which
   flips a token only when its uniform lands within that rounding of a boundary of the CDF.

Tokens are sampled with ``sample_tokens`` (inverse CDF), so temperature, top-k, top-p and both
log-probs (pre-truncation, equal to a re-scoring; the sampler's own) are exactly the batch engine's.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from posttrain.errors import ConfigError
from posttrain.rollout.sampling import counter_uniforms, sample_keys, sample_tokens, sample_workspace
from posttrain.rollout.torch_engine import (
    LeanDecoder,
    StopChecker,
    _prefill,
    _Sampled,
    eos_ids,
    make_cache,
)
from posttrain.rollout.types import DecodeOptions, SamplingParams

_CHUNK = 32  # positions are allocated, and attended over, in whole chunks


def supports_slots(model: nn.Module, options: DecodeOptions) -> bool:
    """Slots need the lean decoder (per-slot write positions) and the one-uniform-per-row sampler."""
    return (options.slots > 0 and options.decoder == "lean" and options.sampler == "inverse_cdf"
            and LeanDecoder.supports(model, make_cache(model)))


def slot_bytes(model: nn.Module, positions: int, dtype: torch.dtype) -> int:
    """Bytes of keys and values one slot of ``positions`` positions holds, over all layers."""
    config = model.config.get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim
    return per_position * positions * torch.finfo(dtype).bits // 8


def plan_slots(requested: int, rows: int, per_slot: int, budget_mb: float, positions: int) -> int:
    """How many slots to allocate: ``requested``, capped by the rows and the budget."""
    fits = int(budget_mb * 2**20 // per_slot)
    if fits < 1:
        need = per_slot / 2**20
        raise ConfigError(
            f"engine_options.kv_budget_mb={budget_mb:g} holds no KV-cache slot: one slot of {positions} "
            f"positions (longest prompt + max_new_tokens, in {_CHUNK}-position chunks) needs {need:.3g} MB; "
            f"raise kv_budget_mb to at least {need:.3g}, or shorten the prompts or max_new_tokens")
    return max(1, min(requested, rows, fits))


def bucket_sizes(slots: int) -> list[int]:
    """The batch shapes a step may run at: 1, 2, 4, 8, then multiples of 16, and ``slots`` itself."""
    sizes = {s for s in (1, 2, 4, 8) if s < slots} | set(range(16, slots, 16)) | {slots}
    return sorted(sizes)


def bucket_for(rows: int, sizes: list[int]) -> int:
    """The smallest bucket holding ``rows`` rows."""
    return next(size for size in sizes if size >= rows)


class SlotRun:
    """One ``generate`` call through the slots (see the module docstring); ``run()`` returns the samples."""

    def __init__(self, model: nn.Module, tokenizer: Any, prompt_ids: list[list[int]], n: int,
                 sampling: SamplingParams, options: DecodeOptions) -> None:
        self.model, self.prompt_ids, self.n, self.sampling = model, prompt_ids, n, sampling
        self.pad_id = tokenizer.pad_token_id or 0
        param = next(model.parameters())
        self.device, dtype = param.device, param.dtype
        self.rows = len(prompt_ids) * n
        positions = -(-(max(len(p) for p in prompt_ids) + sampling.max_new_tokens) // _CHUNK) * _CHUNK
        per_slot = slot_bytes(model, positions, dtype)
        slots = plan_slots(options.slots, self.rows, per_slot, options.kv_budget_mb, positions)
        self.positions, self.buckets = positions, bucket_sizes(slots)
        config = model.config.get_text_config()
        kv_heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (slots, kv_heads, positions, head_dim)
        # Zeros, not garbage: masked positions get weight 0, and 0 * NaN would still poison the sum.
        layers = range(config.num_hidden_layers)
        self.keys = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in layers]
        self.values = [torch.zeros_like(k) for k in self.keys]
        vocab = model.get_output_embeddings().weight.shape[0]
        self.logits_SV = torch.zeros((slots, vocab), dtype=dtype, device=self.device)
        self.workspace = sample_workspace(slots, vocab, self.device)
        long = {"dtype": torch.long, "device": self.device}
        self.length_S = torch.zeros(slots, **long)  # positions filled = where the next token is written
        self.row_S = torch.full((slots,), -1, **long)  # the sample each slot holds, -1 = free
        self.gen_S = torch.zeros(slots, **long)  # tokens sampled so far by the slot's sample
        self.key_S = torch.zeros(slots, **long)
        seed = sampling.seed if sampling.seed is not None else int(torch.randint(2**62, (1,)).item())
        self.keys_N = torch.tensor(sample_keys(seed, prompt_ids, n, options.occurrences), **long)
        self.tokens_NT = torch.zeros((self.rows, sampling.max_new_tokens), **long)
        self.logprobs_NT = torch.zeros((self.rows, sampling.max_new_tokens), dtype=torch.float32,
                                       device=self.device)
        self.sampler_NT = torch.zeros_like(self.logprobs_NT)
        self.next_row = 0  # the first sample still waiting for a slot
        self.bank: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = {}
        self.decoder = LeanDecoder(model)
        self.eos_E = torch.tensor([] if options.ignore_eos else eos_ids(model, tokenizer), **long)
        self.checker = StopChecker(tokenizer, sampling.stop) if sampling.stop else None
        self.out = _Sampled(lengths=[sampling.max_new_tokens] * self.rows, reasons=["length"] * self.rows)

    @property
    def slots(self) -> int:
        return self.buckets[-1]

    def run(self) -> _Sampled:
        start = time.perf_counter()
        self.fill(list(range(self.slots)))
        while True:
            occupied = (self.row_S >= 0).nonzero()[:, 0].tolist()
            if not occupied:
                break
            self.step(bucket_for(occupied[-1] + 1, self.buckets))
        self.out.tokens, self.out.logprobs = self.tokens_NT.cpu(), self.logprobs_NT.cpu()
        self.out.sampler_logprobs = self.sampler_NT.cpu()
        self.out.decode_s = time.perf_counter() - start - self.out.prefill_s
        return self.out

    def step(self, bucket: int) -> None:
        """Sample a token for every slot of the bucket, finish rows, run the model, refill, shrink."""
        rows_B, gen_B = self.row_S[:bucket], self.gen_S[:bucket]
        uniform_B = counter_uniforms(self.key_S[:bucket], gen_B)
        tokens_B, logprobs_B, sampler_B = sample_tokens(self.logits_SV[:bucket], self.sampling, None,
                                                        "inverse_cdf", self.workspace, uniform_B)
        live_B = rows_B >= 0
        self.tokens_NT[rows_B[live_B], gen_B[live_B]] = tokens_B[live_B]
        self.logprobs_NT[rows_B[live_B], gen_B[live_B]] = logprobs_B[live_B]
        self.sampler_NT[rows_B[live_B], gen_B[live_B]] = sampler_B[live_B]
        gen_B += live_B
        stopped_B = live_B & torch.isin(tokens_B, self.eos_E)
        if self.checker is not None:
            stopped_B |= self._stop_hits(live_B & ~stopped_B, rows_B, gen_B)
        done_B = stopped_B | (live_B & (gen_B >= self.sampling.max_new_tokens))
        done = done_B.nonzero()[:, 0]
        for row, gen, stopped in zip(rows_B[done].tolist(), gen_B[done].tolist(), stopped_B[done].tolist()):
            self.out.lengths[row], self.out.reasons[row] = gen, "stop" if stopped else "length"
        self.row_S[done], self.length_S[done] = -1, 0
        self.out.steps += 1
        if bool((self.row_S[:bucket] >= 0).any()):
            self._forward(tokens_B, bucket)
        if self.next_row < self.rows:
            self.fill((self.row_S < 0).nonzero()[:, 0].tolist())
        else:
            self._shrink()

    def _forward(self, tokens_B: torch.Tensor, bucket: int) -> None:
        """Logits of every slot's next token; each slot writes at its own position, sees only its own."""
        length_B = self.length_S[:bucket]
        # Attend over whole chunks up to the longest live slot (a sliced view: no copy is made).
        width = min(self.positions, -(-(int(length_B.max()) + 1) // _CHUNK) * _CHUNK)
        visible_BW = torch.arange(width, device=self.device)[None] <= length_B[:, None]
        kv = [(k[:bucket, :, :width], v[:bucket, :, :width]) for k, v in zip(self.keys, self.values)]
        write = (torch.arange(bucket, device=self.device), slice(None), length_B)
        self.logits_SV[:bucket] = self.decoder.forward(tokens_B, length_B, visible_BW, kv, write)
        length_B += 1

    def _stop_hits(self, check_B: torch.Tensor, rows_B: torch.Tensor, gen_B: torch.Tensor) -> torch.Tensor:
        """[B] bool: rows (among ``check_B``) whose last tokens now decode to text holding a stop string."""
        assert self.checker is not None
        hits_B = torch.zeros_like(check_B)
        index = check_B.nonzero()[:, 0]
        if index.numel() == 0:
            return hits_B
        window = self.checker.window
        tails = [self.tokens_NT[row, max(0, gen - window): gen].tolist()
                 for row, gen in zip(rows_B[index].tolist(), gen_B[index].tolist())]
        hits_B[index] = torch.tensor(self.checker.hits(tails), dtype=torch.bool, device=self.device)
        return hits_B

    def fill(self, free: list[int]) -> None:
        """Put the next waiting samples into the ``free`` slots (their prompts prefilled if need be)."""
        take = min(len(free), self.rows - self.next_row)
        if take == 0:
            return
        free, first = free[:take], self.next_row
        self.next_row += take
        samples = list(range(first, first + take))
        needed = sorted({row // self.n for row in samples} - set(self.bank))
        if needed:
            self._prefill(needed)
        for prompt in sorted({row // self.n for row in samples}):
            mine = [i for i, row in enumerate(samples) if row // self.n == prompt]
            slots_M = torch.tensor([free[i] for i in mine], device=self.device)
            keys, values, logits_V = self.bank[prompt]
            length = len(self.prompt_ids[prompt])
            for cache_k, cache_v, k, v in zip(self.keys, self.values, keys, values):
                cache_k[slots_M, :, :length] = k
                cache_v[slots_M, :, :length] = v
            self.logits_SV[slots_M] = logits_V
            self.length_S[slots_M] = length
            if samples[mine[-1]] % self.n == self.n - 1:
                del self.bank[prompt]  # its last sample has a slot
        slots_M = torch.tensor(free, device=self.device)
        rows_M = torch.tensor(samples, device=self.device)
        self.row_S[slots_M], self.gen_S[slots_M], self.key_S[slots_M] = rows_M, 0, self.keys_N[rows_M]

    def _prefill(self, prompts: list[int]) -> None:
        """One forward over these prompts; their KV [Hkv, len, hd] per layer and last logits go to
        the bank."""
        start = time.perf_counter()
        ids = [self.prompt_ids[p] for p in prompts]
        width = max(len(p) for p in ids)
        cache, logits_PV, _, _ = _prefill(self.model, ids, width, self.pad_id, self.device)
        for i, prompt in enumerate(prompts):
            real = slice(width - len(ids[i]), width)  # left-padded: the prompt is the last len tokens
            self.bank[prompt] = ([layer.keys[i, :, real] for layer in cache.layers],
                                 [layer.values[i, :, real] for layer in cache.layers], logits_PV[i])
        self.out.prefill_s += time.perf_counter() - start

    def _shrink(self) -> None:
        """Queue empty: move live rows above the smallest bucket that holds them into free slots below it."""
        live = (self.row_S >= 0).nonzero()[:, 0].tolist()
        if not live:
            return
        bucket = bucket_for(len(live), self.buckets)
        movers = [s for s in live if s >= bucket]
        if not movers:
            return
        free = [s for s in range(bucket) if s not in set(live)][: len(movers)]
        src, dst = torch.tensor(movers, device=self.device), torch.tensor(free, device=self.device)
        width = int(self.length_S[src].max())
        for cache in (*self.keys, *self.values):
            cache[dst, :, :width] = cache[src, :, :width]
        for state in (self.length_S, self.row_S, self.gen_S, self.key_S, self.logits_SV):
            state[dst] = state[src]
        self.row_S[src], self.length_S[src] = -1, 0


def run_slots(model: nn.Module, tokenizer: Any, prompt_ids: list[list[int]], n: int, sampling: SamplingParams,
              options: DecodeOptions) -> _Sampled:
    """Sample through the slots; the same ``_Sampled`` as the batch engine's decode loop."""
    return SlotRun(model, tokenizer, prompt_ids, n, sampling, options).run()
