"""A hot-standby pair, sans-IO: who is active (``Roles``), what the active sends its standby and waits for
(``Replica``, a ``Store`` wrapper), and how the standby applies it (``Follower``). The peer link's messages
are encoded and decoded here too; the sockets, files and clock belong to the loop (``server.loop``).

The rules, as docs/cluster.md tells them:

- The active commits each batch to its own store, sends it to the standby, and counts it durable (so
  publishes it) only once the standby acknowledged it, having committed it to its own store. Without a
  standby in sync (none, catching up, or silent past ``timeout``) it counts a batch durable at its own
  commit, as a single server does, and says so.
- Every batch carries a replication position (1, 2, ... across restarts and takeovers, saved with the
  batch); each takeover starts a term (saved, with the first position written in it). A standby that
  rejoins is caught up by sequence number per room from the active's store when its history is a prefix
  of the active's; otherwise it starts over (its file moved aside, never deleted).
- The standby takes over only when the active has been silent on the link for ``misses`` heartbeats,
  **and** a client's hello reached it (the client cannot reach the active either: Binary Star's vote),
  **and** it was in sync. An operator can force it (``force``). A server whose store holds anything
  becomes active at start only after talking to its peer, or when forced.
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import protocol as p
from ..errors import ZmqchatError
from . import search as q
from .storage import Batch, Found, Loaded, Producer, Row, Store, TopicRow

VERSION = b"zmqchat-peer/1"
HEARTBEAT = 0.2  # seconds between state messages on the peer link (clients hear from the server once a second)
MISSES = 5  # peer heartbeats missed before the peer counts as silent
CATCH_UP_ROWS = 500  # rows per catch-up message: reading them is a bounded step of the loop
CATCH_UP_WINDOW = 8  # catch-up messages in flight at most: a slow link paces the catch-up, never queues it all
SYNC_RETRY = 1.0  # seconds without a word of the catch-up before a standby asks again
MAX_PEER_FRAMES = CATCH_UP_ROWS + 3  # frames of one peer message, at most (a batch may be longer: checked)

STARTING, ACTIVE, STANDBY = "starting", "active", "standby"
_PREFER = {"primary": 1, "": 0, "backup": -1}


class PeerError(ZmqchatError):
    """A peer-link message that is malformed: dropped and counted."""


# -- the wire of the peer link: [VERSION, kind, header (JSON), *bodies]


def encode(kind: bytes, header: dict, bodies: Iterable[bytes] = ()) -> list[bytes]:
    return [VERSION, kind, json.dumps(header, separators=(",", ":")).encode(), *bodies]


def decode(frames: list[bytes]) -> tuple[bytes, dict, list[bytes]]:
    if len(frames) < 3 or frames[0] != VERSION:
        raise PeerError("not a zmqchat peer message")
    try:
        header = json.loads(frames[2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise PeerError(f"bad peer header: {exc}") from None
    if not isinstance(header, dict):
        raise PeerError("bad peer header: not an object")
    return frames[1], header, frames[3:]


def _int(header: dict, name: str) -> int:
    value = header.get(name, 0)
    if type(value) is not int or not 0 <= value <= p.MAX_SAFE_INT:
        raise PeerError(f"peer field {name!r} must be a count")
    return value


def _str(header: dict, name: str) -> str:
    value = header.get(name, "")
    if type(value) is not str or len(value) > 64:
        raise PeerError(f"peer field {name!r} must be a short string")
    return value


def batch_frames(kind: bytes, nonce: str, batch: Batch, extra: dict | None = None) -> list[bytes]:
    """A batch (or catch-up rows) as a peer message; the bodies travel as frames of their own."""
    header = {"s": nonce, "p": batch.position,
              "m": [[room, seq, ts, key] for room, seq, ts, key, _body in batch.messages],
              "pr": batch.producers, "x": batch.expire_before, "tp": batch.topics, **(extra or {})}
    return encode(kind, header, [body for _r, _s, _t, _k, body in batch.messages])


def batch_of(header: dict, bodies: list[bytes], number: int) -> Batch:
    """The Batch a peer message carries (raises PeerError when malformed)."""
    heads = header.get("m")
    if type(heads) is not list or len(heads) != len(bodies):
        raise PeerError("batch: message heads do not match its bodies")
    messages = []
    for head, body in zip(heads, bodies):
        if not (type(head) is list and len(head) == 4 and type(head[0]) is str and p.room_problem(head[0]) is None
                and type(head[1]) is int and 1 <= head[1] <= p.MAX_SAFE_INT and _time(head[2])
                and type(head[3]) is str):
            raise PeerError("batch: bad message head")
        messages.append((head[0], head[1], float(head[2]), head[3], body))
    producers = header.get("pr") or {}
    topics = header.get("tp") or {}
    expire = header.get("x")
    if type(producers) is not dict or type(topics) is not dict or not (expire is None or _time(expire)):
        raise PeerError("batch: bad producers, topics or expiry")
    batch = Batch(number, messages, expire_before=None if expire is None else float(expire), position=_int(header, "p"))
    for producer, row in producers.items():
        if row is not None and not (type(row) is list and _typed(row, _PRODUCER_ROW) and row[0] == producer):
            raise PeerError("batch: bad producer row")
        batch.producers[producer] = None if row is None else (*row[:5], float(row[5]))  # type: ignore[assignment]
    for room, row in topics.items():
        if not (type(row) is list and _typed(row, _TOPIC_ROW) and row[0] == room):
            raise PeerError("batch: bad topic row")
        batch.topics[room] = (*row[:3], float(row[3]), row[4])  # type: ignore[assignment]
    return batch


_PRODUCER_ROW = (str, str, int, str, int, float)  # producer, identity, next, room, seq, ts
_TOPIC_ROW = (str, str, str, float, str)  # room, text, by, ts, owner


def _time(value: object) -> bool:
    """A time in seconds as a store keeps it: a finite number, not absurdly far off."""
    return type(value) in (int, float) and abs(value) <= 1e15  # type: ignore[arg-type] (NaN compares false)


def _typed(row: list, types: tuple[type, ...]) -> bool:
    """Each value of ``row`` of its type (an int for a float too); integers within 0 .. MAX_SAFE_INT,
    floats finite, as the store keeps them."""
    if len(row) != len(types):
        return False
    for value, typ in zip(row, types):
        if typ is float:
            if not _time(value):
                return False
        elif type(value) is not typ or (typ is int and not 0 <= value <= p.MAX_SAFE_INT):
            return False
    return True


def merge(batches: list[Batch], number: int) -> Batch:
    """Consecutive batches as one (a standby commits what arrived together in one transaction)."""
    out = Batch(number)
    for batch in batches:
        if batch.expire_before is not None:
            out.expire_before = max(out.expire_before or batch.expire_before, batch.expire_before)
            out.producers = {k: row for k, row in out.producers.items() if row is None or row[5] >= batch.expire_before}
        out.messages += batch.messages
        out.producers.update(batch.producers)
        out.topics.update(batch.topics)
        out.position = max(out.position, batch.position)
    return out


def standby_beat(ts: float, term: int) -> list[bytes]:
    """What a server that is not active publishes each heartbeat interval: its role, no seqs, its term."""
    return p.encode_server(p.ALL_TOPIC, p.ServerHeartbeat(ts=ts, role=STANDBY), p.term_frame(term))


def not_active(session: str, rid: str, role: str, active: str, term: int) -> list[bytes]:
    """A not-active server's answer to a client (on its session topic), naming the active when known."""
    where = f"; the active is {active}" if active else "; no active server is known yet"
    what = "the standby" if role == STANDBY else "not active yet (starting)"
    reply = p.ErrorReply(code=p.ERR_NOT_ACTIVE, message=f"this server is {what}{where}", rid=rid, active=active)
    return p.encode_server(p.session_topic(session), reply, p.term_frame(term))


