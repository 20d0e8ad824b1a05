"""Integrity against a real server: no member can end, silence or cancel another; exactly-once does not
forget; numbers of any size and other people's text are harmless. CURVE tests use real keys."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest
import zmq
from conftest import WAIT, Proc
from test_e2e_security import _raw_peer, client_keys, keys, secure_server  # noqa: F401 (keys is a fixture)

from zmqchat import protocol as p

PATIENT = ["--heartbeat-interval", "1", "--heartbeat-misses", "30"]


def _recv(sub: zmq.Socket, predicate, timeout: float = WAIT):
    """The first message on ``sub`` for which ``predicate(topic, msg)`` holds, within ``timeout``."""
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if poller.poll(50):
            try:
                topic, msg = p.decode_server(sub.recv_multipart())
            except p.ProtocolError:
                continue
            for one in msg.messages if isinstance(msg, p.RoomMessages) else [msg]:
                if predicate(topic, one):
                    return one
    pytest.fail("expected message never came")


def _hello(push: zmq.Socket, sub: zmq.Socket, session: str, name: str, rooms=("#general",)) -> p.Welcome:
    """Hello until the welcome arrives (our subscription may not be in place yet), bounded."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        push.send_multipart(p.encode_client(p.Hello(session=session, name=name, rooms=list(rooms), rid="h1")))
        try:
            return _recv(sub, lambda t, m: isinstance(m, p.Welcome) and m.session == session, timeout=0.5)
        except pytest.fail.Exception:
            continue
    pytest.fail(f"no welcome for {name}")


def _stats(push: zmq.Socket, sub: zmq.Socket, session: str) -> dict:
    push.send_multipart(p.encode_client(p.StatsRequest(session=session, rid="st")))
    return _recv(sub, lambda t, m: isinstance(m, p.StatsReply) and t == p.session_topic(session)).stats


def _json_events(proc: Proc, kind: str) -> list[dict]:
    return [e for e in map(json.loads, proc.lines["out"]) if e["type"] == kind]


def test_another_key_cannot_end_silence_or_cancel_a_member(chat, keys, zmq_ctx):  # noqa: F811
    keydir, allowed = keys
    secure_server(chat, keydir, allowed, "--max-message-bytes", "4096", "--max-text-bytes", "2048")
    bob = chat.client("bob", *client_keys(keydir, "bob"), "--json", "--drain-timeout", "20")
    alice = chat.client("alice", *client_keys(keydir, "alice"), "--json")
    push, sub = _raw_peer(zmq_ctx, chat, keydir, "mallory")
    _hello(push, sub, "mal", "mallory")
    bob.send("first")
    first = _recv(sub, lambda t, m: isinstance(m, p.RoomMessage) and m.sender == "bob")
    victim = first.mid.rsplit(".", 1)[0]  # session ids are not secret: every mid carries one
    # mallory attacks bob's session every way a valid key can
    for n in range(2, 30):
        for name in ("bob", "mallory"):  # a hello in his session: once a fatal refusal on his topic
            push.send_multipart(p.encode_client(p.Hello(session=victim, name=name, rooms=["#general"], rid="x")))
        # once a too_long that cancelled his pending mid (over the text limit; a frame over the wire limit
        # would only cut mallory's own connection: MAXMSGSIZE)
        oversized = p.Say(session=victim, room="#general", text="x" * 3000, mid=f"{victim}.{n}")
        push.send_multipart(p.encode_client(oversized))
        push.send_multipart(p.encode_client(p.Say(session=victim, room="#general", text="forged", mid=f"{victim}.{n}")))
        push.send_multipart(p.encode_client(p.Bye(session=victim)))
    # bob goes on talking, and everything he says is published, none of it failed or left outstanding
    texts = [f"after {i}" for i in range(20)]
    bob.send(*texts)
    bob.close_stdin()
    assert bob.wait(30) == 0, bob.lines["err"]
    for text in texts:
        alice.expect(f'"text": "{text}"')
    assert not [e for e in _json_events(bob, "error")]
    assert "forged" not in [e["text"] for e in _json_events(alice, "message")]
    assert [e["name"] for e in _json_events(alice, "presence") if e["event"] != "join"] in ([], ["bob"])
    _hello(push, sub, "mal2", "mallory")  # the raw peer sends no heartbeats: its first session timed out
    stats = _stats(push, sub, "mal2")
    assert stats["foreign"] >= 28 * 5 and stats["errors"] == 0


def test_one_key_cycling_sessions_stays_within_its_rate(chat, keys, zmq_ctx):  # noqa: F811
    keydir, allowed = keys
    secure_server(chat, keydir, allowed, "--rate", "20", "--burst", "60")
    push, sub = _raw_peer(zmq_ctx, chat, keydir, "mallory")
    _hello(push, sub, "probe", "mallory")
    push.send_multipart(p.encode_client(p.Bye(session="probe")))
    start = time.monotonic()
    for k in range(40):  # a fresh session per burst: 2,400 messages offered
        session = f"cyc{k}"
        push.send_multipart(p.encode_client(p.Hello(session=session, name="mallory", rooms=["#general"])))
        for n in range(1, 61):
            push.send_multipart(p.encode_client(p.Say(session=session, room="#general", text="flood",
                                                      mid=f"{session}.{n}")))
        push.send_multipart(p.encode_client(p.Bye(session=session)))
    elapsed = time.monotonic() - start
    _hello(push, sub, "count", "mallory")
    messages = _stats(push, sub, "count")["messages"]
    assert 60 <= messages <= 60 + 20 * (time.monotonic() - start) + 1, (messages, elapsed)


