"""The asyncio client against a real server process: the same chat as the sync Client, awaited.

Each test is an ordinary function that runs its scenario with ``asyncio.run``, bounded as a whole. Most share
one server (a room and names of their own per test); the CURVE test starts its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools
import logging
import time
import warnings
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq.asyncio
from conftest import WAIT, Chat, one_server, texts_from

from zmqchat import Client, ConnectError, ZmqchatError
from zmqchat import events as ev
from zmqchat.client.aio import AsyncClient
from zmqchat.endpoints import free_port_pair
from zmqchat.keys import generate

BOUND = 20.0  # seconds: the most one test's scenario may take before it fails
MOTD = "welcome to the async test"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server (FAST_HEARTBEAT: a silent client times out within a second) for the tests below."""
    yield from one_server(tmp_path_factory, "aio", "--motd", MOTD)


class Names:
    """A room and names that no other test on the shared server uses."""

    def __init__(self) -> None:
        self.n = next(_ids)
        self.room = f"#aio{self.n}"

    def __call__(self, base: str) -> str:
        return f"{base}{self.n}"


@pytest.fixture
def names() -> Names:
    return Names()


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario, BOUND))


def client(server: Chat, name: str, room: str, **options) -> AsyncClient:
    return AsyncClient(name, port=server.port, rooms=[room], connect_timeout=WAIT, **options)


@contextlib.asynccontextmanager
async def connected(server: Chat, names: Names, *bases: str) -> AsyncIterator[list[AsyncClient]]:
    """Clients named ``bases`` (made unique) in the test's room, connected at once, closed at the end."""
    clients = [client(server, names(base), names.room) for base in bases]
    async with contextlib.AsyncExitStack() as stack:
        for each in clients:
            stack.push_async_callback(each.close)
        await asyncio.gather(*(each.connect() for each in clients))
        yield clients


def ours() -> set[asyncio.Task]:
    """The clients' pumps still running."""
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("zmqchat pump")}


async def until(chat: AsyncClient, match: Callable[[ev.Event], bool], timeout: float = WAIT) -> list[ev.Event]:
    """The events up to the first that ``match`` accepts (the last one), or the test fails with what came."""
    seen = []
    async for event in chat.events(timeout):
        seen.append(event)
        if match(event):
            return seen
    pytest.fail(f"{chat.name}: no matching event within {timeout}s; saw {seen}")


async def first(chat: AsyncClient, match: Callable[[ev.Event], bool], timeout: float = WAIT) -> ev.Event:
    """The first event ``match`` accepts (those before it are dropped)."""
    return (await until(chat, match, timeout))[-1]


def message(text: str, **fields) -> Callable[[ev.Event], bool]:
    return lambda e: isinstance(e, ev.Message) and e.text == text and all(getattr(e, k) == v for k, v in fields.items())


def presence(name: str, event: str, room: str) -> Callable[[ev.Event], bool]:
    return lambda e: isinstance(e, ev.Presence) and (e.name, e.event, e.room) == (name, event, room)


def test_connect_is_welcomed_and_the_welcome_is_an_event(server, names):
    async def scenario():
        async with client(server, names("bot"), names.room) as bot:
            assert bot.connected and bot.room == names.room
            welcome = await bot.connect(timeout=0.001)  # connected already: at once, the same welcome
            assert welcome == ev.Connected(names("bot"), MOTD, reconnected=False)
            assert await first(bot, lambda e: isinstance(e, ev.Connected)) == welcome
            await first(bot, presence(names("bot"), "join", names.room))  # our join, confirmed
    run(scenario())


