"""``posttrain contamination``: word n-gram overlap between a training set and a benchmark.

    posttrain contamination train=data/sft.jsonl benchmark=humaneval
    posttrain contamination train=arithmetic benchmark=arithmetic options="{ops: [+, -]}"

Method (the contamination analysis of GPT-3, Brown et al. 2020, arXiv:2005.14165, appendix C): a
benchmark item is contaminated when one of its n-grams (n = 13 words by default) also occurs in a
training row. Text is normalised first: lowercased and split into runs of letters and digits;
punctuation is dropped, except the operators + - * / = ^ % < >, kept as words so that "47 + 38" and
"47 - 38" stay different.

Boilerplate: an n-gram shared by more than ``boilerplate_fraction`` of the benchmark's items (and by
at least two) belongs to the prompt template ("give the final answer as a number inside ..."), not
to any item's content. An item is identified by the n-grams of its content, the words outside
boilerplate n-grams; content with no run of n words (a short question inside a long template:
"what is 47 + 38") must occur whole, and such matches are flagged ``short`` (a few words match more
easily than 13). Without this, every templated item would look contaminated by every training row
written with the same template, and n-grams straddling the template and one operand ("+ 53 give
the final answer ...") would match unrelated problems.

Text compared: on the benchmark side, HumanEval's prompt and canonical solution, or a task's or a
file's prompt (message contents) and gold answer, as one text per item; on the training side every
string of a row (prompt, completion, messages, chosen, rejected, answer...), each on its own, so an
n-gram never spans two fields.

Writes ``<output_dir>/<name>/contamination.jsonl`` (one line per contaminated item: benchmark id,
the first matching n-gram, where the first training row holding it comes from, e.g. file:line, how
many training rows and how many of the item's n-grams match) and ``summary.json``; prints a summary.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from posttrain.config import DataConfig
from posttrain.data.formats import KINDS, SUFFIXES, load_rows, write_jsonl
from posttrain.data.tasks import TASKS
from posttrain.errors import DataError
from posttrain.tracking import make_run_dir

AUTO_KINDS = ("conversations", "preferences", "rankings", "unpaired", "prompts")
_WORD = re.compile(r"[^\W_]+|[-+*/=^%<>]")


@dataclass
class Config:
    train: str = "arithmetic"
    """Training data: a file (.jsonl, .json, .csv, .parquet) or a procedural task (arithmetic)."""
    train_kind: str = "auto"
    """Dataset kind of a training file (prompts, conversations, preferences, rankings, unpaired), or auto:
    the first that fits; for a task: prompts, or conversations (its worked demonstrations)."""
    train_size: int = 5000
    """Rows drawn from a procedural task's train split (as a recipe's data.train_size)."""
    benchmark: str = "humaneval"
    """humaneval, a procedural task's test split (arithmetic), or a data file of prompt rows."""
    benchmark_size: int = 0
    """Benchmark items: the first N of humaneval or a file (0: all); N drawn from a task's test split
    (0: 100, as a recipe's data.eval_size)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of a procedural task, used on both sides (as a recipe's data.options)."""
    ngram: int = 13
    """Words per n-gram (13 as in GPT-3's analysis)."""
    boilerplate_fraction: float = 0.5
    """N-grams shared by more than this fraction of the benchmark's items are template text, ignored
    (1 keeps every n-gram)."""
    seed: int = 0
    """Seed of a procedural task's draws (as a recipe's run.seed)."""
    output_dir: str = "evals"
    """Folder holding the report folder."""
    name: str = ""
    """Report folder name (default: contamination-<date>-<time>)."""
    overwrite: bool = False
    """Replace an existing report folder of the same name."""

    def check(self) -> list[str]:
        problems = []
        if self.ngram < 1:
            problems.append(f"'ngram' must be >= 1; got {self.ngram}")
        if not 0 < self.boilerplate_fraction <= 1:
            problems.append(f"'boilerplate_fraction' must be in (0, 1]; got {self.boilerplate_fraction}")
        if self.train_kind != "auto" and self.train_kind not in KINDS:
            problems.append(f"'train_kind' must be auto or one of {', '.join(KINDS)}; "
                            f"got {self.train_kind!r}")
        if self.train_size < 1 or self.benchmark_size < 0:
            problems.append(f"'train_size' must be >= 1 and 'benchmark_size' >= 0; got {self.train_size} "
                            f"and {self.benchmark_size}")
        for key in ("train", "benchmark"):
            value = getattr(self, key)
            known = value in TASKS or (key == "benchmark" and value == "humaneval")
            if not known and Path(value).suffix.lower() not in SUFFIXES:
                names = ", ".join([*TASKS, *(["humaneval"] if key == "benchmark" else [])])
                problems.append(f"'{key}' must be {names} or a data file ({', '.join(SUFFIXES)}); "
                                f"got {value!r}")
        return problems


