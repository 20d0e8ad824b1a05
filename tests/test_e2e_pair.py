"""A hot-standby pair, end to end through the console scripts: two zmqchat-server processes with --peer,
zmqchat-client --servers processes, kill -9, and the two history files compared row by row."""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import WAIT, Proc, script

from zmqchat.endpoints import free_port_pair

ROUNDS_TEXTS = 16  # messages per client per room in one round


def _ports() -> tuple[int, int]:
    a = free_port_pair(count=3)
    while True:
        b = free_port_pair(count=3)
        if abs(a - b) >= 3:
            return a, b


class Pair:
    """Two servers of one pair (A, B), and clients that know both."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ports = list(_ports())
        self.dirs = [tmp / "A", tmp / "B"]
        self.servers: list[Proc | None] = [None, None]
        self.procs: list[Proc] = []

    def start(self, i: int, *extra: str, peer_connect: str = "", peer_bind: str = "") -> Proc:
        port, other = self.ports[i], self.ports[1 - i]
        argv = script("zmqchat-server") + ["--port", str(port), "--data-dir", str(self.dirs[i]),
                                           "--stats-interval", "0", *extra]
        if peer_connect or peer_bind:
            argv += ["--peer-connect", peer_connect, "--peer-bind", peer_bind]
        else:
            argv += ["--peer", f"127.0.0.1:{other}"]
        proc = Proc(argv, stdin=False)
        self.procs.append(proc)
        self.servers[i] = proc
        proc.expect("listening", stream="err")
        return proc

    @property
    def servers_flag(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def client(self, name: str, *extra: str) -> Proc:
        proc = Proc(script("zmqchat-client") + ["--name", name, "--servers", self.servers_flag, "--json",
                                                "--drain-timeout", "30", *extra])
        self.procs.append(proc)
        proc.expect('"type": "connected"', timeout=15)
        return proc

    def history(self, i: int) -> Path:
        return next(self.dirs[i].glob("history-*[0-9].sqlite3"))

    def rows(self, i: int) -> list[tuple]:
        db = sqlite3.connect(self.history(i), timeout=5)  # a reader beside the server (WAL)
        try:
            return db.execute("SELECT room, seq, body FROM messages ORDER BY room, seq").fetchall()
        finally:
            db.close()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def pair(tmp_path):
    made = Pair(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def up(pair: Pair, first: int = 0) -> tuple[Proc, Proc]:
    """Start the pair: ``first`` becomes active, the other its standby, in sync."""
    active = pair.start(first)
    active.expect("pair: ACTIVE", stream="err")
    standby = pair.start(1 - first)
    standby.expect("pair: STANDBY", stream="err")
    active.expect("the standby is in sync", stream="err")
    return active, standby


def messages(proc: Proc) -> list[dict]:
    out = []
    for line in list(proc.lines["out"]):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("type") == "message" and not event.get("history"):
            out.append(event)
    return out


def join_dev(clients: list[Proc]) -> None:
    for client in clients:
        client.send("/join #dev")
    for client in clients:
        client.expect('"type": "presence".*"room": "#dev".*"event": "join"')


def feed(client: Proc, name: str, tag: str, pause: threading.Event | None = None) -> list[tuple[str, str]]:
    """Type this round's messages, alternating rooms; returns (room, text) in the order sent."""
    sent = []
    for i in range(ROUNDS_TEXTS):
        for room, short in (("#general", "g"), ("#dev", "d")):
            text = f"{name}-{tag}-{short}{i:03d}"
            client.send(f"/join {room}", text)  # /join of a joined room only switches to it
            sent.append((room, text))
            time.sleep(0.01)  # sleep-ok: a typist's pace, not synchronisation
    return sent


def check_round(clients: dict[str, Proc], sent: dict[str, list[tuple[str, str]]], tag: str) -> None:
    """Every member got every message of the round exactly once, in order per room, seqs rising."""
    for sender_sent in sent.values():
        for room in ("#general", "#dev"):
            last_text = [t for r, t in sender_sent if r == room][-1]
            for reader in clients.values():
                reader.expect(json.dumps(last_text), timeout=30)
    for reader_name, reader in clients.items():
        got = [m for m in messages(reader) if f"-{tag}-" in m["text"]]
        for room in ("#general", "#dev"):
            in_room = [m for m in got if m["room"] == room]
            seqs = [m["seq"] for m in in_room]
            assert seqs == sorted(set(seqs)), f"{reader_name} {room}: seqs not rising or doubled"
            for name, sender_sent in sent.items():
                texts = [m["text"] for m in in_room if m["sender"] == name]
                assert texts == [t for r, t in sender_sent if r == room], f"{reader_name} saw {name} in {room}"


