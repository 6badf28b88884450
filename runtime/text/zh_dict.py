"""jieba's dictionary as an on-disk SQLite index, so that a process segments Chinese without
loading the whole dictionary first.

jieba keeps its dictionary (349 k words, 498 k entries with their prefixes) as a Python dict that
every process unmarshals from a cache (0.6–0.7 s on a 2-core EPYC, over 1 s while the voice's
graphs load beside it), and its POS tagger reads the dictionary text once more (≈ 0.2 s).
Segmenting a sentence looks up a few entries per character, which a SQLite table answers in
microseconds. The index is built once per dictionary file (a few seconds) into the compiled
cache folder and opened read-only afterwards; without a cache folder jieba loads as usual.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsv_runtime.backends import identity_key

MEMO_SIZE = 1 << 16
"""Lookups answered from memory per column (an entry is a short string and a small tuple)."""
_SCHEMA = (
    "CREATE TABLE words (word TEXT PRIMARY KEY, freq INTEGER NOT NULL, tag TEXT) WITHOUT ROWID",
    "CREATE TABLE meta (total INTEGER NOT NULL)",
)


class _Column(Mapping[str, Any]):
    """A read-only view of one column of the index (missing or NULL: ``KeyError``)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, column: str) -> None:
        self._db, self._lock = db, lock
        self._get = f"SELECT {column} FROM words WHERE word = ? AND {column} IS NOT NULL"
        self._all = f"SELECT word FROM words WHERE {column} IS NOT NULL"
        # common characters and words recur in every sentence: keep recent answers in memory
        self._row = functools.lru_cache(maxsize=MEMO_SIZE)(self._fetch)

    def _fetch(self, word: str) -> tuple[Any] | None:
        with self._lock:
            row = self._db.execute(self._get, (word,)).fetchone()
        return None if row is None else tuple(row)

    def __getitem__(self, word: str) -> Any:
        row = self._row(word)
        if row is None:
            raise KeyError(word)
        return row[0]

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            words = [w for (w,) in self._db.execute(self._all)]
        return iter(words)

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._db.execute(f"SELECT COUNT(*) FROM ({self._all})").fetchone()
        return int(n)


@dataclass(frozen=True)
class DictionaryIndex:
    """jieba's ``FREQ`` (words and their prefixes → frequency), ``total`` and the POS tagger's
    ``word_tag_tab`` (words → tag), served from one SQLite file."""

    freq: Mapping[str, int]
    tags: Mapping[str, str]
    total: int

    @classmethod
    def open(cls, path: Path) -> DictionaryIndex:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        (total,) = db.execute("SELECT total FROM meta").fetchone()
        lock = threading.Lock()
        return cls(_Column(db, lock, "freq"), _Column(db, lock, "tag"), int(total))


def index_path(cache_dir: Path, dict_file: Path, version: str) -> Path:
    """The index of ``dict_file`` under ``cache_dir``, keyed by the file's identity and jieba's
    version (a changed dictionary gets a new index)."""
    return cache_dir / f"jieba-{identity_key((dict_file,), version)}.sqlite"


def build_index(path: Path, freq: Mapping[str, int], total: int, tags: Mapping[str, str]) -> None:
    """Write the index atomically (a temporary file renamed into place: readers never see a
    half-written index, and concurrent builders leave one complete file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        try:
            for statement in _SCHEMA:
                db.execute(statement)
            db.executemany(
                "INSERT INTO words VALUES (?, ?, ?)",
                ((w, f, tags.get(w)) for w, f in freq.items()),
            )
            db.execute("INSERT INTO meta VALUES (?)", (total,))
            db.commit()
        finally:
            db.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
