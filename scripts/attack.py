#!/usr/bin/env python3
"""Availability attacks on one zmqchat server: what ordinary users feel during an attack, and how fast it heals.

For each mode a fresh zmqchat server is started on 127.0.0.1 (free random ports, history in a temporary
directory, nothing but flags that every version has). ``--others`` real ``zmqchat.Client`` instances (threads
of one spawned process) chat in ``#general``: each sends a message every 100 ms and times the round trip
until its own message comes back. Then one attack runs for ``--duration`` seconds, from spawned attacker
processes that connect from ``--attacker-address`` (a second loopback address, so the server can tell them
from the others at 127.0.0.1), while every 2 s a newcomer (a fresh Client with a new name) times its
connect. Then the attack is stopped and recovery is timed: from the stop until the others' round trip has
stayed under max(50 ms, 3 x the baseline p99) for 1 s (the figure is the send time of the last slow message
after the stop) and a newcomer started at the stop is in.

Modes (``--mode``, repeatable; default: all, after a ``baseline`` without attack whose p99 sets the bar):

* ``history-flood``: 200 raw sessions (own name, own rate bucket each) ask for 1000 messages of #general
  (backlog and gap style) as fast as their own request bucket allows; #general is pre-filled with 5,000.
* ``browse-flood``: the same 200 sessions ask who / rooms / stats, round robin, within their buckets.
* ``new-rooms``: new sessions as fast as the server takes them, each hello naming 256 new rooms, no pings.
* ``shared-rooms``: up to 2,000 sessions, each in the same 64 rooms, kept alive with pings.
* ``flood``: one session sends chat messages at full speed, ignoring every refusal.
* ``frame-bomb``: a never-finished multipart of 4,000 frames of 60 KB, then 6 messages of 1,000,000 frames.
* ``nonreaders``: 1,000 SUB connections subscribed to everything that never read, while ordinary sender
  sessions (each within its rate) publish ~100,000 messages to #load, read by one real Client in a process
  of its own (this mode's server keeps 20,000 messages per room, so a reader that falls behind can catch up).
* ``squat-heartbeat``: 1,024 sessions squat rooms that sort before every real room. A Client with a tiny
  RCVHWM in a quiet room stops reading; big messages to a second room fill its queues (this mode's server
  runs with a small ``--pub-hwm``), then a burst of 3,000 to the quiet room is lost whole: only heartbeats
  can tell the Client, which must fetch the lost tail from history within 20 s.
* ``idle-fds``: the server starts with a soft RLIMIT_NOFILE of 1024; 1,100 plain TCP connections that never
  send a byte are held open (reopened when the server closes them).

Traffic that is not the attack (the pre-fill, the burst, the nonreaders' senders) comes from 127.0.0.1
like the others. Reported per mode: the others' round trip p50 / p99 during the attack (a message never
echoed counts as infinite), the worst newcomer connect, the recovery time, the server's RSS at the end of
the attack and its peak (VmHWM, read after the recovery), its CPU during the attack, and "lost": messages
of one other that another never saw, by the end of an 8 s drain after the recovery window.

    python scripts/attack.py                                   # baseline + every mode, about 5 minutes
    python scripts/attack.py --mode flood --mode frame-bomb --duration 10
    python scripts/attack.py --server-pythonpath ../older-checkout --json  # the same attacks on another tree
    python scripts/attack.py --mode nonreaders --server-arg=--pub-hwm=1000

Every child is bounded in time (deadline, PR_SET_PDEATHSIG, a global alarm) and stopped by its own pid.
Attackers run at ``--attacker-nice`` (default 10): on one machine they stand for remote hosts, and should
not win the CPU from the server they attack. Nothing is sent anywhere but loopback.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import math
import multiprocessing as mp
import os
import queue
import resource
import secrets
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import zmq
from harness import cpu_seconds, die_with_parent, free_port_pair, pct, rss_mb
from loadtest import raise_nofile

from zmqchat import protocol as p

ROOM = "#general"
TAIL_ROOM = "#zz-tail"  # quiet: only heartbeats can tell its reader that the tail of a burst was lost
FILL_ROOM = "#zz-fill"  # where squat-heartbeat fills the reader's queues before the burst
LOAD_ROOM = "#load"  # where nonreaders' senders talk, read by one real Client (the others chat in #general)
MODES = ["history-flood", "browse-flood", "new-rooms", "shared-rooms", "flood", "frame-bomb", "nonreaders",
         "squat-heartbeat", "idle-fds"]
OTHER_PERIOD = 0.1  # seconds between two messages of one other
NEWCOMER_EVERY = 2.0  # seconds between newcomers during the attack
NEWCOMER_CAP = 20.0  # seconds a newcomer waits for its welcome before it counts as a timeout
PRE_SECONDS = 2.0  # others chat this long before the attack starts (the "pre" figures)
GOOD_FOR = 1.0  # seconds the round trip must stay under the bar to count as recovered
MIN_BAR = 0.050  # seconds: the recovery bar is max(MIN_BAR, 3 x baseline p99)
NOBLOCK = zmq.NOBLOCK


# --------------------------------------------------------------------------------------------------
# helpers shared by the orchestrator and the workers


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as integers allow."""
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def attacker_endpoints(job: dict) -> tuple[str, str]:
    """(in, out) endpoints with the attacker's source address: libzmq's ``tcp://SRC:0;DST:PORT``."""
    src = f"{job['src']}:0;" if job.get("src") else ""
    return f"tcp://{src}127.0.0.1:{job['port']}", f"tcp://{src}127.0.0.1:{job['port'] + 1}"


def server_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def nofile_limits(pid: int) -> tuple[int, int] | None:
    """(soft, hard) RLIMIT_NOFILE of a running process, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    except (OSError, ValueError):
        pass
    return None


class Control:
    """A worker's view of the orchestrator: ("go", hard deadline), ("stop",) and mode commands."""

    def __init__(self, ctrl: mp.Queue, life_end: float) -> None:
        self.ctrl = ctrl
        self.life_end = life_end
        self.deadline: float | None = None
        self.stopped = False
        self.commands: list[tuple] = []

    def _handle(self, msg: tuple) -> None:
        if msg[0] == "go":
            self.deadline = msg[1]
        elif msg[0] == "stop":
            self.stopped = True
        else:
            self.commands.append(msg)

    def poll(self) -> None:
        while True:
            try:
                self._handle(self.ctrl.get_nowait())
            except queue.Empty:
                return

    def wait(self, seconds: float) -> None:
        """Block on the control queue for at most ``seconds`` (how an idle worker waits)."""
        try:
            self._handle(self.ctrl.get(timeout=seconds))
        except queue.Empty:
            pass
        self.poll()

    def wait_go(self) -> None:
        while self.deadline is None and not self.over:
            self.wait(0.2)

    def take(self) -> list[tuple]:
        out, self.commands = self.commands, []
        return out

    @property
    def over(self) -> bool:
        return (self.stopped or time.time() > self.life_end
                or (self.deadline is not None and time.monotonic() >= self.deadline))


