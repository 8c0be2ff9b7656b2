"""Length checks with the tokenizer alone, made before a model is loaded or a run folder created.

``check_inputs`` (called by ``runner.setup``, so by every recipe that trains through it, and by
best-of-N) checks a recipe's rows against its limits and reports every problem in one DataError,
each with the row's file:line, its field, the token count and the limit:

- training prompts (RL): the rendered prompt within ``data.max_prompt_tokens`` tokens, and the
  prompt plus ``sampling.max_new_tokens`` within the model's context window
  (``max_position_embeddings``, read from the model's config without its weights);
- held-out prompts (greedy evaluation): the prompt plus ``sampling.max_new_tokens`` within the window;
- conversations (SFT): each conversation within ``max_length`` tokens. They are encoded here, once
  (token ids and loss masks), and the encodings handed to the recipe.

Preference and feedback rows are encoded, and checked the same way, by
``preferences.encoded_splits`` and ``feedback.encoded_feedback_splits`` before those recipes call setup.
``check_eval_prompts`` does the same for ``posttrain eval``: every problem's prompt, as the model is
given it, plus ``sampling.max_new_tokens`` within the evaluated model's window.

A giant row is refused without tokenizing it. Every token is an entry of the tokenizer's vocabulary,
so it stands for at most L characters of text, L = the longest entry (81 for SmolLM2: a newline and
80 spaces; a byte-level vocabulary spells one byte per character and a character is at least one
byte, so the bound holds there exactly). A text of c characters is then at least ⌈c / L⌉ tokens,
and one over L × limit characters is certainly over the limit. Two tokenizer features could make
fewer tokens than that, and are accounted for: a normalizer that drops characters (the text is
measured after it) and a WordPiece unknown-word token that swallows a whole word (L is at least the
longest word it swallows). Measured here (2 contended cores): a 50 MB prompt renders through the
chat template in 0.1 s; tokenizing 5 MB of it took 2.3 s, so 50 MB would take about 20 s.

The other way round, a prompt whose UTF-8 bytes (after the normalizer) plus one are within the limit
is certainly within it, as no token covers less than a byte; only the rest are tokenized, in one
batch. 5000 arithmetic prompts are checked in 0.5-0.7 s (2.5-3.1 s tokenizing each).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from posttrain.data.chat import encode_conversation, prompt_messages, render_messages
from posttrain.errors import ConfigError, DataError, data_errors

Row = dict[str, Any]
Example = tuple[list[int], list[int]]
Prompt = list[dict[str, Any]] | str


_PER_TOKEN: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()


def chars_per_token(tokenizer: Any) -> int:
    """L: the most characters of text that one token of ``tokenizer`` stands for (module docstring);
    kept per tokenizer and vocabulary size (reading the vocabulary takes ~20 ms)."""
    size = len(tokenizer)
    if tokenizer not in _PER_TOKEN or _PER_TOKEN[tokenizer][0] != size:
        longest = max(map(len, tokenizer.get_vocab()))
        model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
        _PER_TOKEN[tokenizer] = size, max(longest, getattr(model, "max_input_chars_per_word", 0))
    return _PER_TOKEN[tokenizer][1]


def _normalized(tokenizer: Any, text: str) -> str:
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    return normalizer.normalize_str(text) if normalizer is not None else text


def _rendered(tokenizer: Any, prompt: Prompt, generation_prompt: bool) -> str:
    return prompt if isinstance(prompt, str) else render_messages(tokenizer, prompt, generation_prompt)


def tokens_at_least(tokenizer: Any, prompt: Prompt, limit: int, *,
                    generation_prompt: bool) -> tuple[int, int] | None:
    """``(tokens, characters)`` when the length of the rendered messages (or of text given as it is)
    alone shows that they are over ``limit`` tokens: a lower bound on their tokens, found without
    tokenizing; None when it does not (then tokenizing them is cheap: at most about L × limit characters)."""
    per_token = chars_per_token(tokenizer)
    content = len(prompt) if isinstance(prompt, str) else sum(
        len(m["content"]) for m in prompt if isinstance(m.get("content"), str))
    if content <= per_token * limit:  # rendering only adds a template's few markers around them
        return None
    chars = len(_normalized(tokenizer, _rendered(tokenizer, prompt, generation_prompt)))
    return (math.ceil(chars / per_token), chars) if chars > per_token * limit else None


def _tokens_at_most(tokenizer: Any, text: str) -> int:
    """An upper bound on the tokens of ``text``: its UTF-8 bytes after the normalizer, plus one. A token
    covers at least one byte (byte-level BPE, sentencepiece's byte fallback), save the word-start marker
    some sentencepiece models put before the text. Were it ever low, the rollout engine's own check
    still stops the prompt before generating (only a refusal here must be certain)."""
    return len(_normalized(tokenizer, text).encode()) + 1


def token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    """Tokens of each rendered text, tokenized in one batch (a third faster than one by one here)."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def prompt_problems(tokenizer: Any, rows: list[Row], *, max_prompt_tokens: int | None, max_new_tokens: int,
                    context: int | None, system_prompt: str | None,
                    prompts: list[Prompt] | None = None) -> list[DataError]:
    """One DataError per prompt row over ``max_prompt_tokens`` (None: no such limit) or whose prompt
    plus ``max_new_tokens`` exceeds ``context`` (None: unknown window). ``prompts``: each row's prompt
    as the model is given it (chat messages, or text it continues as it is), when that is not the row's
    own with ``system_prompt``."""
    if context is not None and max_new_tokens >= context:
        raise ConfigError(f"sampling.max_new_tokens {max_new_tokens} leaves no room for a prompt in the "
                          f"model's context window of {context} tokens (lower sampling.max_new_tokens)")
    room = context - max_new_tokens if context is not None else None
    limits = [limit for limit in (max_prompt_tokens, room) if limit is not None]
    if not limits:
        return []
    problems, sizes, texts = [], [], []  # sizes: (row, tokens or None, how to say it)
    for i, row in enumerate(rows):
        try:
            prompt = prompts[i] if prompts is not None else prompt_messages(row, system_prompt)
        except DataError as error:
            problems.append(error)
            continue
        bound = tokens_at_least(tokenizer, prompt, min(limits), generation_prompt=True)
        if bound is not None:
            sizes.append((row, bound[0], f"at least {bound[0]} tokens ({bound[1]:,} characters)"))
            continue
        text = _rendered(tokenizer, prompt, generation_prompt=True)
        if _tokens_at_most(tokenizer, text) > min(limits):  # else certainly within: no need to tokenize
            sizes.append((row, None, ""))
            texts.append(text)
    counts = iter(token_counts(tokenizer, texts))
    for row, bound_tokens, size in sizes:
        tokens = bound_tokens if bound_tokens is not None else next(counts)
        size = size or f"{tokens} tokens"
        where, field = row.get("_where"), "prompt" if "prompt" in row else "messages"
        if max_prompt_tokens is not None and tokens > max_prompt_tokens:
            problems.append(DataError(
                f"the prompt is {size}, over data.max_prompt_tokens {max_prompt_tokens} (raise "
                "data.max_prompt_tokens or shorten the prompt)", file=where, field=field,
                expected=f"at most {max_prompt_tokens} tokens", got=tokens))
        elif room is not None and tokens > room:
            problems.append(DataError(
                f"the prompt is {size}; with sampling.max_new_tokens {max_new_tokens} that exceeds the "
                f"model's context window of {context} tokens (shorten the prompt or sampling.max_new_tokens)",
                file=where, field=field, expected=f"at most {room} tokens", got=tokens))
    return problems