# ------------------------------------------------------------------------------- pure functions


def words(text: str) -> list[str]:
    """Normalised words: lowercase runs of letters and digits, and the operators + - * / = ^ % < >."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Every run of n consecutive tokens, in order (none when there are fewer than n)."""
    if n < 1:
        raise ValueError(f"n-grams need n >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def boilerplate(item_grams: Sequence[set[tuple[str, ...]]], fraction: float) -> set[tuple[str, ...]]:
    """N-grams found in more than ``fraction`` of the items and in at least two of them."""
    counts = Counter(gram for grams in item_grams for gram in grams)
    limit = fraction * len(item_grams)
    return {gram for gram, count in counts.items() if count >= 2 and count > limit}


def content_grams(tokens: Sequence[str], ignored: set[tuple[str, ...]], n: int) -> set[tuple[str, ...]]:
    """The n-grams that identify an item: those of its content, the runs of words outside every
    boilerplate n-gram. Content with no run of n words is identified by its longest run, whole
    ("what is 47 + 38" once the template around it is set aside)."""
    covered = [False] * len(tokens)
    for i, gram in enumerate(ngrams(tokens, n)):
        if gram in ignored:
            covered[i:i + n] = [True] * n
    runs: list[list[str]] = [[]]
    for token, is_boilerplate in zip(tokens, covered):
        if is_boilerplate:
            runs.append([])
        else:
            runs[-1].append(token)
    long = {gram for run in runs for gram in ngrams(run, n)}
    longest = max(runs, key=len)
    return long or ({tuple(longest)} if longest else set())


@dataclass
class Overlap:
    """A contaminated benchmark item."""

    benchmark_id: str
    ngram: str
    """The first matching n-gram found (normalised words joined by spaces)."""
    train_where: str
    """Where the first training row holding it comes from (file:line, arithmetic:train[i], ...)."""
    train_rows: int = 0
    """Training rows holding at least one of the item's n-grams."""
    matched_ngrams: int = 0
    item_ngrams: int = 0
    """The item's identifying n-grams (see content_grams)."""
    short: bool = False
    """The item's content has fewer than n words and matched whole (a few words match more easily)."""
    grams: set[tuple[str, ...]] = field(default_factory=set, repr=False)

    def record(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "grams"}
        out["overlap"] = self.matched_ngrams / self.item_ngrams if self.item_ngrams else 0.0
        return out


def find_overlaps(benchmark: Sequence[tuple[str, str]], training: Iterable[tuple[str, Sequence[str]]],
                  n: int = 13, boilerplate_fraction: float = 0.5) -> tuple[list[Overlap], dict[str, Any]]:
    """Benchmark items ``(id, text)`` sharing an n-gram with training rows ``(where, [texts])``.

    Returns the contaminated items in benchmark order and the counts: items, contaminated,
    fraction (contaminated / items), training rows scanned, boilerplate n-grams ignored.
    """
    tokens = [words(text) for _, text in benchmark]
    ignored = boilerplate([set(ngrams(t, n)) for t in tokens], boilerplate_fraction)
    item_grams = [content_grams(t, ignored, n) for t in tokens]
    index: dict[int, dict[tuple[str, ...], list[int]]] = {}  # length -> n-gram -> item indices
    for i, grams in enumerate(item_grams):
        for gram in grams:
            index.setdefault(len(gram), {}).setdefault(gram, []).append(i)
    starts = {length: {gram[0] for gram in grams} for length, grams in index.items()}
    found: dict[int, Overlap] = {}
    rows = 0
    for where, texts in training:
        rows += 1
        for item in _row_matches(texts, index, starts, found, where, benchmark):
            found[item].train_rows += 1
    overlaps = []
    for i in sorted(found):
        hit = found[i]
        hit.matched_ngrams, hit.item_ngrams = len(hit.grams), len(item_grams[i])
        hit.short = any(len(gram) < n for gram in item_grams[i])
        overlaps.append(hit)
    stats = {"items": len(benchmark), "contaminated": len(overlaps),
             "fraction": len(overlaps) / len(benchmark) if benchmark else 0.0, "training_rows": rows,
             "boilerplate_ngrams_ignored": len(ignored), "n": n}
    return overlaps, stats


def _row_matches(texts: Sequence[str], index: dict[int, dict[tuple[str, ...], list[int]]],
                 starts: dict[int, set[str]], found: dict[int, Overlap], where: str,
                 benchmark: Sequence[tuple[str, str]]) -> set[int]:
    """Record the n-grams of one training row that benchmark items hold; return those items."""
    items: set[int] = set()
    for text in texts:
        tokens = words(text)
        for length, grams in index.items():
            first = starts[length]  # most windows start with a word no benchmark n-gram starts with
            for i in range(len(tokens) - length + 1):
                if tokens[i] not in first:
                    continue
                gram = tuple(tokens[i:i + length])
                for item in grams.get(gram, ()):
                    hit = found.setdefault(item, Overlap(benchmark[item][0], " ".join(gram), where))
                    hit.grams.add(gram)
                    items.add(item)
    return items


def row_texts(value: Any) -> list[str]:
    """Every string in a row (messages' contents, lists, nested objects); not roles, not `_` keys."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() if key != "role" and not str(key).startswith("_")
                for text in row_texts(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in row_texts(item)]
    return []


# ------------------------------------------------------------------------------------- loading


def benchmark_items(config: Config) -> list[tuple[str, str]]:
    """``(id, text)`` per benchmark item (see the module docstring for which text)."""
    if config.benchmark == "humaneval":
        from posttrain.eval.humaneval import problems

        return [(row["task_id"], row["prompt"] + "\n" + row["canonical_solution"])
                for row in problems(config.benchmark_size)]
    if config.benchmark in TASKS:
        from posttrain.data.sources import load_split

        data = DataConfig(train=config.benchmark, eval_size=config.benchmark_size or DataConfig.eval_size,
                          options=dict(config.options))
        rows = load_split(data, "eval", "prompts", config.seed)
    else:
        rows = load_rows(config.benchmark, "prompts")
        rows = rows[: config.benchmark_size] if config.benchmark_size else rows
    items = []
    for row in rows:
        prompt = row["prompt"] if "prompt" in row else row.get("messages")
        answer = row.get("answer")
        texts = row_texts(prompt) + ([str(answer)] if isinstance(answer, str | int | float) else [])
        items.append((row["_where"], "\n".join(texts)))
    return items


def training_rows(config: Config) -> list[dict[str, Any]]:
    """The training rows: a task's train split as a recipe draws it, or every row of a file."""
    if config.train in TASKS:
        from posttrain.data.sources import load_split

        data = DataConfig(train=config.train, train_size=config.train_size, options=dict(config.options))
        kind = "conversations" if config.train_kind == "conversations" else "prompts"
        return load_split(data, "train", kind, config.seed)
    if config.train_kind != "auto":
        return load_rows(config.train, config.train_kind)
    errors: dict[str, DataError] = {}
    for kind in AUTO_KINDS:
        try:
            return load_rows(config.train, kind)
        except DataError as error:
            errors[kind] = error
    first = next(iter(errors.values()))
    if len({str(error) for error in errors.values()}) == 1:
        raise first  # a problem with the file itself (missing, bad JSON): the same for every kind
    tried = "".join(f"\n  as {kind}: {str(error).splitlines()[0]}" for kind, error in errors.items())
    raise DataError(f"no dataset kind fits every row (set train_kind to see one kind's full report):{tried}",
                    file=config.train)


def run(config: Config) -> Path:
    """Compare the training data with the benchmark; write the report folder and return it."""
    items = benchmark_items(config)
    rows = training_rows(config)
    out_dir = make_run_dir(config.output_dir, config.name or None, "contamination", resume=False,
                           overwrite=config.overwrite)
    training = ((str(row.get("_where", f"row {i}")), row_texts(row)) for i, row in enumerate(rows))
    overlaps, stats = find_overlaps(items, training, config.ngram, config.boilerplate_fraction)
    write_jsonl([overlap.record() for overlap in overlaps], out_dir / "contamination.jsonl")
    summary = {"train": config.train, "benchmark": config.benchmark, **stats}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[contamination] {stats['contaminated']} of {stats['items']} {config.benchmark} items "
          f"({stats['fraction']:.1%}) share a {config.ngram}-gram with the {stats['training_rows']} rows of "
          f"{config.train} ({stats['boilerplate_ngrams_ignored']} boilerplate n-grams ignored)")
    for overlap in overlaps[:20]:
        more = f" (+{overlap.train_rows - 1} more rows)" if overlap.train_rows > 1 else ""
        print(f"  {overlap.benchmark_id}: \"{overlap.ngram}\" in {overlap.train_where}{more}, "
              f"{overlap.matched_ngrams}/{overlap.item_ngrams} of its n-grams")
    if len(overlaps) > 20:
        print(f"  ... {len(overlaps) - 20} more in {out_dir / 'contamination.jsonl'}")
    return out_dir


train = run  # the CLI calls every command's train(config)
