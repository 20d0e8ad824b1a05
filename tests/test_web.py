"""The web gateway against a real zmqchat server: the WebSocket protocol, Origin, limits, bad input, auth,
resume, and the hub's shared sockets.

aiohttp's ``TestServer`` serves the gateway in-process; each test runs its own event loop
(``asyncio.run``) and every wait is bounded (``WAIT``). The server is a real ``zmqchat-server`` process on
random ports (the ``chat`` fixture of conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import WAIT, Proc

from zmqchat import protocol as p
from zmqchat.cli import web as web_cli
from zmqchat.client.sync import Client
from zmqchat.endpoints import endpoints
from zmqchat.errors import ZmqchatError
from zmqchat.web import users as u
from zmqchat.web import wire
from zmqchat.web.gateway import (
    CLOSE_LOGGED_OUT,
    CLOSE_POLICY,
    CLOSE_TOO_SLOW,
    COOKIE,
    CSP,
    Config,
    Gateway,
)
from zmqchat.web.person import Person


class Browser:
    """One browser: its own cookie jar, a WebSocket, and every event it was sent (bounded waits)."""

    def __init__(self, server: TestServer, origin: str | None = None) -> None:
        self.server = server
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.origin = origin
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: list[dict] = []
        self._taken: set[int] = set()  # indices of events a wait has returned

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def headers(self) -> dict[str, str]:
        return {"Origin": self.origin} if self.origin else {}

    async def login(self, name: str, password: str | None = None, resume: dict | None = None,
                    via: str = "") -> tuple[int, dict]:
        """Log in (``via``: the address a trusted proxy says the request came from)."""
        body: dict = {"name": name}
        if password is not None:
            body["password"] = password
        if resume is not None:
            body["resume"] = resume
        headers = {**self.headers(), **({"X-Forwarded-For": f"203.0.113.9, {via}"} if via else {})}
        async with self.http.post(self.url("/api/login"), json=body, headers=headers) as response:
            return response.status, await response.json()

    async def connect(self, rooms: dict | None = None, epoch: str = "", room: str = "", resume: bool = True,
                      term: int = 0) -> None:
        self.ws = await self.http.ws_connect(self.url("/ws"), headers=self.headers())
        self.events, self._taken = [], set()
        if resume:
            await self.send({"kind": "resume", "rooms": rooms or {}, "epoch": epoch, "room": room, "term": term})

    async def send(self, command: dict) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(command))

    async def expect(self, want, timeout: float = WAIT, what: str = "") -> dict:
        """The first event not yet taken for which ``want(event)`` is true (waiting for it if need be)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for index, event in enumerate(self.events):
                if index not in self._taken and want(event):
                    self._taken.add(index)
                    return event
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                pytest.fail(f"no event {what or want} within {timeout}s; got {self.events[-15:]}")
            assert self.ws is not None
            try:
                msg = await self.ws.receive(timeout=remaining)
            except asyncio.TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(msg.data))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                self.events.append({"type": "_closed", "code": self.ws.close_code, "reason": msg.extra})
                if not want(self.events[-1]):
                    pytest.fail(f"closed ({self.ws.close_code} {msg.extra!r}) while waiting for {what or want}; "
                                f"got {self.events[-15:]}")
                self._taken.add(len(self.events) - 1)
                return self.events[-1]

    async def kind(self, kind: str, timeout: float = WAIT, **fields) -> dict:
        return await self.expect(lambda e: e.get("type") == kind and all(e.get(k) == v for k, v in fields.items()),
                                 timeout, f"{kind} {fields}")

    async def closed(self, timeout: float = WAIT) -> dict:
        return await self.kind("_closed", timeout)

    async def texts(self, room: str, count: int, timeout: float = WAIT) -> list[str]:
        """The texts of ``count`` further messages of ``room``."""
        got = []
        for _ in range(count):
            got.append((await self.kind("message", timeout, room=room))["text"])
        return got

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


class Rig:
    """A test's gateway (``gw``), its aiohttp test server, and ``browser()`` to open browsers on it."""

    def __init__(self, gw: Gateway, server: TestServer, browser) -> None:
        self.gw, self.server, self.browser = gw, server, browser


