"""Rollouts: sample n completions per prompt with per-token log-probs, the step every RL recipe runs.

``generate(model, tokenizer, prompts, n, sampling)`` returns ``Rollouts`` (see ``types.py``);
``backend="torch"`` (default, any device) or ``"vllm"`` (GPU, optional extra). Engines are kept per
model between calls, so a bf16 weight copy or a vLLM server is built once, and they follow the
model's weights by themselves: every optimizer step (fused AdamW included, through a global step
hook), ``load_state_dict`` and in-place write moves the version they read (``weights.py``).
``sync_weights(model)`` is the explicit refresh for edits they cannot see (through ``param.data``,
an optimizer that is not a ``torch.optim.Optimizer``).

Prompts: a ``str`` is raw text (tokenized as is, no chat template), a list of ``{"role", "content"}``
messages goes through the tokenizer's chat template with the generation prompt, a list of ints is
already tokenized.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from posttrain.errors import ConfigError, DataError
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.rollout.types import DecodeOptions, Rollouts, SamplingParams

__all__ = ["DecodeOptions", "Rollouts", "SamplingParams", "TorchEngine", "checked_prompt_ids",
           "encode_prompts", "generate", "sync_weights"]

_BACKENDS = ("torch", "vllm")
# model -> {(backend, frozen options): engine}; entries vanish with the model.
_ENGINES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def encode_prompts(tokenizer: Any, prompts: list[str | list[dict[str, str]] | list[int]]) -> list[list[int]]:
    """Token ids of each prompt (see the module docstring for the three accepted forms)."""
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        elif isinstance(prompt, list | tuple) and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        elif isinstance(prompt, list | tuple) and all(isinstance(m, dict) for m in prompt):
            ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
        else:
            raise DataError(f"prompt {i} is neither a string, a list of messages nor a list of token ids",
                            field="prompt", expected="str | list[dict] | list[int]", got=prompt)
        if len(ids) == 0:
            raise DataError(f"prompt {i} is empty (0 tokens): there is nothing to continue from",
                            field="prompt")
        encoded.append([int(t) for t in ids])
    return encoded


def check_lengths(prompt_ids: list[list[int]], max_new_tokens: int, max_positions: int | None,
                  max_prompt_tokens: int | None) -> None:
    """Raise DataError naming the first prompt that does not fit, before anything is generated."""
    for i, ids in enumerate(prompt_ids):
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise DataError(
                f"prompt {i} has {len(ids)} tokens, more than max_prompt_tokens={max_prompt_tokens}",
                field="prompt")
        if max_positions is not None and len(ids) + max_new_tokens > max_positions:
            raise DataError(
                f"prompt {i} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
                f"model's max_position_embeddings={max_positions} (shorten the prompt or max_new_tokens)",
                field="prompt")


def checked_prompt_ids(model: nn.Module, tokenizer: Any, prompts: list[Any], n: int, sampling: SamplingParams,
                       max_prompt_tokens: int | None) -> list[list[int]]:
    """The token ids of ``prompts``, after the checks ``generate`` makes before sampling anything (n,
    no prompts, each prompt's length); rollout workers are sent these ids."""
    if n < 1:
        raise ConfigError(f"n (samples per prompt) must be >= 1, got {n}")
    if not prompts:
        raise DataError("no prompts to generate from", field="prompts")
    prompt_ids = encode_prompts(tokenizer, prompts)
    max_positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    check_lengths(prompt_ids, sampling.max_new_tokens, max_positions, max_prompt_tokens)
    return prompt_ids


def _engine(model: nn.Module, tokenizer: Any, backend: str, options: dict[str, Any]) -> Any:
    # A torch engine is one weight copy per dtype; a vLLM engine is one server per setting.
    key = ("torch", options.get("dtype", "float32")) if backend == "torch" else (
        backend, tuple(sorted(options.items())))
    engines = _ENGINES.setdefault(model, {})
    if key not in engines:
        if backend == "torch":
            engines[key] = TorchEngine(key[1])
        else:
            from posttrain.rollout.vllm_engine import VLLMEngine

            engines[key] = VLLMEngine(model, tokenizer, **options)
    return engines[key]


def _torch_options(options: dict[str, Any]) -> DecodeOptions:
    per_call = {k: v for k, v in options.items() if k != "dtype"}
    known = set(DecodeOptions.__dataclass_fields__)
    unknown = sorted(set(per_call) - known)
    if unknown:
        raise ConfigError(f"unknown engine_options {unknown} for backend 'torch'; "
                          f"known: {sorted(known | {'dtype'})}")
    return DecodeOptions(**per_call)


def generate(model: nn.Module, tokenizer: Any, prompts: list[str | list[dict[str, str]] | list[int]], n: int,
             sampling: SamplingParams, *, backend: str = "torch", max_prompt_tokens: int | None = None,
             engine_options: dict[str, Any] | None = None) -> Rollouts:
    """Sample ``n`` completions for each prompt; rows are ordered prompt-major (row = p·n + j).

    engine_options (torch): ``dtype`` "float32" (default, like the recipes' ``sampling.dtype``: the
    model itself samples, log-probs equal a re-scoring) | "bfloat16" (an engine-owned bf16 copy of an
    fp32 model, faster, log-probs within ~0.4 nats; it follows every optimizer step by itself), plus
    the per-call ``DecodeOptions``: ``ignore_eos``, ``compact_min``, ``sampler``, ``decoder``,
    ``slots``, ``kv_budget_mb``. (vllm): see ``vllm_engine.VLLMEngine``.
    """
    if backend not in _BACKENDS:
        raise ConfigError(f"unknown rollout backend {backend!r}; choose one of {list(_BACKENDS)}")
    prompt_ids = checked_prompt_ids(model, tokenizer, prompts, n, sampling, max_prompt_tokens)
    options = dict(engine_options or {})
    if backend == "torch":
        decode_options = _torch_options(options)
        engine = _engine(model, tokenizer, backend, options)
        return engine.generate(model, tokenizer, prompt_ids, n, sampling, decode_options)
    return _engine(model, tokenizer, backend, options).generate(model, tokenizer, prompt_ids, n, sampling)


def sync_weights(model: nn.Module) -> None:
    """Push ``model``'s current weights into every engine built for it. Engines follow optimizer
    steps and ``load_state_dict`` by themselves; call this after edits they cannot see (``p.data``
    writes, an optimizer that does not subclass ``torch.optim.Optimizer``)."""
    for engine in _ENGINES.get(model, {}).values():
        engine.sync_weights(model)