def forced_skip(loaded: Loaded, count: int) -> tuple[dict[str, list[tuple[int, int]]], int]:
    """What a store forced active without all its active numbered skips, so that it never gives out a number
    clients may have seen: ``count`` numbers after each room's newest, and for rooms new to it a floor above
    every number it knows of (an earlier forced floor included)."""
    ranges = {room: [(top + 1, top + count)] for room, top in loaded.tops.items()}
    return ranges, max([loaded.floor, *loaded.tops.values()]) + count


def rows_top(tops: dict[str, int], skipped: dict[str, list[tuple[int, int]]]) -> dict[str, int]:
    """Room -> the newest number a store holds a row for: its top, below whatever it skipped at the top
    (numbers reserved before a power cut count as skipped: the rows above them it never got)."""
    out = {}
    for room, top in tops.items():
        for first, last in sorted(skipped.get(room, ()), reverse=True):
            if first <= top <= last:
                top = first - 1
        out[room] = top
    return out


def _ts_mid(body: bytes) -> tuple[float, str]:
    """The time and message id a stored body holds (the store's columns beside it)."""
    try:
        msg = json.loads(body)
        return float(msg.get("ts", 0.0)), str(msg.get("mid", ""))
    except (ValueError, TypeError, AttributeError):
        return 0.0, ""


