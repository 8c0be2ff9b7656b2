"""Export a collection's labels as the JSONL files the training recipes read, plus a summary.

- ``rankings.jsonl``: ``prompt``, ``responses``, ``ranking`` (indices into responses, best first)
  from *rank* labels (reward model: ``posttrain rm``).
- ``pairs.jsonl``: ``prompt``, ``chosen``, ``rejected`` from *rank* labels (all implied pairs or
  adjacent ones, via ``posttrain.data.sources.ranking_pairs``) and from *A/B* labels directly;
  ties and "both bad" carry no preference and are dropped (DPO, reward model).
- ``unpaired.jsonl``: ``prompt``, ``completion``, ``label`` (true = thumbs up) from *thumbs* labels.
- ``summary.json``: counts per mode and annotator, and where items have more than one label the
  percent agreement and Cohen's kappa (two annotators) or Fleiss' kappa (more).

Every row also carries ``annotator``: with several annotators per item each label is its own row
(agreeing labels weigh more). Rows the data loader would reject are dropped and counted in the
summary: a response that is empty or whitespace (a candidate that stopped at once) and a pair whose
two texts are identical. A file is written only when it has rows.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from posttrain.collect.agreement import cohens_kappa, fleiss_kappa, percent_agreement
from posttrain.collect.db import Collection
from posttrain.data.formats import write_jsonl
from posttrain.errors import ConfigError

Row = dict[str, Any]


def _texts(label: Row) -> list[str]:
    return [c["text"] for c in label["candidates"]]


def _usable(text: str) -> bool:
    return bool(text.strip())


def rankings_rows(labels: list[Row]) -> tuple[list[Row], int]:
    """(rows, dropped): one ranking row per *rank* label; dropped = labels with an empty response."""
    rows, dropped = [], 0
    for label in labels:
        if label["mode"] != "rank":
            continue
        if not all(_usable(t) for t in _texts(label)):
            dropped += 1
            continue
        rows.append({"prompt": label["prompt"], "responses": _texts(label),
                     "ranking": list(label["value"]["ranking"]), "annotator": label["annotator"]})
    return rows, dropped


def pairs_rows(labels: list[Row], pairs: str = "all") -> tuple[list[Row], int]:
    """(rows, dropped): chosen/rejected pairs from *rank* labels (``pairs`` = all | adjacent) and
    *A/B* labels (tie and both_bad give none); dropped = pairs with an empty or identical text."""
    from posttrain.data.sources import PAIR_MODES, ranking_pairs

    if pairs not in PAIR_MODES:
        raise ConfigError(f"pairs must be one of {', '.join(PAIR_MODES)}; got {pairs!r}")
    candidates: list[Row] = []
    for label in labels:
        texts = _texts(label)
        if label["mode"] == "rank":
            row = {"prompt": label["prompt"], "responses": texts, "ranking": label["value"]["ranking"],
                   "annotator": label["annotator"]}
            candidates += ranking_pairs(row, pairs)
        elif label["mode"] == "ab" and label["value"]["choice"] in ("a", "b"):
            first = label["value"]["choice"] == "a"
            chosen, rejected = (texts[0], texts[1]) if first else (texts[1], texts[0])
            candidates.append({"prompt": label["prompt"], "chosen": chosen, "rejected": rejected,
                               "annotator": label["annotator"]})
    rows = []
    for row in candidates:
        row.pop("_where", None)
        if _usable(row["chosen"]) and _usable(row["rejected"]) and row["chosen"] != row["rejected"]:
            rows.append(row)
    return rows, len(candidates) - len(rows)


def unpaired_rows(labels: list[Row]) -> tuple[list[Row], int]:
    """(rows, dropped): one ``label`` row per response of each *thumbs* label; dropped = empty ones."""
    rows, dropped = [], 0
    for label in labels:
        if label["mode"] != "thumbs":
            continue
        for text, up in zip(_texts(label), label["value"]["thumbs"]):
            if not _usable(text):
                dropped += 1
                continue
            rows.append({"prompt": label["prompt"], "completion": text, "label": bool(up),
                         "annotator": label["annotator"]})
    return rows, dropped


def agreement_units(labels: list[Row]) -> dict[str, dict[tuple[Any, ...], dict[str, str]]]:
    """Per mode, unit -> {annotator: category}. Units: an A/B item (its choice); one response of a
    thumbs item (up/down); one pair of positions (i, j) of a ranked item ("i>j" or "j>i")."""
    units: dict[str, dict[tuple[Any, ...], dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for label in labels:
        mode, item, who, value = label["mode"], label["item_id"], label["annotator"], label["value"]
        if mode == "ab":
            units[mode][(item,)][who] = value["choice"]
        elif mode == "thumbs":
            for pos, up in enumerate(value["thumbs"]):
                units[mode][(item, pos)][who] = "up" if up else "down"
        else:
            place = {pos: rank for rank, pos in enumerate(value["ranking"])}
            for i in range(len(place)):
                for j in range(i + 1, len(place)):
                    units[mode][(item, i, j)][who] = f"{i}>{j}" if place[i] < place[j] else f"{j}>{i}"
    return units


def _mode_agreement(units: dict[tuple[Any, ...], dict[str, str]]) -> dict[str, Any]:
    shared = [u for u in units.values() if len(u) >= 2]
    annotators = sorted({a for u in shared for a in u})
    result: dict[str, Any] = {"units_with_several_labels": len(shared), "percent_agreement": None,
                              "kappa": None, "kappa_kind": None}
    if not shared:
        return result
    result["percent_agreement"] = _finite(percent_agreement([list(u.values()) for u in shared]))
    if len(annotators) == 2:
        first, second = annotators
        result["kappa"] = _finite(cohens_kappa([(u[first], u[second]) for u in shared]))
        result["kappa_kind"] = "cohen"
    else:
        result["kappa"] = _finite(fleiss_kappa([list(u.values()) for u in shared]))
        result["kappa_kind"] = "fleiss"
    return result


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def summarize(labels: list[Row]) -> dict[str, Any]:
    """Counts per mode (labels, items, per annotator) and the agreement numbers of each mode."""
    units = agreement_units(labels)
    modes: dict[str, Any] = {}
    for mode in sorted({label["mode"] for label in labels}):
        mine = [label for label in labels if label["mode"] == mode]
        modes[mode] = {"labels": len(mine), "items": len({label["item_id"] for label in mine}),
                       "annotators": dict(sorted(Counter(label["annotator"] for label in mine).items())),
                       **_mode_agreement(units[mode])}
    return {"labels": len(labels), "annotators": sorted({label["annotator"] for label in labels}),
            "modes": modes}


def export(db_path: str | Path, out_dir: str | Path, pairs: str = "all") -> dict[str, Any]:
    """Write the JSONL files that have rows and ``summary.json`` into ``out_dir``; return the summary."""
    labels = Collection(db_path, create=False).labels()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(labels)
    files, dropped = {}, {}
    for name, (rows, lost) in (("rankings", rankings_rows(labels)), ("pairs", pairs_rows(labels, pairs)),
                               ("unpaired", unpaired_rows(labels))):
        dropped[name] = lost
        if rows:
            files[name] = {"path": str(write_jsonl(rows, out / f"{name}.jsonl")), "rows": len(rows)}
    summary.update(files=files, dropped=dropped, pairs_from_rankings=pairs)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few lines for the terminal."""
    lines = [f"{summary['labels']} labels by {len(summary['annotators'])} annotators"]
    for mode, info in summary["modes"].items():
        who = ", ".join(f"{a} {n}" for a, n in info["annotators"].items())
        lines.append(f"  {mode}: {info['labels']} labels on {info['items']} items ({who})")
        if info["units_with_several_labels"]:
            kappa = "n/a" if info["kappa"] is None else f"{info['kappa']:.3f}"
            agree = "n/a" if info["percent_agreement"] is None else f"{100 * info['percent_agreement']:.1f}%"
            lines.append(f"    agreement on {info['units_with_several_labels']} shared units: {agree}, "
                         f"{info['kappa_kind']} kappa {kappa}")
    for name, info in summary.get("files", {}).items():
        lines.append(f"  {name}: {info['rows']} rows -> {info['path']}")
    lost = {k: v for k, v in summary.get("dropped", {}).items() if v}
    if lost:
        counts = ", ".join(f"{k} {v}" for k, v in lost.items())
        lines.append(f"  dropped (empty or identical texts): {counts}")
    return "\n".join(lines)
