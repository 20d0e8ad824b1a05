"""The client's I/O shell: a PUSH to the server's PULL, a SUB from its PUB, and one poll loop.

All rules live in ``zmqchat.client.session.ClientSession``; this class creates the two sockets, moves frames
between them and the session, and offers the Python API that the terminal client and bots share::

    with Client("bot", host="127.0.0.1") as chat:   # connects, raises ConnectError if it can't
        chat.say("hello")
        for event in chat.events(timeout=10):
            print(event)

With a hot-standby pair (``servers=["10.0.0.1:4444", "10.0.0.2:4444"]``) the SUB connects to every server's
PUB and the PUSH to the one the session points at (``Links``): when the session moves, the PUSH is closed
(what it held for the lost server is dropped) and a new one connects to the other server.

The sockets belong to the thread that created the Client; use it from that thread only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import zmq

from .. import events as ev
from .. import keys
from .. import protocol as p
from ..endpoints import DEFAULT_HOST, DEFAULT_PORT, endpoints
from ..errors import ConnectError, ZmqchatError
from .servers import Server, label, names, server_from, server_list
from .session import ClientSession

TICK = 0.05  # seconds: the longest the loop sleeps before running the session's timers
HANDSHAKE_GRACE = 1.0  # seconds of retries after a failed handshake before connect() gives up
CLOSE_LINGER_MS = 500  # bounded linger: enough to flush a goodbye, never a hang on exit
PUSH_HWM = 10_000
SUB_HWM = 1000
HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

ServerItem = str | tuple[str, int]  # "HOST:PORT" or (host, port)
KeyFile = str | Path


class SessionView:
    """What both client loops read straight from their ``ClientSession`` (``self.session``)."""

    session: ClientSession

    @property
    def name(self) -> str:
        return self.session.name

    @property
    def room(self) -> str:
        """The current room: where say() sends by default."""
        return self.session.current_room

    @property
    def connected(self) -> bool:
        return self.session.connected

    @property
    def unacknowledged(self) -> int:
        """Messages sent whose echo has not come back yet."""
        return len(self.session.pending)


class OnLinks:
    """``_push``, ``_sub`` and ``_monitor``: the sockets of ``self._links`` (None while there are none)."""

    _links: Links | None

    @property
    def _push(self) -> zmq.Socket | None:
        return None if self._links is None else self._links.push

    @property
    def _sub(self) -> zmq.Socket | None:
        return None if self._links is None else self._links.sub

    @property
    def _monitor(self) -> zmq.Socket | None:
        return None if self._links is None else self._links.monitor


class Client(SessionView, OnLinks):
    """A chat client for people and bots. Raises ConnectError (a ZmqchatError) when it cannot connect."""

    def __init__(self, name: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, in_endpoint: str | None = None,
                 out_endpoint: str | None = None, rooms: list[str] | tuple[str, ...] = ("#general",),
                 curve_secret: str | Path | None = None, server_key: KeyFile | Sequence[KeyFile] | None = None,
                 connect_timeout: float = 5.0, context: zmq.Context | None = None, connect: bool = True,
                 rcvhwm: int = SUB_HWM, servers: Sequence[ServerItem] | str | None = None) -> None:
        """``servers``: the servers of a hot-standby pair (``"HOST:PORT"`` or ``(host, port)``, each its PULL
        port), instead of ``host``/``port``/endpoints; ``server_key`` is then one key file for all, or one
        per server, in order."""
        problem = p.name_problem(name)
        if problem:
            raise ZmqchatError(f"invalid name {name!r}: {problem}")
        rooms = [p.normalise_room(r) for r in rooms] or ["#general"]
        for room in rooms:
            if p.room_problem(room):
                raise ZmqchatError(p.room_problem(room) or "")
        if servers:
            if in_endpoint or out_endpoint:
                raise ZmqchatError("give either servers or in/out endpoints, not both")
            found = server_list(servers)
        else:
            ins, outs = endpoints(host, port, in_endpoint, out_endpoint)
            found = [Server(ins if in_endpoint or out_endpoint else label(host, port), ins, outs)]
        # before the context: a bad key leaks nothing
        self._curve, self._servers = load_keys(curve_secret, server_key, found)
        self.session = ClientSession(name, rooms, servers=[s.label for s in self._servers],
                                     discover=not _per_server_keys(server_key))
        self.connect_timeout = connect_timeout
        self.rcvhwm = rcvhwm
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._queue: deque[ev.Event] = deque()
        self._links: Links | None = None
        self._poller = zmq.Poller()
        self._handshake_problem = ""
        self._welcome: ev.Connected | None = None
        if connect:
            self.connect()

    # -- where

    @property
    def servers(self) -> list[str]:
        """The servers this client knows, by label (``HOST:PORT``; one, or a pair's two, or more)."""
        return list(self.session.servers)

    @property
    def server(self) -> str:
        """The server our PUSH goes to, by label (the active, once connected)."""
        return self.session.server_label

    @property
    def in_endpoint(self) -> str:
        """The PULL endpoint of the server our PUSH goes to."""
        return self._current().in_endpoint

    @property
    def out_endpoint(self) -> str:
        """The PUB endpoint of the server our PUSH goes to (the SUB hears every server's)."""
        return self._current().out_endpoint

    def _current(self) -> Server:
        follow_servers(self._servers, self.session)
        return self._servers[min(self.session.server, len(self._servers) - 1)]

    # -- connection

    def start(self) -> None:
        """Create the sockets, subscribe, and send the first hello; returns at once."""
        if self._links is not None:
            return
        self._links = Links(self._context, self._servers, self.session.server, self.rcvhwm, self._curve)
        self._poller.register(self._links.monitor, zmq.POLLIN)
        self._poller.register(self._links.sub, zmq.POLLIN)
        self.session.start()
        self._flush()

    def connect(self, timeout: float | None = None) -> ev.Connected:
        """Start and wait for the server's welcome (at once if it has come: connecting twice is harmless).
        Raises ConnectError after ``timeout`` seconds."""
        if self._welcome is not None and self.session.connected:
            return self._welcome
        self.start()
        timeout = self.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._handshake_problem and timeout - remaining > HANDSHAKE_GRACE):
                problem = self._handshake_problem or self._no_answer(timeout)
                self.close(linger=0)
                raise ConnectError(problem)
            found = self._pump(min(remaining, TICK))
            for event in found:
                if isinstance(event, ev.Error) and event.fatal:
                    self.close(linger=0)
                    raise ConnectError(event.message)
            self._queue.extend(found)
            welcome = next((e for e in found if isinstance(e, ev.Connected)), None)
            if welcome is not None:
                self._welcome = welcome
                return welcome

    def close(self, linger: float = 1.0) -> None:
        """Say goodbye (waiting up to ``linger`` seconds for the server to confirm), close the sockets."""
        if self._push is None:
            return
        if self.session.state in ("connected", "closing") and linger > 0:
            self.session.bye()
            self._flush()
            deadline = time.monotonic() + linger
            while self.session.state != "closed" and time.monotonic() < deadline:
                self._queue.extend(self._pump(deadline - time.monotonic()))
        links, self._links = self._links, None
        if links is not None:
            links.close(linger)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Client:  # noqa: PYI034 (Client is not meant to be subclassed)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- actions (each sends at once)

    def say(self, text: str, room: str | None = None, action: bool = False) -> str:
        """Send ``text`` to ``room`` (default: the current room); returns the message id. Delivery is
        confirmed when our own message comes back (see ``drain``)."""
        try:
            size = len(text.encode())
        except UnicodeEncodeError as exc:
            raise ZmqchatError("message is not valid Unicode (lone surrogate)") from exc
        if size > self.session.max_text_bytes:
            raise ZmqchatError(f"message too long ({size} bytes, at most {self.session.max_text_bytes})")
        room = p.normalise_room(room) if room else None
        if room is not None and (room not in self.session.rooms or room in self.session.parting):
            raise ZmqchatError(f"you are not in {room}; join it first")
        # JSON escaping can make the wire form much larger than the text: check what will be sent.
        longest_mid = "0" * (len(self.session.session_id) + 17)  # "<session>.<counter>", counter at its widest
        probe = p.Say(session=self.session.session_id, room=room or self.room, text=text, mid=longest_mid,
                      action=action)
        wire = sum(map(len, p.encode_client(probe)))
        if wire > self.session.max_message_bytes:
            raise ZmqchatError(f"message too long ({wire} bytes on the wire, at most {self.session.max_message_bytes})")
        mid = self.session.say(text, room, action)
        self._flush()
        return mid

    def join(self, room: str) -> str:
        room = p.normalise_room(room)
        problem = p.room_problem(room)
        if problem:
            raise ZmqchatError(problem)
        self.session.join(room)
        self._flush()
        return room

    def part(self, room: str | None = None) -> str:
        room = self.session.part(p.normalise_room(room) if room else None)
        self._flush()
        return room

    def who(self, room: str = "") -> None:
        self.session.who(p.normalise_room(room) if room else "")
        self._flush()

    def rooms(self) -> None:
        self.session.list_rooms()
        self._flush()

    def stats(self) -> None:
        self.session.stats()
        self._flush()

    def history(self, count: int = 20, room: str | None = None) -> None:
        self.session.history(count, p.normalise_room(room) if room else None)
        self._flush()

    def page(self, room: str | None = None, before: int = 0, limit: int = 50) -> str:
        """Older talk of ``room`` (seq < ``before``, 0: from the newest); the answer is an ``ev.Page``."""
        rid = self.session.page(p.normalise_room(room) if room else None, before, limit)
        self._flush()
        return rid

    def search(self, query: str, sender: str = "", room: str = "", limit: int = 20) -> str:
        """Search the server's stored messages; the answer is an ``ev.SearchResults``."""
        rid = self.session.search(query, sender, p.normalise_room(room) if room else "", limit)
        self._flush()
        return rid

    def set_topic(self, text: str, room: str | None = None) -> None:
        """Set (``text`` "": clear) a room's topic; the server announces it as ``ev.Topic``."""
        self.session.set_topic(text, p.normalise_room(room) if room else None)
        self._flush()

    def topic(self, room: str | None = None) -> ev.Topic | None:
        """The topic of ``room`` (default: the current one) as last announced, or None."""
        found = self.session.topics.get(room or self.room)
        return found if found is not None and found.text else None

    def drain(self, timeout: float) -> bool:
        """Wait until the server has echoed every message we sent; False if ``timeout`` ran out.
        Events that arrive meanwhile stay queued for ``poll``/``events``."""
        deadline = time.monotonic() + timeout
        while self.session.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._queue.extend(self._pump(min(remaining, TICK)))
        return True

    # -- events

    def poll(self, timeout: float = 0.0, fds: tuple[int, ...] = ()) -> tuple[list[ev.Event], list[int]]:
        """Wait up to ``timeout`` seconds for events or for one of ``fds`` to become readable; returns
        (events, readable fds). Runs the session's timers meanwhile."""
        if self._queue:
            out = list(self._queue)
            self._queue.clear()
            return out, []
        deadline = time.monotonic() + timeout
        for fd in fds:
            self._poller.register(fd, zmq.POLLIN)
        try:
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                ready_fds: list[int] = []
                found = self._pump(min(remaining, TICK), fds, ready_fds)
                if found or ready_fds or remaining <= 0:
                    return found, ready_fds
        finally:
            for fd in fds:
                self._poller.unregister(fd)

    def events(self, timeout: float | None = None) -> Iterator[ev.Event]:
        """Yield events as they come; stop after ``timeout`` seconds (None: until closed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._push is not None:
            remaining = 3600.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return
            found, _ = self.poll(remaining)
            yield from found

    # -- the loop body

    def _pump(self, wait: float, fds: tuple[int, ...] = (), ready_fds: list[int] | None = None) -> list[ev.Event]:
        """One poll: receive everything waiting, run timers, send what the session queued."""
        if self._sub is None:
            raise ZmqchatError("client is closed")
        ready = dict(self._poller.poll(max(0, int(wait * 1000))))
        if self._sub in ready:
            sub = self._sub
            while True:
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.session.receive(frames)
        if self._monitor is not None and self._monitor in ready:
            self._on_monitor()
        if ready_fds is not None:
            ready_fds.extend(fd for fd in fds if fd in ready)
        self.session.tick()
        self._flush()
        found = self.session.events
        self.session.events = []
        return found

    def _no_answer(self, timeout: float, links: Links | None = None) -> str:
        """Why connect() gave up, naming the servers tried: the endpoint of one, the labels of a pair's."""
        links = links or self._links
        if len(self._servers) == 1:
            where = self._servers[0].in_endpoint
        else:
            tried = links.tried if links is not None else {self.session.server}
            where = names([s.label for n, s in enumerate(self._servers) if n in tried])
        return no_answer(where, timeout, self._curve is not None, self.session.standbys)

    def _flush(self) -> None:
        session = self.session
        apply_subscriptions(session, self._sub)
        if self._links is not None:
            self._links.follow(session, self._servers)
        if session.outgoing and self._push is not None:
            for frames in session.outgoing:
                try:
                    self._push.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    pass  # no server right now: hellos repeat and unacknowledged messages are resent
            session.outgoing.clear()

    def _on_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        assert self._monitor is not None
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handshake_problem = handshake_problem(event["event"], self._curve is not None,
                                                        self._handshake_problem)