def test_say_is_echoed_once_and_acknowledged(server, names):
    async def scenario():
        async with client(server, names("bot"), names.room) as bot:
            mid = await bot.say("hello, me")
            assert mid.startswith(bot.session.session_id + ".")
            echo = await first(bot, lambda e: isinstance(e, ev.Message))
            assert (echo.text, echo.room, echo.sender, echo.own, echo.history) == (
                "hello, me", names.room, names("bot"), True, False)
            assert await bot.drain(WAIT) and bot.unacknowledged == 0
            await bot.say("marker")  # PUB keeps order: a second echo of the first would come before this
            after = await first(bot, lambda e: isinstance(e, ev.Message))
            assert (after.text, after.seq) == ("marker", echo.seq + 1)  # so "hello, me" came exactly once
            # The sync Client's checks guard the async one too, before anything is sent.
            with pytest.raises(ZmqchatError, match="too long"):
                await bot.say("x" * (bot.session.max_text_bytes + 1))
            with pytest.raises(ZmqchatError, match="not in #elsewhere"):
                await bot.say("hi", room="#elsewhere")
            assert bot.unacknowledged == 0
    run(scenario())


def test_two_async_clients_talk(server, names):
    async def scenario():
        async with connected(server, names, "alice", "bob") as (alice, bob):  # both in the room from here
            await alice.say("hi bob")
            heard = await first(bob, message("hi bob"))
            assert heard.sender == names("alice") and not heard.own
            await bob.say("hello alice")
            reply = await first(alice, message("hello alice"))
            assert reply.sender == names("bob") and reply.seq > heard.seq  # one sequence for the room
    run(scenario())


def test_async_and_sync_clients_talk(server, names):
    async def scenario():
        loop = asyncio.get_running_loop()
        # The sync client lives in one thread of its own, so its polls never block this loop.
        with ThreadPoolExecutor(max_workers=1) as thread:
            def in_thread(fn, *args):
                return loop.run_in_executor(thread, fn, *args)

            sync_connected = in_thread(lambda: Client(names("sync"), port=server.port, rooms=[names.room],
                                                      connect_timeout=WAIT))
            async with client(server, names("aio"), names.room) as aio:
                sync = await sync_connected
                try:
                    await aio.say("from asyncio")
                    assert await in_thread(texts_from, sync, names("aio"), 1, WAIT) == ["from asyncio"]
                    await in_thread(sync.say, "from a thread")
                    heard = await first(aio, message("from a thread"))
                    assert heard.sender == names("sync")
                finally:
                    await in_thread(sync.close)
                await first(aio, presence(names("sync"), "quit", names.room))
    run(scenario())


def test_join_and_part_with_presence(server, names):
    dev = names.room + "dev"

    async def scenario():
        async with connected(server, names, "alice", "bob") as (alice, bob):
            assert await bob.join(dev[1:]) == dev  # "aio1dev" means "#aio1dev", as in the sync client
            await first(bob, presence(names("bob"), "join", dev))
            assert bob.room == dev
            assert await alice.join(dev) == dev
            await first(alice, presence(names("alice"), "join", dev))
            await first(bob, presence(names("alice"), "join", dev))
            await alice.say("in dev")  # the room joined last is the current one
            assert (await first(bob, message("in dev"))).room == dev
            assert await alice.part(dev) == dev
            await first(bob, presence(names("alice"), "part", dev))
            assert alice.room == names.room and dev not in alice.session.rooms
            with pytest.raises(ZmqchatError, match="invalid room"):
                await alice.join("#no spaces")
    run(scenario())


def test_who_lists_the_members(server, names):
    async def scenario():
        async with connected(server, names, "alice", "bob") as (alice, bob):
            await bob.who(names.room)
            who = await first(bob, lambda e: isinstance(e, ev.Who))
            assert who.rooms == {names.room: sorted([alice.name, bob.name])}
    run(scenario())


def test_history_replays_the_last_messages(server, names):
    async def scenario():
        async with client(server, names("bot"), names.room) as bot:
            for text in ("one", "two", "three"):
                await bot.say(text)
            assert await bot.drain(WAIT)
            await bot.poll(0)  # the live echoes: not what this test is about
            await bot.history(2)
            old = [await first(bot, lambda e: isinstance(e, ev.Message)) for _ in range(2)]
            assert [(e.text, e.history) for e in old] == [("two", True), ("three", True)]
    run(scenario())


