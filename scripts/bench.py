#!/usr/bin/env python3
"""Benchmark: the zmqchat server against libzmq's own ``zmq.proxy`` (PULL -> PUB), side by side.

Both relays run on 127.0.0.1 (free random ports), one after the other in the same run, and are driven
by the very same publisher and subscriber processes:

* publishers (spawned processes) send raw zmqchat frames on a PUSH. To zmqchat they send a Hello
  (joining the bench room, waiting for the Welcome on their session topic) and then ``Say`` messages,
  exactly as ``protocol.encode_client`` makes them. To the proxy they send 4-frame messages
  ``[room topic, VERSION, b"msg", RoomMessage body]``: the same shape and size as what zmqchat
  publishes, so that the subscribers receive the same bytes from both.
* subscribers (spawned processes, one SUB each, RCVHWM 0) subscribe to the room topic and only count
  and timestamp. The chat text carries a marker, a sequence number and a CLOCK_MONOTONIC send time in
  nanoseconds (comparable across processes of one Linux host), so end-to-end latency needs no parsing
  beyond one ``bytes.find``.

Two phases per relay: full speed (``--count`` messages to ``--subs`` subscribers; delivered messages/s)
and paced (``--rate`` msg/s for ``--latency-seconds`` to ``--latency-subs`` subscribers; p50/p99/max).
Every child is started here, is bounded in time (its own deadline, PR_SET_PDEATHSIG, a global alarm)
and is stopped by its own pid. ``--json`` prints one summary object.

    python scripts/bench.py                      # defaults: persistence on, no CURVE
    python scripts/bench.py --no-persist --curve --json
    python scripts/bench.py --profile /tmp/prof  # the zmqchat server runs under cProfile
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path

from harness import cpu_seconds, die_with_parent, free_port_pair, machine, pct

ROOM = "#bench"
PAIR = "zmqchat+standby"  # --standby: an active server with a hot standby
SCRAPED = "zmqchat+metrics"  # --scrape: the server with --metrics, scraped all the while
MARK_WARM = ord("W")
MARK_DATA = ord("B")
TEXT_FIXED = 32  # marker + 10-digit seq + space + 19-digit send time + space
TEXT_KEY = b'"text":"'
PROXY_HWM = 100_000  # the same high-water marks as the zmqchat server (PULL and PUB)


# --------------------------------------------------------------------------------------------------
# frames: one template per (system, publisher), spliced per message


class FrameMaker:
    """Builds the frames one publisher sends: ``make(marker, seq, ts_ns, n)`` -> list[bytes].

    zmqchat: ``encode_client(Say(...))`` (checked byte for byte at construction).
    proxy:   ``[room_topic, VERSION, b"msg", encode_body(RoomMessage(...)), b"0"]``, what zmqchat publishes.
    """

    def __init__(self, system: str, size: int, session: str, name: str) -> None:
        from zmqchat import protocol as p

        if size < TEXT_FIXED:
            raise ValueError(f"--size must be at least {TEXT_FIXED}")
        self.system = system
        self.pad = "x" * (size - TEXT_FIXED)
        text_ph, mid_ph = "QQTEXTQQ", "QQMIDQQ"
        if system == "zmqchat":
            msg = p.Say(session=session, room=ROOM, text=text_ph + self.pad, mid=mid_ph)
            self.head = [p.VERSION, p.Say.KIND]
            self.tail: list[bytes] = []
        else:
            # seq and ts are constants of realistic width: the body has the size zmqchat's has
            msg = p.RoomMessage(room=ROOM, seq=1_000_000, ts=1_700_000_000.123456, sender=name,
                                text=text_ph + self.pad, mid=mid_ph)
            self.head = [p.room_topic(ROOM), p.VERSION, p.RoomMessage.KIND]
            self.tail = [p.term_frame(0)]
        body = p.encode_body(msg)
        pre, rest = body.split(text_ph.encode())
        between, post = rest.split(mid_ph.encode())
        self.a, self.b, self.c = pre, between, post  # between = padding + '","mid":"' 
        self.session = session.encode()
        if system == "zmqchat":
            sample = p.Say(session=session, room=ROOM, text=self._text(MARK_DATA, 7, 12345).decode(),
                           mid=f"{session}.7")
            assert self.make(MARK_DATA, 7, 12345, 7) == p.encode_client(sample), "frame template mismatch"

    def _text(self, marker: int, seq: int, ts: int) -> bytes:
        return b"%c%010d %019d " % (marker, seq, ts) + self.pad.encode()

    def make(self, marker: int, seq: int, ts: int, n: int) -> list[bytes]:
        """``n``: the message counter of the mid, ``<session>.<n>`` (1, 2, 3, ... per session)."""
        body = b"".join((self.a, b"%c%010d %019d " % (marker, seq, ts), self.b, b"%b.%d" % (self.session, n), self.c))
        return [*self.head, body, *self.tail]


def _fast_maker(maker: FrameMaker):
    """The per-message hot path of a publisher, with everything constant bound once. Each call takes the
    next message counter: zmqchat accepts a session's counters only in order, without gaps."""
    a, b = maker.a, maker.b  # b holds the padding of the text, then the JSON up to the mid
    c = maker.c
    head, tail = maker.head, maker.tail
    session = maker.session
    counter = itertools.count(1).__next__

    def make(marker: int, seq: int, ts: int) -> list[bytes]:
        return [*head, b"%b%c%010d %019d %b%b.%d%b" % (a, marker, seq, ts, b, session, counter(), c), *tail]

    return make


# --------------------------------------------------------------------------------------------------
# subscriber worker: counts and timestamps, nothing else


def _serve_jobs(run, done_tag: str, wid: int, jobs: mp.Queue, results: mp.Queue, life_end: float) -> None:
    """A worker's life: one zmq context, jobs until None or ``life_end``, every failure reported."""
    die_with_parent()
    import zmq

    ctx = zmq.Context()
    try:
        while True:
            try:
                job = jobs.get(timeout=max(0.1, life_end - time.time()))
            except queue.Empty:
                break
            if job is None:
                break
            try:
                results.put(run(ctx, job))
            except Exception as exc:  # noqa: BLE001 (reported to the orchestrator, never a hang)
                results.put((done_tag, wid, {"error": repr(exc)}))
    finally:
        ctx.destroy(linger=0)