Curve = tuple[bytes, bytes, bytes]  # (our secret, our public, the server's public), z85


def _setup(sock: zmq.Socket, curve: Curve | None, server_key: bytes | None) -> None:
    sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    if curve is not None:
        sock.curve_secretkey, sock.curve_publickey = curve[0], curve[1]
        sock.curve_serverkey = server_key or curve[2]


def open_push(ctx: zmq.Context, server: Server, curve: Curve | None) -> zmq.Socket:
    """A client's PUSH, connected to ``server``'s PULL (and to nothing else: a PUSH deals out among peers)."""
    push = ctx.socket(zmq.PUSH)
    # IMMEDIATE: never queue for a server that is not there; the session resends what matters.
    push.setsockopt(zmq.IMMEDIATE, 1)
    push.setsockopt(zmq.SNDHWM, PUSH_HWM)
    _setup(push, curve, server.key)
    push.connect(server.in_endpoint)
    return push


def connect_sub(sub: zmq.Socket, server: Server, curve: Curve | None) -> None:
    """Connect ``sub`` to ``server``'s PUB too, with that server's CURVE key (taken at connect time)."""
    if curve is not None:
        sub.curve_serverkey = server.key or curve[2]
    sub.connect(server.out_endpoint)


class Links:
    """A client's sockets: one SUB connected to every server's PUB, one PUSH to the server the session
    points at, and the SUB's handshake monitor. The same for the poll loop, the asyncio client and the
    gateway's hub (``ctx`` decides which kind of socket)."""

    def __init__(self, ctx: zmq.Context, servers: list[Server], index: int, rcvhwm: int,
                 curve: Curve | None) -> None:
        self.ctx, self.curve = ctx, curve
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, rcvhwm)  # bounded: what overflows is recovered from history
        _setup(self.sub, curve, None)
        # A failed handshake is silent; the monitor turns it into a clear error for connect().
        self.monitor = self.sub.get_monitor_socket(HANDSHAKE_FAILURES)
        self.push: zmq.Socket | None = None
        self.at = -1  # the index of the server the PUSH goes to
        self.heard: list[Server] = []  # the servers the SUB is connected to, in order
        self.tried: set[int] = set()  # every server the PUSH went to
        try:
            for server in servers:
                self.hear(server)
            self.point(servers, index)
        except BaseException:
            self.close(0)  # e.g. a malformed endpoint: nothing stays half open
            raise

    def hear(self, server: Server) -> None:
        connect_sub(self.sub, server, self.curve)
        self.heard.append(server)

    def point(self, servers: list[Server], index: int) -> None:
        """Move the PUSH to ``servers[index]``: linger 0, since what it holds was meant for the other one."""
        if self.push is not None:
            self.push.close(linger=0)
            self.push = None
        self.push = open_push(self.ctx, servers[index], self.curve)
        self.at = index
        self.tried.add(index)

    def follow(self, session: ClientSession, servers: list[Server]) -> None:
        """Hear every server ``session`` knows (a standby may have named a new one) and push to its choice."""
        follow_servers(servers, session)
        for server in servers[len(self.heard):]:
            self.hear(server)
        if session.server != self.at and session.server < len(servers):
            self.point(servers, session.server)

    def close(self, linger: float) -> None:
        if self.monitor is not None:
            self.sub.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        linger_ms = int(min(linger, CLOSE_LINGER_MS / 1000) * 1000)
        for sock in (self.push, self.sub):
            if sock is not None:
                sock.close(linger=linger_ms)
        self.push = None


