"""The collection database: one SQLite file holding prompts, sampled candidates, labelling items,
who was given which item, and the labels.

Decisions:
- WAL journal, ``synchronous=FULL``, and every write is one ``BEGIN IMMEDIATE`` transaction: a
  label is on disk before the call returns, so a server killed at any moment loses at most the
  label being submitted. IMMEDIATE takes the write lock up front, so two annotators asking for work
  at once are serialised and can never be handed the same slot.
- An *item* is what one screen shows: in ``rank`` and ``thumbs`` mode all candidates of a prompt, in
  ``ab`` mode one pair of them (every pair, shown in a seeded random order so that "A" is not always
  the first sample). Items are made per mode, so switching a database's mode keeps earlier labels.
- An item goes to at most ``k`` annotators and never twice to the same one: an ``assignments`` row
  (item, annotator) is unique; it is ``open`` while shown, then ``done`` or ``skipped``. An open
  assignment older than ``lease_s`` no longer holds a slot (someone walked away).
- Undo takes back the annotator's latest label or skip and makes that item current again.
- The schema carries a version in ``meta``; opening a database written by a newer version fails.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from posttrain.errors import DataError

SCHEMA_VERSION = 1
MODES = ("rank", "ab", "thumbs")
AB_CHOICES = ("a", "b", "tie", "both_bad")
DEFAULT_LEASE_S = 1800.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
  id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, prompt TEXT NOT NULL, source TEXT NOT NULL,
  created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
  id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id), idx INTEGER NOT NULL,
  text TEXT NOT NULL, finish_reason TEXT NOT NULL, model TEXT NOT NULL, sampling TEXT NOT NULL,
  seed INTEGER, created REAL NOT NULL, UNIQUE (prompt_id, idx));
CREATE TABLE IF NOT EXISTS items (
  id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id), mode TEXT NOT NULL,
  candidates TEXT NOT NULL, UNIQUE (prompt_id, mode, candidates));
CREATE TABLE IF NOT EXISTS assignments (
  item_id INTEGER NOT NULL REFERENCES items(id), annotator TEXT NOT NULL, state TEXT NOT NULL,
  updated REAL NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (item_id, annotator));
CREATE TABLE IF NOT EXISTS labels (
  id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items(id), annotator TEXT NOT NULL,
  value TEXT NOT NULL, created REAL NOT NULL, UNIQUE (item_id, annotator));
CREATE INDEX IF NOT EXISTS assignments_by_annotator ON assignments (annotator, state);
"""


