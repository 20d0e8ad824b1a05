"""The store: what the server keeps of each room and must remember across restarts (messages by sequence
number, reserved and skipped numbers, the dedupe state of each sender). ``Store`` is the interface the
sequencer and the core use; ``SqliteStore`` keeps it in SQLite from the standard library (WAL, one
transaction per batch), ``MemoryStore`` in memory (tests, ``--no-persist``).

A batch is submitted and becomes durable later (``submit``, then ``durable``): both stores here make it
durable before ``submit`` returns, a store that writes on a thread or waits for a peer's acknowledgement
reports it when it happens. Batches become durable in order. Reads go by sequence number in either
direction (``read``), within what the store keeps of each room (``retention``).

The rule ``SqliteStore`` keeps: **a sequence number is never handed out twice within one epoch, whatever
the disk lost.** The server submits a batch and publishes it only once it is durable, so a message anyone
has seen is on disk as far as the process can tell. Commits are not fsynced (``synchronous=NORMAL``), so a
power cut may still lose the last of them; hence numbers are reserved ahead of use in blocks, each
reservation written with an fsync, and on open everything between the newest message on disk and the
reservation is recorded as skipped (``lost()``) instead of being given out again.

And a damaged or foreign file is never loaded as if it were valid: ``load()`` refuses it with one line
(``StoreError``), or with ``repair=True`` deletes and counts the damaged rows. No sockets here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
import sqlite3
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from operator import itemgetter
from pathlib import Path

from ..protocol import MAX_TOPIC_CHARS, name_problem, room_problem
from . import search as q
from .indexer import Indexer
from .storage import (  # noqa: F401 (the interface, importable from here too)
    RETENTION,
    Batch,
    Found,
    Loaded,
    Producer,
    Row,
    SearchOff,
    Store,
    StoreError,
    TopicRow,
)

log = logging.getLogger("zmqchat.server")


BUSY_TIMEOUT = 1.0  # seconds
MAX_SEQ = 2**53 - 1  # largest sequence number: exact as a JSON number everywhere
BLOCK_MIN = 64  # sequence numbers reserved at once per room, at least (also the first block after a start)
BLOCK_MAX = 65536  # ... and at most
BLOCK_FAST = 1.0  # seconds: a block used up sooner than this doubles the next one
BLOCK_SLOW = 10.0  # seconds: a block that lasted longer than this halves the next one
INDEX_RESTART = 30.0  # seconds after a failed search index missed its first batch, its process is started again
SKIPPED_KEPT = 64  # skipped ranges remembered per room (the newest); older ones are forgotten

# Version 0 is what zmqchat wrote before it had schema versions (user_version 0: meta + messages).
_BASE = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE messages (room TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, dedupe_key TEXT NOT NULL,
       body BLOB NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID""",
]
# MIGRATIONS[n] takes a file from version n to n + 1, in the same transaction as the rest of the open. A fresh
# file is version 0 plus every step, so a new file and a migrated one are the same. Append, never edit.
MIGRATIONS: list[list[str]] = [
    [  # 1: reserved and skipped sequence numbers; per-sender dedupe state
        "CREATE TABLE reservations (room TEXT PRIMARY KEY, upto INTEGER NOT NULL) WITHOUT ROWID",
        """CREATE TABLE skipped (room TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
           PRIMARY KEY (room, first)) WITHOUT ROWID""",
        """CREATE TABLE producers (producer TEXT PRIMARY KEY, identity TEXT NOT NULL, next INTEGER NOT NULL,
           room TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL) WITHOUT ROWID""",
    ],
    [  # 2: room topics
        """CREATE TABLE topics (room TEXT PRIMARY KEY, text TEXT NOT NULL, by TEXT NOT NULL, ts REAL NOT NULL,
           owner TEXT NOT NULL) WITHOUT ROWID""",
    ],
]
SCHEMA_VERSION = 2  # PRAGMA user_version this code writes; len(MIGRATIONS)
_COLUMNS = {  # what every table must look like once migrated
    "meta": ("key", "value"),
    "messages": ("room", "seq", "ts", "dedupe_key", "body"),
    "reservations": ("room", "upto"),
    "skipped": ("room", "first", "last"),
    "producers": ("producer", "identity", "next", "room", "seq", "ts"),
    "topics": ("room", "text", "by", "ts", "owner"),
}
_KEYS = {"reservations": ("room",), "skipped": ("room", "first"), "producers": ("producer",), "topics": ("room",)}
_UNUSABLE = {  # sqlite3.DatabaseError text -> what it means here
    "file is not a database": "not a SQLite database",
    "database disk image is malformed": "the SQLite file is damaged (truncated, or pages overwritten)",
}
_seq_of = itemgetter(0)
_decode_json = json.JSONDecoder().raw_decode