def oldest(rows: list[tuple]) -> dict[str, int]:
    """Room -> the oldest seq a store still keeps."""
    out: dict[str, int] = {}
    for room, seq, _body in rows:
        out[room] = min(out.get(room, seq), seq)
    return out


def kept(rows: list[tuple], floors: dict[str, int]) -> list[tuple]:
    return [row for row in rows if row[1] >= floors.get(row[0], 0)]


def stores_match(pair: Pair, timeout: float = 15.0) -> None:
    """Both history files hold the same rows (each trims what is past --history on its own schedule, so
    of a room that outgrew it, the rows both still keep)."""
    deadline = time.monotonic() + timeout
    while True:
        a, b = pair.rows(0), pair.rows(1)
        fa, fb = oldest(a), oldest(b)
        floors = {room: max(fa.get(room, 0), fb.get(room, 0)) for room in fa.keys() | fb.keys()}
        if kept(a, floors) == kept(b, floors) or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # sleep-ok: polling another process's file, bounded by the deadline
    assert len(a) > 0
    assert kept(a, floors) == kept(b, floors)


def run_round(pair: Pair, clients: dict[str, Proc], tag: str, kill: Proc | None, watch: Proc) -> dict:
    """Every client types; once ``watch`` saw a tenth of it, ``kill`` is killed with SIGKILL."""
    sent: dict[str, list] = {}
    threads = [threading.Thread(target=lambda n=name, c=client: sent.__setitem__(n, feed(c, n, tag)), daemon=True)
               for name, client in clients.items()]
    for thread in threads:
        thread.start()
    if kill is not None:
        watch.expect(f'"text": "[a-z0-9]+-{tag}-g002"', timeout=20)
        kill.signal(signal.SIGKILL)
        kill.wait()
    for thread in threads:
        thread.join(WAIT * 3)
    return sent


def test_active_killed_mid_stream_loses_nothing_then_again_with_roles_swapped(pair):
    a, b = up(pair, first=0)
    clients = {name: pair.client(name) for name in ("c0", "c1", "c2", "c3")}
    join_dev(list(clients.values()))
    sent = run_round(pair, clients, "r1", kill=a, watch=clients["c1"])
    b.expect("cannot reach it either: taking over", stream="err", timeout=15)
    check_round(clients, sent, "r1")
    for client in clients.values():
        assert client.count('"switching_to": "127.0.0.1:') >= 1  # each saw the switch
        assert client.count("no longer in history") == 0
    # the old active comes back as standby, is caught up, and both stores hold the same rows
    a = pair.start(0)
    a.expect("pair: STANDBY", stream="err")
    b.expect("the standby is in sync", stream="err", timeout=15)
    stores_match(pair)
    # roles swapped: now kill B, the active
    sent = run_round(pair, clients, "r2", kill=b, watch=clients["c2"])
    a.expect("cannot reach it either: taking over", stream="err", timeout=15)
    check_round(clients, sent, "r2")
    b = pair.start(1)
    b.expect("pair: STANDBY", stream="err")
    a.expect("the standby is in sync", stream="err", start=0, timeout=15)
    stores_match(pair)


def test_standby_killed_mid_stream_goes_unnoticed_and_catches_up(pair):
    a, b = up(pair, first=0)
    clients = {name: pair.client(name) for name in ("c0", "c1")}
    join_dev(list(clients.values()))
    sent = run_round(pair, clients, "s1", kill=b, watch=clients["c0"])
    a.expect("running alone", stream="err", timeout=15)
    check_round(clients, sent, "s1")
    for client in clients.values():
        assert client.count('"switching_to": "127') == 0 and client.count('"type": "connection_lost"') == 0
    b = pair.start(1)
    b.expect("pair: STANDBY", stream="err")
    a.expect("the standby is in sync", stream="err", timeout=15)
    stores_match(pair)


