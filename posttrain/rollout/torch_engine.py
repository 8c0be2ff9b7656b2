"""The torch rollout engine: batched sampling with a KV cache, on whatever device the model is on.

How one ``generate`` call runs in the batch engine (``slots=0``; by default, Llama-layout models run
through the refilling slots of ``slots.py``, which reuse its prefill, decoder and sampler):
1. Prefill each DISTINCT prompt once through the model's own HF decoder (left-padded batch,
   attention mask, position ids counted from each prompt's first real token); LM head on the
   last position only.
2. Repeat each prompt's KV-cache rows for its n samples and sample the first tokens.
3. Decode all rows together one token per step. The KV cache is a ``SlabLayer`` per layer, written
   in place and grown 32 slots at a time (HF's dynamic cache re-concatenates everything at every
   step). Llama-layout models (Llama, Mistral, Qwen2) decode through ``LeanDecoder``, any other HF
   decoder through its own forward (``decoder="hf"``). Finished rows leave the batch.
4. Sampling: temperature, top-k, then top-p; one uniform per row from a ``torch.Generator`` seeded
   per call (per sample in slots), inverted through a two-level CDF (``sampling.py``). Each token
   keeps two log-probs: the untruncated one (= a re-scoring) and the sampler's own (after top-k/top-p).

Weights: ``dtype="float32"`` (the default, as the recipes' ``sampling.dtype``) samples the training
model itself, so the log-probs equal a re-scoring pass. ``dtype="bfloat16"`` samples an engine-owned
bf16 copy of an fp32 model (faster; log-probs differ from an fp32 re-scoring, see benchmarks/rollout.py),
or a bf16 model itself. The copy is refreshed whenever ``weights.weights_signature`` moves (every
optimizer step, fused ones included, ``load_state_dict``, in-place writes); ``sync_weights(model)``
forces it after edits that signature cannot see (through ``.data``; see ``weights.py``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer

from posttrain.errors import ConfigError
from posttrain.rollout.sampling import counter_uniforms, sample_keys, sample_tokens, sample_workspace
from posttrain.rollout.types import DecodeOptions, Rollouts, SamplingParams
from posttrain.rollout.weights import weights_signature

__all__ = ["LeanDecoder", "SlabLayer", "StopChecker", "TorchEngine", "eos_ids", "make_cache", "sample_tokens",
           "sample_workspace"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SlabLayer(DynamicLayer):
    """A KV-cache layer written in place into a slab that grows by ``chunk`` positions at a time.

    HF's ``DynamicLayer`` concatenates the whole cache at every step (quadratic copying); this one
    writes the new keys/values into the slab and copies only when a chunk fills up. The lean
    decoder attends over the whole slab, so a small chunk also bounds the masked slots it pays for.
    """

    def __init__(self, chunk: int = 32) -> None:
        super().__init__()
        self.chunk = chunk
        self.capacity = 0
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        self.is_initialized = True

    def reserve(self, slots: int) -> None:
        """Make room for ``slots`` positions (rounded up to whole chunks)."""
        if slots <= self.capacity:
            return
        self.capacity = -(-slots // self.chunk) * self.chunk
        keys, values = self.keys, self.values
        # Zeros, not garbage: the lean decoder attends over whole slabs (masked slots get weight 0,
        # and 0 * NaN would still poison the sum).
        self.keys = keys.new_zeros((*keys.shape[:2], self.capacity, keys.shape[-1]))
        self.values = values.new_zeros((*values.shape[:2], self.capacity, values.shape[-1]))
        self.keys[:, :, : self.length] = keys[:, :, : self.length]
        self.values[:, :, : self.length] = values[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.reserve(self.length + key_states.shape[-2])
        start, end = self.length, self.length + key_states.shape[-2]
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys = self.keys.index_select(0, indices)
            self.values = self.values.index_select(0, indices)


def make_cache(model: nn.Module, chunk: int = 32) -> DynamicCache:
    """The model's own dynamic cache with every full-attention layer replaced by a ``SlabLayer``."""
    cache = DynamicCache(config=model.config)
    if not cache.layers:
        cache.layer_class_to_replicate = None
        cache.layers = [SlabLayer(chunk) for _ in range(model.config.get_text_config().num_hidden_layers)]
    else:
        cache.layers = [SlabLayer(chunk) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class LeanDecoder:
    """One decode step for every row of a Llama-layout model, written with plain tensor ops.

    Same math as the HF forward for one new token (RMSNorm in fp32, rotary embeddings from the
    model's own ``rotary_emb``, SiLU-gated MLP), minus its per-step machinery: no mask building,
    and grouped-query attention done by folding each KV head's query heads into one small matmul
    instead of SDPA's GQA path (measured ~6x slower in bf16 here). The keys/values go into the
    ``SlabLayer`` slabs that the HF prefill filled, and attention runs over the WHOLE slab with the
    unfilled slots masked: a sliced slab is not contiguous, and batched matmuls copied it at every
    layer and step (a third of the step time at batch 64, measured), more than the masked slots cost.
    """

    MODEL_TYPES = ("llama", "mistral", "qwen2")

    def __init__(self, model: nn.Module) -> None:
        self.body = model.model
        self.lm_head = model.lm_head
        first = self.body.layers[0].self_attn
        self.head_dim = first.head_dim
        self.group = model.config.num_attention_heads // model.config.num_key_value_heads
        self._logits: torch.Tensor | None = None  # reused LM-head output (see sample_workspace)

    @classmethod
    def supports(cls, model: nn.Module, cache: DynamicCache) -> bool:
        config = model.config
        if _is_peft(model) or getattr(config, "model_type", None) not in cls.MODEL_TYPES:
            return False  # a LoRA policy in fp32 samples through its own forward
        if config.hidden_act != "silu":
            return False
        if not all(isinstance(layer, SlabLayer) for layer in cache.layers):
            return False  # sliding-window layers keep their own cache
        layers = model.model.layers
        plain = all(type(getattr(layer.self_attn, name, None)) is nn.Linear for layer in layers
                    for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
        plain = plain and all(type(getattr(layer.mlp, name, None)) is nn.Linear for layer in layers
                              for name in ("gate_proj", "up_proj", "down_proj"))
        return plain and not hasattr(layers[0].self_attn, "q_norm")

    @staticmethod
    def _norm(x_BD: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        x32 = x_BD.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * x32.to(x_BD.dtype)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def step(self, tokens_B: torch.Tensor, pos_B: torch.Tensor, attn_BC: torch.Tensor, cache: DynamicCache,
             width: int) -> torch.Tensor:
        """Logits [B, V] of the token after ``tokens_B``, which sit at cache slot ``width``."""
        for slab in cache.layers:
            slab.reserve(width + 1)
        slots = cache.layers[0].capacity
        visible_BC = attn_BC[:, :slots].bool()
        visible_BC[:, width + 1:] = False
        kv = [(slab.keys, slab.values) for slab in cache.layers]
        logits_BV = self.forward(tokens_B, pos_B, visible_BC, kv, (slice(None), slice(None), width))
        for slab in cache.layers:
            slab.length = width + 1
        return logits_BV

    def forward(self, tokens_B: torch.Tensor, pos_B: torch.Tensor, visible_BC: torch.Tensor,
                kv: list[tuple[torch.Tensor, torch.Tensor]], write: tuple[Any, ...]) -> torch.Tensor:
        """Logits [B, V]: each layer writes the new key/value at ``keys[write]`` and attends over the
        ``visible_BC`` slots of its [B, Hkv, C, hd] keys and values."""
        x_BD = self.body.embed_tokens(tokens_B)
        rows, dim = x_BD.shape[0], self.head_dim
        cos, sin = self.body.rotary_emb(x_BD[:, None], pos_B[:, None])  # [B, 1, hd]
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, 1, hd]
        bias_B11C = torch.zeros(visible_BC.shape, dtype=x_BD.dtype, device=x_BD.device)
        bias_B11C = bias_B11C.masked_fill_(~visible_BC, float("-inf"))[:, None, None]
        for layer, (keys, values) in zip(self.body.layers, kv):
            attn = layer.self_attn
            h_BD = self._norm(x_BD, layer.input_layernorm)
            kv_heads = keys.shape[1]
            q = self._rotate(attn.q_proj(h_BD).view(rows, kv_heads, self.group, dim), cos, sin)
            k = self._rotate(attn.k_proj(h_BD).view(rows, kv_heads, 1, dim), cos, sin)
            keys[write] = k[:, :, 0]
            values[write] = attn.v_proj(h_BD).view(rows, kv_heads, dim)
            scores = (q @ keys.transpose(-1, -2)) * attn.scaling + bias_B11C  # [B, Hkv, G, C]
            mixed = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ values  # [B, Hkv, G, hd]
            x_BD = x_BD + attn.o_proj(mixed.reshape(rows, -1))
            h_BD = self._norm(x_BD, layer.post_attention_layernorm)
            mlp = layer.mlp
            x_BD = x_BD + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(h_BD)) * mlp.up_proj(h_BD))
        h_BD = self._norm(x_BD, self.body.norm)
        if self._logits is None or self._logits.shape[0] < rows or self._logits.dtype != h_BD.dtype:
            self._logits = h_BD.new_empty((rows, self.lm_head.weight.shape[0]))
        logits_BV = torch.matmul(h_BD, self.lm_head.weight.t(), out=self._logits[:rows])
        return logits_BV if self.lm_head.bias is None else logits_BV.add_(self.lm_head.bias)


