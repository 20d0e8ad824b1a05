"""Exactly-once per sender: message counters, kept the way idempotent producers keep them. Pure: the
caller passes the time.

Every client session is a producer: its messages carry ``mid = "<session>.<n>"`` with n = 1, 2, 3, ...
The server accepts only ``n == next``. A smaller n is a duplicate, answered with what became of it; a
larger n means a message in between was lost on the way, and the sender is asked to resend from ``next``
(accepting it would make the lost one look like a duplicate once it is resent). The state is per
producer, so traffic from others never evicts a sender's recent messages the way a shared table of message
ids did. It is bounded per identity (``PER_IDENTITY`` producers: a key that cycles sessions only forgets its
own), by time (``WINDOW`` seconds of silence), and in total (``MAX_PRODUCERS``, least recently active
first). Only that last bound can be pushed by others: where identities are free (plaintext, or CURVE
without an allowlist), 200,000 made-up senders, at least 200 s at the server's new-session limit, make it
forget the least recently active. With an allowlist, identities are bounded by it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

RECENT = 64  # outcomes remembered per producer, so a resend gets the answer the original got
PER_IDENTITY = 16  # producers (sessions) remembered per identity
MAX_PRODUCERS = 200_000  # producers remembered in all (about 0.5 KB each)
WINDOW = 24 * 3600.0  # seconds of a producer's silence after which it is forgotten (wall clock)

ACK = "ack"
REFUSED = "error"


@dataclass
class Producer:
    """One session's sending state: the next counter expected and the outcomes of the last RECENT."""

    session: str
    identity: str
    next: int
    room: str = ""  # where its last accepted message was published
    seq: int = 0
    ts: float = 0.0  # wall-clock time of its last message
    # n -> (ACK, room, seq) or (REFUSED, code, text)
    recent: OrderedDict[int, tuple[str, str, object]] = field(default_factory=OrderedDict)
    rate_blocked: bool = False  # ``next`` was refused for rate: later ones are dropped without a word
    blocked_until: float = 0.0  # (server clock) until then a resend of ``next`` is dropped without a word too
    asked_from: int = 0  # the ``next`` the sender was last asked to resend from

    def outcome(self, n: int) -> tuple[str, str, object] | None:
        return self.recent.get(n)

    def advance(self, n: int, outcome: tuple[str, str, object], now: float) -> None:
        """Message ``n`` (== next) is settled: published or refused for good."""
        self.next = n + 1
        self.rate_blocked = False
        self.ts = now
        self.recent[n] = outcome
        if len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        if outcome[0] == ACK:
            self.room, self.seq = outcome[1], int(outcome[2])  # type: ignore[call-overload]


class Producers:
    """Every producer the server remembers, bounded as the module docstring says."""

    def __init__(self, window: float = WINDOW, per_identity: int = PER_IDENTITY,
                 max_producers: int = MAX_PRODUCERS) -> None:
        self.window = window
        self.per_identity = max(1, per_identity)
        self.max_producers = max(1, max_producers)
        self._by_session: OrderedDict[str, Producer] = OrderedDict()  # least recently active first
        self._by_identity: dict[str, OrderedDict[str, None]] = {}
        self.forgotten: list[str] = []  # sessions dropped since the caller last emptied this (for the store)

    def __len__(self) -> int:
        return len(self._by_session)

    def rows(self) -> list[tuple[str, str, int, str, int, float]]:
        """Every producer as the store keeps it (session, identity, next, room, seq, ts), least recently active first."""
        return [(pr.session, pr.identity, pr.next, pr.room, pr.seq, pr.ts) for pr in self._by_session.values()]

    def get(self, session: str) -> Producer | None:
        return self._by_session.get(session)

    def open(self, session: str, identity: str, next_n: int, now: float) -> Producer:
        """A new producer expecting ``next_n`` first."""
        producer = Producer(session, identity, max(1, next_n), ts=now)
        self._add(producer)
        return producer

    def restore(self, session: str, identity: str, next_n: int, room: str, seq: int, ts: float) -> Producer:
        """A producer as the store kept it (oldest first, so the order of activity is rebuilt)."""
        producer = Producer(session, identity, max(1, next_n), room, seq, ts)
        if seq > 0:
            producer.recent[producer.next - 1] = (ACK, room, seq)
        self._add(producer)
        return producer

    def touch(self, producer: Producer) -> None:
        """``producer`` was active just now: it is the last to be forgotten."""
        self._by_session.move_to_end(producer.session)
        self._by_identity[producer.identity].move_to_end(producer.session)

    def expire(self, now: float) -> int:
        """Forget producers silent for longer than the window; returns how many."""
        deadline = now - self.window
        stale = []
        for producer in self._by_session.values():
            if producer.ts >= deadline:
                break
            stale.append(producer.session)
        for session in stale:
            self._drop(session)
        return len(stale)

    def _add(self, producer: Producer) -> None:
        if producer.session in self._by_session:
            self._drop(producer.session)
        mine = self._by_identity.setdefault(producer.identity, OrderedDict())
        while len(mine) >= self.per_identity:
            self._drop(next(iter(mine)))
        while len(self._by_session) >= self.max_producers:
            self._drop(next(iter(self._by_session)))
        mine = self._by_identity.setdefault(producer.identity, OrderedDict())
        self._by_session[producer.session] = producer
        mine[producer.session] = None

    def _drop(self, session: str) -> None:
        producer = self._by_session.pop(session)
        mine = self._by_identity[producer.identity]
        del mine[session]
        if not mine:
            del self._by_identity[producer.identity]
        self.forgotten.append(session)