def follow_servers(servers: list[Server], session: ClientSession) -> None:
    """Add to ``servers`` those the session learnt of from a standby naming the active (the session learns
    none when every server has a key of its own: one key serves them all)."""
    for name in session.servers[len(servers):]:
        servers.append(server_from(name))


def open_sockets(ctx: zmq.Context, in_endpoint: str, out_endpoint: str, rcvhwm: int,
                 curve: Curve | None) -> tuple[zmq.Socket, zmq.Socket, zmq.Socket]:
    """A client's PUSH (to the server's PULL) and SUB (from its PUB), connected, and the SUB's handshake
    monitor: the ``Links`` of one server, as three sockets."""
    links = Links(ctx, [Server(in_endpoint, in_endpoint, out_endpoint)], 0, rcvhwm, curve)
    assert links.push is not None and links.monitor is not None
    return links.push, links.sub, links.monitor


def apply_subscriptions(session: ClientSession, sub: zmq.Socket | None) -> None:
    """Subscribe and unsubscribe ``sub`` as the session asked since the last time."""
    if session.subscriptions and sub is not None:
        for subscribe, topic in session.subscriptions:
            sub.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, topic)
        session.subscriptions.clear()


def no_answer(where: str, timeout: float, curve: bool, standbys: set[str] | frozenset[str] = frozenset()) -> str:
    """Why connect() gave up when nothing answered ``where`` (a server, or "A or B"); ``standbys``: those
    that answered as a pair's standby."""
    told = f" ({names(sorted(standbys))} answered as the standby)" if standbys else ""
    return (f"no answer from a zmqchat server at {where} within {timeout:g}s{told}"
            + (" (check --server-key and that your key is authorized)" if curve else ""))


