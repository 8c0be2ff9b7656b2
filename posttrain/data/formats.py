"""Loading and validating datasets: every row is checked before a model is loaded or a token generated.

`load_rows(source, kind)` reads a path (`.jsonl`, `.json`, `.csv`, `.parquet`), an in-memory list
of dicts, or a `datasets.Dataset` / `DatasetDict`, and returns plain dicts holding every original
column (reward functions read extra columns such as `answer` or `tests` by name) plus `"_where"`,
a location string ("data/train.jsonl:17", "rows[3]", "dataset[3]") that later stages put in their
errors. A row that already carries a string `_where` (e.g. rows built by a task) keeps it.

Decisions:
- Line numbers are physical and 1-based: blank lines count and are skipped. JSONL accepts a UTF-8
  BOM, CRLF endings and a last line without newline; it rejects `NaN`/`Infinity` and numbers that
  overflow to infinity (`1e999`), invalid UTF-8, and anything but one JSON object per line.
- A malformed file (bad JSON, bad CSV, bad encoding) stops at the first problem. Row-level problems
  (missing field, wrong type, empty string...) are collected over the whole dataset and reported in
  one error (``errors.data_errors``: every problem with its file:line and field, up to 20 listed).
- A key twice in one JSON object (`{"prompt": "a", "prompt": "b"}`) is refused: which value was
  meant is unknowable (Python's json would silently keep the last).
- A `messages` conversation must not open with an assistant turn (system messages may come first):
  a reply to nothing would be trained on; put such text in a system message or drop it.
- Strings must be non-empty after stripping whitespace (message contents included).
- Duplicate rows are allowed and kept: repeating a row is a common, deliberate way to upweight it.
- CSV cells are strings of any length (a long completion is valid data: Python csv's default
  131,072-character field limit is raised to the file's own length while reading); only the fields
  that cannot be strings are converted: `messages`, `responses` and `ranking` are parsed as JSON,
  `label` accepts true/false/1/0. A CSV `prompt`, `chosen` or `rejected` is therefore always plain
  text.
- `split` only applies to a `DatasetDict`; files and lists have no splits.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError, DataError, data_errors

Row = dict[str, Any]
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_CSV_JSON_FIELDS = ("messages", "responses", "ranking")
_TEXT = "a non-empty string"
_MESSAGES = "a list of {role, content} messages"


@dataclass(frozen=True)
class _Loc:
    """Where a row came from; `where` is the string stored in the row's `_where`."""

    where: str
    file: str | None = None
    line: int | None = None


class _Problem(Exception):
    """A row-level validation failure, turned into a DataError once the row's location is known."""

    def __init__(self, field: str, message: str, expected: str, got: Any = None, has_got: bool = True):
        super().__init__(message)
        self.field, self.message, self.expected = field, message, expected
        self.got, self.has_got = got, has_got


def _type_name(value: Any) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
             list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------- field checks (raise _Problem)


def _require(row: Row, field: str, expected: str) -> Any:
    if field not in row:
        keys = [k for k in row if k != "_where"]
        close = difflib.get_close_matches(field, keys, n=1)
        hint = f"; is '{close[0]}' a misspelling of '{field}'?" if close else ""
        raise _Problem(field, f"missing required field (row has: {', '.join(keys) or 'nothing'}{hint})",
                       expected, has_got=False)
    return row[field]


def _check_text(value: Any, field: str, expected: str = _TEXT) -> None:
    if not isinstance(value, str):
        raise _Problem(field, f"wrong type: {_type_name(value)}", expected, value)
    if not value.strip():
        raise _Problem(field, "empty or whitespace-only string", _TEXT, value)