@contextlib.asynccontextmanager
async def gateway(port: int, **overrides):
    """A gateway serving on a random loopback port, linked to the server on ``port``."""
    in_endpoint, out_endpoint = endpoints("127.0.0.1", port)
    gw = Gateway(Config(in_endpoint=in_endpoint, out_endpoint=out_endpoint, http_port=0, **overrides))
    server = TestServer(gw.app(), host="127.0.0.1", port=0)
    await server.start_server()
    browsers: list[Browser] = []

    def browser(origin: str | None = None) -> Browser:
        b = Browser(server, origin)
        browsers.append(b)
        return b

    try:
        yield Rig(gw, server, browser)
    finally:
        for b in browsers:
            await b.close()
        await server.close()


async def wait_for(condition, timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def joined(b: Browser, name: str) -> dict:
    """Log ``b`` in as ``name`` (open auth), connect and wait until it is in sync."""
    status, body = await b.login(name)
    assert status == 200, body
    await b.connect()
    welcome = await b.kind("welcome")
    await b.kind("synced")
    return welcome


# -- the protocol, end to end


def test_two_browsers_and_a_terminal_client_chat(chat):
    chat.server()

    async def body():
        async with gateway(chat.port) as rig:
            alice, bob = rig.browser(), rig.browser()
            welcome = await joined(alice, "alice")
            assert welcome["name"] == "alice" and welcome["rooms"] == ["#general"]
            await joined(bob, "bob")
            term = await asyncio.to_thread(Client, "carol", port=chat.port)
            try:
                await alice.send({"kind": "say", "id": "a1", "room": "#general", "text": "hi from alice"})
                sending = await alice.kind("sending", id="a1")
                got = await alice.kind("message", id="a1")
                assert got["own"] and got["mid"] == sending["mid"] and got["text"] == "hi from alice"
                seen = await bob.kind("message", text="hi from alice")
                assert not seen["own"] and seen["sender"] == "alice" and "id" not in seen
                await asyncio.to_thread(term.say, "@bob hello from the terminal")
                mention = await bob.kind("message", sender="carol")
                assert mention["mention"] is True
                assert (await alice.kind("message", sender="carol")).get("mention") is None
                # a typed line, as in the terminal client: /me, and a command
                await bob.send({"kind": "line", "id": "b1", "room": "#general", "text": "/me waves"})
                action = await alice.kind("message", sender="bob")
                assert action["action"] is True and action["text"] == "waves"
                texts = []
                deadline = time.monotonic() + WAIT
                while len(texts) < 2 and time.monotonic() < deadline:
                    texts += [e.text for e in (await asyncio.to_thread(term.poll, 0.2))[0]
                              if getattr(e, "sender", "carol") != "carol" and hasattr(e, "text")]
                assert texts == ["hi from alice", "waves"]
            finally:
                await asyncio.to_thread(term.close)

    asyncio.run(body())


def test_rooms_commands_topic_who_search_and_pages(chat):
    chat.server()

    async def body():
        async with gateway(chat.port) as rig:
            alice = rig.browser()
            await joined(alice, "alice")
            await alice.send({"kind": "line", "id": "l1", "room": "#general", "text": "/join #dev"})
            done = await alice.kind("done", id="l1")
            assert done["room"] == "#dev"
            await alice.kind("joined", room="#dev")
            await alice.kind("presence", room="#dev", name="alice", event="join")
            await alice.send({"kind": "topic", "room": "#dev", "text": "builds <b>here</b>"})
            topic = await alice.kind("topic", room="#dev")
            assert topic["text"] == "builds <b>here</b>" and topic["by"] == "alice"
            for n in range(1, 31):
                await alice.send({"kind": "say", "id": f"m{n}", "room": "#dev", "text": f"line {n} zebra{n}"})
                await alice.kind("message", id=f"m{n}")
            await alice.send({"kind": "page", "room": "#dev", "before": 31, "limit": 10})
            page = await alice.kind("page", room="#dev")
            assert [m["seq"] for m in page["messages"]] == list(range(21, 31)) and not page["start"]
            assert all(m["history"] for m in page["messages"])
            await alice.send({"kind": "page", "room": "#dev", "before": 5, "limit": 50})
            page = await alice.kind("page", room="#dev", before=5)
            assert [m["seq"] for m in page["messages"]] == [1, 2, 3, 4] and page["start"]
            await alice.send({"kind": "who", "room": "#dev"})
            assert (await alice.kind("who"))["rooms"] == {"#dev": ["alice"]}
            await alice.send({"kind": "line", "id": "l2", "room": "#dev", "text": "/who"})
            assert (await alice.kind("who"))["asked"] is True
            await alice.send({"kind": "line", "id": "l3", "room": "#dev", "text": "/help"})
            assert "/join" in (await alice.kind("help", id="l3"))["text"]
            await alice.send({"kind": "line", "id": "l4", "room": "#dev", "text": "/bogus"})
            assert "unknown command" in (await alice.kind("reply", id="l4"))["text"]
            # the search index may lag the newest batch a little: ask until it has it
            found = None
            for _ in range(50):
                await alice.send({"kind": "search", "query": "zebra7"})
                found = await alice.kind("search")
                if found["results"]:
                    break
                await asyncio.sleep(0.1)
            assert found and found["results"][0]["text"] == "line 7 zebra7" and found["results"][0]["marks"]
            await alice.send({"kind": "part", "room": "#dev", "id": "p1"})
            await alice.kind("left", room="#dev")
            assert (await alice.kind("done", id="p1"))["room"] == "#general"

    asyncio.run(body())


def test_two_tabs_searching_one_query_with_other_filters_each_get_their_own_answer(chat):
    chat.server()

    async def body():
        async with gateway(chat.port) as rig:
            tab1 = rig.browser()
            await joined(tab1, "alice")
            tab2 = Browser(rig.server)
            tab2.http = tab1.http  # the same person's second tab: one session
            await tab2.connect()
            await tab2.kind("synced")
            await tab1.send({"kind": "line", "id": "j", "room": "#general", "text": "/join #dev"})
            await tab1.kind("joined", room="#dev")
            for n, room in enumerate(("#general", "#dev")):
                await tab1.send({"kind": "say", "id": f"s{n}", "room": room, "text": f"deploy from {room}"})
                await tab1.kind("message", id=f"s{n}")
            for _ in range(50):  # the index may lag the newest batch: until both are found
                await tab1.send({"kind": "search", "query": "deploy"})
                if len((await tab1.kind("search"))["results"]) == 2:
                    break
                await asyncio.sleep(0.1)
            await tab1.send({"kind": "search", "query": "deploy", "room": "#general"})
            await tab2.send({"kind": "search", "query": "deploy", "room": "#dev"})
            one, two = await tab1.kind("search"), await tab2.kind("search")
            assert [r["text"] for r in one["results"]] == ["deploy from #general"]
            assert [r["text"] for r in two["results"]] == ["deploy from #dev"]

    asyncio.run(body())


def test_bad_input_gets_an_error_or_a_close_never_an_exception(chat):
    chat.server()

    async def body():
        async with gateway(chat.port) as rig:
            alice = rig.browser()
            await alice.login("alice")
            await alice.connect(resume=False)
            await alice.send({"kind": "say", "id": "x", "room": "#general", "text": "too early"})
            assert (await alice.kind("error"))["code"] == wire.NOT_READY
            await alice.send({"kind": "resume"})
            await alice.kind("synced")
            cases = [("not json", wire.BAD_JSON), ("[1, 2]", wire.BAD_MESSAGE), ('{"kind": 5}', wire.BAD_MESSAGE),
                     ('{"kind": "dance"}', wire.UNKNOWN_KIND), ('{"kind": "say", "id": "a", "room": "#general"}',
                                                                wire.BAD_MESSAGE),
                     ('{"kind": "say", "id": "a", "room": "#general", "text": 5}', wire.BAD_MESSAGE),
                     ('{"kind": "say", "id": "a b", "room": "#general", "text": "x"}', wire.BAD_MESSAGE),
                     ('{"kind": "say", "id": "a", "room": "#general", "text": "x", "action": 1}', wire.BAD_MESSAGE),
                     ('{"kind": "page", "room": "#general", "before": -1}', wire.BAD_MESSAGE),
                     ('{"kind": "page", "room": "#general", "before": 1e400}', wire.BAD_MESSAGE),
                     ('{"kind": "page", "room": "bad room!"}', wire.BAD_MESSAGE),
                     ('{"kind": "say", "id": "a", "room": "#general", "text": "\\ud800"}', wire.BAD_MESSAGE),
                     ("[" * 100_00 + "]" * 100_00, wire.BAD_JSON), ('{"kind": "resume"}', wire.BAD_MESSAGE)]
            for text, code in cases:
                assert alice.ws is not None
                await alice.ws.send_str(text)
                got = await alice.kind("error")
                assert got["code"] == code, (text[:40], got)
            await alice.ws.send_bytes(b"\x00\x01")
            assert (await alice.kind("error"))["code"] == wire.NOT_TEXT
            # a message for a room we are not in, and one too long: the client's own checks, as in the CLI
            await alice.send({"kind": "say", "id": "n1", "room": "#elsewhere", "text": "hi"})
            assert "join it first" in (await alice.kind("failed", id="n1"))["message"]
            await alice.send({"kind": "say", "id": "n2", "room": "#general", "text": "x" * 17_000})
            assert "too long" in (await alice.kind("failed", id="n2"))["message"]
            # still serving
            await alice.send({"kind": "say", "id": "ok", "room": "#general", "text": "still here"})
            await alice.kind("message", id="ok")
            # a frame over the size limit closes the connection with 1009
            await alice.ws.send_str(json.dumps({"kind": "say", "id": "big", "room": "#general", "text": "y" * 70_000}))
            closed = await alice.closed()
            assert closed["code"] == 1009
            # a tab that sends only garbage is closed with 1008
            await alice.connect()
            await alice.kind("synced")
            for _ in range(60):
                await alice.ws.send_str("{")
            assert (await alice.closed())["code"] == CLOSE_POLICY
            async with alice.http.get(alice.url("/healthz")) as response:
                assert response.status == 200 and (await response.json())["ok"] is True

    asyncio.run(body())


def test_origin_rate_limit_and_a_slow_reader(chat):
    chat.server()

    async def body():
        async with gateway(chat.port, allowed_origins=frozenset({"https://chat.example"}), ws_rate=5.0,
                           ws_burst=5.0, ws_queue_bytes=20_000) as rig:
            own = f"http://127.0.0.1:{rig.server.port}"
            evil = rig.browser(origin="http://evil.example")
            assert (await evil.login("mallory"))[0] == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await evil.connect()
            assert refused.value.status == 403
            alice = rig.browser(origin=own)
            await joined(alice, "alice")
            other = rig.browser(origin="https://chat.example")
            assert (await other.login("bob"))[0] == 200
            # rate: 5 at once, then the rest are dropped with one error
            for n in range(12):
                await alice.send({"kind": "ping"})
            assert (await alice.kind("error"))["code"] == wire.RATE_LIMITED
            assert len([e for e in alice.events if e["type"] == "pong"]) <= 6
            # a tab that lets more than its queue's bytes pile up (its writer blocked by a reader that does
            # not read) is closed with 4001; what is queued then is dropped: the page resumes by seq
            slow = rig.browser(origin=own)
            await joined(slow, "slow")
            tab = next(t for tabs in rig.gw.tabs.values() for t in tabs if t.name == "slow")
            tab.send("x" * 30_000)
            assert tab.closing is not None and not tab.queue
            assert (await slow.closed())["code"] == CLOSE_TOO_SLOW

    asyncio.run(body())


def test_a_tab_whose_reader_stalls_is_closed_when_its_queue_is_full():
    """The writer blocks in ``send_str`` (aiohttp waits for the socket to drain); the queue grows to its
    bound, then the tab is closed with CLOSE_TOO_SLOW and what was queued is dropped."""

    class StalledSocket:
        def __init__(self) -> None:
            self.sent: list[str] = []
            self.unblock = asyncio.Event()
            self.closed_with: tuple[int, bytes] | None = None

        async def send_str(self, text: str) -> None:
            await self.unblock.wait()
            self.sent.append(text)

        async def close(self, code: int, message: bytes) -> None:
            self.closed_with = (code, message)

    async def body():
        from zmqchat.server.ratelimit import TokenBucket
        from zmqchat.web.gateway import Tab

        ws = StalledSocket()
        tab = Tab(ws, "token", "slow", 1000, TokenBucket(1, 1, 0.0))  # type: ignore[arg-type]
        writer = asyncio.create_task(tab.writer())
        tab.send("first")
        await asyncio.sleep(0)  # the writer takes "first" and blocks on it
        for n in range(20):
            tab.send(f"{n:02d}" + "x" * 98)
        assert tab.closing is not None and tab.closing[0] == CLOSE_TOO_SLOW and not tab.queue
        ws.unblock.set()
        await asyncio.wait_for(writer, WAIT)
        assert ws.sent == ["first"] and ws.closed_with is not None and ws.closed_with[0] == CLOSE_TOO_SLOW

    asyncio.run(body())


# -- resume


def test_reconnect_resumes_with_nothing_lost_or_twice(chat):
    chat.server("--rate", "2000", "--burst", "2000")

    async def body():
        async with gateway(chat.port, ws_rate=2000, ws_burst=2000) as rig:
            alice, bob = rig.browser(), rig.browser()
            await joined(alice, "alice")
            await joined(bob, "bob")
            for n in range(1, 6):
                await alice.send({"kind": "say", "id": f"a{n}", "room": "#general", "text": f"before {n}"})
            seqs = {}
            for n in range(1, 6):
                got = await bob.kind("message", text=f"before {n}")
                seqs[n] = got["seq"]
            epoch = rig.gw.people["bob"].session.epoch
            # bob's tab goes away (the session lingers); alice talks on
            assert bob.ws is not None
            await bob.ws.close()
            await wait_for(lambda: not rig.gw.people["bob"].tabs, what="bob's tab detached")
            for n in range(1, 251):
                await alice.send({"kind": "say", "id": f"b{n}", "room": "#general", "text": f"while away {n}"})
                if n % 50 == 0:
                    await alice.kind("message", id=f"b{n}")
            # a second tab of bob's opens meanwhile (shares the session: no "name taken")
            bob2 = Browser(rig.server)
            bob2.http = bob.http
            await bob2.connect()
            await bob2.kind("welcome", name="bob")
            await bob2.kind("synced")
            # bob's first tab comes back, resuming from the 3rd message it had
            await bob.connect(rooms={"#general": seqs[3]}, epoch=epoch)
            await bob.kind("welcome")
            await bob.kind("synced", timeout=WAIT)
            got = [e for e in bob.events if e["type"] == "message"]
            numbers = sorted(e["seq"] for e in got)
            assert numbers == list(range(seqs[3] + 1, seqs[5] + 251)), numbers[:5]
            assert not any(e["history"] for e in got)
            # the same message id again (a page resending after a reconnect) is never sent twice
            await alice.send({"kind": "say", "id": "b250", "room": "#general", "text": "while away 250"})
            again = await alice.kind("sent", id="b250")
            assert again["seq"] == seqs[5] + 250
            await alice.send({"kind": "say", "id": "c1", "room": "#general", "text": "after"})
            await bob.kind("message", text="after")
            assert [e["text"] for e in bob.events if e["type"] == "message"].count("while away 250") == 1

    asyncio.run(body())


def test_gateway_restart_resumes_from_the_page_numbers(chat):
    chat.server()

    async def body():
        async with gateway(chat.port) as rig:
            alice = rig.browser()
            await joined(alice, "alice")
            for n in range(1, 4):
                await alice.send({"kind": "say", "id": f"a{n}", "room": "#general", "text": f"one {n}"})
                last = (await alice.kind("message", id=f"a{n}"))["seq"]
            epoch = rig.gw.people["alice"].session.epoch
        term = await asyncio.to_thread(Client, "carol", port=chat.port)
        try:
            for n in range(1, 8):
                await asyncio.to_thread(term.say, f"meanwhile {n}")
            assert await asyncio.to_thread(term.drain, WAIT)
        finally:
            await asyncio.to_thread(term.close)
        async with gateway(chat.port) as rig:  # a new gateway: it knows nobody
            alice = rig.browser()
            # the page also knew a term (from a pair, say): a single server (term 0) answering this session's
            # own hello with the same epoch starts the count over, so nothing is taken for a deposed active
            resume = {"rooms": {"#general": last}, "epoch": epoch, "room": "#general", "term": 7}
            status, body = await alice.login("alice", resume=resume)
            assert status == 200, body
            await alice.connect(**resume)
            assert (await alice.kind("synced"))["term"] == 0
            got = [e for e in alice.events if e["type"] == "message"]
            assert [e["text"] for e in got] == [f"meanwhile {n}" for n in range(1, 8)]
            assert [e["seq"] for e in got] == list(range(last + 1, last + 8))
            assert not any(e["history"] for e in got)

    asyncio.run(body())


# -- who is who


def test_open_auth_names(chat):
    chat.server()

    async def body():
        async with gateway(chat.port, linger=0.5) as rig:
            alice = rig.browser()
            await joined(alice, "alice")
            status, body = await rig.browser().login("alice")
            assert status == 409 and body["error"] == "name 'alice' is already taken"
            term = await asyncio.to_thread(Client, "dave", port=chat.port)
            try:
                status, body = await rig.browser().login("dave")
                assert status == 409 and body["error"] == "name 'dave' is already taken"  # the server's words
            finally:
                await asyncio.to_thread(term.close)
            assert (await rig.browser().login("bad name"))[0] == 400
            async with alice.http.get(alice.url("/api/me")) as response:
                assert await response.json() == {"auth": "open", "name": "alice"}
            # logging out ends the session at once: the name is free
            async with alice.http.post(alice.url("/api/logout")) as response:
                assert response.status == 200
            assert (await alice.closed())["code"] == CLOSE_LOGGED_OUT
            assert "alice" not in rig.gw.people
            assert (await rig.browser().login("alice"))[0] == 200
            # a claimed name whose tabs all went away is free again after --linger
            eve = rig.browser()
            await joined(eve, "eve")
            assert eve.ws is not None
            await eve.ws.close()
            await wait_for(lambda: "eve" not in rig.gw.people, what="eve's session ended")
            await eve.connect()
            assert (await eve.closed())["code"] == CLOSE_LOGGED_OUT

    asyncio.run(body())


def test_users_auth(chat, tmp_path):
    chat.server()
    users = tmp_path / "users"
    u.set_user(users, "alice", "correct horse", must_exist=False)
    u.set_user(users, "bob", "battery staple", must_exist=False)
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    line = users.read_text().splitlines()[0]
    assert line.startswith("alice scrypt$16384$8$1$") and "correct" not in line

    async def body():
        async with gateway(chat.port, auth="users", users_file=users,
                           trusted_proxies=frozenset({"127.0.0.1"})) as rig:
            alice = rig.browser()
            assert (await alice.login("alice", "wrong password", via="198.51.100.1"))[0] == 401
            assert (await alice.login("nobody", "wrong password", via="198.51.100.1"))[0] == 401
            assert (await alice.login("alice", "correct horse", via="198.51.100.1"))[0] == 200
            cookie = next(c for c in alice.http.cookie_jar if c.key == COOKIE)
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
            assert len(cookie.value) >= 40
            await alice.connect()
            assert (await alice.kind("welcome"))["name"] == "alice"
            await alice.kind("synced")
            # a second device of alice's shares the session
            phone = rig.browser()
            assert (await phone.login("alice", "correct horse"))[0] == 200
            await phone.connect()
            await phone.kind("synced")
            await alice.send({"kind": "say", "id": "x1", "room": "#general", "text": "from the laptop"})
            seen = await phone.kind("message", text="from the laptop")
            assert seen["own"] is True
            # failed logins are limited per name (5 at once), whatever the address ...
            mallory = rig.browser()
            codes = [(await mallory.login("bob", f"guess {n}", via=f"192.0.2.{n}"))[0] for n in range(7)]
            assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
            assert (await mallory.login("bob", "battery staple", via="192.0.2.99"))[0] == 429  # even the right one
            # ... and per address, whatever the name
            codes = [(await mallory.login(f"user{n}", "guess", via="192.0.2.200"))[0] for n in range(7)]
            assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
            # removing the user ends both logins
            u.delete_user(users, "alice")
            assert (await alice.closed())["code"] == CLOSE_LOGGED_OUT
            assert (await phone.closed())["code"] == CLOSE_LOGGED_OUT
            assert (await rig.browser().login("alice", "correct horse"))[0] == 401
            async with alice.http.get(alice.url("/api/me")) as response:
                assert (await response.json())["name"] is None

    asyncio.run(body())


def test_user_commands(tmp_path, capsys):
    users = tmp_path / "users"
    answers = iter(["s3cret-pass", "s3cret-pass", "other-pass", "other-pass", "short", "short"])
    args = web_cli.build_user_parser().parse_args(["adduser", "alice", "--users", str(users)])
    assert web_cli.manage_users(args, prompt=lambda _: next(answers)) == 0
    assert u.check_login(u.load_users(users), "alice", "s3cret-pass")
    args = web_cli.build_user_parser().parse_args(["passwd", "alice", "--users", str(users)])
    assert web_cli.manage_users(args, prompt=lambda _: next(answers)) == 0
    assert u.check_login(u.load_users(users), "alice", "other-pass")
    assert not u.check_login(u.load_users(users), "alice", "s3cret-pass")
    with pytest.raises(Exception, match="at least 8"):
        web_cli.manage_users(args, prompt=lambda _: next(answers))
    assert web_cli.main(["deluser", "alice", "--users", str(users)]) == 0
    assert web_cli.main(["deluser", "alice", "--users", str(users)]) == 1
    assert "no user 'alice'" in capsys.readouterr().err
    assert u.load_users(users) == {}


def test_the_page_is_served_with_a_csp_and_nothing_else_is(chat):
    chat.server()

    async def body():
        async with gateway(chat.port) as rig:
            b = rig.browser()
            async with b.http.get(b.url("/")) as response:
                assert response.status == 200
                assert response.headers["Content-Security-Policy"] == CSP
                assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
                page = await response.text()
                assert '<script type="module" src="/static/app.js"></script>' in page
                assert "<script>" not in page and "http://" not in page and "https://" not in page
            for path in ("/static/../gateway.py", "/static/%2e%2e%2fgateway.py", "/static/nope.js", "/../cli.py"):
                async with b.http.get(b.url(path)) as response:
                    assert response.status == 404, path
            async with b.http.get(b.url("/static/app.js")) as response:
                assert response.status == 200 and response.content_type == "text/javascript"
                assert response.headers["X-Content-Type-Options"] == "nosniff"
            async with b.http.get(b.url("/nope")) as response:
                assert response.status == 404 and response.headers["Content-Security-Policy"] == CSP

    asyncio.run(body())
    # user text goes in as text: no markup-building API anywhere in the page's scripts
    static = Path(__file__).resolve().parent.parent / "zmqchat" / "web" / "static"
    for script in static.glob("*.js"):
        code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("//"))
        for api in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert api not in code, (script.name, api)


