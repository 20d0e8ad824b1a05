#!/usr/bin/env python3
"""Load test: thousands of concurrent zmqchat clients on one server, each with its own PUSH + SUB pair.

A zmqchat server is started on 127.0.0.1 (free random ports). ``--workers`` spawned processes each own
one zmq context and a share of the ``--clients`` clients. Every client is what the real client is on the
wire: a SUB subscribed to its session topic, ``#general`` and the all-topic, a PUSH that sends a Hello
(joining ``#general``, resent until the Welcome arrives) and then a Ping heartbeat every second.

Once all are connected the server is watched for ``--steady`` seconds (CPU, resident memory, file
descriptors, its own client count via a stats request), then ``--broadcasts`` messages are sent to
``#general`` one second apart; every client timestamps its copy. Reported: connect times, the p50 / p99 /
max delivery time of a broadcast to all clients, what was lost, server CPU and RSS.

    python scripts/loadtest.py                     # 2,000 clients, 4 worker processes
    python scripts/loadtest.py --clients 5000 --json

Every child is bounded in time (deadline, PR_SET_PDEATHSIG, a global alarm) and stopped by its own pid.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing as mp
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

from harness import cpu_seconds, die_with_parent, free_port_pair, machine, pct, rss_mb

ROOM = "#general"
BCAST = b'"text":"BCAST '
DRAIN = 64  # messages read from one socket before the loop moves on
HELLO_RETRY = 2.0  # seconds between hellos of a client that has no welcome yet (zmqchat's client: 0.25)


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards ``want`` (and the hard one, when allowed); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root (CAP_SYS_RESOURCE) only
            return want, want
        except (ValueError, OSError):
            pass
    target = min(max(soft, want), hard)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --------------------------------------------------------------------------------------------------
# worker: one context, many clients, one poll loop


def worker(wid: int, first: int, n: int, job: dict, results: mp.Queue, ctrl: mp.Queue, life_end: float) -> None:
    die_with_parent()
    try:
        _worker(wid, first, n, job, results, ctrl, life_end)
    except Exception as exc:  # noqa: BLE001 (reported to the orchestrator, never a hang)
        results.put(("error", wid, repr(exc)))


def _worker(wid: int, first: int, n: int, job: dict, results: mp.Queue, ctrl: mp.Queue, life_end: float) -> None:
    raise_nofile(4 * n + 256)
    import zmq

    from zmqchat import protocol as p

    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 2 * n + 64)
    room_topic, all_topic = p.room_topic(ROOM), p.ALL_TOPIC
    pushes: list = []
    subs: list = []
    hellos: list[list[bytes]] = []
    pings: list[list[bytes]] = []
    created = array("d")
    welcomed_at = array("d")
    index: dict = {}
    poller = zmq.Poller()
    pending_hello: dict[int, float] = {}  # client -> when to (re)send its hello
    hb_ring: collections.deque[tuple[float, int]] = collections.deque()
    counts = collections.Counter()
    bcast: dict[int, array] = {}
    connected = 0
    reported_connected = False
    ramp_interval = 1.0 / job["ramp_per_worker"]
    next_connect = time.monotonic()
    mono, mono_ns = time.monotonic, time.monotonic_ns
    noblock = zmq.NOBLOCK

    def add_client(i: int, now: float) -> None:
        session = f"lt{wid}x{i}"
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 1000)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        if job.get("curve"):
            for sock in (push, sub):
                sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = job["curve"]
        sub.connect(job["out"])
        for topic in (p.session_topic(session), room_topic, all_topic):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        push.connect(job["in"])
        pushes.append(push)
        subs.append(sub)
        index[sub] = i
        poller.register(sub, zmq.POLLIN)
        hellos.append(p.encode_client(p.Hello(session=session, name=f"u{first + i}",
                                              rooms=[] if job["no_join"] else [ROOM])))
        pings.append(p.encode_client(p.Ping(session=session)))
        created.append(now)
        welcomed_at.append(0.0)
        pending_hello[i] = now + 0.1  # first hello once the subscription has had a moment; retried anyway

    stop = False
    next_progress = mono() + 1.0
    while not stop and time.time() < life_end:
        now = mono()
        while len(pushes) < n and next_connect <= now:
            add_client(len(pushes), now)
            next_connect += ramp_interval
        if pending_hello:
            for i, due in list(pending_hello.items()):
                if due <= now:
                    pushes[i].send_multipart(hellos[i], noblock)
                    counts["hellos"] += 1
                    pending_hello[i] = now + job["hello_retry"]
        while hb_ring and hb_ring[0][0] <= now:
            due, i = hb_ring.popleft()
            try:
                pushes[i].send_multipart(pings[i], noblock)
                counts["pings"] += 1
            except zmq.Again:
                counts["ping_dropped"] += 1
            hb_ring.append((max(due + 1.0, now + 0.5), i))
        for sock, _ in poller.poll(20):
            i = index[sock]
            for _ in range(DRAIN):  # bounded, so that heartbeats stay on time under a flood
                try:
                    frames = sock.recv_multipart(noblock)
                except zmq.Again:
                    break
                t = mono_ns()
                kind = frames[2] if len(frames) == 5 else b"?"
                if kind == b"msg" or kind == b"msgs":  # msgs: a room's messages of one server batch
                    body = frames[3]
                    j = body.find(BCAST)
                    while j >= 0:
                        k_str, ts_str = body[j + len(BCAST):].split(b" ", 2)[:2]
                        bcast.setdefault(int(k_str), array("q")).append(t - int(ts_str))
                        j = body.find(BCAST, j + 1)
                    counts["msg"] += body.count(b'"seq":') if kind == b"msgs" else 1
                elif kind == b"welcome":
                    if i in pending_hello:
                        del pending_hello[i]
                        if not welcomed_at[i]:
                            welcomed_at[i] = mono()
                            connected += 1
                            hb_ring.append((mono() + 1.0, i))
                    counts["welcome"] += 1
                elif kind == b"error" and b"unknown_session" in frames[3]:
                    # the server timed this client out: say hello again, as zmqchat's client does
                    counts["unknown_session"] += 1
                    if i not in pending_hello:
                        pending_hello[i] = mono()
                        counts["rejoins"] += 1
                else:
                    counts[kind.decode(errors="replace")] += 1
        if now >= next_progress:
            next_progress = now + 1.0
            results.put(("progress", wid, connected))
        if not reported_connected and connected == n:
            reported_connected = True
            waits = sorted(welcomed_at[i] - created[i] for i in range(n))
            results.put(("connected", wid, {"n": n, "connect_p50": pct(waits, 50), "connect_p99": pct(waits, 99),
                                            "connect_max": waits[-1] if waits else 0.0}))
        try:
            cmd = ctrl.get_nowait()
        except queue.Empty:
            cmd = None
        if cmd == "report" or cmd == "stop":
            results.put(("report", wid, {"connected": connected, "counts": dict(counts),
                                         "bcast": {k: v.tobytes() for k, v in bcast.items()},
                                         "cpu_s": cpu_seconds(os.getpid()), "rss_mb": rss_mb(os.getpid())}))
            stop = cmd == "stop"
    for sock in pushes + subs:
        sock.close(linger=0)
    ctx.term()


# --------------------------------------------------------------------------------------------------
# main


class Announcer:
    """One more client, in this process: keeps a session alive, asks for stats, sends the broadcasts."""

    def __init__(self, in_ep: str, out_ep: str, curve) -> None:
        import zmq

        from zmqchat import protocol as p

        self.p = p
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.sub = self.ctx.socket(zmq.SUB)
        for sock in (self.push, self.sub):
            sock.setsockopt(zmq.LINGER, 0)
            if curve:
                sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = curve
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.session = f"announcer{os.getpid()}"
        self.sub.connect(out_ep)
        self.sub.setsockopt(zmq.SUBSCRIBE, p.session_topic(self.session))
        self.push.connect(in_ep)
        self.last_ping = 0.0
        self.stats: dict = {}
        self.errors: list[str] = []
        hello = p.encode_client(p.Hello(session=self.session, name="announcer", rooms=[ROOM]))
        end = time.monotonic() + 15
        while True:
            self.push.send_multipart(hello)
            if self._poll_for(p.Welcome, 0.5):
                break
            if time.monotonic() > end:
                raise RuntimeError("announcer got no welcome from the server")

    def _poll_for(self, cls, timeout: float):
        end = time.monotonic() + timeout
        found = None
        while True:
            left = end - time.monotonic()
            if not self.sub.poll(max(0, int(left * 1000))):
                return found
            _topic, msg = self.p.decode_server(self.sub.recv_multipart())
            if isinstance(msg, self.p.StatsReply):
                self.stats = msg.stats
            if isinstance(msg, self.p.ErrorReply):
                self.errors.append(f"{msg.code}: {msg.message}")
            if isinstance(msg, cls):
                found = msg
                return found

    def idle(self, seconds: float) -> None:
        """Heartbeat and drain replies for ``seconds`` (0: once, without waiting)."""
        end = time.monotonic() + seconds
        while True:
            if time.monotonic() - self.last_ping >= 1.0:
                self.push.send_multipart(self.p.encode_client(self.p.Ping(session=self.session)))
                self.last_ping = time.monotonic()
            self._poll_for(type(None), min(0.2, max(0.0, end - time.monotonic())))
            if time.monotonic() >= end:
                return

    def ask_stats(self) -> dict:
        self.push.send_multipart(self.p.encode_client(self.p.StatsRequest(session=self.session)))
        self._poll_for(self.p.StatsReply, 5.0)
        return self.stats

    def broadcast(self, k: int) -> None:
        text = f"BCAST {k} {time.monotonic_ns():019d} hello everyone"
        self.push.send_multipart(self.p.encode_client(self.p.Say(session=self.session, room=ROOM, text=text,
                                                                 mid=f"{self.session}.{k + 1}")))

    def close(self) -> None:
        self.push.close(linger=0)
        self.sub.close(linger=0)
        self.ctx.term()


def server_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="many concurrent zmqchat clients against one server")
    ap.add_argument("--clients", type=int, default=2000, help="concurrent clients (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=4, help="client processes, one context each (default: %(default)s)")
    ap.add_argument("--ramp", type=float, default=500, help="new clients per second, in total (default: %(default)s)")
    ap.add_argument("--hello-retry", type=float, default=HELLO_RETRY,
                    help="seconds between hellos until the welcome arrives (default: %(default)s)")
    ap.add_argument("--no-join", action="store_true",
                    help="clients say hello without joining #general (they still subscribe to its topic, so the "
                    "broadcast reaches them): no join announcements, whose fan-out grows as clients squared")
    ap.add_argument("--steady", type=float, default=5.0, help="seconds of heartbeats only, measured (default: %(default)s)")
    ap.add_argument("--broadcasts", type=int, default=5, help="messages to #general, 1 s apart (default: %(default)s)")
    ap.add_argument("--standby", action="store_true",
                    help="the server is the active of a pair, its standby on this machine too (implies --persist): "
                    "every batch waits for the standby's commit; the standby's CPU and memory are reported apart")
    ap.add_argument("--persist", action=argparse.BooleanOptionalAction, default=False,
                    help="server history on disk (default: off)")
    ap.add_argument("--curve", action=argparse.BooleanOptionalAction, default=False, help="CURVE on (default: off)")
    ap.add_argument("--py-spy", metavar="DIR", help="sample the server with py-spy during the steady window")
    ap.add_argument("--max-seconds", type=float, default=300, help="hard cap on the whole run (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print one JSON summary object only")
    return ap



def wait_log(path: Path, needle: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while needle not in path.read_text(errors="replace"):
        if time.monotonic() > end:
            raise SystemExit(f"no {needle!r} in {path} within {timeout}s")
        time.sleep(0.05)

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))

    def on_alarm(*_):
        raise TimeoutError(f"loadtest exceeded --max-seconds={args.max_seconds}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(math.ceil(args.max_seconds))
    t_begin = time.monotonic()
    want_fds = 2 * args.clients + 256  # the server: two TCP connections per client
    soft_before = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = raise_nofile(want_fds)  # inherited by the server
    say(f"RLIMIT_NOFILE {soft_before} -> {limits}; the server needs about {want_fds}")
    tmp = Path(tempfile.mkdtemp(prefix="zmqchat-load-"))
    curve = None
    server_secret = None
    if args.curve:
        from bench import make_curve

        c = make_curve(tmp)
        curve, server_secret = c["client"], c["server_secret_file"]
    port = free_port_pair(count=3)
    in_ep, out_ep = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"
    if args.standby:
        args.persist = True
    argv_srv = [sys.executable, "-m", "zmqchat.cli.server", "--host", "127.0.0.1", "--port", str(port), "--quiet",
                "--stats-interval", "0"]
    argv_srv += ["--data-dir", str(tmp / "data")] if args.persist else ["--no-persist"]
    if server_secret:
        argv_srv += ["--curve-secret", server_secret]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQCHAT_")}
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 (the server's output, closed at the end)
    standby = standby_log = None
    if args.standby:
        other = free_port_pair(count=3)
        while abs(other - port) < 3:
            other = free_port_pair(count=3)
        argv_b = [other if a == str(port) else a for a in map(str, argv_srv)]
        argv_b[argv_b.index(str(tmp / "data"))] = str(tmp / "data-b")
        argv_srv += ["--peer", f"127.0.0.1:{other}"]
        argv_b += ["--peer", f"127.0.0.1:{port}"]
    # cwd: not the work tree, which `python -m` would put first on sys.path, before PYTHONPATH's tree
    server = subprocess.Popen(argv_srv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=tmp,
                              preexec_fn=die_with_parent)  # noqa: PLW1509 (one prctl call)
    if args.standby:
        wait_log(tmp / "server.log", "pair: ACTIVE")
        standby_log = open(tmp / "standby.log", "wb")  # noqa: SIM115 (closed at the end)
        standby = subprocess.Popen([str(a) for a in argv_b], stdin=subprocess.DEVNULL, stdout=standby_log,
                                   stderr=standby_log, env=env, cwd=tmp,
                                   preexec_fn=die_with_parent)  # noqa: PLW1509 (one prctl call)
        wait_log(tmp / "server.log", "the standby is in sync")
        say("pair: the standby is in sync; clients talk to the active")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    ctrls = []
    procs = []
    announcer = None
    summary: dict = {"config": vars(args).copy(), "rlimit_nofile": list(limits)}
    try:
        announcer = Announcer(in_ep, out_ep, curve)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        per = [args.clients // args.workers + (1 if w < args.clients % args.workers else 0)
               for w in range(args.workers)]
        life_end = time.time() + args.max_seconds + 30
        job = {"in": in_ep, "out": out_ep, "curve": curve, "ramp_per_worker": args.ramp / args.workers,
               "hello_retry": args.hello_retry, "no_join": args.no_join}
        first = 0
        for w, n in enumerate(per):
            q = ctx.Queue()
            proc = ctx.Process(target=worker, args=(w, first, n, job, results, q, life_end), daemon=True)
            proc.start()
            ctrls.append(q)
            procs.append(proc)
            first += n
        # ramp: wait until every worker has all its clients welcomed
        connected: dict[int, dict] = {}
        progress: dict[int, int] = {}
        deadline = time.monotonic() + args.clients / args.ramp + 60
        while len(connected) < args.workers:
            if time.monotonic() > deadline or server.poll() is not None:
                alive = "running" if server.poll() is None else f"exited with {server.returncode}"
                tail = (tmp / "server.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(
                    f"only {sum(progress.values())}/{args.clients} clients connected; server {alive}, "
                    f"{server_fds(server.pid)} fds open (RLIMIT_NOFILE {limits}), RSS {rss_mb(server.pid):.0f} MB; "
                    f"server log: {tail}")
            announcer.idle(0.0)
            try:
                msg = results.get(timeout=0.2)
            except queue.Empty:
                continue
            if msg[0] == "error":
                raise RuntimeError(f"worker {msg[1]}: {msg[2]}")
            if msg[0] == "progress":
                progress[msg[1]] = msg[2]
            if msg[0] == "connected":
                connected[msg[1]] = msg[2]
                progress[msg[1]] = msg[2]["n"]
        ramp_s = time.monotonic() - t0
        ramp_cpu_pct = 100 * (cpu_seconds(server.pid) - cpu0) / ramp_s
        say(f"{args.clients} clients connected in {ramp_s:.1f} s; server CPU during ramp "
            f"{ramp_cpu_pct:.0f}%, RSS {rss_mb(server.pid):.0f} MB")
        # steady state: heartbeats only
        announcer.idle(1.0)
        spy = None
        if args.py_spy:  # sample the server during the steady window only
            Path(args.py_spy).mkdir(parents=True, exist_ok=True)
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen([spy_bin, "record", "--pid", str(server.pid), "--rate", "500", "--format", "raw",
                                    "--duration", str(max(1, int(args.steady))), "--nonblocking", "--output",
                                    str(Path(args.py_spy) / f"loadtest-server-{args.clients}.txt")],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   preexec_fn=die_with_parent)  # noqa: PLW1509 (one prctl call)
        cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
        announcer.idle(args.steady)
        if spy is not None:
            try:
                spy.wait(args.steady + 15)
            except subprocess.TimeoutExpired:
                spy.terminate()
                spy.wait(5)
        cpu2, t2 = cpu_seconds(server.pid), time.monotonic()
        stats = announcer.ask_stats()
        steady = {"server_cpu_pct": 100 * (cpu2 - cpu1) / (t2 - t1), "server_rss_mb": rss_mb(server.pid),
                  "server_fds": server_fds(server.pid), "server_clients": stats.get("clients"),
                  "server_timeouts": stats.get("timeouts"), "server_received": stats.get("received")}
        say(f"steady state ({args.steady:g} s of heartbeats): server CPU {steady['server_cpu_pct']:.1f}%, "
            f"RSS {steady['server_rss_mb']:.0f} MB, {steady['server_fds']} fds, server counts "
            f"{steady['server_clients']} clients, {steady['server_timeouts']} timeouts")
        # broadcasts
        cpu3 = cpu_seconds(server.pid)
        for k in range(args.broadcasts):
            announcer.broadcast(k)
            announcer.idle(1.0)
        announcer.idle(2.0)
        cpu4 = cpu_seconds(server.pid)
        for q in ctrls:
            q.put("stop")
        reports: dict[int, dict] = {}
        end = time.monotonic() + 30
        while len(reports) < args.workers and time.monotonic() < end:
            try:
                msg = results.get(timeout=0.5)
            except queue.Empty:
                continue
            if msg[0] == "report":
                reports[msg[1]] = msg[2]
            elif msg[0] == "error":
                raise RuntimeError(f"worker {msg[1]}: {msg[2]}")
        lat = array("q")
        per_bcast = []
        counts = collections.Counter()
        for rep in reports.values():
            counts.update(rep["counts"])
        for k in range(args.broadcasts):
            got = array("q")
            for rep in reports.values():
                got.frombytes(rep["bcast"].get(k, b""))
            per_bcast.append(len(got))
            lat.extend(got)
        vals = sorted(lat)
        expected = args.clients * args.broadcasts
        summary.update({
            "clients": args.clients, "workers": args.workers, "ramp_s": ramp_s,
            "ramp_server_cpu_pct": ramp_cpu_pct,
            "connect_p99_s": max(c["connect_p99"] for c in connected.values()),
            "connect_max_s": max(c["connect_max"] for c in connected.values()),
            **steady,
            "broadcast_delivered": len(vals), "broadcast_expected": expected,
            "broadcast_per_message": per_bcast,
            "broadcast_p50_ms": pct(vals, 50) / 1e6, "broadcast_p99_ms": pct(vals, 99) / 1e6,
            "broadcast_max_ms": (vals[-1] / 1e6) if vals else float("nan"),
            "broadcast_server_cpu_s": cpu4 - cpu3,
            "server_rss_peak_mb": rss_mb(server.pid, "VmHWM"),
            **({"standby_cpu_s": round(cpu_seconds(standby.pid), 1), "standby_rss_peak_mb": rss_mb(standby.pid, "VmHWM")}
               if standby is not None else {}),
            "client_messages": dict(counts),
            "worker_rss_mb": [round(r["rss_mb"], 1) for r in reports.values()],
            "worker_cpu_s": [round(r["cpu_s"], 1) for r in reports.values()],
            "announcer_errors": announcer.errors[:5],
        })
    finally:
        signal.alarm(0)
        for q in ctrls:
            q.put("stop")
        deadline = time.monotonic() + 10
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # its own pid
                proc.join(3)
            if proc.is_alive():
                proc.kill()
                proc.join(3)
        if announcer is not None:
            announcer.close()
        if standby is not None and standby.poll() is None:
            standby.send_signal(signal.SIGTERM)  # by its pid
            try:
                standby.wait(20)
            except subprocess.TimeoutExpired:
                standby.kill()
                standby.wait(5)
        if standby_log is not None:
            standby_log.close()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
        log.close()
        server_log = (tmp / "server.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(tmp, ignore_errors=True)
    summary["machine"] = machine()
    summary["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    if server_log.strip():
        summary["server_log_tail"] = server_log.strip().splitlines()[-5:]
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        s = summary
        print()
        print(f"{s['clients']} clients ({s['workers']} worker processes), connected in {s['ramp_s']:.1f} s "
              f"(server CPU {s['ramp_server_cpu_pct']:.0f}% during the ramp; connect p99 {s['connect_p99_s']:.2f} s)")
        print(f"steady heartbeats: server CPU {s['server_cpu_pct']:.1f}%, RSS {s['server_rss_mb']:.0f} MB "
              f"(peak {s['server_rss_peak_mb']:.0f} MB), {s['server_fds']} fds, server sees {s['server_clients']} "
              f"clients, {s['server_timeouts']} timeouts")
        print(f"broadcast to all: delivered {s['broadcast_delivered']}/{s['broadcast_expected']}, "
              f"p50 {s['broadcast_p50_ms']:.1f} ms, p99 {s['broadcast_p99_ms']:.1f} ms, max {s['broadcast_max_ms']:.1f} ms")
        print(f"client-side messages: {s['client_messages']}")
        print(f"elapsed: {s['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
