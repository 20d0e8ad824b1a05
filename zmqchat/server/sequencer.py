"""Sequencing: per-room sequence numbers, the newest messages of each room as a cache, and the batch of
what the store has yet to make durable (messages, and the dedupe state of each sender).

The rule it keeps with the store: a message is given the next number of its room, goes into the open batch
and the cache, and counts as committed (``committed_seq``, what heartbeats announce) only once the store
says its batch is durable. The core publishes a batch's messages after that too. A batch the store
refuses stays open and is handed over again, with whatever was appended meanwhile, at the next submit.

Reads come from the cache when it holds the range and from the store below it, so the cache (memory) and
what the store keeps (disk) are separate sizes. No sockets, files or clocks here: the store is injected.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from itertools import islice
from operator import itemgetter

from .search import Term
from .storage import Batch, Found, Producer, Row, Store, TopicRow

_seq_of = itemgetter(0)


class Sequencer:
    """Numbers messages per room over ``store``, and keeps each room's newest ``cache`` messages in memory."""

    def __init__(self, store: Store, cache: int = 1000) -> None:
        self.store = store
        loaded = store.load(max(1, cache))
        self.cache = max(1, min(cache, loaded.retention))  # the cache never holds what the store dropped
        self.epoch = loaded.epoch  # sequence numbers are only comparable within one epoch
        self._recent: dict[str, deque[Row]] = {room: deque(rows, maxlen=self.cache)
                                               for room, rows in loaded.recent.items()}
        self._last: dict[str, int] = dict(loaded.tops)  # room -> newest number given out
        self._committed: dict[str, int] = dict(loaded.tops)  # room -> newest number durable (or known lost)
        self._producers: list[Producer] = list(loaded.producers)  # as loaded, oldest first
        self._number = 0  # the newest batch handed to the store
        self._batch = Batch(1)  # the open batch
        self._unsettled: deque[tuple[int, dict[str, int]]] = deque()  # (batch, room -> its newest seq)
        self._batch_tops: dict[str, int] = {}  # room -> newest seq in the open batch
        self._topics: dict[str, TopicRow] = dict(loaded.topics)
        self._floor = loaded.floor  # a room new to the store numbers from above this

    # -- writing

    def append(self, room: str, ts: float, key: str, make_body: Callable[[int], bytes]) -> tuple[int, bytes]:
        """Give the next sequence number of ``room`` to a message; ``make_body(seq)`` returns its encoded
        body. It is durable once its batch is (``waiting_for()``, ``settle()``); ``key`` is stored with it."""
        seq = self._last.get(room, self._floor) + 1
        body = make_body(seq)
        self._last[room] = seq
        recent = self._recent.get(room)
        if recent is None:
            recent = self._recent[room] = deque(maxlen=self.cache)
        recent.append((seq, body))
        self._batch.messages.append((room, seq, ts, key, body))
        self._batch_tops[room] = seq
        return seq, body

    def save_producer(self, producer: str, identity: str, next: int, room: str, seq: int, ts: float) -> None:
        """Queue the state of one producer (``next`` message counter expected, where its last message went
        (``room`` "" and ``seq`` 0 if none), ``ts`` wall-clock seconds of its last activity) for the open
        batch; the last save before a submit wins."""
        self._batch.producers[producer] = (producer, identity, next, room, seq, float(ts))

    def drop_producer(self, producer: str) -> None:
        """Queue the deletion of one producer's state with the open batch."""
        self._batch.producers[producer] = None

    def producers(self, since: float) -> list[Producer]:
        """Producers as loaded whose ``ts >= since``, oldest first; the older ones are deleted from the
        store with the open batch."""
        self._producers = [row for row in self._producers if row[5] >= since]
        old = self._batch.expire_before
        self._batch.expire_before = since if old is None else max(old, since)
        return list(self._producers)

    def set_topic(self, room: str, text: str, by: str, ts: float, owner: str) -> None:
        """Set (``text`` "": clear) the topic of ``room``, stored with the open batch."""
        self._topics[room] = self._batch.topics[room] = (room, text, by, ts, owner)

    def topic(self, room: str, cleared: bool = False) -> TopicRow | None:
        """The topic of ``room`` (room, text, by, ts, owner), or None when it has none (``cleared``: also
        a cleared one, which still names its owner)."""
        row = self._topics.get(room)
        return row if row is not None and (row[1] or cleared) else None

    def submit(self) -> bool:
        """Hand the open batch to the store, if it holds anything (True then). Raises StoreError if the store
        refused it: then the batch stays open, and the next submit hands it over again with what came
        meanwhile."""
        batch = self._batch
        if not batch:
            return False
        self.store.submit(batch)
        self._number = batch.number
        self._unsettled.append((batch.number, self._batch_tops))
        self._batch, self._batch_tops = Batch(batch.number + 1), {}
        return True

    def settled(self) -> bool:
        """Whether every message, producer state and topic so far was handed to the store (an expiry of old
        producers may still wait: it changes nothing a snapshot of the live producers holds)."""
        batch = self._batch
        return not (batch.messages or batch.producers or batch.topics)

    def waiting_for(self) -> int:
        """The batch that holds everything appended so far: what is published after it must wait for it."""
        return self._batch.number if self._batch else self._number

    def settle(self) -> int:
        """The newest batch the store has made durable (batches become durable in order); the numbers in it
        and before it count as committed from now on."""
        durable = self.store.durable()
        while self._unsettled and self._unsettled[0][0] <= durable:
            _number, tops = self._unsettled.popleft()
            self._committed.update(tops)
        return durable

    # -- sequencing

    def last_seq(self, room: str) -> int:
        """The newest sequence number of ``room`` (0 before its first message)."""
        return self._last.get(room, 0)

    def committed(self) -> dict[str, int]:
        """Room -> its newest committed sequence number, for every room with messages."""
        return dict(self._committed)

    def topic_rows(self) -> list[TopicRow]:
        return list(self._topics.values())

    def committed_seq(self, room: str) -> int:
        """The newest sequence number of ``room`` that is durable or known lost."""
        return self._committed.get(room, 0)

    # -- reads

    def range(self, room: str, after: int = 0, before: int = 0, limit: int = 100,
              newest: bool = True) -> list[Row]:
        """Messages with ``after < seq < before`` (``before`` 0: no upper bound), in order: the newest
        ``limit`` of them, or with ``newest=False`` the oldest ``limit`` (to fill a gap from its start).
        From the cache where it holds them, from the store below it. Sequence numbers held need not be
        contiguous (numbers skipped after a power cut)."""
        if limit <= 0:
            return []
        recent = self._recent.get(room) or ()
        start = bisect_right(recent, after, key=_seq_of)
        end = len(recent) if before <= 0 else bisect_left(recent, before, key=_seq_of)
        # Everything below the cache's oldest message is the store's; the cache holds all above it.
        floor = recent[0][0] if recent else self._last.get(room, 0) + 1
        below = after + 1 < floor and (before <= 0 or before > after + 1)
        stop = floor if before <= 0 else min(before, floor)
        if newest:
            start = max(start, end - limit)
            rows = list(islice(recent, start, end)) if start < end else []
            if below and len(rows) < limit:
                rows = self.store.read(room, after, stop, limit - len(rows), newest=True) + rows
            return rows
        rows = self.store.read(room, after, stop, limit, newest=False) if below else []
        if len(rows) < limit:
            end = min(end, start + limit - len(rows))
            rows += list(islice(recent, start, end)) if start < end else []
        return rows

    def search(self, terms: list[Term], sender: str = "", room: str = "", limit: int = 20) -> list[Found]:
        """Stored messages holding every term, newest first (the store's index; it may lag a batch)."""
        return self.store.search(terms, sender, room, limit)

    def lost(self, room: str, after: int, upto: int) -> list[tuple[int, int]]:
        """The (first, last) ranges of ``room`` with ``after < seq <= upto`` the store skipped (lost by the
        disk, or deleted by a repair), oldest first."""
        return self.store.lost(room, after, upto)

    def size(self) -> int:
        """Messages in the cache, over all rooms."""
        return sum(len(recent) for recent in self._recent.values())

    def rooms(self) -> list[str]:
        return sorted(self._recent)