class Forwarder:
    """A TCP forwarder we control between the two servers' peer links: ``cut()`` stops it."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.cut_off = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut_off.is_set():
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            try:
                outbound = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                inbound.close()
                continue
            self.socks += [inbound, outbound]
            for src, dst in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.cut_off.is_set():
                    return
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        self.cut_off.set()
        self.listener.close()
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def test_the_peer_link_cut_alone_makes_no_second_active(pair):
    a_port, b_port = pair.ports
    to_b, to_a = Forwarder(b_port + 2), Forwarder(a_port + 2)
    try:
        a = pair.start(0, peer_bind=f"tcp://127.0.0.1:{a_port + 2}", peer_connect=f"tcp://127.0.0.1:{to_b.port}")
        a.expect("pair: ACTIVE", stream="err")
        b = pair.start(1, peer_bind=f"tcp://127.0.0.1:{b_port + 2}", peer_connect=f"tcp://127.0.0.1:{to_a.port}")
        a.expect("the standby is in sync", stream="err")
        clients = {name: pair.client(name) for name in ("c0", "c1")}
        join_dev(list(clients.values()))
        to_b.cut()
        to_a.cut()
        a.expect("running alone", stream="err", timeout=15)
        b.expect("the active is silent on the peer link", stream="err", timeout=15)
        sent = run_round(pair, clients, "l1", kill=None, watch=clients["c0"])
        check_round(clients, sent, "l1")  # the clients still reach the active: it serves them alone
        # a client that starts now and asks the standby first is no vote: it is sent on, to the active
        late = Proc(script("zmqchat-client") + ["--name", "late", "--json", "--servers",
                                                f"127.0.0.1:{b_port},127.0.0.1:{a_port}"])
        pair.procs.append(late)
        late.expect('"type": "connected"', timeout=15)
        late.send("late hello")
        clients["c0"].expect('"text": "late hello"')
        assert b.count("pair: ACTIVE", stream="err") == 0
        for client in clients.values():
            assert client.count('"type": "connection_lost"') == 0
    finally:
        to_b.cut()
        to_a.cut()


def test_a_client_that_knows_only_the_standby_is_sent_to_the_active(pair):
    a = pair.start(0, "--metrics", "127.0.0.1:0")
    a.expect("pair: ACTIVE", stream="err")
    pair.start(1)
    a.expect("the standby is in sync", stream="err")
    scrape = urllib.request.urlopen(re.search(r"http://\S+", a.expect("metrics: http", stream="err")).group(0),
                                    timeout=5).read().decode()
    gauges = [line for line in scrape.splitlines() if line.startswith("zmqchat_pair_")]
    assert "zmqchat_pair_active 1.0" in gauges and "zmqchat_pair_in_sync 1.0" in gauges, (gauges, a.lines["err"])
    proc = Proc(script("zmqchat-client") + ["--name", "dora", "--port", str(pair.ports[1]), "--json"])
    pair.procs.append(proc)
    proc.expect('"type": "connected"', timeout=15)
    proc.send("hello from dora")
    proc.expect('"text": "hello from dora"')
    assert any(f"127.0.0.1:{pair.ports[0]}" in line for line in proc.lines["out"])  # told whom to reach


def test_a_clean_stop_of_the_active_hands_over_at_once(pair):
    a, b = up(pair, first=0)
    clients = {name: pair.client(name) for name in ("c0", "c1")}
    join_dev(list(clients.values()))
    a.signal(signal.SIGTERM)
    assert a.wait() == 0
    assert a.count("handed over to the standby", stream="err") == 1
    b.expect("the active handed over", stream="err")
    b.expect("pair: ACTIVE", stream="err")
    sent = run_round(pair, clients, "h1", kill=None, watch=clients["c0"])
    check_round(clients, sent, "h1")
    a = pair.start(0)  # back as standby: the operator's switch back is this stop-and-start again
    a.expect("pair: STANDBY", stream="err")
    b.expect("the standby is in sync", stream="err", timeout=15)
    stores_match(pair)


def test_an_out_of_sync_standby_waits_for_the_operator_and_the_old_active_is_moved_aside(pair):
    a, b = up(pair, first=0)
    clients = {name: pair.client(name) for name in ("c0", "c1")}
    clients["c0"].send("said while both ran")
    clients["c1"].expect('"text": "said while both ran"')
    b.signal(signal.SIGKILL)
    b.wait()
    a.expect("running alone", stream="err", timeout=15)
    clients["c0"].send("said while alone")  # published by A alone: on A's disk only
    clients["c1"].expect('"text": "said while alone"')
    clients["c1"].send("/join #late")  # and a room B never heard of: c1 in it first, so it sees c0 come
    clients["c1"].expect('"room": "#late".*"name": "c1".*"event": "join"')
    clients["c0"].send("/join #late")
    clients["c1"].expect('"room": "#late".*"name": "c0".*"event": "join"')
    clients["c0"].send("new room while alone")
    clients["c1"].expect('"text": "new room while alone"')
    a.signal(signal.SIGKILL)
    a.wait()
    b = pair.start(1)  # its store is not empty and its peer is silent: it waits
    b.expect("waiting for the peer", stream="err", timeout=15)
    assert b.count("pair: ACTIVE", stream="err") == 0
    b.signal(signal.SIGUSR1)  # the operator's order, knowing what B lacks
    b.expect("forced active by the operator", stream="err")
    b.expect("numbers skipped", stream="err")
    b.expect("pair: ACTIVE", stream="err")
    for client in clients.values():
        client.expect('"type": "connected".*"reconnected": true', timeout=15)
    clients["c0"].send("said after the force")
    got = clients["c1"].expect('"text": "said after the force"')
    clients["c1"].expect("may be lost|lost messages")  # told, not silently skipped
    assert json.loads(got)["seq"] > 1_000_000  # never a number c1 saw from A
    clients["c0"].send("/join #late", "late after the force")
    late = json.loads(clients["c1"].expect('"text": "late after the force"'))
    assert late["room"] == "#late" and late["seq"] > 1_000_000  # a room new to B numbers above the skip too
    a = pair.start(0)  # the old active finds a newer term: standby, its diverged file moved aside
    a.expect("pair: STANDBY", stream="err")
    a.expect("moved aside", stream="err", timeout=15)
    b.expect("the standby is in sync", stream="err", timeout=15)
    assert list(pair.dirs[0].glob("history-*.sqlite3.diverged-*"))
    stores_match(pair)


def test_a_curve_pair_with_a_key_each_fails_over_and_its_link_takes_only_the_peer(pair, tmp_path):
    import zmq

    from zmqchat import keys as zkeys
    from zmqchat.server import pair as peer

    keydir = tmp_path / "keys"
    for name in ("sa", "sb", "alice", "bob", "stranger"):
        zkeys.generate(name, keydir)
    secret = [str(keydir / "sa.key_secret"), str(keydir / "sb.key_secret")]
    public = [str(keydir / "sa.key"), str(keydir / "sb.key")]
    for i in (0, 1):
        pair.start(i, "--curve-secret", secret[i], "--peer-key", public[1 - i])
        if i == 0:
            pair.servers[0].expect("pair: ACTIVE", stream="err")
    a, b = pair.servers
    a.expect("the standby is in sync", stream="err")
    clients = {name: pair.client(name, "--curve-secret", str(keydir / f"{name}.key_secret"),
                                 "--server-key", ",".join(public)) for name in ("alice", "bob")}
    # a stranger's key on A's peer link claims to be a newer active: refused at the handshake
    ctx = zmq.Context()
    try:
        forger = ctx.socket(zmq.PUSH)
        forger.linger = 0
        forger.curve_publickey, forger.curve_secretkey = zkeys.load_secret(keydir / "stranger.key_secret")
        forger.curve_serverkey = zkeys.load_public(keydir / "sa.key")
        forger.connect(f"tcp://127.0.0.1:{pair.ports[0] + 2}")
        fake = peer.encode(b"state", {"node": "zz", "role": "active", "term": 99, "position": 10**6, "epoch": "x",
                                      "empty": False, "prefer": 1, "synced": True, "up": 1e6})
        for _ in range(5):
            try:
                forger.send_multipart(fake, zmq.NOBLOCK)
            except zmq.Again:
                pass
        for n in range(3):
            clients["alice"].send(f"curve {n}")
            clients["bob"].expect(f'"text": "curve {n}"')
        assert a.count("stepping down", stream="err") == 0 and a.count("pair: STANDBY", stream="err") == 0
    finally:
        ctx.destroy(linger=0)
    a.signal(signal.SIGKILL)
    a.wait()
    b.expect("cannot reach it either: taking over", stream="err", timeout=15)
    clients["alice"].send("after the failover")
    clients["bob"].expect('"text": "after the failover"', timeout=15)


def test_a_standby_joining_late_is_caught_up_over_many_messages(pair):
    a = pair.start(0, "--rate", "0")  # first start, peer not up: the first server up becomes active
    a.expect("pair: ACTIVE", stream="err", timeout=15)
    writer = pair.client("w")
    writer.send(*[f"early {n:04d}" for n in range(1200)], "/join #dev", *[f"dev {n:04d}" for n in range(300)])
    writer.expect('"text": "dev 0299"', timeout=30)
    b = pair.start(1, "--rate", "0")
    b.expect("pair: STANDBY", stream="err")
    a.expect("the standby is in sync", stream="err", timeout=30)
    assert len([r for r in pair.rows(1) if r[0] == "#general"]) >= 1000  # --history: the newest 1000 at least
    stores_match(pair)
    writer.send("live after the catch-up")
    writer.expect('"text": "live after the catch-up"')
    stores_match(pair)


def test_browsers_behind_the_gateway_ride_through_a_failover(pair):
    """zmqchat-web with --servers: the gateway's one PUSH follows the new active for every browser, and
    the pages see each message once, in order."""
    import asyncio

    from aiohttp.test_utils import TestServer
    from test_web import Browser, joined

    from zmqchat.client.servers import server_list
    from zmqchat.web.gateway import Config, Gateway

    a, b = up(pair, first=0)

    async def body() -> None:
        servers = tuple(server_list(pair.servers_flag))
        gw = Gateway(Config(servers=servers, in_endpoint=servers[0].in_endpoint,
                            out_endpoint=servers[0].out_endpoint, http_port=0, ws_rate=500, ws_burst=500))
        web = TestServer(gw.app(), host="127.0.0.1", port=0)
        await web.start_server()
        alice, bob = Browser(web), Browser(web)
        try:
            await joined(alice, "alice")
            await joined(bob, "bob")
            for n in range(1, 41):
                await alice.send({"kind": "say", "id": f"a{n}", "room": "#general", "text": f"web {n}"})
                if n == 10:
                    await bob.kind("message", text="web 5")
                    a.signal(signal.SIGKILL)
                await asyncio.sleep(0.02)  # sleep-ok: a typist's pace
            await bob.kind("message", text="web 40", timeout=30)
            texts = [e["text"] for e in bob.events if e["type"] == "message"]
            assert texts == [f"web {n}" for n in range(1, 41)]  # once each, in order, across the failover
            await alice.kind("message", id="a40", timeout=30)  # her own echo: sent
            mine = [e["id"] for e in alice.events if e["type"] == "message" and e.get("own")]
            assert mine == [f"a{n}" for n in range(1, 41)]
        finally:
            await alice.close()
            await bob.close()
            await web.close()

    asyncio.run(body())
    b.expect("cannot reach it either: taking over", stream="err")


def test_the_peer_link_reads_frames_raw_and_drops_a_message_past_its_limit():
    # what the loop's receive and send do on the link, on real sockets: a message of more frames than the
    # limit is read and dropped, frame by frame, and the next one arrives whole
    import zmq

    from zmqchat.server.loop import _NOBLOCK, _raw_recv, _recv_message, _send_frames

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        _send_frames(push, [b"f%d" % i for i in range(10)], _NOBLOCK)
        _send_frames(push, [b"a", b"b", b"c"], _NOBLOCK)
        got = []
        while len(got) < 2:
            assert pull.poll(int(WAIT * 1000)), "nothing arrived"
            got.append(_recv_message(pull, _raw_recv(pull, _NOBLOCK, False), 4))
        assert got == [None, [b"a", b"b", b"c"]]
        push.close(0)
        full = ctx.socket(zmq.PUSH)  # no peer at all: NOBLOCK says so, and nothing is half sent
        full.setsockopt(zmq.SNDHWM, 1)
        with pytest.raises(zmq.Again):
            _send_frames(full, [b"x", b"y"], _NOBLOCK)
        full.close(0)
    finally:
        ctx.destroy(0)
