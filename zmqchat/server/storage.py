"""The store seam: what the sequencer hands a store (``Batch``), what a store says it holds when opened
(``Loaded``), and the ``Store`` interface itself, which ``store.SqliteStore`` and ``store.MemoryStore``
implement (a replicating store would wrap one). Pure: no SQLite, no files, no threads here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..errors import ZmqchatError
from . import search as q

RETENTION = 1000  # messages kept per room unless told otherwise (--history)


class StoreError(ZmqchatError):
    """The history database refused a write (locked, full, broken) or cannot be used (damaged, foreign,
    newer); its text says which file and why, in one line."""


class SearchOff(StoreError):
    """The store keeps no search index (the server runs with --no-search)."""


Producer = tuple[str, str, int, str, int, float]  # producer, identity, next, room, seq, ts
Row = tuple[int, bytes]  # seq, body
TopicRow = tuple[str, str, str, float, str]  # room, text ("" cleared), set by (name), ts, owner (identity)
Found = tuple[str, int, float, str, str]  # room, seq, ts, sender, text


@dataclass
class Batch:
    """What one submit makes durable, all or nothing: messages (room, seq, ts, dedupe key, body) in order,
    producer states to save (a row) or drop (None), and producers older than ``expire_before`` to delete."""

    number: int  # batches are numbered 1, 2, ... in the order they are submitted
    messages: list[tuple[str, int, float, str, bytes]] = field(default_factory=list)
    producers: dict[str, Producer | None] = field(default_factory=dict)
    expire_before: float | None = None
    topics: dict[str, TopicRow] = field(default_factory=dict)  # room -> its topic as set in this batch
    # a pair's replication position (1, 2, ... across restarts and takeovers; 0: not counted), saved with it
    position: int = 0

    def __bool__(self) -> bool:
        return bool(self.messages or self.producers or self.topics) or self.expire_before is not None


@dataclass
class Loaded:
    """What a store holds when it is opened."""

    epoch: str  # names the store: sequence numbers are only comparable within one epoch
    tops: dict[str, int]  # room -> highest number ever given out (or lost): the next one is above it
    recent: dict[str, list[Row]]  # room -> its newest messages, oldest first (as many as load() was asked)
    producers: list[Producer]  # dedupe state, oldest first
    retention: int  # messages kept per room: reads never reach below the newest this many
    topics: dict[str, TopicRow] = field(default_factory=dict)
    position: int = 0  # the replication position of the newest batch held (a pair's; 0 alone)
    term: int = 0  # the newest term this store served or followed (a pair's takeover count)
    terms: dict[int, int] = field(default_factory=dict)  # term -> the first position written in it
    skipped: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # room -> numbers never given out here
    floor: int = 0  # a room new to this store starts numbering above this (set by a forced takeover's skip)


class Store(Protocol):
    """Where the sequencer's batches go, and older messages come from."""

    def load(self, recent: int) -> Loaded:
        """Open the store (raises StoreError if it cannot be used) and say what it holds, with the newest
        ``recent`` messages of each room."""

    def submit(self, batch: Batch) -> None:
        """Take a batch to make durable; raises StoreError when refused (then nothing of it is kept)."""

    def durable(self) -> int:
        """The number of the newest batch that is durable (0 before the first)."""

    def read(self, room: str, after: int, before: int, limit: int, newest: bool) -> list[Row]:
        """Messages with ``after < seq < before`` (``before`` 0: no bound), oldest first: the newest ``limit``
        of them, or with ``newest=False`` the oldest ``limit``."""

    def lost(self, room: str, after: int, upto: int) -> list[tuple[int, int]]:
        """(first, last) ranges with ``after < seq <= upto`` that were skipped (lost by the disk, or
        deleted by a repair), oldest first."""

    def search(self, terms: list[q.Term], sender: str, room: str, limit: int) -> list[Found]:
        """Messages holding every term (of ``sender`` and in ``room`` when not ""), newest first, at most
        ``limit``. May miss the last batch or so (the index can lag); raises StoreError."""

    def set_term(self, term: int, terms: dict[int, int]) -> None:
        """Save the pair's current term and each term's first position, durably, now."""

    def skip(self, ranges: dict[str, list[tuple[int, int]]], floor: int = 0) -> None:
        """Record ``ranges`` (room -> (first, last)) as numbers never to be given out (``lost()`` names them),
        and number rooms new to this store from above ``floor``; durably, now. (A standby copies its active's;
        one forced active without what its active numbered last skips ahead, so it never reuses a number
        clients may have seen.)"""

    def unskip(self, above: dict[str, int]) -> None:
        """Forget the skipped numbers above ``above[room]`` (a standby about to be caught up: the active's
        rows and skipped numbers replace its own guesses of what a power cut took)."""

    def adopt(self, epoch: str) -> None:
        """Take ``epoch`` as its own (a standby copying its active); only while it holds no message."""

    def close(self) -> None:
        """Make everything submitted durable, release what it holds."""
