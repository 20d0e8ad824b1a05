#!/usr/bin/env python3
"""Micro-benchmarks behind figures of docs/benchmarks.md, each alone on this machine:

    python scripts/microbench.py recv    # draining 3-frame messages: getsockopt(RCVMORE) vs Frame.more
    python scripts/microbench.py fts     # the search index's FTS5 insert, per row, for a few table layouts
    python scripts/microbench.py gil     # a receive loop's CPU per message: alone, beside an FTS5-writing
                                         # thread, beside an FTS5-writing process
    python scripts/microbench.py decode  # decoding a say (the server) and a msgs batch (a client): msgspec
                                         # and the hand-checked way

Process (or thread) CPU time per message (or row), several runs each, printed with their spread. Nothing here is a
test; the server does not run.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time


def _pull_push():
    """A context, and a PULL with a PUSH connected to it on 127.0.0.1 (no high-water marks)."""
    import zmq

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.setsockopt(zmq.RCVHWM, 0)
    push.setsockopt(zmq.SNDHWM, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    return ctx, pull, push


def recv(runs: int, count: int) -> None:
    import zmq

    ctx, pull, push = _pull_push()
    message = [b"zmqchat/3", b"msg", b"x" * 178]
    raw_recv, raw_get = zmq.backend.Socket.recv, zmq.backend.Socket.get
    noblock, rcvmore = int(zmq.NOBLOCK), int(zmq.RCVMORE)

    def by_getsockopt() -> int:
        n = 0
        while True:
            try:
                frames = [raw_recv(pull, noblock)]
            except zmq.Again:
                return n
            while raw_get(pull, rcvmore):
                frames.append(raw_recv(pull, noblock))
            n += 1

    def by_frame_more() -> int:
        n = 0
        while True:
            try:
                frame = raw_recv(pull, noblock, False)
            except zmq.Again:
                return n
            frames = [frame.bytes]
            while frame.more:
                frame = raw_recv(pull, noblock, False)
                frames.append(frame.bytes)
            n += 1

    results: dict[str, list[float]] = {"getsockopt(RCVMORE)": [], "Frame.more": []}
    try:
        for _ in range(runs):
            for name, drain in (("getsockopt(RCVMORE)", by_getsockopt), ("Frame.more", by_frame_more)):
                for _ in range(count):
                    push.send_multipart(message)
                while pull.poll(100) == 0:
                    pass
                time.sleep(0.5)  # let the I/O thread queue the rest: what is timed is the drain alone
                started = time.process_time()
                n = drain()
                results[name].append(1e6 * (time.process_time() - started) / max(1, n))
    finally:
        ctx.destroy(linger=0)
    for name, values in results.items():
        print(f"{name:26} {statistics.median(values):5.2f} us a message (median of {runs}; "
              f"{min(values):.2f}-{max(values):.2f})")


LAYOUTS = {
    "as the server has it": "fts5(text, sender, room, seq UNINDEXED, ts UNINDEXED, "
                            "tokenize = 'unicode61 remove_diacritics 2')",
    "columnsize=0": "fts5(text, sender, room, seq UNINDEXED, ts UNINDEXED, "
                    "tokenize = 'unicode61 remove_diacritics 2', columnsize=0)",
    "only the text indexed": "fts5(text, sender UNINDEXED, room UNINDEXED, seq UNINDEXED, ts UNINDEXED, "
                             "tokenize = 'unicode61 remove_diacritics 2')",
}


def fts(rows: int) -> None:
    rng = random.Random(1)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                  for _ in range(5000)]
    data = [(" ".join(rng.choice(vocabulary) for _ in range(15)), f"user{i % 50}", "#general", i, 1.7e9 + i)
            for i in range(rows)]
    print(f"SQLite {sqlite3.sqlite_version}, {rows:,} rows of 15 words from a 5,000-word vocabulary, "
          "2,000 rows a transaction (as the index thread writes them)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, layout in LAYOUTS.items():
            path = os.path.join(tmp, f"{len(name)}.sqlite3")
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"CREATE VIRTUAL TABLE words USING {layout}")
            started = time.process_time()
            for k in range(0, rows, 2000):
                db.execute("BEGIN")
                db.executemany("INSERT INTO words VALUES (?, ?, ?, ?, ?)", data[k:k + 2000])
                db.execute("COMMIT")
            took = time.process_time() - started
            db.close()
            print(f"{name:24} {1e6 * took / rows:5.1f} us a row, {os.path.getsize(path) / 1e6:.0f} MB")


def _fts_writer(stop, rows) -> None:
    """Writes FTS5 rows as the index does (2,000 a transaction) until ``stop`` is set; counts them."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "index.sqlite3"), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"CREATE VIRTUAL TABLE words USING {LAYOUTS['as the server has it']}")
        i = 0
        while not stop.is_set():
            data = [(f"B{j:010d} {1_700_000_000_000_000_000 + j:019d} " + "x" * 68, "bench", "#bench", j, 1.7e9)
                    for j in range(i, i + 2000)]
            db.execute("BEGIN")
            db.executemany("INSERT INTO words VALUES (?, ?, ?, ?, ?)", data)
            db.execute("COMMIT")
            i += 2000
            with rows.get_lock():
                rows.value += 2000
        db.close()


