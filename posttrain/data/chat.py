"""Chat formatting: prompts through the tokenizer's own chat template, loss masks, padding, packing.

Loss masks come from the template itself, not from hard-coded tokens: a conversation is rendered
as growing prefixes (the first k messages, and the first k messages plus the generation prompt)
and the differences between consecutive renders are the segments of the text. Each segment is
tokenized on its own, so the tokens of an assistant turn are the tokens the model would generate
after the rendered prompt. The mask is 1 on an assistant turn's content and its end-of-turn marker
(e.g. `<|im_end|>`), 0 on system/user turns, on the template's assistant header
("<|im_start|>assistant\\n") and on whitespace the template writes after the end-of-turn marker
(generation stops at the marker, so the model never produces it). Templates that rewrite earlier
turns when later ones are added (e.g. dropping past reasoning) are not prefix-stable and are
refused with an error.

Truncation (opt-in with `truncate=True`) keeps the beginning and drops the end of a sequence: the
start of a conversation conditions everything after it.

Packing puts several examples in one row. `collate_packed` restarts `position_ids` at 0 for each
example and builds a block-diagonal causal mask [B, 1, T, T] (additive: 0 where attention is
allowed, the dtype's minimum elsewhere), which transformers uses as given for the eager and sdpa
attention implementations (transformers 5 `masking_utils` returns a 4D mask unchanged). Passing only
`position_ids` with attention_mask=None also works: `masking_utils.find_packed_sequence_indices`
detects the restarts and builds the same block-diagonal mask, and that is the form
flash-attention needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from posttrain.errors import ConfigError, DataError

Messages = list[dict[str, Any]]
_PACK_WINDOW = 64  # open bins searched per example: first-fit quality at linear cost


def prompt_messages(row: dict[str, Any], system_prompt: str | None = None) -> Messages:
    """The prompt of a row as chat messages: a `prompt` string becomes one user message, a `prompt`
    or `messages` list is copied. `system_prompt` is prepended when given and the row has none."""
    prompt = row["prompt"] if "prompt" in row else row.get("messages")
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        messages = [dict(message) for message in prompt]
    else:
        raise DataError("a prompt row needs 'prompt' (string or messages) or 'messages'",
                        file=row.get("_where"), field="prompt", expected="a string or a list of messages",
                        got=prompt, has_got=True)
    if system_prompt is not None and (not messages or messages[0].get("role") != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_messages(tokenizer: Any, messages: Messages, generation_prompt: bool) -> str:
    """The messages as text by the tokenizer's chat template (with the assistant header after them
    when ``generation_prompt``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the tokenizer has no chat template; use a chat (instruct) model or set "
                          "tokenizer.chat_template before training")
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def tokenize_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered text."""
    # The template writes any BOS itself; letting the tokenizer add another would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def render_prompt(tokenizer: Any, row: dict[str, Any], system_prompt: str | None = None) -> str:
    """The row's prompt rendered by the tokenizer's chat template, ending with the generation prompt."""
    return render_messages(tokenizer, prompt_messages(row, system_prompt), generation_prompt=True)


def encode_prompt(tokenizer: Any, row: dict[str, Any], max_prompt_tokens: int,
                  system_prompt: str | None = None) -> list[int]:
    """Token ids of the rendered prompt; more than `max_prompt_tokens` is a DataError naming the row."""
    ids = tokenize_text(tokenizer, render_prompt(tokenizer, row, system_prompt))
    if len(ids) > max_prompt_tokens:
        raise DataError(f"the prompt is {len(ids)} tokens, over the limit of {max_prompt_tokens} "
                        "(raise max_prompt_tokens or shorten the prompt)", file=row.get("_where"),
                        field="prompt", expected=f"at most {max_prompt_tokens} tokens", got=len(ids))
    return ids


def _segments(tokenizer: Any, messages: Messages, where: str | None) -> list[tuple[str, int]]:
    """The rendered conversation cut into (text, trained) pieces by diffing growing prefixes."""
    segments: list[tuple[str, int]] = []
    done = ""
    for i, message in enumerate(messages):
        assistant = message["role"] == "assistant"
        renders = [render_messages(tokenizer, messages[:i], True)] if assistant else []
        renders.append(render_messages(tokenizer, messages[: i + 1], False))
        previous = done
        for render in renders:
            if not render.startswith(previous):
                raise DataError(f"the chat template renders messages 0..{i - 1} differently once message {i} "
                                "is added, so assistant turns cannot be located (templates that rewrite "
                                "earlier turns are not supported)", file=where, field=f"messages[{i}]")
            previous = render
        if assistant:
            header, full = renders
            turn = full[len(header) :]
            trained = turn.rstrip()  # whitespace after the end-of-turn marker is never generated
            segments += [(header[len(done) :], 0), (trained, 1), (turn[len(trained) :], 0)]
        else:
            full = renders[0]
            segments.append((full[len(done) :], 0))
        done = full
    return segments


def encode_conversation(tokenizer: Any, messages: Messages, max_length: int | None, *, truncate: bool = False,
                        where: str | None = None, field: str = "messages") -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 on assistant content and end-of-turn) of a chat conversation.

    Longer than `max_length`: a DataError, or with `truncate=True` the end is cut off. A conversation
    left with no trained token (no assistant turn, or all of it truncated) is a DataError. Errors
    name `where` (the row's location) and `field` (the row's field holding the trained text).
    """
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in _segments(tokenizer, messages, where):
        piece = tokenize_text(tokenizer, text)
        ids += piece
        mask += [trained] * len(piece)
    if max_length is not None and len(ids) > max_length:
        if not truncate:
            raise DataError(f"the conversation is {len(ids)} tokens, over max_length {max_length} "
                            "(raise max_length or allow truncation)", file=where, field=field,
                            expected=f"at most {max_length} tokens", got=len(ids))
        ids, mask = ids[:max_length], mask[:max_length]
    if not any(mask):
        reason = "after truncation to max_length" if truncate and max_length is not None else "at all"
        raise DataError(f"no assistant token to train on {reason}", file=where, field=field,
                        expected="at least one assistant token")
    return ids, mask


