"""A shared-state backend: one object, its own connection pool and lifecycle, all sessions.

Files live in a SQLite database. The backend owns a small pool of connections (SQLite
connections are not shared between threads), counts the sessions it serves through the
session hooks, and is closed by the application after the server stops. Its methods are
plain ``def``: sftpd runs them in its thread pool.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator

import sftpd
from sftpd import paths


class SqliteBackend:
    """Files and directories in one SQLite table, served through a connection pool."""

    def __init__(self, database: str, pool_size: int = 4) -> None:
        self.database = database
        self.pool_size = pool_size
        self.in_use_peak = 0
        self._in_use = 0
        self._lock = threading.Lock()
        self.active_sessions: set[str] = set()
        self.closed = False
        self._pool: queue.Queue[sqlite3.Connection] = queue.Queue()
        for _ in range(pool_size):
            conn = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._pool.put(conn)
        with self._conn() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS nodes (path TEXT PRIMARY KEY, parent TEXT NOT NULL,"
                " is_dir INTEGER NOT NULL, data BLOB, mtime REAL NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS by_parent ON nodes (parent)")

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = self._pool.get()
        with self._lock:
            self._in_use += 1
            self.in_use_peak = max(self.in_use_peak, self._in_use)
        try:
            yield conn
        finally:
            with self._lock:
                self._in_use -= 1
            self._pool.put(conn)

    def close(self) -> None:
        """Close every pooled connection (the application's shutdown calls this)."""
        while not self._pool.empty():
            self._pool.get().close()
        self.closed = True

    # -- session hooks

    async def session_opened(self, session: sftpd.Session) -> None:
        self.active_sessions.add(session.id)

    async def session_closed(self, session: sftpd.Session) -> None:
        self.active_sessions.discard(session.id)

    # -- the contract

    def _row(self, db: sqlite3.Connection, path: str) -> tuple[int, int, float] | None:
        row = db.execute(
            "SELECT is_dir, length(data), mtime FROM nodes WHERE path = ?", (path,)
        ).fetchone()
        return None if row is None else (row[0], row[1] or 0, row[2])

    def stat(self, path: str, session: sftpd.Session) -> sftpd.FileAttrs:
        if path == "/":
            return sftpd.directory_info(0)
        with self._conn() as db:
            row = self._row(db, path)
        if row is None:
            raise sftpd.NoSuchFile()
        is_dir, size, mtime = row
        return sftpd.directory_info(mtime) if is_dir else sftpd.file_info(size, mtime)

    def list_dir(self, path: str, session: sftpd.Session) -> Iterator[sftpd.DirEntry]:
        self._require_dir(path)
        with self._conn() as db:
            rows = db.execute(
                "SELECT path, is_dir, length(data), mtime FROM nodes WHERE parent = ?"
                " ORDER BY path", (path,),
            ).fetchall()  # fmt: skip
        for child, is_dir, size, mtime in rows:
            attrs = sftpd.directory_info(mtime) if is_dir else sftpd.file_info(size or 0, mtime)
            yield sftpd.DirEntry(paths.basename(child), attrs)

    def _require_dir(self, path: str) -> None:
        if path != "/" and not self.stat(path, None).is_dir:  # type: ignore[arg-type]
            raise sftpd.NotADirectory()

    def make_dir(self, path: str, session: sftpd.Session) -> None:
        self._require_dir(paths.parent(path))
        with self._conn() as db:
            try:
                db.execute("INSERT INTO nodes VALUES (?, ?, 1, NULL, ?)",
                           (path, paths.parent(path), time.time()))  # fmt: skip
            except sqlite3.IntegrityError:
                raise sftpd.FileAlreadyExists() from None

    def remove_dir(self, path: str, session: sftpd.Session) -> None:
        if not self.stat(path, session).is_dir:
            raise sftpd.NotADirectory()
        with self._conn() as db:
            if db.execute("SELECT 1 FROM nodes WHERE parent = ? LIMIT 1", (path,)).fetchone():
                raise sftpd.DirectoryNotEmpty()
            db.execute("DELETE FROM nodes WHERE path = ?", (path,))

    def remove_file(self, path: str, session: sftpd.Session) -> None:
        if self.stat(path, session).is_dir:
            raise sftpd.IsADirectory()
        with self._conn() as db:
            db.execute("DELETE FROM nodes WHERE path = ?", (path,))

    def rename(self, src: str, dst: str, session: sftpd.Session, *, overwrite: bool) -> None:
        self.stat(src, session)
        self._require_dir(paths.parent(dst))
        with self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if self._row(db, dst) is not None:
                    if not overwrite:
                        raise sftpd.FileAlreadyExists()
                    db.execute("DELETE FROM nodes WHERE path = ?", (dst,))
                rows = db.execute(
                    "SELECT path FROM nodes WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                    (src, _like_prefix(src)),
                ).fetchall()
                for (old,) in rows:
                    new = dst + old[len(src) :]
                    db.execute("UPDATE nodes SET path = ?, parent = ? WHERE path = ?",
                               (new, paths.parent(new), old))  # fmt: skip
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def read_file(self, path: str, session: sftpd.Session) -> bytes:
        with self._conn() as db:
            row = db.execute("SELECT is_dir, data FROM nodes WHERE path = ?", (path,)).fetchone()
        if row is None:
            raise sftpd.NoSuchFile()
        if row[0]:
            raise sftpd.IsADirectory()
        return bytes(row[1] or b"")

    def write_file(self, path: str, data: bytes, session: sftpd.Session) -> None:
        self._require_dir(paths.parent(path))
        with self._conn() as db:
            row = self._row(db, path)
            if row is not None and row[0]:
                raise sftpd.IsADirectory()
            db.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?, 0, ?, ?)",
                       (path, paths.parent(path), data, time.time()))  # fmt: skip


def _like_prefix(path: str) -> str:
    escaped = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"
