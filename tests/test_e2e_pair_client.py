"""The client side of a hot-standby pair over real sockets, against two fake servers (a PULL and a PUB each,
in a thread of this test): the standby's redirect, a client that knew only the standby, and a takeover.
The real pair's end-to-end tests live with the server."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import zmq
from conftest import WAIT

from zmqchat import events as ev
from zmqchat import protocol as p
from zmqchat.client.aio import AsyncClient
from zmqchat.client.servers import Server
from zmqchat.client.session import ClientSession
from zmqchat.client.sync import Client
from zmqchat.endpoints import endpoints, free_port_pair
from zmqchat.errors import ConnectError
from zmqchat.web.hub import Hub

BEAT = 0.1  # seconds: the fake servers' heartbeat, announced in their welcomes


class FakeServer:
    """A PULL on ``port`` and a PUB on ``port + 1`` in a thread: ``role`` "active" welcomes hellos and
    echoes messages under ``term``; "standby" answers hellos with not_active naming ``active``; "dead"
    reads and publishes nothing. ``got`` holds every client message it decoded."""

    def __init__(self, role: str, term: int = 0, active: str = "") -> None:
        self.port = free_port_pair()
        self.label = f"127.0.0.1:{self.port}"
        self.role, self.term, self.active = role, term, active
        self.got: list[p.Message] = []
        self.seq = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT)

    def _run(self) -> None:
        ctx = zmq.Context()
        pull, pub = ctx.socket(zmq.PULL), ctx.socket(zmq.PUB)
        in_endpoint, out_endpoint = endpoints("127.0.0.1", self.port)
        pull.bind(in_endpoint)
        pub.bind(out_endpoint)
        self._ready.set()
        next_beat = 0.0
        try:
            while not self._stop.is_set():
                term = p.term_frame(self.term)
                if pull.poll(20):
                    frames = pull.recv_multipart()
                    if self.role != "dead":
                        for out in self._answer(p.decode_client(frames)):
                            pub.send_multipart(out[:-1] + [term])
                if self.role != "dead" and time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + BEAT
                    beat = p.ServerHeartbeat(ts=time.time(), seqs={"#general": self.seq}, role=self.role)
                    pub.send_multipart(p.encode_server(p.ALL_TOPIC, beat, term))
        finally:
            pull.close(linger=0)
            pub.close(linger=0)
            ctx.term()

    def _answer(self, msg: p.Message) -> list[list[bytes]]:
        self.got.append(msg)
        topic = p.session_topic(msg.session)  # type: ignore[attr-defined]
        if isinstance(msg, p.Hello) and self.role == "standby":
            return [p.encode_server(topic, p.ErrorReply(code=p.ERR_NOT_ACTIVE, message="standby", rid=msg.rid,
                                                        active=self.active))]
        if self.role != "active":
            return []
        if isinstance(msg, p.Hello):
            welcome = p.Welcome(session=msg.session, name=msg.name, motd="fake", heartbeat_interval=BEAT,
                                max_text_bytes=1000, server_time=time.time(), epoch="e1", rid=msg.rid)
            end = p.HistoryEnd(room="#general", after=msg.last_seq.get("#general", 0), upto=self.seq, count=0,
                               newest=self.seq, before=0 if "#general" not in msg.last_seq else self.seq + 1)
            return [p.encode_server(topic, welcome), p.encode_server(topic, end)]
        if isinstance(msg, p.Say):
            if any(isinstance(m, p.Say) and m.mid == msg.mid for m in self.got[:-1]):
                return []  # a resend of one already published (the real pair replicates this)
            self.seq += 1
            echo = p.RoomMessage(room=msg.room, seq=self.seq, ts=time.time(), sender="alice", text=msg.text,
                                 mid=msg.mid)
            return [p.encode_server(p.room_topic(msg.room), echo)]
        if isinstance(msg, p.Bye):
            return [p.encode_server(topic, p.Goodbye(session=msg.session, rid=msg.rid))]
        return []

    def said(self) -> list[str]:
        return [m.text for m in self.got if isinstance(m, p.Say)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)


@pytest.fixture
def fakes():
    made: list[FakeServer] = []

    def make(role: str, term: int = 0, active: str = "") -> FakeServer:
        made.append(FakeServer(role, term, active))
        return made[-1]

    yield make
    for server in made:
        server.stop()


def wait_for_event(client: Client, kind: type, timeout: float = WAIT) -> tuple[ev.Event, list[ev.Event]]:
    seen: list[ev.Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found, _ = client.poll(0.1)
        seen += found
        for event in found:
            if isinstance(event, kind):
                return event, seen
    pytest.fail(f"no {kind.__name__} within {timeout}s; saw {seen}")


def test_the_standby_points_the_client_at_the_active(fakes):
    active = fakes("active", term=1)
    standby = fakes("standby", term=1, active=active.label)
    with Client("alice", servers=[standby.label, active.label], connect_timeout=WAIT) as client:
        assert client.server == active.label
        notices = [e for e in client.poll(0)[0] if isinstance(e, ev.Notice)]
        assert notices == [ev.Notice(f"{standby.label} is the standby; switching to {active.label}")]
        client.say("hello")
        assert client.drain(WAIT)
    assert standby.said() == [] and active.said() == ["hello"]  # the PUSH went to one server only


def test_a_client_that_knows_only_the_standby_finds_the_active(fakes):
    active = fakes("active", term=1)
    standby = fakes("standby", term=1, active=active.label)
    with Client("alice", servers=[standby.label], connect_timeout=WAIT) as client:
        assert client.servers == [standby.label, active.label] and client.server == active.label
        client.say("found you")
        assert client.drain(WAIT)  # the echo came through the SUB's new connection to the active's PUB
    assert active.said() == ["found you"]


def test_a_takeover_moves_the_client_and_nothing_is_lost(fakes):
    first = fakes("active", term=1)
    second = fakes("standby", term=1, active=first.label)
    with Client("alice", servers=[first.label, second.label], connect_timeout=WAIT) as client:
        client.say("before")
        assert client.drain(WAIT)
        first.role = "dead"  # silent: its PULL takes messages and nothing comes back
        mid = client.say("during")
        lost, _ = wait_for_event(client, ev.ConnectionLost)
        assert lost == ev.ConnectionLost(switching_to=second.label)
        second.role, second.term = "active", 2  # our hello was the vote
        welcome, _ = wait_for_event(client, ev.Connected)
        assert welcome.reconnected and client.server == second.label
        assert client.drain(WAIT)  # "during" was resent to the new active and echoed
        assert mid not in client.session.pending
    assert "during" in second.said() and "before" not in second.said()


def test_connect_names_the_servers_it_tried(fakes):
    dead = [fakes("dead"), fakes("dead")]
    client = Client("alice", servers=[s.label for s in dead], connect=False, connect_timeout=2.5)
    with pytest.raises(ConnectError, match=f"no answer from a zmqchat server at {dead[0].label} or "
                                           f"{dead[1].label} within 2.5s"):
        client.connect()


def test_the_async_client_follows_a_takeover(fakes):
    first = fakes("active", term=1)
    second = fakes("standby", term=1, active=first.label)

    async def body() -> None:
        async with AsyncClient("alice", servers=[first.label, second.label], connect_timeout=WAIT) as client:
            assert client.server == first.label
            first.role = "dead"
            second.role, second.term = "active", 2  # another client's vote: its active beats tell us
            deadline = asyncio.get_running_loop().time() + WAIT
            seen: list[ev.Event] = []
            while not any(isinstance(e, ev.Connected) and e.reconnected for e in seen):
                assert asyncio.get_running_loop().time() < deadline, seen
                seen += await client.poll(0.1)
            assert ev.ConnectionLost(switching_to=second.label) in seen
            assert client.server == second.label
            await client.say("after")
            assert await client.drain(WAIT)

    asyncio.run(body())
    assert second.said() == ["after"]


class Member:
    def __init__(self, name: str) -> None:
        self.session = ClientSession(name, ["#general"])
        self.events: list[ev.Event] = []

    def deliver(self, events: list[ev.Event]) -> None:
        self.events += events


def test_the_hub_moves_its_push_and_every_session_together(fakes):
    first = fakes("active", term=1)
    second = fakes("standby", term=1, active=first.label)
    servers = [Server(s.label, *endpoints("127.0.0.1", s.port)) for s in (second, first)]  # the standby first

    async def until(condition, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, what
            await asyncio.sleep(0.02)  # the hub's pump runs meanwhile; this only looks

    async def body() -> None:
        hub = Hub(servers[0].in_endpoint, servers[0].out_endpoint, servers=servers)
        await hub.start()
        try:
            members = [Member("alice"), Member("bob")]
            for member in members:
                hub.add(member)
            await until(lambda: all(m.session.connected for m in members), "both welcomed by the active")
            assert hub.server == 1 and hub.in_endpoint == servers[1].in_endpoint
            first.role = "dead"
            second.role, second.term = "active", 2
            await until(lambda: all(m.session.connected and m.session.server == 0 for m in members),
                        "both moved to the new active")
            assert hub.server == 0
            for member in members:
                assert ev.ConnectionLost(switching_to=second.label) in member.events
        finally:
            await hub.close(linger=0)

    asyncio.run(body())
    assert {m.name for m in second.got if isinstance(m, p.Hello)} == {"alice", "bob"}


def test_a_hub_that_knows_only_the_standby_finds_the_active(fakes):
    active = fakes("active", term=1)
    standby = fakes("standby", term=1, active=active.label)
    only = Server(standby.label, *endpoints("127.0.0.1", standby.port))

    async def body() -> None:
        hub = Hub(only.in_endpoint, only.out_endpoint, servers=[only])
        await hub.start()
        try:
            members = [Member("alice"), Member("bob")]
            for member in members:
                hub.add(member)
            deadline = asyncio.get_running_loop().time() + WAIT
            while not all(m.session.connected for m in members):
                assert asyncio.get_running_loop().time() < deadline, [m.events for m in members]
                await asyncio.sleep(0.02)
            assert [s.label for s in hub.servers] == [standby.label, active.label] and hub.server == 1
            assert all(m.session.servers == [standby.label, active.label] for m in members)
        finally:
            await hub.close(linger=0)

    asyncio.run(body())


def test_the_servers_argument(zmq_ctx, tmp_path):
    from zmqchat.errors import ZmqchatError
    from zmqchat.keys import generate

    client = Client("alice", servers=[("127.0.0.1", 4444), "[::1]:5444"], context=zmq_ctx, connect=False)
    assert client.servers == ["127.0.0.1:4444", "[::1]:5444"] and client.server == "127.0.0.1:4444"
    assert (client.in_endpoint, client.out_endpoint) == ("tcp://127.0.0.1:4444", "tcp://127.0.0.1:4445")
    single = Client("alice", host="10.0.0.1", port=6000, context=zmq_ctx, connect=False)
    assert single.servers == ["10.0.0.1:6000"] and single.in_endpoint == "tcp://10.0.0.1:6000"  # as before
    with pytest.raises(ZmqchatError, match="either servers or in/out endpoints"):
        Client("alice", servers=["a:1"], in_endpoint="ipc:///tmp/x", context=zmq_ctx, connect=False)
    with pytest.raises(ZmqchatError, match="is not HOST:PORT"):
        Client("alice", servers=["a"], context=zmq_ctx, connect=False)
    (_, mine_secret), (a, _), (b, _) = (generate(n, tmp_path) for n in ("me", "a", "b"))
    with pytest.raises(ZmqchatError, match="3 server keys for 2 servers"):
        Client("alice", servers=["a:1", "b:1"], curve_secret=mine_secret, server_key=[a, b, a], context=zmq_ctx,
               connect=False)
    keyed = Client("alice", servers=["a:1", "b:1"], curve_secret=mine_secret, server_key=[a, b], context=zmq_ctx,
                   connect=False)
    assert keyed._servers[0].key != keyed._servers[1].key and not keyed.session.discover  # a new one's key: unknown
    assert Client("alice", servers=["a:1", "b:1"], curve_secret=mine_secret, server_key=a, context=zmq_ctx,
                  connect=False).session.discover