# -- roles


@dataclass
class PeerState:
    """What the peer last said of itself (its state message)."""

    node: str
    role: str
    term: int
    position: int
    epoch: str
    empty: bool
    prefer: int
    synced: bool  # a standby: it follows the live stream; an active: a standby is in sync with it
    heard: float
    up: float = 0.0  # seconds it had been running when it said so
    client: str = ""  # HOST:PORT its clients reach it at, as it advertises it ("" unknown)


def peer_state(header: dict, now: float) -> PeerState:
    role = _str(header, "role")
    if role not in (STARTING, ACTIVE, STANDBY):
        raise PeerError(f"unknown peer role {role!r}")
    prefer = header.get("prefer", 0)
    if prefer not in (-1, 0, 1):
        raise PeerError("bad peer preference")
    return PeerState(_str(header, "node"), role, _int(header, "term"), _int(header, "position"), _str(header, "epoch"),
                     header.get("empty") is True, prefer, header.get("synced") is True, now,
                     float(header["up"]) if type(header.get("up")) in (int, float) else 0.0, _str(header, "client"))


@dataclass
class Roles:
    """Which of the pair this server is, and when that changes. ``tick`` and ``on_peer`` return the role
    to move to (or None); the loop does the moving and reports back with ``became``."""

    node: str  # this server's own name on the link (random per start)
    term: int
    position: int
    empty: bool
    prefer: int = 0  # --role primary 1, backup -1
    client: str = ""  # HOST:PORT clients reach this server at (told to the peer, which tells clients)
    heartbeat: float = HEARTBEAT
    misses: int = MISSES
    role: str = STARTING
    started: float = 0.0  # when it took its current role
    born: float = 0.0  # when this server started
    peer: PeerState | None = None
    in_sync: bool = False  # a standby: it applied every live batch the active sent since its catch-up
    forced: bool = False  # an operator asked this one to be active, knowing what may be lost
    alone_logged: bool = False
    silence_logged: bool = False
    # what the loop should say, once each, loudly: appended here, taken by the loop
    notices: list[str] = field(default_factory=list)

    @property
    def silent_for(self) -> float:
        return self.heartbeat * self.misses

    def peer_silent(self, now: float) -> bool:
        return self.peer is None or now - self.peer.heard > self.silent_for

    def state(self, epoch: str, synced: bool, now: float) -> list[bytes]:
        return encode(b"state", {"node": self.node, "role": self.role, "term": self.term, "position": self.position,
                                 "epoch": epoch, "empty": self.empty, "prefer": self.prefer, "synced": synced,
                                 "up": round(now - self.born, 3), "client": self.client})

    def _wins(self, now: float) -> bool:
        """Which of two servers neither of which is active should be: the one holding more (term, then
        position), then the preferred one (--role), then the one up for longer (the first one up), then
        by name. Both compute the same from what they told each other."""
        peer = self.peer
        assert peer is not None
        mine = (self.term, self.position, not self.empty, self.prefer)
        theirs = (peer.term, peer.position, not peer.empty, peer.prefer)
        if mine != theirs:
            return mine > theirs
        up, peer_up = now - self.born, peer.up + (now - peer.heard)
        if abs(up - peer_up) > 1.0:
            return up > peer_up
        return self.node > peer.node

    def on_peer(self, state: PeerState) -> str | None:
        """The peer's state message arrived (``state.heard`` is now)."""
        now = state.heard
        self.peer = state
        if state.term > self.term and state.role == ACTIVE:
            if self.role == ACTIVE:
                self.notices.append(f"the peer is active with a newer term ({state.term} > {self.term}): "
                                    "stepping down to standby; what was not acknowledged is dropped")
            self.term = state.term
            return STANDBY if self.role != STANDBY else None
        if self.role == ACTIVE and state.role == ACTIVE and state.term == self.term and not self._wins(now):
            self.notices.append("two actives in one term (both forced?): the peer has more, stepping down")
            return STANDBY
        if self.role == STARTING and state.role == ACTIVE:
            return STANDBY
        if self.role in (STARTING, STANDBY) and state.role in (STARTING, STANDBY) and self._wins(now):
            return ACTIVE  # neither is active and this one holds more: both see the same and agree
        return None

    def tick(self, now: float) -> str | None:
        if self.forced and self.role != ACTIVE:
            return ACTIVE
        if self.role == STANDBY and self.peer is not None:
            silent = self.peer_silent(now)
            if silent and not self.silence_logged:
                self.notices.append("the active is silent on the peer link: no takeover unless a client cannot "
                                    "reach it either" + ("" if self.in_sync else " (and none by itself: not in sync)"))
            elif not silent and self.silence_logged:
                self.notices.append("the active is back on the peer link")
            self.silence_logged = silent
        if self.role == STARTING and self.peer is None and now - self.started > 2 * self.silent_for:
            if self.empty and self.prefer >= 0:
                return ACTIVE  # the pair's very first start: the first server up
            if not self.alone_logged:
                self.alone_logged = True
                self.notices.append("the peer is silent and this store is not empty: waiting for the peer "
                                    "(an operator may force this server active: docs/cluster.md)")
        return None

    def vote(self, now: float) -> bool:
        """A client's hello reached this standby: take over if the active is silent and we were in sync."""
        if self.role != STANDBY or not self.peer_silent(now):
            return False
        if not self.in_sync:
            if not self.alone_logged:
                self.alone_logged = True
                self.notices.append("the active is silent, but this standby was not in sync with it: not taking "
                                    "over by itself (an operator may force it, losing what it lacks)")
            return False
        return True

    def became(self, role: str, now: float, wall: float | None = None) -> None:
        """The loop moved to ``role``. Active: a new term, above any this server has heard of; forced
        (``wall``: the wall clock, in seconds), at least the wall clock's seconds, so that a term started by
        an operator's order is above any the other server may have started unheard (clocks in step)."""
        if role == ACTIVE:
            self.term = max(self.term, self.peer.term if self.peer else 0) + 1
            if wall is not None:
                self.term = max(self.term, min(int(wall), p.MAX_SAFE_INT))
        self.role = role
        self.in_sync = False
        self.forced = False
        self.alone_logged = False
        self.started = now