class Sessions:
    """Raw protocol sessions in one worker: hellos until welcomed (again after a time-out), pings, a local
    copy of each session's token bucket (so that it stays within it), and the replies drained."""

    def __init__(self, ctx: zmq.Context, job: dict, tag: str, n: int, rooms_for, own_sockets: bool = True,
                 group: int = 16, sub_hwm: int = 1000, topics: tuple[bytes, ...] = ()) -> None:
        self.n = n
        self.rate = job["rate"] * job["safety"]
        self.burst = job["burst"] * job["safety"]
        self.sids = [f"{tag}{i}-{secrets.token_hex(4)}" for i in range(n)]
        self.names = [f"{tag}{i}" for i in range(n)]
        in_ep, out_ep = attacker_endpoints(job)
        self.pushes: list[zmq.Socket] = []
        self.subs: list[zmq.Socket] = []
        self.push_of: list[zmq.Socket] = []

        def sock(kind: int) -> zmq.Socket:
            s = ctx.socket(kind)
            s.setsockopt(zmq.LINGER, 0)
            if kind == zmq.SUB:
                s.setsockopt(zmq.RCVHWM, sub_hwm)
                # subscriptions travel as messages under SNDHWM (1000): beyond, libzmq drops them silently
                s.setsockopt(zmq.SNDHWM, 0)
            return s

        if own_sockets:
            for sid in self.sids:
                sub = sock(zmq.SUB)
                sub.setsockopt(zmq.SUBSCRIBE, p.session_topic(sid))
                sub.connect(out_ep)
                push = sock(zmq.PUSH)
                push.connect(in_ep)
                self.subs.append(sub)
                self.pushes.append(push)
                self.push_of.append(push)
        else:
            sub = sock(zmq.SUB)
            for sid in self.sids:
                sub.setsockopt(zmq.SUBSCRIBE, p.session_topic(sid))
            sub.connect(out_ep)
            self.subs.append(sub)
            for _ in range(math.ceil(n / group)):
                push = sock(zmq.PUSH)
                push.connect(in_ep)
                self.pushes.append(push)
            self.push_of = [self.pushes[i // group] for i in range(n)]
        for topic in topics:
            self.subs[0].setsockopt(zmq.SUBSCRIBE, topic)
        self.index = {p.session_topic(sid): i for i, sid in enumerate(self.sids)}
        rooms = [rooms_for(i) for i in range(n)]
        self.hello_cost = [min(1 + len(r) / 4, job["burst"]) for r in rooms]
        self.hellos = [p.encode_client(p.Hello(session=sid, name=name, rooms=r, rid=f"h{i}"))
                       for i, (sid, name, r) in enumerate(zip(self.sids, self.names, rooms))]
        self.pings = [p.encode_client(p.Ping(session=sid)) for sid in self.sids]
        self.welcomed = [0.0] * n
        self.waiting = set(range(n))
        self.hello_due = [0.0] * n
        self.last_sent = [0.0] * n
        self.tokens = [0.0] * n
        self.stamp = [0.0] * n
        self.hold = [0.0] * n
        self.counts: collections.Counter = collections.Counter()
        self.poller = zmq.Poller()
        for s in self.subs:
            self.poller.register(s, zmq.POLLIN)
        self.on_error = None
        self.on_message = None
        self._next_keepalive = 0.0

    def send(self, i: int, frames: list[bytes]) -> bool:
        try:
            self.push_of[i].send_multipart(frames, NOBLOCK)
        except zmq.Again:
            self.counts["send_again"] += 1
            return False
        self.last_sent[i] = time.monotonic()
        return True

    def say_hello(self, now: float, retry: float = 0.5, most: int = 1000) -> None:
        for i in [i for i in self.waiting if self.hello_due[i] <= now][:most]:
            if self.send(i, self.hellos[i]):
                self.counts["hellos"] += 1
            self.hello_due[i] = now + retry

    def keepalive(self, now: float, every: float = 1.0) -> None:
        if now < self._next_keepalive:
            return
        self._next_keepalive = now + 0.1
        for i in range(self.n):
            if self.welcomed[i] and now - self.last_sent[i] >= every:
                self.send(i, self.pings[i])
                self.counts["pings"] += 1

    def take(self, i: int, cost: float, now: float) -> bool:
        """Spend ``cost`` of session i's (local copy of its) bucket; False if it must wait."""
        tokens = min(self.burst, self.tokens[i] + (now - self.stamp[i]) * self.rate)
        self.tokens[i], self.stamp[i] = tokens, now
        cost = min(cost, self.burst)
        if now < self.hold[i] or tokens < cost:
            return False
        self.tokens[i] = tokens - cost
        return True

    def drain(self, timeout_ms: int, budget: int = 500) -> int:
        got = 0
        for sock, _ in self.poller.poll(timeout_ms):
            for _ in range(budget):
                try:
                    frames = sock.recv_multipart(NOBLOCK)
                except zmq.Again:
                    break
                got += 1
                if len(frames) != 5:  # topic, version, kind, body, term
                    continue
                kind = frames[2]
                self.counts[kind.decode(errors="replace")] += 1
                if kind == b"welcome":
                    self._welcome(frames[0])
                elif kind == b"error":
                    self._error(frames[0], frames[3])
                elif self.on_message is not None:
                    self.on_message(frames)
        return got

    def _welcome(self, topic: bytes) -> None:
        i = self.index.get(topic)
        if i is None or i not in self.waiting:
            return
        now = time.monotonic()
        self.waiting.discard(i)
        self.welcomed[i] = now
        self.tokens[i] = self.burst - self.hello_cost[i] - 1  # the hello was charged to the request bucket
        self.stamp[i] = now

    def _error(self, topic: bytes, raw: bytes) -> None:
        i = self.index.get(topic)
        body = json.loads(raw)
        code = body.get("code", "?")
        self.counts["err:" + code] += 1
        if i is None:
            return
        now = time.monotonic()
        if code in ("rate_limited", "busy"):  # busy: what newer servers say when their work budget is spent
            wait = max(float(body.get("retry_after") or 0.0), 0.01)
            if code == "rate_limited" and str(body.get("rid", "")).startswith("h"):  # our hello, refused
                self.hello_due[i] = now + max(wait, 0.25)  # no faster than the reference client's retry
            else:  # honour retry_after: nothing more from this session until then
                self.hold[i] = now + wait
                self.tokens[i] = 0.0
        elif code == "unknown_session" and self.welcomed[i]:
            self.welcomed[i] = 0.0  # timed out (we were too slow): say hello again
            self.waiting.add(i)
            self.hello_due[i] = now
        if self.on_error is not None:
            self.on_error(i, body)

    def connect_all(self, ctl: Control, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.waiting and not ctl.over:
            now = time.monotonic()
            if now > end:
                raise RuntimeError(f"{len(self.waiting)} of {self.n} sessions got no welcome in {timeout:g}s")
            ctl.poll()
            self.say_hello(now)
            self.keepalive(now)
            self.drain(20)

    def report(self) -> dict:
        return {"sessions": self.n, "welcomed": sum(1 for w in self.welcomed if w), **dict(self.counts)}

    def close(self) -> None:
        for s in self.pushes + self.subs:
            s.close(linger=0)


# --------------------------------------------------------------------------------------------------
# workers: spawned processes, one function per kind


def worker_entry(kind: str, wid: str, job: dict, ctrl: mp.Queue, results: mp.Queue) -> None:
    die_with_parent()
    if job.get("nice"):
        os.nice(job["nice"])
    try:
        WORKERS[kind](wid, job, Control(ctrl, job["life_end"]), results)
    except Exception:  # noqa: BLE001 (reported to the orchestrator, never a hang)
        results.put(("error", wid, f"{kind}: {traceback.format_exc(limit=6)}"))


def w_requests(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """history-flood / browse-flood: many sessions, each asking as fast as its own request bucket allows."""
    n = job["n"]
    raise_nofile(4 * n + 256)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 2 * n + 64)
    ss = Sessions(ctx, job, f"{job['tag']}{wid}x", n, lambda i: [ROOM])
    try:
        ss.connect_all(ctl, 30.0)
        pad = "p" * 120
        for i, sid in enumerate(ss.sids):  # pre-fill: within the message burst, counters 1, 2, 3, ...
            for k in range(1, job["prefill"] + 1):
                ss.send(i, p.encode_client(p.Say(session=sid, room=ROOM, text=f"prefill {wid} {i} {k} {pad}",
                                                 mid=f"{sid}.{k}")))
        results.put(("ready", wid, {"sessions": n}))
        if job["kind"] == "idle":  # pre-fill only
            makers, costs = [], []
        elif job["kind"] == "history":
            makers = [lambda s: p.HistoryRequest(session=s, room=ROOM, after=0, before=0, limit=1000, rid="b"),
                      lambda s: p.HistoryRequest(session=s, room=ROOM, after=1, before=10**12, limit=1000, rid="g")]
            costs = [1 + 1000 / 200] * 2
        else:
            makers = [lambda s: p.WhoRequest(session=s, room=ROOM, rid="w"),
                      lambda s: p.RoomsRequest(session=s, rid="r"),
                      lambda s: p.StatsRequest(session=s, rid="s")]
            costs = [1.0] * 3
        frames = [[p.encode_client(make(sid)) for make in makers] for sid in ss.sids]
        turn = [i % max(1, len(makers)) for i in range(n)]
        sent = 0
        while not ctl.over:
            ctl.poll()
            now = time.monotonic()
            if ctl.deadline is not None and makers:
                for i in range(n):
                    if not ss.welcomed[i]:
                        continue
                    for _ in range(4):
                        k = turn[i] % len(makers)
                        if not ss.take(i, costs[k], now):
                            break
                        sent += ss.send(i, frames[i][k])
                        turn[i] += 1
            ss.say_hello(now)
            ss.keepalive(now)
            ss.drain(2 if ctl.deadline is not None else 20)
        results.put(("done", wid, {"requests": sent, **ss.report()}))
    finally:
        ss.close()
        ctx.term()


def w_newrooms(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """new-rooms: hellos as fast as the server takes them, 256 never-used rooms each, never a ping."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(attacker_endpoints(job)[0])
    results.put(("ready", wid, {}))
    ctl.wait_go()
    sent = blocked = 0
    tag = f"{wid}x"
    t0 = time.monotonic()
    try:
        while not ctl.over and sent < job["cap"]:
            sid = f"{tag}{sent}"
            rooms = ",".join(f'"#{tag}{sent}.{j}"' for j in range(job["rooms"]))
            body = f'{{"session":"{sid}","name":"{sid}","rooms":[{rooms}],"rid":""}}'.encode()
            while not ctl.over:
                try:
                    push.send_multipart([p.VERSION, b"hello", body], NOBLOCK)
                    sent += 1
                    break
                except zmq.Again:
                    blocked += 1
                    push.poll(20, zmq.POLLOUT)
                    ctl.poll()
            if sent % 64 == 0:
                ctl.poll()
    finally:
        push.close(linger=0)
        ctx.term()
    results.put(("done", wid, {"hellos": sent, "blocked": blocked, "capped": sent >= job["cap"],
                               "seconds": round(time.monotonic() - t0, 2)}))


def w_hold(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """shared-rooms / squat-heartbeat: sessions kept alive with pings, in shared rooms or one room each."""
    n = job["n"]
    ctx = zmq.Context()
    if job["rooms"] == "shared":
        shared = [f"#shared{j:02d}" for j in range(64)]

        def rooms_for(i: int) -> list[str]:
            return shared
    else:
        def rooms_for(i: int) -> list[str]:
            return [f"#-{wid}x{i:04d}"]  # '-' sorts before every letter: these come first
    ss = Sessions(ctx, job, f"{wid}x", n, rooms_for, own_sockets=False, group=64, sub_hwm=0)
    try:
        results.put(("ready", wid, {}))
        ctl.wait_go()
        announced = False
        peak = 0
        while not ctl.over:
            ctl.poll()
            now = time.monotonic()
            ss.say_hello(now, retry=1.0)
            ss.keepalive(now)
            ss.drain(5, budget=2000)
            alive = n - len(ss.waiting)
            peak = max(peak, alive)
            if not announced and not ss.waiting:
                announced = True
                results.put(("event", wid, "all_alive", {"t": now}))
        results.put(("done", wid, {"alive_peak": peak, **ss.report()}))
    finally:
        ss.close()
        ctx.term()


def w_bursters(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """squat-heartbeat: sessions that, on command, first fill the reader's queues with big messages to a
    second room, then send the burst to the quiet room (every session within its burst). The burst then
    finds the reader's PUB queue full and is lost whole: a pure lost tail, which only a heartbeat reveals."""
    n = job["n"]
    ctx = zmq.Context()
    # Heartbeats (on a queue of ours that stays short) tell when each phase is committed and published.
    ss = Sessions(ctx, job, f"burst{wid}x", n, lambda i: [FILL_ROOM, TAIL_ROOM], own_sockets=False, group=8,
                  sub_hwm=0, topics=(p.ALL_TOPIC,))
    newest = {FILL_ROOM: 0, TAIL_ROOM: 0}

    def on_message(frames: list[bytes]) -> None:
        if frames[2] == b"hb":
            for room, seq in json.loads(frames[3]).get("seqs", {}).items():
                if room in newest and isinstance(seq, int):
                    newest[room] = max(newest[room], seq)

    ss.on_message = on_message
    counter = [0] * n

    def send_phase(room: str, total: int, size: int) -> None:
        pad = "b" * size
        per = split(total, n)
        for k in range(max(per)):
            for i, sid in enumerate(ss.sids):
                if k < per[i]:
                    counter[i] += 1
                    ss.send(i, p.encode_client(p.Say(session=sid, room=room, mid=f"{sid}.{counter[i]}",
                                                     text=f"B {i} {k} {pad}")))

    try:
        ss.connect_all(ctl, 30.0)
        results.put(("ready", wid, {}))
        phase = None
        t0 = t_phase = 0.0
        info: dict = {}
        while not ctl.over:
            ctl.poll()
            now = time.monotonic()
            if any(cmd[0] == "burst" for cmd in ctl.take()):
                t0 = t_phase = now
                send_phase(FILL_ROOM, job["fill"], job["fill_bytes"])
                phase = "fill"
            elif phase == "fill" and (newest[FILL_ROOM] >= job["fill"] or now - t_phase > 3):
                info["fill_published_s"] = round(now - t0, 2)
                phase, t_phase = "settle", now
            elif phase == "settle" and now - t_phase >= job["settle"]:
                t_phase = now
                send_phase(TAIL_ROOM, job["total"], job["text_bytes"])
                phase = "tail"
            elif phase == "tail" and (newest[TAIL_ROOM] >= job["total"] or now - t_phase > 5):
                info.update(published=newest[TAIL_ROOM], published_s=round(now - t0, 2))
                results.put(("event", wid, "burst_done", info))
                phase = None
            ss.keepalive(now)
            ss.drain(5, budget=5000)
        results.put(("done", wid, ss.report()))
    finally:
        ss.close()
        ctx.term()


def tail_reader(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """squat-heartbeat: a real Client with a tiny RCVHWM that stops reading while the burst goes out."""
    from zmqchat import Client
    from zmqchat import events as ev

    client = Client("tailreader", host="127.0.0.1", port=job["port"], rooms=[TAIL_ROOM, FILL_ROOM],
                    rcvhwm=job["rcvhwm"],
                    connect_timeout=20)
    try:
        results.put(("ready", wid, {}))
        t_pause = None
        while t_pause is None and not ctl.over:
            client.poll(0.05)
            ctl.poll()
            if any(cmd[0] == "pause" for cmd in ctl.take()):
                t_pause = time.monotonic()
        results.put(("event", wid, "paused", {"t": t_pause}))
        end = time.monotonic() + job["max_pause"]
        while not ctl.over and time.monotonic() < end:  # not reading: the Client's sockets sit untouched
            ctl.wait(min(0.05, max(0.0, end - time.monotonic())))
            if any(cmd[0] == "resume" for cmd in ctl.take()):
                break
        t_resume = time.monotonic()
        got = 0
        last = None
        first_gap = None
        first = None
        gap_kind = None
        reconnects = 0
        notices: list[str] = []
        sync = getattr(client.session, "rooms", {}).get(TAIL_ROOM)
        end = t_resume + job["window"]
        while got < job["total"] and time.monotonic() < end:
            events, _ = client.poll(min(0.1, max(0.0, end - time.monotonic())))
            now = time.monotonic()
            for e in events:
                if isinstance(e, ev.Message) and e.room == TAIL_ROOM and e.sender.startswith("burst"):
                    got += 1
                    last = now
                    first = now if first is None else first
                elif isinstance(e, ev.Notice):
                    notices.append(e.text)
                elif isinstance(e, ev.Connected) and e.reconnected:
                    reconnects += 1
            if first_gap is None and sync is not None and getattr(sync, "requested_at", None) is not None:
                # a hole (later messages are held) or a lost tail (only a heartbeat's newest number says
                # that something is missing); seen when poll() next returns events, so a little late
                first_gap = now - t_resume
                gap_kind = "hole" if getattr(sync, "buffer", None) else "tail"
        results.put(("done", wid, {"got": got, "total": job["total"], "pause_s": t_resume - (t_pause or t_resume),
                                   "seconds": (last - t_resume) if last is not None else None,
                                   "complete": got >= job["total"], "first_gap_request_s": first_gap,
                                   "first_s": (first - t_resume) if first is not None else None,
                                   "first_gap_kind": gap_kind,
                                   "reconnects": reconnects,
                                   "notices": notices[:3]}))
    finally:
        client.close(linger=0.3)


def load_reader(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """nonreaders: a real Client in LOAD_ROOM, in a process of its own, that reads everything the senders
    say there: how much of it a reader gets while a thousand others never read."""
    from zmqchat import Client
    from zmqchat import events as ev

    client = Client("loadreader", host="127.0.0.1", port=job["port"], rooms=[LOAD_ROOM], connect_timeout=20)
    got: set[str] = set()
    gone = 0
    try:
        client.connect()
        results.put(("ready", wid, {}))
        ctl.wait_go()
        quiet_since = None
        while True:
            events, _ = client.poll(0.1)
            ctl.poll()
            for e in events:
                if isinstance(e, ev.Message) and e.room == LOAD_ROOM and e.text.startswith("nr "):
                    got.add(e.text)
                elif isinstance(e, ev.Notice) and "no longer in history" in e.text:
                    gone += int(e.text.split(" ", 1)[0])
            now = time.monotonic()
            if not ctl.over:
                continue
            quiet_since = now if events or quiet_since is None else quiet_since
            if now - quiet_since > 3.0:
                break
        sync = client.session.rooms.get(LOAD_ROOM)
        results.put(("done", wid, {"got": len(got), "gone": gone, "last_seq": sync.last if sync else None,
                                   "newest_seq": sync.newest if sync else None}))
    finally:
        client.close(linger=0.3)


def w_flood(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """flood: one session, chat messages at full speed with increasing counters, refusals ignored."""
    ctx = zmq.Context()
    ss = Sessions(ctx, job, "flood", 1, lambda i: [ROOM])
    try:
        ss.connect_all(ctl, 30.0)
        results.put(("ready", wid, {}))
        ctl.wait_go()
        sid = ss.sids[0]
        head = f'{{"session":"{sid}","room":"{ROOM}","text":"flood {"f" * 80}","mid":"{sid}.'.encode()
        tail = b'","action":false}'
        push = ss.push_of[0]
        n = blocked = 0
        t0 = time.monotonic()
        while not ctl.over and n < job["cap"]:
            for _ in range(512):
                try:
                    push.send_multipart([p.VERSION, b"msg", b"%s%d%s" % (head, n + 1, tail)], NOBLOCK)
                    n += 1
                except zmq.Again:
                    blocked += 1
                    push.poll(10, zmq.POLLOUT)
                    break
            ctl.poll()
        elapsed = time.monotonic() - t0
        results.put(("done", wid, {"sent": n, "rate": n / max(elapsed, 1e-9), "blocked": blocked}))
    finally:
        ss.close()
        ctx.term()


def w_framebomb(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """frame-bomb: a multipart that never ends (held open), then messages of a million empty frames."""
    ctx = zmq.Context()
    in_ep = attacker_endpoints(job)[0]
    bombs, unfinished = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    for s in (bombs, unfinished):
        s.setsockopt(zmq.LINGER, 0)
        s.connect(in_ep)
    try:
        results.put(("ready", wid, {}))
        ctl.wait_go()
        t0 = time.monotonic()
        chunk = b"u" * job["frame_bytes"]
        for _ in range(job["unfinished_frames"]):  # never the last frame: the message stays open
            unfinished.send(chunk, zmq.SNDMORE)
        t_unfinished = time.monotonic() - t0
        times = []
        for _ in range(job["bombs"]):
            if ctl.over:
                break
            for _ in range(job["bomb_frames"] - 1):
                bombs.send(b"", zmq.SNDMORE)
            bombs.send(b"")
            times.append(round(time.monotonic() - t0, 2))
            ctl.poll()
        results.put(("event", wid, "bombs_sent", {"t": time.monotonic()}))
        while not ctl.over:
            ctl.wait(0.2)
        results.put(("done", wid, {"unfinished_sent_s": round(t_unfinished, 2), "bombs_sent_at_s": times}))
    finally:
        bombs.close(linger=0)
        unfinished.close(linger=0)
        ctx.term()


def w_nonreaders(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """nonreaders: SUB connections subscribed to everything that never read (tiny buffers on our side)."""
    n = job["n"]
    raise_nofile(3 * n + 256)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, n + 64)
    subs = []
    try:
        results.put(("ready", wid, {}))
        ctl.wait_go()
        out_ep = attacker_endpoints(job)[1]
        for _ in range(n):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, 1)
            s.setsockopt(zmq.RCVBUF, 4096)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(out_ep)
            subs.append(s)
        while not ctl.over:
            ctl.wait(0.2)
    finally:
        for s in subs:
            s.close(linger=0)
        ctx.term()
    results.put(("done", wid, {"subs": len(subs)}))


def w_senders(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """nonreaders: many sender sessions, each within its own rate, publishing to #general."""
    n = job["n"]
    raise_nofile(n + 256)
    ctx = zmq.Context()
    room = job.get("room", ROOM)
    ss = Sessions(ctx, job, f"{wid}x", n, lambda i: [room], own_sockets=False, group=16, sub_hwm=0)
    nxt = [1] * n

    def on_error(i: int, body: dict) -> None:
        code, mid = body.get("code"), str(body.get("mid") or "")
        if code == "rate_limited" and mid:
            nxt[i] = min(nxt[i], int(mid.rpartition(".")[2]))  # resend from the held one, after the wait
        elif code == "resend" and body.get("resend_from"):
            nxt[i] = min(nxt[i], int(body["resend_from"]))

    ss.on_error = on_error
    try:
        ss.connect_all(ctl, 30.0)
        results.put(("ready", wid, {}))
        ctl.wait_go()
        heads = [f'{{"session":"{sid}","room":"{room}","text":"nr {i} '.encode() for i, sid in enumerate(ss.sids)]
        mids = [f' {"n" * 60}","mid":"{sid}.'.encode() for sid in ss.sids]
        tail = b'","action":false}'
        sent = 0
        while not ctl.over and sent < job["cap"]:
            ctl.poll()
            now = time.monotonic()
            for i in range(n):
                while sent < job["cap"] and ss.welcomed[i] and ss.take(i, 1.0, now):
                    k = nxt[i]
                    if ss.send(i, [p.VERSION, b"msg", b"%s%d%s%d%s" % (heads[i], k, mids[i], k, tail)]):
                        nxt[i] = k + 1
                        sent += 1
            ss.say_hello(now)
            ss.keepalive(now)
            ss.drain(2)
        results.put(("done", wid, {"sent": sent, **ss.report()}))
    finally:
        ss.close()
        ctx.term()


def w_idlefds(wid: str, job: dict, ctl: Control, results: mp.Queue) -> None:
    """idle-fds: plain TCP connections to the PULL port that never send a byte, reopened when closed."""
    n = job["n"]
    raise_nofile(n + 512)
    sel = selectors.DefaultSelector()
    addr = ("127.0.0.1", job["port"])
    conns: dict[socket.socket, list] = {}  # socket -> [state, since]
    counts: collections.Counter = collections.Counter()
    lifetimes: list[float] = []
    held: list[int] = []

    def drop(s: socket.socket) -> None:
        conns.pop(s, None)
        try:
            sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()

    def open_one(now: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            if job.get("src"):
                s.bind((job["src"], 0))
            rc = s.connect_ex(addr)
        except OSError:
            counts["connect_error"] += 1
            s.close()
            return
        if rc not in (0, errno.EINPROGRESS):
            counts["connect_error"] += 1
            s.close()
            return
        conns[s] = ["connecting", now]
        sel.register(s, selectors.EVENT_WRITE)
        counts["connects"] += 1

    results.put(("ready", wid, {}))
    ctl.wait_go()
    next_check = 0.0
    try:
        while not ctl.over:
            ctl.poll()
            now = time.monotonic()
            for _ in range(min(200, n - len(conns))):
                open_one(now)
            for key, _ in sel.select(0.05):
                s = key.fileobj
                state = conns.get(s)
                if state is None:
                    continue
                if state[0] == "connecting":
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        counts["connect_failed"] += 1
                        drop(s)
                    else:
                        state[0], state[1] = "open", now
                        sel.modify(s, selectors.EVENT_READ)
                        counts["established"] += 1
                    continue
                try:
                    data = s.recv(4096)  # the server's greeting; we never answer it
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    counts["greeting_bytes"] += len(data)
                else:
                    counts["closed_by_server"] += 1
                    lifetimes.append(now - state[1])
                    drop(s)
            if now >= next_check:
                next_check = now + 0.5
                for s, state in list(conns.items()):
                    if state[0] == "connecting" and now - state[1] > 5.0:
                        counts["connect_timeout"] += 1
                        drop(s)
                if ctl.deadline is not None:
                    held.append(sum(1 for state in conns.values() if state[0] == "open"))
    finally:
        for s in list(conns):
            drop(s)
    results.put(("done", wid, {"held_min": min(held, default=0), "held_max": max(held, default=0),
                               "held_avg": round(sum(held) / len(held)) if held else 0,
                               "lifetime_avg_s": round(sum(lifetimes) / len(lifetimes), 2) if lifetimes else None,
                               **dict(counts)}))


WORKERS = {"requests": w_requests, "newrooms": w_newrooms, "hold": w_hold, "bursters": w_bursters,
           "tail": tail_reader, "flood": w_flood, "framebomb": w_framebomb, "nonreaders": w_nonreaders,
           "senders": w_senders, "idlefds": w_idlefds, "loadreader": load_reader}


# --------------------------------------------------------------------------------------------------
# the others: real Clients, threads of one process


class OthersState:
    def __init__(self, n: int) -> None:
        self.lock = threading.Lock()
        self.samples: list[tuple[float, float]] = []
        self.sent: list[dict[int, float]] = [{} for _ in range(n)]
        self.ready = [False] * n
        self.done = [False] * n
        self.errors: list[str | None] = [None] * n
        self.final_k: list[int | None] = [None] * n
        self.result: list[dict | None] = [None] * n
        self.stop = threading.Event()


def others_entry(job: dict, ctrl: mp.Queue, results: mp.Queue) -> None:
    die_with_parent()
    try:
        _others(job, ctrl, results)
    except Exception:  # noqa: BLE001 (reported to the orchestrator, never a hang)
        results.put(("error", "others", traceback.format_exc(limit=6)))


def _others(job: dict, ctrl: mp.Queue, results: mp.Queue) -> None:
    n = job["n"]
    st = OthersState(n)
    threads = [threading.Thread(target=_other, args=(i, job, st), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    reported_ready = False
    stop_at = None
    life_end = job["life_end"]
    while time.time() < life_end:
        try:
            if ctrl.get(timeout=0.2)[0] == "stop":
                st.stop.set()
                stop_at = time.monotonic()
        except queue.Empty:
            pass
        if not reported_ready and (all(st.ready) or any(st.errors)):
            reported_ready = True
            results.put(("ready", "others", {"errors": [e for e in st.errors if e]}))
        with st.lock:
            batch, st.samples = st.samples, []
        pending = [sorted(d.values())[:1000] for d in st.sent]
        results.put(("samples", "others", {"t": time.monotonic(), "s": batch, "pending": pending}))
        if stop_at is not None and (all(st.done) or time.monotonic() > stop_at + job["drain"] + 5):
            break
    for th in threads:
        th.join(timeout=2.0)
    results.put(("final", "others", {"results": st.result, "errors": st.errors}))


def _other(i: int, job: dict, st: OthersState) -> None:
    from zmqchat import Client
    from zmqchat import events as ev

    n, prefix = job["n"], job["prefix"]
    try:
        client = Client(f"{prefix}{i}", host="127.0.0.1", port=job["port"], rooms=[ROOM], connect_timeout=30)
    except Exception as exc:  # noqa: BLE001
        st.errors[i] = f"{prefix}{i}: {exc!r}"
        st.done[i] = True
        return
    st.ready[i] = True
    sent = st.sent[i]
    seen: list[set[int]] = [set() for _ in range(n)]
    notices: list[str] = []
    lost_conn = 0
    k = 0
    nxt = time.monotonic() + OTHER_PERIOD * i / n
    drain_until = None
    try:
        while True:
            now = time.monotonic()
            if not st.stop.is_set():
                if now >= nxt:
                    k += 1
                    sent[k] = now
                    client.say(f"{i}:{k}")
                    nxt += OTHER_PERIOD
                    if nxt < now:
                        nxt = now + OTHER_PERIOD
                wait = max(0.0, min(nxt - time.monotonic(), 0.05))
            else:
                if drain_until is None:
                    st.final_k[i] = k
                    drain_until = now + job["drain"]
                finals = st.final_k
                complete = not sent and all(finals[j] is not None and len(seen[j]) >= finals[j]
                                            for j in range(n) if j != i)
                if complete or now >= drain_until:
                    break
                wait = 0.05
            events, _ = client.poll(wait)
            t = time.monotonic()
            for e in events:
                if isinstance(e, ev.Message):
                    if e.room != ROOM or not e.sender.startswith(prefix):
                        continue
                    j_str, _, k_str = e.text.partition(":")
                    if not (j_str.isdigit() and k_str.isdigit()):
                        continue
                    if e.own:
                        t0 = sent.pop(int(k_str), None)
                        if t0 is not None:
                            with st.lock:
                                st.samples.append((t0, t - t0))
                    elif int(j_str) < n:
                        seen[int(j_str)].add(int(k_str))
                elif isinstance(e, ev.Notice):
                    notices.append(e.text)
                elif isinstance(e, ev.ConnectionLost):
                    lost_conn += 1
        finals = st.final_k
        missing = {j: (finals[j] or 0) - len({x for x in seen[j] if x <= (finals[j] or 0)})
                   for j in range(n) if j != i}
        st.result[i] = {"sent": k, "unechoed": sorted(sent.values()), "missing": sum(missing.values()),
                        "connection_lost": lost_conn, "notices": len(notices), "notice": notices[:2]}
    finally:
        client.close(linger=0.5)
        st.done[i] = True


def _newcomer(name: str, port: int, timeout: float, rec: dict) -> None:
    from zmqchat import Client

    t0 = time.monotonic()
    try:
        client = Client(name, host="127.0.0.1", port=port, rooms=[ROOM], connect_timeout=timeout)
    except Exception as exc:  # noqa: BLE001 (a timeout is the measurement, anything else is reported)
        rec.update(s=None, err=str(exc)[:120], done=True, t_end=time.monotonic())
        return
    t1 = time.monotonic()
    rec.update(s=t1 - t0, t_end=t1, done=True)
    client.close(linger=0.3)


def query_stats(port: int, timeout: float = 5.0) -> dict | None:
    """The server's counters, through a short-lived raw session from 127.0.0.1 (None if no answer)."""
    ctx = zmq.Context()
    sid = "probe" + secrets.token_hex(6)
    sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
    for s in (sub, push):
        s.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, p.session_topic(sid))
    sub.connect(f"tcp://127.0.0.1:{port + 1}")
    push.connect(f"tcp://127.0.0.1:{port}")
    hello = p.encode_client(p.Hello(session=sid, name=sid, rooms=[], rid="hp"))
    ask = p.encode_client(p.StatsRequest(session=sid, rid="sp"))
    end = time.monotonic() + timeout
    welcomed = False
    next_send = 0.0
    result = None
    try:
        while result is None and time.monotonic() < end:
            if time.monotonic() >= next_send:
                push.send_multipart(ask if welcomed else hello, NOBLOCK)
                next_send = time.monotonic() + 0.5
            if not sub.poll(100):
                continue
            frames = sub.recv_multipart()
            if len(frames) != 5:  # topic, version, kind, body, term
                continue
            if frames[2] == b"welcome" and not welcomed:
                welcomed = True
                next_send = 0.0
            elif frames[2] == b"stats":
                result = json.loads(frames[3]).get("stats")
        if welcomed:
            push.send_multipart(p.encode_client(p.Bye(session=sid, rid="bp")), NOBLOCK)
    except zmq.Again:
        pass
    finally:
        sub.close(linger=0)
        push.close(linger=100)
        ctx.term()
    return result


# --------------------------------------------------------------------------------------------------
# orchestration of one mode


class ServerDied(RuntimeError):
    pass


class Alarm(BaseException):
    """The global time limit: not an Exception, so that no mode's error handling swallows it."""


class Harness:
    """One mode's run: its server, the others, the attacker workers, newcomers and the measurements."""

    def __init__(self, args, mode: str, index: int, mpctx, tmp: Path, say) -> None:
        self.args = args
        self.mode = mode
        self.index = index
        self.mp = mpctx
        self.tmp = tmp
        self.say = say
        self.results = mpctx.Queue()
        self.life_end = time.time() + args.duration + args.recovery_max + 240
        self.workers: dict[str, dict] = {}
        self.events: list[tuple[str, str, dict, float]] = []
        self.server: subprocess.Popen | None = None
        self.server_log: Path | None = None
        self.port = 0
        self.samples: list[tuple[float, float]] = []
        self.pending: list[list[float]] = []
        self.pending_at = 0.0
        self.others: mp.Process | None = None
        self.others_ctrl = None
        self.others_ready: dict | None = None
        self.others_final: dict | None = None
        self.newcomers: list[dict] = []
        self.threads: list[threading.Thread] = []
        self.rss_peak_sampled = 0.0
        self.fds_max = 0
        self._next_sample = 0.0
        self.nofile: tuple[int, int] | None = None
        self.go_at = 0.0
        self.deadline = 0.0

    # -- the server

    def start_server(self, extra: list[str], nofile_soft: int | None, nofile_hard: int | None = None) -> None:
        args = self.args
        self.port = free_port_pair()
        data = self.tmp / f"data-{self.index}-{self.mode}"
        argv = [sys.executable, "-m", "zmqchat.cli.server", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(data), "--stats-interval", "0", *extra]
        for arg in args.server_arg or []:
            argv += shlex.split(arg)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQCHAT_")}
        if args.server_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(x for x in (args.server_pythonpath, env.get("PYTHONPATH")) if x)

        def pre_exec() -> None:
            die_with_parent()
            if nofile_soft:
                _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                hard = min(hard, nofile_hard or hard)  # lowering the hard limit is allowed, raising it is not
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile_soft, hard), hard))

        self.server_log = self.tmp / f"server-{self.index}-{self.mode}.log"
        with open(self.server_log, "wb") as log:
            # cwd: the temporary directory, so that --server-pythonpath decides which zmqchat runs
            self.server = subprocess.Popen(argv, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           env=env, preexec_fn=pre_exec)  # noqa: PLW1509 (prctl + setrlimit)
        end = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port + 1), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"server did not listen within 20 s: {self.log_tail()}")
            try:
                self.server.wait(timeout=0.05)  # the pace of this poll, and an early exit is seen at once
                raise ServerDied(f"server exited with {self.server.returncode} at start: {self.log_tail()}")
            except subprocess.TimeoutExpired:
                pass
        self.nofile = nofile_limits(self.server.pid)

    def log_tail(self, lines: int = 4) -> str:
        try:
            return " | ".join(self.server_log.read_text(errors="replace").strip().splitlines()[-lines:])
        except (OSError, AttributeError):
            return ""

    def server_alive(self) -> bool:
        return self.server is not None and self.server.poll() is None

    def sample_server(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_sample:
            return
        self._next_sample = now + 0.25
        if not self.server_alive():
            return
        self.rss_peak_sampled = max(self.rss_peak_sampled, rss_mb(self.server.pid))
        self.fds_max = max(self.fds_max, server_fds(self.server.pid))

    def stop_server(self) -> None:
        if self.server is None:
            return
        if self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=5)

    # -- children

    def job(self, **extra) -> dict:
        args = self.args
        return {"port": self.port, "src": args.attacker_address, "life_end": self.life_end, "rate": args.bucket_rate,
                "burst": args.bucket_burst, "safety": args.bucket_safety, "nice": args.attacker_nice, **extra}

    def spawn(self, worker: str, wid: str, nice: bool = True, **extra) -> None:
        job = self.job(**extra)
        if not nice:
            job["nice"] = 0
        ctrl = self.mp.Queue()
        proc = self.mp.Process(target=worker_entry, args=(worker, wid, job, ctrl, self.results), daemon=True,
                               name=f"attack-{wid}")
        proc.start()
        self.workers[wid] = {"proc": proc, "ctrl": ctrl, "ready": None, "done": None}

    def send(self, wid: str, *msg) -> None:
        self.workers[wid]["ctrl"].put(msg)

    def go(self, deadline: float, wids=None) -> None:
        for wid in wids or list(self.workers):
            self.send(wid, "go", deadline)

    def pump(self, timeout: float) -> None:
        """Handle what the children report, waiting at most ``timeout`` for the first message."""
        try:
            msg = self.results.get(timeout=timeout) if timeout > 0 else self.results.get_nowait()
        except queue.Empty:
            return
        while True:
            self._on(msg)
            try:
                msg = self.results.get_nowait()
            except queue.Empty:
                return

    def _on(self, msg: tuple) -> None:
        kind, who = msg[0], msg[1]
        if kind == "samples":
            self.samples.extend(msg[2]["s"])
            self.pending, self.pending_at = msg[2]["pending"], msg[2]["t"]
        elif kind == "ready":
            if who == "others":
                self.others_ready = msg[2]
            else:
                self.workers[who]["ready"] = msg[2]
        elif kind == "done":
            self.workers[who]["done"] = msg[2]
        elif kind == "final":
            self.others_final = msg[2]
        elif kind == "event":
            self.events.append((who, msg[2], msg[3], time.monotonic()))
        elif kind == "error":
            raise RuntimeError(f"{who} failed: {msg[2]}")

    def wait_until(self, pred, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if not self.server_alive():
                raise ServerDied(f"server exited with {self.server.returncode} while waiting for {what}: "
                                 f"{self.log_tail()}")
            if time.monotonic() > end:
                raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
            self.pump(0.1)
            self.sample_server()

    def wait_ready(self, wids, timeout: float = 60.0) -> None:
        self.wait_until(lambda: all(self.workers[w]["ready"] is not None for w in wids), timeout,
                        f"attackers {', '.join(wids)} to be ready")

    def event(self, name: str) -> tuple | None:
        return next((e for e in self.events if e[1] == name), None)

    def stop_workers(self, wids=None, timeout: float = 10.0) -> None:
        ws = [self.workers[w] for w in (wids or list(self.workers))]
        for w in ws:
            if w["proc"].is_alive():
                w["ctrl"].put(("stop",))
        end = time.monotonic() + timeout
        while any(w["proc"].is_alive() for w in ws) and time.monotonic() < end:
            self.pump(0.05)  # also keeps the result pipe flowing, so that no child blocks on exit
        for w in ws:
            if w["proc"].is_alive():
                w["proc"].terminate()  # by its own pid
        for w in ws:
            w["proc"].join(timeout=2)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join(timeout=2)
        try:
            self.pump(0)
        except RuntimeError:
            pass

    def start_others(self) -> None:
        self.others_ctrl = self.mp.Queue()
        job = {"port": self.port, "n": self.args.others, "prefix": "other", "life_end": self.life_end,
               "drain": 8.0}
        self.others = self.mp.Process(target=others_entry, args=(job, self.others_ctrl, self.results), daemon=True,
                                      name="attack-others")
        self.others.start()
        self.wait_until(lambda: self.others_ready is not None, 45, "the others to connect")
        if self.others_ready.get("errors"):
            raise RuntimeError(f"others could not connect: {self.others_ready['errors'][:2]}")

    def finish_others(self) -> None:
        if self.others is None:
            return
        self.others_ctrl.put(("stop",))
        end = time.monotonic() + 20
        while self.others_final is None and time.monotonic() < end and self.others.is_alive():
            self.pump(0.1)
        self.pump(0)
        self.others.join(timeout=3)

    def kill_others(self) -> None:
        if self.others is not None and self.others.is_alive():
            self.others.terminate()
            self.others.join(timeout=3)
            if self.others.is_alive():
                self.others.kill()
                self.others.join(timeout=2)

    def newcomer(self, timeout: float, kind: str) -> dict:
        rec = {"kind": kind, "t": time.monotonic(), "s": None, "err": None, "done": False}
        name = f"new{self.index}x{len(self.newcomers)}"
        th = threading.Thread(target=_newcomer, args=(name, self.port, timeout, rec), daemon=True)
        th.start()
        self.newcomers.append(rec)
        self.threads.append(th)
        return rec

    def join_newcomers(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for th in self.threads:
            th.join(timeout=max(0.0, end - time.monotonic()))

    # -- measurements

    def rtts(self, t0: float, t1: float) -> list[float]:
        """Round trips of the messages the others sent in [t0, t1); never echoed ones count as infinite."""
        vals = [rtt for t, rtt in self.samples if t0 <= t < t1]
        for res in (self.others_final or {}).get("results") or []:
            if res:
                vals += [math.inf for t in res["unechoed"] if t0 <= t < t1]
        return sorted(vals)

    def rtt_recovered(self, t_stop: float, bar: float) -> float | None:
        """Seconds from ``t_stop`` to the send time of the last slow message before a stretch of GOOD_FOR
        seconds where every message of every other came back under ``bar``; None while not known yet."""
        bad = [t for t, rtt in self.samples if t >= t_stop and rtt > bar]
        horizon = self.pending_at  # every message sent before this has come back, or is known to be slow
        for times in self.pending:
            for t in times:
                if t < t_stop:
                    continue
                if self.pending_at - t > bar:
                    bad.append(t)
                else:
                    horizon = min(horizon, t)
        bad.sort()
        start = t_stop
        for b in bad:
            if b < start + GOOD_FOR:
                start = max(start, b)
            else:
                break
        if horizon < start + GOOD_FOR or not any(start < t <= start + GOOD_FOR for t, _ in self.samples):
            return None
        return start - t_stop


class Attack:
    """One mode: what it spawns before the attack (``setup``), starts (``start``), does meanwhile
    (``during``), how it ends (``done``, ``stop``) and what it reports (``figures``)."""

    nofile_soft: int | None = None

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.args = h.args
        self.server_args: list[str] = []

    def prepare(self) -> None:
        """Before the others connect (e.g. pre-filled history, which they would otherwise receive)."""

    def setup(self) -> None:
        """After the others are in, before the pre-attack window: spawn the attackers, wait until ready."""

    def start(self, go: float) -> None:
        self.h.go(go + self.args.duration + 60)  # the workers' hard deadline; the orchestrator stops them earlier

    def during(self, now: float) -> None:
        pass

    def done(self, now: float) -> bool:
        return now >= self.h.deadline

    def stop(self) -> None:
        self.h.stop_workers()

    def figures(self, stats: dict | None) -> dict:
        return {}

    def done_sum(self, prefix: str, key: str) -> int:
        return sum(int((w["done"] or {}).get(key, 0)) for wid, w in self.h.workers.items() if wid.startswith(prefix))


def pick(stats: dict | None, *keys: str) -> dict:
    return {f"server_{k}": (stats or {}).get(k) for k in keys}


class Baseline(Attack):
    def start(self, go: float) -> None:
        pass


class RequestFlood(Attack):
    kind = "history"

    def prepare(self) -> None:
        a = self.args
        self.prefill_total = 0
        if self.kind == "history" and a.prefill > 0:
            # ordinary traffic (from 127.0.0.1, each session within its message burst), before the attack
            per = int(a.bucket_burst * a.bucket_safety)
            self.h.spawn("requests", "pf0", n=math.ceil(a.prefill / per), kind="idle", prefill=per, tag="pf", src="")
            self.h.wait_ready(["pf0"])
            self.prefill_total = math.ceil(a.prefill / per) * per
            end = time.monotonic() + 60
            while True:
                stats = query_stats(self.h.port) or {}
                if stats.get("messages", 0) >= self.prefill_total:
                    break
                if time.monotonic() > end:
                    raise RuntimeError(f"pre-fill: only {stats.get('messages')} of {self.prefill_total} messages")
                self.h.pump(0.5)
            self.h.stop_workers(["pf0"])

    def setup(self) -> None:
        a = self.args
        workers = max(1, a.attack_workers)
        tag = "hf" if self.kind == "history" else "bf"
        for k, n in enumerate(split(a.sessions, workers)):
            self.h.spawn("requests", f"rq{k}", n=n, kind=self.kind, prefill=0, tag=tag)
        self.h.wait_ready([f"rq{k}" for k in range(workers)])

    def figures(self, stats: dict | None) -> dict:
        out = {"requests": self.done_sum("rq", "requests"), "hist_msgs_received": self.done_sum("rq", "hist"),
               "hist_end_received": self.done_sum("rq", "hist_end"), "who_received": self.done_sum("rq", "who"),
               "rooms_received": self.done_sum("rq", "rooms"), "stats_received": self.done_sum("rq", "stats"),
               "rate_limited": self.done_sum("rq", "err:rate_limited"), "busy": self.done_sum("rq", "err:busy"),
               "hellos_resent": self.done_sum("rq", "hellos") - self.args.sessions}
        if self.kind == "history":
            out["prefill"] = self.prefill_total
        return {k: v for k, v in out.items() if v} | pick(stats, "throttled", "timeouts")


class BrowseFlood(RequestFlood):
    kind = "browse"


class NewRooms(Attack):
    def setup(self) -> None:
        for k, cap in enumerate(split(self.args.max_new_sessions, 2)):
            self.h.spawn("newrooms", f"nr{k}", cap=cap, rooms=p.MAX_LIST_ITEMS)
        self.h.wait_ready(["nr0", "nr1"])

    def figures(self, stats: dict | None) -> dict:
        done = [w["done"] or {} for wid, w in self.h.workers.items() if wid.startswith("nr")]
        return {"hellos_sent": self.done_sum("nr", "hellos"), "send_blocked": self.done_sum("nr", "blocked"),
                "capped": any(d.get("capped") for d in done),
                "sending_s": max((d.get("seconds", 0) for d in done), default=None)} | pick(
            stats, "throttled", "timeouts", "clients", "rooms")


class SharedRooms(Attack):
    def setup(self) -> None:
        self.h.spawn("hold", "sh0", n=self.args.shared_sessions, rooms="shared", tag="sh")
        self.h.wait_ready(["sh0"])

    def figures(self, stats: dict | None) -> dict:
        ev = self.h.event("all_alive")
        return {"alive_peak": self.done_sum("sh", "alive_peak"), "hellos": self.done_sum("sh", "hellos"),
                "all_alive_after_s": round(ev[2]["t"] - self.h.go_at, 2) if ev else None,
                "pings": self.done_sum("sh", "pings")} | pick(stats, "throttled", "timeouts")


class Flood(Attack):
    def setup(self) -> None:
        self.h.spawn("flood", "fl0", cap=50_000_000)
        self.h.wait_ready(["fl0"])

    def figures(self, stats: dict | None) -> dict:
        done = self.h.workers["fl0"]["done"] or {}
        return {"sent": done.get("sent"), "sent_per_s": round(done.get("rate") or 0)} | pick(
            stats, "received", "throttled", "messages")


class FrameBomb(Attack):
    def setup(self) -> None:
        a = self.args
        self.h.spawn("framebomb", "fb0", bombs=6, bomb_frames=a.bomb_frames, unfinished_frames=4000,
                     frame_bytes=60_000)
        self.h.wait_ready(["fb0"])
        self.rss_bombs = None

    def during(self, now: float) -> None:
        ev = self.h.event("bombs_sent")
        if self.rss_bombs is None and ev is not None and now - ev[3] > 1.0:
            self.rss_bombs = rss_mb(self.h.server.pid)

    def figures(self, stats: dict | None) -> dict:
        done = self.h.workers["fb0"]["done"] or {}
        return {"bombs_sent_at_s": done.get("bombs_sent_at_s"), "unfinished_sent_s": done.get("unfinished_sent_s"),
                "rss_1s_after_bombs_mb": round(self.rss_bombs, 1) if self.rss_bombs else None} | pick(
            stats, "received", "rejected")


class NonReaders(Attack):
    def __init__(self, h: Harness) -> None:
        super().__init__(h)
        self.server_args = ["--history", "20000"]

    def setup(self) -> None:
        a = self.args
        self.procs = max(1, math.ceil(a.nonreaders / 250))
        for k, n in enumerate(split(a.nonreaders, self.procs)):
            self.h.spawn("nonreaders", f"nrd{k}", n=n)
        per_session = a.bucket_burst * a.bucket_safety + a.bucket_rate * a.bucket_safety * a.duration
        self.senders = max(1, math.ceil(a.nonreader_messages / per_session))
        # The traffic is ordinary users' (from 127.0.0.1), in a room of its own with one reader (five
        # readers of 6,000 msg/s in one Python process could not keep up on two cores, whatever the
        # server did); the attack is the subscribers that never read, subscribed to everything.
        self.h.spawn("loadreader", "lrd0", nice=False)
        self.h.spawn("senders", "pub0", n=self.senders, cap=a.nonreader_messages, src="", room=LOAD_ROOM)
        self.h.wait_ready([f"nrd{k}" for k in range(self.procs)] + ["pub0", "lrd0"])

    def figures(self, stats: dict | None) -> dict:
        reader = self.h.workers["lrd0"]["done"] or {}
        return {"nonreaders": self.done_sum("nrd", "subs"), "sender_sessions": self.senders,
                "messages_sent": self.done_sum("pub", "sent"), "reader_got": reader.get("got"),
                "reader_gone_from_history": reader.get("gone"), "reader_last_seq": reader.get("last_seq"),
                "reader_newest_seq": reader.get("newest_seq"),
                "sender_rate_limited": self.done_sum("pub", "err:rate_limited")} | pick(stats, "messages", "throttled")


class SquatHeartbeat(Attack):
    def __init__(self, h: Harness) -> None:
        super().__init__(h)
        a = self.args
        # what lets the tail be lost at all: a PUB queue smaller than the burst (and enough history to refill)
        self.server_args = ["--pub-hwm", str(a.tail_pub_hwm), "--history", str(max(1000, 2 * a.tail_burst))]
        self.state = "squat"
        self.t_state = 0.0
        self.tail: dict | None = None

    def setup(self) -> None:
        a = self.args
        per = int(a.bucket_burst * a.bucket_safety)
        self.h.spawn("hold", "sq0", n=a.squatters, rooms="squat", tag="sq")
        self.h.spawn("bursters", "bu0", n=math.ceil((a.tail_burst + a.tail_fill) / per), total=a.tail_burst,
                     text_bytes=a.tail_text_bytes, fill=a.tail_fill, fill_bytes=a.tail_fill_bytes, settle=0.3,
                     src="")  # the burst is the others' traffic, not the attack: from 127.0.0.1
        self.h.spawn("tail", "tr0", nice=False, rcvhwm=a.tail_rcvhwm, total=a.tail_burst, window=20.0, max_pause=2.8)
        self.h.wait_ready(["sq0", "bu0", "tr0"])

    def start(self, go: float) -> None:
        self.h.go(go + self.args.duration + 60)
        self.t_state = go

    def during(self, now: float) -> None:
        h = self.h
        if self.state == "squat" and (h.event("all_alive") or now - self.t_state > 15):
            self.squat_s = now - self.t_state
            h.send("tr0", "pause")
            self.state, self.t_state = "pausing", now
        elif self.state == "pausing" and (h.event("paused") or now - self.t_state > 5):
            h.send("bu0", "burst")
            self.state, self.t_state = "burst", now
        elif self.state == "burst" and (h.event("burst_done") or now - self.t_state > 2.6):
            h.send("tr0", "resume")  # under 3 s without reading: the server would time the reader out at 3
            self.state, self.t_state = "reading", now
        elif self.state == "reading" and h.workers["tr0"]["done"] is not None:
            self.tail = h.workers["tr0"]["done"]
            self.state = "finished"

    def done(self, now: float) -> bool:
        return now >= self.h.deadline and (self.state == "finished" or now > self.h.deadline + 30)

    def figures(self, stats: dict | None) -> dict:
        tail = self.tail or self.h.workers["tr0"]["done"] or {}
        burst = self.h.event("burst_done")
        ev = self.h.event("all_alive")
        return {"squatters": self.args.squatters, "squatters_alive_peak": self.done_sum("sq", "alive_peak"),
                "squatters_alive_after_s": round(ev[2]["t"] - self.h.go_at, 2) if ev else None,
                "burst_published": burst[2]["published"] if burst else None,
                "burst_published_s": burst[2]["published_s"] if burst else None,
                "fill_published_s": burst[2].get("fill_published_s") if burst else None,
                "tail_got": tail.get("got"), "tail_total": tail.get("total"),
                "tail_seconds": round(tail["seconds"], 2) if tail.get("seconds") is not None else None,
                "tail_first_s": round(tail["first_s"], 2) if tail.get("first_s") is not None else None,
                "tail_first_gap_kind": tail.get("first_gap_kind"),
                "tail_gap_seen_s": (round(tail["first_gap_request_s"], 2)
                                    if tail.get("first_gap_request_s") is not None else None),
                "tail_pause_s": round(tail["pause_s"], 2) if tail.get("pause_s") is not None else None,
                "tail_reconnects": tail.get("reconnects"), "tail_notices": tail.get("notices"),
                "server_args": " ".join(self.server_args)} | pick(stats, "recoveries", "recovered", "timeouts")


class IdleFds(Attack):
    nofile_soft = 1024

    def __init__(self, h: Harness) -> None:
        super().__init__(h)
        self.nofile_hard = self.args.idle_nofile_hard  # None: the hard limit stays, and a server may raise to it

    def setup(self) -> None:
        for k, n in enumerate(split(self.args.idle_conns, 2)):
            self.h.spawn("idlefds", f"if{k}", n=n)
        self.h.wait_ready(["if0", "if1"])

    def figures(self, stats: dict | None) -> dict:
        done = [self.h.workers[w]["done"] or {} for w in ("if0", "if1")]
        log = ""
        try:
            log = next((line.split("zmqchat.server", 1)[-1].strip(": ") for line in
                        self.h.server_log.read_text(errors="replace").splitlines() if "file descriptors" in line), "")
        except OSError:
            pass
        return {"held_avg": sum(d.get("held_avg", 0) for d in done),
                "held_min": sum(d.get("held_min", 0) for d in done),
                "connects": sum(d.get("connects", 0) for d in done),
                "closed_by_server": sum(d.get("closed_by_server", 0) for d in done),
                "connect_failed_or_timeout": sum(d.get("connect_failed", 0) + d.get("connect_timeout", 0)
                                                 + d.get("connect_error", 0) for d in done),
                "lifetime_avg_s": done[0].get("lifetime_avg_s"),
                "server_nofile": list(self.h.nofile) if self.h.nofile else None, "server_fd_log": log[:100]}


ATTACKS = {"baseline": Baseline, "history-flood": RequestFlood, "browse-flood": BrowseFlood, "new-rooms": NewRooms,
           "shared-rooms": SharedRooms, "flood": Flood, "frame-bomb": FrameBomb, "nonreaders": NonReaders,
           "squat-heartbeat": SquatHeartbeat, "idle-fds": IdleFds}


def run_mode(args, mode: str, index: int, bar: float, mpctx, tmp: Path, say) -> dict:
    h = Harness(args, mode, index, mpctx, tmp, say)
    attack = ATTACKS[mode](h)
    duration = args.baseline_seconds if mode == "baseline" else args.duration
    out: dict = {"mode": mode}
    t_begin = time.monotonic()
    try:
        h.start_server(list(attack.server_args), attack.nofile_soft, getattr(attack, "nofile_hard", None))
        out["server_nofile"] = list(h.nofile) if h.nofile else None
        attack.prepare()
        h.start_others()
        attack.setup()
        t_pre = time.monotonic()
        h.wait_until(lambda: time.monotonic() >= t_pre + PRE_SECONDS, PRE_SECONDS + 5, "the pre-attack window")
        h.go_at = go = time.monotonic()
        h.deadline = go + duration
        cpu0 = cpu_seconds(h.server.pid)
        attack.start(go)
        next_newcomer = go
        guard = False
        while True:
            now = time.monotonic()
            if attack.done(now):
                break
            if not h.server_alive():
                raise ServerDied(f"server exited with {h.server.returncode} during the attack: {h.log_tail()}")
            if now >= next_newcomer and now < h.deadline:
                h.newcomer(NEWCOMER_CAP, "attack")
                next_newcomer += NEWCOMER_EVERY
            attack.during(now)
            h.sample_server()
            if rss_mb(h.server.pid) > args.max_server_rss_mb:
                guard = True
                say(f"  [{mode}] server RSS over --max-server-rss-mb={args.max_server_rss_mb}: attack cut short")
                break
            h.pump(0.1)
        t_end = time.monotonic()
        out["attack_s"] = round(t_end - go, 1)
        out["server_cpu_pct"] = round(100 * (cpu_seconds(h.server.pid) - cpu0) / max(t_end - go, 1e-9))
        h.sample_server(force=True)
        out["server_rss_mb"] = round(rss_mb(h.server.pid), 1)
        out["server_fds_max"] = h.fds_max
        if guard:
            out["rss_guard"] = True
        attack.stop()
        t_stop = time.monotonic()
        out["stop_lag_s"] = round(t_stop - t_end, 2)
        # recovery: the others' round trip back under the bar for GOOD_FOR seconds, and a newcomer in
        fresh = h.newcomer(args.recovery_max, "recovery")
        rtt_rec = None
        while time.monotonic() - t_stop < args.recovery_max:
            if not h.server_alive():
                raise ServerDied(f"server exited with {h.server.returncode} after the attack: {h.log_tail()}")
            h.pump(0.1)
            h.sample_server()
            if rtt_rec is None:
                rtt_rec = h.rtt_recovered(t_stop, bar)
            if rtt_rec is not None and fresh["done"]:
                break
        out["recovery_rtt_s"] = round(rtt_rec, 2) if rtt_rec is not None else None
        out["recovery_newcomer_s"] = round(fresh["t_end"] - t_stop, 2) if fresh["done"] and fresh["s"] else None
        if out["recovery_rtt_s"] is not None and out["recovery_newcomer_s"] is not None:
            out["recovery_s"] = max(out["recovery_rtt_s"], out["recovery_newcomer_s"])
        else:
            out["recovery_s"] = None
        h.finish_others()
        stats = query_stats(h.port) if h.server_alive() else None
        h.join_newcomers(NEWCOMER_CAP + 2)
        out["server_hwm_mb"] = round(rss_mb(h.server.pid, "VmHWM"), 1) if h.server_alive() else None
        out["server_rss_after_mb"] = round(rss_mb(h.server.pid), 1) if h.server_alive() else None
        _rtt_figures(out, h, go, t_end, t_pre)
        _newcomer_figures(out, h, go, t_end)
        _others_figures(out, h)
        out["extra"] = attack.figures(stats)
        for key in ("throttled", "busy", "shed", "rejected", "timeouts"):  # what every mode may provoke
            if (stats or {}).get(key) and f"server_{key}" not in out["extra"]:
                out["extra"][f"server_{key}"] = stats[key]
        out["workers"] = {wid: w["done"] for wid, w in h.workers.items()}
        out["server_stats"] = stats
    except ServerDied as exc:
        out["error"] = str(exc)
        out["server_died"] = True
        _rtt_figures(out, h, getattr(h, "go_at", t_begin), time.monotonic(), t_begin)
    except Exception as exc:  # noqa: BLE001 (one mode's failure is reported; the next mode still runs)
        out["error"] = f"{exc}"
        say(traceback.format_exc(limit=4))
    finally:
        try:
            h.stop_workers(timeout=5)
        except Exception as exc:  # noqa: BLE001 (cleanup goes on: the others and the server are next)
            say(f"  [{mode}] stopping the attackers: {exc}")
        h.kill_others()
        if h.server is not None:
            out["server_exit"] = h.server.poll()
        h.stop_server()
        out["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    return out


def _rtt_figures(out: dict, h: Harness, go: float, t_end: float, t_pre: float) -> None:
    vals = h.rtts(go, t_end)
    pre = h.rtts(t_pre, go)
    finite = [v for v in vals if v != math.inf]
    out["rtt_samples"] = len(vals)
    out["rtt_unechoed"] = len(vals) - len(finite)
    out["rtt_p50_ms"] = round(pct(vals, 50) * 1000, 1) if vals else None
    out["rtt_p99_ms"] = round(pct(vals, 99) * 1000, 1) if vals else None
    out["rtt_max_ms"] = round(finite[-1] * 1000, 1) if finite else None
    out["pre_p50_ms"] = round(pct(pre, 50) * 1000, 1) if pre else None
    out["pre_p99_ms"] = round(pct(pre, 99) * 1000, 1) if pre else None


def _newcomer_figures(out: dict, h: Harness, go: float, t_end: float) -> None:
    tries = [r for r in h.newcomers if r["kind"] == "attack"]
    times = [r["s"] for r in tries if r["done"] and r["s"] is not None]
    failed = [r for r in tries if not (r["done"] and r["s"] is not None)]
    out["newcomer_tries"] = len(tries)
    out["newcomer_failed"] = len(failed)
    out["newcomer_worst_s"] = "timeout" if failed else (round(max(times), 2) if times else None)
    out["newcomer_times_s"] = [round(r["s"], 2) if r["s"] is not None else "timeout" for r in tries]
    if failed:
        out["newcomer_error"] = next((r["err"] for r in failed if r.get("err")), "not done")


def _others_figures(out: dict, h: Harness) -> None:
    results = [r for r in (h.others_final or {}).get("results") or [] if r]
    out["others_sent"] = sum(r["sent"] for r in results)
    out["others_lost"] = sum(r["missing"] for r in results)  # messages of another other never seen, summed
    out["others_unechoed"] = sum(len(r["unechoed"]) for r in results)
    out["others_connection_lost"] = sum(r["connection_lost"] for r in results)
    notices = [n for r in results for n in r["notice"]]
    if notices:
        out["others_notices"] = notices[:2]


# --------------------------------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="availability attacks on a zmqchat server, measured from its users")
    ap.add_argument("--mode", action="append", choices=["baseline", *MODES],
                    help="attack mode, repeatable (default: all); a baseline always runs first")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of attack per mode (default: %(default)s)")
    ap.add_argument("--baseline-seconds", type=float, default=8.0, help="length of the baseline (default: %(default)s)")
    ap.add_argument("--recovery-max", type=float, default=25.0,
                    help="seconds after the attack before a mode counts as not recovered (default: %(default)s)")
    ap.add_argument("--server-pythonpath", metavar="PATH",
                    help="prepended to the server's PYTHONPATH (e.g. an older checkout)")
    ap.add_argument("--server-arg", action="append", metavar="ARG",
                    help="extra server flags, repeatable, split like a shell: --server-arg='--pub-hwm 1000'")
    ap.add_argument("--attacker-address", default="127.0.0.2",
                    help="loopback source address of every attacker connection ('' for none; default: %(default)s)")
    ap.add_argument("--attacker-nice", type=int, default=10,
                    help="niceness of attacker processes (default: %(default)s)")
    ap.add_argument("--others", type=int, default=5, help="ordinary clients chatting (default: %(default)s)")
    ap.add_argument("--sessions", type=int, default=200,
                    help="sessions of history-flood and browse-flood (default: %(default)s)")
    ap.add_argument("--attack-workers", type=int, default=4,
                    help="processes those sessions are spread over (default: %(default)s)")
    ap.add_argument("--prefill", type=int, default=5000, help="messages in #general before history-flood "
                    "(default: %(default)s)")
    ap.add_argument("--max-new-sessions", type=int, default=1_000_000,
                    help="cap on new-rooms hellos (default: %(default)s)")
    ap.add_argument("--shared-sessions", type=int, default=2000, help="sessions of shared-rooms (default: %(default)s)")
    ap.add_argument("--bomb-frames", type=int, default=1_000_000, help="frames per frame bomb (default: %(default)s)")
    ap.add_argument("--nonreaders", type=int, default=1000, help="non-reading SUB connections (default: %(default)s)")
    ap.add_argument("--nonreader-messages", type=int, default=100_000,
                    help="messages published to #general during nonreaders (default: %(default)s)")
    ap.add_argument("--squatters", type=int, default=1024, help="squatting sessions (default: %(default)s)")
    ap.add_argument("--tail-burst", type=int, default=3000, help="burst to the quiet room (default: %(default)s)")
    ap.add_argument("--tail-text-bytes", type=int, default=1000,
                    help="text size of the burst messages (default: %(default)s)")
    ap.add_argument("--tail-fill", type=int, default=600,
                    help="messages that fill the reader's queues before the burst (default: %(default)s)")
    ap.add_argument("--tail-fill-bytes", type=int, default=16000,
                    help="text size of the filling messages (default: %(default)s)")
    ap.add_argument("--tail-rcvhwm", type=int, default=10, help="RCVHWM of the tail reader (default: %(default)s)")
    ap.add_argument("--tail-pub-hwm", type=int, default=500,
                    help="server --pub-hwm in squat-heartbeat, so that the tail is really lost (default: %(default)s)")
    ap.add_argument("--idle-conns", type=int, default=1100,
                    help="idle TCP connections of idle-fds (default: %(default)s)")
    ap.add_argument("--idle-nofile-hard", type=int,
                    help="also lower the server's hard RLIMIT_NOFILE to this in idle-fds (default: unchanged)")
    ap.add_argument("--bucket-rate", type=float, default=20.0, help="the server's --rate (default: %(default)s)")
    ap.add_argument("--bucket-burst", type=float, default=60.0, help="the server's --burst (default: %(default)s)")
    ap.add_argument("--bucket-safety", type=float, default=0.9,
                    help="fraction of rate and burst the rule-abiding attackers use (default: %(default)s)")
    ap.add_argument("--max-server-rss-mb", type=float, default=8000,
                    help="cut an attack short when the server's RSS passes this (default: %(default)s)")
    ap.add_argument("--max-seconds", type=float, help="hard cap on the whole run (default: from the modes)")
    ap.add_argument("--json", action="store_true", help="print a JSON list, one object per mode")
    return ap


def print_table(results: list[dict], header: dict) -> None:
    print()
    print(f"server: {header['server_code']}; bar {header['bar_ms']:.1f} ms; {header['others']} others; "
          f"attack {header['duration']:g} s; attackers from {header['attacker_address'] or '127.0.0.1'}")
    cols = [("mode", "mode", 16, "{}"), ("p50 ms", "rtt_p50_ms", 8, "{:.1f}"), ("p99 ms", "rtt_p99_ms", 9, "{:.1f}"),
            ("newcomer s", "newcomer_worst_s", 11, "{:.2f}"), ("recovery s", "recovery_s", 11, "{:.2f}"),
            ("RSS MB", "server_rss_mb", 8, "{:.0f}"), ("peak MB", "server_hwm_mb", 8, "{:.0f}"),
            ("CPU %", "server_cpu_pct", 6, "{:.0f}"), ("lost", "others_lost", 6, "{}")]
    print("".join(f"{name:>{w}}" if k else f"{name:<{w}}" for k, (name, _, w, _) in enumerate(cols)))
    for r in results:
        line = ""
        for k, (_, key, w, fmt) in enumerate(cols):
            v = r.get(key)
            if v is None:
                text = "-" if key != "recovery_s" or "error" in r else "no"
            elif isinstance(v, str):
                text = v
            elif v == math.inf:
                text = "inf"
            else:
                text = fmt.format(v)
            line += f"{text:<{w}}" if k == 0 else f"{text:>{w}}"
        print(line)
    print()
    for r in results:
        bits = [f"rtt max {r.get('rtt_max_ms')} ms, unechoed {r.get('rtt_unechoed')}, pre p99 {r.get('pre_p99_ms')} ms",
                f"recovery rtt {r.get('recovery_rtt_s')} s / newcomer {r.get('recovery_newcomer_s')} s",
                f"newcomers {r.get('newcomer_times_s')}", f"fds max {r.get('server_fds_max')}",
                f"RSS after {r.get('server_rss_after_mb')} MB"]
        if r.get("others_connection_lost"):
            bits.append(f"others lost the connection {r['others_connection_lost']} times")
        if r.get("others_notices"):
            bits.append(f"notices {r['others_notices']}")
        extra = r.get("extra") or {}
        if extra:
            bits.append(", ".join(f"{k}={v}" for k, v in extra.items() if v is not None))
        if r.get("rss_guard"):
            bits.append("CUT SHORT BY THE RSS GUARD")
        if r.get("error"):
            bits.append(f"ERROR: {r['error'][:300]}")
        print(f"{r['mode']}: " + "; ".join(bits))


def server_code(args) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQCHAT_")}
    if args.server_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(x for x in (args.server_pythonpath, env.get("PYTHONPATH")) if x)
    try:
        run = subprocess.run([sys.executable, "-c", "import zmqchat; print(zmqchat.__file__)"], check=False, env=env,
                             cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=30)
        return os.path.dirname(run.stdout.strip()) or run.stderr.strip()[-200:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    modes = [m for m in (args.mode or MODES) if m != "baseline"]
    modes = ["baseline", *dict.fromkeys(modes)]
    budget = args.max_seconds or 120 + args.baseline_seconds + len(modes) * (args.duration + args.recovery_max + 60)

    def on_alarm(*_):
        raise Alarm(f"the run exceeded --max-seconds={budget:g}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(math.ceil(budget))
    if args.attacker_address:
        with socket.socket() as probe:  # Linux routes all of 127/8 to lo: no configuration needed
            probe.bind((args.attacker_address, 0))
    tmp = Path(tempfile.mkdtemp(prefix="zmqchat-attack-"))
    mpctx = mp.get_context("spawn")
    header = {"server_code": server_code(args), "others": args.others, "duration": args.duration,
              "attacker_address": args.attacker_address}
    say(f"server code: {header['server_code']}; modes: {', '.join(modes)}")
    results: list[dict] = []
    bar = MIN_BAR
    t0 = time.monotonic()
    aborted = None
    try:
        for index, mode in enumerate(modes):
            r = run_mode(args, mode, index, bar, mpctx, tmp, say)
            if mode == "baseline" and r.get("rtt_p99_ms") is not None and r["rtt_p99_ms"] != math.inf:
                bar = max(MIN_BAR, 3 * r["rtt_p99_ms"] / 1000)
            r["bar_ms"] = round(bar * 1000, 1)
            results.append(r)
            say(f"[{mode}] p50 {r.get('rtt_p50_ms')} ms, p99 {r.get('rtt_p99_ms')} ms, newcomer worst "
                f"{r.get('newcomer_worst_s')} s, recovery {r.get('recovery_s')} s, RSS {r.get('server_rss_mb')} MB "
                f"(peak {r.get('server_hwm_mb')}), CPU {r.get('server_cpu_pct')}%, lost {r.get('others_lost')}"
                + (f", ERROR {r['error'][:200]}" if r.get("error") else "") + f" [{r.get('elapsed_s')} s]")
    except Alarm as exc:  # every child of the mode was stopped on the way out; report what was measured
        aborted = str(exc)
        say(f"ABORTED: {aborted}")
    finally:
        signal.alarm(0)
        if os.environ.get("ZMQCHAT_ATTACK_KEEP_TMP"):
            say(f"kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    header["bar_ms"] = bar * 1000
    if aborted:
        header["aborted"] = aborted
    header["elapsed_s"] = round(time.monotonic() - t0, 1)
    if args.json:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        print(json.dumps([clean({**r, **({"header": header} if i == 0 else {})}) for i, r in enumerate(results)],
                         indent=2))
    else:
        print_table(results, header)
        print(f"elapsed: {header['elapsed_s']} s" + (f"; ABORTED: {aborted}" if aborted else ""))
    return 0 if not aborted and all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