def _conversation(row: Row, system_prompt: str | None) -> tuple[list[dict[str, Any]], str]:
    """The chat messages of a conversation row (``messages``, or ``prompt`` + ``completion``) and the
    field holding its trained text."""
    if "messages" in row:
        return prompt_messages({"messages": row["messages"], "_where": row.get("_where")}, system_prompt), \
            "messages"
    messages = prompt_messages({"prompt": row["prompt"], "_where": row.get("_where")}, system_prompt)
    return [*messages, {"role": "assistant", "content": row["completion"]}], "completion"


def encode_conversations(tokenizer: Any, rows: list[Row], max_length: int,
                         system_prompt: str | None) -> list[Example]:
    """Token ids and response-only loss masks of conversation rows; every row over ``max_length``
    tokens (or with nothing to train on) is reported in one DataError."""
    examples: list[Example] = []
    problems: list[DataError] = []
    for row in rows:
        where = row.get("_where")
        try:
            messages, field = _conversation(row, system_prompt)
            bound = tokens_at_least(tokenizer, messages, max_length, generation_prompt=False)
            if bound is not None:
                tokens, chars = bound
                raise DataError(f"the conversation is at least {tokens} tokens ({chars:,} characters), over "
                                f"max_length {max_length} (raise max_length or shorten the row)", file=where,
                                field=field, expected=f"at most {max_length} tokens", got=tokens)
            examples.append(encode_conversation(tokenizer, messages, max_length, where=where, field=field))
        except DataError as error:
            problems.append(error)
    if problems:
        raise data_errors(problems)
    return examples