def handshake_problem(event: int, curve: bool, known: str) -> str:
    """What a failed handshake (a monitor event) tells the user; ``known``: what an earlier one told."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "the server refused our key (it is not in the server's authorized keys)"
    if known:
        return known
    if not curve:
        return "the handshake with the server failed: it requires CURVE (use --curve-secret and --server-key)"
    return "the CURVE handshake with the server failed: wrong --server-key, or the server is not using CURVE"


def _load_curve(secret: str | Path | None, server_key: str | Path | None) -> tuple[bytes, bytes, bytes] | None:
    """(our secret, our public, server public) from certificate files, or None without CURVE."""
    if secret is None and server_key is None:
        return None
    if secret is None or server_key is None:
        raise ZmqchatError("CURVE needs both --curve-secret (your key) and --server-key (the server's public key)")
    public, secret_key = keys.load_secret(secret)
    return secret_key, public, keys.load_public(server_key)


def _per_server_keys(server_key: KeyFile | Sequence[KeyFile] | None) -> bool:
    return server_key is not None and not isinstance(server_key, (str, Path)) and len(server_key) > 1


def load_keys(secret: str | Path | None, server_key: KeyFile | Sequence[KeyFile] | None,
              servers: list[Server]) -> tuple[Curve | None, list[Server]]:
    """The CURVE keys from certificate files: (our secret, our public, the first server's public) or None,
    and ``servers`` each with its own key when ``server_key`` lists one per server."""
    if not _per_server_keys(server_key):
        one = server_key if server_key is None or isinstance(server_key, (str, Path)) else server_key[0]
        return _load_curve(secret, one), servers
    assert server_key is not None and not isinstance(server_key, (str, Path))
    if len(server_key) != len(servers):
        raise ZmqchatError(f"{len(server_key)} server keys for {len(servers)} servers: give one key for all, "
                           "or one per server, in the same order")
    curve = _load_curve(secret, server_key[0])
    assert curve is not None
    keyed = [Server(s.label, s.in_endpoint, s.out_endpoint, keys.load_public(path))
             for s, path in zip(servers, server_key)]
    return curve, keyed
