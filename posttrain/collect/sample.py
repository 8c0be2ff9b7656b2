"""Sample candidates for labelling: prompts file -> n completions per prompt -> collection database.

1. Read and validate the prompts (any format ``posttrain.data.formats.load_rows`` reads, kind
   "prompts"); every problem is reported before a model is loaded.
2. Drop prompts the database already holds (same prompt text or messages): re-running adds only
   new prompts and never duplicates.
3. For each batch of new prompts, sample ``n`` completions with the rollout engine; a string prompt
   goes through the chat template as one user message, as the preference recipes will encode it.
4. Store each prompt with its candidates in one transaction, recording the model, the sampling
   settings and the seed of its batch, so an interrupted run keeps every finished prompt.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

from posttrain.collect.db import MODES, Collection, prompt_key
from posttrain.data.chat import prompt_messages
from posttrain.data.formats import load_rows
from posttrain.rollout import SamplingParams, generate


@dataclass
class SampleConfig:
    prompts: str = ""
    """Prompts file (.jsonl, .json, .csv, .parquet) with a 'prompt' (string or messages) or 'messages'."""
    db: str = "collection.db"
    """Collection database to create or extend."""
    model: str = "smollm2-135m-instruct"
    """Model that writes the candidates: the embedded default, an HF folder, a .gguf file or a hub name."""
    device: str = "auto"
    """Device: auto (CUDA when present), cpu, or cuda."""
    mode: str = "rank"
    """Labelling mode of the database: rank, ab or thumbs (can be changed later with `serve --mode`)."""
    n: int = 4
    """Candidates per prompt."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy, which gives n identical candidates)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    max_new_tokens: int = 256
    """Most tokens generated per candidate."""
    seed: int = 0
    """Base seed; the batch starting at the i-th new prompt of this run uses seed + i."""
    batch_size: int = 8
    """Prompts sampled per engine call (and committed together)."""

    def check(self) -> list[str]:
        problems = []
        if not self.prompts:
            problems.append("'prompts' is required: a prompts file (e.g. prompts=prompts.jsonl)")
        if self.mode not in MODES:
            problems.append(f"'mode' must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.n < 1:
            problems.append(f"'n' must be >= 1; got {self.n}")
        return problems


def sampling_params(config: SampleConfig, seed: int) -> SamplingParams:
    return SamplingParams(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                          max_new_tokens=config.max_new_tokens, seed=seed)


def sample(config: SampleConfig, model: Any = None, tokenizer: Any = None, log: Any = None) -> dict[str, int]:
    """Add the new prompts of ``config.prompts`` with ``config.n`` candidates each to ``config.db``.

    ``model``/``tokenizer`` may be passed (notebooks, tests); otherwise ``config.model`` is loaded,
    and only when there is something new to sample. Returns ``{"new": ..., "skipped": ...}``.
    """
    log = log or (lambda text: print(text, file=sys.stderr))
    rows = load_rows(config.prompts, "prompts")
    collection = Collection(config.db)
    if not collection.counts()["prompts"]:
        collection.set_mode(config.mode)
    known = collection.sampled_keys()
    fresh: list[dict[str, Any]] = []
    for row in rows:
        prompt = row["prompt"] if "prompt" in row else row["messages"]
        key = prompt_key(prompt)
        if key not in known:
            known.add(key)  # a prompt repeated inside the file is sampled once
            fresh.append({"prompt": prompt, "where": row["_where"], "messages": prompt_messages(row)})
    skipped = len(rows) - len(fresh)
    log(f"collect sample: {len(fresh)} new prompts, {skipped} already in {config.db} or repeated")
    if not fresh:
        return {"new": 0, "skipped": skipped}
    if model is None or tokenizer is None:
        from posttrain.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(config.model)
        model = load_model(config.model, "float32", config.device)
    model.eval()
    for start in range(0, len(fresh), config.batch_size):
        batch = fresh[start:start + config.batch_size]
        seed = config.seed + start
        params = sampling_params(config, seed)
        rollouts = generate(model, tokenizer, [p["messages"] for p in batch], config.n, params)
        settings = {k: v for k, v in asdict(params).items() if k != "seed"}
        for p, entry in enumerate(batch):
            rows_p = range(p * config.n, (p + 1) * config.n)
            candidates = [{"text": rollouts.texts[r], "finish_reason": rollouts.finish_reasons[r],
                           "model": config.model, "sampling": settings, "seed": seed} for r in rows_p]
            collection.add_prompt(entry["prompt"], entry["where"], candidates)
        log(f"collect sample: {min(start + config.batch_size, len(fresh))}/{len(fresh)} prompts stored")
    return {"new": len(fresh), "skipped": skipped}