def sub_worker(wid: int, jobs: mp.Queue, results: mp.Queue, life_end: float) -> None:
    _serve_jobs(lambda ctx, job: _run_sub(ctx, wid, job, results), "subdone", wid, jobs, results, life_end)


class Counter:
    """What a subscriber does with each payload, whichever system delivered it: count the data messages
    in it (a zmqchat ``msgs`` carries many), timestamp them, and report the first warm-up one."""

    def __init__(self, wid: int, results: mp.Queue, latency: bool) -> None:
        self.wid, self.results, self.latency = wid, results, latency
        self.lats = array("q")
        self.warm = False
        self.n = self.t_first = self.t_last = self.others = 0

    def __call__(self, body: bytes, t: int) -> None:
        i = body.find(TEXT_KEY)
        if i < 0:
            self.others += 1  # presence events etc. on the room topic
            return
        while i >= 0:
            mark = body[i + 8]
            if mark == MARK_DATA:
                self.n += 1
                self.t_last = t
                if self.n == 1:
                    self.t_first = t
                if self.latency:
                    self.lats.append(t - int(body[i + 20:i + 39]))
            elif mark == MARK_WARM and not self.warm:
                self.warm = True
                self.results.put(("warm", self.wid))
            i = body.find(TEXT_KEY, i + 40)

    def done(self) -> tuple:
        return ("subdone", self.wid, {"n": self.n, "t_first": self.t_first, "t_last": self.t_last,
                                      "others": self.others, "lats": self.lats.tobytes() if self.latency else b""})


def _run_sub(ctx, wid: int, job: dict, results: mp.Queue):
    if job["system"] in PEERS:
        return PEERS[job["system"]].sub(wid, job, results)
    import zmq

    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    if job.get("curve"):
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = job["curve"]
    sock.connect(job["endpoint"])
    sock.setsockopt(zmq.SUBSCRIBE, job["topic"])
    expected, idle = job["expected"], job["idle"]
    deadline = time.monotonic() + job["timeout"]
    count = Counter(wid, results, job["latency"])
    mono_ns = time.monotonic_ns
    recv = sock.recv_multipart
    noblock = zmq.NOBLOCK
    try:
        while count.n < expected:
            if not sock.poll(100):
                now = time.monotonic()
                if now > deadline or (count.n and now - count.t_last / 1e9 > idle):
                    break
                continue
            while True:
                try:
                    frames = recv(noblock)
                except zmq.Again:
                    break
                count(frames[3], mono_ns())  # topic, version, kind, body, term
                if count.n >= expected:
                    break
    finally:
        sock.close(linger=0)
    return count.done()


# --------------------------------------------------------------------------------------------------
# publisher worker


def pub_worker(k: int, jobs: mp.Queue, ctrl: mp.Queue, results: mp.Queue, life_end: float) -> None:
    _serve_jobs(lambda ctx, job: _run_pub(ctx, k, job, ctrl, results), "pubdone", k, jobs, results, life_end)


_JOBS = itertools.count(1)


def _run_pub(ctx, k: int, job: dict, ctrl: mp.Queue, results: mp.Queue):
    if job["system"] in PEERS:
        return PEERS[job["system"]].pub(k, job, ctrl, results)
    import zmq

    from zmqchat import protocol as p

    system, curve = job["system"], job.get("curve")
    # a new session per job: its message counters start at 1 (the server knows an old one's counters)
    session = name = f"bench{os.getpid()}p{k}j{next(_JOBS)}"
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 10_000)  # the tail of the stream is still sent after close()
    socks = [push]
    replies = None
    if system == "zmqchat":
        replies = ctx.socket(zmq.SUB)
        replies.setsockopt(zmq.RCVHWM, 0)
        replies.setsockopt(zmq.LINGER, 0)
        socks.append(replies)
    for sock in socks:
        if curve:
            sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = curve
    push.connect(job["in_endpoint"])
    welcome_after = 0.0
    try:
        if replies is not None:  # subscribe first, then hello until the welcome arrives (slow joiner)
            replies.connect(job["out_endpoint"])
            replies.setsockopt(zmq.SUBSCRIBE, p.session_topic(session))
            hello = p.encode_client(p.Hello(session=session, name=name, rooms=[ROOM]))
            start = time.monotonic()
            done = False
            while not done:
                if time.monotonic() - start > job["timeout"]:
                    raise RuntimeError("no welcome from the zmqchat server")
                push.send_multipart(hello)
                if replies.poll(250):
                    while replies.poll(0):
                        _topic, msg = p.decode_server(replies.recv_multipart())
                        if isinstance(msg, p.Welcome):
                            done = True
                        elif isinstance(msg, p.ErrorReply):
                            raise RuntimeError(f"server refused hello: {msg.code} {msg.message}")  # noqa: TRY004
            welcome_after = time.monotonic() - start
        done = _publish_loop(k, job, ctrl, results, _fast_maker(FrameMaker(system, job["size"], session, name)),
                             push.send_multipart, lambda: None)
        if "error" in done[2]:
            return done
        errors: dict[str, int] = {}
        if replies is not None:  # what the server said to this session: refusals, duplicate acks
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                if not replies.poll(50):
                    continue
                _topic, msg = p.decode_server(replies.recv_multipart())
                kind = msg.code if isinstance(msg, p.ErrorReply) else msg.KIND.decode()
                if isinstance(msg, (p.ErrorReply, p.Ack)):
                    errors[kind] = errors.get(kind, 0) + 1
        return ("pubdone", k, {**done[2], "welcome_s": welcome_after, "replies": errors})
    finally:
        for sock in socks:
            sock.close()


# --------------------------------------------------------------------------------------------------
# peers: NATS, Redis pub/sub and Mosquitto (MQTT, QoS 0), each through its own Python client, carrying
# the very payload zmqchat publishes (a RoomMessage body), counted by the same Counter


def _payload_maker(job: dict, k: int):
    """The body zmqchat would publish for each message: what the peers carry as their payload."""
    make = _fast_maker(FrameMaker("proxy", job["size"], f"peer{os.getpid()}p{k}", f"peer{k}"))
    return lambda marker, seq, ts: make(marker, seq, ts)[3]