def prompt_key(prompt: Any) -> str:
    """The identity of a prompt (string or messages): canonical JSON, so re-runs find it again."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def check_annotator(name: Any) -> str:
    """An annotator name: a non-empty string of at most 64 characters, surrounding spaces removed."""
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 64:
        raise DataError("invalid annotator name", field="annotator",
                        expected="a non-empty string of at most 64 characters", got=name, has_got=True)
    return name.strip()


class Collection:
    """A handle on one collection database; safe to share between threads (a connection per call)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise DataError("no collection database here (run `posttrain collect sample` first)",
                            file=str(self.path))
        db = self._connect()
        try:
            db.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS), so concurrent openers are fine
        finally:
            db.close()
        with self._write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?), ('mode', 'rank')",
                           (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise DataError(f"database schema version {row[0]} is newer than this posttrain's "
                                f"({SCHEMA_VERSION}); upgrade posttrain", file=str(self.path))

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as error:
            raise DataError(f"not a readable SQLite database: {error}", file=str(self.path)) from None
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success and rolled back on any error."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for queries (one consistent snapshot per statement)."""
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    # ------------------------------------------------------------------ settings

    @property
    def mode(self) -> str:
        with self.read() as db:
            return db.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()[0]

    def set_mode(self, mode: str) -> None:
        """Choose what annotators do (rank, ab, thumbs); items for that mode are made as needed."""
        if mode not in MODES:
            raise DataError(f"unknown labelling mode {mode!r}", field="mode", expected=" | ".join(MODES),
                            got=mode, has_got=True)
        with self._write() as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'mode'", (mode,))
            _make_items(db, mode)

    # ------------------------------------------------------------------ sampling side

    def sampled_keys(self) -> set[str]:
        with self.read() as db:
            return {row[0] for row in db.execute("SELECT key FROM prompts")}

    def add_prompt(self, prompt: Any, source: str, candidates: list[dict[str, Any]]) -> int | None:
        """Store a prompt and its candidates in one transaction; None if the prompt is already there.

        Each candidate: ``text``, ``finish_reason``, ``model``, ``sampling`` (dict), ``seed``.
        """
        now = time.time()
        with self._write() as db:
            cursor = db.execute("INSERT OR IGNORE INTO prompts (key, prompt, source, created) "
                                "VALUES (?, ?, ?, ?)",
                                (prompt_key(prompt), json.dumps(prompt, ensure_ascii=False), source, now))
            if cursor.rowcount == 0:
                return None
            prompt_id = int(cursor.lastrowid)
            db.executemany(
                "INSERT INTO candidates (prompt_id, idx, text, finish_reason, model, sampling, seed, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(prompt_id, i, c["text"], c["finish_reason"], c["model"], json.dumps(c["sampling"]),
                  c["seed"], now) for i, c in enumerate(candidates)])
            mode = db.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()[0]
            _make_items(db, mode)
        return prompt_id

    # ------------------------------------------------------------------ labelling side

    def next_item(self, annotator: str, k: int = 1,
                  lease_s: float = DEFAULT_LEASE_S) -> dict[str, Any] | None:
        """The item this annotator should label now (their open one, else a new one), or None."""
        annotator = check_annotator(annotator)
        if k < 1:
            raise DataError("k (annotators per item) must be >= 1", field="k", expected=">= 1", got=k)
        now = time.time()
        with self._write() as db:
            mode = db.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()[0]
            row = db.execute(
                "SELECT a.item_id FROM assignments a JOIN items i ON i.id = a.item_id "
                "WHERE a.annotator = ? AND a.state = 'open' AND i.mode = ? ORDER BY a.seq DESC LIMIT 1",
                (annotator, mode)).fetchone()
            if row is None:
                row = db.execute(
                    "SELECT i.id FROM items i WHERE i.mode = ? AND NOT EXISTS (SELECT 1 FROM assignments a "
                    "WHERE a.item_id = i.id AND a.annotator = ?) AND (SELECT COUNT(*) FROM assignments a "
                    "WHERE a.item_id = i.id AND (a.state = 'done' OR (a.state = 'open' AND a.updated > ?)))"
                    " < ? ORDER BY i.id LIMIT 1", (mode, annotator, now - lease_s, k)).fetchone()
                if row is None:
                    return None
                db.execute("INSERT INTO assignments VALUES (?, ?, 'open', ?, ?)",
                           (row[0], annotator, now, _next_seq(db)))
            return _item(db, row[0])

    def submit(self, annotator: str, item_id: int, value: Any) -> None:
        """Commit one label: ``value`` is checked against the item's mode (see ``check_value``)."""
        annotator = check_annotator(annotator)
        with self._write() as db:
            item = _item(db, item_id)
            clean = check_value(item["mode"], len(item["candidates"]), value)
            state = _state(db, item_id, annotator)
            if state == "done":
                raise DataError(f"item {item_id} is already labelled by {annotator!r} (undo it first)",
                                field="item_id")
            if state is None:
                raise DataError(f"item {item_id} was not given to {annotator!r}: ask /api/next first",
                                field="item_id")
            now = time.time()
            db.execute("INSERT INTO labels (item_id, annotator, value, created) VALUES (?, ?, ?, ?)",
                       (item_id, annotator, json.dumps(clean), now))
            db.execute("UPDATE assignments SET state = 'done', updated = ?, seq = ? "
                       "WHERE item_id = ? AND annotator = ?", (now, _next_seq(db), item_id, annotator))

    def skip(self, annotator: str, item_id: int) -> None:
        """Pass on an open item: it is not shown to this annotator again (unless undone)."""
        annotator = check_annotator(annotator)
        with self._write() as db:
            if _state(db, item_id, annotator) != "open":
                raise DataError(f"item {item_id} is not open for {annotator!r}, nothing to skip",
                                field="item_id")
            db.execute("UPDATE assignments SET state = 'skipped', updated = ?, seq = ? "
                       "WHERE item_id = ? AND annotator = ?",
                       (time.time(), _next_seq(db), item_id, annotator))

    def undo(self, annotator: str) -> int | None:
        """Take back the latest label or skip of this annotator; its item becomes their open item.

        Returns the item id, or None when there is nothing to undo.
        """
        annotator = check_annotator(annotator)
        with self._write() as db:
            row = db.execute("SELECT item_id FROM assignments WHERE annotator = ? AND state IN "
                             "('done', 'skipped') ORDER BY seq DESC LIMIT 1", (annotator,)).fetchone()
            if row is None:
                return None
            item_id = int(row[0])
            # The item on screen goes back to the pool so that the undone one is shown next.
            db.execute("DELETE FROM assignments WHERE annotator = ? AND state = 'open'", (annotator,))
            db.execute("DELETE FROM labels WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            db.execute("UPDATE assignments SET state = 'open', updated = ?, seq = ? "
                       "WHERE item_id = ? AND annotator = ?",
                       (time.time(), _next_seq(db), item_id, annotator))
            return item_id

    def progress(self, annotator: str, k: int = 1) -> dict[str, int]:
        """``done`` (labels by this annotator in the current mode), ``left`` (items they may still get,
        the open one included), ``total`` (items in the current mode), ``labels`` (by anyone)."""
        annotator = check_annotator(annotator)
        with self.read() as db:
            mode = db.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()[0]
            total, labels = db.execute(
                "SELECT COUNT(*), (SELECT COUNT(*) FROM labels l JOIN items j ON j.id = l.item_id "
                "WHERE j.mode = ?) FROM items WHERE mode = ?", (mode, mode)).fetchone()
            done = db.execute("SELECT COUNT(*) FROM labels l JOIN items i ON i.id = l.item_id "
                              "WHERE l.annotator = ? AND i.mode = ?", (annotator, mode)).fetchone()[0]
            left = db.execute(
                "SELECT COUNT(*) FROM items i WHERE i.mode = ? AND ((SELECT state FROM assignments a WHERE "
                "a.item_id = i.id AND a.annotator = ?) = 'open' OR (NOT EXISTS (SELECT 1 FROM assignments a "
                "WHERE a.item_id = i.id AND a.annotator = ?) AND (SELECT COUNT(*) FROM labels l "
                "WHERE l.item_id = i.id) < ?))", (mode, annotator, annotator, k)).fetchone()[0]
        return {"done": done, "left": left, "total": total, "labels": labels}

    def labels(self) -> list[dict[str, Any]]:
        """Every label with its item: ``mode``, ``prompt``, ``prompt_id``, ``item_id``, ``annotator``,
        ``value``, and ``candidates`` (the item's candidates in display order: ``id``, ``idx``, ``text``)."""
        with self.read() as db:
            rows = db.execute("SELECT l.item_id, l.annotator, l.value FROM labels l ORDER BY l.item_id, l.id")
            out = []
            for item_id, annotator, value in rows.fetchall():
                out.append({**_item(db, item_id), "annotator": annotator, "value": json.loads(value)})
        return out

    def counts(self) -> dict[str, int]:
        with self.read() as db:
            return {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    for table in ("prompts", "candidates", "items", "labels")}