def _check_messages(value: Any, field: str) -> None:
    if not isinstance(value, list):
        raise _Problem(field, f"wrong type: {_type_name(value)}", _MESSAGES, value)
    if not value:
        raise _Problem(field, "empty message list", _MESSAGES, value)
    for i, message in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise _Problem(at, f"message is a {_type_name(message)}, not an object",
                           "a {role, content} object", message)
        for key in ("role", "content"):
            if key not in message:
                raise _Problem(f"{at}.{key}", "missing in message", "a {role, content} object", message)
        role = message["role"]
        if role not in ROLES:
            close = difflib.get_close_matches(str(role), ROLES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise _Problem(f"{at}.role", f"unknown role{hint}", "one of system, user, assistant", role)
        _check_text(message["content"], f"{at}.content")


def _check_prompt_messages(value: Any, field: str) -> None:
    _check_messages(value, field)
    if value[-1]["role"] == "assistant":
        raise _Problem(f"{field}[{len(value) - 1}].role", "a prompt must not end with an assistant message",
                       "user or system", "assistant")


def _check_prompt(row: Row, field: str = "prompt") -> None:
    value = _require(row, field, f"{_TEXT} or {_MESSAGES}")
    if isinstance(value, list):
        _check_prompt_messages(value, field)
    else:
        _check_text(value, field, f"{_TEXT} or {_MESSAGES}")


def _check_turns(messages: list[dict[str, Any]], field: str, *, last_assistant: bool) -> None:
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise _Problem(field, "no assistant turn: nothing to train on", "at least one assistant message",
                       roles)
    for i in range(1, len(roles)):
        if roles[i] == roles[i - 1] == "assistant":
            raise _Problem(f"{field}[{i}].role", f"two assistant turns in a row (messages {i - 1} and {i})",
                           "user between assistant turns", roles)
    if last_assistant and roles[-1] != "assistant":
        raise _Problem(f"{field}[{len(roles) - 1}].role", "a response must end with an assistant message",
                       "assistant", roles[-1])


# ---------------------------------------------------------------- kinds


def _check_prompts_row(row: Row) -> None:
    if "prompt" in row or "messages" not in row:
        _require(row, "prompt", f"'prompt' ({_TEXT} or {_MESSAGES}) or 'messages'")
        _check_prompt(row, "prompt")
    else:
        _check_prompt_messages(row["messages"], "messages")


def _check_opening(messages: list[dict[str, Any]], field: str) -> None:
    roles = [m["role"] for m in messages]
    first = next((i for i, role in enumerate(roles) if role != "system"), None)
    if first is not None and roles[first] == "assistant":
        raise _Problem(f"{field}[{first}].role", "the conversation opens with an assistant turn, a reply to "
                       "nothing that would be trained on (put the user's message first; only system "
                       "messages may come before it)", "user", "assistant")


def _check_conversation_row(row: Row) -> None:
    if "messages" in row:
        _check_messages(row["messages"], "messages")
        _check_turns(row["messages"], "messages", last_assistant=False)
        _check_opening(row["messages"], "messages")
    elif "prompt" in row:
        _check_prompt(row)
        _check_text(_require(row, "completion", _TEXT), "completion")
    else:
        _require(row, "messages", f"{_MESSAGES} (or 'prompt' + 'completion' strings)")


def _check_response(row: Row, field: str) -> None:
    value = _require(row, field, f"{_TEXT} or {_MESSAGES}")
    if isinstance(value, list):
        _check_messages(value, field)
        _check_turns(value, field, last_assistant=True)
    else:
        _check_text(value, field, f"{_TEXT} or {_MESSAGES}")


def _check_preference_row(row: Row) -> None:
    _check_prompt(row)
    _check_response(row, "chosen")
    _check_response(row, "rejected")
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise _Problem("rejected", "'chosen' and 'rejected' have different forms",
                       f"the same form as 'chosen' ({_type_name(chosen)})", rejected)
    if chosen == rejected:
        raise _Problem("rejected", "identical to 'chosen': the pair carries no preference",
                       "a response different from 'chosen'", rejected)


def _check_ranking_row(row: Row) -> None:
    _check_prompt(row)
    responses = _require(row, "responses", "a list of at least 2 non-empty strings")
    if not isinstance(responses, list) or len(responses) < 2:
        raise _Problem("responses", "not a list of at least 2 responses",
                       "a list of at least 2 non-empty strings", responses)
    for i, response in enumerate(responses):
        _check_text(response, f"responses[{i}]")
    n = len(responses)
    expected = f"a permutation of 0..{n - 1}, best first"
    ranking = _require(row, "ranking", expected)
    if (not isinstance(ranking, list) or any(type(r) is not int for r in ranking)
            or sorted(ranking) != list(range(n))):
        raise _Problem("ranking", "not a permutation of the response indices", expected, ranking)


def _check_unpaired_row(row: Row) -> None:
    _check_prompt(row)
    _check_text(_require(row, "completion", _TEXT), "completion")
    label = _require(row, "label", "a boolean (true = desirable)")
    if not isinstance(label, bool):
        raise _Problem("label", f"wrong type: {_type_name(label)}", "a boolean (true = desirable)", label)


KINDS: dict[str, Callable[[Row], None]] = {
    "prompts": _check_prompts_row,
    "conversations": _check_conversation_row,
    "preferences": _check_preference_row,
    "rankings": _check_ranking_row,
    "unpaired": _check_unpaired_row,
}
"""Dataset kinds and the check each row must pass: prompts (RL, evaluation, best-of-N),
conversations (SFT), preferences (DPO, reward models), rankings, unpaired (KTO-style labels)."""


# ---------------------------------------------------------------- readers (yield (row, location))


class _NonFinite(ValueError):
    pass


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key, self.pos = key, 0


def _object_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _duplicate_error(error: _DuplicateKey, name: str, line: int | None) -> DataError:
    return DataError(f"the key '{error.key}' appears twice in one object: which value was meant is "
                     "unknowable", file=name, line=line, field=error.key, expected="each key once per object")


def _reject_constant(literal: str) -> float:
    raise _NonFinite(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NonFinite(literal)
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                            object_pairs_hook=_object_once)


def _json_problem(text: str, pos: int, message: str, column: int, *, one_per_line: bool) -> str:
    """A plain-words description of a JSON syntax error, naming the usual culprits."""
    before = text[:pos].rstrip()
    if message == "Extra data":
        if one_per_line:
            return f"more than one JSON value on one line (column {column}): JSONL needs one object per line"
        return f"extra data after the JSON value at column {column}"
    if message.startswith("Unterminated string"):
        return f"unterminated string starting at column {column} (truncated?)"
    if pos >= len(text.rstrip()):
        return "the text ends before the JSON value is complete (truncated object?)"
    if before.endswith(",") and text[pos : pos + 1] in ("}", "]"):
        return f"trailing comma before '{text[pos]}' at column {column}"
    return f"malformed JSON at column {column}: {message}"


def _decode_utf8(data: bytes, name: str) -> str:
    """Whole-file decode (BOM allowed); a bad byte is reported with its physical line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"invalid UTF-8 byte {data[error.start]:#04x}", file=name, line=line,
                        expected="UTF-8 text") from None


def _read_jsonl(path: Path) -> Iterator[tuple[Row, _Loc]]:
    name = str(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataError(f"invalid UTF-8 byte {raw[error.start]:#04x} at byte {error.start + 1}",
                                file=name, line=number, expected="UTF-8 text") from None
            if not text.strip():
                continue
            try:
                value = _DECODER.decode(text)
            except _NonFinite as error:
                raise DataError(f"non-finite number {error} is not valid JSON", file=name, line=number,
                                expected="a finite number", got=str(error)) from None
            except _DuplicateKey as error:
                raise _duplicate_error(error, name, number) from None
            except json.JSONDecodeError as error:
                problem = _json_problem(text, error.pos, error.msg, error.colno, one_per_line=True)
                raise DataError(problem, file=name, line=number) from None
            if not isinstance(value, dict):
                raise DataError(f"the line holds a JSON {_type_name(value)}, not an object", file=name,
                                line=number, expected="one JSON object per line", got=value)
            yield value, _Loc(f"{name}:{number}", name, number)


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _decode_at(text: str, i: int) -> tuple[Any, int]:
    """``raw_decode`` at offset ``i``; a duplicate key is located at the start of its value."""
    try:
        return _DECODER.raw_decode(text, i)
    except _DuplicateKey as error:
        error.pos = i
        raise


def _json_elements(text: str) -> list[tuple[Any, int]]:
    """The objects of a `.json` file with their start offsets: a top-level list, or the list under
    a top-level "data" or "rows" key. Raises JSONDecodeError or ValueError on malformed input."""
    i = _skip_space(text, 0)
    if i == len(text):
        return []
    if text.startswith("{", i):
        whole, end = _decode_at(text, i)
        if _skip_space(text, end) != len(text):
            raise json.JSONDecodeError("Extra data", text, _skip_space(text, end))
        key = next((k for k in ("data", "rows") if isinstance(whole.get(k), list)), None)
        if key is None:
            keys = list(whole)
            raise ValueError(f'a .json object must hold its rows under "data" or "rows" (keys: {keys})')
        # The object is valid JSON: walk its members again to find where the chosen list starts.
        i = _skip_space(text, i + 1)
        while True:
            member, i = _DECODER.raw_decode(text, i)
            i = _skip_space(text, _skip_space(text, i) + 1)  # past ':'
            if member == key:
                break
            i = _skip_space(text, _skip_space(text, _DECODER.raw_decode(text, i)[1]) + 1)  # past ','
    elif not text.startswith("[", i):
        raise ValueError('a .json file must hold a list of objects, {"data": [...]} or {"rows": [...]}')
    top_level_list = not text.startswith("{", _skip_space(text, 0))
    elements: list[tuple[Any, int]] = []
    i = _skip_space(text, i + 1)
    while not text.startswith("]", i):
        value, end = _decode_at(text, i)
        elements.append((value, i))
        i = _skip_space(text, end)
        if text.startswith(",", i):
            i = _skip_space(text, i + 1)
            if text.startswith("]", i):
                raise json.JSONDecodeError("trailing comma", text, i)
        elif not text.startswith("]", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
    if top_level_list and _skip_space(text, i + 1) != len(text):
        raise json.JSONDecodeError("Extra data", text, _skip_space(text, i + 1))
    return elements


def _read_json(path: Path) -> Iterator[tuple[Row, _Loc]]:
    name = str(path)
    text = _decode_utf8(path.read_bytes(), name)
    try:
        elements = _json_elements(text)
    except _NonFinite as error:
        raise DataError(f"non-finite number {error} is not valid JSON", file=name, expected="a finite number",
                        got=str(error)) from None
    except _DuplicateKey as error:
        raise _duplicate_error(error, name, text.count("\n", 0, error.pos) + 1) from None
    except json.JSONDecodeError as error:
        problem = _json_problem(text, error.pos, error.msg, error.colno, one_per_line=False)
        raise DataError(problem, file=name, line=error.lineno) from None
    except ValueError as error:
        raise DataError(str(error), file=name, expected="a list of objects") from None
    line, counted = 1, 0
    for value, offset in elements:
        line, counted = line + text.count("\n", counted, offset), offset
        if not isinstance(value, dict):
            raise DataError(f"a row is a JSON {_type_name(value)}, not an object", file=name, line=line,
                            expected="a JSON object", got=value)
        yield value, _Loc(f"{name}:{line}", name, line)


def _csv_cell(field: str, cell: str) -> Any:
    """Converts the cells that cannot be strings; a bad cell stays a string and fails validation."""
    if field == "label" and cell.strip().lower() in ("true", "false", "1", "0"):
        return cell.strip().lower() in ("true", "1")
    if field in _CSV_JSON_FIELDS:
        try:
            return _DECODER.decode(cell)
        except _DuplicateKey as error:
            raise _Problem(field, f"the key '{error.key}' appears twice in one object of the cell",
                           "each key once per object", cell) from None
        except (json.JSONDecodeError, ValueError):
            raise _Problem(field, "CSV cell is not valid JSON", "JSON text (e.g. [...])", cell) from None
    return cell


def _read_csv(path: Path) -> Iterator[tuple[Row, _Loc]]:
    name = str(path)
    text = _decode_utf8(path.read_bytes(), name)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    previous_end = 0
    # no field is longer than the file: raise csv's 131,072-character default that far (a process-wide
    # setting, restored after reading; 2**31 - 1 is the most a C long holds everywhere)
    default_limit = csv.field_size_limit(max(csv.field_size_limit(), min(len(text) + 1, 2**31 - 1)))
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not record:
                continue
            if header is None:
                header = record
                if len(set(header)) != len(header) or not all(h.strip() for h in header):
                    raise DataError("CSV header has empty or duplicate column names", file=name, line=start,
                                    expected="unique column names", got=header)
                continue
            if len(record) != len(header):
                raise DataError(f"the row has {len(record)} fields but the header has {len(header)}",
                                file=name, line=start, expected=f"{len(header)} fields", got=record)
            loc = _Loc(f"{name}:{start}", name, start)
            try:
                yield {h: _csv_cell(h, cell) for h, cell in zip(header, record)}, loc
            except _Problem as problem:
                raise _to_error(problem, loc) from None
    except csv.Error as error:
        raise DataError(f"malformed CSV: {error}", file=name, line=reader.line_num) from None
    finally:
        csv.field_size_limit(default_limit)


def _read_parquet(path: Path) -> Iterator[tuple[Row, _Loc]]:
    import pyarrow.parquet as pq

    name = str(path)
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"cannot read parquet file: {error}", file=name) from None
    for i, row in enumerate(table.to_pylist()):
        yield row, _Loc(f"{name}[{i}]", f"{name}[{i}]")


_READERS: dict[str, Callable[[Path], Iterator[tuple[Row, _Loc]]]] = {
    ".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet,
}


def _read_memory(rows: Iterable[Any], label: str) -> Iterator[tuple[Row, _Loc]]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"a row is a {_type_name(row)}, not a dict", file=f"{label}[{i}]",
                            expected="a dict", got=row)
        where = row.get("_where")
        where = where if isinstance(where, str) else f"{label}[{i}]"
        loc = _Loc(where, where)
        yield dict(row), loc


def _read_dataset(source: Any, split: str) -> Iterator[tuple[Row, _Loc]]:
    import datasets

    label = "dataset"
    if isinstance(source, datasets.DatasetDict | datasets.IterableDatasetDict):
        if split not in source:
            close = difflib.get_close_matches(split, list(source), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"split {split!r} not found{hint}", file=label,
                            expected=f"one of {sorted(source)}", got=split)
        source, label = source[split], f"dataset[{split!r}]"
    return _read_memory(source, label)


def _rows_with_locations(source: Any, split: str) -> tuple[Iterator[tuple[Row, _Loc]], str]:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.suffix.lower() not in _READERS:
            raise DataError("unsupported file type", file=str(path), expected=f"one of {', '.join(SUFFIXES)}",
                            got=path.suffix or "(no suffix)")
        if not path.is_file():
            raise DataError("file not found", file=str(path))
        return _READERS[path.suffix.lower()](path), str(path)
    if isinstance(source, list | tuple):
        return _read_memory(source, "rows"), "rows"
    if type(source).__module__.split(".")[0] == "datasets":
        return _read_dataset(source, split), "dataset"
    raise DataError(f"unsupported data source of type {type(source).__name__}",
                    expected="a path, a list of dicts, or a datasets.Dataset/DatasetDict")


# ---------------------------------------------------------------- public API


def _to_error(problem: _Problem, loc: _Loc) -> DataError:
    return DataError(problem.message, file=loc.file, line=loc.line, field=problem.field,
                     expected=problem.expected, got=problem.got, has_got=problem.has_got)


def load_rows(source: Any, kind: str, *, split: str = "train") -> list[Row]:
    """Every row of `source`, validated as `kind` (a key of KINDS), each with a `_where` string.

    Raises DataError naming file, physical line (or row index), field, expected and got; when
    several rows are invalid, one error reports them all (``errors.data_errors``).
    """
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown data kind {kind!r}{hint} (choose one of {', '.join(KINDS)})")
    records, label = _rows_with_locations(source, split)
    check = KINDS[kind]
    rows: list[Row] = []
    problems: list[tuple[_Problem, _Loc]] = []
    for row, loc in records:
        try:
            check(row)
        except _Problem as problem:
            problems.append((problem, loc))
        row["_where"] = loc.where
        rows.append(row)
    if problems:
        raise data_errors([_to_error(problem, loc) for problem, loc in problems])
    if not rows:
        raise DataError(f"no rows: the {kind} dataset is empty", file=label, expected="at least one row")
    return rows


def write_jsonl(rows: Iterable[Row], path: str | os.PathLike) -> Path:
    """Writes `rows` as JSONL (UTF-8, no `_where` key) atomically: a temp file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            for i, row in enumerate(rows):
                clean = {k: v for k, v in row.items() if k != "_where"}
                try:
                    out.write(json.dumps(clean, ensure_ascii=False, allow_nan=False) + "\n")
                except (TypeError, ValueError) as error:
                    raise DataError(f"row cannot be written as JSON: {error}", file=str(path),
                                    row=i) from None
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