def _publish_loop(k: int, job: dict, ctrl: mp.Queue, results: mp.Queue, make, send, flush, sleep=time.sleep):
    """Warm up until told to go, then ``count`` messages at full speed or paced (sleeping, never spinning:
    a spinning publisher starves a client's own I/O thread of the GIL). ``make(marker, seq, ts)`` builds
    what ``send`` takes; ``flush`` pushes out what a client buffers."""
    mono_ns = time.monotonic_ns
    results.put(("pubready", k))
    w, go = 0, None
    warm_end = time.monotonic() + job["timeout"]
    while go is None:
        send(make(MARK_WARM, w, mono_ns()))
        flush()
        w += 1
        try:
            go = ctrl.get(timeout=0.02)
        except queue.Empty:
            if time.monotonic() > warm_end:
                raise RuntimeError("subscribers never warmed up") from None
    if go == "abort":
        return ("pubdone", k, {"error": "aborted"})
    count, rate, first = job["count"], job["rate"], job["first_seq"]
    t_start = mono_ns()
    if rate <= 0:
        for seq in range(first, first + count):
            send(make(MARK_DATA, seq, mono_ns()))
    else:
        interval = 1e9 / rate
        for i in range(count):
            target = t_start + int(i * interval)
            now = mono_ns()
            if target > now:
                sleep((target - now) / 1e9)
            send(make(MARK_DATA, first + i, mono_ns()))
            flush()
    flush()
    t_end = mono_ns()
    return ("pubdone", k, {"t_start": t_start, "t_end": t_end, "sent": count, "warm_sent": w, "welcome_s": 0.0,
                           "replies": {}})


def _subscribe_loop(wid: int, job: dict, results: mp.Queue, pump) -> tuple:
    """Run ``pump(count, wait_s)`` (which delivers what arrived to ``count``) until the expected number
    came, or nothing came for ``idle`` seconds, or the deadline."""
    count = Counter(wid, results, job["latency"])
    deadline = time.monotonic() + job["timeout"]
    while count.n < job["expected"]:
        before = count.n
        pump(count, 0.1)
        now = time.monotonic()
        if now > deadline or (count.n == before and count.n and now - count.t_last / 1e9 > job["idle"]):
            break
    return count.done()


class Nats:
    server, module = "nats-server", "nats"

    @staticmethod
    def start(port: int, tmp: Path) -> list[str]:
        return ["nats-server", "-a", "127.0.0.1", "-p", str(port)]

    @staticmethod
    def pub(k, job, ctrl, results):
        import asyncio

        import nats

        loop = asyncio.new_event_loop()  # driven in steps: the publish loop itself stays synchronous
        nc = loop.run_until_complete(nats.connect(f"nats://127.0.0.1:{job['port']}",
                                                  pending_size=64 * 1024 * 1024))
        pending: list[bytes] = []

        async def publish_all(then_flush: bool):
            for payload in pending:
                await nc.publish(ROOM, payload)  # into the client's buffer; its flusher task writes
            pending.clear()
            if then_flush:
                await nc.flush()
            else:
                await asyncio.sleep(0)

        def send(payload):
            pending.append(payload)
            if len(pending) >= 100:  # like Redis's pipeline: the loop runs once per 100 publishes
                loop.run_until_complete(publish_all(False))

        try:
            return _publish_loop(k, job, ctrl, results, _payload_maker(job, k), send,
                                 lambda: loop.run_until_complete(publish_all(True)))
        finally:
            loop.run_until_complete(nc.close())
            loop.close()

    @staticmethod
    def sub(wid, job, results):
        import asyncio

        import nats

        async def run():
            nc = await nats.connect(f"nats://127.0.0.1:{job['port']}")
            inbox: list = []
            mono_ns = time.monotonic_ns

            async def on_msg(msg):
                inbox.append((msg.data, mono_ns()))

            await nc.subscribe(ROOM, cb=on_msg, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
            await nc.flush()
            count = Counter(wid, results, job["latency"])
            deadline = time.monotonic() + job["timeout"]
            while count.n < job["expected"]:
                before = count.n
                await asyncio.sleep(0.01)
                items = inbox[:]
                del inbox[:len(items)]
                for data, t in items:
                    count(data, t)
                now = time.monotonic()
                if now > deadline or (count.n == before and count.n and now - count.t_last / 1e9 > job["idle"]):
                    break
            await nc.close()
            return count.done()

        return asyncio.run(run())


class Redis:
    server, module = "redis-server", "redis"

    @staticmethod
    def start(port: int, tmp: Path) -> list[str]:
        return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--dir", str(tmp), "--client-output-buffer-limit", "pubsub 0 0 0"]

    @staticmethod
    def pub(k, job, ctrl, results):
        import redis

        r = redis.Redis(host="127.0.0.1", port=job["port"])
        pipe = r.pipeline(transaction=False)
        queued = [0]

        def send(payload):
            pipe.publish(ROOM, payload)
            queued[0] += 1
            if queued[0] >= 100:  # pipelined: one round trip per 100 publishes at full speed
                flush()

        def flush():
            if queued[0]:
                pipe.execute()
                queued[0] = 0

        try:
            return _publish_loop(k, job, ctrl, results, _payload_maker(job, k), send, flush)
        finally:
            r.close()

    @staticmethod
    def sub(wid, job, results):
        import redis

        r = redis.Redis(host="127.0.0.1", port=job["port"])
        ps = r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(ROOM)
        mono_ns = time.monotonic_ns

        def pump(count, wait):
            msg = ps.get_message(timeout=wait)
            while msg is not None:
                count(msg["data"], mono_ns())
                msg = ps.get_message(timeout=0)

        try:
            return _subscribe_loop(wid, job, results, pump)
        finally:
            ps.close()
            r.close()


class Mosquitto:
    server, module = "mosquitto", "paho.mqtt.client"

    @staticmethod
    def start(port: int, tmp: Path) -> list[str]:
        conf = tmp / f"mosquitto-{port}.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                        "max_inflight_messages 0\npersistence false\n")
        return ["mosquitto", "-c", str(conf)]

    @staticmethod
    def _client():
        import paho.mqtt.client as mqtt

        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)

    @staticmethod
    def pub(k, job, ctrl, results):
        client = Mosquitto._client()
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", job["port"])
        client.loop_start()  # paho's own network thread sends; publish() queues
        try:
            return _publish_loop(k, job, ctrl, results, _payload_maker(job, k),
                                 lambda payload: client.publish("bench", payload, qos=0), lambda: None)
        finally:
            client.loop_stop()
            client.disconnect()

    @staticmethod
    def sub(wid, job, results):
        client = Mosquitto._client()
        inbox: list = []
        mono_ns = time.monotonic_ns
        client.on_message = lambda _c, _u, msg: inbox.append((msg.payload, mono_ns()))
        client.connect("127.0.0.1", job["port"])
        client.subscribe("bench", qos=0)
        client.loop_start()  # paho's network thread reads (one loop() call reads one packet: a backlog)

        def pump(count, wait):
            time.sleep(min(wait, 0.01))
            items = inbox[:]
            del inbox[:len(items)]
            for data, t in items:
                count(data, t)

        try:
            return _subscribe_loop(wid, job, results, pump)
        finally:
            client.loop_stop()
            client.disconnect()


