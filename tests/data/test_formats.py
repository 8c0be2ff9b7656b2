"""load_rows / write_jsonl: every source type, every kind, and every error message they raise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from posttrain.data.formats import KINDS, load_rows, write_jsonl
from posttrain.errors import ConfigError, DataError


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _jsonl(tmp_path: Path, *lines: str) -> Path:
    return _write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")


# ---------------------------------------------------------------- JSONL syntax


def test_jsonl_bom_crlf_blank_lines_no_final_newline_and_extra_columns(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf{"prompt": "a", "answer": "1"}\r\n\r\n  \r\n{"prompt": "b", "tests": [1]}'
    rows = load_rows(_write(tmp_path, "d.jsonl", data), "prompts")
    assert [r["prompt"] for r in rows] == ["a", "b"]
    assert rows[0]["answer"] == "1" and rows[1]["tests"] == [1]
    # Physical lines: the second row is on line 4 because the blank lines count.
    assert [r["_where"] for r in rows] == [f"{tmp_path}/d.jsonl:1", f"{tmp_path}/d.jsonl:4"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a"',
         r"d.jsonl:2: the text ends before the JSON value is complete \(truncated object\?\)"),
        ('{"prompt": "abc', r"d.jsonl:2: unterminated string starting at column 12"),
        ('{"prompt": "a",}', r"d.jsonl:2: trailing comma before '}' at column 16"),
        ('{"prompt": "a"} {"prompt": "b"}', r"d.jsonl:2: more than one JSON value on one line \(column 17\)"),
        ('{"prompt": "a"}{"prompt": "b"}', r"JSONL needs one object per line"),
        ('["a", "b"]', r"d.jsonl:2: the line holds a JSON list, not an object \(expected one JSON object "
                       r"per line, got \['a', 'b'\]\)"),
        ('"just text"', r"d.jsonl:2: the line holds a JSON string, not an object"),
        ('{"prompt": "a", "x": NaN}',
         r"d.jsonl:2: non-finite number NaN is not valid JSON \(expected a finite number, got 'NaN'\)"),
        ('{"prompt": "a", "x": -Infinity}', r"non-finite number -Infinity"),
        ('{"prompt": "a", "x": 1e999}', r"non-finite number 1e999"),
        ('{"prompt": "a" "x": 1}', r"d.jsonl:2: malformed JSON at column 16: Expecting ',' delimiter"),
    ],
)
def test_jsonl_syntax_errors_name_the_physical_line(tmp_path: Path, line: str, message: str) -> None:
    path = _jsonl(tmp_path, '{"prompt": "ok"}', line, '{"prompt": "ok"}')
    with pytest.raises(DataError, match=message) as info:
        load_rows(path, "prompts")
    assert info.value.line == 2 and info.value.file == str(path)


def test_jsonl_invalid_utf8_names_line_and_byte(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.jsonl", b'{"prompt": "a"}\n\n{"prompt": "\xff"}\n')
    message = r"d.jsonl:3: invalid UTF-8 byte 0xff at byte 13 \(expected UTF-8 text\)"
    with pytest.raises(DataError, match=message):
        load_rows(path, "prompts")


def test_empty_dataset_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"d.jsonl: no rows: the prompts dataset is empty"):
        load_rows(_write(tmp_path, "d.jsonl", "\n  \n"), "prompts")
    with pytest.raises(DataError, match=r"rows: no rows: the conversations dataset is empty"):
        load_rows([], "conversations")


# ---------------------------------------------------------------- field validation


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"promt": "a"}, r"field 'prompt': missing required field \(row has: promt; is 'promt' a misspelling "
                         r"of 'prompt'\?\) "
                         r"\(expected 'prompt' \(a non-empty string or a list of \{role, content\} "
                         r"messages\) or 'messages'\)$"),
        ({"prompt": 3}, r"field 'prompt': wrong type: number \(expected a non-empty string or .*, got 3\)"),
        ({"prompt": None}, r"field 'prompt': wrong type: null \(expected a non-empty string or a list of "
                           r"\{role, content\} messages, got None\)"),
        ({"prompt": {"a": 1}}, r"field 'prompt': wrong type: object"),
        ({"prompt": "  \n"},
         r"field 'prompt': empty or whitespace-only string \(expected a non-empty string, got '  \\n'\)"),
        ({"prompt": ""}, r"field 'prompt': empty or whitespace-only string"),
        ({"prompt": []}, r"field 'prompt': empty message list"),
        ({"prompt": ["hi"]}, r"field 'prompt\[0\]': message is a string, not an object"),
        ({"prompt": [{"role": "user"}]}, r"field 'prompt\[0\].content': missing in message"),
        ({"prompt": [{"role": "usr", "content": "x"}]},
         r"field 'prompt\[0\].role': unknown role; did you mean 'user'\? \(expected one of system, user, "
         r"assistant, got 'usr'\)"),
        ({"prompt": [{"role": "tool", "content": "x"}]}, r"field 'prompt\[0\].role': unknown role \("),
        ({"prompt": [{"role": "user", "content": 5}]}, r"field 'prompt\[0\].content': wrong type: number"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
         r"field 'prompt\[1\].role': a prompt must not end with an assistant message"),
        ({"messages": [{"role": "assistant", "content": "a"}]},
         r"field 'messages\[0\].role': a prompt must not end with an assistant message"),
    ],
)
def test_prompt_rows_errors(row: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=r"^rows\[0\], " + message):
        load_rows([row], "prompts")


def test_prompt_row_accepts_messages_and_prompt_messages() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    rows = load_rows([{"messages": messages}, {"prompt": messages, "name": "x"}], "prompts")
    assert rows[1]["prompt"] == messages and rows[1]["name"] == "x"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": [{"role": "user", "content": "q"}]},
         r"field 'messages': no assistant turn: nothing to train on"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                       {"role": "assistant", "content": "b"}]},
         r"field 'messages\[2\].role': two assistant turns in a row \(messages 1 and 2\)"),
        ({"prompt": "q"}, r"field 'completion': missing required field"),
        ({"prompt": "q", "completion": ["a"]}, r"field 'completion': wrong type: list"),
        ({"text": "q"}, r"field 'messages': missing required field \(row has: text\) \(expected a list of "
                        r"\{role, content\} messages \(or 'prompt' \+ 'completion' strings\)\)"),
    ],
)
def test_conversation_rows_errors(row: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=r"^rows\[0\], " + message):
        load_rows([row], "conversations")


def test_conversation_rows_accept_both_forms() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]
    rows = load_rows([{"messages": messages}, {"prompt": "q", "completion": "a"}], "conversations")
    assert len(rows) == 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "chosen": "a", "rejected": "a"},
         r"field 'rejected': identical to 'chosen': the pair carries no preference"),
        ({"prompt": "q", "chosen": "a"}, r"field 'rejected': missing required field"),
        ({"prompt": "q", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]},
         r"field 'rejected': 'chosen' and 'rejected' have different forms \(expected the same form as "
         r"'chosen' \(string\)"),
        ({"prompt": "q", "chosen": [{"role": "user", "content": "b"}], "rejected": "b"},
         r"field 'chosen': no assistant turn"),
        ({"prompt": "q", "chosen": "a", "rejected": 0}, r"field 'rejected': wrong type: number"),
    ],
)
def test_preference_rows_errors(row: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=r"^rows\[0\], " + message):
        load_rows([row], "preferences")


def test_preference_rows_accept_messages() -> None:
    chosen = [{"role": "assistant", "content": "good"}]
    rejected = [{"role": "assistant", "content": "bad"}]
    rows = load_rows([{"prompt": "q", "chosen": chosen, "rejected": rejected}], "preferences")
    assert rows[0]["chosen"] == chosen


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "responses": ["a"], "ranking": [0]},
         r"field 'responses': not a list of at least 2 responses"),
        ({"prompt": "q", "responses": ["a", " "], "ranking": [0, 1]},
         r"field 'responses\[1\]': empty or whitespace-only string"),
        ({"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]},
         r"field 'ranking': not a permutation of the response indices \(expected a permutation of 0..1, "
         r"best first, got \[0, 0\]\)"),
        ({"prompt": "q", "responses": ["a", "b"], "ranking": [True, False]},
         r"field 'ranking': not a permutation"),
        ({"prompt": "q", "responses": ["a", "b"]}, r"field 'ranking': missing required field"),
    ],
)
def test_ranking_rows_errors(row: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=r"^rows\[0\], " + message):
        load_rows([row], "rankings")


def test_unpaired_rows() -> None:
    assert load_rows([{"prompt": "q", "completion": "a", "label": False}], "unpaired")[0]["label"] is False
    with pytest.raises(DataError, match=r"field 'label': wrong type: number \(expected a boolean \(true = "
                                        r"desirable\), got 1\)"):
        load_rows([{"prompt": "q", "completion": "a", "label": 1}], "unpaired")


def test_errors_over_many_rows_are_all_reported_with_line_and_field(tmp_path: Path) -> None:
    lines = ['{"prompt": "ok"}'] + ['{"prompt": ""}'] * 8 + ['{"prompt": 3}']
    path = _jsonl(tmp_path, *lines)
    with pytest.raises(DataError, match=r"d.jsonl:2, field 'prompt': empty") as info:
        load_rows(path, "prompts")
    text = str(info.value)
    assert "\n  8 more problems:\n" in text
    for line in range(3, 10):
        assert f"\n  - {path}:{line}, field 'prompt': empty or whitespace-only string" in text
    assert f"\n  - {path}:10, field 'prompt': wrong type: number" in text
    assert info.value.field == "prompt" and info.value.line == 2 and len(info.value.problems) == 9


def test_more_than_twenty_further_problems_are_counted(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, *['{"prompt": ""}'] * 30)
    with pytest.raises(DataError) as info:
        load_rows(path, "prompts")
    assert str(info.value).count("\n  - ") == 21 and str(info.value).endswith("\n  - and 9 more")


def test_duplicates_are_kept_and_unknown_kind_suggests() -> None:
    assert len(load_rows([{"prompt": "a"}, {"prompt": "a"}], "prompts")) == 2
    with pytest.raises(ConfigError, match=r"unknown data kind 'preference'; did you mean 'preferences'\?"):
        load_rows([{"prompt": "a"}], "preference")
    assert set(KINDS) == {"prompts", "conversations", "preferences", "rankings", "unpaired"}


# ---------------------------------------------------------------- other sources


def test_in_memory_rows_are_copied_and_keep_an_existing_where() -> None:
    source = [{"prompt": "a"}, {"prompt": "b", "_where": "arithmetic:train[7]"}]
    rows = load_rows(source, "prompts")
    assert [r["_where"] for r in rows] == ["rows[0]", "arithmetic:train[7]"]
    assert "_where" not in source[0]
    with pytest.raises(DataError, match=r"^arithmetic:train\[7\], field 'prompt': empty"):
        load_rows([{"prompt": "", "_where": "arithmetic:train[7]"}], "prompts")
    with pytest.raises(DataError, match=r"^rows\[1\]: a row is a string, not a dict"):
        load_rows([{"prompt": "a"}, "b"], "prompts")


def test_json_file_list_and_wrapped_with_physical_lines(tmp_path: Path) -> None:
    text = '[\n  {"prompt": "a"},\n\n  {"prompt": "b"}\n]\n'
    rows = load_rows(_write(tmp_path, "d.json", text), "prompts")
    assert [r["_where"].rsplit(":", 1)[1] for r in rows] == ["2", "4"]
    wrapped = '{"meta": {"v": [1, 2]},\n "rows": [\n {"prompt": "a"},\n {"prompt": "b"}]}'
    rows = load_rows(_write(tmp_path, "w.json", "\ufeff" + wrapped), "prompts")
    assert [r["_where"].rsplit(":", 1)[1] for r in rows] == ["3", "4"]
    rows = load_rows(_write(tmp_path, "x.json", '{"data": [{"prompt": "c"}]}'), "prompts")
    assert rows[0]["prompt"] == "c"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[\n {"prompt": "a"},\n]', r"x.json:3: trailing comma before ']' at column 1"),
        ('[\n {"prompt": "a"}\n {"prompt": "b"}]', r"x.json:3: malformed JSON at column 2: Expecting ','"),
        ('[\n {"prompt": "a"}', r"x.json:2: the text ends before the JSON value is complete"),
        ('[\n {"prompt": NaN}]', r"x.json: non-finite number NaN is not valid JSON"),
        ('{"items": []}', r'x.json: a .json object must hold its rows under "data" or "rows" '
                          r"\(keys: \['items'\]\) \(expected a list of objects\)"),
        ('"text"', r'x.json: a .json file must hold a list of objects, \{"data": \[...\]\} or'),
        ('[{"prompt": "a"}] []', r"x.json:1: extra data after the JSON value at column 19"),
        ('[\n1]', r"x.json:2: a row is a JSON number, not an object"),
        ('[{"prompt": 1}]', r"x.json:1, field 'prompt': wrong type: number"),
        ("", r"x.json: no rows"),
    ],
)
def test_json_file_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_rows(_write(tmp_path, "x.json", text), "prompts")


def test_csv_converts_structured_cells_and_counts_physical_lines(tmp_path: Path) -> None:
    text = 'prompt,completion,label,messages\r\n"multi\r\nline",a,true,[]\r\n\r\nq,b,0,"[{""role"": 1}]"\r\n'
    rows = load_rows(_write(tmp_path, "d.csv", text), "unpaired")
    assert rows[0]["prompt"] == "multi\r\nline" and rows[0]["label"] is True and rows[0]["messages"] == []
    assert rows[1]["label"] is False and rows[1]["messages"] == [{"role": 1}]
    assert [r["_where"].rsplit(":", 1)[1] for r in rows] == ["2", "5"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prompt,completion,label\nq,a,maybe\n", r"d.csv:2, field 'label': wrong type: string"),
        ("prompt,completion,label\nq,a\n", r"d.csv:2: the row has 2 fields but the header has 3"),
        ("prompt,prompt\na,b\n", r"d.csv:1: CSV header has empty or duplicate column names"),
        ('prompt,completion,label\nq,"a"b,true\n', r"d.csv:2: malformed CSV: "),
        ("prompt,messages,completion,label\nq,[oops,a,true\n",
         r"d.csv:2, field 'messages': CSV cell is not valid JSON"),
        (b"prompt,completion,label\nq,\xfe,true\n", r"d.csv:2: invalid UTF-8 byte 0xfe"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str | bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_rows(_write(tmp_path, "d.csv", text), "unpaired")


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["1", "2"]}), path)
    rows = load_rows(path, "prompts")
    assert rows[1] == {"prompt": "b", "answer": "2", "_where": f"{path}[1]"}
    pq.write_table(pa.table({"prompt": ["a", None]}), path)
    with pytest.raises(DataError, match=r"d.parquet\[1\], field 'prompt': wrong type: null"):
        load_rows(path, "prompts")
    bad = _write(tmp_path, "bad.parquet", "not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: cannot read parquet file"):
        load_rows(bad, "prompts")


def test_datasets_dataset_and_split() -> None:
    import datasets

    train = datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}])
    test = datasets.Dataset.from_list([{"prompt": ""}])
    rows = load_rows(train, "prompts")
    assert [r["_where"] for r in rows] == ["dataset[0]", "dataset[1]"]
    both = datasets.DatasetDict({"train": train, "test": test})
    assert load_rows(both, "prompts")[1]["prompt"] == "b"
    with pytest.raises(DataError, match=r"dataset\['test'\]\[0\], field 'prompt': empty"):
        load_rows(both, "prompts", split="test")
    with pytest.raises(DataError, match=r"split 'tset' not found; did you mean 'test'\? \(expected one of "
                                        r"\['test', 'train'\], got 'tset'\)"):
        load_rows(both, "prompts", split="tset")


def test_source_errors(tmp_path: Path) -> None:
    message = r"d.txt: unsupported file type \(expected one of .jsonl, .json, .csv, .parquet, got '.txt'\)"
    with pytest.raises(DataError, match=message):
        load_rows(tmp_path / "d.txt", "prompts")
    with pytest.raises(DataError, match=r"missing.jsonl: file not found"):
        load_rows(str(tmp_path / "missing.jsonl"), "prompts")
    with pytest.raises(DataError, match=r"unsupported data source of type int"):
        load_rows(3, "prompts")


# ---------------------------------------------------------------- write_jsonl


def test_write_jsonl_round_trip_drops_where(tmp_path: Path) -> None:
    rows = load_rows([{"prompt": "é", "answer": "1"}], "prompts")
    path = write_jsonl(rows, tmp_path / "sub" / "out.jsonl")
    assert path.read_text(encoding="utf-8") == '{"prompt": "é", "answer": "1"}\n'
    assert load_rows(path, "prompts")[0]["prompt"] == "é"


def test_write_jsonl_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    message = r"out.jsonl, row 1: row cannot be written as JSON: Out of range float"
    with pytest.raises(DataError, match=message):
        write_jsonl([{"prompt": "a"}, {"prompt": "b", "x": float("nan")}], path)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


# ---------------------------------------------------------------- long data kept, ambiguous data refused


def test_csv_cell_longer_than_pythons_default_field_limit_loads(tmp_path: Path) -> None:
    """A long completion is valid data: Python csv refuses fields over 131,072 characters by default."""
    import csv

    long = "word " * 60_000  # 300,000 characters
    before = csv.field_size_limit()
    path = _write(tmp_path, "d.csv", f'prompt,completion\nq,"{long}"\nr,short\n')
    rows = load_rows(path, "conversations")
    assert rows[0]["completion"] == long and rows[1]["_where"] == f"{path}:3"
    assert csv.field_size_limit() == before  # the process-wide limit is put back


@pytest.mark.parametrize(("name", "text", "where", "key"), [
    ("d.jsonl", '{"prompt": "ok"}\n\n{"prompt": "a", "prompt": "b"}\n', "d.jsonl:3", "prompt"),
    ("d.jsonl", '{"messages": [{"role": "user", "content": "a", "content": "b"}]}\n', "d.jsonl:1", "content"),
    ("d.json", '[\n  {"prompt": "ok"},\n  {"prompt": "a",\n   "prompt": "b"}\n]\n', "d.json:3", "prompt"),
    ("d.json", '{"rows": [{"prompt": "a"}], "rows": []}', "d.json:1", "rows"),
])
def test_a_key_twice_in_one_object_is_refused(tmp_path: Path, name: str, text: str, where: str,
                                              key: str) -> None:
    path = _write(tmp_path, name, text)
    message = (rf"{where}, field '{key}': the key '{key}' appears twice in one object: which value was meant "
               r"is unknowable \(expected each key once per object\)")
    with pytest.raises(DataError, match=message):
        load_rows(path, "prompts")


def test_a_key_twice_in_a_csv_json_cell_is_refused(tmp_path: Path) -> None:
    cell = '"[{""role"": ""user"", ""role"": ""assistant"", ""content"": ""hi""}]"'
    path = _write(tmp_path, "d.csv", f"messages\n{cell}\n")
    with pytest.raises(DataError, match=r"d.csv:2, field 'messages': the key 'role' appears twice in one "
                                        r"object of the cell"):
        load_rows(path, "conversations")


def test_conversation_opening_with_an_assistant_turn_is_refused() -> None:
    def chat(*roles: str) -> dict[str, Any]:
        return {"messages": [{"role": role, "content": f"{role} text"} for role in roles]}

    message = (r"^rows\[0\], field 'messages\[{i}\].role': the conversation opens with an assistant turn, a "
               r"reply to nothing that would be trained on \(put the user's message first; only system "
               r"messages may come before it\) \(expected user, got 'assistant'\)")
    with pytest.raises(DataError, match=message.format(i=0)):
        load_rows([chat("assistant", "user", "assistant")], "conversations")
    with pytest.raises(DataError, match=message.format(i=1)):
        load_rows([chat("system", "assistant", "user", "assistant")], "conversations")
    fine = [chat("system", "user", "assistant"), chat("user", "assistant")]
    assert len(load_rows(fine, "conversations")) == 2
    # a response given as messages starts with its assistant turn: that is its form, not an opening
    pair = {"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": [
        {"role": "assistant", "content": "b"}]}
    assert load_rows([pair], "preferences")[0]["chosen"][0]["role"] == "assistant"