def gil(runs: int, count: int) -> None:
    """The serving loop's situation: receiving (pyzmq lets go of the GIL on every frame) and decoding,
    while something else writes the search index (sqlite3 lets go of it on every row)."""
    import json
    import multiprocessing
    import threading

    import zmq

    ctx, pull, push = _pull_push()
    body = json.dumps({"session": "s" * 22, "room": "#bench", "text": "B0000000001 " + "x" * 88,
                       "mid": "s.1"}).encode()
    message = [b"zmqchat/3", b"say", body]
    raw_recv, noblock = zmq.backend.Socket.recv, int(zmq.NOBLOCK)
    results: dict[str, list[float]] = {"alone": [], "beside a thread": [], "beside a process": []}
    mp = multiprocessing.get_context("spawn")
    try:
        for _ in range(runs):
            for name, times in results.items():
                for _ in range(count):
                    push.send_multipart(message)
                while pull.poll(100) == 0:
                    pass
                time.sleep(0.5)  # let the I/O thread queue the rest: what is timed is the drain alone
                rows = mp.Value("q", 0)
                stop = threading.Event() if name == "beside a thread" else mp.Event()
                writer = (threading.Thread(target=_fts_writer, args=(stop, rows)) if name == "beside a thread"
                          else mp.Process(target=_fts_writer, args=(stop, rows)) if name == "beside a process"
                          else None)
                if writer is not None:
                    writer.start()
                    while rows.value == 0:  # it has started writing
                        time.sleep(0.01)
                started, n = time.thread_time(), 0
                while True:
                    try:
                        frame = raw_recv(pull, noblock, False)
                    except zmq.Again:
                        break
                    while frame.more:
                        frame = raw_recv(pull, noblock, False)
                    json.loads(frame.bytes)
                    n += 1
                times.append(1e6 * (time.thread_time() - started) / max(1, n))
                stop.set()
                if writer is not None:
                    writer.join()
    finally:
        ctx.destroy(linger=0)
    print(f"receive + decode, {count:,} 3-frame messages; CPU time of the receiving thread alone")
    for name, values in results.items():
        print(f"{name:18} {statistics.median(values):5.2f} us a message (median of {runs}; "
              f"{min(values):.2f}-{max(values):.2f})")


def decode(runs: int, count: int) -> None:
    from zmqchat import protocol as p

    say = p.encode_client(p.Say(session="s" * 22, room="#bench", text="B0000000001 " + "x" * 88, mid="s" * 22 + ".17"))
    batch = p.encode_server(p.room_topic("#bench"), p.RoomMessages(messages=[
        p.RoomMessage(room="#bench", seq=n, ts=1.7e9 + n, sender="bench", text="hello there " * 8, mid=f"s.{n}")
        for n in range(1, 201)]))
    cases = {
        "say, msgspec": (lambda: p._build(p.Say, say[2]), 1),
        "say, checked": (lambda: p._build_checked(p.Say, say[2]), 1),
        "say, all of decode_client": (lambda: p.decode_client(say), 1),
        "msgs of 200, msgspec": (lambda: p._build(p.RoomMessages, batch[3]), 200),
        "msgs of 200, checked": (lambda: p._build_checked(p.RoomMessages, batch[3]), 200),
    }
    print(f"CPU time a message ({count:,} messages a run; a batch counts as its 200)")
    for name, (call, per) in cases.items():
        times = []
        for _ in range(runs):
            started = time.process_time()
            for _ in range(max(1, count // per)):
                call()
            times.append(1e6 * (time.process_time() - started) / (max(1, count // per) * per))
        print(f"{name:26} {statistics.median(times):5.2f} us (median of {runs}; {min(times):.2f}-{max(times):.2f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["recv", "fts", "gil", "decode"])
    ap.add_argument("--runs", type=int, default=4, help="recv: runs of each way (default: %(default)s)")
    ap.add_argument("--count", type=int, default=100_000, help="messages or rows (default: %(default)s)")
    args = ap.parse_args()
    if args.what == "recv":
        recv(args.runs, args.count)
    elif args.what == "gil":
        gil(args.runs, args.count)
    elif args.what == "decode":
        decode(args.runs, args.count)
    else:
        fts(args.count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