PEERS = {"nats": Nats, "redis": Redis, "mosquitto": Mosquitto}


def peer_missing(system: str) -> str:
    """Why ``system`` cannot be measured here ("" when it can)."""
    import importlib.util

    peer = PEERS[system]
    if shutil.which(peer.server) is None:
        return f"{peer.server} is not installed (apt-get install {peer.server})"
    if importlib.util.find_spec(peer.module.split(".")[0]) is None:
        package = {"nats": "nats-py", "redis": "redis", "paho.mqtt.client": "paho-mqtt"}[peer.module]
        return f"its Python client is not installed (pip install {package})"
    return ""


# --------------------------------------------------------------------------------------------------
# the proxy baseline child: python bench.py --proxy-child IN OUT [SECRET]


def proxy_child(in_ep: str, out_ep: str, secret_file: str, lifetime: float) -> int:
    die_with_parent()
    import zmq

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ctx = zmq.Context()
    pull, pub = ctx.socket(zmq.PULL), ctx.socket(zmq.PUB)
    pull.setsockopt(zmq.RCVHWM, PROXY_HWM)
    pub.setsockopt(zmq.SNDHWM, PROXY_HWM)
    if secret_file:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx)  # the same ZAP setup as the zmqchat server: any client key
        auth.start()
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        public, secret = zmq.auth.load_certificate(secret_file)
        for sock in (pull, pub):
            sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
    pull.bind(in_ep)
    pub.bind(out_ep)
    threading.Thread(target=zmq.proxy, args=(pull, pub), daemon=True).start()
    print("ready", flush=True)
    stop.wait(lifetime)
    os._exit(0)  # the proxy thread owns the sockets; do not wait for it


# --------------------------------------------------------------------------------------------------
# orchestration


