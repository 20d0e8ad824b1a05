#!/usr/bin/env python3
"""How long a standby joining a pair takes to be caught up from a big store, and what the catch-up costs
the active's clients meanwhile (docs/cluster.md).

Starts one server of a pair alone (it becomes active), fills its history with --messages messages over
--rooms rooms through the raw protocol, then starts the second server and times it until the active logs
"the standby is in sync". All the while a probe client says a line every 20 ms and times its echo: the
echo's p50 / p99 / max before the standby starts and during its catch-up tell whether the catch-up
stalls the active's rooms. Loopback, one machine, processes stopped by their pid.

    python scripts/catchup_bench.py --messages 100000 --rooms 20
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from zmqchat import Client
from zmqchat import events as ev
from zmqchat import protocol as p
from zmqchat.endpoints import free_port_pair


def start(port: int, peer: int, data: Path, log: Path, history: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQCHAT_")}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "zmqchat.cli.server", "--port", str(port), "--peer",
                                 f"127.0.0.1:{peer}", "--data-dir", str(data), "--rate", "0", "--history",
                                 str(history), "--stats-interval", "0"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=out, env=env)


def wait_log(log: Path, needle: str, timeout: float) -> float:
    end = time.monotonic() + timeout
    while needle not in log.read_text(errors="replace"):
        if time.monotonic() > end:
            raise SystemExit(f"no {needle!r} in {log} within {timeout}s:\n{log.read_text()[-1500:]}")
        time.sleep(0.02)
    return time.monotonic()


def fill(port: int, messages: int, rooms: int) -> float:
    """Send ``messages`` chat messages over ``rooms`` rooms from one raw session; returns the seconds it
    took until the last one was published."""
    ctx = zmq.Context()
    push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    try:
        push.setsockopt(zmq.SNDHWM, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(f"tcp://127.0.0.1:{port + 1}")
        sub.setsockopt(zmq.SUBSCRIBE, p.SESSION_PREFIX)
        sub.setsockopt(zmq.SUBSCRIBE, p.ROOM_PREFIX)
        push.connect(f"tcp://127.0.0.1:{port}")
        names = [f"#r{n:03d}" for n in range(rooms)]
        started = time.monotonic()
        while True:  # the slow joiner: hello until the welcome comes
            push.send_multipart(p.encode_client(p.Hello(session="filler", name="filler", rooms=names, rid="h")))
            if sub.poll(500) and isinstance(p.decode_server(sub.recv_multipart())[1], p.Welcome):
                break
        text = "catch-up " + "x" * 80
        for n in range(1, messages + 1):
            push.send_multipart(p.encode_client(p.Say(session="filler", room=names[n % rooms], text=text,
                                                      mid=f"filler.{n}")))
        seen = 0
        while seen < messages:  # the echoes: a message published is stored (on both sides, in a pair)
            if not sub.poll(30_000):
                raise SystemExit(f"filling stalled at {seen} of {messages}")
            _topic, msg = p.decode_server(sub.recv_multipart())
            found = msg.messages if isinstance(msg, p.RoomMessages) else [msg] if type(msg) is p.RoomMessage else []
            seen += sum(1 for m in found if m.sender == "filler")
        return time.monotonic() - started
    finally:
        ctx.destroy(linger=0)


def probe(port: int, peer: int, samples: list[tuple[float, float]], stop: threading.Event,
          ready: threading.Event) -> None:
    with Client("probe", servers=[f"127.0.0.1:{port}", f"127.0.0.1:{peer}"], rooms=["#probe"]) as client:
        ready.set()
        sent: dict[str, float] = {}
        next_at = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_at:
                next_at = now + 0.02
                sent[client.say("ping")] = now
            for event in client.poll(0.005)[0]:
                if isinstance(event, ev.Message) and event.own and event.mid in sent:
                    samples.append((sent[event.mid], time.monotonic() - sent.pop(event.mid)))


def stats(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (f"echo p50 {1e3 * statistics.median(ordered):.1f} ms, p99 {1e3 * p99:.1f} ms, max "
            f"{1e3 * ordered[-1]:.1f} ms ({len(ordered)} samples)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000, help="messages in the active's store (default: %(default)s)")
    ap.add_argument("--rooms", type=int, default=20, help="rooms they are spread over (default: %(default)s)")
    args = ap.parse_args()
    per_room = -(-args.messages // args.rooms)
    tmp = Path(tempfile.mkdtemp(prefix="zmqchat-catchup-"))
    a_port = free_port_pair(count=3)
    b_port = free_port_pair(count=3)
    while abs(a_port - b_port) < 3:
        b_port = free_port_pair(count=3)
    a_log, b_log = tmp / "a.log", tmp / "b.log"
    procs: list[subprocess.Popen] = []
    samples: list[tuple[float, float]] = []
    stop, ready = threading.Event(), threading.Event()
    try:
        procs.append(start(a_port, b_port, tmp / "A", a_log, per_room))
        wait_log(a_log, "pair: ACTIVE", 20)
        took = fill(a_port, args.messages, args.rooms)
        print(f"filled: {args.messages:,} messages in {args.rooms} rooms in {took:.1f} s "
              f"({args.messages / took:,.0f}/s), --history {per_room}", flush=True)
        thread = threading.Thread(target=probe, args=(a_port, b_port, samples, stop, ready), daemon=True)
        thread.start()
        ready.wait(15)
        time.sleep(3.0)  # the probe's baseline, before the standby starts
        t0 = time.monotonic()
        procs.append(start(b_port, a_port, tmp / "B", b_log, per_room))
        t1 = wait_log(a_log, "the standby is in sync", 600)
        time.sleep(1.0)
        stop.set()
        thread.join(10)
        before = [lat for at, lat in samples if at < t0]
        during = [lat for at, lat in samples if t0 <= at <= t1]
        print(f"standby caught up in {t1 - t0:.2f} s from its start ({args.messages / (t1 - t0):,.0f} rows/s, "
              "its start and store open included)")
        print(f"the active's clients before: {stats(before)}")
        print(f"the active's clients during the catch-up: {stats(during)}")
    finally:
        stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # by pid
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
