#!/usr/bin/env python3
"""How fast /search answers over a big history, and what the index costs on disk.

Fills a history (SQLite, as the server keeps it) with ``--messages`` chat lines over ``--rooms`` rooms,
written in batches as the server writes them, waits for the search index to catch up, then times the
queries the server would run for ``/search`` (the same ``SqliteStore.search`` call, on this thread):
a common word, a rare one, a phrase, a prefix, and each narrowed by sender and by room. Nothing here
listens on a socket; everything lives in a temporary directory that is deleted afterwards.

    python scripts/search_bench.py                 # 1,000,000 messages (a few minutes on 2 cores)
    python scripts/search_bench.py --messages 100000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import machine

from zmqchat import protocol as p
from zmqchat.server import search as q
from zmqchat.server.sequencer import Sequencer
from zmqchat.server.store import SqliteStore

NAMES = [f"user{i}" for i in range(200)]
BATCH = 500  # messages per commit: what a busy server drains per loop pass


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)]


def zipf_words(rng: random.Random, vocab: list[str], count: int) -> list[str]:
    """Words with a Zipf-like spread: a few very common, most rare (as in chat)."""
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    return rng.choices(vocab, weights=weights, k=count)


def fill(store: SqliteStore, messages: int, rooms: int, retention: int, rng: random.Random,
         vocab: list[str]) -> tuple[float, list[str]]:
    seq = Sequencer(store, 1000)
    room_names = [f"#room{r}" for r in range(rooms)]
    words = zipf_words(rng, vocab, messages * 12)
    at = 0
    start = time.monotonic()
    ts = time.time() - messages
    for n in range(messages):
        room = room_names[n % rooms]
        text = " ".join(words[at:at + rng.randint(6, 18)])[:100]
        at += 18
        if at + 18 > len(words):
            at = 0
        sender = NAMES[n % len(NAMES)]
        stamp = ts + n
        seq.append(room, stamp, f"{sender}\x1f{n}",
                   lambda s, room=room, stamp=stamp, sender=sender, text=text, n=n:
                   p.room_message_body(room, s, stamp, sender, text, f"x.{n}", False))
        if n % BATCH == BATCH - 1:
            seq.submit()
    seq.submit()
    return time.monotonic() - start, room_names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20, help="runs of each query (default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=1200, help="give up on indexing after this long")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(7)
    vocab = vocabulary(rng)
    tmp = Path(tempfile.mkdtemp(prefix="zmqchat-search-"))
    try:
        retention = max(1000, args.messages // args.rooms)
        store = SqliteStore(tmp / "history.sqlite3", retention)
        wrote, room_names = fill(store, args.messages, args.rooms, retention, rng, vocab)
        t0 = time.monotonic()
        if not store.wait_indexed(args.max_seconds):
            print("the index did not catch up in time", file=sys.stderr)
            return 1
        lag = time.monotonic() - t0
        common, rare = vocab[0], vocab[len(vocab) // 2]
        queries = {
            "common word": (common, "", ""),
            "rare word": (rare, "", ""),
            "two words": (f"{common} {vocab[1]}", "", ""),
            "phrase": (f'"{vocab[0]} {vocab[1]}"', "", ""),
            "prefix": (vocab[3][:3] + "*", "", ""),
            "common, from:": (common, NAMES[17], ""),
            "common, in:": (common, "", room_names[len(room_names) // 2]),
            "rare, in:": (rare, "", room_names[1]),
            "no match": ("zzzzzzzzzz", "", ""),
        }
        results = {}
        for label, (text, sender, room) in queries.items():
            terms = q.parse(text)
            times, found = [], 0
            for _ in range(args.repeat):
                start = time.perf_counter()
                rows = store.search(terms, sender, room, 21)  # what a 20-result reply asks for
                times.append((time.perf_counter() - start) * 1000)
                found = len(rows)
            times.sort()
            results[label] = {"query": text, "sender": sender, "room": room, "found": found,
                              "p50_ms": statistics.median(times), "max_ms": times[-1],
                              "p90_ms": times[int(0.9 * (len(times) - 1))]}
        store.close()
        history_bytes = sum(f.stat().st_size for f in tmp.glob("history.sqlite3*"))
        index_bytes = sum(f.stat().st_size for f in tmp.glob("history.search.sqlite3*"))
        summary = {"messages": args.messages, "rooms": args.rooms, "write_s": round(wrote, 1),
                   "index_lag_after_writes_s": round(lag, 1), "history_mb": round(history_bytes / 1e6, 1),
                   "index_mb": round(index_bytes / 1e6, 1), "queries": results, "machine": machine()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    m = summary["machine"]
    print(f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; SQLite {__import__('sqlite3').sqlite_version}")
    print(f"{args.messages:,} messages in {args.rooms} rooms: written in {summary['write_s']} s (the index "
          f"process indexing meanwhile), index caught up {summary['index_lag_after_writes_s']} s after the last write")
    print(f"on disk: history {summary['history_mb']} MB, search index {summary['index_mb']} MB")
    print(f"{'query':<16}{'found':>6}{'p50 ms':>9}{'p90 ms':>9}{'max ms':>9}   ({args.repeat} runs each)")
    for label, r in results.items():
        print(f"{label:<16}{r['found']:>6}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['max_ms']:>9.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