class Relay:
    """One relay under test, as a child process: zmqchat's server or the zmq.proxy baseline."""

    def __init__(self, system: str, args: argparse.Namespace, tmp: Path, curve: dict | None, lifetime: float):
        self.system = system
        self.kind = "zmqchat" if system in (PAIR, SCRAPED) else system  # what the publishers and subscribers speak
        self.scraper: threading.Thread | None = None
        self.scrapes = 0
        self.standby: subprocess.Popen | None = None
        self.port = free_port_pair(count=3)
        self.in_ep = f"tcp://127.0.0.1:{self.port}"
        self.out_ep = f"tcp://127.0.0.1:{self.port + 1}"
        self.log = tmp / f"{system}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQCHAT_")}
        env["PYTHONUNBUFFERED"] = "1"
        if self.kind == "zmqchat":
            argv = [sys.executable]
            if args.profile and system == "zmqchat":
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                self.prof = str(Path(args.profile) / "server.prof")
                argv += ["-m", "cProfile", "-o", self.prof]
            # the same PUB queue as the proxy (zmqchat derives a smaller one from its memory budget by default)
            argv += ["-m", "zmqchat.cli.server", "--host", "127.0.0.1", "--port", str(self.port), "--rate", "0",
                     "--pub-hwm", str(PROXY_HWM),
                     "--quiet", "--stats-interval", "0"]
            if system == SCRAPED:
                self.metrics_port = free_port_pair()
                argv += ["--metrics", f"127.0.0.1:{self.metrics_port}"]
            if args.persist or system == PAIR:
                data = tmp / ("data-a" if system == PAIR else "data")
                data.mkdir(exist_ok=True)
                argv += ["--data-dir", str(data)]
                if not args.search:
                    argv += ["--no-search"]
            else:
                argv += ["--no-persist"]
            if curve:
                argv += ["--curve-secret", curve["server_secret_file"]]
        elif system in PEERS:
            argv = PEERS[system].start(self.port, tmp)
        else:
            argv = [sys.executable, os.path.abspath(__file__), "--proxy-child", self.in_ep, self.out_ep,
                    curve["server_secret_file"] if curve else "", str(lifetime)]
        standby_argv = None
        if system == PAIR:  # the active (clients talk to it) and its standby, on this machine too
            other = free_port_pair(count=3)
            data_b = tmp / "data-b"
            data_b.mkdir(exist_ok=True)
            standby_argv = [a if a != str(self.port) else str(other) for a in argv]
            standby_argv[standby_argv.index(str(tmp / "data-a"))] = str(data_b)
            # --quiet still logs the pair's warnings, which say when the standby is in sync
            argv += ["--peer", f"127.0.0.1:{other}"]
            standby_argv += ["--peer", f"127.0.0.1:{self.port}"]
        self.logf = open(self.log, "wb")  # noqa: SIM115 (the child's stderr, closed in stop())
        # cwd: not the work tree, which `python -m` would put first on sys.path, before PYTHONPATH's tree
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.logf,
                                     env=env, cwd=tmp, preexec_fn=die_with_parent)  # noqa: PLW1509 (one prctl call)
        self._wait_listening()
        if system == SCRAPED:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            self._scraping = threading.Event()
            self.scraper = threading.Thread(target=self._scrape, args=(url, args.scrape), daemon=True)
            self.scraper.start()
        if standby_argv is not None:
            self._wait_log("ACTIVE", self.log)
            self.standby_log = tmp / f"{system}-standby.log"
            self.standby_logf = open(self.standby_log, "wb")  # noqa: SIM115 (closed in stop())
            self.standby = subprocess.Popen(standby_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=self.standby_logf, env=env, cwd=tmp,
                                            preexec_fn=die_with_parent)  # noqa: PLW1509 (one prctl call)
            self._wait_log("the standby is in sync", self.log)
        self.spy = None
        if system == "zmqchat" and args.py_spy:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            Path(args.py_spy).mkdir(parents=True, exist_ok=True)
            self.spy_out = str(Path(args.py_spy) / f"server-{self.proc.pid}.txt")
            # sampling profiler attached to the server's pid; it ends when the server does
            self.spy = subprocess.Popen([spy, "record", "--pid", str(self.proc.pid), "--rate", "1000",
                                         "--format", "raw", "--output", self.spy_out, "--nonblocking"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL,
                                        preexec_fn=die_with_parent)  # noqa: PLW1509 (one prctl call)
            time.sleep(1.0)  # let it attach before the load starts

    def _wait_listening(self, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.system} exited early: {self.log.read_text()[-800:]}")
            try:
                for port in (self.port,) if self.system in PEERS else (self.port, self.port + 1):
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.system} did not start listening within {timeout}s")

    def _scrape(self, url: str, every: float) -> None:
        """What Prometheus does, far more often than its default 15 s: fetch the whole page, every ``every``."""
        import urllib.request

        while not self._scraping.wait(every):
            try:
                urllib.request.urlopen(url, timeout=5).read()
                self.scrapes += 1
            except OSError:
                return

    def _wait_log(self, text: str, log: Path, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.system} exited early: {log.read_text()[-800:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.system}: no {text!r} in its log within {timeout}s: {log.read_text()[-800:]}")

    def cpu(self) -> float:
        """CPU seconds of the relay and of the processes it started (zmqchat's search index): a pair's is both
        servers' (replication costs the standby too)."""
        return cpu_seconds(self.proc.pid) + (cpu_seconds(self.standby.pid) if self.standby is not None else 0.0)

    def cpu_children(self) -> float:
        """The part of ``cpu()`` spent in processes the relay started."""
        return self.cpu() - cpu_seconds(self.proc.pid, tree=False) - (
            cpu_seconds(self.standby.pid, tree=False) if self.standby is not None else 0.0)

    def stop(self) -> None:
        if self.scraper is not None:
            self._scraping.set()
            self.scraper.join(10)
            self.scraper = None
        if self.standby is not None:
            if self.standby.poll() is None:
                self.standby.send_signal(signal.SIGTERM)
                try:
                    self.standby.wait(15)
                except subprocess.TimeoutExpired:
                    self.standby.kill()
                    self.standby.wait(5)
            self.standby_logf.close()
            self.standby = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # by pid; the zmqchat server shuts down cleanly on it
            try:
                self.proc.wait(15 if self.system == "zmqchat" else 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.spy is not None and self.spy.poll() is None:
            try:
                self.spy.wait(15)  # py-spy writes its file when the target has exited
            except subprocess.TimeoutExpired:
                self.spy.terminate()
                self.spy.wait(5)
        self.logf.close()


class Pool:
    """Spawned publisher and subscriber processes, reused for every phase."""

    def __init__(self, n_subs: int, n_pubs: int, life_end: float) -> None:
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.sub_jobs = [ctx.Queue() for _ in range(n_subs)]
        self.pub_jobs = [ctx.Queue() for _ in range(n_pubs)]
        self.pub_ctrl = [ctx.Queue() for _ in range(n_pubs)]
        self.procs = []
        for i, q in enumerate(self.sub_jobs):
            self.procs.append(ctx.Process(target=sub_worker, args=(i, q, self.results, life_end), daemon=True))
        for k, q in enumerate(self.pub_jobs):
            self.procs.append(ctx.Process(target=pub_worker, args=(k, q, self.pub_ctrl[k], self.results, life_end),
                                          daemon=True))
        for proc in self.procs:
            proc.start()

    def close(self) -> None:
        for q in self.sub_jobs + self.pub_jobs:
            q.put(None)
        end = time.monotonic() + 5
        for proc in self.procs:
            proc.join(max(0.1, end - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM to that pid
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)


def settled_cpu(relay: Relay, cpu: float, window: float = 0.25, quiet: float = 0.02, limit: float = 10.0) -> float:
    """The relay's CPU seconds once it has gone quiet (under ``quiet`` of a core over ``window`` s), or after
    ``limit`` s: ``cpu`` is a reading taken when the last message was delivered."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        time.sleep(window)  # a measurement interval, not a wait for an event
        now = relay.cpu()
        if now - cpu < quiet * window:
            return now
        cpu = now
    return cpu


def run_phase(pool: Pool, relay: Relay, *, phase: str, n_subs: int, n_pubs: int, count: int, rate: float,
              size: int, curve: dict | None, timeout: float, idle: float) -> dict:
    """One measured stream through ``relay``: returns delivery and latency figures."""
    from zmqchat import protocol as p

    client_curve = curve["client"] if curve else None
    per_pub = [count // n_pubs + (1 if k < count % n_pubs else 0) for k in range(n_pubs)]
    for i in range(n_subs):
        pool.sub_jobs[i].put({"system": relay.kind, "endpoint": relay.out_ep, "port": relay.port,
                              "topic": p.room_topic(ROOM), "expected": count,
                              "idle": idle, "latency": rate > 0, "timeout": timeout, "curve": client_curve})
    first = 0
    for k in range(n_pubs):
        pool.pub_jobs[k].put({"system": relay.kind, "in_endpoint": relay.in_ep, "out_endpoint": relay.out_ep,
                              "port": relay.port,
                              "size": size, "count": per_pub[k], "rate": rate / n_pubs if rate > 0 else 0,
                              "phase": phase, "first_seq": first, "timeout": timeout, "curve": client_curve})
        first += per_pub[k]
    warm: set[int] = set()
    subs: dict[int, dict] = {}
    pubs: dict[int, dict] = {}
    started = False
    cpu0 = cpu1 = kids0 = 0.0
    t_go = 0.0
    end = time.monotonic() + timeout + 15
    while len(subs) < n_subs or len(pubs) < n_pubs:
        left = end - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"phase {phase} on {relay.system} did not finish in time "
                               f"(subs {len(subs)}/{n_subs}, pubs {len(pubs)}/{n_pubs})")
        try:
            msg = pool.results.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        kind, who = msg[0], msg[1]
        if kind == "warm":
            warm.add(who)
            if len(warm) == n_subs and not started:
                started = True
                cpu0, kids0, t_go = relay.cpu(), relay.cpu_children(), time.monotonic()
                for k in range(n_pubs):
                    pool.pub_ctrl[k].put("go")
        elif kind == "subdone":
            subs[who] = msg[2]
            if len(subs) == n_subs:
                cpu1 = relay.cpu()
        elif kind == "pubdone":
            pubs[who] = msg[2]
            if "error" in msg[2]:
                raise RuntimeError(f"publisher {who} on {relay.system}: {msg[2]['error']}")
    for sub in subs.values():
        if "error" in sub:
            raise RuntimeError(f"subscriber on {relay.system}: {sub['error']}")
    wall = time.monotonic() - t_go
    # What the messages cost the relay includes what it does after the last delivery (a search index that
    # lags behind): its CPU is read again once it has gone quiet, up to 10 s.
    cpu_settled = settled_cpu(relay, cpu1)
    kids = relay.cpu_children() - kids0
    t_start = min(pb["t_start"] for pb in pubs.values())
    t_send_end = max(pb["t_end"] for pb in pubs.values())
    rates = []
    delivered = 0
    for sub in subs.values():
        delivered += sub["n"]
        span = (sub["t_last"] - t_start) / 1e9
        rates.append(sub["n"] / span if span > 0 and sub["n"] else 0.0)
    out = {"delivered": delivered, "expected": count * n_subs, "lost": count * n_subs - delivered,
           "send_rate": count / max(1e-9, (t_send_end - t_start) / 1e9),
           "per_sub_rate": sum(rates) / len(rates), "min_sub_rate": min(rates), "total_rate": sum(rates),
           "relay_cpu_s": cpu1 - cpu0, "relay_cpu_pct": 100 * (cpu1 - cpu0) / max(wall, 1e-9),
           # the primary figure: the relay's own CPU time for each message it took in and fanned out
           "relay_cpu_us_per_msg": 1e6 * (cpu_settled - cpu0) / max(1, count),
           "relay_cpu_after_s": cpu_settled - cpu1,
           "relay_children_cpu_us_per_msg": 1e6 * kids / max(1, count),
           "replies": {k: v for pb in pubs.values() for k, v in pb.get("replies", {}).items()}}
    if rate > 0:
        lats = array("q")
        for sub in subs.values():
            lats.frombytes(sub["lats"])
        vals = sorted(lats)
        if vals:
            out.update({"samples": len(vals), "p50_ms": pct(vals, 50) / 1e6, "p99_ms": pct(vals, 99) / 1e6,
                        "max_ms": vals[-1] / 1e6, "mean_ms": sum(vals) / len(vals) / 1e6})
    return out


def make_curve(tmp: Path) -> dict:
    import zmq.auth

    from zmqchat import keys

    _, server_secret = keys.generate("server", tmp / "keys")
    _, client_secret = keys.generate("client", tmp / "keys")
    s_public, _ = zmq.auth.load_certificate(str(server_secret))
    c_public, c_secret = zmq.auth.load_certificate(str(client_secret))
    return {"server_secret_file": str(server_secret), "client": (c_secret, c_public, s_public)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="zmqchat server vs zmq.proxy on loopback: throughput and latency")
    ap.add_argument("--subs", type=int, default=4, help="subscribers in the full-speed phase (default: %(default)s)")
    ap.add_argument("--pubs", type=int, default=1, help="publisher processes (default: %(default)s)")
    ap.add_argument("--count", type=int, default=100_000,
                    help="messages in the full-speed phase (default: %(default)s)")
    ap.add_argument("--size", type=int, default=100, help="chat text bytes per message (default: %(default)s)")
    ap.add_argument("--rate", type=float, default=2000, help="paced rate for latency, msg/s (default: %(default)s)")
    ap.add_argument("--latency-subs", type=int, default=20,
                    help="subscribers in the latency phase (default: %(default)s)")
    ap.add_argument("--latency-seconds", type=float, default=5.0,
                    help="length of the paced latency phase (default: %(default)s)")
    ap.add_argument("--search", action=argparse.BooleanOptionalAction, default=True,
                    help="with persistence: the server's search index on, as by default (default: on)")
    ap.add_argument("--persist", action=argparse.BooleanOptionalAction, default=True,
                    help="zmqchat history on disk (SQLite) or in memory (default: on)")
    ap.add_argument("--curve", action=argparse.BooleanOptionalAction, default=False,
                    help="CURVE encryption on zmqchat and on the proxy (default: off)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="alternate the relays this many times; medians reported (default: %(default)s)")
    ap.add_argument("--only", choices=["zmqchat", "proxy", PAIR, SCRAPED, *PEERS],
                    help="measure one relay only (no ratios)")
    ap.add_argument("--scrape", type=float, metavar="SECONDS",
                    help=f"also measure {SCRAPED}: the server with --metrics, its page fetched every SECONDS all "
                    "the while (Prometheus's default is 15)")
    ap.add_argument("--standby", action="store_true",
                    help=f"also measure {PAIR}: an active with a hot standby on this machine (docs/cluster.md), "
                    "every batch acknowledged by the standby before it is published; its CPU is both servers'")
    ap.add_argument("--peers", action="store_true",
                    help="also NATS, Redis pub/sub and Mosquitto (QoS 0), started here on loopback; a peer whose "
                         "server or Python client is missing is skipped with a line saying so")
    ap.add_argument("--skip-latency", action="store_true", help="full-speed phase only")
    ap.add_argument("--skip-throughput", action="store_true", help="latency phase only")
    ap.add_argument("--profile", metavar="DIR", help="run the zmqchat server under cProfile, write DIR/server.prof")
    ap.add_argument("--py-spy", metavar="DIR", help="sample the zmqchat server with py-spy (pip install py-spy), "
                    "write DIR/server-PID.txt (collapsed stacks)")
    ap.add_argument("--max-seconds", type=float, default=600, help="hard cap on the whole run (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print one JSON summary object only")
    return ap


def median(values: list[float]) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--proxy-child":
        return proxy_child(argv[1], argv[2], argv[3], float(argv[4]))
    args = build_parser().parse_args(argv)
    if args.size < TEXT_FIXED:
        raise SystemExit(f"--size must be at least {TEXT_FIXED}")
    say = (lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True)) if args.json else (
        lambda *a, **k: print(*a, **k, flush=True))

    def on_alarm(*_):
        raise TimeoutError(f"bench exceeded --max-seconds={args.max_seconds}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(math.ceil(args.max_seconds))
    t_begin = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="zmqchat-bench-"))
    systems = [args.only] if args.only else ["zmqchat", "proxy"]
    if args.standby and not args.only:
        systems.insert(1, PAIR)
    if args.scrape and not args.only:
        systems.insert(1, SCRAPED)
    if args.peers and not args.only:
        for peer in PEERS:
            why = peer_missing(peer)
            if why:
                say(f"[{peer}] skipped: {why}")
            else:
                systems.append(peer)
    if args.curve:
        systems = [s for s in systems if s not in PEERS]  # the peers run without encryption here
    curve = make_curve(tmp) if args.curve else None
    life_end = time.time() + args.max_seconds + 30
    n_sub_workers = max(args.subs if not args.skip_throughput else 0,
                        args.latency_subs if not args.skip_latency else 0, 1)
    pool = None
    relays: list[Relay] = []
    results: dict[str, dict[str, list[dict]]] = {s: {"throughput": [], "latency": []} for s in systems}
    try:
        pool = Pool(n_sub_workers, args.pubs, life_end)
        for rep in range(args.repeat):
            for system in systems if rep % 2 == 0 else list(reversed(systems)):
                relay = Relay(system, args, tmp, curve, lifetime=args.max_seconds + 30)
                relays.append(relay)
                try:
                    if not args.skip_throughput:
                        r = run_phase(pool, relay, phase="t" if rep == 0 else chr(ord("a") + rep), n_subs=args.subs,
                                      n_pubs=args.pubs, count=args.count, rate=0, size=args.size, curve=curve,
                                      timeout=max(30.0, args.count / 2000), idle=3.0)
                        results[system]["throughput"].append(r)
                        say(f"[{system}] full speed: {r['total_rate']:,.0f} msg/s delivered in total "
                            f"({r['per_sub_rate']:,.0f}/subscriber, {args.subs} subs), sent at "
                            f"{r['send_rate']:,.0f} msg/s, lost {r['lost']}, relay CPU {r['relay_cpu_pct']:.0f}%, "
                            f"{r['relay_cpu_us_per_msg']:.1f} us/msg ({r['relay_children_cpu_us_per_msg']:.1f} "
                            f"of it in child processes; {r['relay_cpu_after_s']:.2f} s after the last delivery)" + (f", replies {r['replies']}" if r["replies"] else ""))
                    if not args.skip_latency:
                        n = max(1, int(args.rate * args.latency_seconds))
                        r = run_phase(pool, relay, phase="l" if rep == 0 else chr(ord("m") + rep),
                                      n_subs=args.latency_subs, n_pubs=args.pubs, count=n, rate=args.rate,
                                      size=args.size, curve=curve, timeout=args.latency_seconds + 30, idle=3.0)
                        results[system]["latency"].append(r)
                        say(f"[{system}] paced {args.rate:,.0f} msg/s to {args.latency_subs} subs: "
                            f"p50 {r.get('p50_ms', float('nan')):.3f} ms, p99 {r.get('p99_ms', float('nan')):.3f} ms, "
                            f"max {r.get('max_ms', float('nan')):.3f} ms, lost {r['lost']}, "
                            f"relay CPU {r['relay_cpu_pct']:.0f}%")
                finally:
                    relay.stop()
    finally:
        signal.alarm(0)
        if pool is not None:
            pool.close()
        for relay in relays:
            relay.stop()
        profile_note = None
        if args.profile and any(r.system == "zmqchat" for r in relays):
            profile_note = getattr(relays[[r.system for r in relays].index("zmqchat")], "prof", None)
        shutil.rmtree(tmp, ignore_errors=True)

    summary = summarise(args, results, systems)
    summary["machine"] = machine()
    summary["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    if profile_note:
        summary["profile"] = profile_note
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print_table(summary, args)
    return 0


def summarise(args, results, systems) -> dict:
    out: dict = {"config": {"subs": args.subs, "pubs": args.pubs, "count": args.count, "size": args.size,
                            "rate": args.rate, "latency_subs": args.latency_subs,
                            "latency_seconds": args.latency_seconds, "persist": args.persist, "search": args.search,
                            "curve": args.curve,
                            "repeat": args.repeat}}
    for system in systems:
        tp, lat = results[system]["throughput"], results[system]["latency"]
        entry = {}
        if tp:
            entry.update({"throughput_total": median([r["total_rate"] for r in tp]),
                          "throughput_per_sub": median([r["per_sub_rate"] for r in tp]),
                          "send_rate": median([r["send_rate"] for r in tp]),
                          "throughput_lost": sum(r["lost"] for r in tp),
                          "throughput_relay_cpu_pct": median([r["relay_cpu_pct"] for r in tp]),
                          "cpu_us_per_msg": median([r["relay_cpu_us_per_msg"] for r in tp]),
                          "cpu_us_per_msg_range": [min(r["relay_cpu_us_per_msg"] for r in tp),
                                                   max(r["relay_cpu_us_per_msg"] for r in tp)]})
        if lat:
            for key in ("p50_ms", "p99_ms", "max_ms", "mean_ms"):
                entry[key] = median([r.get(key, float("nan")) for r in lat])
            entry["latency_lost"] = sum(r["lost"] for r in lat)
            entry["latency_relay_cpu_pct"] = median([r["relay_cpu_pct"] for r in lat])
        entry["runs"] = results[system]
        for r in tp + lat:
            r.pop("lats", None)
        out[system] = entry
    if "zmqchat" in out and PAIR in out:  # what replication costs, against the same run's single server
        z, x = out["zmqchat"], out[PAIR]
        if z.get("throughput_total") and x.get("throughput_total"):
            out["standby_throughput_cost"] = 1 - x["throughput_total"] / z["throughput_total"]
        if z.get("cpu_us_per_msg") and x.get("cpu_us_per_msg"):
            out["standby_cpu_ratio"] = x["cpu_us_per_msg"] / z["cpu_us_per_msg"]
        if z.get("p99_ms") and x.get("p99_ms"):
            out["standby_p99_ratio"] = x["p99_ms"] / z["p99_ms"]
    if "zmqchat" in out and SCRAPED in out:  # what being scraped costs the hot path
        z, x = out["zmqchat"], out[SCRAPED]
        if z.get("cpu_us_per_msg") and x.get("cpu_us_per_msg"):
            out["scrape_cpu_ratio"] = x["cpu_us_per_msg"] / z["cpu_us_per_msg"]
        if z.get("p99_ms") and x.get("p99_ms"):
            out["scrape_p99_ratio"] = x["p99_ms"] / z["p99_ms"]
    if "zmqchat" in out and "proxy" in out:
        z, x = out["zmqchat"], out["proxy"]
        if "throughput_total" in z and x.get("throughput_total"):
            out["throughput_ratio"] = z["throughput_total"] / x["throughput_total"]
        if z.get("cpu_us_per_msg") and x.get("cpu_us_per_msg"):
            out["cpu_ratio"] = z["cpu_us_per_msg"] / x["cpu_us_per_msg"]
        if "p99_ms" in z and x.get("p99_ms"):
            out["p99_ratio"] = z["p99_ms"] / x["p99_ms"]
            out["p50_ratio"] = z["p50_ms"] / x["p50_ms"]
    return out


def print_table(summary: dict, args) -> None:
    systems = [s for s in ("zmqchat", "proxy", PAIR, SCRAPED, *PEERS) if s in summary]
    m = summary["machine"]
    print()
    print(f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}; "
          f"zmqchat from {m['zmqchat']}")
    c = summary["config"]
    print(f"config: {c['size']}-byte text, persist={'on' if c['persist'] else 'off'}, "
          f"search={'on' if c.get('search', True) else 'off'}, "
          f"curve={'on' if c['curve'] else 'off'}, {c['pubs']} publisher(s), repeat {c['repeat']}")
    rows = [
        ("relay CPU us per relayed message (primary)", "cpu_us_per_msg", "{:.1f}"),
        (f"delivered msg/s, total ({c['subs']} subs)", "throughput_total", "{:,.0f}"),
        ("delivered msg/s, per subscriber", "throughput_per_sub", "{:,.0f}"),
        ("publisher send msg/s", "send_rate", "{:,.0f}"),
        ("relay CPU % (full speed)", "throughput_relay_cpu_pct", "{:.0f}"),
        (f"p50 latency ms ({c['rate']:g} msg/s, {c['latency_subs']} subs)", "p50_ms", "{:.3f}"),
        ("p99 latency ms", "p99_ms", "{:.3f}"),
        ("max latency ms", "max_ms", "{:.3f}"),
        ("lost (full speed / paced)", None, None),
    ]
    w = max(14, *(len(s) + 2 for s in systems))  # a column per system, wide enough for its name
    header = f"{'':44}" + "".join(f"{s:>{w}}" for s in systems) + (f"{'z/proxy':>10}" if systems[:2] == ["zmqchat", "proxy"] else "")
    print(header)
    for label, key, fmt in rows:
        line = f"{label:44}"
        if key is None:
            for s in systems:
                e = summary[s]
                line += f"{str(e.get('throughput_lost', '-')) + ' / ' + str(e.get('latency_lost', '-')):>{w}}"
            print(line)
            continue
        vals = [summary[s].get(key) for s in systems]
        if all(v is None for v in vals):
            continue
        for v in vals:
            line += f"{fmt.format(v) if v is not None else '-':>{w}}"
        if systems[:2] == ["zmqchat", "proxy"] and vals[0] and vals[1]:
            line += f"{vals[0] / vals[1]:>10.2f}"
        print(line)
    for s in systems:
        spread = summary[s].get("cpu_us_per_msg_range")
        if spread:
            print(f"{s}: CPU us per relayed message, min-max over {c['repeat']} runs: {spread[0]:.1f}-{spread[1]:.1f}")
    for key in ("cpu_ratio", "throughput_ratio", "p99_ratio", "standby_cpu_ratio", "standby_p99_ratio",
                "scrape_cpu_ratio", "scrape_p99_ratio"):
        if key in summary:
            print(f"{key}: {summary[key]:.2f}")
    if "standby_throughput_cost" in summary:
        print(f"standby: delivered msg/s {100 * summary['standby_throughput_cost']:.0f}% below the single server's "
              "(same run; both servers on this machine)")
    for s in systems:
        runs = [r["total_rate"] for r in summary[s].get("runs", {}).get("throughput", [])]
        if len(runs) > 1:
            print(f"{s}: delivered msg/s over {len(runs)} runs: {min(runs):,.0f}-{max(runs):,.0f}")
    proxy = summary.get("proxy", {})
    if proxy.get("throughput_relay_cpu_pct") is not None and proxy["throughput_relay_cpu_pct"] < 90:
        print(f"note: zmq.proxy ran at {proxy['throughput_relay_cpu_pct']:.0f}% CPU at full speed: it was not the "
              "bottleneck (the publisher or the subscribers were), so the throughput ratio understates it; compare "
              "CPU per relayed message instead")
    print(f"elapsed: {summary['elapsed_s']} s")
    if summary.get("profile"):
        print(f"profile: {summary['profile']} (python -m pstats {summary['profile']})")


if __name__ == "__main__":
    raise SystemExit(main())