# -- the active's side


class Replica:
    """A Store that, while a standby is in sync, counts a batch durable only once the standby acknowledged
    it (after its own store's commit). Frames for the standby collect in ``outbox``; the loop sends them and
    feeds back ``on_ack``, ``on_sync`` and ``tick``."""

    def __init__(self, inner: Store, clock, timeout: float, term: int = 0) -> None:
        self.inner = inner
        self.clock = clock
        self.timeout = timeout  # seconds a standby may stay silent or behind before the active goes alone
        self.term = term
        self.position = 0
        self.terms: dict[int, int] = {}
        self.outbox: list[list[bytes]] = []
        self.notices: list[str] = []
        self.nonce = ""  # the standby's sync request being served ("" none)
        self.streaming = False  # live batches go to the standby
        self.in_sync = False  # ... and it acknowledged the catch-up: batches wait for its acknowledgement
        self._waiting: deque[tuple[int, int, float]] = deque()  # (batch number, position, when sent)
        self._released = 0  # the newest batch number counted durable (never goes back)
        self._acked = 0  # position
        self._cursor: dict[str, int] = {}  # catch-up: room -> newest seq sent
        self._tops: dict[str, int] = {}  # room -> newest seq in the inner store (all it was handed)
        self._skipped: dict[str, list[tuple[int, int]]] = {}  # numbers the store never gave out (power cut, force)
        self._floor = 0
        self._synced_at = 0  # catch-up ends at this position
        self._heard = clock()
        self.sent_batches = 0
        self.stale = 0  # acknowledgements of another catch-up, or malformed
        self._chunks_sent = self._chunks_acked = 0  # catch-up messages sent and committed by the standby
        self.went_alone = False  # set by go_alone() when it stopped a stream: the loop says so at once

    # -- Store

    def load(self, recent: int) -> Loaded:
        loaded = self.inner.load(recent)
        self.position, self.terms, self.term = loaded.position, dict(loaded.terms), loaded.term
        self._tops = dict(loaded.tops)
        self._skipped, self._floor = loaded.skipped, loaded.floor  # they change only when a store opens
        return loaded

    def submit(self, batch: Batch) -> None:
        batch.position = self.position + 1
        self.inner.submit(batch)
        self.position = batch.position
        for room, seq, _ts, _key, _body in batch.messages:
            self._tops[room] = seq
        if self.streaming:
            self.outbox.append(batch_frames(b"batch", self.nonce, batch))
            self._waiting.append((batch.number, batch.position, self.clock()))
            self.sent_batches += 1

    def durable(self) -> int:
        local = self.inner.durable()
        if self.streaming:  # from the catch-up's end on, every batch waits for the standby's acknowledgement
            while self._waiting and self._waiting[0][1] <= self._acked:
                self._waiting.popleft()
            # everything before the first batch the standby has yet to acknowledge
            local = min(local, self._waiting[0][0] - 1) if self._waiting else local
        self._released = max(self._released, local)  # never back: what was published alone stays published
        return self._released

    def read(self, room: str, after: int, before: int, limit: int, newest: bool) -> list[Row]:
        return self.inner.read(room, after, before, limit, newest)

    def lost(self, room: str, after: int, upto: int) -> list[tuple[int, int]]:
        return self.inner.lost(room, after, upto)

    def search(self, terms: list[q.Term], sender: str, room: str, limit: int) -> list[Found]:
        return self.inner.search(terms, sender, room, limit)

    def set_term(self, term: int, terms: dict[int, int]) -> None:
        self.inner.set_term(term, terms)
        self.term, self.terms = term, dict(terms)

    def adopt(self, epoch: str) -> None:
        self.inner.adopt(epoch)

    def close(self) -> None:
        self.inner.close()

    # -- the link

    def start_term(self, term: int) -> None:
        """This server has just become active in ``term``: saved, with where the term starts."""
        terms = dict(self.terms)
        terms[term] = self.position + 1
        self.set_term(term, terms)

    def prefix(self, term: int, position: int) -> bool:
        """Whether a store that followed up to ``position`` in ``term`` holds only what this one holds."""
        if position == 0:
            return True
        if term == self.term:
            return position <= self.position
        later = [first for t, first in self.terms.items() if t > term]
        if term not in self.terms and term != 0:
            return False
        end = min(later) - 1 if later else self.position
        return position <= end

    def on_sync(self, header: dict, epoch: str) -> None:
        """A standby asks to be caught up (its epoch, term, position, and newest seq per room)."""
        nonce = _str(header, "s")
        if not nonce or nonce == self.nonce:
            return
        their_epoch = _str(header, "epoch")
        empty = header.get("empty") is True
        theirs = header.get("tops") or {}
        if type(theirs) is not dict or not all(type(v) is int for v in theirs.values()):
            raise PeerError("sync: bad tops")
        self.go_alone("the standby asked to be caught up")
        self.nonce = nonce
        reset = False
        if not empty and their_epoch != epoch:
            self.outbox.append(encode(b"refuse", {"s": nonce, "why": "the stores hold different histories (epochs "
                                                  f"{their_epoch} and {epoch}): move one aside"}))
            self.notices.append(f"the standby's store holds another history (epoch {their_epoch}): not replicating")
            self.nonce = ""
            return
        if not empty and not self.prefix(_int(header, "term"), _int(header, "position")):
            reset = True  # it holds batches this history never had (it was an active that was deposed)
        self._cursor = {room: 0 if reset else min(theirs.get(room, 0), top) for room, top in self._tops.items()}
        self._chunks_sent = self._chunks_acked = 0
        self.outbox.append(encode(b"start", {"s": nonce, "epoch": epoch, "reset": reset, "term": self.term}))
        self._heard = self.clock()

    def catch_up(self, producers: list[Producer], topics: list[TopicRow], settled: bool = True) -> bool:
        """One bounded step of a catch-up (reads the store); True while there is more. At most
        CATCH_UP_WINDOW messages are unacknowledged at once. When every room has reached what the store
        holds now, the standby is told the position live batches follow, with the producers and topics as
        they are now, which must hold nothing beyond that position: call it only when every message
        sequenced so far was handed to the store (``settled``), i.e. right after the core's flush."""
        if not self.nonce or self.streaming:
            return False
        if self._chunks_sent - self._chunks_acked >= CATCH_UP_WINDOW:
            return False  # paced by the standby's acknowledgements
        for room, top in self._tops.items():
            done = self._cursor.get(room, 0)
            if done >= top:
                continue
            rows = self.inner.read(room, done, 0, CATCH_UP_ROWS, newest=False)
            rows = [row for row in rows if row[0] <= top]
            if not rows:
                self._cursor[room] = top
                continue
            self._cursor[room] = rows[-1][0]
            batch = Batch(0, [(room, seq, *_ts_mid(body), body) for seq, body in rows])
            self.outbox.append(batch_frames(b"rows", self.nonce, batch))
            self._chunks_sent += 1
            return True
        if not settled or self._chunks_sent > self._chunks_acked:
            return False  # the rows first; and a snapshot only of what the store holds
        snapshot = Batch(0, position=self.position)  # the standby replaces its producers with these
        snapshot.producers = {row[0]: row for row in producers}
        snapshot.topics = {row[0]: row for row in topics}
        skipped = {room: [list(r) for r in ranges] for room, ranges in self._skipped.items() if ranges}
        self.outbox.append(batch_frames(b"synced", self.nonce, snapshot, {"term": self.term, "terms": self.terms,
                                                                          "sk": skipped, "fl": self._floor}))
        self._synced_at = self.position
        self.streaming = True
        self._waiting.clear()
        return False

    def on_ack(self, header: dict) -> None:
        if not self.nonce or _str(header, "s") != self.nonce:
            self.stale += 1
            return
        self._heard = self.clock()
        if not self.streaming:  # the catch-up's: how many of its messages the standby has committed
            self._chunks_acked = max(self._chunks_acked, min(_int(header, "c"), self._chunks_sent))
            return
        self._acked = max(self._acked, _int(header, "p"))
        if not self.in_sync and self._acked >= self._synced_at:
            self.in_sync = True
            self._released = max(self._released, self.inner.durable())
            self._waiting = deque(w for w in self._waiting if w[1] > self._acked)
            self.notices.append("the standby is in sync: batches are published once both stores hold them")

    def heard(self) -> None:
        """The standby's state message arrived (it is alive, whatever it acknowledges)."""
        self._heard = self.clock()

    def tick(self) -> None:
        now = self.clock()
        if self.streaming and self._waiting and now - self._waiting[0][2] > self.timeout:
            self.go_alone(f"the standby acknowledged nothing for {self.timeout:g} s")
        elif (self.nonce or self.in_sync) and now - self._heard > self.timeout:
            self.go_alone(f"the standby is silent for {self.timeout:g} s")

    def go_alone(self, why: str) -> None:
        if self.in_sync or self.streaming:
            self.notices.append(f"{why}: running alone (publishing after this server's own commit)")
            # the loop tells the standby (a state message saying so) before it publishes anything more
            self.went_alone = True
        self.in_sync = self.streaming = False
        self.nonce = ""
        self._waiting.clear()

    @property
    def status(self) -> str:
        return "standby in sync" if self.in_sync else "catching up the standby" if self.nonce else "alone"


