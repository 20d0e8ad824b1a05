#!/usr/bin/env python3
"""Benchmark (not a test): the full-screen client typing through a burst, and its memory after 100,000 messages.

A server (``zmqchat-server --no-persist --rate 0``) on 127.0.0.1 and free random ports; the full-screen client
(``zmqchat.tui.ChatApp`` over an ``AsyncClient``) headless in this process on a 120x40 screen; a sender in a
separate process (this script with ``--sender``) that floods the client's current room.

* Burst: the sender sends ``--burst`` messages (default 10,000) as fast as it can while we "type": a key
  every ``--key-interval`` seconds, fed to the app through its driver as a terminal's would be. A key's
  latency runs from feeding it to the first screen update that shows it in the input (the update is also
  turned into terminal bytes, as for a real terminal). Reported: p50, p99, max, and how long the burst took
  to be on screen.
* Memory: the sender then sends more, up to ``--total`` (default 100,000) messages in all; reported: this
  process's RSS (VmRSS) and its peak (VmHWM) once the last one is on screen.

Every wait is bounded (``--timeout`` for the whole run); the server and the sender are stopped by their own
pid. ``--json`` prints one summary object.

    python scripts/tui_bench.py
    python scripts/tui_bench.py --burst 2000 --total 20000 --json
    python scripts/tui_bench.py --recv-batch 100   # the pump reading less per round (a proposed change)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import die_with_parent, free_port_pair, machine, pct, rss_mb

ROOM = "#bench"
KEYS = "abcdefghijklmnopqrstuvwxyz"
LINE_MAX = 60  # typed characters before the line is cleared (Ctrl-U) and typing goes on


def sender(port: int, count: int, start: int, deadline: float) -> int:
    """The flooding process: ``count`` messages into ROOM, then wait for their echoes."""
    from zmqchat import Client

    die_with_parent()
    with Client(f"flood{start}", port=port, rooms=[ROOM], connect_timeout=10) as client:
        for i in range(start, start + count):
            client.say(f"burst message {i:06d} with a few more words to make it a chat-sized line")
        ok = client.drain(max(1.0, deadline - time.monotonic()))
    return 0 if ok else 1


class Server:
    """zmqchat-server on loopback, stopped by its pid."""

    def __init__(self, port: int, data_dir: Path) -> None:
        exe = Path(sys.executable).parent / "zmqchat-server"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "zmqchat.cli.server"]
        argv += ["--port", str(port), "--no-persist", "--rate", "0", "--stats-interval", "0",
                 "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "listening" in line:
                self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_sender(port: int, count: int, start: int, timeout: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--sender", str(port), str(count), str(start),
                             str(timeout)])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Typist:
    """Feeds a key every ``interval`` seconds and times each until the screen shows it."""

    def __init__(self, app, interval: float) -> None:
        from textual import events

        self.app, self.interval, self.events = app, interval, events
        self.box = app.query_one("#input")
        self.latencies: list[float] = []
        self._expected: str | None = None
        self._fed_at = 0.0
        self._n = 0
        original = app._display

        def display(screen, update) -> None:
            original(screen, update)
            if hasattr(update, "render_segments"):
                update.render_segments(app.console)  # the bytes a terminal would get
            if self._expected is not None and self.box.value == self._expected:
                self.latencies.append(time.perf_counter() - self._fed_at)
                self._expected = None

        app._display = display

    def _feed(self, key: str, char: str | None) -> None:
        event = self.events.Key(key, char)
        event.set_sender(self.app)
        self.app._driver.send_message(event)

    async def run(self, until: asyncio.Event) -> None:
        while not until.is_set():
            if self._expected is None:
                if len(self.box.value) >= LINE_MAX:
                    self._feed("ctrl+u", None)
                    await asyncio.sleep(self.interval)
                    continue
                char = KEYS[self._n % len(KEYS)]
                self._n += 1
                self._expected = self.box.value + char
                self._fed_at = time.perf_counter()
                self._feed(char, char)
            await asyncio.sleep(self.interval)


async def bench(args: argparse.Namespace, port: int) -> dict:
    from zmqchat.client.aio import AsyncClient
    from zmqchat.tui.app import ChatApp, settle_memory
    from zmqchat.tui.link import ClientLink

    options = {"rcvhwm": args.rcvhwm} if args.rcvhwm else {}
    client = AsyncClient("typist", port=port, rooms=[ROOM], connect_timeout=10, **options)
    await client.connect()
    app = ChatApp(ClientLink(client), dark=True)
    result: dict = {}
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            settle_memory()  # as zmqchat-client does once the screen is up
            view = app.state.rooms[ROOM]

            def newest() -> int:
                return view.live.newest_seq

            async def until_seq(seq: int, what: str) -> None:
                deadline = time.monotonic() + args.timeout
                while newest() < seq:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{what}: only up to seq {newest()} of {seq} came")
                    await asyncio.sleep(0.01)

            typist = Typist(app, args.key_interval)
            done = asyncio.Event()
            typing = asyncio.create_task(typist.run(done))
            await asyncio.sleep(0.5)  # a few quiet keystrokes first, for the baseline
            quiet = len(typist.latencies)
            started = time.perf_counter()
            proc = start_sender(port, args.burst, 0, args.timeout)
            try:
                await until_seq(args.burst, "the burst")
            finally:
                burst_seconds = time.perf_counter() - started
                done.set()
                await typing
                await asyncio.to_thread(proc.wait, args.timeout)
                stop(proc)
            during = sorted(typist.latencies[quiet:])
            baseline = sorted(typist.latencies[:quiet])
            result["burst"] = {
                "messages": args.burst, "seconds": round(burst_seconds, 2),
                "messages_per_s": round(args.burst / burst_seconds),
                "keys": len(during), "p50_ms": round(pct(during, 50) * 1000, 1),
                "p99_ms": round(pct(during, 99) * 1000, 1), "max_ms": round(max(during, default=0) * 1000, 1),
                "idle_p50_ms": round(pct(baseline, 50) * 1000, 1),
                "lines_kept": len(view.window),
            }
            rest = args.total - args.burst
            if rest > 0:
                proc = start_sender(port, rest, args.burst, args.timeout)
                try:
                    await until_seq(args.total, "the rest")
                finally:
                    await asyncio.to_thread(proc.wait, args.timeout)
                    stop(proc)
            await pilot.pause()
            result["memory"] = {"messages": args.total, "rss_mb": round(rss_mb(os.getpid()), 1),
                                "peak_rss_mb": round(rss_mb(os.getpid(), "VmHWM"), 1),
                                "lines_kept": len(view.window), "rooms_lines_bound": "5,000 (+500 slack)"}
    finally:
        await client.close(linger=0.5)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sender"]:
        port, count, start, timeout = int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
        return sender(port, count, start, time.monotonic() + timeout)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=10_000, help="messages in the burst (default: %(default)s)")
    parser.add_argument("--total", type=int, default=100_000, help="messages in all, for RSS (default: %(default)s)")
    parser.add_argument("--key-interval", type=float, default=0.02, help="seconds between keys (default: 0.02)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds the whole run may take")
    parser.add_argument("--recv-batch", type=int, default=0,
                        help="an experiment: messages the AsyncClient's pump reads per round (its RECV_BATCH, "
                        "1000 as shipped); 0 leaves it as it is")
    parser.add_argument("--rcvhwm", type=int, default=0,
                        help="an experiment: the client's SUB queue (1000 as shipped; what overflows it is "
                        "recovered from history); 0 leaves it as it is")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.recv_batch:
        import zmqchat.client.aio

        zmqchat.client.aio.RECV_BATCH = args.recv_batch
    import tempfile

    port = free_port_pair()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(port, Path(tmp))
        try:
            if not server.ready.wait(10):
                print("ERROR: the server did not start", file=sys.stderr)
                return 1
            result = asyncio.run(asyncio.wait_for(bench(args, port), args.timeout))
        finally:
            server.stop()
    result["machine"] = machine()
    result["recv_batch"] = args.recv_batch or "as shipped"
    result["rcvhwm"] = args.rcvhwm or "as shipped"
    if args.json:
        print(json.dumps(result))
    else:
        b, m = result["burst"], result["memory"]
        print(f"burst: {b['messages']} messages on screen in {b['seconds']} s ({b['messages_per_s']}/s); "
              f"{b['keys']} keys typed meanwhile: keystroke-to-screen p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, "
              f"max {b['max_ms']} ms (idle p50 {b['idle_p50_ms']} ms)")
        print(f"memory: after {m['messages']} messages RSS {m['rss_mb']} MB (peak {m['peak_rss_mb']} MB); "
              f"{m['lines_kept']} lines kept in the room")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
