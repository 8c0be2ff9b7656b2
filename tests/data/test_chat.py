"""Chat templates, loss masks, padding and packing, on SmolLM2's real tokenizer and a tiny Llama."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from posttrain.data.chat import (
    Packed,
    collate_packed,
    collate_padded,
    encode_conversation,
    encode_prompt,
    encode_prompt_completion,
    pack,
    pad_batch,
    prompt_messages,
    render_prompt,
)
from posttrain.errors import ConfigError, DataError

SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
          "<|im_end|>\n")
CHAT = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "6"},
]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _trained_text(tokenizer: Any, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    runs: list[list[int]] = []
    for i, (token, trained) in enumerate(zip(ids, mask)):
        if trained:
            if i == 0 or not mask[i - 1]:
                runs.append([])
            runs[-1].append(token)
    return [tokenizer.decode(run) for run in runs]


def _with_template(tokenizer: Any, template: str) -> Any:
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


# ---------------------------------------------------------------- prompts


def test_prompt_messages() -> None:
    assert prompt_messages({"prompt": "hi"}) == [{"role": "user", "content": "hi"}]
    assert prompt_messages({"prompt": "hi"}, "be brief") == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
    copied = prompt_messages({"messages": own}, "ignored")
    assert copied == own and copied[0] is not own[0]
    message = (r"^rows\[2\], field 'prompt': a prompt row needs 'prompt' \(string or messages\) or "
               r"'messages' \(expected a string or a list of messages, got None\)")
    with pytest.raises(DataError, match=message):
        prompt_messages({"question": "hi", "_where": "rows[2]"})


def test_render_and_encode_prompt(tokenizer: Any) -> None:
    text = render_prompt(tokenizer, {"prompt": "hi"})
    assert text == SYSTEM + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    text = render_prompt(tokenizer, {"prompt": "hi"}, system_prompt="Be brief.")
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = encode_prompt(tokenizer, {"prompt": "hi"}, max_prompt_tokens=100, system_prompt="Be brief.")
    assert ids == _ids(tokenizer, text) and ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    row = {"prompt": "hi", "_where": "data/train.jsonl:17"}
    message = (rf"^data/train.jsonl:17, field 'prompt': the prompt is {len(ids)} tokens, over the limit of 5 "
               r"\(raise max_prompt_tokens or shorten the prompt\) "
               rf"\(expected at most 5 tokens, got {len(ids)}\)")
    with pytest.raises(DataError, match=message):
        encode_prompt(tokenizer, row, max_prompt_tokens=5, system_prompt="Be brief.")


def test_missing_chat_template_is_a_config_error(tokenizer: Any) -> None:
    bare = _with_template(tokenizer, None)
    with pytest.raises(ConfigError, match=r"the tokenizer has no chat template"):
        render_prompt(bare, {"prompt": "hi"})


# ---------------------------------------------------------------- conversations and masks


def test_conversation_mask_covers_assistant_content_and_end_of_turn(tokenizer: Any) -> None:
    ids, mask = encode_conversation(tokenizer, CHAT, max_length=None)
    # Segment-wise tokenization equals tokenizing the whole render for this template.
    assert ids == _ids(tokenizer, tokenizer.apply_chat_template(CHAT, tokenize=False))
    assert _trained_text(tokenizer, ids, mask) == ["It is 4.<|im_end|>", "6<|im_end|>"]
    header = _ids(tokenizer, "<|im_start|>assistant\n")
    starts = [i for i in range(len(ids)) if ids[i : i + len(header)] == header]
    assert len(starts) == 2 and all(mask[i : i + len(header)] == [0] * len(header) for i in starts)
    assert mask[starts[0] + len(header)] == 1  # the content right after the header is trained
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    last_end = len(ids) - 2
    assert ids[last_end] == end and mask[last_end:] == [1, 0]  # trailing "\n" is not trained


def test_mask_is_derived_from_any_template(tokenizer: Any) -> None:
    template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}"
                "Bot:{{ m['content'] }}<|endoftext|>\n\n{% else %}User:{{ m['content'] }}\n{% endif %}"
                "{% endfor %}"
                "{% if add_generation_prompt %}Bot:{% endif %}")
    other = _with_template(tokenizer, template)
    ids, mask = encode_conversation(other, CHAT[:2], max_length=None)
    assert _trained_text(other, ids, mask) == ["It is 4.<|endoftext|>"]
    assert other.decode([t for t, m in zip(ids, mask) if not m]) == "User:What is 2 + 2?\nBot:\n\n"


def test_template_that_rewrites_earlier_turns_is_refused(tokenizer: Any) -> None:
    hides_history = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}A: ...\n"
                     "{% else %}{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}")
    other = _with_template(tokenizer, hides_history)
    message = r"^rows\[4\], field 'messages\[2\]': the chat template renders messages 0..1 differently once"
    with pytest.raises(DataError, match=message):
        encode_conversation(other, CHAT, max_length=None, where="rows[4]")


def test_too_long_conversation_errors_or_truncates_the_end(tokenizer: Any) -> None:
    ids, mask = encode_conversation(tokenizer, CHAT, max_length=None)
    message = (rf"^rows\[1\], field 'messages': the conversation is {len(ids)} tokens, over max_length 40 "
               rf"\(raise max_length or allow truncation\) \(expected at most 40 tokens, got {len(ids)}\)")
    with pytest.raises(DataError, match=message):
        encode_conversation(tokenizer, CHAT, max_length=40, where="rows[1]")
    cut = len(ids) - 3
    short_ids, short_mask = encode_conversation(tokenizer, CHAT, max_length=cut, truncate=True)
    assert short_ids == ids[:cut] and short_mask == mask[:cut]
    with pytest.raises(DataError, match=r"field 'messages': no assistant token to train on after truncation"):
        encode_conversation(tokenizer, CHAT, max_length=30, truncate=True)


def test_conversation_without_assistant_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(DataError, match=r"^x:3, field 'messages': no assistant token to train on at all "
                                        r"\(expected at least one assistant token\)"):
        encode_conversation(tokenizer, CHAT[:1], max_length=None, where="x:3")


def test_prompt_completion_is_a_two_turn_conversation(tokenizer: Any) -> None:
    got = encode_prompt_completion(tokenizer, "What is 2 + 2?", "It is 4.", max_length=None)
    assert got == encode_conversation(tokenizer, CHAT[:2], max_length=None)
    ids, mask = encode_prompt_completion(tokenizer, "q", "a", max_length=None, system_prompt="S")
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nS<|im_end|>")
    assert _trained_text(tokenizer, ids, mask) == ["a<|im_end|>"]


# ---------------------------------------------------------------- padding


def test_pad_batch_right_and_left() -> None:
    ids, attention = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and attention.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == torch.long
    ids, attention = pad_batch([[5, 6, 7], [8]], pad_id=2, side="left")
    assert ids.tolist() == [[5, 6, 7], [2, 2, 8]] and attention.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match=r"side must be 'left' or 'right', got 'middle'"):
        pad_batch([[1]], 0, side="middle")
    with pytest.raises(ValueError, match=r"pad_batch needs at least one sequence"):
        pad_batch([], 0)


def test_collate_padded() -> None:
    batch = collate_padded([([1, 2, 3], [0, 1, 1]), ([4], [1])], pad_id=9, side="left")
    assert batch["input_ids"].tolist() == [[1, 2, 3], [9, 9, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1], [0, 0, 1]]


# ---------------------------------------------------------------- packing


def test_pack_first_fit_and_positions() -> None:
    examples = [([1] * 6, [1] * 6), ([2] * 5, [1] * 5), ([3] * 4, [0, 0, 1, 1]), ([4] * 3, [1] * 3)]
    rows = pack(examples, max_length=10)
    assert [r.lengths for r in rows] == [[6, 4], [5, 3]]
    assert rows[0].input_ids == [1] * 6 + [3] * 4
    assert rows[0].loss_mask == [0, 1, 1, 1, 1, 1, 0, 0, 1, 1]  # an example's first token is never a target
    assert rows[1].position_ids == [0, 1, 2, 3, 4, 0, 1, 2]
    message = r"example 1 has 11 tokens; packing needs 1..10 \(truncate when encoding\)"
    with pytest.raises(DataError, match=message):
        pack([([1], [1]), ([1] * 11, [1] * 11)], max_length=10)
    with pytest.raises(ValueError, match=r"example 0: 2 ids but 1 mask values"):
        pack([([1, 2], [1])], max_length=10)


def test_collate_packed_block_diagonal_mask() -> None:
    row = Packed()
    row.add([7, 8], [1, 1])
    row.add([9], [1])
    other = Packed()
    other.add([5, 6, 4, 3], [0, 0, 1, 1])
    batch = collate_packed([row, other], pad_id=0)
    assert batch["input_ids"].tolist() == [[7, 8, 9, 0], [5, 6, 4, 3]]
    assert batch["loss_mask"].tolist() == [[0, 1, 0, 0], [0, 0, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0], [0, 1, 2, 3]]
    allowed = (batch["attention_mask"] == 0).int()
    assert allowed.shape == (2, 1, 4, 4)
    assert allowed[0, 0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert allowed[1, 0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["attention_mask"].min().item() == torch.finfo(torch.float32).min


@pytest.mark.parametrize("attention", ["sdpa", "eager", "position_ids_only"])
def test_packed_forward_equals_separate_forwards(tokenizer: Any, tiny_model: Any, attention: str) -> None:
    conversations = [CHAT, CHAT[:2], [{"role": "user", "content": "Name a colour."},
                                      {"role": "assistant", "content": "Blue."}]]
    examples = [encode_conversation(tokenizer, c, max_length=None) for c in conversations]
    longest = max(len(ids) for ids, _ in examples)
    rows = pack(examples, max_length=longest + 20)
    assert [len(r.lengths) for r in rows] == [1, 2]  # the second row holds two examples, the first pads
    tiny_model.set_attn_implementation("eager" if attention == "eager" else "sdpa")
    tiny_model.eval()
    batch = collate_packed(rows, pad_id=tokenizer.pad_token_id)
    mask = None if attention == "position_ids_only" else batch["attention_mask"]
    with torch.no_grad():
        packed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                            attention_mask=mask).logits
        order = [(0, 0), (1, 0), (1, 1)]  # (row, slot) of examples 0, 1, 2 after first-fit
        for (ids, _), (r, slot) in zip(examples, order):
            start = sum(rows[r].lengths[:slot])
            alone = tiny_model(input_ids=torch.tensor([ids])).logits[0]
            got = packed[r, start : start + len(ids)]
            assert (got - alone).abs().max().item() <= 1e-5
