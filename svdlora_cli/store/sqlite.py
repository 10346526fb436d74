"""The cache index's SQLite file seen directly: damage checks, and reads that write nothing.

diskcache keeps its index in `<cache>/index/cache.db`. These pieces look below diskcache:
SQLite's own consistency check, its error codes for a damaged file, and a read-only view
for a cache folder that cannot be written.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache

DB_NAME = "cache.db"  # diskcache's SQLite file inside <cache>/index
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def is_corrupt(exc: BaseException) -> bool:
    """True when SQLite says the file is damaged or not a database (not locked, full, ...)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and not isinstance(exc, sqlite3.OperationalError):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def quick_check(con: Callable[[str], Any]) -> Exception | None:
    """SQLite's own consistency check of the index; the problem found, or None."""
    try:
        rows = con("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return exc if is_corrupt(exc) else None
    if rows == [("ok",)]:
        return None
    return sqlite3.DatabaseError("; ".join(str(r[0]) for r in rows[:3])[:200])


class ReadOnlyIndex:
    """A diskcache index read without writing anything (for a cache that cannot be written)."""

    def __init__(self, folder: Path) -> None:
        db = folder / DB_NAME
        if not db.is_file():
            raise FileNotFoundError(2, "no index", str(db))
        self._disk = diskcache.JSONDisk(str(folder))
        uri = db.resolve().as_uri()
        # Plain read-only first. On a full disk SQLite cannot size the -shm file that WAL
        # reads need, and unix-excl keeps that index in memory instead (it only runs
        # SELECTs; it holds the file exclusively until closed). On a read-only mount
        # without a -shm file only an immutable open reads it.
        error: sqlite3.Error | None = None
        for query in ("?mode=ro", "?vfs=unix-excl", "?mode=ro&immutable=1"):
            con = None
            try:
                con = sqlite3.connect(uri + query, uri=True)
                con.execute("SELECT COUNT(*) FROM Cache").fetchone()
            except sqlite3.Error as exc:
                error = exc
                if con is not None:
                    con.close()
                continue
            self._con = con
            return
        assert error is not None
        raise error

    def _sql(self, query: str, *args: Any) -> sqlite3.Cursor:
        return self._con.execute(query, *args)

    def get(self, key: Any, default: Any = None) -> Any:
        db_key, raw = self._disk.put(key)
        row = self._con.execute(
            "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?"
            " AND (expire_time IS NULL OR expire_time > ?)",
            (db_key, raw, time.time()),
        ).fetchone()
        return default if row is None else self._disk.fetch(*row, False)

    def iterkeys(self) -> Iterator[Any]:
        for db_key, raw in self._con.execute("SELECT key, raw FROM Cache ORDER BY rowid"):
            yield self._disk.get(db_key, raw)

    def __len__(self) -> int:
        return int(self._con.execute("SELECT COUNT(*) FROM Cache").fetchone()[0])

    def volume(self) -> int:
        (pages,) = self._con.execute("PRAGMA page_count").fetchone()
        (size,) = self._con.execute("PRAGMA page_size").fetchone()
        return int(pages) * int(size)

    def close(self) -> None:
        self._con.close()