class StopChecker:
    """Finds rows whose decoded tail now contains a stop string (decoding only the last few tokens)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        # A stop string of L characters spans at most L tokens; a few more absorb partial UTF-8 bytes.
        self.window = max((len(s) for s in self.stops), default=0) + 3

    def hits(self, tails: list[list[int]]) -> list[bool]:
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False)
        return [any(s in text for s in self.stops) for text in texts]

    def cut(self, text: str) -> tuple[str, bool]:
        """The text up to and including the earliest stop string, and whether one was found."""
        ends = [text.find(s) + len(s) for s in self.stops if s in text]
        return (text[: min(ends)], True) if ends else (text, False)


def eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus every EOS id of the model's generation config."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    ids.update([extra] if isinstance(extra, int) else list(extra or []))
    return sorted(ids)


class TorchEngine:
    """Batched KV-cache sampler for a Hugging Face causal LM (see the module docstring).

    One engine per (model, dtype): it owns the reduced-precision weight copy, if any.
    """

    def __init__(self, dtype: str = "float32") -> None:
        if dtype not in _DTYPES:
            raise ConfigError(f"engine_options.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.dtype = _DTYPES[dtype]
        self._copy: nn.Module | None = None
        self._signature: tuple[int, int] | None = None

    def _samples_model_itself(self, model: nn.Module) -> bool:
        """True when a reduced copy would equal ``model``: fp32 sampling, or a bf16 model already."""
        if self.dtype == torch.float32:
            return True
        return not _is_peft(model) and all(p.dtype == self.dtype for p in model.parameters())

    def sync_weights(self, model: nn.Module) -> None:
        """Refresh the engine's reduced-precision copy of ``model`` (none when ``model`` itself samples)."""
        if self._samples_model_itself(model):
            self._copy = None
            return
        if self._copy is None or _is_peft(model):
            # A LoRA policy is merged into the copy; rebuilding is simpler than re-merging in place.
            self._copy = _reduced_copy(model, self.dtype)
        else:
            with torch.no_grad():
                for target, param in zip(self._copy.parameters(), model.parameters()):
                    target.copy_(param)
        self._signature = weights_signature(model)

    def sampling_model(self, model: nn.Module) -> nn.Module:
        """The module that samples: ``model`` itself, or the reduced copy refreshed if the weights moved."""
        if self._samples_model_itself(model):
            self._copy = None
            return model
        if self._copy is None or self._signature != weights_signature(model):
            self.sync_weights(model)
        assert self._copy is not None
        return self._copy

    def generate(self, model: nn.Module, tokenizer: Any, prompt_ids: list[list[int]], n: int,
                 sampling: SamplingParams, options: DecodeOptions | None = None) -> Rollouts:
        """Sample n completions per tokenized prompt (prompts already validated for length)."""
        start = time.perf_counter()
        options = options or DecodeOptions()
        sampler_model = self.sampling_model(model)
        was_training = sampler_model.training
        sampler_model.eval()
        try:
            with torch.inference_mode():
                rows = self._run(sampler_model, tokenizer, prompt_ids, n, sampling, options)
        finally:
            sampler_model.train(was_training)
        return self._collect(tokenizer, prompt_ids, n, sampling, rows, time.perf_counter() - start)

    def _run(self, model: nn.Module, tokenizer: Any, prompt_ids: list[list[int]], n: int,
             sampling: SamplingParams, options: DecodeOptions) -> _Sampled:
        from posttrain.rollout.slots import run_slots, supports_slots

        if supports_slots(model, options):
            return run_slots(model, tokenizer, prompt_ids, n, sampling, options)
        device = next(model.parameters()).device
        seed = sampling.seed if sampling.seed is not None else int(torch.randint(2**62, (1,)).item())
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        # Mask width: every slot a row can reach, in whole slab chunks.
        capacity = -(-(max(len(p) for p in prompt_ids) + sampling.max_new_tokens) // 32) * 32
        t0 = time.perf_counter()
        cache, logits_PV, attn_PC, next_pos_P = _prefill(model, prompt_ids, capacity,
                                                         tokenizer.pad_token_id or 0, device)
        cache.batch_repeat_interleave(n)
        state = _DecodeState(
            logits=logits_PV.repeat_interleave(n, dim=0),  # [N, V]
            attn=attn_PC.repeat_interleave(n, dim=0),  # [N, C]
            pos=next_pos_P.repeat_interleave(n, dim=0),  # [N]
            width=max(len(p) for p in prompt_ids),
        )
        prefill_s = time.perf_counter() - t0
        eos = [] if options.ignore_eos else eos_ids(model, tokenizer)
        checker = StopChecker(tokenizer, sampling.stop) if sampling.stop else None
        keys_N = torch.tensor(sample_keys(seed, prompt_ids, n, options.occurrences), dtype=torch.long,
                              device=device)
        sampled = self._decode(model, cache, state, sampling, options, (generator, keys_N), eos, checker)
        sampled.prefill_s = prefill_s
        sampled.decode_s = time.perf_counter() - t0 - prefill_s
        return sampled

    def _decode(self, model: nn.Module, cache: DynamicCache, state: _DecodeState, sampling: SamplingParams,
                options: DecodeOptions, randomness: tuple[torch.Generator, torch.Tensor], eos: list[int],
                checker: StopChecker | None) -> _Sampled:
        """The decode loop: sample, record, finish rows, drop finished rows, step the model. The
        inverse-CDF sampler takes each row's uniform from its sample's key (``randomness[1]``, [N]), so a
        sample does not depend on the rows beside it; the others draw from the generator."""
        generator, keys_N = randomness
        n_rows, max_new = state.logits.shape[0], sampling.max_new_tokens
        device = state.logits.device
        rows_B = torch.arange(n_rows, device=device)  # original row of each batch row
        live_B = torch.ones(n_rows, dtype=torch.bool, device=device)
        tokens_NT = torch.zeros((n_rows, max_new), dtype=torch.long, device=device)
        workspace = sample_workspace(n_rows, state.logits.shape[-1], device)
        logprobs_NT = torch.zeros((n_rows, max_new), dtype=torch.float32, device=device)
        sampler_NT = torch.zeros_like(logprobs_NT)
        eos_E = torch.tensor(eos, dtype=torch.long, device=device)
        out = _Sampled(lengths=[max_new] * n_rows, reasons=["length"] * n_rows)
        use_lean = options.decoder == "lean" and LeanDecoder.supports(model, cache)
        lean = LeanDecoder(model) if use_lean else None
        for step in range(max_new):
            uniform_B = (counter_uniforms(keys_N[rows_B], torch.full_like(rows_B, step))
                         if options.sampler == "inverse_cdf" else None)
            tokens_B, logprobs_B, sampler_B = sample_tokens(state.logits, sampling, generator,
                                                            options.sampler, workspace, uniform_B)
            tokens_NT[rows_B, step] = tokens_B
            logprobs_NT[rows_B, step], sampler_NT[rows_B, step] = logprobs_B, sampler_B
            done_B = torch.isin(tokens_B, eos_E) & live_B
            if checker is not None:
                done_B |= _stop_hits(checker, tokens_NT, rows_B, live_B & ~done_B, step)
            for row in rows_B[done_B].tolist():
                out.lengths[row], out.reasons[row] = step + 1, "stop"
            live_B &= ~done_B
            out.steps = step + 1
            n_live = int(live_B.sum())
            if n_live == 0 or step == max_new - 1:
                break
            n_dead = live_B.shape[0] - n_live
            if n_dead > 0 and n_dead > options.compact_min * live_B.shape[0]:
                keep_B = live_B.nonzero()[:, 0]
                cache.batch_select_indices(keep_B)
                rows_B, live_B, tokens_B = rows_B[keep_B], live_B[keep_B], tokens_B[keep_B]
                state.attn, state.pos = state.attn[keep_B], state.pos[keep_B]
            state.attn[:, state.width] = 1
            if lean is not None:
                state.logits = lean.step(tokens_B, state.pos, state.attn, cache, state.width)
            else:
                state.logits = model(input_ids=tokens_B[:, None], position_ids=state.pos[:, None],
                                     attention_mask=state.attn[:, : state.width + 1], cache=cache,
                                     use_cache=True, logits_to_keep=1).logits[:, -1]
            state.width += 1
            state.pos = state.pos + 1
        out.tokens = tokens_NT.cpu()
        out.logprobs, out.sampler_logprobs = logprobs_NT.cpu(), sampler_NT.cpu()
        return out

    def _collect(self, tokenizer: Any, prompt_ids: list[list[int]], n: int, sampling: SamplingParams,
                 sampled: _Sampled, seconds: float) -> Rollouts:
        completions = [sampled.tokens[i, :length].tolist() for i, length in enumerate(sampled.lengths)]
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True,
                                       clean_up_tokenization_spaces=False)
        reasons = list(sampled.reasons)
        if sampling.stop:
            checker = StopChecker(tokenizer, sampling.stop)
            for i, text in enumerate(texts):
                texts[i], found = checker.cut(text)
                reasons[i] = "stop" if found else reasons[i]
        n_completion = sum(sampled.lengths)
        timing = {
            "prompt_tokens": float(sum(len(p) for p in prompt_ids)),
            "completion_tokens": float(n_completion),
            "seconds": seconds,
            "tokens_per_s": n_completion / seconds if seconds > 0 else 0.0,
            "prefill_s": sampled.prefill_s,
            "decode_s": sampled.decode_s,
            "steps": float(sampled.steps),
        }
        return Rollouts(
            prompt_ids=[list(prompt_ids[i // n]) for i in range(len(completions))],
            completion_ids=completions,
            texts=texts,
            logprobs=[sampled.logprobs[i, :length].clone() for i, length in enumerate(sampled.lengths)],
            sampler_logprobs=[sampled.sampler_logprobs[i, :n].clone() for i, n in enumerate(sampled.lengths)],
            finish_reasons=reasons,
            prompt_index=[i // n for i in range(len(completions))],
            timing=timing,
        )


@dataclass
class _DecodeState:
    logits: torch.Tensor  # [B, V] logits of the next token of each batch row
    attn: torch.Tensor  # [B, C] attention mask over the cache slots (C = capacity)
    pos: torch.Tensor  # [B] position id of the next token
    width: int  # cache slots filled so far


@dataclass
class _Sampled:
    lengths: list[int]  # [N] tokens kept per row
    reasons: list[str]  # [N]
    tokens: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [N, max_new]
    logprobs: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [N, max_new]
    sampler_logprobs: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [N, max_new]
    steps: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


def _stop_hits(checker: StopChecker, tokens_NT: torch.Tensor, rows_B: torch.Tensor, check_B: torch.Tensor,
               step: int) -> torch.Tensor:
    """[B] bool: rows (among ``check_B``) whose last tokens now decode to text holding a stop string."""
    hits_B = torch.zeros_like(check_B)
    index = check_B.nonzero()[:, 0]
    if index.numel() == 0:
        return hits_B
    tails = tokens_NT[rows_B[index], max(0, step + 1 - checker.window): step + 1].tolist()
    found = torch.tensor(checker.hits(tails), dtype=torch.bool, device=check_B.device)
    hits_B[index] = found
    return hits_B


def _prefill(model: nn.Module, prompt_ids: list[list[int]], capacity: int, pad_id: int, device: torch.device
             ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward over the left-padded distinct prompts.

    Returns the cache, last-position logits [P, V], the attention mask over cache slots [P, C] and
    the position id of each prompt's first completion token [P].
    """
    width = max(len(p) for p in prompt_ids)
    ids_PL = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long, device=device)
    attn_PC = torch.zeros((len(prompt_ids), capacity), dtype=torch.long, device=device)
    for i, prompt in enumerate(prompt_ids):
        ids_PL[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long, device=device)
        attn_PC[i, width - len(prompt): width] = 1
    mask_PL = attn_PC[:, :width]
    # Positions count real tokens only, so a left-padded prompt sees the same positions as alone.
    position_PL = (mask_PL.cumsum(dim=-1) - 1).clamp(min=0)
    cache = make_cache(model)
    # The decoder, then the LM head on the last position as a 2-D matmul: HF's logits_to_keep slice is
    # a strided 3-D tensor, which the matmul turned into a batched one copying the head per prompt.
    hidden_PLD = model.get_decoder()(input_ids=ids_PL, attention_mask=mask_PL, position_ids=position_PL,
                                     cache=cache, use_cache=True).last_hidden_state
    logits_PV = model.get_output_embeddings()(hidden_PLD[:, -1])
    return cache, logits_PV, attn_PC, mask_PL.sum(dim=-1)


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def _reduced_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of ``model`` in ``dtype`` (a LoRA policy merged into its base weights)."""
    clone = copy.deepcopy(model)
    if _is_peft(clone):
        clone = clone.merge_and_unload()
    clone = clone.to(dtype).eval()
    for param in clone.parameters():
        param.requires_grad_(False)
    return clone
