"""``posttrain label``: sample candidates, label them through the labelling page, export preference pairs.

The sampling and labelling half of RLHF (InstructGPT, arXiv:2203.02155, step 2) as one command and
pipeline stage (``recipe: label``), with a scripted labeller standing in for the people at the page:

1. Prompts from ``data`` (a task's train split or a prompts file, as the recipes read them).
2. ``n`` candidates per prompt, sampled by ``posttrain collect sample``'s function from ``model`` into
   ``<run>/collection.db``.
3. The real labelling server (``python -m posttrain.collect serve --mode MODE``) started on a free
   port of 127.0.0.1, and every item labelled over its HTTP API (``/api/next``, ``/api/label``) by
   ``labeller``: a judge ``path/file.py:function(prompt, answer_a, answer_b) -> "a" | "b" | "tie"``
   (the signature of ``posttrain eval --judge``, so the same rule can judge the trained policy) or
   ``reward_model:PATH``. In ``ab`` mode an item is one pair of candidates and the verdict is the
   label (a tie carries no preference and gives no pair); in ``rank`` mode the candidates are sorted
   by the judge's pairwise verdicts (tied ones keep their sampled order, so they make pairs).
4. The labels exported (``posttrain collect export``'s function) and split by prompt: a seeded
   ``held_out`` fraction of the prompts gives ``held_out_pairs.jsonl`` (a reward model's held-out
   accuracy on the labeller's own pairs), the rest ``pairs.jsonl``, after the pairs of ``previous``
   rounds' files (Llama 2, arXiv:2307.09288 section 3.2.2: the reward model retrained on all the
   labels so far, each round's sampled from the latest policy).
5. ``summary.json`` / ``summary.md``: prompts, labels, the verdicts' counts, pairs per file.

Pipeline outputs: ``${stages.NAME.dataset}`` (pairs.jsonl), ``${stages.NAME.held_out}``
(held_out_pairs.jsonl) and ``${stages.NAME.collection}`` (the database, to serve to people later).
"""

from __future__ import annotations

import functools
import json
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.collect.db import prompt_key
from posttrain.collect.export import export
from posttrain.collect.sample import SampleConfig, sample
from posttrain.config import DataConfig, to_dict
from posttrain.data.formats import write_jsonl
from posttrain.errors import ConfigError
from posttrain.tracking import make_run_dir

Row = dict[str, Any]
LABEL_MODES = ("ab", "rank")  # thumbs needs a judgement of one answer alone, which a pairwise judge lacks