def encode_prompt_completion(tokenizer: Any, prompt: str | Messages, completion: str, max_length: int | None,
                             *, truncate: bool = False, where: str | None = None,
                             system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """`encode_conversation` of the prompt (string or messages) followed by one assistant turn."""
    messages = prompt_messages({"prompt": prompt, "_where": where}, system_prompt)
    messages.append({"role": "assistant", "content": completion})
    return encode_conversation(tokenizer, messages, max_length, truncate=truncate, where=where,
                               field="completion")


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right",
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads to the longest sequence: ids [B, T] (long) and attention_mask [B, T] (1 = real token).

    `side="left"` is for generation prompts, so every prompt ends where decoding starts. A loss mask
    pads the same way with `pad_batch(masks, 0, side)[0]`.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    longest = max(len(s) for s in sequences)
    rows, attention = [], []
    for sequence in sequences:
        padding = longest - len(sequence)
        if side == "right":
            rows.append([*sequence, *[pad_id] * padding])
            attention.append([1] * len(sequence) + [0] * padding)
        else:
            rows.append([*[pad_id] * padding, *sequence])
            attention.append([0] * padding + [1] * len(sequence))
    return (torch.tensor(rows, dtype=torch.long, device=device),  # [B, T]
            torch.tensor(attention, dtype=torch.long, device=device))  # [B, T]


def collate_padded(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, side: str = "right",
                   device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """(ids, loss_mask) examples -> input_ids, attention_mask and loss_mask, each [B, T]."""
    input_ids, attention_mask = pad_batch([ids for ids, _ in examples], pad_id, side, device)
    loss_mask, _ = pad_batch([mask for _, mask in examples], 0, side, device)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


@dataclass
class Packed:
    """Several examples laid end to end in one row; `lengths` gives each example's token count."""

    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def add(self, ids: Sequence[int], mask: Sequence[int]) -> None:
        self.input_ids += ids
        # The first token of an example has no context inside the row: never a target.
        self.loss_mask += [0, *mask[1:]]
        self.lengths.append(len(ids))

    @property
    def position_ids(self) -> list[int]:
        return [p for n in self.lengths for p in range(n)]


def pack(examples: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int) -> list[Packed]:
    """Packs (ids, loss_mask) examples into rows of at most `max_length` tokens.

    First fit over the last 64 open rows (bounded so packing stays linear in the number of
    examples); examples keep their relative order inside a row. An example longer than
    `max_length` is a DataError: truncate it when encoding.
    """
    bins: list[Packed] = []
    open_bins: list[Packed] = []
    for i, (ids, mask) in enumerate(examples):
        if len(ids) != len(mask):
            raise ValueError(f"example {i}: {len(ids)} ids but {len(mask)} mask values")
        if not ids or len(ids) > max_length:
            raise DataError(f"example {i} has {len(ids)} tokens; packing needs 1..{max_length} "
                            "(truncate when encoding)", expected=f"1..{max_length} tokens", got=len(ids))
        target = next((b for b in open_bins if len(b.input_ids) + len(ids) <= max_length), None)
        if target is None:
            target = Packed()
            bins.append(target)
            open_bins.append(target)
            if len(open_bins) > _PACK_WINDOW:
                open_bins.pop(0)
        target.add(ids, mask)
    return bins


def collate_packed(batch: Sequence[Packed], pad_id: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Packed rows -> input_ids, loss_mask, position_ids [B, T] and attention_mask [B, 1, T, T].

    The padding tail of a row is its own segment (positions from 0, attending only to itself), so no
    attention row is fully masked. `dtype` is the model's compute dtype (the mask is additive).
    """
    longest = max(len(p.input_ids) for p in batch)
    ids, mask, positions, segments = [], [], [], []
    for packed in batch:
        tail = longest - len(packed.input_ids)
        lengths = [*packed.lengths, tail] if tail else packed.lengths
        ids.append(packed.input_ids + [pad_id] * tail)
        mask.append(packed.loss_mask + [0] * tail)
        positions.append([p for n in lengths for p in range(n)])
        segments.append([s for s, n in enumerate(lengths) for _ in range(n)])
    segment_BT = torch.tensor(segments, device=device)
    causal_TT = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    allowed_BTT = (segment_BT[:, :, None] == segment_BT[:, None, :]) & causal_TT
    attention_mask = torch.zeros(allowed_BTT.shape, dtype=dtype, device=device)
    attention_mask.masked_fill_(~allowed_BTT, torch.finfo(dtype).min)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),  # [B, T]
        "loss_mask": torch.tensor(mask, dtype=torch.long, device=device),  # [B, T]
        "position_ids": torch.tensor(positions, dtype=torch.long, device=device),  # [B, T]
        "attention_mask": attention_mask[:, None],  # [B, 1, T, T]
    }
