#!/usr/bin/env python3
"""Failover time of a hot-standby pair, measured: last delivery before a kill -9 of the active to the first
delivery after, at a client that knows both servers (docs/cluster.md).

Starts two zmqchat-server processes on loopback (--peer each other, default settings), a sender and a
receiver (the Python API with ``servers=``), paces messages at --rate, kills the active with SIGKILL, and
waits until everything sent arrived. Then it restarts the killed server (it rejoins as standby), waits
until the pair is in sync again and kills the other one: --repeat times, alternating. Every message must
arrive exactly once and in order; the gap is reported per kill, with min, median and max.

    python scripts/failover.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from zmqchat import Client
from zmqchat import events as ev
from zmqchat.endpoints import free_port_pair


class Server:
    def __init__(self, port: int, peer: int, data: Path, log: Path) -> None:
        self.port, self.peer, self.data, self.log = port, peer, data, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQCHAT_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "zmqchat.cli.server", "--port", str(self.port),
                                          "--peer", f"127.0.0.1:{self.peer}", "--data-dir", str(self.data),
                                          "--stats-interval", "0", "--rate", "0"], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, count: int = 1, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while self.text().count(needle) < count:
            if time.monotonic() > end:
                raise SystemExit(f"server {self.port}: no {needle!r} (x{count}) within {timeout}s:\n{self.text()[-1500:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # by pid
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def receive(targets: list[str], got: list[tuple[float, str]], ready: threading.Event, stop: threading.Event) -> None:
    """The receiver: its own Client, on its own thread (a Client's sockets belong to the thread that made it)."""
    with Client("receiver", servers=targets, connect_timeout=10) as client:
        ready.set()
        while not stop.is_set():
            for event in client.poll(0.05)[0]:
                if isinstance(event, ev.Message) and event.sender == "sender" and not event.history:
                    got.append((time.monotonic(), event.text))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="kills, alternating between the servers (default: 5)")
    ap.add_argument("--rate", type=float, default=50.0, help="messages per second sent (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print one JSON summary")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zmqchat-failover-"))
    a_port = free_port_pair(count=3)
    b_port = free_port_pair(count=3)
    while abs(a_port - b_port) < 3:
        b_port = free_port_pair(count=3)
    servers = [Server(a_port, b_port, tmp / "A", tmp / "a.log"), Server(b_port, a_port, tmp / "B", tmp / "b.log")]
    targets = [f"127.0.0.1:{a_port}", f"127.0.0.1:{b_port}"]
    gaps: list[float] = []
    problems: list[str] = []
    try:
        servers[0].start()
        servers[0].wait_for("pair: ACTIVE")
        servers[1].start()
        servers[0].wait_for("the standby is in sync")
        got: list[tuple[float, str]] = []
        stop, ready = threading.Event(), threading.Event()
        reader = threading.Thread(target=receive, args=(targets, got, ready, stop), daemon=True)
        reader.start()
        if not ready.wait(15):
            raise SystemExit("the receiver did not connect")
        sender = Client("sender", servers=targets, connect_timeout=10)
        sent = 0
        active = 0
        syncs = [1, 0]  # "in sync" lines seen so far per server log
        for kill_no in range(args.repeat):
            steady_until = time.monotonic() + 2.0
            killed_at = None
            while True:
                now = time.monotonic()
                if killed_at is None and now >= steady_until:
                    killed_at = now
                    servers[active].kill()
                sent += 1
                sender.say(f"m{sent:06d}")
                sender.poll(0)
                time.sleep(1.0 / args.rate)  # pacing the sender
                if killed_at is not None and now - killed_at > 6.0:
                    break
            deadline = time.monotonic() + 30
            while sender.unacknowledged and time.monotonic() < deadline:
                sender.poll(0.05)
            while len(got) < sent and time.monotonic() < deadline:
                time.sleep(0.05)
            times = [t for t, _text in got]
            before = max((t for t in times if t <= killed_at), default=killed_at)
            after = min((t for t in times if t > killed_at), default=float("nan"))
            gaps.append(after - before)
            print(f"kill {kill_no + 1}: server {targets[active]} killed; gap at the receiver {after - before:.2f} s",
                  file=sys.stderr, flush=True)
            servers[active].start()  # back as standby
            other = 1 - active
            syncs[other] += 1
            servers[other].wait_for("the standby is in sync", count=syncs[other], timeout=30)
            active = other
        stop.set()
        reader.join(5)
        texts = [text for _t, text in got]
        expected = [f"m{i:06d}" for i in range(1, sent + 1)]
        if texts != expected:
            missing = sorted(set(expected) - set(texts))
            doubled = len(texts) - len(set(texts))
            problems.append(f"delivery: {len(missing)} missing, {doubled} doubled, order kept: "
                            f"{texts == sorted(texts)}")
        sender.close()
    finally:
        for server in servers:
            server.stop()
    summary = {"kills": len(gaps), "gaps_s": [round(g, 3) for g in gaps], "min_s": round(min(gaps), 3),
               "median_s": round(statistics.median(gaps), 3), "max_s": round(max(gaps), 3),
               "rate": args.rate, "sent": sent, "problems": problems}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"failover gap over {len(gaps)} kills: min {summary['min_s']:.2f} s, median {summary['median_s']:.2f} s, "
              f"max {summary['max_s']:.2f} s; {sent} messages sent at {args.rate:g}/s; "
              + ("every one delivered once, in order" if not problems else "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