def test_no_server_raises_connect_error_in_bounded_time():
    port = free_port_pair()  # nothing listens there

    async def scenario():
        bot = AsyncClient("bot", port=port, connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ConnectError, match=f"no answer from a zmqchat server at tcp://127.0.0.1:{port} "
                                               r"within 0.3s$"):
            async with bot:
                pytest.fail("connected to nothing")
        assert 0.3 <= time.monotonic() - started < 2.0
        assert ours() == set()  # the pump is gone with the sockets
        assert bot._context.closed
        with pytest.raises(ZmqchatError, match="closed"):
            await bot.poll(0)
    run(scenario())


def test_timers_run_while_nobody_iterates(server, names):
    """The server times out a client silent for 0.6 s (FAST_HEARTBEAT). A sync Client nobody polls is timed
    out; the async one, left alone just as long, is not: its pump kept heartbeating and queued the news."""
    async def scenario():
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as thread:
            async with connected(server, names, "watcher", "idle") as (watcher, idle):
                # after idle: when the sleeper times out, idle will have been left alone for longer still
                sleeper = await loop.run_in_executor(thread, lambda: Client(
                    names("sleeper"), port=server.port, rooms=[names.room], connect_timeout=WAIT))
                try:
                    seen = await until(watcher, presence(names("sleeper"), "timeout", names.room))
                finally:
                    await loop.run_in_executor(thread, lambda: sleeper.close(linger=0))
                gone = [e for e in seen if isinstance(e, ev.Presence) and e.name == idle.name and e.event != "join"]
                assert gone == []  # idle was never timed out
                assert idle.connected
                queued = await idle.poll(0)  # the news came while nobody was looking: kept for us
                assert any(presence(names("sleeper"), "timeout", names.room)(e) for e in queued)
                assert not any(isinstance(e, (ev.ConnectionLost, ev.Error)) for e in queued)
                await idle.who(names.room)  # the server still counts idle in, the sleeper out
                who = await first(idle, lambda e: isinstance(e, ev.Who))
                assert who.rooms == {names.room: sorted([idle.name, watcher.name])}
    run(scenario())


def test_close_is_clean(server, names, caplog):
    async def scenario():
        before = asyncio.all_tasks()
        watcher, bot = client(server, names("watcher"), names.room), client(server, names("bot"), names.room)
        await asyncio.gather(watcher.connect(), bot.connect())
        async with watcher:
            await bot.say("bye now")
            assert await bot.drain(WAIT)
            await bot.close()
            await bot.close()  # twice is harmless
            assert bot._push is None and bot._sub is None and bot._context.closed
            assert bot.session.state == "closed"  # the server confirmed our goodbye
            rest = [e async for e in bot.events()]  # what was queued is still there, then the end
            assert isinstance(rest[-1], ev.Closed) and any(message("bye now")(e) for e in rest)
            await first(watcher, presence(names("bot"), "quit", names.room))
            assert ours() == {watcher._pump_task}  # bot's pump is gone; the watcher's still runs
        assert asyncio.all_tasks() == before  # nothing else was left behind either

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="asyncio"):
        warnings.simplefilter("always")
        run(scenario())
        gc.collect()  # unclosed sockets and never-retrieved exceptions speak up when collected
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_curve_connects_and_handshake_failures_are_clear(chat, tmp_path):
    keydir, allowed = tmp_path / "keys", tmp_path / "allowed"
    for name in ("server", "alice", "stranger"):
        generate(name, keydir)
    allowed.mkdir()
    (allowed / "alice.key").write_text((keydir / "alice.key").read_text())
    chat.server("--curve-secret", str(keydir / "server.key_secret"), "--authorized-keys", str(allowed))

    def keys(name: str, server: str = "server") -> dict:
        return {"curve_secret": keydir / f"{name}.key_secret", "server_key": keydir / f"{server}.key"}

    async def refusal(name: str, **options) -> str:
        started = time.monotonic()
        with pytest.raises(ConnectError) as refused:
            await AsyncClient(name, port=chat.port, connect_timeout=WAIT, **options).connect()
        assert time.monotonic() - started < WAIT / 2  # the monitor's verdict, not the timeout
        return str(refused.value)

    async def authorized() -> None:
        async with AsyncClient("alice", port=chat.port, connect_timeout=WAIT, **keys("alice")) as alice:
            await alice.say("encrypted")
            assert (await first(alice, message("encrypted"))).own

    async def scenario():
        _, plain, stranger, wrong = await asyncio.gather(
            authorized(), refusal("plain"), refusal("stranger", **keys("stranger")),
            refusal("wrong", **keys("alice", "alice")))
        assert plain.startswith("the handshake with the server failed: it requires CURVE")
        assert stranger.startswith("the server refused our key")
        assert "--server-key" in wrong
        assert ours() == set()
    run(scenario())