# -- the hub: many sessions, one socket pair


def test_the_hub_shares_one_socket_pair_and_counts_subscriptions(chat, monkeypatch):
    chat.server()

    async def body():
        async with gateway(chat.port, claim_rate=0) as rig:
            tabs = [rig.browser() for _ in range(30)]
            await asyncio.gather(*(joined(b, f"user{n}") for n, b in enumerate(tabs)))
            general = p.room_topic("#general")
            assert rig.gw.hub.subscribed()[general] == 30
            assert rig.gw.hub.subscribed()[p.ALL_TOPIC] == 30
            received = rig.gw.hub.received
            decoded: list[bytes] = []
            real = p.decode_server_term

            def counting(frames):
                decoded.append(frames[2])
                return real(frames)

            monkeypatch.setattr(p, "decode_server_term", counting)  # the hub calls it through the module
            await tabs[0].send({"kind": "say", "id": "x", "room": "#general", "text": "one broadcast"})
            await asyncio.gather(*(b.kind("message", text="one broadcast") for b in tabs))
            monkeypatch.undo()
            assert sum(kind in (b"msg", b"msgs") for kind in decoded) == 1  # one decode for 30 sessions
            assert rig.gw.hub.received - received < 10  # one publication (and an ack or heartbeat), not 30
            await tabs[1].send({"kind": "join", "room": "#dev"})
            await tabs[1].kind("presence", room="#dev", name="user1")
            assert rig.gw.hub.subscribed()[p.room_topic("#dev")] == 1
            await tabs[1].send({"kind": "part", "room": "#dev"})
            await wait_for(lambda: p.room_topic("#dev") not in rig.gw.hub.subscribed(), what="#dev let go")
            sockets = [rig.gw.hub._push, rig.gw.hub._sub]
            assert all(s is not None for s in sockets)

    asyncio.run(body())


