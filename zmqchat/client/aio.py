"""The client's asyncio shell: the sync ``Client``'s sockets and API on ``zmq.asyncio``, for asyncio front ends.

Every rule lives in ``ClientSession`` and every check of the caller's arguments in the sync ``Client``; this
module only creates the two sockets (PUSH to the server's PULL, SUB from its PUB, set up exactly as
``zmqchat.client.sync`` sets them up), moves frames between them and the session, runs the session's timers
and offers the same API, awaited::

    async with AsyncClient("bot", host="127.0.0.1") as chat:   # connects, raises ConnectError if it can't
        await chat.say("hello")
        async for event in chat.events(timeout=10):
            print(event)

A background task (the pump) owns the sockets' reading: it receives, runs the session's timers every TICK
(heartbeats, hello retries, resends) and queues the events, whether or not anyone is iterating; ``events``,
``poll`` and ``drain`` only wait for what the pump queued. The sockets belong to the event loop that started
the client; use it from that loop only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from .. import events as ev
from ..endpoints import DEFAULT_HOST, DEFAULT_PORT
from ..errors import ConnectError, ZmqchatError
from .session import ClientSession
from .sync import (
    HANDSHAKE_GRACE,
    SUB_HWM,
    TICK,
    Client,
    KeyFile,
    Links,
    OnLinks,
    ServerItem,
    SessionView,
    apply_subscriptions,
    handshake_problem,
)

RECV_BATCH = 1000  # messages read per round: then the timers run and the loop's other tasks get a turn


async def monitor_problem(monitor: zmq.asyncio.Socket, curve: bool, problem: str) -> str:
    """What the handshake events queued on ``monitor`` say went wrong (``problem`` if none says more)."""
    while True:
        try:
            event = await recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return problem
        problem = handshake_problem(event["event"], curve, problem)


class AsyncClient(SessionView, OnLinks):
    """A chat client for asyncio programs. Raises ConnectError (a ZmqchatError) when it cannot connect;
    the actions raise ZmqchatError for bad arguments, exactly as the sync ``Client``'s do."""

    def __init__(self, name: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, in_endpoint: str | None = None,
                 out_endpoint: str | None = None, rooms: list[str] | tuple[str, ...] = ("#general",),
                 curve_secret: str | Path | None = None, server_key: KeyFile | Sequence[KeyFile] | None = None,
                 connect_timeout: float = 5.0, context: zmq.Context | None = None,
                 rcvhwm: int = SUB_HWM, servers: Sequence[ServerItem] | str | None = None) -> None:
        """The sync ``Client``'s arguments (``servers``: a hot-standby pair's, see there)."""
        self._own_context = context is None
        if context is not None and not isinstance(context, zmq.asyncio.Context):
            context = zmq.asyncio.Context(context)  # a shadow: one context may serve sync and async clients
        self._context = context or zmq.asyncio.Context()
        try:
            # A sync Client that is never started holds the argument checks both shells share (name, rooms,
            # message sizes) and the servers and keys. Without sockets its actions only queue in the session,
            # which the pump moves.
            self._checks = Client(name, host=host, port=port, in_endpoint=in_endpoint, out_endpoint=out_endpoint,
                                  rooms=rooms, connect_timeout=connect_timeout, context=self._context,
                                  connect=False, rcvhwm=rcvhwm, servers=servers, curve_secret=curve_secret,
                                  server_key=server_key)
        except BaseException:
            if self._own_context:
                self._context.term()  # a bad name or key leaks nothing
            raise
        self.session: ClientSession = self._checks.session
        self._curve = self._checks._curve
        self.connect_timeout = connect_timeout
        self.rcvhwm = rcvhwm
        self._queue: deque[ev.Event] = deque()  # unbounded, as the sync Client's: dropping would lose events
        self._links: Links | None = None
        self._handshake_problem = ""
        self._welcome: ev.Connected | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump_task: asyncio.Task | None = None
        self._news: asyncio.Future | None = None  # resolved (and replaced) whenever the pump has news
        self._outcome: asyncio.Future | None = None  # a connect() waiting: the welcome or the fatal refusal
        self._failure: BaseException | None = None  # what stopped the pump, if it stopped on its own

    # -- where (the sync Client's, on the session we share)

    @property
    def servers(self) -> list[str]:
        """The servers this client knows, by label (``HOST:PORT``)."""
        return self._checks.servers

    @property
    def server(self) -> str:
        """The server our PUSH goes to, by label (the active, once connected)."""
        return self._checks.server

    @property
    def in_endpoint(self) -> str:
        """The PULL endpoint of the server our PUSH goes to."""
        return self._checks.in_endpoint

    @property
    def out_endpoint(self) -> str:
        """The PUB endpoint of the server our PUSH goes to (the SUB hears every server's)."""
        return self._checks.out_endpoint

    # -- connection

    async def start(self) -> None:
        """Create the sockets, subscribe, send the first hello and start the pump; returns at once."""
        if self._links is not None:
            return
        if self._context.closed:
            raise ZmqchatError("client is closed")
        self._loop = loop = asyncio.get_running_loop()
        self._news = loop.create_future()
        self._open_sockets()  # closes what it opened if it fails (e.g. a malformed endpoint)
        self.session.start()
        self._flush()
        self._pump_task = loop.create_task(self._pump(), name=f"zmqchat pump ({self.name})")

    def _open_sockets(self) -> None:
        """The sockets and the handshake monitor, set up as the sync Client sets them up."""
        self._links = Links(self._context, self._checks._servers, self.session.server, self.rcvhwm, self._curve)

    async def connect(self, timeout: float | None = None) -> ev.Connected:
        """Start and wait for the server's welcome (at once if it has come: connecting twice is harmless).
        Raises ConnectError after ``timeout`` seconds; a client that failed (or was cancelled) is closed."""
        if self._welcome is not None and self.session.connected:
            return self._welcome
        try:
            await self.start()
            self._welcome = await self._welcomed(self.connect_timeout if timeout is None else timeout)
        except BaseException:
            await self.close(linger=0)
            raise
        return self._welcome

    async def _welcomed(self, timeout: float) -> ev.Connected:
        """The welcome the pump brings next, or ConnectError: refused, a failed handshake, or ``timeout``."""
        loop = self._owner()
        deadline = loop.time() + timeout
        if self._outcome is None or self._outcome.done():
            self._outcome = loop.create_future()
        outcome = self._outcome
        while not outcome.done():
            if self._push is None:
                raise ConnectError("the client was closed while connecting")
            if self._failure is not None:
                raise ConnectError(f"the client stopped: {self._failure}") from self._failure
            remaining = deadline - loop.time()
            if remaining <= 0 or (self._handshake_problem and timeout - remaining > HANDSHAKE_GRACE):
                raise ConnectError(self._handshake_problem or self._checks._no_answer(timeout, self._links))
            await asyncio.wait({outcome}, timeout=min(remaining, TICK))  # TICK: the grace is checked too
        answer = outcome.result()
        if isinstance(answer, ev.Error):
            raise ConnectError(answer.message)
        return answer

    async def close(self, linger: float = 1.0) -> None:
        """Say goodbye (waiting up to ``linger`` seconds for the server to confirm), stop the pump, close
        the sockets. Closing twice is harmless."""
        if self._push is None:
            if self._own_context and not self._context.closed:
                self._context.term()  # never started (or start failed): no socket open, nothing to wait for
            return
        loop = self._owner()
        try:
            if self.session.state in ("connected", "closing") and linger > 0 and self._failure is None:
                self.session.bye()
                self._flush()
                deadline = loop.time() + linger
                while self.session.state != "closed" and self._failure is None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    await self._news_or(remaining)
        finally:
            await self._stop_pump()
            self._close_sockets(linger)
        if self._own_context:
            # term() waits out the sockets' linger: in a thread, so the loop never blocks on it
            await asyncio.to_thread(self._context.term)

    async def aclose(self) -> None:
        """``close()`` with its default linger (for ``contextlib.aclosing``)."""
        await self.close()

    async def __aenter__(self) -> AsyncClient:  # noqa: PYI034 (AsyncClient is not meant to be subclassed)
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- actions (each sends at once; the checks are the sync Client's, on the session we share)

    async def say(self, text: str, room: str | None = None, action: bool = False) -> str:
        """Send ``text`` to ``room`` (default: the current room); returns the message id. Delivery is
        confirmed when our own message comes back (see ``drain``)."""
        self._owner()
        mid = self._checks.say(text, room, action)
        self._flush()
        return mid

    async def join(self, room: str) -> str:
        self._owner()
        room = self._checks.join(room)
        self._flush()
        return room

    async def part(self, room: str | None = None) -> str:
        self._owner()
        room = self._checks.part(room)
        self._flush()
        return room

    async def who(self, room: str = "") -> None:
        self._owner()
        self._checks.who(room)
        self._flush()

    async def rooms(self) -> None:
        self._owner()
        self._checks.rooms()
        self._flush()

    async def stats(self) -> None:
        self._owner()
        self._checks.stats()
        self._flush()

    async def history(self, count: int = 20, room: str | None = None) -> None:
        self._owner()
        self._checks.history(count, room)
        self._flush()

    async def page(self, room: str | None = None, before: int = 0, limit: int = 50) -> str:
        """Older talk of ``room`` (seq < ``before``, 0: from the newest); the answer is an ``ev.Page``."""
        self._owner()
        rid = self._checks.page(room, before, limit)
        self._flush()
        return rid

    async def search(self, query: str, sender: str = "", room: str = "", limit: int = 20) -> str:
        """Search the server's stored messages; the answer is an ``ev.SearchResults``."""
        self._owner()
        rid = self._checks.search(query, sender, room, limit)
        self._flush()
        return rid

    async def set_topic(self, text: str, room: str | None = None) -> None:
        """Set (``text`` "": clear) a room's topic; the server announces it as ``ev.Topic``."""
        self._owner()
        self._checks.set_topic(text, room)
        self._flush()

    def topic(self, room: str | None = None) -> ev.Topic | None:
        """The topic of ``room`` (default: the current one) as last announced, or None (state: not awaited)."""
        return self._checks.topic(room)

    async def drain(self, timeout: float) -> bool:
        """Wait until the server has echoed every message we sent; False if ``timeout`` ran out.
        Events that arrive meanwhile stay queued for ``poll``/``events``."""
        loop = self._owner()
        deadline = loop.time() + timeout
        while self.session.pending:
            if self._push is None:
                raise ZmqchatError("client is closed")
            self._raise_failure()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self._news_or(remaining)
        return True

    # -- events

    async def poll(self, timeout: float = 0.0) -> list[ev.Event]:
        """Wait up to ``timeout`` seconds for events; returns those queued (maybe none). Unlike the sync
        ``poll`` there is no ``fds``: under asyncio, wait for other input with the loop itself."""
        loop = self._owner()
        deadline = loop.time() + timeout
        while not self._queue:
            if self._push is None:
                raise ZmqchatError("client is closed")
            self._raise_failure()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await self._news_or(remaining)
        out = list(self._queue)
        self._queue.clear()
        return out

    def events(self, timeout: float | None = None) -> AsyncIterator[ev.Event]:
        """``async for`` the events as they come; stop after ``timeout`` seconds (None: until closed, when
        what is still queued is yielded first)."""
        return _Events(self, timeout)

    async def _next_event(self, deadline: float | None) -> ev.Event | None:
        """The next queued event, waiting until ``deadline`` (loop time); None at the deadline or once closed."""
        loop = self._owner()
        while not self._queue:
            if self._push is None:
                return None
            self._raise_failure()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            await self._news_or(remaining)
        return self._queue.popleft()

    # -- the pump: the only reader of the sockets

    async def _pump(self) -> None:
        """Receive, run the timers, send what the session queued; at least every TICK, until cancelled."""
        assert self._sub is not None and self._monitor is not None
        poller = zmq.asyncio.Poller()
        poller.register(self._sub, zmq.POLLIN)  # POLLIN only: the default includes POLLOUT
        poller.register(self._monitor, zmq.POLLIN)
        try:
            while True:
                ready = dict(await poller.poll(int(TICK * 1000)))
                await self._round(ready)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (kept for the caller: every wait re-raises it)
            self._failure = exc
            self._notify()

    async def _round(self, ready: dict) -> None:
        sub, news = self._sub, False
        assert sub is not None
        if sub in ready:
            # A non-blocking recv resolves at once, so awaiting it never yields: the round stays whole.
            for _ in range(RECV_BATCH):
                try:
                    frames = await sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.session.receive(frames)
                news = True
        if self._monitor is not None and self._monitor in ready:
            await self._on_monitor()
            news = True
        self.session.tick()
        self._flush()
        found = self.session.events
        self.session.events = []
        if found:
            self._queue.extend(found)
            self._answer_connect(found)
        if news or found:
            self._notify()

    def _answer_connect(self, found: list[ev.Event]) -> None:
        """Tell a waiting connect() what this round brought: a fatal refusal wins over a welcome, as in sync."""
        outcome = self._outcome
        if outcome is None or outcome.done():
            return
        answer = next((e for e in found if isinstance(e, ev.Error) and e.fatal), None) or next(
            (e for e in found if isinstance(e, ev.Connected)), None)
        if answer is not None:
            outcome.set_result(answer)

    @property
    def checks(self) -> Client:
        """The argument checks, synchronously: a never-started sync ``Client`` on this client's session, whose
        actions (say, join, who, ...) check their arguments, raise ZmqchatError, and queue into the session
        without sending. Follow them with ``send_queued()``. For synchronous front-end code (commands)."""
        return self._checks

    def send_queued(self) -> None:
        """Send what the session has queued (after ``checks``' actions); at once, never blocking."""
        self._flush()

    def _flush(self) -> None:
        session = self.session
        apply_subscriptions(session, self._sub)
        if self._links is not None:
            self._links.follow(session, self._checks._servers)
        if session.outgoing and self._push is not None:
            for frames in session.outgoing:
                # With NOBLOCK (and no send ever awaited) the future is done at once.
                problem = self._push.send_multipart(frames, zmq.NOBLOCK).exception()
                if problem is not None and not isinstance(problem, zmq.Again):
                    raise problem
                # Again: no server right now: hellos repeat and unacknowledged messages are resent
            session.outgoing.clear()

    async def _on_monitor(self) -> None:
        assert self._monitor is not None
        self._handshake_problem = await monitor_problem(self._monitor, self._curve is not None,
                                                        self._handshake_problem)

    # -- plumbing

    def _owner(self) -> asyncio.AbstractEventLoop:
        """The loop that owns the sockets; ZmqchatError when called from another one."""
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            raise ZmqchatError("this AsyncClient's sockets belong to another event loop")
        return loop

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise ZmqchatError(f"the client stopped: {self._failure}") from self._failure

    def _notify(self) -> None:
        """Wake everything waiting for news (events, acknowledgements, the goodbye, a handshake problem)."""
        if self._news is not None and self._loop is not None:
            if not self._news.done():
                self._news.set_result(None)
            self._news = self._loop.create_future()

    async def _news_or(self, timeout: float | None) -> None:
        """Wait for the pump's next news, at most ``timeout`` seconds (None: no limit)."""
        assert self._news is not None
        await asyncio.wait({self._news}, timeout=timeout)

    async def _stop_pump(self) -> None:
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # not ``await task``: that would raise the task's CancelledError here

    def _close_sockets(self, linger: float) -> None:
        links, self._links = self._links, None
        if links is not None:
            links.close(linger)
        self._notify()  # iterators and waiters see that we are closed


class _Events:
    """The async iterator behind ``AsyncClient.events`` (a class, not an async generator: an abandoned
    ``async for`` leaves no suspended generator to finalise)."""

    def __init__(self, client: AsyncClient, timeout: float | None) -> None:
        self._client = client
        self._deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> ev.Event:
        event = await self._client._next_event(self._deadline)
        if event is None:
            raise StopAsyncIteration
        return event
