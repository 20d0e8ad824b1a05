"""Room history: per-room sequence numbers, the last N messages of each room, and dedupe of client
message ids. Persistence is SQLite from the standard library (WAL, one transaction per batch).

No sockets here. The server appends a batch, calls ``commit()``, and only then publishes, so a message
that anyone has seen is on disk and its sequence number is never reused after a crash.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from .errors import ZmqchatError

log = logging.getLogger("zmqchat.server")


class HistoryError(ZmqchatError):
    """The history database refused a write (locked, full, broken); its text says which file and why."""

BUSY_TIMEOUT = 1.0  # seconds
DEDUPE_KEYS = 200_000  # (sender, mid) pairs remembered, in memory and reloaded from disk

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    dedupe_key TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
"""


class History:
    """Sequencer and store. ``path`` None keeps everything in memory only."""

    def __init__(self, limit: int, path: str | Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(1, limit)
        self.clock = clock  # only to tell the checkpointer when writes pause
        self.path = Path(path) if path is not None else None
        self._rooms: dict[str, deque[tuple[int, bytes]]] = {}
        self._last: dict[str, int] = {}
        self._committed: dict[str, int] = {}  # room -> newest seq on disk
        self._dedupe: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._pending: list[tuple[str, int, float, str, bytes]] = []
        self._untrimmed: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._last_write = 0.0  # monotonic time of the last commit, read by the checkpointer
        # The epoch names this store: sequence numbers are only comparable within one epoch.
        self.epoch = secrets.token_hex(8)
        if self.path is not None:
            self._open(self.path)

    # -- persistence

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A short busy timeout: a lock held by another program stalls the serving loop at most this long.
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; see docs/history.md
        # Checkpoints (the only fsyncs in this mode) run on their own thread, off the publish path.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("PRAGMA journal_size_limit=67108864")  # a rewound WAL file shrinks back to 64 MiB
        db.executescript(_SCHEMA)
        self._db = db
        db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (self.epoch,))
        self.epoch = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        for room, in db.execute("SELECT DISTINCT room FROM messages").fetchall():
            rows = db.execute(
                "SELECT seq, body FROM messages WHERE room = ? ORDER BY seq DESC LIMIT ?", (room, self.limit)
            ).fetchall()
            rows.reverse()
            self._rooms[room] = deque(((seq, bytes(body)) for seq, body in rows), maxlen=self.limit)
            self._last[room] = self._committed[room] = rows[-1][0] if rows else 0
        keys = db.execute(
            "SELECT dedupe_key, room, seq FROM messages ORDER BY ts DESC LIMIT ?", (DEDUPE_KEYS,)
        ).fetchall()
        for key, room, seq in reversed(keys):
            self._dedupe[key] = (room, seq)
        self._checkpointer = _Checkpointer(path, lambda: self.clock() - self._last_write)
        self._checkpointer.start()

    def commit(self) -> None:
        """Make every appended message durable (one transaction), then trim old rows now and then."""
        if self._db is None or not self._pending:
            self._pending.clear()
            return
        db = self._db
        untrimmed = dict(self._untrimmed)  # rows per room since its last trim, applied once committed
        for room, _seq, _ts, _key, _body in self._pending:
            untrimmed[room] = untrimmed.get(room, 0) + 1
        trim = [room for room, n in untrimmed.items() if n >= max(64, self.limit // 8)]
        try:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?)", self._pending)
            for room in trim:
                db.execute("DELETE FROM messages WHERE room = ? AND seq <= ?", (room, self._last[room] - self.limit))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # Locked by another program, disk full, I/O error: nothing of the batch is kept on disk, and
            # the batch stays pending so the next commit() tries it again.
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            raise HistoryError(f"history database {self.path}: {exc}") from exc
        for room in trim:
            del untrimmed[room]
        for room, seq, _ts, _key, _body in self._pending:
            self._committed[room] = seq
        self._untrimmed = untrimmed
        self._pending.clear()
        self._last_write = self.clock()

    def close(self) -> None:
        if self._db is not None:
            try:
                self.commit()
                for room in list(self._untrimmed):
                    self._db.execute("DELETE FROM messages WHERE room = ? AND seq <= ?",
                                     (room, self._last[room] - self.limit))
            except (HistoryError, sqlite3.Error) as exc:
                log.error("could not save the last messages: %s", exc)
            self._db.close()
            self._db = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None

    # -- sequencing

    def last_seq(self, room: str) -> int:
        """The newest sequence number of ``room`` (0 before its first message)."""
        return self._last.get(room, 0)

    def committed_seq(self, room: str) -> int:
        """The newest sequence number of ``room`` that is on disk (all of them without persistence)."""
        return self._committed.get(room, 0) if self._db is not None else self._last.get(room, 0)

    def seen(self, key: str) -> tuple[str, int] | None:
        """Where the message with this dedupe key was published, if it was."""
        return self._dedupe.get(key)

    def append(self, room: str, ts: float, key: str, make_body) -> tuple[int, bytes]:
        """Give the next sequence number of ``room`` to a message; ``make_body(seq)`` returns its
        encoded body. Durable only after ``commit()``."""
        seq = self._last.get(room, 0) + 1
        body = make_body(seq)
        self._last[room] = seq
        store = self._rooms.get(room)
        if store is None:
            store = self._rooms[room] = deque(maxlen=self.limit)
        store.append((seq, body))
        self._dedupe[key] = (room, seq)
        if len(self._dedupe) > DEDUPE_KEYS:
            self._dedupe.popitem(last=False)
        if self._db is not None:
            self._pending.append((room, seq, ts, key, body))
        return seq, body

    # -- queries

    def range(self, room: str, after: int = 0, before: int = 0, limit: int = 100,
              newest: bool = True) -> list[tuple[int, bytes]]:
        """Messages with ``after < seq < before`` (``before`` 0: no upper bound), in order: the newest
        ``limit`` of them, or with ``newest=False`` the oldest ``limit`` (to fill a gap from its start)."""
        store = self._rooms.get(room)
        if not store or limit <= 0:
            return []
        first = store[0][0]
        end = len(store) if before <= 0 else max(0, min(len(store), before - first))
        start = max(0, after + 1 - first)
        if newest:
            start = max(start, end - limit)
        else:
            end = min(end, start + limit)
        if start >= end:
            return []
        return list(islice(store, start, end))

    def size(self) -> int:
        """Messages held, over all rooms."""
        return sum(len(store) for store in self._rooms.values())

    def rooms(self) -> list[str]:
        return sorted(self._rooms)


class _Checkpointer(threading.Thread):
    """Copies the WAL into the database about once a second, on its own connection and thread, so the
    serving loop never waits for a checkpoint's fsync (it doubled the p99 latency when done inline)."""

    INTERVAL = 1.0  # seconds
    # Rewinding the WAL (TRUNCATE) holds the writer for a checkpoint's fsync: 10-25 ms here. So it is done
    # when the WAL is over 16 MiB and writes have paused for a moment, or regardless past 256 MiB.
    TRUNCATE_PAGES = 4096
    TRUNCATE_PAGES_ANYWAY = 65536
    IDLE = 0.5  # seconds without a commit

    def __init__(self, path: Path, idle_for: Callable[[], float]) -> None:
        super().__init__(name="zmqchat-checkpoint", daemon=True)
        self.path = path
        self.idle_for = idle_for  # seconds since the last commit
        self._stopping = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            while not self._stopping.wait(self.INTERVAL):
                # PASSIVE never waits, but under steady writes the WAL is never idle long enough to be
                # rewound, so it would grow without bound: past a size, TRUNCATE rewinds it.
                result = self._checkpoint(db, "PASSIVE")
                pages = result[1] if result is not None else 0
                idle = self.idle_for() > self.IDLE
                if (pages > self.TRUNCATE_PAGES and idle) or pages > self.TRUNCATE_PAGES_ANYWAY:
                    self._checkpoint(db, "TRUNCATE")
            self._checkpoint(db, "TRUNCATE")
        finally:
            db.close()

    @staticmethod
    def _checkpoint(db: sqlite3.Connection, mode: str) -> tuple[int, int, int] | None:
        """(busy, WAL pages, pages checkpointed), or None if the database was busy."""
        try:
            return db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            return None  # busy now; the next one catches up, and the WAL itself is durable

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)
