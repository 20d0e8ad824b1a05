"""Availability against a real server: frame bombs, request crowds, floods from one address, handshake
floods, a small PUB queue. Attackers connect from 127.0.0.2, so the server tells them from the tests' 127.0.0.1."""

from __future__ import annotations

import time

import zmq
from conftest import WAIT, texts_from
from test_e2e_integrity import PATIENT, _hello, _recv, _stats

from zmqchat import Client
from zmqchat import events as ev
from zmqchat import protocol as p


def _raw(zmq_ctx, chat):
    push, sub = zmq_ctx.socket(zmq.PUSH), zmq_ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(f"tcp://127.0.0.1:{chat.port + 1}")
    push.connect(f"tcp://127.0.0.1:{chat.port}")
    return push, sub


def test_a_message_of_many_frames_is_dropped_and_the_server_goes_on(chat, zmq_ctx):
    server = chat.server()
    server.expect("file descriptors: ", stream="err")
    push, sub = _raw(zmq_ctx, chat)
    _hello(push, sub, "s1", "alice")
    push.send_multipart([b""] * 200_000)  # a frame bomb: libzmq queues it whole, the server drops it
    push.send_multipart(p.encode_client(p.Say(session="s1", room="#general", text="still here", mid="s1.1")))
    _recv(sub, lambda t, m: isinstance(m, p.RoomMessage) and m.text == "still here")
    stats = _stats(push, sub, "s1")
    assert stats["rejected"] >= 1 and stats["errors"] == 0
    assert server.count("too many frames", stream="err") == 1


def _attacker(zmq_ctx, chat, kind=zmq.PUSH, port_offset=0):
    """A socket that connects from 127.0.0.2: to the server another address than the tests' 127.0.0.1."""
    sock = zmq_ctx.socket(kind)
    sock.connect(f"tcp://127.0.0.2:0;127.0.0.1:{chat.port + port_offset}")
    return sock


def test_a_crowd_asking_for_history_hears_busy_while_a_member_is_answered(chat, zmq_ctx):
    chat.server("--work-rate", "300", *PATIENT)  # 60 publications at once, 30 of them for browsing
    endpoint = {"port": chat.port, "connect_timeout": WAIT}
    with Client("alice", **endpoint) as alice:
        for i in range(100):
            alice.say(f"line {i}")
        assert alice.drain(WAIT)
        push, sub = _raw(zmq_ctx, chat)
        sessions = [f"crowd{i}" for i in range(20)]
        for s in sessions:
            _hello(push, sub, s, f"c{s}")
        busy = set()
        deadline = time.monotonic() + WAIT
        while len(busy) < 5 and time.monotonic() < deadline:
            for s in sessions:  # each within its own bucket; together past the server's budget
                push.send_multipart(p.encode_client(p.HistoryRequest(session=s, room="#general", after=0, before=0,
                                                                     limit=100, rid=f"h-{s}")))
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                if not sub.poll(50):
                    continue
                _t, msg = p.decode_server(sub.recv_multipart())
                if isinstance(msg, p.ErrorReply) and msg.code == p.ERR_BUSY and msg.rid.startswith("h-"):
                    assert msg.retry_after > 0
                    busy.add(msg.rid)
        assert len(busy) >= 5
        alice.who()  # browsing too, so it may be told busy as well: the client asks again quietly
        answer = next(e for e in alice.events(WAIT) if isinstance(e, (ev.Who, ev.Error)))
        assert isinstance(answer, ev.Who) and "alice" in answer.rooms["#general"]
        alice.stats()
        stats = next(e for e in alice.events(WAIT) if isinstance(e, ev.Stats)).stats
        assert stats["busy"] >= 5


def test_an_address_sending_past_its_rate_is_dropped_unread(chat, zmq_ctx):
    chat.server("--address-rate", "100", "--trusted", "")
    push = _attacker(zmq_ctx, chat)
    for _ in range(3000):
        push.send_multipart([p.VERSION, b"ping", b"{not even json"])
    with Client("alice", port=chat.port, connect_timeout=WAIT) as alice:  # 127.0.0.1: a budget of its own
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            alice.stats()
            stats = next(e for e in alice.events(WAIT) if isinstance(e, ev.Stats)).stats
            if stats["shed"] + stats["rejected"] >= 3000:
                break
    assert stats["shed"] >= 2000 and stats["rejected"] < 1000  # most were never parsed


def test_handshakes_past_an_addresss_budget_are_refused_and_others_get_in(chat, zmq_ctx):
    server = chat.server("--handshake-rate", "2", "--trusted", "")  # 20 at once from one address, then 2 a second
    socks = [_attacker(zmq_ctx, chat) for _ in range(60)]
    with Client("alice", port=chat.port, connect_timeout=WAIT) as alice:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            alice.stats()
            stats = next(e for e in alice.events(WAIT) if isinstance(e, ev.Stats)).stats
            if stats["refused_handshakes"] >= 30:
                break
    assert stats["refused_handshakes"] >= 30
    assert server.count("too many from one address", stream="err") >= 1
    for sock in socks:
        sock.close(linger=0)


def test_a_reader_loses_nothing_through_a_small_pub_queue_beside_one_that_never_reads(chat, zmq_ctx):
    """History replies stay under the PUB queue (a quarter of it), so gap fills always arrive whole."""
    server = chat.server("--rate", "0", "--pub-hwm", "100", "--history", "50000", *PATIENT)
    server.expect("limits: 100 publications queued per subscriber", stream="err")
    stuck = zmq_ctx.socket(zmq.SUB)  # subscribed to everything, never read
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.subscribe(b"")
    stuck.connect(f"tcp://127.0.0.1:{chat.port + 1}")
    endpoint = {"port": chat.port, "connect_timeout": WAIT}
    with Client("reader", rcvhwm=10, **endpoint) as reader, Client("writer", **endpoint) as writer:
        texts = [f"burst {i}" for i in range(3000)]
        for text in texts:
            writer.say(text)
        assert writer.drain(30)
        assert texts_from(reader, "writer", len(texts)) == texts