def check_value(mode: str, n_candidates: int, value: Any) -> Any:
    """A label value in its stored form, or DataError saying what was expected.

    rank: ``{"ranking": [...]}``, positions 0..n-1 of the item's candidates, best first;
    ab: ``{"choice": "a" | "b" | "tie" | "both_bad"}``; thumbs: ``{"thumbs": [true/false per candidate]}``.
    """
    if not isinstance(value, dict):
        raise DataError("a label value must be a JSON object", field="value", expected="an object",
                        got=value, has_got=True)
    if mode == "rank":
        ranking = value.get("ranking")
        expected = f"a permutation of 0..{n_candidates - 1}, best first"
        if (not isinstance(ranking, list) or any(type(r) is not int for r in ranking)
                or sorted(ranking) != list(range(n_candidates))):
            raise DataError("invalid ranking", field="ranking", expected=expected, got=ranking, has_got=True)
        return {"ranking": ranking}
    if mode == "ab":
        choice = value.get("choice")
        if choice not in AB_CHOICES:
            raise DataError("invalid A/B choice", field="choice", expected=" | ".join(AB_CHOICES),
                            got=choice, has_got=True)
        return {"choice": choice}
    thumbs = value.get("thumbs")
    if (not isinstance(thumbs, list) or len(thumbs) != n_candidates
            or any(not isinstance(t, bool) for t in thumbs)):
        raise DataError("invalid thumbs", field="thumbs", expected=f"{n_candidates} booleans (true = up)",
                        got=thumbs, has_got=True)
    return {"thumbs": thumbs}


