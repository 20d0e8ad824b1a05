"""One PUSH and one SUB for many client sessions: the gateway's side of the server.

Each browser's zmqchat session is a ``ClientSession`` like any other client's: every rule (handshake,
order, gap fills, resends) is the session's. What differs is the I/O. A socket pair per session would not
scale (libzmq allows 1,023 sockets per context, and every broadcast would be decoded once per browser),
so all the sessions of a gateway share the hub's PUSH and SUB:

- the hub subscribes the union of its sessions' topics, counting references: the SUB subscribes a topic
  when the first session asks for it and unsubscribes it when the last one lets go;
- each publication is decoded once and the message handed to every session subscribed to its topic.
  Topics end in NUL (``protocol.TOPIC_END``), so a session's subscription matches a publication's topic
  exactly when the two are equal: routing is one dict lookup;
- one timer runs every session's ``tick`` (hellos, heartbeats, resends);
- what the sessions queue (frames, subscriptions, events) is moved after every round, and events go to
  the session's ``Member`` (the gateway's per-name object), which renders them for its browsers.

The sockets are ``client.sync.Links``, so they are set up as every other client's. With a hot-standby pair
the SUB hears both servers and the one PUSH goes to the server the sessions agree on: when one session moves
(its server was lost, a standby named the active), the hub moves the PUSH and every other session with it
(``ClientSession.switch_to``), so no session's frames go to a server it is not talking to.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Protocol

import zmq
import zmq.asyncio

from .. import events as ev
from .. import protocol as p
from ..client.aio import monitor_problem
from ..client.servers import Server
from ..client.session import LOST_AFTER_MISSES, ClientSession
from ..client.sync import Links, OnLinks, follow_servers

log = logging.getLogger("zmqchat.web")

HUB_TICK = 0.1  # seconds between runs of every session's timers (the sessions' own resolution is coarser)
HUB_RCVHWM = 200_000  # publications the shared SUB may hold: it carries every browser's traffic
RECV_BATCH = 2000  # publications read per round before the timers run and the event loop gets a turn
FLUSH_ROUNDS = 8  # a member that answers events with more requests is flushed again, this many times at most
HEARD_WITHIN = 1.0 * LOST_AFTER_MISSES  # seconds: the server counts as reachable if heard from this recently


class Member(Protocol):
    """What the hub needs of whoever owns a session: the session, and a place for its events."""

    session: ClientSession

    def deliver(self, events: list[ev.Event]) -> None: ...


def deliver(session: ClientSession, msg: p.Message, term: int = 0) -> None:
    """``session.receive(frames)`` for a message already decoded once for every session on its topic."""
    session.receive_message(msg, term)


class Hub(OnLinks):
    """Many ``ClientSession``s over one PUSH and one SUB. Use it from the event loop that started it."""

    def __init__(self, in_endpoint: str, out_endpoint: str, *, curve: tuple[bytes, bytes, bytes] | None = None,
                 context: zmq.asyncio.Context | None = None, rcvhwm: int = HUB_RCVHWM, tick: float = HUB_TICK,
                 servers: list[Server] | tuple[Server, ...] | None = None) -> None:
        """``servers``: a hot-standby pair's (each with its CURVE key when they differ), instead of the one
        server at ``in_endpoint``/``out_endpoint``."""
        self.servers: list[Server] = list(servers or [Server(in_endpoint, in_endpoint, out_endpoint)])
        self.server = 0  # the index of the server the PUSH goes to
        self.labels = [server.label for server in self.servers]  # every session's ``servers``: one list
        self.discover = all(s.key is None for s in self.servers)  # a new server's key would be unknown
        self.curve = curve
        self._own_context = context is None
        self.context = context or zmq.asyncio.Context()
        self.rcvhwm = rcvhwm
        self.tick_interval = tick
        self.members: dict[Member, None] = {}  # in the order added
        self._routes: dict[bytes, dict[Member, int]] = {}  # topic -> member -> its subscriptions to it
        self._topics: dict[Member, Counter[bytes]] = {}  # member -> topic -> count (to let go on removal)
        self._links: Links | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.handshake_problem = ""
        self.last_heard = float("-inf")  # loop time of the newest publication from the server
        self.bad_frames = 0  # publications that did not decode (counted once, not per session)
        self.received = 0  # publications read
        self.delivered = 0  # (publication, session) hand-overs

    @property
    def in_endpoint(self) -> str:
        """The PULL of the server the PUSH goes to."""
        return self.servers[self.server].in_endpoint

    @property
    def out_endpoint(self) -> str:
        return self.servers[self.server].out_endpoint

    # -- life

    async def start(self) -> None:
        """Open the sockets, subscribe to the broadcast topic (heartbeats tell whether the server is
        reachable) and start the pump."""
        if self._links is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._links = Links(self.context, self.servers, self.server, self.rcvhwm, self.curve)
        self._links.sub.setsockopt(zmq.SUBSCRIBE, p.ALL_TOPIC)  # the hub's own: never counted, never dropped
        self._task = self._loop.create_task(self._pump(), name="zmqchat-web hub")

    async def close(self, linger: float = 1.0) -> None:
        """Say goodbye for every session still open (waiting up to ``linger`` seconds for the server to
        confirm), then stop the pump and close the sockets."""
        if self._push is None:
            return
        loop = asyncio.get_running_loop()
        open_ones = [m for m in self.members if m.session.state in ("connected", "closing", "lost")]
        for member in open_ones:
            if member.session.state != "closing":
                member.session.bye()
            self.flush(member)
        deadline = loop.time() + linger
        while loop.time() < deadline and any(m.session.state not in ("closed", "lost") for m in open_ones):
            await asyncio.sleep(0.02)  # the pump runs meanwhile: this only waits for its goodbyes
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        links, self._links = self._links, None
        if links is not None:
            links.close(0.2)
        if self._own_context:
            await asyncio.to_thread(self.context.term)

    @property
    def reachable(self) -> bool:
        """Whether the server was heard from lately (its heartbeats reach us on the broadcast topic)."""
        return self._loop is not None and self._loop.time() - self.last_heard <= HEARD_WITHIN

    # -- members

    def add(self, member: Member) -> None:
        """Start ``member``'s session on the shared sockets (subscriptions first, then its hello), on the
        servers the hub uses and the one its PUSH goes to."""
        self.members[member] = None
        self._topics[member] = Counter()
        session = member.session
        session.servers = self.labels  # one list for all: a server one session learns of, all know
        session.discover = self.discover
        session.switch_to(self.server)
        session.start()
        self.flush(member)

    def remove(self, member: Member) -> None:
        """Forget ``member``: its subscriptions are let go (the SUB keeps those others still hold)."""
        if self.members.pop(member, None) is None and member not in self._topics:
            return
        for topic, count in self._topics.pop(member, Counter()).items():
            for _ in range(count):
                self._unsubscribe(member, topic)

    def flush(self, member: Member) -> None:
        """Move what ``member``'s session queued: subscriptions to the SUB, frames to the PUSH, events to
        the member. Call after every action on the session."""
        session = member.session
        for _ in range(FLUSH_ROUNDS):
            if member in self._topics:
                self._follow(member)
            if session.subscriptions:
                if member in self._topics:
                    for subscribe, topic in session.subscriptions:
                        if subscribe:
                            self._subscribe(member, topic)
                        else:
                            self._unsubscribe(member, topic)
                session.subscriptions.clear()
            if session.outgoing:
                if self._push is not None and member in self._topics:
                    for frames in session.outgoing:
                        problem = self._push.send_multipart(frames, zmq.NOBLOCK).exception()
                        if problem is not None and not isinstance(problem, zmq.Again):
                            raise problem
                        # Again: no server right now; hellos repeat and unacknowledged messages are resent
                session.outgoing.clear()
            if not session.events:
                return
            found, session.events = session.events, []
            member.deliver(found)

    def _follow(self, member: Member) -> None:
        """Go where ``member``'s session went: hear the servers it learnt of, move the PUSH to its server,
        and every other session with it (they share the PUSH)."""
        session = member.session
        learnt = len(session.servers) > len(self.servers)  # a standby named an active we did not know
        moved = session.server != self.server and session.server < len(session.servers)
        if not (learnt or moved):
            return
        follow_servers(self.servers, session)
        if self._links is not None:
            self._links.follow(session, self.servers)  # hears the new ones, and pushes where the session goes
        if not moved:
            return
        log.info("zmqchat-web: talking to %s now", self.servers[session.server].label)
        self.server = session.server
        for other in list(self.members):
            if other is not member and other.session.server != self.server:
                other.session.switch_to(self.server)
                self.flush(other)

    def _subscribe(self, member: Member, topic: bytes) -> None:
        holders = self._routes.setdefault(topic, {})
        if not holders and self._sub is not None and topic != p.ALL_TOPIC:
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        holders[member] = holders.get(member, 0) + 1
        self._topics[member][topic] += 1

    def _unsubscribe(self, member: Member, topic: bytes) -> None:
        holders = self._routes.get(topic)
        if not holders or member not in holders:
            return
        holders[member] -= 1
        if holders[member] <= 0:
            del holders[member]
        counts = self._topics.get(member)
        if counts is not None and counts[topic] > 0:
            counts[topic] -= 1
            if not counts[topic]:
                del counts[topic]
        if not holders:
            del self._routes[topic]
            if self._sub is not None and topic != p.ALL_TOPIC:
                self._sub.setsockopt(zmq.UNSUBSCRIBE, topic)

    def subscribed(self) -> dict[bytes, int]:
        """Topic -> how many sessions hold it (for tests and /healthz)."""
        return {topic: len(holders) for topic, holders in self._routes.items()}

    # -- the pump: the only reader of the sockets

    async def _pump(self) -> None:
        assert self._sub is not None and self._monitor is not None and self._loop is not None
        poller = zmq.asyncio.Poller()
        poller.register(self._sub, zmq.POLLIN)  # POLLIN only: the default includes POLLOUT
        poller.register(self._monitor, zmq.POLLIN)
        loop = self._loop
        next_tick = loop.time()
        while True:
            wait = max(0.0, next_tick - loop.time())
            try:
                ready = dict(await poller.poll(int(wait * 1000) + 1))
                touched: dict[Member, None] = {}
                if self._sub in ready:
                    await self._read(touched)
                if self._monitor in ready:
                    await self._on_monitor()
                if loop.time() >= next_tick:
                    next_tick = loop.time() + self.tick_interval
                    for member in list(self.members):
                        member.session.tick()
                        touched[member] = None
                for member in touched:
                    if member in self.members:
                        self.flush(member)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("zmqchat-web: error in the hub's round (continuing)")

    async def _read(self, touched: dict[Member, None]) -> None:
        sub = self._sub
        assert sub is not None
        for _ in range(RECV_BATCH):
            try:
                frames = await sub.recv_multipart(zmq.NOBLOCK)  # resolves at once: the round stays whole
            except zmq.Again:
                return
            self.received += 1
            self._route(frames, touched)

    def _route(self, frames: list[bytes], touched: dict[Member, None]) -> None:
        """Decode one publication once and hand it to each session subscribed to its topic."""
        holders = self._routes.get(frames[0]) if frames else None
        if not holders and frames and frames[0] != p.ALL_TOPIC:
            self._heard()
            return  # a topic let go a moment ago
        try:
            _topic, msg, term = p.decode_server_term(frames)
        except p.ProtocolError:
            self.bad_frames += 1
            return
        if not (type(msg) is p.ServerHeartbeat and msg.role == "standby"):
            self._heard()  # a standby's beat says nothing of the server we talk to (the hub's own topic, too)
        for member in list(holders or ()):
            deliver(member.session, msg, term)
            touched[member] = None
        self.delivered += len(holders or ())

    def _heard(self) -> None:
        self.last_heard = self._loop.time() if self._loop is not None else 0.0

    async def _on_monitor(self) -> None:
        assert self._monitor is not None
        self.handshake_problem = await monitor_problem(self._monitor, self.curve is not None, self.handshake_problem)

