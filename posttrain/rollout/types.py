"""The data that goes into and comes out of a rollout engine: sampling settings, engine options,
sampled rollouts.

Both backends (torch, vLLM) return the same ``Rollouts``; recipes turn them into a padded training
batch with ``Rollouts.to_batch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from posttrain.errors import ConfigError

SAMPLERS = ("inverse_cdf", "multinomial", "exponential")


@dataclass
class SamplingParams:
    """How to sample completions.

    Two log-probs come back with each sampled token: ``Rollouts.logprobs``, ``log_softmax(logits /
    temperature)`` (temperature 1 when greedy) *before* top-k/top-p truncation, so they equal a
    re-scoring pass at the same temperature; and ``Rollouts.sampler_logprobs``, the log-prob under the
    distribution actually sampled from (after temperature, top-k and top-p, renormalised).
    """

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``; 1 = off."""
    top_k: int = 0
    """Keep only the ``top_k`` most likely tokens; 0 = off."""
    max_new_tokens: int = 128
    """Most tokens sampled per completion (EOS included)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings. A completion ends at the first one it contains; the text is cut right AFTER the
    stop string (it is kept, so format rewards can see a closing tag) and the tokens up to the one that
    completed it are kept."""
    seed: int | None = None
    """Seed of the sampler's generator; None draws one from torch's global RNG (so a resumed run
    that restored the global RNG samples the same completions)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.temperature >= 0:
            problems.append(f"sampling.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            problems.append(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"sampling.stop must be a list of non-empty strings, got {self.stop!r}")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class DecodeOptions:
    """Per-call settings of the torch engine (``engine_options`` other than ``dtype``)."""

    ignore_eos: bool = False
    """Never stop on EOS: every row samples max_new_tokens (benchmarks)."""
    compact_min: float = 0.0
    """Finished rows leave the batch once they are more than this fraction of it (0 = every step)."""
    sampler: str = "inverse_cdf"
    """"inverse_cdf" (one uniform per row; fastest measured), "multinomial" or "exponential"."""
    decoder: str = "lean"
    """"lean": ``LeanDecoder`` for Llama-layout models, others fall back to "hf" (the model's forward)."""
    slots: int = 64
    """Rows decoded at once by the slot engine (``slots.py``): a finished row's slot takes the next waiting
    sample, so the batch stays full. 0 = the batch engine (every row at once, finished rows dropped);
    models the lean decoder does not take, and the other samplers, always use the batch engine."""
    kv_budget_mb: float = 2048
    """Most memory the slot engine's KV cache may take (MB); the slot count is capped to what it holds."""
    occurrences: tuple[int, ...] = ()
    """Each prompt's occurrence among equal prompts of the whole request, when this call samples a share
    of it (rollout workers), so equal prompts on different workers still draw different streams; empty =
    counted within this call."""

    def __post_init__(self) -> None:
        problems = []
        if self.sampler not in SAMPLERS:
            problems.append(f"engine_options.sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if self.decoder not in ("lean", "hf"):
            problems.append(f"engine_options.decoder must be 'lean' or 'hf', got {self.decoder!r}")
        if self.slots < 0 or not self.kv_budget_mb > 0:
            problems.append(f"engine_options.slots must be >= 0 and kv_budget_mb > 0, got {self.slots} and "
                            f"{self.kv_budget_mb}")
        if not 0.0 <= self.compact_min < 1.0:
            problems.append(f"engine_options.compact_min must be in [0, 1), got {self.compact_min}")
        if problems:
            raise ConfigError(problems)


@dataclass
class Rollouts:
    """N = P·n sampled completions; the n samples of prompt p are contiguous (row = p·n + j)."""

    prompt_ids: list[list[int]]
    """[N] the prompt's token ids, one entry per sample."""
    completion_ids: list[list[int]]
    """[N] sampled token ids, including the EOS token when the row stopped on EOS."""
    texts: list[str]
    """[N] decoded completions: special tokens skipped, cut right after a stop string."""
    logprobs: list[torch.Tensor]
    """[N] float32 [len(completion_ids[i])]: log-prob of each sampled token before top-k/top-p truncation,
    as a re-scoring at the sampling temperature gives it (see SamplingParams)."""
    finish_reasons: list[str]
    """[N] "stop" (EOS or stop string) or "length" (max_new_tokens reached)."""
    prompt_index: list[int]
    """[N] the input prompt each sample belongs to."""
    timing: dict[str, float] = field(default_factory=dict)
    """prompt_tokens, completion_tokens, seconds, tokens_per_s (completion tokens per second)."""
    sampler_logprobs: list[torch.Tensor] = field(default_factory=list)
    """[N] float32 [len(completion_ids[i])]: log-prob of each sampled token under the distribution it
    was drawn from (temperature, top-k, top-p, renormalised; 0 when greedy): what importance weights
    against the sampler need. Equal to ``logprobs`` when nothing is truncated; empty only in a
    ``Rollouts`` built by hand."""
    weight_version: int = 0
    """The version of the policy's weights the samples came from: 0 in one process; on rollout workers,
    the count of weight pushes after the first (the trainer refuses one more than ``cluster.max_staleness``
    versions behind its own)."""
    staleness: int | None = None
    """Weight versions between the samples' and the policy's when the trainer took them (set by
    ``distributed.check_on_policy`` on rollout workers; None in one process)."""

    def __len__(self) -> int:
        return len(self.completion_ids)

    @classmethod
    def concat(cls, parts: list[Rollouts]) -> Rollouts:
        """The rows of ``parts`` one after the other (``prompt_index`` as each part has it), their timings
        summed; the parts must come from one weight version."""
        versions = sorted({part.weight_version for part in parts})
        if len(versions) != 1:
            raise ValueError(f"rollouts of weight versions {versions} cannot be one batch")
        lists = {f.name: [x for part in parts for x in getattr(part, f.name)]
                 for f in fields(cls) if f.name not in ("timing", "weight_version", "staleness")}
        timing = {key: sum(part.timing.get(key, 0.0) for part in parts) for key in parts[0].timing}
        return cls(**lists, timing=timing, weight_version=versions[0], staleness=parts[0].staleness)

    def to_batch(self, pad_id: int, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Prompt + completion per row, right-padded to the longest row T.

        Returns ``input_ids``, ``attention_mask``, ``completion_mask`` (1 on completion tokens),
        ``logprobs`` and ``sampler_logprobs`` (at the completion positions, 0 elsewhere; the second only
        when the rollouts have them), all [N, T], and ``prompt_lengths`` [N].
        """
        n_rows = len(self.completion_ids)
        lengths = [len(p) + len(c) for p, c in zip(self.prompt_ids, self.completion_ids)]
        width = max(lengths, default=0)
        input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)  # [N, T]
        attention_mask = torch.zeros((n_rows, width), dtype=torch.long)  # [N, T]
        completion_mask = torch.zeros((n_rows, width), dtype=torch.long)  # [N, T]
        logprobs = torch.zeros((n_rows, width), dtype=torch.float32)  # [N, T]
        sampler = torch.zeros_like(logprobs) if self.sampler_logprobs else None  # [N, T]
        for i, (prompt, completion) in enumerate(zip(self.prompt_ids, self.completion_ids)):
            start, end = len(prompt), lengths[i]
            input_ids[i, :end] = torch.tensor(prompt + completion, dtype=torch.long)
            attention_mask[i, :end] = 1
            completion_mask[i, start:end] = 1
            logprobs[i, start:end] = self.logprobs[i].float().cpu()
            if sampler is not None:
                sampler[i, start:end] = self.sampler_logprobs[i].float().cpu()
        prompt_lengths = torch.tensor([len(p) for p in self.prompt_ids], dtype=torch.long)  # [N]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "completion_mask": completion_mask, "logprobs": logprobs, "prompt_lengths": prompt_lengths}
        if sampler is not None:
            batch["sampler_logprobs"] = sampler
        return {k: v.to(device) for k, v in batch.items()} if device is not None else batch