def _next_seq(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM assignments").fetchone()[0])


def _state(db: sqlite3.Connection, item_id: int, annotator: str) -> str | None:
    row = db.execute("SELECT state FROM assignments WHERE item_id = ? AND annotator = ?",
                     (item_id, annotator)).fetchone()
    return None if row is None else str(row[0])


def _item(db: sqlite3.Connection, item_id: Any) -> dict[str, Any]:
    row = db.execute("SELECT i.id, i.mode, i.candidates, p.id, p.prompt FROM items i "
                     "JOIN prompts p ON p.id = i.prompt_id WHERE i.id = ?", (item_id,)).fetchone()
    if row is None:
        raise DataError(f"no item {item_id!r} in this collection", field="item_id")
    ids = json.loads(row[2])
    found = {c[0]: c for c in db.execute(
        f"SELECT id, idx, text FROM candidates WHERE id IN ({','.join('?' * len(ids))})", ids)}
    candidates = [{"id": found[i][0], "idx": found[i][1], "text": found[i][2]} for i in ids]
    return {"item_id": row[0], "mode": row[1], "prompt_id": row[3], "prompt": json.loads(row[4]),
            "candidates": candidates}


def _make_items(db: sqlite3.Connection, mode: str) -> None:
    """Items of ``mode`` for every prompt that has none yet (see the module docstring)."""
    prompts = db.execute("SELECT p.id FROM prompts p WHERE NOT EXISTS (SELECT 1 FROM items i "
                         "WHERE i.prompt_id = p.id AND i.mode = ?)", (mode,)).fetchall()
    for (prompt_id,) in prompts:
        ids = [r[0] for r in db.execute("SELECT id FROM candidates WHERE prompt_id = ? ORDER BY idx",
                                        (prompt_id,))]
        if len(ids) < (1 if mode == "thumbs" else 2):
            continue
        if mode == "ab":
            rng = random.Random(prompt_id)  # display order fixed per prompt, not by call order
            groups = [[a, b] if rng.random() < 0.5 else [b, a]
                      for i, a in enumerate(ids) for b in ids[i + 1:]]
        else:
            groups = [ids]
        db.executemany("INSERT OR IGNORE INTO items (prompt_id, mode, candidates) VALUES (?, ?, ?)",
                       [(prompt_id, mode, json.dumps(g)) for g in groups])
