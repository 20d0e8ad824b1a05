"""The search index (SQLite FTS5, a file of its own) is written by a process of its own: ``Indexer`` is the
store's side of it, ``main()`` the process, this file run as a program (``python indexer.py``; it needs
nothing but the standard library, so it starts in a few tens of milliseconds).

Why a process and not a thread: sqlite3 lets go of the GIL on every row it steps, and pyzmq on every frame
it receives, so a thread writing the index and the serving loop hand the GIL to each other all the time. On
this project's machine that doubled the loop's own CPU time per message (``scripts/microbench.py gil``), and
the loop is what every message waits for. A process has its own interpreter and its own GIL.

The index is derived data: the process reads what it indexes from the history file itself (SQLite in WAL
mode lets it read while the server writes), so the store tells it only how far each room's history goes
(``tops``) and where rooms were trimmed (``trims``). At start it indexes whatever the history holds beyond
what the index has (all of it for a file from before the index existed, or after the index file was lost),
and an index of another epoch (or of another layout) is built again.

The pipe between them carries lines of JSON, one object each:

- to the process, first ``{"history": path, "index": path, "epoch": str, "tops": {room: seq}, "trims":
  {room: oldest seq kept}, "server": the server's pid}``, then any number of ``{"tops": ..., "trims":
  ...}`` and ``{"wait": n}``; end of input (the store closed the pipe) ends the process once what it was
  told is indexed; the server's process gone (its parent is another) ends it at once, between two
  transactions;
- from the process: ``{"ready": true}`` once it has the index open (before, a search finds nothing),
  ``{"done": n}`` once everything told before ``{"wait": n}`` is indexed,
  ``{"log": [level, text]}`` for the server's log, and ``{"failed": text}`` before it exits on an error.

The store never blocks on the pipe: what it cannot write at once waits, merged (numbers only grow), for the
next batch or the store's next tick (``pump``, about once a second). One process writes an index file at a
time: it holds a lock on ``<index>.lock`` while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import logging
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("zmqchat.server")

VERSION = "2"  # of the index's own layout: another one is dropped and built again
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # room, seq -> the words' rowid: only for trimming a room (one b-tree insert per message)
    ("CREATE TABLE IF NOT EXISTS entries (room TEXT NOT NULL, seq INTEGER NOT NULL, id INTEGER NOT NULL, "
     "PRIMARY KEY (room, seq)) WITHOUT ROWID"),
    ("CREATE VIRTUAL TABLE IF NOT EXISTS words USING fts5(text, sender, room, seq UNINDEXED, ts UNINDEXED, "
     "tokenize = 'unicode61 remove_diacritics 2')"),
]
CHUNK = 2000  # rows per transaction
GATHER = 2000  # rows gathered before a transaction while live ...
GATHER_SECONDS = 0.05  # ... or for this long after the first news: about how far the index lags
BUSY_TIMEOUT = 10.0  # seconds
LOCK_SECONDS = 30.0  # for the index file's lock (an earlier process finishing its transaction), then fail
FAILED = "search index %s: %s (search answers with an error until a batch 30 s later starts it again)"


class Indexer:
    """The store's side: starts the process, tells it of each committed batch (``add``), and reads what it
    says. ``failed`` is why the index cannot be used, once it cannot (the process said so, or ended)."""

    STOP_SECONDS = 10.0  # for the process to finish what it was told, after which it is killed (by its pid)

    def __init__(self, history: Path, path: Path, epoch: str, tops: dict[str, int],
                 trims: dict[str, int] | None = None) -> None:
        self.history, self.path, self.epoch = history, path, epoch
        self._start_tops = dict(tops)
        self._start_trims = dict(trims or {})
        self._lock = threading.RLock()  # the loop's thread and the checkpointer's (pump) share this
        self._tops: dict[str, int] = {}  # not yet written to the pipe
        self._trims: dict[str, int] = {}
        self._out = b""  # written in part: the rest goes first
        self._in = b""  # a line read in part
        self._asked = 0  # the newest {"wait": n}
        self._done = 0  # the newest {"done": n}
        self._failed = ""
        self._ready = False  # the process has the index open (its tables exist): it can be searched
        self._proc: subprocess.Popen | None = None
        self._wfd = self._rfd = -1

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def failed(self) -> str:
        with self._lock:
            if not self._failed and self._proc is not None:
                self._read()
            return self._failed

    @property
    def ready(self) -> bool:
        """Whether the index can be searched: its process has opened it (before that, it finds nothing)."""
        with self._lock:
            if not self._ready and self._proc is not None:
                self._read()
            return self._ready

    def fail(self, why: str) -> None:
        """Count the index as failed (the store met an error of ours)."""
        with self._lock:
            self._fail(why)

    def start(self) -> None:
        try:
            # close_fds (the default): the process holds none of the server's sockets or files
            self._proc = subprocess.Popen([sys.executable, "-I", str(Path(__file__).resolve())],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as exc:
            self._fail(f"cannot start the index process: {exc}")
            return
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._wfd, self._rfd = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        os.set_blocking(self._wfd, False)
        os.set_blocking(self._rfd, False)
        self._send({"history": str(self.history), "index": str(self.path), "epoch": self.epoch,
                    "tops": self._start_tops, "trims": self._start_trims, "server": os.getpid()})

    def add(self, tops: dict[str, int], trims: dict[str, int]) -> bool:
        """These rooms' histories now go up to ``tops`` (committed), and keep nothing below ``trims``. False
        once the index has failed (``failed`` says why)."""
        with self._lock:
            return self._add(tops, trims)

    def pump(self) -> None:
        """Write what waits for the pipe, and read what the process said (the store's tick)."""
        with self._lock:
            if self._proc is not None and not self._failed:
                self._add({}, {})

    def _add(self, tops: dict[str, int], trims: dict[str, int]) -> bool:
        if self._proc is None or self._failed:
            return False
        for room, seq in tops.items():
            if seq > self._tops.get(room, 0):
                self._tops[room] = seq
        for room, floor in trims.items():
            if floor > self._trims.get(room, 0):
                self._trims[room] = floor
        if self._out:
            self._write()
        if not self._out:
            self._send_news()
        self._read()
        return not self._failed

    def wait(self, timeout: float) -> bool:
        """Whether everything told so far was indexed within ``timeout`` seconds (tests, benchmarks)."""
        with self._lock:
            if self._proc is None or self._failed:
                return not self._failed
            deadline = time.monotonic() + timeout
            self._asked += 1
            target = self._asked
            self._send_news()
            self._send({"wait": target})
            while (self._out or self._done < target) and not self._failed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                readable, writable = _ready(self._rfd, self._wfd if self._out else -1, left)
                if writable:
                    self._write()
                if readable:
                    self._read()
            return not self._failed

    def stop(self) -> None:
        """End the process once it has indexed what it was told (at most STOP_SECONDS, then it is killed)."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        deadline = time.monotonic() + self.STOP_SECONDS
        if not self._failed:
            self._send_news()
            while self._out and time.monotonic() < deadline:
                _, writable = _ready(-1, self._wfd, max(0.0, deadline - time.monotonic()))
                if writable and not self._write():
                    break
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]  (end of input: the process finishes and exits)
        while time.monotonic() < deadline:  # read what it says meanwhile, so it never waits on a full pipe
            readable, _ = _ready(self._rfd, -1, max(0.0, deadline - time.monotonic()))
            if readable and not self._read_some(proc):
                break
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("search index %s: the index process did not end; killed", self.path)
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]

    # -- the pipe

    def _send_news(self) -> None:
        if self._tops or self._trims:
            news, self._tops, self._trims = {"tops": self._tops, "trims": self._trims}, {}, {}
            self._send(news)

    def _send(self, obj: dict) -> None:
        self._out += json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        self._write()

    def _write(self) -> bool:
        try:
            written = os.write(self._wfd, self._out)
        except BlockingIOError:
            return True
        except OSError as exc:  # the process is gone (EPIPE)
            self._out = b""
            self._ended(exc)
            return False
        self._out = self._out[written:]
        return True

    def _read(self) -> None:
        if self._proc is not None:
            self._read_some(self._proc)

    def _read_some(self, proc: subprocess.Popen) -> bool:
        """Take what the process said; False at the end of its output."""
        while True:
            try:
                data = os.read(self._rfd, 65536)
            except BlockingIOError:
                return True
            except OSError as exc:
                self._ended(exc)
                return False
            if not data:
                if self._proc is not None:  # not stopping: it ended by itself
                    self._ended(None)
                return False
            lines = (self._in + data).split(b"\n")
            self._in = lines.pop()
            for line in lines:
                self._said(line)

    def _said(self, line: bytes) -> None:
        try:
            said = json.loads(line)
            if "done" in said:
                self._done = max(self._done, int(said["done"]))
            elif "ready" in said:
                self._ready = True
            elif "log" in said:
                level, text = said["log"]
                log.log(int(level), "%s", text)
            elif "failed" in said:
                self._fail(str(said["failed"]))
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("search index %s: the index process said %r (%s)", self.path, line[:80], exc)

    def _ended(self, exc: OSError | None) -> None:
        code = None
        if self._proc is not None:  # reaped now, also after it said why (no zombie until the next start)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(1.0)
        self._fail(f"the index process ended (exit status {code})" if exc is None
                   else f"the index process cannot be reached ({exc})")

    def _fail(self, why: str) -> None:
        if not self._failed:
            self._failed = why
            log.error(FAILED, self.path, why)


def _ready(rfd: int, wfd: int, timeout: float | None) -> tuple[bool, bool]:
    """(readable, writable) of two descriptors (-1: not asked) within ``timeout`` seconds. poll, not select:
    a busy server's descriptors go past select's 1024."""
    poller = select.poll()
    if rfd >= 0:
        poller.register(rfd, select.POLLIN)
    if wfd >= 0:
        poller.register(wfd, select.POLLOUT)
    events = dict(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))
    # a closed other end (POLLHUP, POLLERR) reads as ready: the read or write then says what happened
    return (bool(events.get(rfd, 0)) if rfd >= 0 else False), (bool(events.get(wfd, 0)) if wfd >= 0 else False)


# -- the process


def _words_of(body: bytes) -> tuple[str, str | None]:
    """(sender, text) of a stored body, or ("", None) for one that is not a message (damaged)."""
    try:
        msg = json.loads(body)
        sender, text = str(msg["sender"]), str(msg["text"])
        if not (text.isascii() and sender.isascii()):
            (text + sender).encode()  # a lone surrogate ("\ud800") cannot be written: a damaged row
        return sender, text
    except (ValueError, KeyError, TypeError):  # UnicodeError is a ValueError
        return "", None


class _Orphaned(Exception):
    """The server's process is gone: stop at once (what is left is indexed at the next start)."""


def _lock(path: str):
    """An exclusive lock on ``path`` (made if missing), waited for up to LOCK_SECONDS: an index process left
    by a server that was killed finishes its transaction before the next one writes."""
    lockfile = open(path, "a")  # noqa: SIM115 (held for the process's life, closed in close())
    deadline = time.monotonic() + LOCK_SECONDS
    while True:
        try:
            fcntl.flock(lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lockfile
        except BlockingIOError:
            if time.monotonic() > deadline:
                lockfile.close()
                raise sqlite3.OperationalError(f"{path}: held by another index process") from None
            time.sleep(0.05)  # a poll of the lock: flock has no timeout of its own


class _Writer:
    """Indexes the history's rows up to what it is told, in time order across rooms (results are newest
    first by insertion into the index, so a rebuild inserts as the live path does: the same code)."""

    def __init__(self, history: str, path: str, epoch: str, say, server: int) -> None:
        self.path, self.epoch, self.say = path, epoch, say
        self.server = server  # the server's pid: once this process's parent is another, the server is gone
        self._lockfile = _lock(path + ".lock")
        self.db = self._open()
        # read-only: never creates or changes the history (the server's process is its one writer)
        self.source = sqlite3.connect(Path(history).resolve().as_uri() + "?mode=ro", uri=True,
                                      isolation_level=None, timeout=BUSY_TIMEOUT)
        self.want: dict[str, int] = {}  # room -> newest seq of the history (as told), for rooms owed rows
        self.trims: dict[str, int] = {}  # room -> oldest seq kept, not yet applied
        self._upto: dict[str, int] = {}  # room -> newest seq indexed
        self._next_id = (self.db.execute("SELECT MAX(rowid) FROM words").fetchone()[0] or 0) + 1

    def close(self) -> None:
        self.source.close()
        self.db.close()
        self._lockfile.close()  # and with it the lock

    def orphaned(self) -> bool:
        return os.getppid() != self.server

    def _open(self) -> sqlite3.Connection:
        """The index, ready for this history's epoch; a damaged or foreign file is only an index: built again."""
        for attempt in (1, 2):
            db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # derived data: a lost tail is indexed again at start
                db.execute(SCHEMA[0])
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("version", VERSION) != VERSION:
                    self.say(logging.INFO, f"search index {self.path}: of another layout, rebuilding")
                    db.execute("DROP TABLE IF EXISTS entries")
                    db.execute("DROP TABLE IF EXISTS words")
                for statement in SCHEMA[1:]:
                    db.execute(statement)
                if meta.get("epoch") != self.epoch or meta.get("version") != VERSION:
                    if meta.get("epoch") not in (None, self.epoch):
                        self.say(logging.INFO, f"search index {self.path}: of another history, rebuilding")
                    db.execute("BEGIN")
                    db.execute("DELETE FROM entries")
                    db.execute("DELETE FROM words")
                    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                   [("epoch", self.epoch), ("version", VERSION)])
                    db.execute("COMMIT")
                return db
            except sqlite3.DatabaseError as exc:
                db.close()
                if attempt == 2:
                    raise
                self.say(logging.WARNING, f"search index {self.path}: {exc}; building it again")
                for suffix in ("", "-wal", "-shm"):
                    Path(self.path + suffix).unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def tell(self, tops: dict, trims: dict) -> None:
        for room, seq in tops.items():
            if isinstance(room, str) and isinstance(seq, int) and seq > self.want.get(room, 0):
                self.want[room] = seq
        for room, floor in trims.items():
            if isinstance(room, str) and isinstance(floor, int) and floor > self.trims.get(room, 0):
                self.trims[room] = floor

    def upto(self, room: str) -> int:
        upto = self._upto.get(room)
        if upto is None:
            upto = self._upto[room] = self.db.execute("SELECT MAX(seq) FROM entries WHERE room = ?",
                                                      (room,)).fetchone()[0] or 0
        return upto

    def owed(self) -> int:
        """About how many rows are told and not indexed (skipped numbers count too)."""
        return sum(max(0, top - self.upto(room)) for room, top in self.want.items())

    def index(self) -> int:
        """Index every row told of, in transactions of CHUNK rows, then apply the trims; the rows indexed."""
        rooms = [(room, top) for room, top in self.want.items() if top > self.upto(room)]
        self.want = {}
        chunk = max(50, CHUNK * 10 // max(1, len(rooms)))  # rows held per room while merging
        streams = [self._rows_of(room, self.upto(room), top, chunk) for room, top in rooms]
        done, batch = 0, []
        for row in heapq.merge(*streams, key=lambda row: (row[2], row[0], row[1])):
            batch.append(row)
            if len(batch) >= CHUNK:
                if self.orphaned():
                    raise _Orphaned
                self._write(batch, {})
                done, batch = done + len(batch), []
        trims, self.trims = self.trims, {}
        if batch or trims:
            self._write(batch, trims)
            done += len(batch)
        return done

    def _rows_of(self, room: str, upto: int, top: int, chunk: int):
        while upto < top:
            rows = self.source.execute("SELECT seq, ts, body FROM messages WHERE room = ? AND seq > ? AND seq <= ? "
                                       "ORDER BY seq LIMIT ?", (room, upto, top, chunk)).fetchall()
            for seq, ts, body in rows:
                yield (room, seq, ts, *_words_of(body))
            if len(rows) < chunk:
                return
            upto = rows[-1][0]

    def _write(self, rows: list, trims: dict[str, int]) -> None:
        """One transaction: ``rows`` (room, seq, ts, sender, text) inserted, each once, then the trims."""
        entries, words = [], []
        for room, seq, ts, sender, text in rows:
            if seq <= self.upto(room):
                continue  # indexed already
            self._upto[room] = seq
            if text is None:
                continue  # a damaged row (the history's own checks report it)
            entries.append((room, seq, self._next_id))
            words.append((self._next_id, text, sender, room, seq, ts))
            self._next_id += 1
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", entries)
            db.executemany("INSERT INTO words (rowid, text, sender, room, seq, ts) VALUES (?, ?, ?, ?, ?, ?)", words)
            for room, floor in trims.items():
                db.execute("DELETE FROM words WHERE rowid IN (SELECT id FROM entries WHERE room = ? AND seq < ?)",
                           (room, floor))
                db.execute("DELETE FROM entries WHERE room = ? AND seq < ?", (room, floor))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise


class _Lines:
    """Lines of JSON from a file descriptor, read as they come."""

    def __init__(self, fd: int) -> None:
        self.fd, self._part, self.eof = fd, b"", False

    def read(self, timeout: float | None) -> list[dict]:
        """What arrived within ``timeout`` seconds (None: wait for something, or the end)."""
        if self.eof:
            return []
        readable, _ = _ready(self.fd, -1, timeout)
        if not readable:
            return []
        data = os.read(self.fd, 1 << 20)
        if not data:
            self.eof = True
            return []
        lines = (self._part + data).split(b"\n")
        self._part = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


def main() -> int:
    # A Ctrl-C or hangup at the server's terminal, or a stop signal to its process group, is the server's to
    # handle: this process ends when the server closes the pipe, or is gone.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)

    def say(obj: dict) -> None:
        sys.stdout.buffer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        sys.stdout.buffer.flush()

    def say_log(level: int, text: str) -> None:
        say({"log": [level, text]})

    lines = _Lines(sys.stdin.fileno())
    told: list[dict] = []
    while not told and not lines.eof:
        told = lines.read(None)
    if not told:
        return 0
    config, told = told[0], told[1:]
    path = str(config.get("index", ""))
    try:
        writer = _Writer(str(config["history"]), path, str(config["epoch"]), say_log,
                         int(config.get("server", os.getppid())))
    except (sqlite3.Error, OSError) as exc:
        say({"failed": str(exc)})
        return 1
    try:
        say({"ready": True})
        writer.tell(config.get("tops", {}), config.get("trims", {}))
        caught_up = writer.index()
        if caught_up:
            say_log(logging.INFO, f"search index {path}: indexed {caught_up} stored messages")
        while True:
            waits = []
            for item in told:
                if "wait" in item:
                    waits.append(item["wait"])
                else:
                    writer.tell(item.get("tops", {}), item.get("trims", {}))
            if not waits and not lines.eof:
                # Gather up to GATHER rows or GATHER_SECONDS: FTS5 costs half as much per row in
                # transactions of 2,000 as of 100.
                deadline = time.monotonic() + GATHER_SECONDS
                while writer.owed() < GATHER and not waits and not lines.eof:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    for item in lines.read(left):
                        if "wait" in item:
                            waits.append(item["wait"])
                        else:
                            writer.tell(item.get("tops", {}), item.get("trims", {}))
            writer.index()
            for n in waits:
                say({"done": n})
            if lines.eof or writer.orphaned():
                return 0
            told = lines.read(None)
    except (BrokenPipeError, _Orphaned):
        # the server is gone: so is the reader of what is still buffered for it (no "Exception ignored")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 (whatever it is, the server is told, and logs it)
        with contextlib.suppress(OSError):
            say({"failed": str(exc) if isinstance(exc, sqlite3.Error) else repr(exc)})
        return 1
    finally:
        writer.close()


if __name__ == "__main__":
    sys.exit(main())