def test_the_wire_tables_are_complete():
    assert set(Person.HANDLERS) == set(wire.KINDS.values()) - {wire.Resume}
    doc = (Path(__file__).resolve().parent.parent / "docs" / "web.md").read_text()
    for kind in wire.KINDS:
        assert f'"kind": "{kind}"' in doc, kind
    for kind in wire.GATEWAY_EVENTS:
        assert f"`{kind}`" in doc, kind


def test_the_flags_match_the_other_commands():
    from zmqchat.cli import common

    mine, theirs = web_cli.build_parser(), __import__("argparse").ArgumentParser()
    common.add_connection_flags(theirs)
    ours = {a.dest: a.default for a in mine._actions if a.option_strings}
    for action in theirs._actions:
        if action.option_strings and action.dest != "help":
            assert ours[action.dest] == action.default, action.dest
    parser = web_cli.build_parser()
    web_cli.apply_env_defaults(parser, {"ZMQCHAT_HTTP_PORT": "9999", "ZMQCHAT_AUTH": "users",
                                        "ZMQCHAT_TRUSTED_PROXY": "10.0.0.1,10.0.0.2"})
    args = parser.parse_args([])
    assert (args.http_port, args.auth, args.trusted_proxy) == (9999, "users", ["10.0.0.1", "10.0.0.2"])


