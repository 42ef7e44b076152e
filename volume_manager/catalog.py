"""The catalog: markers, delta maps and volume metadata in SQLite (WAL mode).

The catalog is an index over the files of the secondary store, never the only
copy of a fact that the log holds: markers are log records, maps can be rebuilt
from the log while their interval is still granular. What only the catalog
knows is which maps and markers are *live* after merges and fade-outs; every
change of that kind is one transaction, made after the new files are durable
and before the old ones are deleted (see FORMAT.md, "Crash-safe jobs").

``after_commit`` lets the power-loss simulator take a snapshot of the database
at each commit, since it treats a commit as one atomic, durable step.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["SCHEMA_VERSION", "Catalog", "MapRow", "MarkerRow"]

SCHEMA_VERSION = 1  # frozen meaning; bump with a migration

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS markers (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    ts_ns INTEGER NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER,
    bytes INTEGER
);
CREATE TABLE IF NOT EXISTS maps (
    id INTEGER PRIMARY KEY,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL UNIQUE,
    to_ts_ns INTEGER NOT NULL,
    file TEXT NOT NULL,
    entries INTEGER NOT NULL,
    granular INTEGER NOT NULL,
    class TEXT NOT NULL DEFAULT '',
    start_seg INTEGER NOT NULL,
    start_off INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class MarkerRow:
    name: str
    seq: int
    ts_ns: int
    pinned: bool


@dataclass(frozen=True, slots=True)
class MapRow:
    id: int
    from_seq: int
    to_seq: int
    to_ts_ns: int
    file: str
    entries: int
    granular: bool
    klass: str
    start_seg: int
    start_off: int
    bytes: int


class Catalog:
    def __init__(self, path: str, *, after_commit: Callable[[sqlite3.Connection], None] | None
                 = None) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._after_commit = after_commit
        self._txn_lock = threading.RLock()
        with self.transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # One connection serves the committer thread and the caller's thread;
        # the lock keeps their transactions from interleaving.
        with self._txn_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            if self._after_commit is not None:
                self._after_commit(self._db)

    def close(self) -> None:
        self._db.close()

    # -- meta ---------------------------------------------------------------
    def get(self, key: str, default: object = None) -> object:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    def get_int(self, key: str, default: int = 0) -> int:
        value = self.get(key, default)
        assert isinstance(value, int)
        return value

    @staticmethod
    def put(db: sqlite3.Connection, key: str, value: object) -> None:
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- markers ------------------------------------------------------------
    def markers(self) -> list[MarkerRow]:
        rows = self._db.execute("SELECT name, seq, ts_ns, pinned FROM markers ORDER BY seq")
        return [MarkerRow(n, s, t, bool(p)) for n, s, t, p in rows]

    @staticmethod
    def add_marker(db: sqlite3.Connection, m: MarkerRow) -> None:
        db.execute("INSERT INTO markers(name, seq, ts_ns, pinned) VALUES (?, ?, ?, ?)",
                   (m.name, m.seq, m.ts_ns, int(m.pinned)))

    # -- segments -----------------------------------------------------------
    def segments(self) -> list[tuple[int, int, int | None, int | None]]:
        """(id, first_seq, last_seq, bytes) as of the last checkpoint; last_seq is
        None for the segment being written then."""
        rows = self._db.execute("SELECT id, first_seq, last_seq, bytes FROM segments ORDER BY id")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    @staticmethod
    def set_segments(db: sqlite3.Connection, segs: list[tuple[int, int, int]]) -> None:
        """Replace the segment index with ``segs``: (id, first_seq, bytes), ascending;
        the last one is the segment being written (no last_seq yet)."""
        db.execute("DELETE FROM segments")
        for i, (sid, first, size) in enumerate(segs):
            last = segs[i + 1][1] - 1 if i + 1 < len(segs) else None
            db.execute("INSERT INTO segments(id, first_seq, last_seq, bytes) VALUES (?,?,?,?)",
                       (sid, first, last, size))

    # -- maps ---------------------------------------------------------------
    def maps(self) -> list[MapRow]:
        rows = self._db.execute(
            "SELECT id, from_seq, to_seq, to_ts_ns, file, entries, granular, class, start_seg,"
            " start_off, bytes FROM maps ORDER BY to_seq")
        return [MapRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], r[9], r[10])
                for r in rows]

    @staticmethod
    def add_map(db: sqlite3.Connection, m: MapRow) -> int:
        cur = db.execute(
            "INSERT INTO maps(from_seq, to_seq, to_ts_ns, file, entries, granular, class,"
            " start_seg, start_off, bytes) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (m.from_seq, m.to_seq, m.to_ts_ns, m.file, m.entries, int(m.granular), m.klass,
             m.start_seg, m.start_off, m.bytes))
        assert cur.lastrowid is not None
        return cur.lastrowid