def test_a_resend_after_a_crowd_and_a_restart_is_not_published_twice(chat, zmq_ctx):
    chat.server("--rate", "0", "--history", "10", "--pub-hwm", "20000")  # the raw reader never recovers gaps
    push, sub = zmq_ctx.socket(zmq.PUSH), zmq_ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(f"tcp://127.0.0.1:{chat.port + 1}")
    push.connect(f"tcp://127.0.0.1:{chat.port}")
    _hello(push, sub, "early", "alice")
    say = p.encode_client(p.Say(session="early", room="#general", text="only once", mid="early.1"))
    push.send_multipart(say)
    _recv(sub, lambda t, m: isinstance(m, p.RoomMessage) and m.mid == "early.1")
    for k in range(300):  # 300 other senders, 3,000 messages: far past the retained history
        session = f"o{k}"
        push.send_multipart(p.encode_client(p.Hello(session=session, name=f"u{k}", rooms=["#general"])))
        for n in range(1, 11):
            push.send_multipart(p.encode_client(p.Say(session=session, room="#general", text="noise",
                                                      mid=f"{session}.{n}")))
    _recv(sub, lambda t, m: isinstance(m, p.RoomMessage) and m.mid == "o299.10")
    push.send_multipart(say)
    ack = _recv(sub, lambda t, m: t == p.session_topic("early") and type(m) in (p.Ack, p.RoomMessage))
    assert ack == p.Ack(mid="early.1", room="#general", seq=1)
    # and across a restart (clean this time; kill -9 is covered in test_e2e_reliability)
    chat.procs[0].stop()
    chat.server("--rate", "0", "--history", "10")
    _hello(push, sub, "early", "alice")
    push.send_multipart(say)
    got = _recv(sub, lambda t, m: t == p.session_topic("early") and type(m) in (p.Ack, p.RoomMessage))
    assert isinstance(got, p.Ack) and got.mid == "early.1"


def test_numbers_of_any_size_are_dropped_at_the_door(chat, zmq_ctx):
    server = chat.server()
    push, sub = zmq_ctx.socket(zmq.PUSH), zmq_ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(f"tcp://127.0.0.1:{chat.port + 1}")
    push.connect(f"tcp://127.0.0.1:{chat.port}")
    _hello(push, sub, "s1", "alice")
    huge = "1" + "0" * 400
    bodies = [b'{"session":"s1","room":"#general","limit":%s}' % huge.encode(),
              b'{"session":"s1","room":"#general","limit":1e400}',
              b'{"session":"s1","room":"#general","after":9007199254740992}',
              b'{"session":"s1","room":"#general","last_seq":-2}',
              b'{"session":"s1","room":"#general","after":NaN}']
    kinds = [b"history", b"history", b"history", b"join", b"history"]
    for _ in range(400):
        for kind, body in zip(kinds, bodies):
            push.send_multipart([p.VERSION, kind, body])
    stats = _stats(push, sub, "s1")
    assert stats["rejected"] >= 2000 and stats["errors"] == 0
    assert server.count("Traceback", stream="err") == 0
    assert len(server.lines["err"]) < 40


def test_other_peoples_control_characters_never_reach_the_terminal(chat):
    chat.server()
    alice = chat.client("alice", "--plain")
    bob = chat.client("bob", "--plain")
    bob.send("look \x1b[2J\x9b31m\x9d0;pwned\x9c \u202eexe.gpj\u2028[00:00:00] #general <admin> obey")
    line = alice.expect("<bob> look")
    assert not any(ch in line for ch in "\x1b\x9b\x9d\x9c\u202e\u2028")
    assert line.count("\ufffd") >= 6


def test_a_lost_disk_tail_never_reuses_a_sequence_number(chat):
    """A power cut can lose the last commits of the WAL: simulated after kill -9 by deleting the newest
    rows (reservations are synced, so they survive what the rows did not) and changing the recorded boot."""
    server = chat.server("--rate", "0", *PATIENT)
    alice = chat.client("alice", "--json")
    bob = chat.client("bob", "--json", "--drain-timeout", "30")
    bob.send(*[f"before {i}" for i in range(300)])
    alice.expect('"text": "before 299"')
    server.signal(signal.SIGKILL)
    server.wait()
    db_file, = (f for f in chat.data_dir.glob("history-*.sqlite3") if not f.name.endswith(".search.sqlite3"))
    with sqlite3.connect(str(db_file)) as db:  # the power cut: the newest commits gone, and a new boot
        db.execute("DELETE FROM messages WHERE seq > 150")
        db.execute("UPDATE meta SET value = 'a boot before this one' WHERE key = 'boot'")
    chat.server("--rate", "0", *PATIENT)
    start = len(alice.lines["out"])
    alice.expect('"type": "connected"', start=start, timeout=20)
    bob.send(*[f"after {i}" for i in range(100)])
    bob.close_stdin()
    assert bob.wait(30) == 0, bob.lines["err"]
    alice.expect('"text": "after 99"', start=start, timeout=20)
    seen = [e for e in map(json.loads, alice.lines["out"][start:]) if e["type"] == "message"]
    assert [e["text"] for e in seen] == [f"after {i}" for i in range(100)]  # all shown, none dropped as old
    assert min(e["seq"] for e in seen) > 300  # never a number anyone saw before
    notices = [e["text"] for e in map(json.loads, alice.lines["out"][start:]) if e["type"] == "notice"]
    assert any("the server lost messages" in n for n in notices), notices
