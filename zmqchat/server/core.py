"""The server's rules, sans-IO: frames in, frames to publish out.

Everything that decides what the server says lives here: presence, sequencing, dedupe, rate limits,
history replies. ``zmqchat.server.loop`` only moves frames between sockets and this class. Time comes from
the injected ``clock`` so the rules are tested without sleeping.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from .. import protocol as p
from . import search
from .dedupe import ACK, REFUSED, Producer, Producers
from .presence import Member, Roster
from .ratelimit import BROWSE, DELIVERY, RateLimiter, TokenBucket, WorkBudget
from .sequencer import Sequencer
from .storage import SearchOff, Store, StoreError

log = logging.getLogger("zmqchat.server")

DEFAULT_MOTD = "Welcome to zmqchat. Type /help for commands, exit to leave."
HEARTBEAT_ROOMS = 1000  # rooms whose newest seq rides on each heartbeat: those with new messages first, the
# rest in turn, so every occupied room is on one within ceil(rooms / HEARTBEAT_ROOMS) heartbeats at most
EXPIRE_PER_SCAN = 2000  # time-outs per expiry scan (4 a heartbeat), each weighing 1 + its rooms (the leave
# announcements it makes): a mass time-out, in many rooms each, is spread out
ACTIVITY_LOG_LINES = 20  # connect/join/leave info lines per 10 s; beyond, one summary line
UNKNOWN_SESSION_REPLIES_PER_SEC = 2.0  # a stale client hears "please say hello" this often, at most
UNKNOWN_SESSION_REPLIES_TOTAL = 500.0  # ... and all of them together, per second (made-up sessions are free),
UNKNOWN_SESSION_REPLIES_PER_SOURCE = 20.0  # and per source; sessions whose counters the server remembers
# (members before a restart) are held only to the first of these bounds, so strangers cannot silence them
NEW_SESSIONS_PER_SEC = 1000.0  # tokens of the server-wide new-session bucket; a hello that opens a session
NEW_SESSIONS_BURST = 5000.0  # in n rooms costs 1 + n/4 (with silent ones expiring in 3 s, at most a few
# thousand made-up sessions can exist at once, and a hello naming 256 rooms is one of 15 a second)
ADDRESS_SESSIONS_PER_SEC = 50.0  # the same tokens per address (a trusted gateway is exempt)
ADDRESS_SESSIONS_BURST = 250.0
WORK_BURST_SECONDS = 0.2  # the work budget holds this many seconds of its rate: the most one batch spends
SOURCE_WORK_SHARE = 0.1  # of the work budget, what one source (address, key) may spend: a crowd from one
# address takes a tenth, whichever priority it claims
WHO_MAX_NAMES = 10_000  # names in one who reply; a larger room is too big to list
BUSY_MIN_RETRY = 0.05  # seconds: the shortest "busy, retry" a client is told
LIST_ITEMS_PER_UNIT = 100  # names or rooms in a who or rooms reply that cost one unit of the work budget
BUSY_SPREAD = 0.25  # seconds: busy retries are spread over this much, so they do not all come back at once
COMMIT_GIVE_UP = 30.0  # seconds of failing history commits before the server stops with an error
HISTORY_REPLY_BYTES = 1 << 20  # one history reply carries at most this much; the client asks for the rest
SUBSCRIBER_BYTES = 64 * 1024 * 1024  # what one subscriber that stops reading may pin in the PUB's queue
PUBLICATION_OVERHEAD = 512  # bytes beyond its body a queued publication costs (four frames, the topic)
MIN_SUBSCRIBER_QUEUE = 100  # publications: the PUB high-water mark is never set lower
PRODUCER_EXPIRY_EVERY = 60.0  # seconds between sweeps of producers silent for longer than their window


def subscriber_queue(budget_bytes: int, max_message_bytes: int) -> int:
    """The PUB high-water mark: how many of the largest publications fit ``budget_bytes``. A subscriber that
    stops reading pins at most that many publications (their content shared with the other subscribers)."""
    return max(MIN_SUBSCRIBER_QUEUE, budget_bytes // (max_message_bytes + PUBLICATION_OVERHEAD))


def identity_of(key: str | None, name: str) -> str:
    """Who speaks: the CURVE key (empty in plaintext) and the name it speaks for. A session, its token
    buckets and its messages belong to an identity; a name cannot hold the separator (names are printable)."""
    return f"{key or ''}\x1f{name}"


def key_of(identity: str) -> str | None:
    return identity.partition("\x1f")[0] or None


@dataclass
class ServerConfig:
    """Tunable rules; each has a command-line flag except max_history_reply."""

    motd: str = DEFAULT_MOTD
    heartbeat_interval: float = 1.0  # seconds between server heartbeats (and expected client ones)
    heartbeat_misses: int = 3  # silent intervals before a client is timed out
    backlog: int = 20  # messages replayed to a client joining a room
    rate: float = 20.0  # messages per second per client (0: unlimited)
    burst: float = 60.0  # messages a client may send at once
    max_text_bytes: int = p.DEFAULT_MAX_TEXT_BYTES
    max_message_bytes: int = p.DEFAULT_MAX_MESSAGE_BYTES  # whole message; also the PULL's MAXMSGSIZE
    max_history_reply: int = 1000  # messages in one history reply (reply_limit of the PUB queue)
    history_cache: int = 1000  # newest messages of each room kept in memory (the store keeps its own number)
    topic_lock: bool = False  # only who first set a room's topic (by name, or key under CURVE) may change it
    stats_interval: float = 0.0  # seconds between stats log lines (0: never)
    presence_limit: int = 500  # rooms with more members do not announce joins and leaves
    work_rate: float = 30_000.0  # publications per second all requests together may cost (0: unlimited)
    address_rate: float = 2_000.0  # messages per second one address (or CURVE key) may send (0: unlimited)
    trusted: frozenset[str] = frozenset()  # addresses exempt from the per-address (and per-key) budgets

    @staticmethod
    def reply_limit(pub_hwm: int) -> int:
        """Messages in one history reply: a quarter of the PUB queue (a tick may queue two full replies to
        one session), so no reply is ever cut at the high-water mark; at most 1000."""
        return max(1, min(1000, pub_hwm // 4))


# Tokens each request costs from the sender's request bucket (messages cost 1 from their own bucket;
# pings, bye and part cost nothing: a refused part would leave the sender in a room it left).
REQUEST_COSTS: dict[type[p.Message], Callable[[p.Message], float]] = {
    p.Join: lambda m: 1.0 if m.last_seq < 0 else 6.0,  # a catch-up replays up to 1000, like such a history
    p.WhoRequest: lambda m: 1.0, p.RoomsRequest: lambda m: 1.0,
    p.StatsRequest: lambda m: 1.0, p.HistoryRequest: lambda m: 1.0 + min(m.limit, 1000) / 200,
    p.PageRequest: lambda m: 1.0 + min(m.limit, 1000) / 200, p.SearchRequest: lambda m: 3.0,
    p.TopicRequest: lambda m: 1.0,
}
SEARCH_WORK = 20  # work-budget units (publications) one search is charged: it reads the index, not memory
# Searches may take at most this share of the serving loop's time, measured: a query's cost is not known
# before it runs (a prefix over a big index takes milliseconds), so a crowd of them is bounded by time.
SEARCH_LOOP_SHARE = 0.1  # seconds of searching per second
SEARCH_TIME_BURST = 0.2  # seconds of searching at once
SEARCH_REPLY_BYTES = 48 * 1024  # text of the results in one search reply, at most


class LogLimiter:
    """At most ``burst`` log lines per ``period`` seconds for noisy events, then one summary line
    (``summary`` % count) at ``level``. With ``traceback_once``, the first line ever carries the exception
    being handled (internal errors)."""

    def __init__(self, clock: Callable[[], float], burst: int = 5, period: float = 10.0,
                 traceback_once: bool = False, level: int = logging.WARNING,
                 summary: str = "%d more similar warnings suppressed") -> None:
        self.clock = clock
        self.burst = burst
        self.period = period
        self.level = level
        self.summary = summary
        self._window = -period
        self._count = 0
        self._suppressed = 0
        self._traceback = traceback_once

    def warn(self, fmt: str, *args: object) -> None:
        now = self.clock()
        if now - self._window >= self.period:
            if self._suppressed:
                log.log(self.level, self.summary, self._suppressed)
            self._window, self._count, self._suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            log.log(self.level, fmt, *args, exc_info=self._traceback)
            self._traceback = False
        else:
            self._suppressed += 1

    info = warn  # the same limit, whatever the level is called at the call site


def activity_log(clock: Callable[[], float]) -> LogLimiter:
    """Info lines for comings and goings, at most ACTIVITY_LOG_LINES per 10 s, then a count."""
    return LogLimiter(clock, burst=ACTIVITY_LOG_LINES, level=logging.INFO,
                      summary="%d more joins and leaves not logged")


class ServerCore:
    """Consumes client frames (``receive``) and timers (``tick``); ``flush`` returns what to publish."""

    def __init__(self, config: ServerConfig, store: Store, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] | None = None, term: int = 0, role: str = "") -> None:
        self.config = config
        self.term = term  # a pair's takeover count (0: not one of a pair): the last frame of all we publish
        self._term = p.term_frame(term)
        self.role = role  # "" alone, "active" in a pair: what heartbeats say
        self.pair_status: Callable[[], str] | None = None  # a pair's loop sets it: shown in /stats and the stats line
        # a msgs publication is at most one incoming message's size: the PUB queue's byte bound holds
        self._run_bytes = config.max_message_bytes - 64
        self.sequencer = Sequencer(store, config.history_cache)  # loads the store: may raise StoreError
        self.clock = clock  # timers: heartbeats, expiry, rate limits (monotonic: a clock step breaks none)
        # timestamps people read; an injected test clock serves as both
        self.wall_clock = wall_clock or (time.time if clock is time.monotonic else clock)
        self.presence = Roster(config.heartbeat_interval * config.heartbeat_misses)
        self.limiter = RateLimiter(config.rate, config.burst)
        self.request_limiter = RateLimiter(config.rate, config.burst)
        self._new_sessions = TokenBucket(NEW_SESSIONS_PER_SEC, NEW_SESSIONS_BURST, clock())
        self._address_sessions = RateLimiter(ADDRESS_SESSIONS_PER_SEC, ADDRESS_SESSIONS_BURST)
        # Before decoding: what one address (or key) may send at all. Far above any one person's rate, so
        # it only ever bites a flooder; what it drops is never parsed.
        self.intake = RateLimiter(config.address_rate, 2 * config.address_rate)
        self.work = WorkBudget(config.work_rate, config.work_rate * WORK_BURST_SECONDS, clock())
        self._search_time = TokenBucket(SEARCH_LOOP_SHARE, SEARCH_TIME_BURST, clock())  # charged after each search
        share = config.work_rate * SOURCE_WORK_SHARE
        self._source_work = RateLimiter(share, share * WORK_BURST_SECONDS)
        self._sources: tuple[str, ...] = ()  # whom the message being handled charges (see _sources)
        self._bound: dict[str, str] | None = None  # the allowlist's key -> name, when there is one
        self._busy_turn = 0
        self._cache: dict[tuple, tuple[bytes, bytes]] = {}  # encoded replies of this tick (rooms, stats, who of a room)
        self._queued: dict[str, int] = {}  # publications queued this tick per session topic
        # the last grant: publications allowed, and what each bucket was charged (settled by the reply)
        self._granted: tuple[int, list[tuple[TokenBucket | WorkBudget, float]]] = (0, [])
        self.out: list = []  # publications of this tick, in order: frames, or a _Run of room messages
        self._runs: dict[bytes, _Run] = {}  # room topic -> its open run of messages in self.out
        self._beats: list[list[bytes]] = []  # heartbeats of this tick: they wait for no batch
        self._held: deque[tuple[int, list[list[bytes]]]] = deque()  # (batch, publications waiting for it)
        self.bad_input = LogLimiter(clock)
        self.activity = activity_log(clock)  # joins and leaves: bounded by time, not by how many come
        self.internal_errors = LogLimiter(clock, traceback_once=True)
        self.db_errors = LogLimiter(clock, burst=1)
        self._failing_since: float | None = None
        self.last_commit: float | None = None  # seconds the last batch took to submit (read by the metrics)
        self.stats = dict.fromkeys(
            ("received", "published", "messages", "rejected", "refused", "throttled", "duplicates",
             "resend_requests", "foreign", "recoveries", "recovered", "timeouts", "auth_failures", "errors",
             "busy", "shed", "refused_handshakes", "searches"), 0)
        self.producers = Producers()
        for session, identity, next_n, room, seq, ts in self.sequencer.producers(self.wall_clock() - self.producers.window):
            self.producers.restore(session, identity, next_n, room, seq, ts)
        self._forget_producers()
        now = clock()
        self._next_producer_expiry = now + PRODUCER_EXPIRY_EVERY
        self._new_rooms: set[str] = set()  # rooms with messages in the batch being built
        self._fresh: dict[str, None] = {}  # rooms with committed messages not yet on a heartbeat, oldest first
        self._rotation = 0  # where the next heartbeat resumes the round of the other occupied rooms
        self._next_heartbeat = now
        self._next_expiry = now
        self._next_stats = now + config.stats_interval if config.stats_interval > 0 else float("inf")
        self._unknown_session_bucket = RateLimiter(UNKNOWN_SESSION_REPLIES_PER_SEC, 2.0)
        self._unknown_session_total = TokenBucket(UNKNOWN_SESSION_REPLIES_TOTAL, UNKNOWN_SESSION_REPLIES_TOTAL, now)
        self._unknown_session_source = RateLimiter(UNKNOWN_SESSION_REPLIES_PER_SOURCE,
                                                   2 * UNKNOWN_SESSION_REPLIES_PER_SOURCE)
        self._handlers: dict[type[p.Message], Callable] = {
            p.Hello: self.handle_hello, p.Say: self.handle_say, p.Join: self.handle_join,
            p.Part: self.handle_part, p.WhoRequest: self.handle_who, p.RoomsRequest: self.handle_rooms,
            p.HistoryRequest: self.handle_history, p.StatsRequest: self.handle_stats,
            p.PageRequest: self.handle_page, p.SearchRequest: self.handle_search, p.TopicRequest: self.handle_topic,
            p.Ping: self.handle_ping, p.Bye: self.handle_bye,
        }

    # -- entry points

    def admit(self, key: str | None = None, address: str = "") -> bool:
        """Whether a message from this key and address is to be read at all: False (counted as received
        and shed) when one of its sources is over its intake budget. The loop asks before it reads more
        than the first frame; what is refused is dropped unparsed, and the sender resends what mattered."""
        self._sources = sources = _sources(key, address, self.config.trusted)
        if sources:
            now = self.clock()
            if any(self.intake.check(source, now) > 0 for source in sources):
                self.stats["received"] += 1
                self.stats["shed"] += 1
                return False
        return True

    def receive(self, frames: list[bytes], key: str | None = None, bound_name: str | None = None,
                address: str = "", admitted: bool = False) -> None:
        """Handle one message from the PULL socket. ``key`` is the CURVE public key that sent it,
        ``bound_name`` the name the allowlist binds to that key and ``address`` the peer's IP address;
        ``admitted``: ``admit`` has been asked already. Never raises for bad input."""
        if not admitted and not self.admit(key, address):
            return
        if self._bound is not None and key is not None:
            bound_name = self._bound.get(key)
            if bound_name is None:
                self._unbound_key()
                return
        self.stats["received"] += 1
        try:
            msg = p.decode_client(frames)
        except p.ProtocolError as exc:
            self.stats["rejected"] += 1
            self.bad_input.warn("dropped bad message: %s", exc)
            return
        try:
            self._dispatch(msg, sum(map(len, frames)), key, bound_name, address)
        except Exception as exc:  # noqa: BLE001 (a bug must cost one message, never the server)
            self.internal_error(exc)

    def internal_error(self, exc: BaseException) -> None:
        """A bug met while handling one message: counted, and logged like bad input (rate-limited; the
        first one with its traceback). The message is dropped; the server goes on."""
        self.stats["errors"] += 1
        self.internal_errors.warn("internal error while handling a message (dropped): %r", exc)

    def bind_keys(self, names: dict[str, str] | None) -> None:
        """The allowlist: CURVE key -> the name it is bound to (None: any key, no names bound). A new one
        (SIGHUP) ends every session whose key it no longer holds; a message from such a key, on a
        connection opened before, is dropped from then on (``receive``)."""
        self._bound = names
        if names is not None:
            self.revoke(set(names))

    def _unbound_key(self) -> None:
        # A connection opened before its key was removed (SIGHUP): still encrypted, no longer anyone.
        self.stats["auth_failures"] += 1
        self.bad_input.warn("dropped a message from a key that is no longer authorized")

    def frame_bomb(self) -> None:
        """A message of more frames than any zmqchat message has arrived; its frames were dropped unread."""
        self.stats["received"] += 1
        self.stats["rejected"] += 1
        self.bad_input.warn("dropped a message of too many frames")

    def handshakes_refused(self, count: int) -> None:
        """The ZAP handler refused ``count`` handshakes: too many from one address."""
        self.stats["refused_handshakes"] += count
        self.bad_input.warn("refused %d handshake(s): too many from one address", count)

    def auth_failed(self, why: str, peer: str) -> None:
        """A connection failed the CURVE handshake (the loop's socket monitor saw it)."""
        self.stats["auth_failures"] += 1
        self.bad_input.warn("refused a client (%s) from %s", why, peer)

    def _dispatch(self, msg: p.Message, size: int, key: str | None, bound_name: str | None, address: str) -> None:
        if isinstance(msg, p.Hello):
            if size > self.config.max_message_bytes:
                self.stats["rejected"] += 1
                return
            self.handle_hello(msg, key, bound_name, address)
            return
        member = self.presence.get(msg.session)
        if member is None:
            self._unknown_session(msg, key)
            return
        if member.key != key:  # checked before anything is said to that session, size included
            self._foreign(msg, member.name)
            return
        self.presence.touch(member.session, self.clock())
        if size > self.config.max_message_bytes:
            self.stats["rejected"] += 1
            text = f"message too long ({size} bytes on the wire, at most {self.config.max_message_bytes})"
            if isinstance(msg, p.Say):  # final for this mid: its counter moves on like any refusal's
                self.handle_say(msg, member, oversized=text)
            else:
                self._refuse(msg.session, p.ERR_TOO_LONG, text, rid=_rid(msg))
            return
        cost = REQUEST_COSTS.get(type(msg))
        if cost is not None and not self._charge(member, cost(msg), rid=_rid(msg)):
            return
        self._handlers[type(msg)](msg, member)

    def _foreign(self, msg: p.Message, owner: str) -> None:
        """A message naming a session that another identity owns: dropped and counted, never answered
        (an answer on that session's topic would reach its owner)."""
        self.stats["foreign"] += 1
        self.stats["rejected"] += 1
        self.bad_input.warn("dropped %s for %s's session from another identity", msg.KIND.decode(), owner)

    def _charge(self, member: Member, cost: float, reply: bool = True, rid: str = "") -> bool:
        """Requests have a token bucket of their own per identity (same rate and burst as messages): a
        flood of joins or history requests is throttled like a flood of messages, a client busy sending
        never starves its own gap recovery, and opening more sessions buys no more."""
        wait = self.request_limiter.check(member.identity, self.clock(), cost)
        if wait <= 0:
            return True
        self.stats["throttled"] += 1
        if reply:
            self._refuse(member.session, p.ERR_RATE_LIMITED, f"slow down: wait {wait:.1f}s", retry_after=wait,
                         rid=rid)
        return False

    def _grant(self, member: Member, cost: int, priority: int) -> float:
        """Seconds until ``cost`` publications for ``member`` may be queued (0.0: queued now, and charged).
        Two bounds: the server-wide work budget, and the session's share of this tick, which keeps what one
        subscriber is sent in one go well under the PUB's high-water mark (a reply longer than that would
        lose its tail, history end included, and the retry would get the same)."""
        queued = self._queued.get(member.session, 0)
        if queued and queued + cost > 2 * (self.config.max_history_reply + 1):  # two full replies at most
            return BUSY_MIN_RETRY  # the next tick, once this one's replies are on their way
        now = self.clock()
        charged: list[tuple[TokenBucket | WorkBudget, float]] = []
        for source in self._sources:  # first the sender's share, so a crowd from one address takes a tenth
            bucket = self._source_work.bucket(source, now)
            if bucket is None:
                continue
            wait = bucket.take(now, cost)
            if wait > 0:
                _settle(charged, 0)
                return wait
            charged.append((bucket, min(cost, bucket.burst)))
        wait = self.work.take(now, cost, priority)
        if wait > 0:
            _settle(charged, 0)
            return wait
        charged.append((self.work, self.work.charged))
        self._queued[member.session] = queued + cost
        self._granted = (cost, charged)  # settled by the reply, which knows what it cost
        return 0.0

    def _afford(self, member: Member, cost: int, priority: int, rid: str) -> bool:
        """``_grant``, and the busy reply when refused."""
        wait = self._grant(member, cost, priority)
        if wait > 0:
            self._busy(member.session, wait, rid)
        return wait <= 0

    def _busy(self, session: str, wait: float, rid: str) -> None:
        """The cheap answer beyond the budget: nothing was done, ask again later (retries are spread so a
        crowd told at once does not come back at once)."""
        self.stats["busy"] += 1
        self._busy_turn = (self._busy_turn + 1) % 16
        retry = min(max(wait, BUSY_MIN_RETRY) + BUSY_SPREAD * self._busy_turn / 16, p.MAX_INTERVAL)
        self._reply(session, p.ErrorReply(code=p.ERR_BUSY, message=f"server busy: retry in {retry * 1000:.0f} ms",
                                          retry_after=retry, rid=rid))

    def _reply_cached(self, member: Member, key: tuple, rid: str, build: Callable[[], p.Message]) -> None:
        """Reply with what ``build`` makes (its ``rid`` empty), built and encoded at most once per tick
        whoever asks, with the asker's ``rid``."""
        cached = self._cache.get(key)
        if cached is None:
            msg = build()
            cached = self._cache[key] = (msg.KIND, p.encode_body(msg))
        kind, body = cached
        self.out.append(p.server_frames(p.session_topic(member.session), kind, p.with_rid(body, rid), self._term))

    def tick(self) -> None:
        """Timers: expire silent clients, heartbeat, stats line. Call at least every heartbeat interval."""
        now = self.clock()
        self._cache.clear()  # replies many ask for are computed once per tick, never served stale for longer
        if now >= self._next_expiry:
            # A scan of every session: a few times per heartbeat interval is plenty, per batch is not.
            self._next_expiry = now + self.config.heartbeat_interval / 4
            for member in self.presence.expire(now, EXPIRE_PER_SCAN):
                self.stats["timeouts"] += 1
                self.activity.info("%s left (timed out)", member.name)
                self._announce_leave(member, "timeout")
        if now >= self._next_producer_expiry:
            self._next_producer_expiry = now + PRODUCER_EXPIRY_EVERY
            self.producers.expire(self.wall_clock())
            self._forget_producers()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_interval
            # Newest seq of occupied rooms: lets a client notice it lost the tail of a burst.
            # committed numbers only: a heartbeat may go out while a batch waits for the disk
            seqs = {room: self.sequencer.committed_seq(room) for room in self._heartbeat_rooms()}
            self._beats.append(p.encode_server(p.ALL_TOPIC, p.ServerHeartbeat(ts=self.wall_clock(), seqs=seqs,
                                                                           role=self.role), self._term))
        if now >= self._next_stats:
            self._next_stats = now + self.config.stats_interval
            pair = f" pair={self.pair_status()!r}" if self.pair_status is not None else ""
            log.info("stats %s%s", " ".join(f"{k}={v}" for k, v in self.snapshot().items()), pair)

    def _heartbeat_rooms(self) -> list[str]:
        """At most HEARTBEAT_ROOMS occupied rooms: first those with messages since their last heartbeat
        (a lost tail is only ever just after new messages), then the others in turn. Squatted rooms can
        delay a quiet room's turn, never a room that has just had a message."""
        chosen: list[str] = []
        while self._fresh and len(chosen) < HEARTBEAT_ROOMS:
            room = next(iter(self._fresh))
            del self._fresh[room]
            if self.presence.size_of(room):
                chosen.append(room)
        occupied = self.presence.room_names()
        if len(chosen) < HEARTBEAT_ROOMS and occupied:
            start = self._rotation % len(occupied)
            turn = occupied[start:] + occupied[:start]
            picked = set(chosen)
            extra = [room for room in turn[:HEARTBEAT_ROOMS] if room not in picked][: HEARTBEAT_ROOMS - len(chosen)]
            self._rotation = start + len(extra)
            chosen += extra
        return chosen

    def flush(self) -> list[list[bytes]]:
        """Submit the batch of this tick to the store, then hand over what to publish, in order: heartbeats
        at once, everything else once the batch it follows is durable (what is not on disk must not be
        seen). While the store refuses batches only heartbeats go out; after COMMIT_GIVE_UP seconds of
        that, StoreError ends the server."""
        beats, self._beats = self._beats, []
        started = self.clock()
        try:
            if self.sequencer.submit():
                self.last_commit = self.clock() - started
        except StoreError as exc:
            now = self.clock()
            if self._failing_since is None:
                self._failing_since = now
            held = sum(len(frames) for _batch, frames in self._held) + len(self.out)
            self.db_errors.warn("%s (holding %d messages, retrying)", exc, held)
            if now - self._failing_since > COMMIT_GIVE_UP:
                raise
        else:
            self._failing_since = None
            for room in self._new_rooms:
                self._fresh[room] = None
            self._new_rooms.clear()
        self._queued.clear()
        if self.out:
            # a room's messages of this tick go out as one publication (msgs), or as msg when alone
            self._held.append((self.sequencer.waiting_for(),
                               [item.frames(self._term) if type(item) is _Run else item for item in self.out]))
            self.out = []
            self._runs.clear()
        durable = self.sequencer.settle()
        out = beats
        while self._held and self._held[0][0] <= durable:
            out += self._held.popleft()[1]
        self.stats["published"] += len(out)
        return out

    def take_commit_time(self) -> float | None:
        """Seconds the last batch took to submit, once (None if no batch was written since)."""
        took, self.last_commit = self.last_commit, None
        return took

    def shutdown(self, message: str = "server shutting down") -> list[list[bytes]]:
        self._publish(p.ALL_TOPIC, p.Shutdown(message=message))
        return self.flush()

    def revoke(self, allowed_keys: set[str]) -> None:
        """End every session whose CURVE key is not in ``allowed_keys`` (after the allowlist shrank)."""
        for member in self.presence.members():
            if member.key is not None and member.key not in allowed_keys:
                self.presence.remove(member.session)
                self.activity.info("%s removed: key no longer authorized", member.name)
                self._refuse(member.session, p.ERR_REVOKED, "your key is no longer authorized on this server")
                self._announce_leave(member, "revoked")

    def snapshot(self) -> dict[str, int]:
        """Counters for /stats and the periodic stats line."""
        return {"clients": len(self.presence), "rooms": self.presence.room_count(),
                **self.stats, "history": self.sequencer.size()}

    # -- helpers

    def _publish(self, topic: bytes, msg: p.Message) -> None:
        self._runs.pop(topic, None)  # later messages of that room come after this, in a run of their own
        self.out.append(p.encode_server(topic, msg, self._term))

    def _reply(self, member_or_session: Member | str, msg: p.Message) -> None:
        session = member_or_session if isinstance(member_or_session, str) else member_or_session.session
        self._publish(p.session_topic(session), msg)

    def _refuse(self, session: str, code: str, text: str, mid: str = "", retry_after: float = 0.0,
                rid: str = "", resend_from: int = 0) -> None:
        self.stats["refused"] += 1
        retry_after = min(retry_after, p.MAX_INTERVAL)  # what every client accepts (a tiny --rate waits longer)
        self._reply(session, p.ErrorReply(code=code, message=text, mid=mid, retry_after=retry_after, rid=rid,
                                          resend_from=resend_from))

    def _forget_producers(self) -> None:
        for session in self.producers.forgotten:
            if self.producers.get(session) is None:  # not opened again since
                self.sequencer.drop_producer(session)
        self.producers.forgotten.clear()

    def _unknown_session(self, msg: p.Message, key: str | None) -> None:
        # After a server restart every client is unknown: tell each (rate-limited) to say hello again,
        # unless the session is known to belong to another key (its messages are remembered).
        producer = self.producers.get(msg.session)
        if producer is not None and key_of(producer.identity) != key:
            self._foreign(msg, producer.identity.partition("\x1f")[2])
            return
        now = self.clock()
        if self._unknown_session_bucket.check(msg.session, now) > 0:
            return
        if producer is None and (any(self._unknown_session_source.check(s, now) > 0 for s in self._sources)
                                 or self._unknown_session_total.take(now) > 0):
            return  # a session nobody remembers: made-up ones are free, so their answers are bounded in all
        self._refuse(msg.session, p.ERR_UNKNOWN_SESSION, "unknown session; send hello", rid=_rid(msg))

    def _announce(self, room: str, name: str, event: str) -> None:
        # Every join reaches every member: n joins cost n^2 deliveries. Big rooms stay quiet (/who works).
        # Called after the change: a leaver no longer counts, so add it back to judge the room's size.
        size = self.presence.size_of(room) + (event != "join")
        if size <= self.config.presence_limit:
            self._publish(p.room_topic(room), p.PresenceEvent(room=room, name=name, event=event,
                                                              ts=self.wall_clock()))

    def _announce_leave(self, member: Member, event: str) -> None:
        self._cache.clear()  # every way out of the server comes here: who and rooms change
        for room in sorted(member.rooms):
            self._announce(room, member.name, event)

    def _enter_room(self, member: Member, room: str, last_seq: int, replay: bool = True, rid: str = "") -> None:
        """Join ``member`` to ``room`` (announcing it if new) and replay what it has not seen."""
        if self.presence.join(member, room):
            self._cache.clear()  # who and rooms change with it
            self.activity.info("%s joined %s", member.name, room)
            self._announce(room, member.name, "join")
        if replay:
            topic = self.sequencer.topic(room)
            if topic is not None:
                _room, text, by, ts, _owner = topic
                self._reply(member, p.Topic(room=room, text=text, by=by, ts=ts))
            self._replay(member, room, last_seq, rid)

    def _replay_cost(self, last_seq: int) -> int:
        """Publications a replay of a room may take: its rows and the history end."""
        return 1 + min(self.config.backlog if last_seq < 0 else self.config.max_history_reply,
                       self.config.max_history_reply)

    def _replay(self, member: Member, room: str, last_seq: int, rid: str) -> None:
        if last_seq < 0:
            self._send_history(member, room, 0, 0, self.config.backlog, backlog=True, rid=rid)
        else:  # a catch-up, also from 0 (a room joined while it was empty): everything, oldest first
            self._send_history(member, room, last_seq, 0, self.config.max_history_reply, backlog=False, rid=rid)

    def _send_history(self, member: Member, room: str, after: int, before: int, limit: int,
                      backlog: bool, rid: str = "") -> int:
        """A backlog is the newest ``limit`` messages; anything else is served oldest first and ``upto``
        stops where the reply stops, so the client asks for the rest."""
        topic = p.session_topic(member.session)
        limit = min(limit, self.config.max_history_reply)
        rows = self.sequencer.range(room, after, before, limit, newest=backlog)
        cut = len(rows) == limit
        if sum(len(body) for _, body in rows) > HISTORY_REPLY_BYTES:
            rows, cut = _within_bytes(rows, HISTORY_REPLY_BYTES, keep_newest=backlog), True
        for _seq, body in rows:
            self.out.append(p.server_frames(topic, p.HistoryMessage.KIND, body, self._term))
        last = self.sequencer.last_seq(room)
        upto = min(before - 1, last) if before > 0 else last
        if not backlog and rows and cut:
            upto = rows[-1][0]
        # numbers the server skipped after losing the tail of its disk: the client stops waiting for them
        lost = [] if backlog else [list(r) for r in self.sequencer.lost(room, after, upto)]
        self._reply(member, p.HistoryEnd(room=room, after=after, upto=upto, count=len(rows), newest=last,
                                         before=before, rid=rid, lost=lost))
        # Granted before reading for the most it could cost; settled now for what it did.
        (allowed, charged), self._granted = self._granted, (0, [])
        used = 1 + len(rows)
        _settle(charged, used)
        self._queued[member.session] = max(0, self._queued.get(member.session, 0) - max(0, allowed - used))
        return len(rows)

    # -- handlers, one per client message kind

    def handle_hello(self, msg: p.Hello, key: str | None, bound_name: str | None, address: str = "") -> None:
        now = self.clock()
        identity = identity_of(key, msg.name)
        member = self.presence.get(msg.session)
        producer = self.producers.get(msg.session)
        # A session belongs to the identity that opened it (and, after a restart, to the one whose messages
        # the server remembers): nobody else is answered on its topic, not even with a refusal.
        if member is not None and member.identity != identity:
            self._foreign(msg, member.name)
            return
        if member is None and producer is not None and producer.identity != identity:
            self._foreign(msg, producer.identity.partition("\x1f")[2])
            return
        rid = msg.rid
        if self.role and msg.term > self.term:  # the client has heard a newer active: this one was deposed
            self._refuse(msg.session, p.ERR_NOT_ACTIVE, f"this server's term {self.term} is older than the "
                         f"client's {msg.term}: another server took over", rid=rid)
            return
        problem = p.name_problem(msg.name)
        if problem:
            self._refuse(msg.session, p.ERR_BAD_NAME, problem, rid=rid)
            return
        if bound_name is not None and bound_name != p.ANY_NAME and msg.name != bound_name:
            self._refuse(msg.session, p.ERR_NOT_AUTHORIZED, f"your key is bound to the name '{bound_name}'", rid=rid)
            self.bad_input.warn("refused %r: key is bound to %r", msg.name, bound_name)
            return
        owner = self.presence.owner_of(msg.name)
        if owner is not None and owner != msg.session:
            self._refuse(msg.session, p.ERR_NAME_TAKEN, f"name '{msg.name}' is already taken", rid=rid)
            return
        rooms = [r for r in msg.rooms[: p.MAX_LIST_ITEMS] if isinstance(r, str) and p.room_problem(r) is None]
        if member is None and not self._may_open(msg.session, 1.0 + len(rooms) / 4, rid):
            return
        if member is None:
            member = self.presence.add(msg.session, msg.name, now)
            member.key, member.identity = key, identity
            self.activity.info("%s connected (session %s)", msg.name, msg.session)
        # A hello replays history for every room (and a new one announces it there): it is charged like
        # the requests it amounts to, first or repeated. Over budget, the rooms are entered without replay;
        # the client asks again for each (charged).
        replay = self._charge(member, 1.0 + len(rooms) / 4, reply=False)
        # where this session's counters start, if the server knows none (else the server's own count rules)
        member.unacked = msg.unacked if producer is None else None
        if producer is not None:
            producer.rate_blocked = False  # it reconnected: the held message comes first again
            if msg.unacked > producer.next:
                # The sender holds acknowledgements this server's state lacks (a standby forced active without
                # the last of its active's batches): those counters were settled; waiting for them would stall.
                producer.next = msg.unacked
                self.sequencer.save_producer(producer.session, producer.identity, producer.next, producer.room,
                                             producer.seq, producer.ts)
        self.presence.touch(member.session, now)
        self._reply(member, p.Welcome(session=msg.session, name=msg.name, motd=self.config.motd,
                                      heartbeat_interval=self.config.heartbeat_interval,
                                      max_text_bytes=self.config.max_text_bytes, server_time=self.wall_clock(),
                                      epoch=self.sequencer.epoch, max_message_bytes=self.config.max_message_bytes,
                                      rid=rid))
        same_epoch = msg.epoch == self.sequencer.epoch
        wait = 0.0
        for room in rooms:
            last = msg.last_seq.get(room, -1) if same_epoch else -1
            if replay and wait <= 0:
                wait = self._grant(member, self._replay_cost(last), DELIVERY)
            self._enter_room(member, room, last, replay and wait <= 0)
        if wait > 0:  # the rooms past the budget are entered unreplayed; the client asks for each after the wait
            self._busy(member.session, wait, rid)

    def _may_open(self, session: str, cost: float, rid: str) -> bool:
        """A new session costs tokens of its source's bucket, then of the server-wide one, in proportion to
        the rooms it enters (each announced, each replayed): a flood of made-up sessions (without CURVE anyone
        can make them) cannot outrun either, and a small hello still finds tokens while big ones wait. Real
        clients retry their hello every quarter second and get in."""
        now = self.clock()
        wait = max((self._address_sessions.check(source, now, cost) for source in self._sources), default=0.0)
        why = "too many new sessions from your address"
        if wait <= 0:
            wait = self._new_sessions.take(now, cost)
            why = "server busy: too many new sessions"
        if wait <= 0:
            return True
        self.stats["throttled"] += 1
        self._refuse(session, p.ERR_RATE_LIMITED, f"{why}, retrying", retry_after=wait, rid=rid)
        return False

    def handle_say(self, msg: p.Say, member: Member, oversized: str = "") -> None:
        n = p.mid_counter(msg.mid, msg.session)
        assert n is not None  # decoding checked the mid's form
        producer = self.producers.get(member.session)
        if producer is None:
            # The first message of this session that the server hears of: counters start where the hello
            # said (or, if the server forgot this live session, at this one).
            start = member.unacked if member.unacked is not None else n
            member.unacked = None
            producer = self.producers.open(member.session, member.identity, start, self.wall_clock())
            self._forget_producers()  # whom opening it evicted, queued before this one is saved
        if n < producer.next:
            self._duplicate(msg, member, producer, n)
            return
        if n > producer.next:
            self._jump(msg, member, producer)
            return
        if oversized:
            self._settle_refused(member, producer, n, msg.mid, p.ERR_TOO_LONG, oversized)
            return
        if msg.room not in member.rooms:
            self._settle_refused(member, producer, n, msg.mid, p.ERR_NOT_IN_ROOM,
                                 f"you are not in {msg.room}; /join it first")
            return
        text = msg.text
        # A character is at most 4 UTF-8 bytes: short texts need no encoding to be measured.
        if len(text) * 4 > self.config.max_text_bytes and len(text.encode()) > self.config.max_text_bytes:
            self._settle_refused(member, producer, n, msg.mid, p.ERR_TOO_LONG, f"message too long "
                                 f"({len(text.encode())} bytes, at most {self.config.max_text_bytes})")
            return
        if not text or text.isspace():
            self._settle_refused(member, producer, n, msg.mid, p.ERR_EMPTY, "empty message")
            return
        now = self.clock()
        wait = self.limiter.check(member.identity, now)
        if wait > 0:
            # Not settled: the client holds it and the rest, and sends it again after the wait. Until it
            # does, its later messages are dropped without a word (see _jump), and so is this one sent
            # again before the wait is over: refusing a flooder costs no more than one reply per wait.
            self.stats["throttled"] += 1
            if producer.rate_blocked and now < producer.blocked_until:
                return
            producer.rate_blocked = True
            producer.blocked_until = now + wait
            self._refuse(member.session, p.ERR_RATE_LIMITED, f"slow down: wait {wait:.1f}s", msg.mid, wait)
            return
        name, mid, action, room = member.name, msg.mid, msg.action, msg.room

        ts = self.wall_clock()

        def body(seq: int) -> bytes:
            return p.room_message_body(room, seq, ts, name, text, mid, action)

        seq, encoded = self.sequencer.append(room, ts, mid, body)
        self._new_rooms.add(room)
        self._settle(producer, n, (ACK, room, seq), ts)
        self.stats["messages"] += 1
        log.debug("%s <%s> %s", room, name, text)
        topic = p.room_topic(room)
        run = self._runs.get(topic)
        if run is None or run.size + len(encoded) > self._run_bytes:
            run = self._runs[topic] = _Run(topic)
            self.out.append(run)
        run.bodies.append(encoded)
        run.size += len(encoded) + 1

    def _settle(self, producer: Producer, n: int, outcome: tuple, ts: float) -> None:
        producer.advance(n, outcome, ts)
        self.producers.touch(producer)
        self.sequencer.save_producer(producer.session, producer.identity, producer.next, producer.room,
                                   producer.seq, ts)

    def _settle_refused(self, member: Member, producer: Producer, n: int, mid: str, code: str, text: str) -> None:
        """Refused for good: the counter moves on, and a resend gets the same refusal."""
        self._settle(producer, n, (REFUSED, code, text), self.wall_clock())
        self._refuse(member.session, code, text, mid)

    def _duplicate(self, msg: p.Say, member: Member, producer: Producer, n: int) -> None:
        self.stats["duplicates"] += 1
        outcome = producer.outcome(n)
        if outcome is not None and outcome[0] == REFUSED:
            self._refuse(member.session, outcome[1], str(outcome[2]), msg.mid)
        elif outcome is not None:
            self._reply(member, p.Ack(mid=msg.mid, room=outcome[1], seq=int(outcome[2])))  # type: ignore[call-overload]
        else:  # settled longer ago than the producer remembers outcomes: delivered, place unknown
            self._reply(member, p.Ack(mid=msg.mid, room="", seq=0))

    def _jump(self, msg: p.Say, member: Member, producer: Producer) -> None:
        """A counter beyond the next: something in between never arrived. Asked once per gap; while the
        next one is held for rate, the sender already knows and later ones are dropped silently."""
        self.stats["throttled" if producer.rate_blocked else "resend_requests"] += 1
        if producer.rate_blocked or producer.asked_from == producer.next:
            return
        producer.asked_from = producer.next
        self._refuse(member.session, p.ERR_RESEND, f"message {producer.next} never arrived; resend from it",
                     msg.mid, resend_from=producer.next)

    def handle_join(self, msg: p.Join, member: Member) -> None:
        problem = p.room_problem(msg.room)
        if problem:
            self._refuse(member.session, p.ERR_BAD_ROOM, problem, rid=msg.rid)
            return
        wait = self._grant(member, self._replay_cost(msg.last_seq), DELIVERY)
        self._enter_room(member, msg.room, msg.last_seq, replay=wait <= 0, rid=msg.rid)
        if wait > 0:  # in the room, but nothing replayed: the client asks again for it after the wait
            self._busy(member.session, wait, msg.rid)

    def handle_part(self, msg: p.Part, member: Member) -> None:
        if self.presence.part(member, msg.room):
            self._cache.clear()
            self.activity.info("%s left %s", member.name, msg.room)
            self._announce(msg.room, member.name, "part")

    def handle_who(self, msg: p.WhoRequest, member: Member) -> None:
        rooms = [msg.room] if msg.room else sorted(member.rooms)
        names = sum(map(self.presence.size_of, rooms))
        if names > WHO_MAX_NAMES:
            self._refuse(member.session, p.ERR_BAD_REQUEST, f"who: {names} names are too many to list (at most "
                         f"{WHO_MAX_NAMES}); ask for one room", rid=msg.rid)
            return
        if not self._afford(member, 1 + names // LIST_ITEMS_PER_UNIT, BROWSE, msg.rid):
            return
        if msg.room:
            self._reply_cached(member, ("who", msg.room), msg.rid,
                               lambda: p.WhoReply(rooms={msg.room: self.presence.names_in(msg.room)}))
        else:
            self._reply(member, p.WhoReply(rooms={room: self.presence.names_in(room) for room in rooms}, rid=msg.rid))

    def handle_rooms(self, msg: p.RoomsRequest, member: Member) -> None:
        if self._afford(member, 1 + self.presence.room_count() // LIST_ITEMS_PER_UNIT, BROWSE, msg.rid):
            self._reply_cached(member, ("rooms",), msg.rid, lambda: p.RoomsReply(rooms=self.presence.room_counts()))

    def handle_history(self, msg: p.HistoryRequest, member: Member) -> None:
        if p.room_problem(msg.room):
            self._refuse(member.session, p.ERR_BAD_ROOM, p.room_problem(msg.room) or "", rid=msg.rid)
            return
        if msg.limit < 1:
            self._refuse(member.session, p.ERR_BAD_REQUEST, "history: limit must be >= 1", rid=msg.rid)
            return
        # A gap fill (it continues from where the asker is, or is bounded above and short, in a room it is
        # in) is delivery; anything else (a page of older talk, a look at the latest) is browsing.
        gap = (msg.after > 0 or 0 < msg.before <= msg.limit + 1) and msg.room in member.rooms
        if not self._afford(member, 1 + min(msg.limit, self.config.max_history_reply), DELIVERY if gap else BROWSE,
                            msg.rid):
            return
        self.stats["recoveries"] += 1
        sent = self._send_history(member, msg.room, msg.after, msg.before, msg.limit,
                                  backlog=msg.after == 0 and msg.before == 0, rid=msg.rid)
        if msg.before > 0:
            # PUB cannot report its drops; what clients fetch to fill their gaps is the measurable part.
            self.stats["recovered"] += sent

    def handle_page(self, msg: p.PageRequest, member: Member) -> None:
        """Older talk for scrolling back: the newest ``limit`` messages before ``before``, from the store."""
        problem = p.room_problem(msg.room)
        if problem:
            self._refuse(member.session, p.ERR_BAD_ROOM, problem, rid=msg.rid)
            return
        if msg.limit < 1:
            self._refuse(member.session, p.ERR_BAD_REQUEST, "page: limit must be >= 1", rid=msg.rid)
            return
        limit = min(msg.limit, self.config.max_history_reply)
        if not self._afford(member, 1 + limit, BROWSE, msg.rid):
            return
        try:
            rows = self.sequencer.range(msg.room, 0, msg.before, limit, newest=True)
        except StoreError as exc:
            (allowed, charged), self._granted = self._granted, (0, [])
            _settle(charged, 1)  # what it did: one error reply
            self._queued[member.session] = max(0, self._queued.get(member.session, 0) - max(0, allowed - 1))
            self.db_errors.warn("%s (a page read)", exc)
            self._refuse(member.session, p.ERR_UNAVAILABLE, "page: the history cannot be read now", rid=msg.rid)
            return
        start = len(rows) < limit
        if sum(len(body) for _, body in rows) > HISTORY_REPLY_BYTES:
            rows, start = _within_bytes(rows, HISTORY_REPLY_BYTES, keep_newest=True), False
        topic = p.session_topic(member.session)
        for _seq, body in rows:
            self.out.append(p.server_frames(topic, p.HistoryMessage.KIND, body, self._term))
        self._reply(member, p.PageEnd(room=msg.room, before=msg.before, count=len(rows),
                                      oldest=rows[0][0] if rows else 0, start=start, rid=msg.rid))
        (allowed, charged), self._granted = self._granted, (0, [])
        used = 1 + len(rows)
        _settle(charged, used)
        self._queued[member.session] = max(0, self._queued.get(member.session, 0) - max(0, allowed - used))

    def handle_search(self, msg: p.SearchRequest, member: Member) -> None:
        if not 1 <= msg.limit <= p.MAX_SEARCH_RESULTS:
            self._refuse(member.session, p.ERR_BAD_REQUEST, f"search: limit must be 1 to {p.MAX_SEARCH_RESULTS}",
                         rid=msg.rid)
            return
        try:
            terms = search.parse(msg.query)
        except search.QueryError as exc:
            self._refuse(member.session, p.ERR_BAD_REQUEST, str(exc), rid=msg.rid)
            return
        if msg.room and p.room_problem(msg.room):
            self._refuse(member.session, p.ERR_BAD_ROOM, p.room_problem(msg.room) or "", rid=msg.rid)
            return
        if msg.sender and p.name_problem(msg.sender):
            self._refuse(member.session, p.ERR_BAD_REQUEST, f"search: from: {p.name_problem(msg.sender)}", rid=msg.rid)
            return
        now = self.clock()
        left = self._search_time.refill(now)
        if left <= 0:  # the time searches may take is spent (it goes below 0 by what the last one overran)
            self._busy(member.session, -left / SEARCH_LOOP_SHARE, msg.rid)
            return
        if not self._afford(member, SEARCH_WORK, BROWSE, msg.rid):
            return
        self._granted = (0, [])  # one reply, charged in full: the cost is the index read
        try:
            found = self.sequencer.search(terms, msg.sender, msg.room, msg.limit + 1)
        except SearchOff:
            self._refuse(member.session, p.ERR_UNAVAILABLE, "search is off on this server", rid=msg.rid)
            return
        except StoreError as exc:
            self.db_errors.warn("%s (a search)", exc)
            self._refuse(member.session, p.ERR_UNAVAILABLE, "search: the index cannot be read now", rid=msg.rid)
            return
        finally:
            self._search_time.tokens -= self.clock() - now
        results, size = [], 0
        more = len(found) > msg.limit
        for room, seq, ts, sender, text in found[:msg.limit]:
            size += len(json.dumps(text, ensure_ascii=False).encode()) + 128  # as it is written on the wire
            if size > SEARCH_REPLY_BYTES and results:
                more = True
                break
            results.append({"room": room, "seq": seq, "ts": ts, "sender": sender, "text": text,
                            "marks": search.marks(terms, text)})
        self.stats["searches"] += 1
        self._reply(member, p.SearchReply(query=msg.query, results=results, more=more, rid=msg.rid))

    def handle_topic(self, msg: p.TopicRequest, member: Member) -> None:
        problem = p.room_problem(msg.room)
        if problem:
            self._refuse(member.session, p.ERR_BAD_ROOM, problem, rid=msg.rid)
            return
        if msg.room not in member.rooms:
            self._refuse(member.session, p.ERR_NOT_IN_ROOM, f"join {msg.room} to set its topic", rid=msg.rid)
            return
        if len(msg.text) > p.MAX_TOPIC_CHARS:
            self._refuse(member.session, p.ERR_TOO_LONG, f"a topic is at most {p.MAX_TOPIC_CHARS} characters",
                         rid=msg.rid)
            return
        if any(ch in msg.text for ch in "\r\n"):
            self._refuse(member.session, p.ERR_BAD_REQUEST, "a topic is one line", rid=msg.rid)
            return
        current = self.sequencer.topic(msg.room, cleared=True)
        owner = member.key or member.name
        if current is not None and current[4]:
            if self.config.topic_lock and current[4] != owner:
                # the owner is a name, or under CURVE a key: name it only when it is a name
                who = "the member who first set it" if member.key else current[4]
                self._refuse(member.session, p.ERR_FORBIDDEN, f"only {who} may change the topic of "
                             f"{msg.room} on this server", rid=msg.rid)
                return
            owner = current[4]  # the first who set it stays its owner
        ts = self.wall_clock()
        self.sequencer.set_topic(msg.room, msg.text, member.name, ts, owner)
        self.activity.info("%s set the topic of %s", member.name, msg.room)
        self._publish(p.room_topic(msg.room), p.Topic(room=msg.room, text=msg.text, by=member.name, ts=ts))

    def handle_stats(self, msg: p.StatsRequest, member: Member) -> None:
        if self._afford(member, 1, BROWSE, msg.rid):
            self._reply_cached(member, ("stats",), msg.rid, lambda: p.StatsReply(stats={
                **self.snapshot(), **({"pair": self.pair_status()} if self.pair_status is not None else {})}))

    def handle_ping(self, msg: p.Ping, member: Member) -> None:
        pass  # liveness was recorded in receive()

    def handle_bye(self, msg: p.Bye, member: Member) -> None:
        self.presence.remove(member.session)
        self.activity.info("%s left", member.name)
        self._announce_leave(member, "quit")
        self._reply(member, p.Goodbye(session=member.session, rid=msg.rid))


def _settle(charged: list[tuple[TokenBucket | WorkBudget, float]], used: float) -> None:
    """Give each bucket back what it was charged beyond ``used`` (0: the request was not carried out)."""
    for bucket, units in charged:
        bucket.refund(units - used)


def _sources(key: str | None, address: str, trusted: frozenset[str]) -> tuple[str, ...]:
    """Whom the per-source budgets charge: the peer's address (an IPv6 one by its /64: one host has
    millions) and, under CURVE, its key too (keys are free without an allowlist); nobody for a trusted
    address (a gateway speaking for many) or a peer whose address is not read (ipc)."""
    if address in trusted:
        return ()
    if key:
        return (_network(address), "k:" + key) if address else ("k:" + key,)
    return (_network(address),) if address else ()


@lru_cache(maxsize=4096)
def _network(address: str) -> str:
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False).network_address) + "/64"
    except ValueError:
        return address


def _rid(msg: p.Message) -> str:
    return getattr(msg, "rid", "")


class _Run:
    """Consecutive messages of one room in a tick: published as one ``msgs`` (or a ``msg`` when alone)."""

    __slots__ = ("bodies", "size", "topic")

    def __init__(self, topic: bytes) -> None:
        self.topic = topic
        self.bodies: list[bytes] = []
        self.size = 16  # the msgs wrapper

    def frames(self, term: bytes) -> list[bytes]:
        if len(self.bodies) == 1:
            return p.server_frames(self.topic, p.RoomMessage.KIND, self.bodies[0], term)
        return p.server_frames(self.topic, p.RoomMessages.KIND, p.room_messages_body(self.bodies), term)


def _within_bytes(rows: list[tuple[int, bytes]], budget: int, keep_newest: bool) -> list[tuple[int, bytes]]:
    """The longest run of ``rows`` (from the newest end, or from the oldest) whose bodies fit ``budget``;
    at least one row, so that a reply always makes progress."""
    ordered = reversed(rows) if keep_newest else iter(rows)
    kept, used = [], 0
    for row in ordered:
        used += len(row[1])
        if kept and used > budget:
            break
        kept.append(row)
    return kept[::-1] if keep_newest else kept