def test_a_bad_argument_leaks_nothing_and_another_loop_is_refused(server, names, monkeypatch):
    made: list[zmq.asyncio.Context] = []

    class Recorded(zmq.asyncio.Context):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(zmq.asyncio, "Context", Recorded)
    with pytest.raises(ZmqchatError, match="invalid name"):
        AsyncClient("has space", port=server.port)
    with pytest.raises(ZmqchatError, match="CURVE needs both"):
        AsyncClient("bot", port=server.port, server_key="nowhere.key")
    assert len(made) == 2 and all(ctx.closed for ctx in made)
    monkeypatch.undo()

    bot = client(server, names("bot"), names.room)

    async def elsewhere():
        with pytest.raises(ZmqchatError, match="another event loop"):
            await bot.say("from the wrong loop")

    async def scenario():
        async with bot:
            await asyncio.to_thread(asyncio.run, elsewhere())
            assert bot.unacknowledged == 0
    run(scenario())


# Shell methods whose signature differs on purpose: the sync poll also waits on raw fds (``fds``); under
# asyncio the loop itself waits on other input.
DIFFERENT_ON_PURPOSE = {"poll"}
NOT_AWAITED = {"events", "topic"}  # an async iterator, and a read of state the pump keeps


def test_the_api_mirrors_the_sync_client():
    """Every public name of the sync Client is here, with the same parameters, awaited where it does I/O."""
    public = [name for name in dir(Client) if not name.startswith("_")]
    assert {"say", "join", "part", "who", "history", "connect", "close", "drain", "events"} <= set(public)
    for name in public:
        ours_, theirs = getattr(AsyncClient, name, None), getattr(Client, name)
        assert ours_ is not None, f"AsyncClient lacks {name}"
        if isinstance(theirs, property):
            assert isinstance(ours_, property), name
            continue
        assert inspect.iscoroutinefunction(ours_) == (name not in NOT_AWAITED), name
        if name not in DIFFERENT_ON_PURPOSE:
            assert inspect.signature(ours_).parameters.keys() == inspect.signature(theirs).parameters.keys(), name
            assert [param.default for param in inspect.signature(ours_).parameters.values()] == [
                param.default for param in inspect.signature(theirs).parameters.values()], name
    init = inspect.signature(AsyncClient).parameters
    assert [n for n in inspect.signature(Client).parameters if n not in init] == ["connect"]  # async with connects


def test_topic_page_and_search(server, names):
    async def scenario():
        async with client(server, names("bot"), names.room) as bot:
            for text in ("apples", "pears", "plums"):
                await bot.say(text)
            assert await bot.drain(WAIT)
            await bot.set_topic("fruit only")
            topic = await first(bot, lambda e: isinstance(e, ev.Topic))
            assert (topic.room, topic.text, topic.by) == (names.room, "fruit only", bot.name)
            assert bot.topic() == topic
            rid = await bot.page(before=0, limit=2)
            assert rid
            page = await first(bot, lambda e: isinstance(e, ev.Page))
            assert [m.text for m in page.messages] == ["pears", "plums"]
            for _ in range(50):  # the index may lag the newest batch by a few ms: ask until it has caught up
                await bot.search("pears", room=names.room)
                found = await first(bot, lambda e: isinstance(e, ev.SearchResults))
                if found.results:
                    break
            assert [(f.room, f.text) for f in found.results] == [(names.room, "pears")]
    run(scenario())