def boot_id() -> str | None:
    """This boot of the machine (Linux), or None where it cannot be told."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def next_block(block: int, lasted: float) -> int:
    """How many numbers the next reservation of a room takes, given the size of the last one and how long
    (seconds) it lasted: about a second of the room's traffic, between BLOCK_MIN and BLOCK_MAX."""
    if lasted < BLOCK_FAST:
        return min(block * 2, BLOCK_MAX)
    if lasted > BLOCK_SLOW:
        return max(block // 2, BLOCK_MIN)
    return block


def ranges_of(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged (first, last) ranges covering ``seqs``."""
    out: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return [(first, last) for first, last in out]


def _is_seq(value: object, low: int = 1) -> bool:
    return type(value) is int and low <= value <= MAX_SEQ


def _is_room(value: object) -> bool:
    return isinstance(value, str) and room_problem(value) is None


def _is_ts(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _producer_ok(producer: object, identity: object, nxt: object, room: object, seq: object, ts: object) -> bool:
    return (isinstance(producer, str) and producer != "" and isinstance(identity, str) and _is_seq(nxt, 0) and _is_ts(ts)
            and ((room == "" and seq == 0 and type(seq) is int) or (_is_room(room) and _is_seq(seq))))


def _topic_ok(room: object, text: object, by: object, ts: object, owner: object) -> bool:
    return (_is_room(room) and isinstance(text, str) and len(text) <= MAX_TOPIC_CHARS and isinstance(by, str)
            and (by == "" or name_problem(by) is None) and _is_ts(ts) and isinstance(owner, str))


def _body_ok(body: object, room: str, seq: int) -> bool:
    """A stored body is the JSON object the server published: UTF-8, with this room and seq."""
    if type(body) is not bytes:
        return False
    try:
        text = body.decode("utf-8")
        obj, end = _decode_json(text)  # json.loads without its wrappers: 1.5 us for a 300-byte body here
    except (ValueError, RecursionError):
        return False
    if end != len(text):
        return False
    return isinstance(obj, dict) and obj.get("room") == room and obj.get("seq") == seq


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Damage:
    """Damaged rows found while opening: a count per table and the first one of each, described."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, table: str, what: str, count: int = 1) -> None:
        self.counts[table] = self.counts.get(table, 0) + count
        self.first.setdefault(table, what)

    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        total = self.total()
        parts = [f"{n} in {table} ({self.first[table]})" for table, n in self.counts.items()]
        rows = f"{total} damaged row{'s' if total != 1 else ''}"
        if len(parts) == 1:  # "1 damaged row in messages (room '#a', seq 'abc')"
            return f"{rows} {parts[0].split(' ', 1)[1]}"
        return f"{rows}: " + ", ".join(parts)

class MemoryStore:
    """A store in memory: the newest ``retention`` messages of each room, nothing across restarts (nothing
    reserved or skipped). Every batch is durable once submitted."""

    def __init__(self, retention: int = RETENTION) -> None:
        self.retention = max(1, retention)
        self.epoch = secrets.token_hex(8)
        self._rooms: dict[str, deque[tuple[int, bytes, int]]] = {}  # seq, body, order of arrival over all rooms
        self._topics: dict[str, TopicRow] = {}
        self._producers: dict[str, Producer] = {}
        self._durable = 0
        self._arrivals = 0
        self._position = 0
        self._term = 0
        self._terms: dict[int, int] = {}
        self._skips: dict[str, list[tuple[int, int]]] = {}  # room -> ranges skip() recorded
        self._floor = 0

    def load(self, recent: int) -> Loaded:
        tops = {room: rows[-1][0] for room, rows in self._rooms.items() if rows}
        for room, ranges in self._skips.items():
            tops[room] = max([tops.get(room, 0)] + [last for _first, last in ranges])
        return Loaded(self.epoch, tops,
                      {room: [(seq, body) for seq, body, _n in list(rows)[-recent:]] for room, rows in self._rooms.items()},
                      sorted(self._producers.values(), key=itemgetter(5)), self.retention, dict(self._topics),
                      self._position, self._term, dict(self._terms),
                      {room: list(ranges) for room, ranges in self._skips.items()}, self._floor)

    def set_term(self, term: int, terms: dict[int, int]) -> None:
        self._term, self._terms = term, dict(terms)

    def skip(self, ranges: dict[str, list[tuple[int, int]]], floor: int = 0) -> None:
        for room, new in ranges.items():
            self._skips[room] = sorted(set(self._skips.get(room, []) + [tuple(r) for r in new]))  # type: ignore[misc]
        self._floor = max(self._floor, floor)

    def unskip(self, above: dict[str, int]) -> None:
        for room, top in above.items():
            if room in self._skips:
                self._skips[room] = [r for r in self._skips[room] if r[0] <= top]

    def adopt(self, epoch: str) -> None:
        if any(self._rooms.values()):
            raise StoreError("a store holding messages cannot take another epoch")
        self.epoch = epoch

    def submit(self, batch: Batch) -> None:
        self._topics.update(batch.topics)
        if batch.expire_before is not None:
            self._producers = {k: row for k, row in self._producers.items() if row[5] >= batch.expire_before}
        for producer, row in batch.producers.items():
            if row is None:
                self._producers.pop(producer, None)
            else:
                self._producers[producer] = row
        if batch.position:
            self._position = batch.position
        for room, seq, _ts, _key, body in batch.messages:
            rows = self._rooms.get(room)
            if rows is None:
                rows = self._rooms[room] = deque(maxlen=self.retention)
                if self._floor and room not in self._skips:
                    self._skips[room] = [(1, self._floor)]
            self._arrivals += 1
            rows.append((seq, body, self._arrivals))
        self._durable = batch.number

    def durable(self) -> int:
        return self._durable

    def read(self, room: str, after: int, before: int, limit: int, newest: bool) -> list[Row]:
        rows = self._rooms.get(room)
        if not rows or limit <= 0:
            return []
        start = bisect_right(rows, after, key=_seq_of)
        end = len(rows) if before <= 0 else bisect_left(rows, before, key=_seq_of)
        if newest:
            start = max(start, end - limit)
        else:
            end = min(end, start + limit)
        return [(seq, body) for seq, body, _n in islice(rows, start, end)] if start < end else []

    def lost(self, room: str, after: int, upto: int) -> list[tuple[int, int]]:
        return _clip(self._skips.get(room, ()), after, upto)

    def search(self, terms: list[q.Term], sender: str, room: str, limit: int) -> list[Found]:
        """By brute force over every message held: enough for tests and a --no-persist server."""
        found: list[tuple[int, Found]] = []
        for name in ([room] if room else self._rooms):
            for seq, body, arrival in self._rooms.get(name, ()):
                msg = json.loads(body)
                if (not sender or msg["sender"] == sender) and q.matches(terms, msg["text"]):
                    found.append((arrival, (name, seq, msg["ts"], msg["sender"], msg["text"])))
        found.sort(key=itemgetter(0), reverse=True)  # newest first, as the index's insertion order
        return [item[1] for item in found[:limit]]

    def close(self) -> None:
        pass


class SqliteStore:
    """The store in one SQLite file: the newest ``retention`` messages of each room, the reserved and
    skipped numbers, and the producers. ``load()`` opens the file and raises StoreError if it cannot be
    used; ``repair=True`` deletes damaged rows instead."""

    def __init__(self, path: str | Path, retention: int = RETENTION, clock: Callable[[], float] = time.monotonic,
                 repair: bool = False, search: bool = True) -> None:
        self.path = Path(path)
        self.search_on = search  # keep the search index (its process costs CPU per message: docs/benchmarks.md)
        self.retention = max(1, retention)
        self.clock = clock  # monotonic seconds: reservation block sizes, and the checkpointer's pauses
        self.repair = repair
        self._recent = 0  # messages per room load() checks and returns
        self._loaded_rows: dict[str, list[Row]] = {}
        self._newest: dict[str, int] = {}  # room -> newest seq on disk (or skipped)
        self._untrimmed: dict[str, int] = {}  # room -> rows written since its last trim
        self._reserved: dict[str, int] = {}  # room -> reserved up to, on disk
        self._block: dict[str, tuple[int, float]] = {}  # room -> (size, clock()) of its current reservation
        self._skipped: dict[str, list[tuple[int, int]]] = {}  # room -> skipped (first, last), oldest first
        self._new_skips: list[tuple[str, int, int]] = []  # found by the open, to log once it succeeded
        self._producers: list[Producer] = []  # as loaded at open, oldest first
        self._topics: dict[str, TopicRow] = {}
        self._durable = 0
        self._indexer: Indexer | None = None
        self._index_failed_at: float | None = None  # clock() of the first batch the failed index missed
        self._index: sqlite3.Connection | None = None  # the loop's connection to the search index, for queries
        self._damaged_reads: set[str] = set()  # rooms a read found a damaged row in (logged once each)
        self._db: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._last_write = 0.0  # monotonic time of the last commit, read by the checkpointer
        self.epoch = secrets.token_hex(8)  # replaced by the file's own at load()
        self.position = 0  # a pair's replication position of the newest batch on disk
        self._room_floor = 0  # rooms new to this file start numbering above this (a forced takeover's skip)
        self.term = 0
        self.terms: dict[int, int] = {}

    # -- opening: check, migrate, load

    def load(self, recent: int) -> Loaded:
        if self._db is None:
            self._recent = max(1, min(recent, self.retention))
            self._open(self.path)
        return Loaded(self.epoch, dict(self._newest), self._loaded_rows, list(self._producers), self.retention,
                      dict(self._topics), self.position, self.term, dict(self.terms),
                      {room: list(ranges) for room, ranges in self._skipped.items()}, self._room_floor)

    @property
    def index_path(self) -> Path:
        """The search index: its own file beside the history, so indexing never holds the history's lock."""
        return self.path.with_name(self.path.stem + ".search" + self.path.suffix)

    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A short busy timeout: a lock held by another program stalls the serving loop at most this long.
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"history database {path}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # Durable across a process crash; a power cut may lose the last commits: see docs/history.md
            db.execute("PRAGMA synchronous=FULL")  # ... but what the open writes (skips, repairs) is synced
            # Checkpoints (the other fsyncs in this mode) run on their own thread, off the publish path.
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute("PRAGMA journal_size_limit=67108864")  # a rewound WAL file shrinks back to 64 MiB
            db.execute("BEGIN IMMEDIATE")
            if self.repair:  # not at every open: 4 s for a 1,000,000-row file not in the page cache
                self._quick_check(db)
            self._migrate(db)
            damage = _Damage()
            self._load(db, damage)
            if damage.total() and not self.repair:
                raise StoreError(f"history database {path}: {damage.describe()}; start with --repair to skip "
                                   "and count damaged rows")
            db.execute("COMMIT")
            db.execute("PRAGMA synchronous=NORMAL")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            db.close()
            if isinstance(exc, sqlite3.Error):
                text = str(exc)
                if text in _UNUSABLE:
                    text = (f"{_UNUSABLE[text]} ({text}); move it away to start with an empty history, or rescue "
                            "its rows with the sqlite3 shell's .recover; --repair cannot mend this")
                raise StoreError(f"history database {path}: {text}") from exc
            raise
        if damage.total():
            log.warning("history database %s: repaired: %s deleted", path, damage.describe())
        for room, first, last in self._new_skips:
            log.info("history %s: seq %d-%d are not on disk (lost in a power cut, or repaired away): skipped, "
                     "numbering goes on at %d", room, first, last, last + 1)
        self._db = db
        self._checkpointer = _Checkpointer(path, lambda: self.clock() - self._last_write, self._pump_index)
        self._checkpointer.start()
        if self.search_on:
            self._indexer = Indexer(path, self.index_path, self.epoch, dict(self._newest), self._floors())
            self._indexer.start()

    def _quick_check(self, db: sqlite3.Connection) -> None:
        """Damage below the rows (pages, b-trees) is not what --repair mends: say so, then try to load anyway."""
        problems = [row[0] for row in db.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            log.warning("history database %s: quick_check: %s (pages are damaged; rows on them may fail to load)",
                        self.path, "; ".join(str(problem).replace("\n", "; ") for problem in problems))

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the file to SCHEMA_VERSION (a fresh file too), or refuse one this code cannot read."""
        where = f"history database {self.path}"
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{where} was written by a newer zmqchat (schema {version}, this one knows up to "
                               f"{SCHEMA_VERSION})")
        tables = {name for name, in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables:
            for statement in _BASE:
                db.execute(statement)
        elif version == 0 and not {"meta", "messages"} <= tables:
            raise StoreError(f"{where}: not a zmqchat history (tables: {', '.join(sorted(tables)) or 'none'})")
        elif version < SCHEMA_VERSION:
            log.info("%s: schema %d, migrating to %d", where, version, SCHEMA_VERSION)
        if version < SCHEMA_VERSION:
            self._check_columns(db, ("meta", "messages"))
            for step in MIGRATIONS[version:]:
                for statement in step:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        self._check_columns(db, _COLUMNS)

    def _check_columns(self, db: sqlite3.Connection, tables: Iterable[str]) -> None:
        for table in tables:
            found = tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
            if found != _COLUMNS[table]:
                shape = f"columns {', '.join(found)}" if found else "missing"
                raise StoreError(f"history database {self.path}: not a zmqchat history (table {table} {shape}; "
                                   f"expected {', '.join(_COLUMNS[table])})")

    def _load(self, db: sqlite3.Connection, damage: _Damage) -> None:
        """Load and check every table; damaged rows are counted (and deleted when repairing)."""
        self._load_epoch(db, damage)
        newest: dict[str, int] = {}  # room -> newest intact message on disk
        floor: dict[str, int] = {}  # room -> highest number ever given out, as far as the file tells
        repaired: dict[str, list[int]] = {}  # room -> seqs of damaged messages deleted
        for room, in db.execute("SELECT DISTINCT room FROM messages").fetchall():
            if not _is_room(room):
                count = db.execute("SELECT COUNT(*) FROM messages WHERE room IS ?", (room,)).fetchone()[0]
                damage.add("messages", f"room {_short(room)}", count)
                if self.repair:
                    db.execute("DELETE FROM messages WHERE room IS ?", (room,))
                continue
            rows, top, lost = self._load_room(db, room, damage)
            self._loaded_rows[room] = rows
            newest[room] = rows[-1][0] if rows else 0
            floor[room] = max(newest[room], top)
            repaired[room] = lost
        reservations, unreadable = self._checked(db, damage, "reservations", lambda room, upto: _is_room(room)
                                                 and _is_seq(upto, 0))
        # Within one boot of the machine the OS kept every write, whatever ended the process (kill -9): no
        # number past the newest row was ever published, so nothing is skipped. Only after a reboot (a
        # power cut may have dropped the WAL's tail) do the unused reserved numbers count as lost.
        boot = boot_id()
        stored = db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
        same_boot = boot is not None and stored is not None and stored[0] == boot
        for room, upto in reservations:
            self._reserved[room] = upto
            if not same_boot:
                floor[room] = max(floor.get(room, 0), upto)
        for room, _upto in unreadable:  # repaired away: a reservation never reaches past its newest message
            if _is_room(room):           # by more than a block, so skip that much to be sure
                floor[room] = max(floor.get(room, 0), newest.get(room, 0) + BLOCK_MAX - 1)
        skipped, _ = self._checked(db, damage, "skipped", lambda room, first, last: _is_room(room) and _is_seq(first)
                                   and _is_seq(last, first))
        for room, first, last in sorted(skipped):
            self._skipped.setdefault(room, []).append((first, last))
            floor[room] = max(floor.get(room, 0), last)
        if boot is not None:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)", (boot,))
        topics, _ = self._checked(db, damage, "topics", _topic_ok)
        self._topics = {row[0]: (row[0], row[1], row[2], float(row[3]), row[4]) for row in topics}
        producers, _ = self._checked(db, damage, "producers", _producer_ok)
        self._producers = sorted(((producer, identity, nxt, room, seq, float(ts))
                                  for producer, identity, nxt, room, seq, ts in producers), key=itemgetter(5))
        for room, top in floor.items():
            self._loaded_rows.setdefault(room, [])
            self._newest[room] = top
            done = max([newest.get(room, 0)] + [last for _first, last in self._skipped.get(room, [])])
            new = ranges_of(seq for seq in repaired.get(room, []) if seq < newest.get(room, 0))
            if top > done:
                new.append((done + 1, top))
                self._new_skips.append((room, done + 1, top))
            if new:
                self._record_skipped(db, room, new)

    def _load_epoch(self, db: sqlite3.Connection, damage: _Damage) -> None:
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is not None and not (isinstance(row[0], str) and 0 < len(row[0]) <= 64):
            damage.add("meta", f"epoch {_short(row[0])}")
            row = None  # repaired: a new epoch, so clients start their numbers over
        if row is None:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (self.epoch,))
        else:
            self.epoch = row[0]
        pair = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('position', 'term', 'terms', 'room_floor')")
                    .fetchall())
        try:
            self._room_floor = int(pair.get("room_floor", 0))
            self.position = int(pair.get("position", 0))
            self.term = int(pair.get("term", 0))
            self.terms = {int(k): int(v) for k, v in json.loads(pair.get("terms", "{}")).items()}
        except (TypeError, ValueError, AttributeError):
            damage.add("meta", "pair position or term")
            self.position, self.term, self.terms, self._room_floor = 0, 0, {}, 0

    def _load_room(self, db: sqlite3.Connection, room: str,
                   damage: _Damage) -> tuple[list[tuple[int, bytes]], int, list[int]]:
        """The newest ``recent`` intact messages of ``room`` (oldest first), the highest valid seq of any row
        seen (damaged ones too: never reuse it), and the seqs of the damaged rows deleted."""
        top, lost = 0, []
        while True:
            rows = db.execute("SELECT seq, ts, dedupe_key, body FROM messages WHERE room = ? ORDER BY seq DESC "
                              "LIMIT ?", (room, self._recent)).fetchall()
            good, bad = [], []
            for seq, ts, key, body in rows:
                if _is_seq(seq) and _is_ts(ts) and isinstance(key, str) and _body_ok(body, room, seq):
                    good.append((seq, body))
                else:
                    bad.append(seq)
            for seq in bad:
                damage.add("messages", f"room {_short(room)}, seq {_short(seq)}")
                if _is_seq(seq):
                    top = max(top, seq)
            deleted = 0
            for seq in bad if self.repair else ():
                deleted += db.execute("DELETE FROM messages WHERE room = ? AND seq IS ?", (room, seq)).rowcount
                if _is_seq(seq):
                    lost.append(seq)
            if not deleted:
                good.reverse()
                return good, top, lost
            # and look again, so that ``recent`` intact rows are loaded if there are that many

    def _checked(self, db: sqlite3.Connection, damage: _Damage, table: str,
                 ok: Callable[..., bool]) -> tuple[list[tuple], list[tuple]]:
        """The rows of ``table`` that pass ``ok``, and the others, counted as damage (deleted when repairing)."""
        columns = _COLUMNS[table]
        kept, bad = [], []
        for row in db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall():
            if ok(*row):
                kept.append(row)
                continue
            bad.append(row)
            key = _KEYS[table]
            damage.add(table, ", ".join(f"{name} {_short(value)}" for name, value in zip(key, row)))
            if self.repair:
                db.execute(f"DELETE FROM {table} WHERE " + " AND ".join(f"{name} IS ?" for name in key),
                           row[:len(key)])
        return kept, bad

    def _record_skipped(self, db: sqlite3.Connection, room: str, new: list[tuple[int, int]]) -> None:
        """Remember ``new`` skipped ranges of ``room``, and only the newest SKIPPED_KEPT of all of them."""
        ranges = sorted(self._skipped.get(room, []) + new)
        db.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", [(room, *r) for r in new])
        if len(ranges) > SKIPPED_KEPT:
            ranges = ranges[-SKIPPED_KEPT:]
            db.execute("DELETE FROM skipped WHERE room = ? AND first < ?", (room, ranges[0][0]))
        self._skipped[room] = ranges

    # -- writing

    def submit(self, batch: Batch) -> None:
        """Write the batch in one transaction, with the reservations it needs (then fsynced), and trim old
        rows now and then. Raises StoreError if the database refuses: then nothing of it is on disk."""
        if self._db is None:
            raise StoreError(f"history database {self.path}: not open")
        tops: dict[str, int] = {}
        untrimmed = dict(self._untrimmed)  # rows per room since its last trim, applied once committed
        reserve: dict[str, int] = {}  # room -> reserved up to, written (and fsynced) with this batch
        blocks: dict[str, tuple[int, float]] = {}
        for room, seq, _ts, _key, _body in batch.messages:
            tops[room] = seq
            untrimmed[room] = untrimmed.get(room, 0) + 1
            if seq > reserve.get(room, self._reserved.get(room, 0)):  # a block from here on
                now = self.clock()
                block, since = blocks.get(room) or self._block.get(room, (BLOCK_MIN, None))
                if since is not None:
                    block = next_block(block, now - since)
                blocks[room] = (block, now)
                reserve[room] = min(seq + block - 1, MAX_SEQ)
        trim = [room for room, n in untrimmed.items() if n >= max(64, self.retention // 8)]
        # a room new to this file after a forced takeover's skip: the numbers below its first were never ours
        floored = [room for room in tops if self._room_floor and room not in self._newest and room not in self._skipped]
        synced = bool(reserve)  # then the WAL is fsynced at this commit, and everything written before it
        # Locked by another program, disk full, I/O error (or a value SQLite cannot bind): nothing of the
        # batch is kept on disk (StoreError), and the sequencer hands it over again with the next one.
        with self._transaction(fsync=synced) as db:
            db.executemany("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?)", batch.messages)
            if synced:
                db.executemany("INSERT OR REPLACE INTO reservations VALUES (?, ?)", reserve.items())
            if batch.producers or batch.expire_before is not None:
                self._write_producers(db, batch)
            if batch.topics:
                db.executemany("INSERT OR REPLACE INTO topics VALUES (?, ?, ?, ?, ?)", batch.topics.values())
            if batch.position:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('position', ?)", (str(batch.position),))
            for room in floored:
                self._record_skipped(db, room, [(1, self._room_floor)])
            for room in trim:
                self._trim(db, room, max(self._newest.get(room, 0), tops.get(room, 0)))
        for room in trim:
            del untrimmed[room]
        self._untrimmed = untrimmed
        self._newest.update(tops)
        self._reserved.update(reserve)
        self._block.update(blocks)
        self._durable = batch.number
        if batch.position:
            self.position = batch.position
        self._last_write = self.clock()
        if self._indexer is not None and batch.messages:
            self._tell_index(tops, {room: self._floor(room, self._newest[room]) for room in trim})

    def _tell_index(self, tops: dict[str, int], trims: dict[str, int]) -> None:
        """The index's news of a committed batch. Whatever goes wrong with the index (its process, its
        pipe) is the index's failure: never the batch's, which is on disk already."""
        try:
            if self._indexer.add(tops, trims):  # type: ignore[union-attr]
                self._index_failed_at = None
            elif self._index_failed_at is None:
                self._index_failed_at = self._last_write
            elif self._last_write - self._index_failed_at >= INDEX_RESTART:
                log.info("search index %s: starting its process again", self.index_path)
                self._start_indexer()
        except Exception as exc:  # noqa: BLE001 (a bug of the index's must not fail a committed batch)
            log.error("search index %s: %r (search answers with an error until it is started again)",
                      self.index_path, exc)
            if self._indexer is not None:
                self._indexer.fail(repr(exc))

    def durable(self) -> int:
        return self._durable

    def set_term(self, term: int, terms: dict[int, int]) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [("term", str(term)), ("terms", json.dumps({str(k): v for k, v in terms.items()}))])
        self.term, self.terms = term, dict(terms)

    @contextlib.contextmanager
    def _transaction(self, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction (fsynced at its commit when ``fsync``); StoreError, and nothing of it kept, if
        the database refuses it or a value cannot be written."""
        if self._db is None:
            raise StoreError(f"history database {self.path}: not open")
        db = self._db
        try:
            if fsync:
                db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            raise StoreError(f"history database {self.path}: {exc}") from exc
        finally:
            if fsync:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA synchronous=NORMAL")

    def unskip(self, above: dict[str, int]) -> None:
        dropped: dict[str, int] = {}
        with self._transaction() as db:
            for room, top in above.items():
                if any(first > top for first, _last in self._skipped.get(room, ())):
                    db.execute("DELETE FROM skipped WHERE room = ? AND first > ?", (room, top))
                    dropped[room] = top
        for room, top in dropped.items():
            self._skipped[room] = [r for r in self._skipped[room] if r[0] <= top]
            self._newest[room] = max([top] + [last for _first, last in self._skipped[room]])

    def adopt(self, epoch: str) -> None:
        if self._db is None:
            raise StoreError(f"history database {self.path}: not open")
        if any(self._newest.values()) or self._db.execute("SELECT 1 FROM messages LIMIT 1").fetchone():
            raise StoreError(f"history database {self.path}: holds messages, cannot take another epoch")
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))
        self.epoch = epoch
        if self._indexer is not None:  # an index belongs to one epoch: start it over for this one
            self._start_indexer()

    def _start_indexer(self) -> None:
        """A new index process (after a failure, or for another epoch), caught up from what the history holds."""
        if self._indexer is not None:
            self._indexer.stop()
        if self._index is not None:
            self._index.close()
            self._index = None
        self._indexer = Indexer(self.path, self.index_path, self.epoch, dict(self._newest), self._floors())
        self._indexer.start()
        self._index_failed_at = None

    def _pump_index(self) -> None:
        """From the checkpointer's thread, about once a second: news the pipe could not take when its batch
        was committed goes out now, so a server gone quiet does not leave its index behind."""
        indexer = self._indexer
        if indexer is not None:
            indexer.pump()

    def _floors(self) -> dict[str, int]:
        """Room -> the oldest seq the history keeps: what the index must not keep either."""
        return {room: self._floor(room, newest) for room, newest in self._newest.items()}

    def skip(self, ranges: dict[str, list[tuple[int, int]]], floor: int = 0) -> None:
        tops: dict[str, int] = {}
        with self._transaction() as db:
            for room, new in ranges.items():
                known = set(self._skipped.get(room, []))
                fresh = [(first, min(last, MAX_SEQ)) for first, last in new if (first, last) not in known
                         and 1 <= first <= last]
                if fresh:
                    self._record_skipped(db, room, fresh)
                    tops[room] = max(last for _first, last in fresh)
            db.executemany("INSERT OR REPLACE INTO reservations VALUES (?, ?)",
                           [(room, max(top, self._reserved.get(room, 0))) for room, top in tops.items()])
            if floor > self._room_floor:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('room_floor', ?)", (str(floor),))
        for room, top in tops.items():
            self._newest[room] = max(top, self._newest.get(room, 0))
            self._reserved[room] = max(top, self._reserved.get(room, 0))
        self._room_floor = max(self._room_floor, floor)

    def _write_producers(self, db: sqlite3.Connection, batch: Batch) -> None:
        if batch.expire_before is not None:  # before the saves: a producer saved meanwhile stays
            db.execute("DELETE FROM producers WHERE ts < ?", (batch.expire_before,))
        db.executemany("INSERT OR REPLACE INTO producers VALUES (?, ?, ?, ?, ?, ?)",
                       [row for row in batch.producers.values() if row is not None])
        db.executemany("DELETE FROM producers WHERE producer = ?",
                       [(producer,) for producer, row in batch.producers.items() if row is None])

    def _floor(self, room: str, newest: int) -> int:
        """The oldest seq kept of ``room``: ``retention`` numbers below ``newest``, not counting skipped ones."""
        need, high = self.retention, newest
        for first, last in reversed(self._skipped.get(room, ())):
            if first > high:
                continue
            present = high - min(last, high)  # numbers in (last, high] are messages
            if present >= need:
                break
            need -= present
            high = first - 1
        return max(1, high - need + 1)

    def _trim(self, db: sqlite3.Connection, room: str, newest: int) -> None:
        """Delete the rows past the retention of ``room``."""
        db.execute("DELETE FROM messages WHERE room = ? AND seq < ?", (room, self._floor(room, newest)))

    def close(self) -> None:
        """Release the unused reserved numbers (a clean restart skips none), trim, close. Everything
        submitted is already durable."""
        if self._db is not None:
            db = self._db
            try:
                db.execute("PRAGMA synchronous=FULL")
                db.execute("BEGIN")
                db.executemany("UPDATE reservations SET upto = ? WHERE room = ?",
                               [(self._newest.get(room, 0), room) for room in self._reserved])
                for room in self._untrimmed:
                    self._trim(db, room, self._newest.get(room, 0))
                db.execute("COMMIT")
                if self._indexer is not None:
                    self._indexer.add({}, {room: self._floor(room, self._newest.get(room, 0)) for room in self._untrimmed})
            except sqlite3.Error as exc:
                log.error("could not save the last messages: %s", exc)
            db.close()
            self._db = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._indexer is not None:
            self._indexer.stop()
            self._indexer = None

    # -- reads

    def read(self, room: str, after: int, before: int, limit: int, newest: bool) -> list[Row]:
        """Damaged rows are left out (logged once per room), and the read goes on past them to ``limit``."""
        if self._db is None or limit <= 0:
            return []
        low = max(after, self._floor(room, self._newest.get(room, 0)) - 1)
        high = MAX_SEQ + 1 if before <= 0 else before
        query = (f"SELECT seq, body FROM messages WHERE room = ? AND seq > ? AND seq < ? "
                 f"ORDER BY seq {'DESC' if newest else 'ASC'} LIMIT ?")
        good: list[Row] = []
        damaged = 0
        while len(good) < limit and low < high - 1:
            want = limit - len(good)
            try:
                rows = self._db.execute(query, (room, low, high, want)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"history database {self.path}: {exc}") from exc
            for seq, body in rows:
                if _body_ok(body, room, seq):
                    good.append((seq, body))
                else:
                    damaged += 1
            if len(rows) < want:
                break
            if newest:
                high = rows[-1][0]
            else:
                low = rows[-1][0]
        if damaged and room not in self._damaged_reads:
            self._damaged_reads.add(room)
            log.warning("history database %s: %d damaged rows of %s left out of a read (start with --repair "
                        "to delete them)", self.path, damaged, _short(room))
        if newest:
            good.reverse()
        return good

    def search(self, terms: list[q.Term], sender: str, room: str, limit: int) -> list[Found]:
        if self._indexer is None:
            raise SearchOff(f"search index {self.index_path}: off (--no-search)")
        if self._indexer.failed:
            raise StoreError(f"search index {self.index_path}: {self._indexer.failed}")
        if not self._indexer.ready:
            return []  # its process is still opening it: like an index catching up, it finds nothing yet
        expression = q.fts_expression(terms)
        expression = f"{{text}} : ({expression})"
        for column, value in (("sender", sender), ("room", room)):
            words = q.WORD.findall(value)
            if words:  # narrows the candidates in the index; the exact match is checked below
                expression += f' AND {{{column}}} : "' + " ".join(q.fold(w) for w in words).replace('"', '""') + '"'
        try:
            if self._index is None:
                self._index = sqlite3.connect(str(self.index_path), isolation_level=None, check_same_thread=False,
                                              timeout=BUSY_TIMEOUT)
            rows = self._index.execute(
                "SELECT room, seq, ts, sender, text FROM words "
                "WHERE words MATCH ? AND (? = '' OR sender = ?) AND (? = '' OR room = ?) "
                "ORDER BY rowid DESC LIMIT ?", (expression, sender, sender, room, room, limit)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"search index {self.index_path}: {exc}") from exc
        # what the history no longer keeps is not found, even while the index has yet to drop it
        return [(r, s, float(ts), who, text) for r, s, ts, who, text in rows
                if s >= self._floor(r, self._newest.get(r, 0))]

    def wait_indexed(self, timeout: float) -> bool:
        """Whether the index caught up with every batch submitted so far within ``timeout`` seconds."""
        return self._indexer is None or self._indexer.wait(timeout)

    def lost(self, room: str, after: int, upto: int) -> list[tuple[int, int]]:
        return _clip(self._skipped.get(room, ()), after, upto)