# -- the standby's side


class Follower:
    """Applies what the active sends to this server's store, and acknowledges it. ``frames(kind, header,
    bodies)`` returns the batches to commit (the loop commits them, then sends ``ack()``)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.nonce = ""
        self.streaming = False
        self.position = 0
        self.applied = 0  # batches committed since the start of this catch-up
        self.refused = ""  # why the active would not replicate to us ("" it would)
        self.asked_at = float("-inf")
        self.activity = float("-inf")  # when the last word of the current catch-up came (or it was asked)
        self.chunks = 0  # catch-up messages received for the current request
        self.reset = False  # the active said our store must start over
        self.epoch = ""  # the active's epoch, to adopt when empty
        self.term = 0
        self.terms: dict[int, int] = {}
        self.skipped: dict[str, list[tuple[int, int]]] = {}  # the active's numbers never given out, to copy
        self.floor = 0
        self.dropped = 0  # stale or malformed peer messages

    def sync(self, term: int, position: int, epoch: str, empty: bool, tops: dict[str, int]) -> list[bytes] | None:
        """The sync request to send, when one is due (none while caught up or refused)."""
        now = self.clock()
        if not self.due():
            return None
        self.asked_at = self.activity = now
        self.nonce = secrets.token_hex(8)
        self.chunks = 0
        return encode(b"sync", {"s": self.nonce, "term": term, "position": position, "epoch": epoch, "empty": empty,
                                "tops": tops})

    def receive(self, kind: bytes, header: dict, bodies: list[bytes]) -> Batch | None:
        """A message from the active: a batch to commit, or None (handled here, or stale and dropped)."""
        if header.get("s") != self.nonce or not self.nonce:
            self.dropped += 1
            return None
        self.activity = self.clock()  # the catch-up is moving: no need to ask again
        if kind == b"start":
            self.epoch = _str(header, "epoch")
            self.reset = header.get("reset") is True
            self.streaming = False
            return None
        if kind == b"refuse":
            self.refused = str(header.get("why", ""))[:300]
            return None
        if kind == b"rows":
            batch = batch_of(header, bodies, 0)
            self.chunks += 1
            return batch
        if kind == b"synced":
            batch = batch_of(header, bodies, 0)
            batch.expire_before = float("inf")  # the producers are replaced by the snapshot
            terms = header.get("terms") or {}
            if type(terms) is not dict or not all(type(k) is str and k.isdigit() and type(v) is int
                                                 for k, v in terms.items()):
                raise PeerError("synced: bad terms")
            skipped = header.get("sk") or {}
            if type(skipped) is not dict or not all(
                    type(ranges) is list and all(type(r) is list and len(r) == 2 and type(r[0]) is int
                                                 and type(r[1]) is int and 1 <= r[0] <= r[1] for r in ranges)
                    for ranges in skipped.values()):
                raise PeerError("synced: bad skipped ranges")
            self.term = _int(header, "term")
            self.terms = {int(k): v for k, v in terms.items()}
            self.skipped = {room: [(r[0], r[1]) for r in ranges] for room, ranges in skipped.items()}
            self.floor = _int(header, "fl")
            self.streaming = True
            self.position = batch.position
            return batch
        if kind == b"batch" and self.streaming:
            batch = batch_of(header, bodies, 0)
            if batch.position != self.position + 1:
                self.dropped += 1  # out of order: the stream broke; ask again
                self.streaming = False
                self.asked_at = self.activity = float("-inf")
                return None
            self.position = batch.position
            return batch
        self.dropped += 1
        return None

    def due(self) -> bool:
        """Whether a sync request is due: not following, and nothing heard of the last one for SYNC_RETRY."""
        return not self.streaming and not self.refused and self.clock() - self.activity >= SYNC_RETRY

    def ack(self) -> list[bytes]:
        """What was committed: the newest live position, and (while catching up) the catch-up messages."""
        return encode(b"ack", {"s": self.nonce, "p": self.position, "c": self.chunks})

    def lost_stream(self) -> None:
        """The active went silent or away: ask again when it is back."""
        self.streaming = False
        self.nonce = ""
        self.asked_at = self.activity = float("-inf")
