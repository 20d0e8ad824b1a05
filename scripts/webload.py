#!/usr/bin/env python3
"""Load on the web gateway: N browsers (WebSocket clients in worker processes) on one gateway, then
broadcasts from a terminal client: delivery latency to every browser (p50/p99/max), the gateway's CPU and
resident memory, and the cost per browser. A benchmark, not a test.

    python scripts/webload.py                    # 1,000 browsers, 5 broadcasts
    python scripts/webload.py --clients 200 --workers 2 --broadcasts 10

It starts its own zmqchat server and gateway (``zmqchat-web``) on free loopback ports and stops
them by pid at the end. Every browser logs in (``--auth open``), connects, sends ``resume`` and waits for
``synced``; then the terminal client says ``webload <n> <monotonic time>`` once a second; each browser notes
when it got each one (CLOCK_MONOTONIC is system-wide on Linux, so the workers' clocks agree with ours).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time

from harness import cpu_seconds, die_with_parent, free_port_pair, machine, pct, rss_mb

WAIT = 120.0  # seconds: the longest any phase may take before the run gives up


def worker(index: int, names: list[str], url: str, broadcasts: int, ready, results) -> None:
    """One process's browsers: log in, connect, resume, report ready; then time each broadcast."""
    die_with_parent()
    import aiohttp

    async def browser(name: str, got: dict[int, float], synced: asyncio.Event) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            for _ in range(50):
                async with http.post(f"{url}/api/login", json={"name": name}) as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.2)  # the server's new-session budget: the gateway said "try again"
            else:
                raise RuntimeError(f"{name}: could not log in")
            async with http.ws_connect(f"{url}/ws", max_msg_size=0) as ws:
                await ws.send_str(json.dumps({"kind": "resume", "rooms": {}, "epoch": "", "room": "#general"}))
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    event = json.loads(msg.data)
                    kind = event.get("type")
                    if kind == "synced":
                        synced.set()
                    elif kind == "message" and event["text"].startswith("webload "):
                        _, number, sent = event["text"].split()
                        got[int(number)] = time.monotonic() - float(sent)
                        if len(got) >= broadcasts:
                            return

    async def main() -> None:
        gots = [{} for _ in names]
        synced = [asyncio.Event() for _ in names]
        tasks = []
        for name, got, event in zip(names, gots, synced):
            tasks.append(asyncio.create_task(browser(name, got, event)))
            await asyncio.sleep(0)  # let each start its login before the next
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in synced)), WAIT)
        ready.put(index)
        done, pending = await asyncio.wait(tasks, timeout=WAIT)
        for task in pending:
            task.cancel()
        failed = [str(t.exception()) for t in done if t.exception() is not None]
        results.put({"index": index, "latencies": [got.get(n) for got in gots for n in range(broadcasts)],
                     "failed": failed[:5]})

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="browsers (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2))),
                        help="processes the browsers are spread over (default: %(default)s)")
    parser.add_argument("--broadcasts", type=int, default=5, help="messages sent to all (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)

    from zmqchat.client.sync import Client

    port, http_port = free_port_pair(), free_port_pair()
    url = f"http://127.0.0.1:{http_port}"
    data = tempfile.mkdtemp(prefix="webload-")
    procs: list[subprocess.Popen] = []

    def spawn(argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        return proc

    try:
        server = spawn([sys.executable, "-m", "zmqchat.cli.server", "--port", str(port), "--data-dir", data,
                        "--stats-interval", "0", "--pub-hwm", "200000", "--work-rate", "0"])
        _wait_line(server, "listening")
        gateway = spawn([sys.executable, "-m", "zmqchat.cli.web", "--port", str(port), "--http-port", str(http_port),
                         "--claim-rate", "0", "--log-level", "warning"])
        _wait_line(gateway, "serving")
        _say(f"server on port {port}, gateway at {url}")
        figures: dict = {"clients": args.clients, "workers": args.workers, "broadcasts": args.broadcasts,
                         "machine": machine()}
        figures["rss_idle_mb"] = rss_mb(gateway.pid)
        cpu0 = cpu_seconds(gateway.pid)
        ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no zmq state inherited
        ready, results = ctx.Queue(), ctx.Queue()
        names = [f"web{n:04d}" for n in range(args.clients)]
        shares = [names[i::args.workers] for i in range(args.workers)]
        started = time.monotonic()
        workers = [ctx.Process(target=worker, args=(i, share, url, args.broadcasts, ready, results), daemon=True)
                   for i, share in enumerate(shares)]
        for proc in workers:
            proc.start()
        for _ in workers:
            ready.get(timeout=WAIT)
            _say(f"a worker's browsers are in ({time.monotonic() - started:.1f} s)")
        figures["connect_s"] = round(time.monotonic() - started, 2)
        figures["connect_cpu_s"] = round(cpu_seconds(gateway.pid) - cpu0, 2)
        figures["rss_connected_mb"] = rss_mb(gateway.pid)
        figures["rss_per_browser_kb"] = round((figures["rss_connected_mb"] - figures["rss_idle_mb"]) * 1024
                                              / args.clients, 1)
        with Client("announcer", port=port) as announcer:
            cpu1, t1 = cpu_seconds(gateway.pid), time.monotonic()
            for number in range(args.broadcasts):
                announcer.say(f"webload {number} {time.monotonic():.6f}")
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    announcer.poll(deadline - time.monotonic())
            collected = [results.get(timeout=WAIT) for _ in workers]
            spent, elapsed = cpu_seconds(gateway.pid) - cpu1, time.monotonic() - t1
        latencies = sorted(x for r in collected for x in r["latencies"] if x is not None)
        expected = args.clients * args.broadcasts
        figures.update({
            "delivered": len(latencies), "expected": expected,
            "p50_ms": round(pct(latencies, 50) * 1000, 1), "p99_ms": round(pct(latencies, 99) * 1000, 1),
            "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
            "gateway_cpu_pct_while_broadcasting": round(100 * spent / elapsed, 1),
            "rss_after_mb": rss_mb(gateway.pid), "rss_peak_mb": rss_mb(gateway.pid, "VmHWM"),
            "failures": [f for r in collected for f in r["failed"]][:5],
        })
        for proc in workers:
            proc.join(5)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            if key != "machine":
                print(f"{key:>36}: {value}")
        print(f"{'machine':>36}: {figures['machine']['nproc']} x {figures['machine']['cpu']}")
    return 0 if figures["delivered"] == figures["expected"] else 1


def _wait_line(proc: subprocess.Popen, word: str) -> None:
    """Wait for ``word`` on the process's stderr, then keep draining it (a full pipe would stall it)."""
    deadline = time.monotonic() + 30
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if word in line:
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
            return
        if not line and proc.poll() is not None:
            raise SystemExit(f"{proc.args[2]} exited: {proc.returncode}")
    raise SystemExit(f"{proc.args[2]} did not say {word!r} within 30 s")


def _say(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


def _drain(stream) -> None:
    for line in iter(stream.readline, ""):
        if "ERROR" in line or "Traceback" in line:
            print(f"  (from a child) {line.rstrip()}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