def _clip(ranges: Iterable[tuple[int, int]], after: int, upto: int) -> list[tuple[int, int]]:
    """The parts of (first, last) ``ranges`` with ``after < seq <= upto``."""
    out = []
    for first, last in ranges:
        first, last = max(first, after + 1), min(last, upto)
        if first <= last:
            out.append((first, last))
    return out


class _Checkpointer(threading.Thread):
    """Copies the WAL into the database about once a second, on its own connection and thread, so the
    serving loop never waits for a checkpoint's fsync (it doubled the p99 latency when done inline)."""

    INTERVAL = 1.0  # seconds
    # Rewinding the WAL (TRUNCATE) holds the writer for a checkpoint's fsync: 10-25 ms here. So it is done
    # when the WAL is over 16 MiB and writes have paused for a moment, or regardless past 256 MiB.
    TRUNCATE_PAGES = 4096
    TRUNCATE_PAGES_ANYWAY = 65536
    IDLE = 0.5  # seconds without a commit

    def __init__(self, path: Path, idle_for: Callable[[], float], tick: Callable[[], None] | None = None) -> None:
        super().__init__(name="zmqchat-checkpoint", daemon=True)
        self.path = path
        self.idle_for = idle_for  # seconds since the last commit
        self.tick = tick  # called once an interval too (the search index's pipe)
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
                if self.tick is not None:
                    try:
                        self.tick()
                    except Exception as exc:  # noqa: BLE001 (this thread must go on checkpointing)
                        log.error("search index: %r", exc)
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
