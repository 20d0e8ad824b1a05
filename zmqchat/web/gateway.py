"""The gateway: an aiohttp web server on one side, the zmqchat server (through one ``Hub``) on the other.

Routes: ``GET /`` and ``/static/NAME`` (the page: files shipped in the package, looked up by name in a table
made at start-up, so no request reaches a file path), ``GET /healthz``, ``GET /api/me``, ``POST /api/login``,
``POST /api/logout`` and ``GET /ws`` (the WebSocket: ``wire`` in, the ``--json`` event schema out).

Who is who: a login (``users.Logins``) names a person; a person (``Person``) is one zmqchat session, shared
by every tab of that login's name. With ``--auth open`` a login is a claim on a free name, made by starting
its session (the server says whether the name is free) and ended with it; with ``--auth users`` it needs
the password and lasts until logout, expiry or the user's removal from the users file.

Every WebSocket is checked (Origin), limited (message size, messages per second, bytes queued for it) and
fed through ``wire.parse``: bad input is answered with an ``error`` event or a close, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .. import events as ev
from .. import protocol as p
from ..client.servers import Server
from ..errors import ZmqchatError
from ..server.ratelimit import RateLimiter, TokenBucket
from . import users as u
from . import wire
from .hub import Hub
from .person import Person, gateway_event

log = logging.getLogger("zmqchat.web")

COOKIE = "zmqchat_login"
STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml",
         ".png": "image/png", ".json": "application/json"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}

WS_MAX_BYTES = 64 * 1024  # one WebSocket message from a page, at most (beyond: closed with 1009)
WS_RATE = 20.0  # messages per second a page may send, after a burst of WS_BURST
WS_BURST = 60.0
WS_STRIKES = 200  # messages dropped in a row for the rate before the connection is closed (1008)
WS_BAD = 50  # bad messages (not JSON, unknown kind, ...) one connection may send before it is closed (1008)
WS_QUEUE_BYTES = 4 * 1024 * 1024  # text queued for a page that does not read, before it is closed (4001)
WS_HEARTBEAT = 20.0  # seconds between WebSocket pings (a dead tab is noticed within about twice that)
RESUME_WAIT = 15.0  # seconds a new connection has to send its ``resume``
CLOSE_WAIT = 3.0  # seconds a close handshake may take before the connection is dropped
HOUSEKEEPING = 0.5  # seconds between checks of idle sessions, late answers and the users file
LINGER = 30.0  # seconds a name's session outlives its last tab (a reload or a short outage resumes it)
MAX_LOGIN_BYTES = 64 * 1024  # a login request's body (its resume may name 256 rooms)
CLAIM_RATE = 1.0  # names one address may claim per second under --auth open (after CLAIM_BURST)
CLAIM_BURST = 20.0

# close codes (1000-1015 are the protocol's own; 4000-4999 are ours)
CLOSE_GOING_AWAY = 1001  # the gateway is stopping: reconnect and resume
CLOSE_POLICY = 1008  # flooding or garbage: reconnecting does not help until the page behaves
CLOSE_TOO_SLOW = 4001  # the page did not read what it was sent: reconnect and resume from its seqs
CLOSE_NO_RESUME = 4002  # no ``resume`` in time
CLOSE_LOGGED_OUT = 4401  # not logged in, logged out, or the user was removed: log in again
CLOSE_REFUSED = 4403  # the server ended the session (name taken meanwhile, key revoked)


@dataclass
class Config:
    """Everything the gateway is told at start (the command line's flags)."""

    in_endpoint: str
    out_endpoint: str
    curve: tuple[bytes, bytes, bytes] | None = None
    servers: tuple[Server, ...] = ()  # a hot-standby pair's, instead of the one at in/out_endpoint
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    auth: str = "open"  # or "users"
    users_file: Path | None = None
    tls: ssl.SSLContext | None = None
    trusted_proxies: frozenset[str] = frozenset()
    allowed_origins: frozenset[str] = frozenset()
    rooms: tuple[str, ...] = ("#general",)
    connect_timeout: float = 5.0
    linger: float = LINGER
    claim_rate: float = CLAIM_RATE
    ws_rate: float = WS_RATE
    ws_burst: float = WS_BURST
    ws_max_bytes: int = WS_MAX_BYTES
    ws_queue_bytes: int = WS_QUEUE_BYTES


@dataclass(eq=False)
class Tab:
    """One WebSocket connection: a browser tab showing one person's session."""

    ws: web.WebSocketResponse
    token: str
    name: str
    max_bytes: int
    bucket: TokenBucket
    room: str = ""
    awaiting_sync: bool = False
    sync_by: float = 0.0
    fills: int = 0
    expect: set[str] = field(default_factory=set)
    queue: deque[str] = field(default_factory=deque)
    queued: int = 0
    closing: tuple[int, str] | None = None
    strikes: int = 0
    bad: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, text: str) -> None:
        """Queue ``text``; a tab that lets more than ``max_bytes`` pile up is closed (CLOSE_TOO_SLOW)."""
        if self.closing is not None:
            return
        self.queue.append(text)
        self.queued += len(text)
        if self.queued > self.max_bytes:
            self.close(CLOSE_TOO_SLOW, "too slow: reconnect to resume from your last message")
        self.wake.set()

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason[:120])
            if code == CLOSE_TOO_SLOW:
                self.queue.clear()
                self.queued = 0
            self.wake.set()

    async def writer(self) -> None:
        """Send what is queued, in order; then the close, if one was asked for. A connection that breaks
        meanwhile just ends the writer (the reader sees it too)."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue:
                    text = self.queue.popleft()
                    self.queued -= len(text)
                    await self.ws.send_str(text)
                if self.closing is not None:
                    code, reason = self.closing
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), CLOSE_WAIT)
                    return
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            self.closing = self.closing or (CLOSE_GOING_AWAY, "")
            self.queue.clear()


class Gateway:
    """The web application and everything it holds: the hub, the people, the logins and the tabs."""

    def __init__(self, config: Config, clock=time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.hub = Hub(config.in_endpoint, config.out_endpoint, curve=config.curve, servers=config.servers or None)
        self.people: dict[str, Person] = {}
        self.logins = u.Logins(clock)
        self.guard = u.LoginGuard()
        self.claims = RateLimiter(config.claim_rate, CLAIM_BURST, max_keys=50_000)
        self.tabs: dict[str, set[Tab]] = {}  # login token -> its open tabs
        self.users: dict[str, str] = {}
        self._users_stamp: tuple[int, int] | None = None
        self._housekeeper: asyncio.Task | None = None
        self._static = self._load_static()

    # -- the application

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=MAX_LOGIN_BYTES)
        app.add_routes([web.get("/", self.index), web.get("/static/{name}", self.static),
                        web.get("/healthz", self.healthz), web.get("/api/me", self.me),
                        web.post("/api/login", self.login), web.post("/api/logout", self.logout),
                        web.get("/ws", self.websocket)])
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        if self.config.auth == "users":
            await self._reload_users(force=True)
        await self.hub.start()
        self._housekeeper = asyncio.get_running_loop().create_task(self._housekeeping(), name="zmqchat-web chores")

    async def _shutdown(self, app: web.Application) -> None:
        for tabs in list(self.tabs.values()):
            for tab in list(tabs):
                tab.close(CLOSE_GOING_AWAY, "the gateway is restarting: reconnect to resume")

    async def _cleanup(self, app: web.Application) -> None:
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            await asyncio.wait({self._housekeeper})
        await self.hub.close(linger=1.0)  # goodbyes for every session: their names are free at once

    @web.middleware
    async def _headers(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404 and friends get the same headers
            exc.headers.update(SECURITY_HEADERS)
            raise
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    def _load_static(self) -> dict[str, tuple[bytes, str]]:
        """The page's files, read once: name -> (content, type). Requests look names up here only."""
        files = {}
        for path in sorted(STATIC.iterdir()) if STATIC.is_dir() else []:
            kind = TYPES.get(path.suffix)
            if path.is_file() and kind is not None:
                files[path.name] = (path.read_bytes(), kind)
        return files

    async def index(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.Response:
        found = self._static.get(name)
        if found is None:
            raise web.HTTPNotFound(text="not found")
        body, kind = found
        return web.Response(body=body, content_type=kind, charset="utf-8" if kind.startswith("text") else None)

    async def healthz(self, request: web.Request) -> web.Response:
        ok = self.hub.reachable
        return web.json_response({"ok": ok, "server": self.hub.in_endpoint,
                                  "problem": "" if ok else (self.hub.handshake_problem or "no heartbeat from the server"),
                                  "people": len(self.people), "tabs": sum(map(len, self.tabs.values()))},
                                 status=200 if ok else 503)

    # -- who is asking

    def address(self, request: web.Request) -> str:
        """The client's address: the peer's, or with the peer a trusted proxy, the last X-Forwarded-For hop."""
        peer = request.remote or ""
        if peer in self.config.trusted_proxies:
            hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
            if hops:
                return hops[-1]
        return peer

    def secure(self, request: web.Request) -> bool:
        """Whether the browser reached us over TLS (ours, or a trusted proxy's that says so)."""
        if request.secure:
            return True
        return (request.remote or "") in self.config.trusted_proxies and \
            request.headers.get("X-Forwarded-Proto", "").lower() == "https"

    def origin_ok(self, request: web.Request) -> bool:
        """A browser's request must come from our own page (or an --allowed-origin). No Origin at all is
        not a browser, and so carries no visitor's cookie to abuse."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        host = request.host
        if (request.remote or "") in self.config.trusted_proxies:
            host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        own = f"{'https' if self.secure(request) else 'http'}://{host}"
        return origin == own or origin in self.config.allowed_origins

    def login_name(self, request: web.Request) -> str | None:
        return self.logins.lookup(request.cookies.get(COOKIE))

    async def me(self, request: web.Request) -> web.Response:
        return web.json_response({"auth": self.config.auth, "name": self.login_name(request)})

    # -- logging in and out

    async def login(self, request: web.Request) -> web.Response:
        if not self.origin_ok(request):
            return _refuse(403, "this page is not allowed to log in here (Origin)")
        if request.content_type != "application/json":
            return _refuse(415, "send JSON")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError, web.HTTPRequestEntityTooLarge):
            return _refuse(400, "the body is not JSON")
        if type(body) is not dict:
            return _refuse(400, "the body must be a JSON object")
        name, password, resume = body.get("name"), body.get("password", ""), body.get("resume", {})
        if type(name) is not str or type(password) is not str or len(password) > 1024 or type(resume) is not dict:
            return _refuse(400, "name and password must be strings, resume an object")
        problem = p.name_problem(name)
        if problem:
            return _refuse(400, f"invalid name {name!r}: {problem}")
        try:
            start = wire.parse(wire.encode({**resume, "kind": "resume"}))
        except wire.WireError as exc:
            return _refuse(400, exc.message)
        assert isinstance(start, wire.Resume)
        address = self.address(request)
        if self.config.auth == "users":
            refused = await self._check_password(address, name, password)
        else:
            refused = await self._claim(address, name, start, self.login_name(request) == name)
        if refused is not None:
            return refused
        response = web.json_response({"name": name, "auth": self.config.auth})
        response.set_cookie(COOKIE, self.logins.issue(name), httponly=True, samesite="Strict", path="/",
                            secure=self.secure(request),
                            max_age=int(u.LOGIN_TTL) if self.config.auth == "users" else None)
        log.info("%s logged in from %s", name, address)
        return response

    async def _check_password(self, address: str, name: str, password: str) -> web.Response | None:
        now = self.clock()
        wait = self.guard.wait(address, name, now)
        if wait > 0:
            return _refuse(429, f"too many failed logins; try again in {math.ceil(wait)} s",
                           {"Retry-After": str(math.ceil(wait))})
        ok = await asyncio.to_thread(u.check_login, dict(self.users), name, password)  # scrypt: off the loop
        if not ok:
            self.guard.failed(address, name, self.clock())
            log.warning("failed login for %r from %s", name, address)
            return _refuse(401, "wrong name or password")
        return None

    async def _claim(self, address: str, name: str, start: wire.Resume, mine: bool) -> web.Response | None:
        """Open auth: the name is the visitor's if the server gives it to a new session for them (``mine``:
        this browser holds it already, e.g. a second tab's login form)."""
        if mine and name in self.people:
            return None
        if name in self.people:
            return _refuse(409, f"name '{name}' is already taken")
        wait = self.claims.check(address, self.clock())
        if wait > 0:
            return _refuse(429, f"too many names claimed from your address; try again in {math.ceil(wait)} s",
                           {"Retry-After": str(math.ceil(wait))})
        person = self._person(name, start)
        outcome: asyncio.Future[ev.Event] = asyncio.get_running_loop().create_future()
        person.listeners.append(lambda event: outcome.done() or outcome.set_result(event))
        try:
            answer = await asyncio.wait_for(outcome, self.config.connect_timeout)
        except asyncio.TimeoutError:
            self._end(person, CLOSE_REFUSED, "the chat server did not answer")
            problem = self.hub.handshake_problem or "the chat server does not answer; try again later"
            return _refuse(503, problem)
        if isinstance(answer, ev.Error):
            self._end(person, CLOSE_REFUSED, answer.message)
            return _refuse(409 if answer.code == p.ERR_NAME_TAKEN else 403, answer.message)
        return None

    async def logout(self, request: web.Request) -> web.Response:
        if not self.origin_ok(request):
            return _refuse(403, "this page is not allowed to log out here (Origin)")
        token = request.cookies.get(COOKIE, "")
        name = self.logins.end(token)
        if name is not None:
            self._end_login(token, name, "logged out")
            log.info("%s logged out", name)
        response = web.json_response({"name": None})
        response.del_cookie(COOKIE, path="/")
        return response

    def _end_login(self, token: str, name: str, reason: str) -> None:
        """Close the tabs of one ended login of ``name``; its session ends with the name's last login."""
        for tab in list(self.tabs.pop(token, ())):
            tab.close(CLOSE_LOGGED_OUT, reason)
        person = self.people.get(name)
        if person is not None and name not in self.logins.names():
            self._end(person, CLOSE_LOGGED_OUT, reason)

    # -- people

    def _person(self, name: str, start: wire.Resume) -> Person:
        rooms = list(start.rooms) or list(self.config.rooms)
        person = Person(name, context=self.hub.context, in_endpoint=self.config.in_endpoint,
                        out_endpoint=self.config.out_endpoint, rooms=rooms, resume=start, flush=self.hub.flush,
                        on_end=self._end, clock=self.clock)
        self.people[name] = person
        self.hub.add(person)
        return person

    def _end(self, person: Person, code: int, reason: str) -> None:
        """Let ``person``'s session go (goodbye to the server), close its tabs; under open auth the name is
        free again, so its logins end too."""
        if self.people.get(person.name) is not person:
            return
        del self.people[person.name]
        if person.session.state in ("connected", "lost", "connecting"):
            person.session.bye()
        self.hub.flush(person)
        self.hub.remove(person)
        for tab in list(person.tabs):
            tab.close(code, reason)
        if self.config.auth == "open":
            for token in self.logins.end_name(person.name):
                self.tabs.pop(token, None)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            try:
                now = self.clock()
                for person in list(self.people.values()):
                    person.housekeep()
                    self.hub.flush(person)
                    if person.idle_since is not None and now - person.idle_since >= self.config.linger:
                        self._end(person, CLOSE_LOGGED_OUT, "the session ended")
                if self.config.auth == "users":
                    await self._reload_users()
            except Exception:
                log.exception("zmqchat-web: error in housekeeping (continuing)")

    async def _reload_users(self, force: bool = False) -> None:
        """Re-read the users file when it changed: removed users, and changed passwords, end their logins."""
        path = self.config.users_file
        assert path is not None
        try:
            stat = await asyncio.to_thread(path.stat)
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp == self._users_stamp and not force:
            return
        try:
            fresh = await asyncio.to_thread(u.load_users, path)
        except ZmqchatError as exc:
            if force:
                raise
            log.error("zmqchat-web: %s (keeping the users read before)", exc)
            return
        self._users_stamp = stamp
        old, self.users = self.users, fresh
        for name in sorted(self.logins.names()):
            if fresh.get(name) != old.get(name) and not force:
                why = "the user was removed" if name not in fresh else "the password was changed"
                for token in self.logins.end_name(name):
                    self._end_login(token, name, why)
                log.info("%s: %s; their logins ended", name, why)

    # -- the WebSocket

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if not self.origin_ok(request):
            log.warning("refused a WebSocket from origin %r (%s)", request.headers.get("Origin"), self.address(request))
            return _refuse(403, "this page may not connect here (Origin)")
        ws = web.WebSocketResponse(max_msg_size=self.config.ws_max_bytes, heartbeat=WS_HEARTBEAT,
                                   timeout=CLOSE_WAIT, autoping=True)
        await ws.prepare(request)
        token = request.cookies.get(COOKIE, "")
        name = self.logins.lookup(token)
        if name is None:
            await ws.close(code=CLOSE_LOGGED_OUT, message=b"not logged in")
            return ws
        tab = Tab(ws, token, name, self.config.ws_queue_bytes,
                  TokenBucket(self.config.ws_rate, self.config.ws_burst, self.clock()))
        writer = asyncio.get_running_loop().create_task(tab.writer(), name=f"zmqchat-web tab ({name})")
        self.tabs.setdefault(token, set()).add(tab)
        person: Person | None = None
        try:
            person = await self._resume(tab, ws)
            if person is not None:
                await self._serve(tab, ws, person)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            tabs = self.tabs.get(token)
            if tabs is not None:
                tabs.discard(tab)
                if not tabs:
                    del self.tabs[token]
            if person is not None:
                person.detach(tab)
            if tab.closing is None:
                tab.close(CLOSE_GOING_AWAY, "")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), CLOSE_WAIT + 1)
            writer.cancel()
        return ws

    async def _resume(self, tab: Tab, ws: web.WebSocketResponse) -> Person | None:
        """Wait for the tab's ``resume`` and attach it to its person (started if need be)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESUME_WAIT
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                tab.close(CLOSE_NO_RESUME, "no resume sent")
                return None
            try:
                msg = await ws.receive(timeout=remaining)
            except asyncio.TimeoutError:
                continue
            command = self._command(tab, msg)
            if command is _STOP:
                return None
            if command is None:
                continue
            if not isinstance(command, wire.Resume):
                tab.send(_error(wire.NOT_READY, "send resume first"))
                continue
            if self.logins.lookup(tab.token) != tab.name:
                tab.close(CLOSE_LOGGED_OUT, "logged out")
                return None
            person = self.people.get(tab.name)
            fresh = person is None
            if person is None:
                if self.config.auth == "open":  # the claim lapsed (the session ended): claim it again
                    tab.close(CLOSE_LOGGED_OUT, "the session ended; log in again")
                    return None
                person = self._person(tab.name, command)
            person.attach(tab, command, fresh)
            return person

    async def _serve(self, tab: Tab, ws: web.WebSocketResponse, person: Person) -> None:
        while tab.closing is None:
            msg = await ws.receive()
            command = self._command(tab, msg)
            if command is _STOP:
                return
            if command is None:
                continue
            if isinstance(command, wire.Resume):
                tab.send(_error(wire.BAD_MESSAGE, "resume comes once, first"))
                continue
            if self.people.get(tab.name) is not person:
                return  # the session ended meanwhile; the tab has been told
            try:
                person.handle(tab, command)
            except Exception:  # a bug must cost one answer, not the connection
                log.exception("zmqchat-web: error handling %s from %s", command.KIND, tab.name)
                tab.send(_error("internal", f"the gateway failed on this {command.KIND}; it was not done"))
                continue
            if isinstance(command, wire.Line) and person.answers.get(command.id) is not None \
                    and person.answers[command.id].event.get("quit"):
                self.logins.end(tab.token)
                self._end_login(tab.token, tab.name, "logged out")

    def _command(self, tab: Tab, msg: aiohttp.WSMessage) -> wire.Command | None | object:
        """The command in one WebSocket message; None when there is none to act on (the tab was told
        why), _STOP when the connection is over."""
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR):
            return _STOP
        if msg.type == aiohttp.WSMsgType.BINARY:
            return self._bad(tab, wire.WireError(wire.NOT_TEXT, "send JSON text, not binary frames"))
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        if tab.bucket.take(self.clock()) > 0:
            tab.strikes += 1
            if tab.strikes == 1 or tab.strikes % 20 == 0:
                tab.send(_error(wire.RATE_LIMITED, f"more than {self.config.ws_rate:g} messages a second: "
                                "this one was dropped; slow down"))
            if tab.strikes >= WS_STRIKES:
                tab.close(CLOSE_POLICY, "flooding")
                return _STOP
            return None
        tab.strikes = 0
        try:
            return wire.parse(msg.data)
        except wire.WireError as exc:
            return self._bad(tab, exc)

    def _bad(self, tab: Tab, exc: wire.WireError) -> object:
        tab.bad += 1
        tab.send(_error(exc.code, exc.message))
        if tab.bad >= WS_BAD:
            tab.close(CLOSE_POLICY, "too many bad messages")
            return _STOP
        return None


_STOP = object()


def _error(code: str, message: str) -> str:
    return gateway_event("error", code=code, message=message, fatal=False, mid="")


def _refuse(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def serve(config: Config, ready: Any = None) -> None:
    """Run the gateway until SIGINT/SIGTERM; ``ready(url)`` is called once it listens."""
    import signal

    gateway = Gateway(config)
    runner = web.AppRunner(gateway.app(), handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, config.http_host, config.http_port, ssl_context=config.tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ZmqchatError(f"cannot listen on {config.http_host}:{config.http_port}: {exc.strerror}") from exc
    port = runner.addresses[0][1] if runner.addresses else config.http_port
    host = f"[{config.http_host}]" if ":" in config.http_host else config.http_host
    url = f"{'https' if config.tls else 'http'}://{host}:{port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C raises KeyboardInterrupt instead
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(url)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