@dataclass
class Config:
    """``posttrain label`` (or a pipeline stage ``recipe: label``)."""

    model: str = "smollm2-135m-instruct"
    """Model that writes the candidates (the embedded default, an HF folder, a .gguf file or a hub name)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts: `train` (a task's train split or a prompts file), `train_size`, `options`, `system_prompt`."""
    labeller: str = ""
    """The scripted labeller: path/file.py:function(prompt, answer_a, answer_b) -> "a", "b" or "tie",
    or reward_model:PATH (the higher score is preferred)."""
    mode: str = "ab"
    """Labelling mode: ab (every pair of a prompt's candidates, a verdict each) or rank (all sorted)."""
    n: int = 4
    """Candidates per prompt."""
    temperature: float = 1.0
    """Sampling temperature of the candidates."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 64
    """Most tokens per candidate."""
    batch_size: int = 8
    """Prompts sampled per engine call."""
    held_out: float = 0.2
    """Fraction of the prompts whose pairs go to held_out_pairs.jsonl instead of pairs.jsonl."""
    pairs: str = "all"
    """rank mode: the pairs a ranking implies, all of them or adjacent ones."""
    previous: list[str] = field(default_factory=list)
    """Pairs files of earlier rounds (e.g. ${stages.label_1.dataset}) put before this round's in
    pairs.jsonl, so a reward model trained on it learns from every label so far (Llama 2's rounds)."""
    seed: int = 0
    """Seed of the prompts, the sampling and the held-out split."""
    device: str = "auto"
    """Device of the sampling model: auto, cpu or cuda."""
    output_dir: str = "runs"
    """Folder holding the output folder."""
    name: str = ""
    """Output folder name (default label-<date>-<time>)."""
    overwrite: bool = False
    """Replace an existing output folder of that name."""

    def check(self) -> list[str]:
        from posttrain.eval.judge import spec_problems

        problems = [p.replace("judge:", "labeller:", 1) for p in spec_problems(self.labeller)] if \
            self.labeller else ["labeller: required, e.g. labeller=examples/labeller.py:only_the_answer"]
        if self.mode not in LABEL_MODES:
            problems.append(f"mode: one of {', '.join(LABEL_MODES)} (a pairwise labeller gives no thumbs); "
                            f"got {self.mode!r}")
        if self.n < 2:
            problems.append(f"n: at least 2 candidates per prompt to compare; got {self.n}")
        if not 0 <= self.held_out < 1:
            problems.append(f"held_out: a fraction in [0, 1); got {self.held_out}")
        return problems


def outputs(config: Config) -> dict[str, str]:
    """What the stage makes, relative to its output folder (see ``posttrain.pipelines``)."""
    return {"dataset": "pairs.jsonl", "held_out": "held_out_pairs.jsonl", "collection": "collection.db"}


# ----------------------------------------------------------------------------- the labelling page's API


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _call(url: str, body: Row | None = None) -> Row:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def label_through_server(db: Path, mode: str, value_of: Callable[[Row], Row], name: str = "scripted") -> int:
    """Serve ``db`` in ``mode`` (the real server, its own process) and label every item through the
    JSON API with ``value_of(item) -> label value``; returns how many items were labelled."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(db.with_suffix(".server.log"), "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "posttrain.collect", "serve", "--db", str(db),
                                   "--mode", mode, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _call(f"{url}/api/state")
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"labelling server did not start; see {log.name}") from None
                time.sleep(0.1)
        labelled = 0
        while (item := _call(f"{url}/api/next?annotator={name}")["item"]) is not None:
            value = value_of(item)
            _call(f"{url}/api/label", {"annotator": name, "item_id": item["item_id"], "value": value})
            labelled += 1
        return labelled
    finally:
        server.terminate()
        server.wait(timeout=30)


def split_by_prompt(rows: list[Row], held_out: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, held-out) rows, a seeded ``held_out`` fraction of the prompts in the second."""
    keys = sorted({prompt_key(row["prompt"]) for row in rows})
    kept = set(random.Random(seed).sample(keys, round(held_out * len(keys))))
    return ([r for r in rows if prompt_key(r["prompt"]) not in kept],
            [r for r in rows if prompt_key(r["prompt"]) in kept])


# ----------------------------------------------------------------------------- the scripted labeller


Verdict = Callable[[Any, str, str, str], str]  # (prompt, answer_a, answer_b, item id) -> a | b | tie


def load_labeller(spec: str) -> Verdict:
    """The labeller's verdict on one pair, loaded once: a judge function (its answer checked as
    ``posttrain eval --judge`` checks it) or a reward model (the higher score wins)."""
    from posttrain.eval.judge import REWARD_MODEL, load_judge, parse_verdict, prompt_text
    from posttrain.rewards.base import resolve_reward

    if spec.startswith(REWARD_MODEL):
        by_score = load_judge(spec, [])
        return lambda prompt, a, b, item_id: by_score([prompt], [a], [b])[0]
    try:
        _, fn = resolve_reward(spec)
    except ConfigError as error:
        raise ConfigError([f"labeller: {problem}" for problem in error.problems]) from None
    return lambda prompt, a, b, item_id: parse_verdict(fn(prompt_text(prompt), a, b), spec, 0, item_id)


def label_value(verdict: Verdict, item: Row, verdicts: Counter[str]) -> Row:
    """The label of one item from the labeller's pairwise verdicts (counted into ``verdicts``)."""
    texts = [candidate["text"] for candidate in item["candidates"]]

    def compare(i: int, j: int) -> int:
        said = verdict(item["prompt"], texts[i], texts[j], f"item {item['item_id']}")
        verdicts[said] += 1
        return -1 if said == "a" else 1 if said == "b" else 0

    if item["mode"] == "ab":
        said = compare(0, 1)
        return {"choice": "a" if said < 0 else "b" if said > 0 else "tie"}
    return {"ranking": sorted(range(len(texts)), key=functools.cmp_to_key(compare))}


# ----------------------------------------------------------------------------- the command


def train(config: Config) -> Path:
    """Sample, label through the page's API, export and split; returns the output folder."""
    started = time.perf_counter()
    out = make_run_dir(config.output_dir, config.name or None, "label", resume=False,
                       overwrite=config.overwrite)
    verdict = load_labeller(config.labeller)  # a broken labeller fails before any model loads
    from posttrain.data.sources import load_split

    prompts = load_split(config.data, "train", "prompts", config.seed)
    prompts_file = write_jsonl([{k: v for k, v in row.items() if not k.startswith("_")} for row in prompts],
                               out / "prompts.jsonl")
    db = out / "collection.db"
    sample(SampleConfig(prompts=str(prompts_file), db=str(db), model=config.model, device=config.device,
                        mode=config.mode, n=config.n, temperature=config.temperature, top_p=config.top_p,
                        max_new_tokens=config.max_new_tokens, seed=config.seed, batch_size=config.batch_size))
    verdicts: Counter[str] = Counter()
    labelled = label_through_server(db, config.mode, lambda item: label_value(verdict, item, verdicts))
    exported = export(db, out / "export", config.pairs)
    pairs_file = exported["files"].get("pairs")
    if pairs_file is None:
        raise ConfigError(f"label: the labeller ({config.labeller}) preferred neither candidate of any pair "
                          f"({dict(verdicts)}): sample more candidates (n) or at a higher temperature")
    from posttrain.data.formats import load_rows

    train_pairs, held_pairs = split_by_prompt(load_rows(pairs_file["path"], "preferences"), config.held_out,
                                              config.seed)
    earlier = [row for path in config.previous for row in load_rows(path, "preferences")]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]  # noqa: E731
    write_jsonl(strip(earlier + train_pairs), out / "pairs.jsonl")
    write_jsonl(strip(held_pairs), out / "held_out_pairs.jsonl")
    summary = {"model": config.model, "labeller": config.labeller, "mode": config.mode,
               "prompts": len(prompts), "candidates_per_prompt": config.n, "items_labelled": labelled,
               "verdicts": dict(sorted(verdicts.items())), "train_pairs": len(train_pairs),
               "earlier_pairs": len(earlier),
               "held_out_pairs": len(held_pairs), "seconds": round(time.perf_counter() - started, 1),
               "config": to_dict(config)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(summary_text(summary) + "\n")
    print(summary_text(summary))
    return out


def summary_text(summary: Row) -> str:
    return (f"# Labelled by {summary['labeller']} ({summary['mode']})\n\n{summary['prompts']} prompts x "
            f"{summary['candidates_per_prompt']} candidates of {summary['model']}; "
            f"{summary['items_labelled']} items labelled through the page's API; "
            f"verdicts {summary['verdicts']}; "
            f"{summary['train_pairs']} pairs to train on (+ {summary['earlier_pairs']} of earlier rounds), "
            f"{summary['held_out_pairs']} held out "
            f"({summary['seconds']:.0f} s).")