def test_the_gateway_takes_a_pair_of_servers():
    args = web_cli.build_parser().parse_args(["--servers", "127.0.0.1:4444,127.0.0.1:5444"])
    config = web_cli.config_from(args)
    assert [s.label for s in config.servers] == ["127.0.0.1:4444", "127.0.0.1:5444"]
    assert (config.in_endpoint, config.out_endpoint) == ("tcp://127.0.0.1:4444", "tcp://127.0.0.1:4445")
    hub = Gateway(config).hub
    assert [s.out_endpoint for s in hub.servers] == ["tcp://127.0.0.1:4445", "tcp://127.0.0.1:5445"]
    assert web_cli.config_from(web_cli.build_parser().parse_args([])).servers == ()  # one server, as before
    both = web_cli.build_parser().parse_args(["--servers", "127.0.0.1:4444", "--in-endpoint", "ipc:///tmp/x"])
    with pytest.raises(ZmqchatError, match="either --servers or --in-endpoint"):
        web_cli.config_from(both)


def test_the_command_line_serves_and_warns_on_open_auth_beyond_loopback(chat, tmp_path):
    chat.server()
    proc = Proc([sys.executable, "-m", "zmqchat.cli.web", "--http-port", "0", "--port", str(chat.port)], stdin=False)
    chat.procs.append(proc)
    line = proc.expect(r"serving http://127\.0\.0\.1:\d+", stream="err")
    assert "WARNING" not in "".join(proc.lines["err"])
    url = line.split("serving ")[1].split()[0]

    async def health() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                async with http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return response.status, await response.json()
                await asyncio.sleep(0.05)
            return response.status, await response.json()

    status, body = asyncio.run(health())
    assert status == 200 and body["ok"] is True
    proc.stop()
    assert proc.popen.returncode == 0
    out = subprocess.run([sys.executable, "-m", "zmqchat.cli.web", "--http-host", "0.0.0.0", "--auth", "users"],
                         capture_output=True, text=True, timeout=WAIT, check=False)
    assert out.returncode == 1 and "--auth users needs --users FILE" in out.stderr
    warn = Proc([sys.executable, "-m", "zmqchat.cli.web", "--http-host", "0.0.0.0", "--http-port", "0", "--port",
                 str(chat.port)], stdin=False)
    chat.procs.append(warn)
    warn.expect("WARNING: --auth open on 0.0.0.0", stream="err")
    warn.stop()
