"""Nothing lost, nothing crashes: restarts, gaps, garbage and floods against a real server process."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import zmq
from conftest import WAIT, Proc, script, texts_from

from zmqchat import Client
from zmqchat import events as ev
from zmqchat import protocol as p

# Several API clients share this test's thread, so each is deaf while another polls: slow heartbeats.
PATIENT = ["--heartbeat-interval", "1", "--heartbeat-misses", "30"]


def _messages(proc: Proc, sender: str) -> list[str]:
    out = []
    for line in proc.lines["out"]:
        event = json.loads(line)
        if event["type"] == "message" and event["sender"] == sender:
            out.append(event["text"])
    return out


def test_server_kill_9_and_restart_while_sending_loses_nothing(chat):
    server = chat.server("--rate", "0", "--backlog", "1000", "--pub-hwm", "4000")
    alice = chat.client("alice", "--json")
    carol = chat.client("carol", "--json")
    sender = Proc(script("zmqchat-client") + ["--name", "bob", "--port", str(chat.port), "--json",
                                              "--drain-timeout", "30"])
    chat.procs.append(sender)
    sender.expect('"type": "connected"')
    texts = [f"m{i:03d}" for i in range(200)]

    def feed() -> None:
        for i, text in enumerate(texts):
            sender.send(text)
            if i == 100:
                killed.wait(WAIT)
            time.sleep(0.005)  # sleep-ok: pacing the typist, not synchronisation
        sender.close_stdin()

    killed = threading.Event()
    typist = threading.Thread(target=feed, daemon=True)
    typist.start()
    alice.expect('"text": "m050"')
    server.signal(signal.SIGKILL)
    server.wait()
    killed.set()
    chat.server("--rate", "0", "--backlog", "1000", "--pub-hwm", "4000")
    typist.join(WAIT)
    assert sender.wait(40) == 0, sender.lines["err"]
    for reader in (alice, carol):
        reader.expect('"text": "m199"', timeout=20)
    for reader in (alice, carol):
        assert _messages(reader, "bob") == texts
        assert reader.count("the server lost messages") == 0  # a crash within one boot loses nothing
    late = chat.client("dave", "--json")
    late.expect('"text": "m199"')
    assert _messages(late, "bob") == texts


def test_pipe_client_survives_server_restart_within_drain_timeout(chat):
    server = chat.server()
    reader = chat.client("reader", "--json")
    pipe = Proc(script("zmqchat-client") + ["--name", "ci", "--port", str(chat.port), "--json"])
    chat.procs.append(pipe)
    pipe.expect('"type": "connected"')
    server.signal(signal.SIGKILL)
    server.wait()
    pipe.send("sent while the server was down")
    pipe.close_stdin()
    chat.server()
    assert pipe.wait(20) == 0, pipe.lines["err"]
    reader.expect("sent while the server was down")
    assert _messages(reader, "ci") == ["sent while the server was down"]


def test_garbage_never_stops_the_server(chat, zmq_ctx):
    server = chat.server()
    alice = chat.client("alice")  # connected before the garbage: what we time is the server, not start-up
    push = zmq_ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{chat.port}")
    rng = random.Random(1234)
    valid = p.encode_client(p.Say(session="s1", room="#general", text="x", mid="m1"))
    batches = [
        [],
        [b""],
        [b"zmqchat/2", b"msg", b"{}"],
        [b"zmqchat/1", b"nope", b"{}"],
        [b"zmqchat/1", b"msg", b"\xff\xfe not utf8"],
        [b"zmqchat/1", b"msg", b"[1, 2]"],
        [b"zmqchat/1", b"hello", b'{"session": "x"}'],
        [b"zmqchat/1", b"hello", b'{"session": "bad id!", "name": "x"}'],
        valid[:2],
        valid + [b"extra"],
    ]
    for i in range(3000):
        if i % 3 == 0:
            frames = rng.choice(batches)
        elif i % 3 == 1:
            frames = [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 5))]
        else:
            frames = list(valid)
            frames[rng.randrange(3)] = rng.randbytes(rng.randint(0, 40))
        if frames:
            push.send_multipart(frames)
    # over the size limit: the server's MAXMSGSIZE cuts this peer off, nobody else
    big = zmq_ctx.socket(zmq.PUSH)
    big.connect(f"tcp://127.0.0.1:{chat.port}")
    big.send_multipart([p.VERSION, b"msg", b"x" * (p.DEFAULT_MAX_MESSAGE_BYTES + 10)])
    started = time.monotonic()
    alice.send("still here")
    alice.expect("<alice> still here$")
    assert time.monotonic() - started < 2  # the issue asks for "within a second"; slack for a loaded CI box
    deadline = time.monotonic() + WAIT
    rejected = 0
    while rejected < 2000 and time.monotonic() < deadline:  # the server reads 1,000 at a time per connection
        start = len(alice.lines["out"])
        alice.send("/stats")
        line = alice.expect("rejected=", start=start)
        rejected = int(line.split("rejected=")[1].split()[0])
    assert rejected >= 2000
    assert server.popen.poll() is None
    assert server.count("Traceback", stream="err") == 0
    assert server.count("dropped bad message", stream="err") <= 12  # rate-limited logging


def test_slow_subscriber_recovers_gap_from_history(chat):
    # a burst's messages of one batch go out together (msgs), as long as one message may be: small ones
    # here, so that the burst is more publications than the PUB queue and the kernel's buffers hold
    chat.server("--rate", "0", "--pub-hwm", "1000", "--max-message-bytes", "2048", "--max-text-bytes", "1024",
                "--history", "50000", *PATIENT)
    endpoint = {"port": chat.port, "connect_timeout": WAIT}
    with Client("slow", rcvhwm=10, **endpoint) as slow, Client("fast", **endpoint) as fast:
        fast.drain(WAIT)
        texts = [f"burst {i}" for i in range(20000)]  # more than PUB queue + kernel buffers hold
        for text in texts:
            fast.say(text)
        assert fast.drain(30)
        # only now does the slow client read: its queues overflowed, the server's PUB dropped for it
        got = texts_from(slow, "fast", len(texts))
        slow.stats()
        stats = next(e for e in slow.events(WAIT) if isinstance(e, ev.Stats)).stats
    assert got == texts
    assert stats["recoveries"] >= 1 and stats["recovered"] > 0  # a real gap, filled from history


def test_flood_is_throttled_and_others_get_through(chat):
    chat.server("--rate", "10", "--burst", "20", *PATIENT)
    endpoint = {"port": chat.port, "connect_timeout": WAIT}
    with Client("flooder", **endpoint) as flooder, Client("victim", **endpoint) as victim, \
            Client("watcher", **endpoint) as watcher:
        for i in range(300):
            flooder.say(f"flood {i}")
        notices = [e for e in flooder.events(1.0) if isinstance(e, ev.Notice)]
        assert notices and "too fast" in notices[0].text
        victim.say("can you hear me")
        started = time.monotonic()
        heard = False
        while not heard and time.monotonic() - started < 2.0:
            heard = any(isinstance(e, ev.Message) and e.text == "can you hear me" for e in watcher.poll(0.2)[0])
        assert heard
        watcher.stats()
        stats = next(e for e in watcher.events(WAIT) if isinstance(e, ev.Stats)).stats
        assert stats["throttled"] > 0
        assert flooder.unacknowledged > 200  # queued client-side in order, not lost


def test_connecting_a_connected_client_again_returns_its_welcome_at_once(chat):
    chat.server()
    with Client("alice", port=chat.port, connect_timeout=WAIT) as alice:
        again = alice.connect(timeout=0.001)  # it would raise if it waited for another welcome
        assert isinstance(again, ev.Connected) and again.name == "alice"
