"""Preference data for reward models and DPO: rankings to pairs, pairs to padded token batches.

A pair row has ``prompt`` (a string or messages), ``chosen`` and ``rejected`` (strings, or message
lists ending with an assistant turn). Each response is encoded after the prompt with the
tokenizer's own chat template (``posttrain.data.chat``); the loss mask is 1 on the response's
assistant turns and their end-of-turn token only: assistant turns inside the prompt (few-shot
demonstrations) are context, never scored.

Batches interleave the two sides, ``[chosen_0, rejected_0, chosen_1, rejected_1, ...]`` ([2B, T]):
one forward pass scores both, and the two rows of a pair are adjacent with the same prompt, so
``posttrain.logprobs.share_prompts`` can run each prompt through the model once per pair.

Over-long pairs: by default a pair longer than ``max_length`` tokens is a DataError naming its row
and token count. With ``truncate=True`` the end is cut off (the prompt and the start of the
responses are kept, as in SFT); a pair whose two sides are identical after truncation carries no
preference, so it is dropped with a warning giving the count (all dropped is an error).

The last part of the module is what the two preference recipes (``rm``, ``dpo``) share: the
``pairs`` config section, encoding both splits, one optimizer step over pairs, held-out scoring.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from posttrain.data.chat import collate_padded, encode_conversation, prompt_messages
from posttrain.data.preflight import tokens_at_least
from posttrain.data.sources import PAIR_MODES, load_pairs
from posttrain.errors import DataError, data_errors

Row = dict[str, Any]


@dataclass
class EncodedPair:
    """Token ids and response masks of the two sides of one pair, and its Bradley-Terry margin."""

    chosen: tuple[list[int], list[int]]
    rejected: tuple[list[int], list[int]]
    margin: float
    where: str

    @property
    def tokens(self) -> int:
        return len(self.chosen[0]) + len(self.rejected[0])


def _keep_last_runs(mask: list[int], runs: int) -> list[int]:
    """The mask with only its last ``runs`` runs of 1s kept (the response's assistant turns)."""
    out, seen = [0] * len(mask), 0
    for t in range(len(mask) - 1, -1, -1):
        if mask[t] and (t == len(mask) - 1 or not mask[t + 1]):
            seen += 1  # the end of a run, walking backwards
        if mask[t] and seen <= runs:
            out[t] = 1
    return out


def _over_max_length(size: str, tokens: int, max_length: int, where: str | None, field: str | None,
                     ) -> DataError:
    return DataError(f"prompt + response is {size}, over max_length {max_length} (raise max_length, or set "
                     "truncate=true to cut the end off)", file=where, field=field,
                     expected=f"at most {max_length} tokens", got=tokens)


def encode_response(tokenizer: Any, prompt: Any, response: Any, max_length: int, *, truncate: bool = False,
                    where: str | None = None, system_prompt: str | None = None, field: str | None = None,
                    ) -> tuple[list[int], list[int]]:
    """(ids, mask) of prompt + response with the mask on the response's assistant turns only; errors
    name ``where`` and ``field`` (the row's response field). A response certainly over
    ``max_length`` by its length alone is refused without tokenizing (``preflight.tokens_at_least``)."""
    messages = prompt_messages({"prompt": prompt, "_where": where}, system_prompt)
    turns = [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)
    conversation = messages + turns
    bound = None if truncate else tokens_at_least(tokenizer, conversation, max_length,
                                                  generation_prompt=False)
    if bound is not None:
        raise _over_max_length(f"at least {bound[0]} tokens ({bound[1]:,} characters)", bound[0], max_length,
                               where, field)
    ids, mask = encode_conversation(tokenizer, conversation, None, where=where, field=field or "messages")
    mask = _keep_last_runs(mask, sum(turn["role"] == "assistant" for turn in turns))
    if len(ids) > max_length:
        if not truncate:
            raise _over_max_length(f"{len(ids)} tokens", len(ids), max_length, where, field)
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def _margin(row: Row, default: float) -> float:
    value = row.get("margin", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError("the pair's margin is not a finite number", file=row.get("_where"), field="margin",
                        expected="a finite number (Bradley-Terry margin)", got=value, has_got=True)
    return float(value)


def _encode_side(tokenizer: Any, row: Row, side: str, max_length: int, truncate: bool,
                 system_prompt: str | None) -> tuple[list[int], list[int]]:
    where = row.get("_where")
    ids, mask = encode_response(tokenizer, row["prompt"], row[side], max_length, truncate=truncate,
                                where=where, system_prompt=system_prompt, field=side)
    if not any(mask):
        raise DataError(f"no {side} token left within max_length {max_length}", file=where, field=side,
                        expected="a response that starts within max_length")
    return ids, mask


def encode_pairs(tokenizer: Any, rows: Sequence[Row], max_length: int, *, truncate: bool = False,
                 system_prompt: str | None = None, margin: float = 0.0) -> list[EncodedPair]:
    """Encode every pair row (see the module docstring for over-long pairs); every bad row is reported
    in one DataError. A row's numeric ``margin`` column, when present, overrides ``margin``."""
    pairs, dropped, problems = [], 0, []
    for row in rows:
        where = row.get("_where")
        try:
            sides = [_encode_side(tokenizer, row, side, max_length, truncate, system_prompt)
                     for side in ("chosen", "rejected")]
            if sides[0] == sides[1]:
                dropped += 1
                continue
            pairs.append(EncodedPair(sides[0], sides[1], _margin(row, margin), str(where)))
        except DataError as error:
            problems.append(error)
    if problems:
        raise data_errors(problems)
    if dropped:
        if not pairs:
            raise DataError(f"all {dropped} pairs have identical chosen and rejected sides (the same "
                            f"response twice, e.g. duplicate candidates in a ranking, or the same after "
                            f"truncation to max_length {max_length})",
                            expected="pairs whose responses differ within max_length")
        warnings.warn(f"{dropped} of {len(rows)} pairs dropped: chosen and rejected are identical (the same "
                      f"response twice, or the same after truncation to max_length {max_length})",
                      stacklevel=2)
    return pairs


def collate_pairs(pairs: Sequence[EncodedPair], pad_id: int,
                  device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``loss_mask`` [2B, T] with chosen rows at even
    and rejected rows at odd indices, and ``margin`` [B]."""
    examples = [side for pair in pairs for side in (pair.chosen, pair.rejected)]
    batch = collate_padded(examples, pad_id, device=device)
    batch["margin"] = torch.tensor([pair.margin for pair in pairs], dtype=torch.float32, device=device)  # [B]
    return batch


def pair_batches(pairs: Sequence[EncodedPair], size: int, pad_id: int,
                 device: torch.device | str | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """``collate_pairs`` of consecutive groups of at most ``size`` pairs."""
    for start in range(0, len(pairs), size):
        yield collate_pairs(pairs[start:start + size], pad_id, device)


def pairwise_metrics(chosen_B: torch.Tensor, rejected_B: torch.Tensor) -> dict[str, float]:
    """Held-out ranking quality of scores: ``pairwise_accuracy`` (chosen scored above rejected; a tie
    counts one half, so equal scores everywhere give 0.5) and ``mean_margin`` (mean chosen - rejected)."""
    gap_B = (chosen_B - rejected_B).double()
    wins = (gap_B > 0).double() + 0.5 * (gap_B == 0).double()
    return {"pairwise_accuracy": float(wins.mean()), "mean_margin": float(gap_B.mean())}


# ---------------------------------------------------------------- shared by the rm and dpo recipes


@dataclass
class PairsConfig:
    batch_size: int = 16
    """B: preference pairs per optimizer step."""
    micro_batch_size: int = 8
    """Pairs per forward/backward pass (each pair is two rows, chosen and rejected)."""
    max_length: int = 512
    """Longest prompt + response in tokens; a longer pair is an error naming its row (see truncate)."""
    truncate: bool = False
    """Cut over-long pairs at max_length instead (pairs left identical are dropped with a warning)."""
    rankings: str = "all"
    """Pairs from ranking rows: all (every implied pair) or adjacent (each response over the next)."""
    share_prompts: bool = True
    """Run each pair's prompt through the model once, not twice (same results, fewer tokens)."""

    def check(self) -> list[str]:
        if self.rankings not in PAIR_MODES:
            return [f"rankings must be one of {', '.join(PAIR_MODES)}; got {self.rankings!r}"]
        return []


def encoded_splits(config: Any, train_rows: list[Row] | None = None, eval_rows: list[Row] | None = None,
                   ) -> tuple[list[Row], list[EncodedPair], list[EncodedPair]]:
    """Training rows, their encoded pairs and the encoded held-out pairs of a preference recipe's
    config (``data``, ``model.name``, ``pairs``, optional ``margin``); rows given in Python replace
    the configured ones. Every pair is encoded (an over-long one reported) before a model is loaded."""
    from posttrain.models import load_tokenizer

    seed, pairs_config = config.run.seed, config.pairs
    if train_rows is None:
        train_rows = load_pairs(config.data, "train", seed, pairs_config.rankings)
    if eval_rows is None:
        eval_rows = load_pairs(config.data, "eval", seed, pairs_config.rankings)
    tokenizer = load_tokenizer(config.model.name)
    options = {"truncate": pairs_config.truncate, "system_prompt": config.data.system_prompt or None,
               "margin": getattr(config, "margin", 0.0)}
    pairs = encode_pairs(tokenizer, train_rows, pairs_config.max_length, **options)
    held_out = encode_pairs(tokenizer, eval_rows, pairs_config.max_length, **options) if eval_rows else []
    return train_rows, pairs, held_out


def describe_pairs(recipe: str, pairs_config: PairsConfig, pairs: Sequence[EncodedPair],
                   eval_pairs: Sequence[EncodedPair], extra: str = "") -> None:
    """Print the derived counts at the start of a run (B pairs = 2B sequences, micro-batches, sizes)."""
    B = pairs_config.batch_size
    print(f"[{recipe}] B = {B} pairs per step ({2 * B} sequences) in micro-batches of "
          f"{pairs_config.micro_batch_size} pairs{extra}; {len(pairs)} training pairs, {len(eval_pairs)} "
          f"held-out; {pair_tokens(pairs) / max(1, len(pairs)):.0f} tokens per pair on average")


ScoreOf = Callable[[dict[str, torch.Tensor]], torch.Tensor]
LossOf = Callable[[dict[str, torch.Tensor], slice], tuple[torch.Tensor, dict[str, float]]]


def pair_step(stepper: Any, pairs: Sequence[EncodedPair], micro_batch_size: int, pad_id: int,
              device: torch.device, loss_of: LossOf) -> dict[str, float]:
    """One optimizer step over ``pairs``: ``loss_of(batch, rows) -> (loss, metrics)`` on each collated
    micro-batch (``rows``: its slice of ``pairs``; loss = mean over its pairs), weighted by pair
    count so the micro-batch losses add up to the mean over all pairs. Metrics come back under train/."""
    from posttrain.training import accumulate

    def micro_loss(rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        return loss_of(collate_pairs(pairs[rows], pad_id, device), rows)

    every_pair = torch.ones(len(pairs), 1)  # each pair weighs the same in the step's mean
    totals = accumulate(stepper, every_pair, micro_batch_size, "sequence_mean", micro_loss)
    totals.update(stepper.step())
    return {key if key.startswith("train/") else f"train/{key}": value for key, value in totals.items()}


def step_throughput(pairs: Sequence[EncodedPair], started: float) -> dict[str, float]:
    """Tokens of the step's pairs (prompts counted on both sides, no padding: the work a plain batch
    does) and their rate since ``started`` (a ``time.perf_counter()`` value)."""
    import time

    seconds = time.perf_counter() - started
    tokens = pair_tokens(pairs)
    return {"train/tokens": float(tokens), "train/tokens_per_s": tokens / seconds, "time/step_s": seconds}


def score_pairs(model: Any, pairs: Sequence[EncodedPair], score: ScoreOf,
                batch_size: int, pad_id: int, device: torch.device | str | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``score(batch) -> [2b]`` over the pairs in batches of ``batch_size`` pairs, in eval mode and
    without gradients: the chosen scores [B] and the rejected scores [B]."""
    chosen, rejected = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in pair_batches(pairs, batch_size, pad_id, device):
            scores_N = score(batch).float()
            chosen.append(scores_N[0::2])
            rejected.append(scores_N[1::2])
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def pair_tokens(pairs: Sequence[EncodedPair]) -> int:
    """Tokens in the pairs' chosen and rejected sequences (prompts counted on both sides, no padding)."""
    return sum(pair.tokens for pair in pairs)