def check_inputs(config: Any, tokenizer: Any, kind: str, train_rows: list[Row],
                 eval_rows: list[Row]) -> list[Example] | None:
    """Check a recipe's rows with ``tokenizer`` before its model loads (see the module docstring).

    ``config`` is the recipe's: ``model.name`` (its context window), ``data.max_prompt_tokens`` and
    ``data.system_prompt``, ``sampling.max_new_tokens`` when it samples, ``max_length`` for
    ``kind`` "conversations". Returns the encoded conversations for that kind, else None.
    """
    from posttrain.models import context_window

    sampling = getattr(config, "sampling", None)  # None: nothing is generated (e.g. a reward model)
    system_prompt = config.data.system_prompt or None
    problems: list[DataError] = []
    examples = None
    if kind == "conversations":
        try:
            examples = encode_conversations(tokenizer, train_rows, config.max_length, system_prompt)
        except DataError as error:
            problems += error.problems
    if sampling is not None:
        window = context_window(config.model.name)
        checked = [(train_rows, config.data.max_prompt_tokens)] if kind == "prompts" else []
        for rows, max_prompt_tokens in [*checked, (eval_rows, None)]:
            problems += prompt_problems(tokenizer, rows, max_prompt_tokens=max_prompt_tokens, context=window,
                                        max_new_tokens=sampling.max_new_tokens, system_prompt=system_prompt)
    if problems:
        raise data_errors(problems)
    return examples


def check_eval_prompts(model: str, rows: list[Row], prompt_of: Callable[[Any, Row], Prompt],
                       max_new_tokens: int, problems: Sequence[DataError] = ()) -> list[Prompt]:
    """``posttrain eval``'s check before its model loads or its output folder exists: each row's prompt
    as the model is given it (``prompt_of(tokenizer, row)``, returned) plus ``max_new_tokens`` within the
    context window of ``model`` (a name ``models.load_tokenizer`` takes; read from its tokenizer and
    config alone). Every problem, those found before (``problems``: e.g. the rows' fields) first, in one
    DataError."""
    from posttrain.models import context_window, load_tokenizer

    tokenizer = load_tokenizer(model)
    prompts = [prompt_of(tokenizer, row) for row in rows]
    lengths = prompt_problems(tokenizer, rows, max_prompt_tokens=None, max_new_tokens=max_new_tokens,
                              context=context_window(model), system_prompt=None, prompts=prompts)
    found = [*problems, *lengths]
    if found:
        raise data_errors(found)
    return prompts
