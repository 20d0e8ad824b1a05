"""The server's rules, sans-IO: frames in, frames to publish out.

Everything that decides what the server says lives here: presence, sequencing, dedupe, rate limits,
history replies. ``zmqchat.server`` only moves frames between sockets and this class. Time comes from
the injected ``clock`` so the rules are tested without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from . import protocol as p
from .history import History, HistoryError
from .presence import Member, Presence
from .ratelimit import RateLimiter, TokenBucket

log = logging.getLogger("zmqchat.server")

DEFAULT_MOTD = "Welcome to zmqchat. Type /help for commands, exit to leave."
HEARTBEAT_ROOMS = 1000  # rooms whose newest seq rides on each heartbeat (more: gaps found at the next message)
UNKNOWN_SESSION_REPLIES_PER_SEC = 2.0  # a stale client hears "please say hello" this often, at most
NEW_SESSIONS_PER_SEC = 1000.0  # hellos that open a session, server-wide (with silent ones expiring in
NEW_SESSIONS_BURST = 5000.0  # 3 s, at most a few thousand made-up sessions can exist at once)
COMMIT_GIVE_UP = 30.0  # seconds of failing history commits before the server stops with an error
HISTORY_REPLY_BYTES = 1 << 20  # one history reply carries at most this much; the client asks for the rest
LATCH_TIMEOUT = 10.0  # seconds a rate-refused message may hold back its sender's later ones


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
    max_history_reply: int = 1000  # messages in one history reply
    stats_interval: float = 0.0  # seconds between stats log lines (0: never)
    presence_limit: int = 500  # rooms with more members do not announce joins and leaves


# Tokens each request costs from the sender's request bucket (messages cost 1 from their own bucket;
# pings, bye and part cost nothing: a refused part would leave the sender in a room it left).
REQUEST_COSTS: dict[type[p.Message], Callable[[p.Message], float]] = {
    p.Join: lambda m: 1.0, p.WhoRequest: lambda m: 1.0, p.RoomsRequest: lambda m: 1.0,
    p.StatsRequest: lambda m: 1.0, p.HistoryRequest: lambda m: 1.0 + max(0, m.limit) / 200,
}


class LogLimiter:
    """At most ``burst`` log lines per ``period`` seconds for noisy events, then one summary."""

    def __init__(self, clock: Callable[[], float], burst: int = 5, period: float = 10.0) -> None:
        self.clock = clock
        self.burst = burst
        self.period = period
        self._window = -period
        self._count = 0
        self._suppressed = 0

    def warn(self, fmt: str, *args: object) -> None:
        now = self.clock()
        if now - self._window >= self.period:
            if self._suppressed:
                log.warning("%d more similar warnings suppressed", self._suppressed)
            self._window, self._count, self._suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            log.warning(fmt, *args)
        else:
            self._suppressed += 1


class ServerCore:
    """Consumes client frames (``receive``) and timers (``tick``); ``flush`` returns what to publish."""

    def __init__(self, config: ServerConfig, history: History, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.history = history
        self.clock = clock  # timers: heartbeats, expiry, rate limits (monotonic: a clock step breaks none)
        # timestamps people read; an injected test clock serves as both
        self.wall_clock = wall_clock or (time.time if clock is time.monotonic else clock)
        self.presence = Presence(config.heartbeat_interval * config.heartbeat_misses)
        self.limiter = RateLimiter(config.rate, config.burst)
        self.request_limiter = RateLimiter(config.rate, config.burst)
        self._new_sessions = TokenBucket(NEW_SESSIONS_PER_SEC, NEW_SESSIONS_BURST, clock())
        self.out: list[list[bytes]] = []
        self.bad_input = LogLimiter(clock)
        self.db_errors = LogLimiter(clock, burst=1)
        self._failing_since: float | None = None
        self.stats = dict.fromkeys(
            ("received", "published", "messages", "rejected", "refused", "throttled", "duplicates",
             "recoveries", "recovered", "timeouts", "auth_failures", "errors"), 0)
        now = clock()
        self._next_heartbeat = now
        self._next_expiry = now
        self._next_stats = now + config.stats_interval if config.stats_interval > 0 else float("inf")
        self._unknown_session_bucket = RateLimiter(UNKNOWN_SESSION_REPLIES_PER_SEC, 2.0)
        self._handlers: dict[type[p.Message], Callable] = {
            p.Hello: self.handle_hello, p.Say: self.handle_say, p.Join: self.handle_join,
            p.Part: self.handle_part, p.WhoRequest: self.handle_who, p.RoomsRequest: self.handle_rooms,
            p.HistoryRequest: self.handle_history, p.StatsRequest: self.handle_stats,
            p.Ping: self.handle_ping, p.Bye: self.handle_bye,
        }

    # -- entry points

    def receive(self, frames: list[bytes], key: str | None = None, bound_name: str | None = None) -> None:
        """Handle one message from the PULL socket. ``key`` is the CURVE public key that sent it and
        ``bound_name`` the name the allowlist binds to that key. Never raises for bad input."""
        self.stats["received"] += 1
        try:
            msg = p.decode_client(frames)
        except p.ProtocolError as exc:
            self.stats["rejected"] += 1
            self.bad_input.warn("dropped bad message: %s", exc)
            return
        size = sum(map(len, frames))
        if isinstance(msg, p.Hello):
            if size > self.config.max_message_bytes:
                self.stats["rejected"] += 1
                return
            self.handle_hello(msg, key, bound_name)
            return
        member = self.presence.get(msg.session)
        if member is None:
            self._unknown_session(msg)
            return
        if member.key != key:  # checked before anything is said to that session
            self.stats["rejected"] += 1
            self.bad_input.warn("dropped %s for %s's session from another key", msg.KIND.decode(), member.name)
            return
        self.presence.touch(member.session, self.clock())
        if size > self.config.max_message_bytes:
            self.stats["rejected"] += 1
            self._refuse(msg.session, p.ERR_TOO_LONG, f"message too long ({size} bytes on the wire, at most "
                         f"{self.config.max_message_bytes})", getattr(msg, "mid", ""))
            return
        cost = REQUEST_COSTS.get(type(msg))
        if cost is not None and not self._charge(member, cost(msg)):
            return
        self._handlers[type(msg)](msg, member)

    def _charge(self, member: Member, cost: float, reply: bool = True) -> bool:
        """Requests have a token bucket of their own per sender (same rate and burst as messages): a flood
        of joins or history requests is throttled like a flood of messages, and a client busy sending
        never starves its own gap recovery."""
        wait = self.request_limiter.check(member.session, self.clock(), cost)
        if wait <= 0:
            return True
        self.stats["throttled"] += 1
        if reply:
            self._refuse(member.session, p.ERR_RATE_LIMITED, f"slow down: wait {wait:.1f}s", retry_after=wait)
        return False

    def tick(self) -> None:
        """Timers: expire silent clients, heartbeat, stats line. Call at least every heartbeat interval."""
        now = self.clock()
        if now >= self._next_expiry:
            # A scan of every session: a few times per heartbeat interval is plenty, per batch is not.
            self._next_expiry = now + self.config.heartbeat_interval / 4
            for member in self.presence.expire(now):
                self.stats["timeouts"] += 1
                self.limiter.forget(member.session)
                self.request_limiter.forget(member.session)
                log.info("%s left (timed out)", member.name)
                self._announce_leave(member, "timeout")
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_interval
            # Newest seq of each occupied room: lets a client notice it lost the tail of a burst.
            rooms = islice(self.presence.room_counts(), HEARTBEAT_ROOMS)
            # committed numbers only: a heartbeat may go out while a batch waits for the disk
            seqs = {room: self.history.committed_seq(room) for room in rooms}
            self._publish(p.ALL_TOPIC, p.ServerHeartbeat(ts=self.wall_clock(), seqs=seqs))
        if now >= self._next_stats:
            self._next_stats = now + self.config.stats_interval
            log.info("stats %s", " ".join(f"{k}={v}" for k, v in self.snapshot().items()))

    def flush(self) -> list[list[bytes]]:
        """Commit history, then hand over everything to publish, in order. While the database refuses
        writes only heartbeats are published (what is not on disk must not be seen); after
        COMMIT_GIVE_UP seconds of that, HistoryError ends the server."""
        try:
            self.history.commit()
        except HistoryError as exc:
            now = self.clock()
            if self._failing_since is None:
                self._failing_since = now
            self.db_errors.warn("%s (holding %d messages, retrying)", exc, len(self.out))
            if now - self._failing_since > COMMIT_GIVE_UP:
                raise
            # Heartbeats still go out, so clients do not take a slow disk for a lost server.
            beats = [f for f in self.out if f[0] == p.ALL_TOPIC and f[2] == p.ServerHeartbeat.KIND]
            self.out = [f for f in self.out if not (f[0] == p.ALL_TOPIC and f[2] == p.ServerHeartbeat.KIND)]
            self.stats["published"] += len(beats)
            return beats
        self._failing_since = None
        out, self.out = self.out, []
        self.stats["published"] += len(out)
        return out

    def shutdown(self, message: str = "server shutting down") -> list[list[bytes]]:
        self._publish(p.ALL_TOPIC, p.Shutdown(message=message))
        return self.flush()

    def revoke(self, allowed_keys: set[str]) -> None:
        """End every session whose CURVE key is not in ``allowed_keys`` (after the allowlist shrank)."""
        for member in self.presence.members():
            if member.key is not None and member.key not in allowed_keys:
                self.presence.remove(member.session)
                self.limiter.forget(member.session)
                self.request_limiter.forget(member.session)
                log.info("%s removed: key no longer authorised", member.name)
                self._refuse(member.session, p.ERR_NOT_AUTHORISED, "your key is no longer authorised on this server")
                self._announce_leave(member, "revoked")

    def snapshot(self) -> dict[str, int]:
        """Counters for /stats and the periodic stats line."""
        return {"clients": len(self.presence), "rooms": len(self.presence.room_counts()),
                **self.stats, "history": self.history.size()}

    # -- helpers

    def _publish(self, topic: bytes, msg: p.Message) -> None:
        self.out.append(p.encode_server(topic, msg))

    def _reply(self, member_or_session: Member | str, msg: p.Message) -> None:
        session = member_or_session if isinstance(member_or_session, str) else member_or_session.session
        self._publish(p.session_topic(session), msg)

    def _refuse(self, session: str, code: str, text: str, mid: str = "", retry_after: float = 0.0) -> None:
        self.stats["refused"] += 1
        self._reply(session, p.ErrorReply(code=code, message=text, mid=mid, retry_after=retry_after))

    def _unknown_session(self, msg: p.Message) -> None:
        # After a server restart every client is unknown: tell each (rate-limited) to say hello again.
        if self._unknown_session_bucket.check(msg.session, self.clock()) == 0.0:
            self._refuse(msg.session, p.ERR_UNKNOWN_SESSION, "unknown session; send hello")

    def _announce(self, room: str, name: str, event: str) -> None:
        # Every join reaches every member: n joins cost n^2 deliveries. Big rooms stay quiet (/who works).
        # Called after the change: a leaver no longer counts, so add it back to judge the room's size.
        size = self.presence.size_of(room) + (event != "join")
        if size <= self.config.presence_limit:
            self._publish(p.room_topic(room), p.PresenceEvent(room=room, name=name, event=event,
                                                              ts=self.wall_clock()))

    def _announce_leave(self, member: Member, event: str) -> None:
        for room in sorted(member.rooms):
            self._announce(room, member.name, event)

    def _enter_room(self, member: Member, room: str, last_seq: int, replay: bool = True) -> None:
        """Join ``member`` to ``room`` (announcing it if new) and replay what it has not seen."""
        if self.presence.join(member, room):
            log.info("%s joined %s", member.name, room)
            self._announce(room, member.name, "join")
        if replay and last_seq < 0:
            self._send_history(member, room, 0, 0, self.config.backlog, backlog=True)
        elif replay:  # a catch-up, also from 0 (a room joined while it was empty): everything, oldest first
            self._send_history(member, room, last_seq, 0, self.config.max_history_reply, backlog=False)

    def _send_history(self, member: Member, room: str, after: int, before: int, limit: int,
                      backlog: bool) -> int:
        """A backlog is the newest ``limit`` messages; anything else is served oldest first and ``upto``
        stops where the reply stops, so the client asks for the rest."""
        topic = p.session_topic(member.session)
        limit = min(limit, self.config.max_history_reply)
        rows = self.history.range(room, after, before, limit, newest=backlog)
        cut = len(rows) == limit
        if sum(len(body) for _, body in rows) > HISTORY_REPLY_BYTES:
            rows, cut = _within_bytes(rows, HISTORY_REPLY_BYTES, keep_newest=backlog), True
        for _seq, body in rows:
            self.out.append([topic, p.VERSION, p.HistoryMessage.KIND, body])
        last = self.history.last_seq(room)
        upto = min(before - 1, last) if before > 0 else last
        if not backlog and rows and cut:
            upto = rows[-1][0]
        self._reply(member, p.HistoryEnd(room=room, after=after, upto=upto, count=len(rows), newest=last,
                                         before=before))
        return len(rows)

    # -- handlers, one per client message kind

    def handle_hello(self, msg: p.Hello, key: str | None, bound_name: str | None) -> None:
        now = self.clock()
        problem = p.name_problem(msg.name)
        if problem:
            self._refuse(msg.session, p.ERR_BAD_NAME, problem)
            return
        if bound_name is not None and msg.name != bound_name:
            self._refuse(msg.session, p.ERR_NOT_AUTHORISED, f"your key is bound to the name '{bound_name}'")
            self.bad_input.warn("refused %r: key is bound to %r", msg.name, bound_name)
            return
        owner = self.presence.owner_of(msg.name)
        member = self.presence.get(msg.session)
        if owner is not None and owner != msg.session:
            self._refuse(msg.session, p.ERR_NAME_TAKEN, f"name '{msg.name}' is already taken")
            return
        if member is not None and (member.key != key or member.name != msg.name):
            self._refuse(msg.session, p.ERR_NOT_AUTHORISED, "session belongs to someone else")
            return
        rooms = [r for r in msg.rooms[: p.MAX_LIST_ITEMS] if isinstance(r, str) and p.room_problem(r) is None]
        if member is None and self._new_sessions.take(now) > 0:
            # A flood of made-up sessions (without CURVE anyone can make them) cannot outrun this; real
            # clients retry their hello every quarter second and get in.
            self.stats["throttled"] += 1
            self._refuse(msg.session, p.ERR_RATE_LIMITED, "server busy: too many new sessions, retrying",
                         retry_after=1.0 / NEW_SESSIONS_PER_SEC)
            return
        # A repeated hello replays history for every room: it is charged like the history requests it
        # amounts to. Over budget, the rooms are entered without replay; the client asks again (charged).
        replay = member is None or self._charge(member, 1.0 + len(rooms) / 4, reply=False)
        if member is None:
            member = self.presence.add(msg.session, msg.name, now)
            member.key = key
            log.info("%s connected (session %s)", msg.name, msg.session)
        self.presence.touch(member.session, now)
        self._reply(member, p.Welcome(session=msg.session, name=msg.name, motd=self.config.motd,
                                      heartbeat_interval=self.config.heartbeat_interval,
                                      max_text_bytes=self.config.max_text_bytes, server_time=self.wall_clock(),
                                      epoch=self.history.epoch, max_message_bytes=self.config.max_message_bytes))
        same_epoch = msg.epoch == self.history.epoch
        member.blocked_mid = ""
        for room in rooms:
            last = msg.last_seq.get(room) if same_epoch else None
            last = last if isinstance(last, int) and not isinstance(last, bool) else -1
            self._enter_room(member, room, last, replay)

    def handle_say(self, msg: p.Say, member: Member) -> None:
        if member.blocked_mid == msg.mid:
            member.blocked_mid = ""  # it came back: whatever happens to it now, it no longer holds the rest
        key = f"{member.name}\x1f{msg.mid}"
        seen = self.history.seen(key)
        if seen is not None:
            self.stats["duplicates"] += 1
            self._reply(member, p.Ack(mid=msg.mid, room=seen[0], seq=seen[1]))
            return
        if msg.room not in member.rooms:
            self._refuse(member.session, p.ERR_NOT_IN_ROOM, f"you are not in {msg.room}; /join it first", msg.mid)
            return
        text = msg.text
        # A character is at most 4 UTF-8 bytes: short texts need no encoding to be measured.
        if len(text) * 4 > self.config.max_text_bytes and len(text.encode()) > self.config.max_text_bytes:
            self._refuse(member.session, p.ERR_TOO_LONG, f"message too long ({len(text.encode())} bytes, at most "
                         f"{self.config.max_text_bytes})", msg.mid)
            return
        if not text or text.isspace():
            self._refuse(member.session, p.ERR_EMPTY, "empty message", msg.mid)
            return
        now = self.clock()
        # Once a message is refused for rate, later ones are refused until it comes back, so a burst
        # that was already in flight cannot overtake it: one sender's messages stay in order.
        if member.blocked_mid and now - member.blocked_at > LATCH_TIMEOUT:
            member.blocked_mid = ""  # the refused message never came back (client gone or gave up)
        if member.blocked_mid:
            self.stats["throttled"] += 1
            self._refuse(member.session, p.ERR_RATE_LIMITED, "slow down", msg.mid, 1.0 / max(self.config.rate, 1.0))
            return
        wait = self.limiter.check(member.session, now)
        if wait > 0:
            self.stats["throttled"] += 1
            member.blocked_mid, member.blocked_at = msg.mid, now
            self._refuse(member.session, p.ERR_RATE_LIMITED, f"slow down: wait {wait:.1f}s", msg.mid, wait)
            return
        name, text, mid, action, room = member.name, msg.text, msg.mid, msg.action, msg.room

        ts = self.wall_clock()

        def body(seq: int) -> bytes:
            return p.room_message_body(room, seq, ts, name, text, mid, action)

        _seq, encoded = self.history.append(room, ts, key, body)
        self.stats["messages"] += 1
        log.debug("%s <%s> %s", room, name, text)
        self.out.append([p.room_topic(room), p.VERSION, p.RoomMessage.KIND, encoded])

    def handle_join(self, msg: p.Join, member: Member) -> None:
        problem = p.room_problem(msg.room)
        if problem:
            self._refuse(member.session, p.ERR_BAD_ROOM, problem)
            return
        self._enter_room(member, msg.room, msg.last_seq)

    def handle_part(self, msg: p.Part, member: Member) -> None:
        if self.presence.part(member, msg.room):
            log.info("%s left %s", member.name, msg.room)
            self._announce(msg.room, member.name, "part")

    def handle_who(self, msg: p.WhoRequest, member: Member) -> None:
        rooms = [msg.room] if msg.room else sorted(member.rooms)
        self._reply(member, p.WhoReply(rooms={room: self.presence.names_in(room) for room in rooms}))

    def handle_rooms(self, msg: p.RoomsRequest, member: Member) -> None:
        self._reply(member, p.RoomsReply(rooms=self.presence.room_counts()))

    def handle_history(self, msg: p.HistoryRequest, member: Member) -> None:
        if p.room_problem(msg.room):
            self._refuse(member.session, p.ERR_BAD_ROOM, p.room_problem(msg.room) or "")
            return
        if msg.limit < 1 or msg.after < 0 or msg.before < 0:
            self._refuse(member.session, p.ERR_BAD_REQUEST, "history: limit must be >= 1, after and before >= 0")
            return
        self.stats["recoveries"] += 1
        sent = self._send_history(member, msg.room, msg.after, msg.before, msg.limit,
                                  backlog=msg.after == 0 and msg.before == 0)
        if msg.before > 0:
            # PUB cannot report its drops; what clients fetch to fill their gaps is the measurable part.
            self.stats["recovered"] += sent

    def handle_stats(self, msg: p.StatsRequest, member: Member) -> None:
        self._reply(member, p.StatsReply(stats=self.snapshot()))

    def handle_ping(self, msg: p.Ping, member: Member) -> None:
        pass  # liveness was recorded in receive()

    def handle_bye(self, msg: p.Bye, member: Member) -> None:
        self.presence.remove(member.session)
        self.limiter.forget(member.session)
        self.request_limiter.forget(member.session)
        log.info("%s left", member.name)
        self._announce_leave(member, "quit")
        self._reply(member, p.Goodbye(session=member.session))


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
