"""The history store on real SQLite files: reserved and skipped sequence numbers (a lost WAL tail never
makes a number be reused), damaged and foreign files (one clear line, or --repair), schema versions and
migrations, and the producers table. No sockets except the one end-to-end test; no sleeps."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from journal import History

from zmqchat import protocol as p
from zmqchat.cli.server import build_parser, history_file
from zmqchat.server import store as history_module
from zmqchat.server.sequencer import Sequencer
from zmqchat.server.store import (
    BLOCK_MAX,
    BLOCK_MIN,
    MIGRATIONS,
    SCHEMA_VERSION,
    SKIPPED_KEPT,
    Batch,
    MemoryStore,
    SqliteStore,
    StoreError,
    next_block,
    ranges_of,
)

V0_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    dedupe_key TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
"""  # what zmqchat wrote before schema versions, verbatim


@pytest.fixture(autouse=True)
def every_open_is_a_new_boot(monkeypatch):
    """These tests simulate power cuts: each open sees another boot of the machine, so the unused reserved
    numbers count as lost (within one boot nothing is: see test_within_one_boot_a_crash_skips_nothing)."""
    boots = iter(range(1_000_000))
    monkeypatch.setattr(history_module, "boot_id", lambda: f"boot-{next(boots)}")


def test_within_one_boot_a_crash_skips_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "boot_id", lambda: "this-boot")
    path = tmp_path / "h.sqlite3"
    store = committed(path, 10, limit=100)
    crash(store)  # kill -9: the OS still holds every write, so no number past 10 was ever published
    again = History(limit=100, path=path)
    assert again.last_seq("#a") == 10 and again.lost("#a", 0, 1000) == []
    assert say(again) == 11
    crash(again)
    monkeypatch.setattr(history_module, "boot_id", lambda: "the-next-boot")  # a power cut, then a reboot
    third = History(limit=100, path=path)
    assert third.lost("#a", 0, 1000) == [(11, 64)] and third.last_seq("#a") == 64
    third.close()


def body(room: str, seq: int, text: str = "hi") -> bytes:
    return p.room_message_body(room, seq, 1.0, "alice", text, f"m{seq}", False)


def say(store: History, room: str = "#a", text: str = "hi") -> int:
    return store.append(room, 1.0, f"alice\x1f{text}", lambda seq: body(room, seq, text))[0]


def committed(path, count: int, limit: int = 100) -> History:
    """A store at ``path`` holding ``count`` messages of #a, committed."""
    store = History(limit=limit, path=path)
    for _ in range(count):
        say(store)
    store.commit()
    return store


def seqs(rows: list[tuple[int, bytes]]) -> list[int]:
    return [seq for seq, _body in rows]


def sql(path: Path, query: str, args: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


def crash(store: History) -> None:
    """What kill -9 leaves behind: no final commit, no release of reserved numbers."""
    assert store.store._db is not None
    store.store._db.close()
    store.store._db = None
    store.store.close()  # only stops the checkpointer now


def make_store(path: Path, messages: int = 3, room: str = "#a") -> Path:
    store = History(limit=100, path=path)
    for _ in range(messages):
        say(store, room)
    store.close()
    return path


# --------------------------------------------------------------------------------------------------
# pure helpers


@pytest.mark.parametrize(("block", "lasted", "expected"), [
    (64, 0.5, 128),  # used up within a second: double
    (64, 0.0, 128),
    (BLOCK_MAX, 0.1, BLOCK_MAX),  # never past the maximum
    (BLOCK_MAX // 2 + 1, 0.1, BLOCK_MAX),
    (256, 1.0, 256),  # between 1 and 10 seconds: keep
    (256, 10.0, 256),
    (256, 10.5, 128),  # lasted over 10 seconds: halve
    (BLOCK_MIN, 3600.0, BLOCK_MIN),  # never below the minimum
    (100, 11.0, BLOCK_MIN),
])
def test_next_block(block, lasted, expected):
    assert next_block(block, lasted) == expected


def test_ranges_of():
    assert ranges_of([]) == []
    assert ranges_of([5, 1, 2, 3, 9, 8, 3]) == [(1, 3), (5, 5), (8, 9)]


# --------------------------------------------------------------------------------------------------
# reservations


def reservation(path: Path, room: str = "#a") -> int | None:
    rows = sql(path, "SELECT upto FROM reservations WHERE room = ?", (room,))
    return rows[0][0] if rows else None


def test_numbers_are_reserved_in_blocks_with_a_synced_commit(tmp_path, clock):
    path = tmp_path / "h.sqlite3"
    store = History(limit=1000, path=path, clock=clock)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    say(store)
    assert reservation(path) is None  # queued, written by the commit
    store.commit()
    assert reservation(path) == BLOCK_MIN
    assert statements[:2] == ["PRAGMA synchronous=FULL", "BEGIN"]  # the WAL is fsynced at this commit
    assert statements[-2:] == ["COMMIT", "PRAGMA synchronous=NORMAL"]
    assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL again
    statements.clear()
    for _ in range(BLOCK_MIN - 1):  # the rest of the block: no reservation, no fsync
        clock.advance(0.1)
        say(store)
        store.commit()
    assert not any("synchronous" in s for s in statements)
    assert reservation(path) == BLOCK_MIN
    say(store)  # 65 > 64: the next block, 6.3 s after the first: same size
    store.commit()
    assert reservation(path) == 2 * BLOCK_MIN
    store.close()


def test_block_size_follows_the_rate_of_the_room(tmp_path, clock):
    path = tmp_path / "h.sqlite3"
    store = History(limit=100, path=path, clock=clock)
    ends = []
    for _ in range(64 + 128 + 256):  # all at once: each block used up within a second, so each doubles
        say(store)
        store.commit()
        ends.append(reservation(path))
    assert sorted(set(ends)) == [64, 64 + 128, 64 + 128 + 256]
    clock.advance(30)  # the 256-block lasted 30 s (and more): the next ones halve
    say(store)
    store.commit()
    assert reservation(path) == 448 + 128  # 449 .. 576
    store.close()


def test_a_failed_reserving_commit_keeps_the_reservation_and_restores_normal_sync(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "BUSY_TIMEOUT", 0.05)
    path = tmp_path / "h.sqlite3"
    store = History(limit=10, path=path)
    say(store)
    locker = sqlite3.connect(str(path), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="locked"):
        store.commit()
    assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)
    locker.execute("ROLLBACK")
    locker.close()
    store.commit()
    assert reservation(path) == BLOCK_MIN
    assert sql(path, "SELECT seq FROM messages") == [(1,)]
    store.close()


def test_clean_close_releases_reservations_so_a_restart_skips_nothing(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = committed(path, 10, limit=100)
    assert reservation(path) == BLOCK_MIN
    store.close()
    assert reservation(path) == 10
    again = History(limit=100, path=path)
    assert again.last_seq("#a") == 10 and again.lost("#a", 0, 1000) == []
    assert say(again) == 11
    again.close()


def test_a_crash_skips_the_rest_of_the_reserved_block(tmp_path, caplog):
    path = tmp_path / "h.sqlite3"
    store = committed(path, 10, limit=100)
    crash(store)  # numbers 11..64 were reserved, never used: nobody saw them, but the file cannot tell
    with caplog.at_level(logging.INFO, logger="zmqchat.server"):
        again = History(limit=100, path=path)
    assert [r.getMessage() for r in caplog.records if "not on disk" in r.getMessage()] == [
        "history #a: seq 11-64 are not on disk (lost in a power cut, or repaired away): skipped, numbering goes on at 65"]
    assert (again.last_seq("#a"), again.committed_seq("#a")) == (64, 64)
    assert again.lost("#a", 0, 64) == [(11, 64)]
    assert say(again) == 65
    again.close()
    third = History(limit=100, path=path)  # reopened cleanly: the skip is remembered, not recorded twice
    assert third.lost("#a", 0, 100) == [(11, 64)]
    assert sql(path, "SELECT room, first, last FROM skipped") == [("#a", 11, 64)]
    third.close()


@pytest.mark.parametrize("step", [0.0, 0.1, 20.0])  # seconds between messages: growing, steady, shrinking blocks
def test_a_lost_wal_tail_never_makes_a_number_reused(tmp_path, clock, step):
    """Power cut: everything after the last fsynced commit is gone. Faithfully: a snapshot is taken right
    after each commit that wrote a reservation (the synced ones), and the store restarts on the last one."""
    path, snap = tmp_path / "h.sqlite3", tmp_path / "snapshot.sqlite3"
    store = History(limit=1000, path=path, clock=clock)
    reader = sqlite3.connect(str(path), isolation_level=None)
    reserved = None
    for i in range(300):
        assert say(store, text=f"t{i}") == i + 1
        store.commit()
        now = reader.execute("SELECT upto FROM reservations").fetchall()
        if now != reserved:
            reserved = now
            target = sqlite3.connect(str(snap))
            reader.backup(target)
            target.close()
        clock.advance(step)
    reader.close()
    on_snapshot = sql(snap, "SELECT MAX(seq) FROM messages")[0][0]
    assert on_snapshot < 300  # the tail is lost
    crash(store)

    again = History(limit=1000, path=snap, clock=clock)
    upto = reserved[0][0]
    assert upto >= 300
    assert again.last_seq("#a") == upto
    assert again.lost("#a", 0, upto) == [(on_snapshot + 1, upto)]
    assert again.lost("#a", on_snapshot + 5, upto - 1) == [(on_snapshot + 6, upto - 1)]
    assert again.lost("#a", 0, on_snapshot) == []
    new = [say(again, text=f"n{i}") for i in range(10)]
    assert new == list(range(upto + 1, upto + 11))  # above every number ever handed out
    again.commit()
    rows = again.range("#a", after=on_snapshot - 3)
    assert seqs(rows) == [on_snapshot - 2, on_snapshot - 1, on_snapshot, *new]
    assert rows[-1][1] == body("#a", upto + 10, "n9")
    assert seqs(again.range("#a", after=on_snapshot - 3, limit=2, newest=False)) == [on_snapshot - 2, on_snapshot - 1]
    assert seqs(again.range("#a", after=on_snapshot, before=upto + 3)) == [upto + 1, upto + 2]
    assert again.range("#a", after=on_snapshot, before=upto + 1) == []
    again.close()

    restarted = History(limit=1000, path=snap, clock=clock)  # after a clean close: nothing more skipped
    assert restarted.lost("#a", 0, 10**9) == [(on_snapshot + 1, upto)]
    assert say(restarted) == upto + 11
    restarted.close()


def test_trimming_after_a_skip_keeps_what_memory_holds(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = committed(path, 5, limit=10)
    crash(store)
    again = History(limit=10, path=path)  # 6..64 skipped
    for _ in range(100):
        say(again)
    again.commit()
    held = seqs(again.range("#a", limit=1000))
    assert held == list(range(65 + 100 - 10, 65 + 100))
    assert [seq for seq, in sql(path, "SELECT seq FROM messages ORDER BY seq")] == held
    again.close()


def test_only_the_newest_skipped_ranges_are_kept(tmp_path):
    path = tmp_path / "h.sqlite3"
    for _ in range(SKIPPED_KEPT + 6):  # each start: one message, then a crash skips the rest of its block
        store = History(limit=10, path=path)
        say(store)
        store.commit()
        crash(store)
    store = History(limit=10, path=path)
    lost = store.lost("#a", 0, 10**9)
    assert len(lost) == SKIPPED_KEPT
    assert lost[-1][1] == store.last_seq("#a")
    assert lost[0][0] > 2  # the oldest ones are forgotten
    assert len(sql(path, "SELECT * FROM skipped")) == SKIPPED_KEPT
    store.close()


def test_in_memory_reserves_and_skips_nothing():
    store = History(limit=10)
    for _ in range(100):
        say(store)
    store.commit()
    assert store.lost("#a", 0, 1000) == []
    assert store.last_seq("#a") == 100 and isinstance(store.store, MemoryStore)  # numbered on, nothing held back
    store.close()


@settings(max_examples=300, deadline=None)
@given(held=st.sets(st.integers(1, 120), max_size=60), after=st.integers(-3, 125), before=st.integers(-3, 125),
       limit=st.integers(-2, 70), newest=st.booleans(), cache=st.integers(1, 70))
def test_range_matches_a_brute_force_filter_for_non_contiguous_seqs(held, after, before, limit, newest, cache):
    """Whether the rows come from the sequencer's cache, from the store below it, or from both."""
    rows = [(seq, b"%d" % seq) for seq in sorted(held)]
    memory = MemoryStore(1000)
    memory.submit(Batch(1, [("#a", seq, 1.0, "k", body) for seq, body in rows]))
    store = Sequencer(memory, cache)
    assert store.size() == min(cache, len(rows))
    wanted = [r for r in rows if r[0] > after and (before <= 0 or r[0] < before)]
    expected = [] if limit <= 0 else (wanted[-limit:] if newest else wanted[:limit])
    assert store.range("#a", after, before, limit, newest) == expected


# --------------------------------------------------------------------------------------------------
# damaged, foreign and newer files


DAMAGED_MESSAGES = {  # what a row may hold instead of a message -> how the refusal names it
    "text seq": (("#a", "abc", 1.0, "k", body("#a", 1)), "room '#a', seq 'abc'"),
    "zero seq": (("#a", 0, 1.0, "k", body("#a", 0)), "room '#a', seq 0"),
    "real seq": (("#a", 2.5, 1.0, "k", body("#a", 2)), "room '#a', seq 2.5"),
    "huge seq": (("#a", 2**60, 1.0, "k", body("#a", 2**60)), f"room '#a', seq {2**60}"),
    "text ts": (("#a", 9, "soon", "k", body("#a", 9)), "room '#a', seq 9"),
    "infinite ts": (("#a", 9, float("inf"), "k", body("#a", 9)), "room '#a', seq 9"),
    "blob key": (("#a", 9, 1.0, b"k", body("#a", 9)), "room '#a', seq 9"),
    "text body": (("#a", 9, 1.0, "k", body("#a", 9).decode()), "room '#a', seq 9"),
    "not json": (("#a", 9, 1.0, "k", b"{\"room\": \"#a\", \"seq\": 9"), "room '#a', seq 9"),
    "bad utf-8": (("#a", 9, 1.0, "k", b'{"room":"#a","seq":9,"text":"\xff"}'), "room '#a', seq 9"),
    "json list": (("#a", 9, 1.0, "k", b"[1, 2]"), "room '#a', seq 9"),
    "other seq in body": (("#a", 9, 1.0, "k", body("#a", 8)), "room '#a', seq 9"),
    "other room in body": (("#a", 9, 1.0, "k", body("#b", 9)), "room '#a', seq 9"),
    "bad room": (("a b", 1, 1.0, "k", body("a b", 1)), "room 'a b'"),
    "blob room": ((b"#a", 9, 1.0, "k", body("#a", 9)), "room b'#a'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_MESSAGES))
def test_a_damaged_message_row_is_refused_with_one_line(tmp_path, case):
    row, named = DAMAGED_MESSAGES[case]
    path = make_store(tmp_path / "h.sqlite3")
    sql(path, "INSERT INTO messages VALUES (?, ?, ?, ?, ?)", row)
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        History(limit=100, path=path)
    assert str(info.value) == (f"history database {path}: 1 damaged row in messages ({named}); start with --repair "
                               "to skip and count damaged rows")
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before  # a refused open changes nothing
    assert len(sql(path, "SELECT * FROM messages")) == 4


@pytest.mark.parametrize("case", sorted(DAMAGED_MESSAGES))
def test_repair_deletes_and_counts_a_damaged_message_row(tmp_path, case, caplog):
    row, _named = DAMAGED_MESSAGES[case]
    path = make_store(tmp_path / "h.sqlite3")
    sql(path, "INSERT INTO messages VALUES (?, ?, ?, ?, ?)", row)
    with caplog.at_level(logging.WARNING, logger="zmqchat.server"):
        store = History(limit=100, path=path, repair=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "repaired: 1 damaged row in messages" in warnings[0] and str(path) in warnings[0]
    assert seqs(store.range("#a")) == [1, 2, 3]
    assert store.range("#a") == [(s, body("#a", s)) for s in (1, 2, 3)]
    floor = row[1] if row[0] == "#a" and type(row[1]) is int and 0 < row[1] < 2**53 else 3
    assert say(store) == floor + 1  # never below a number the damaged row may have carried
    store.close()
    assert len(sql(path, "SELECT * FROM messages")) == 4  # the damaged row is gone, the new one is there
    History(limit=100, path=path).close()  # and the file opens cleanly from now on


def test_a_repaired_row_above_the_newest_is_never_reused_and_is_reported_lost(tmp_path):
    path = make_store(tmp_path / "h.sqlite3")
    sql(path, "INSERT INTO messages VALUES ('#a', 7, 1.0, 'k', x'00')")
    sql(path, "UPDATE messages SET body = x'00' WHERE seq = 2")
    store = History(limit=100, path=path, repair=True)
    assert store.last_seq("#a") == 7
    assert store.lost("#a", 0, 7) == [(2, 2), (4, 7)]
    assert seqs(store.range("#a")) == [1, 3]
    assert say(store) == 8
    store.close()


def test_repair_loads_limit_intact_rows_past_the_damaged_ones(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = History(limit=5, path=path)
    for _ in range(5):
        say(store)
    store.close()
    sql(path, "INSERT INTO messages VALUES ('#a', 'x', 1.0, 'k', x'00'), ('#a', 'y', 1.0, 'k', x'00')")
    repaired = History(limit=5, path=path, repair=True)
    assert seqs(repaired.range("#a")) == [1, 2, 3, 4, 5]
    repaired.close()


@pytest.mark.parametrize(("table", "row", "named"), [
    ("reservations", ("#b", "lots"), "reservations (room '#b')"),
    ("reservations", ("nohash", 5), "reservations (room 'nohash')"),
    ("skipped", ("#a", 9, 4), "skipped (room '#a', first 9)"),
    ("skipped", ("#a", "x", 4), "skipped (room '#a', first 'x')"),
    ("producers", ("p1", "alice", -1, "", 0, 1.0), "producers (producer 'p1')"),
    ("producers", ("p1", "alice", 3, "#a", 0, 1.0), "producers (producer 'p1')"),
    ("producers", ("p1", "alice", 3, "", 0, "later"), "producers (producer 'p1')"),
    ("producers", ("", "alice", 3, "", 0, 1.0), "producers (producer '')"),
])
def test_damaged_rows_of_the_other_tables(tmp_path, table, row, named):
    path = make_store(tmp_path / "h.sqlite3")
    sql(path, f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    with pytest.raises(StoreError) as info:
        History(limit=100, path=path)
    assert f": 1 damaged row in {named}; start with --repair" in str(info.value)
    store = History(limit=100, path=path, repair=True)
    assert seqs(store.range("#a")) == [1, 2, 3]
    assert say(store) == 4
    store.close()
    assert all(r != row for r in sql(path, f"SELECT * FROM {table}"))


def test_a_repaired_reservation_skips_a_whole_block_to_be_sure(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = committed(path, 10, limit=100)
    crash(store)
    sql(path, "UPDATE reservations SET upto = 'x'")
    again = History(limit=100, path=path, repair=True)  # how far #a was reserved is unknown now
    assert again.lost("#a", 0, 10**9) == [(11, 10 + BLOCK_MAX - 1)]
    assert say(again) == 10 + BLOCK_MAX
    again.close()


def test_a_damaged_epoch_is_replaced_by_a_repair(tmp_path):
    path = make_store(tmp_path / "h.sqlite3")
    sql(path, "UPDATE meta SET value = x'00' WHERE key = 'epoch'")
    with pytest.raises(StoreError, match=r"1 damaged row in meta \(epoch b'\\x00'\)"):
        History(limit=100, path=path)
    store = History(limit=100, path=path, repair=True)
    assert isinstance(store.epoch, str) and len(store.epoch) == 16  # a new epoch: clients start over
    store.close()
    assert sql(path, "SELECT value FROM meta WHERE key = 'epoch'") == [(store.epoch,)]


def test_several_damaged_rows_are_counted_per_table(tmp_path):
    path = make_store(tmp_path / "h.sqlite3")
    sql(path, "INSERT INTO messages VALUES ('#a', 'abc', 1.0, 'k', x'00'), ('#a', 'abd', 1.0, 'k', x'00')")
    sql(path, "INSERT INTO producers VALUES ('p1', 'alice', -1, '', 0, 1.0)")
    with pytest.raises(StoreError) as info:
        History(limit=100, path=path)
    assert str(info.value) == (f"history database {path}: 3 damaged rows: 2 in messages (room '#a', seq 'abd'), "
                               "1 in producers (producer 'p1'); start with --repair to skip and count damaged rows")


def test_a_truncated_file_is_refused_with_one_line(tmp_path):
    path = make_store(tmp_path / "h.sqlite3", messages=300)
    data = path.read_bytes()
    assert len(data) > 8 * 4096
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError) as info:
        History(limit=100, path=path)
    assert str(info.value) == (f"history database {path}: the SQLite file is damaged (truncated, or pages "
                               "overwritten) (database disk image is malformed); move it away to start with an empty "
                               "history, or rescue its rows with the sqlite3 shell's .recover; --repair cannot mend this")
    with pytest.raises(StoreError, match="malformed"):
        History(limit=100, path=path, repair=True)


def test_repair_reports_damaged_pages_in_one_line(tmp_path, caplog):
    path = make_store(tmp_path / "h.sqlite3", messages=600)
    data = bytearray(path.read_bytes())
    data[3 * 4096:4 * 4096] = b"\xab" * 4096  # a b-tree page overwritten
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="zmqchat.server"), pytest.raises(StoreError, match="malformed"):
        History(limit=100, path=path, repair=True)
    checks = [r.getMessage() for r in caplog.records if "quick_check" in r.getMessage()]
    assert len(checks) == 1 and "\n" not in checks[0] and "pages are damaged" in checks[0]


def test_a_file_of_garbage_is_refused_with_one_line(tmp_path):
    path = tmp_path / "h.sqlite3"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(StoreError, match=r"^history database .*h\.sqlite3: not a SQLite database \(file is "
                       r"not a database\); move it away"):
        History(limit=100, path=path)


@pytest.mark.parametrize(("schema", "problem"), [
    ("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)", r"not a zmqchat history \(tables: notes\)"),
    ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
     + "CREATE TABLE messages (id INTEGER PRIMARY KEY, text TEXT)",
     r"not a zmqchat history \(table messages columns id, text; expected room, seq, ts, dedupe_key, body\)"),
    (V0_SCHEMA + "PRAGMA user_version = 1", r"not a zmqchat history \(table reservations missing; expected room"),
])
def test_a_sqlite_file_with_another_schema_is_refused(tmp_path, schema, problem):
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(str(path))
    db.executescript(schema)
    db.close()
    with pytest.raises(StoreError, match=rf"^history database {path}: {problem}"):
        History(limit=100, path=path)


def test_a_file_from_a_newer_zmqchat_is_refused(tmp_path):
    path = make_store(tmp_path / "h.sqlite3")
    sql(path, f"PRAGMA user_version = {SCHEMA_VERSION + 6}")
    with pytest.raises(StoreError) as info:
        History(limit=100, path=path, repair=True)
    assert str(info.value) == (f"history database {path} was written by a newer zmqchat (schema {SCHEMA_VERSION + 6}, "
                               f"this one knows up to {SCHEMA_VERSION})")


def test_a_locked_file_or_a_bad_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "BUSY_TIMEOUT", 0.05)
    path = make_store(tmp_path / "h.sqlite3")
    locker = sqlite3.connect(str(path), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match=rf"^history database {path}: database is locked$"):
            History(limit=100, path=path)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(StoreError, match="^history database .*dir.sqlite3: unable to open database file$"):
        History(limit=100, path=tmp_path / "dir.sqlite3")
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="^history database .*file/h.sqlite3: .*File exists"):
        History(limit=100, path=tmp_path / "file" / "h.sqlite3")


def schema_of(path: Path) -> dict[str, list[tuple]]:
    """Each table's and index's columns (name, type, not null, default, key)."""
    names = sql(path, "SELECT type, name FROM sqlite_master ORDER BY name")
    return {name: sql(path, f"PRAGMA {'table' if kind == 'table' else 'index'}_xinfo({name})") for kind, name in names}


def test_a_fresh_file_is_created_at_the_current_version(tmp_path):
    assert SCHEMA_VERSION == len(MIGRATIONS)
    path = make_store(tmp_path / "h.sqlite3")
    assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert set(schema_of(path)) == {"meta", "messages", "reservations", "skipped", "producers", "topics",
                                    "sqlite_autoindex_meta_1"}


def test_a_version_0_file_is_migrated_with_its_rows_intact(tmp_path, caplog):
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(str(path), isolation_level=None)
    db.executescript(V0_SCHEMA)
    db.execute("INSERT INTO meta VALUES ('epoch', 'cafe0123cafe0123')")
    rows = [(room, seq, 100.0 + seq, f"alice\x1fm{seq}", body(room, seq)) for room in ("#a", "#b") for seq in (1, 2, 3)]
    db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", rows)
    db.close()
    with caplog.at_level(logging.INFO, logger="zmqchat.server"):
        store = History(limit=100, path=path)
    assert f"history database {path}: schema 0, migrating to {SCHEMA_VERSION}" in caplog.text
    assert store.epoch == "cafe0123cafe0123"
    assert store.rooms() == ["#a", "#b"]
    assert store.range("#b") == [(s, body("#b", s)) for s in (1, 2, 3)]
    assert store.lost("#a", 0, 100) == []
    assert say(store, "#b") == 4
    store.close()
    assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert sql(path, "SELECT * FROM messages WHERE seq <= 3 ORDER BY room, seq") == rows
    fresh = make_store(tmp_path / "fresh.sqlite3")
    assert schema_of(path) == schema_of(fresh)  # migrated and fresh files are the same


def test_a_refused_version_0_file_is_not_migrated(tmp_path):
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(str(path), isolation_level=None)
    db.executescript(V0_SCHEMA)
    db.execute("INSERT INTO messages VALUES ('#a', 'abc', 1.0, 'k', x'00')")
    db.close()
    with pytest.raises(StoreError, match="damaged"):
        History(limit=100, path=path)
    assert sql(path, "PRAGMA user_version") == [(0,)]
    assert set(schema_of(path)) == {"meta", "messages", "sqlite_autoindex_meta_1"}


def test_repair_flag_and_its_environment_variable(monkeypatch):
    assert build_parser().parse_args([]).repair is False
    assert build_parser().parse_args(["--repair"]).repair is True
    monkeypatch.setenv("ZMQCHAT_REPAIR", "yes")
    assert build_parser().parse_args([]).repair is True


def test_the_server_refuses_a_damaged_file_in_one_line_then_repairs_it(chat):
    path = history_file(chat.data_dir, f"tcp://127.0.0.1:{chat.port}")
    make_store(path)
    sql(path, "INSERT INTO messages VALUES ('#a', 'abc', 1.0, 'k', x'00')")
    refused = chat.server(wait_ready=False)
    assert refused.wait() == 1
    assert refused.lines["err"] == [(f"ERROR: history database {path}: 1 damaged row in messages (room '#a', "
                                     "seq 'abc'); start with --repair to skip and count damaged rows")]
    assert refused.count("Traceback", stream="err") == 0

    repaired = chat.server("--repair")
    repaired.expect(r"WARNING history database .*: repaired: 1 damaged row in messages \(room '#a', seq 'abc'\) "
                    "deleted", stream="err")
    repaired.expect(r"history: .* 3 loaded\)", stream="err")
    assert repaired.count("Traceback", stream="err") == 0


# --------------------------------------------------------------------------------------------------
# producers (dedupe state of each sender)


def test_producers_survive_a_clean_restart_and_a_crash(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = History(limit=10, path=path)
    store.save_producer("alice\x1fs1", "alice", 5, "#a", 3, 200.0)
    store.save_producer("bob\x1fs2", "bob", 1, "", 0, 100.0)
    store.commit()  # no message in the batch: the producers are written anyway
    store.close()
    again = History(limit=10, path=path)
    assert again.producers(since=0.0) == [("bob\x1fs2", "bob", 1, "", 0, 100.0), ("alice\x1fs1", "alice", 5, "#a", 3, 200.0)]
    say(again)
    again.save_producer("carol\x1fs3", "carol", 2, "#a", 1, 300.0)
    again.commit()
    again.save_producer("dave\x1fs4", "dave", 9, "#a", 1, 400.0)  # not committed: lost with the crash
    crash(again)
    third = History(limit=10, path=path)
    assert [row[0] for row in third.producers(since=0.0)] == ["bob\x1fs2", "alice\x1fs1", "carol\x1fs3"]
    third.close()


def test_the_last_save_before_a_commit_wins_and_drop_deletes(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = History(limit=10, path=path)
    store.save_producer("p1", "alice", 1, "", 0, 10.0)
    store.save_producer("p1", "alice", 2, "#a", 1, 11.0)
    store.save_producer("p2", "bob", 1, "", 0, 12.0)
    store.commit()
    assert sql(path, "SELECT * FROM producers ORDER BY producer") == [("p1", "alice", 2, "#a", 1, 11.0),
                                                                      ("p2", "bob", 1, "", 0, 12.0)]
    store.drop_producer("p1")
    store.save_producer("p2", "bob", 2, "#a", 2, 13.0)
    store.commit()
    assert sql(path, "SELECT * FROM producers") == [("p2", "bob", 2, "#a", 2, 13.0)]
    store.save_producer("p3", "carol", 1, "", 0, 14.0)
    store.drop_producer("p3")  # saved then dropped before the commit: the drop wins
    store.drop_producer("never-saved")
    store.commit()
    assert sql(path, "SELECT producer FROM producers") == [("p2",)]
    store.close()


def test_producers_older_than_since_are_not_returned_and_deleted(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = History(limit=10, path=path)
    for i in range(5):
        store.save_producer(f"p{i}", "alice", i, "", 0, 100.0 + i)
    store.close()
    again = History(limit=10, path=path)
    assert [row[0] for row in again.producers(since=102.0)] == ["p2", "p3", "p4"]
    assert len(sql(path, "SELECT * FROM producers")) == 5  # deleted with the next commit
    again.save_producer("p0", "alice", 7, "", 0, 100.5)  # saved again meanwhile (an old ts): kept
    again.commit()
    assert [row[0] for row in sql(path, "SELECT producer FROM producers ORDER BY producer")] == ["p0", "p2", "p3", "p4"]
    assert [row[0] for row in again.producers(since=103.5)] == ["p4"]
    again.close()


def test_a_failing_commit_keeps_producers_pending_and_retries(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "BUSY_TIMEOUT", 0.05)
    path = tmp_path / "h.sqlite3"
    store = History(limit=10, path=path)
    say(store)
    store.save_producer("p1", "alice", 2, "#a", 1, 10.0)
    locker = sqlite3.connect(str(path), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="locked"):
        store.commit()
    locker.execute("ROLLBACK")
    locker.close()
    assert sql(path, "SELECT * FROM producers") == [] and sql(path, "SELECT * FROM messages") == []
    store.commit()  # message and producer together, in one transaction
    assert sql(path, "SELECT * FROM producers") == [("p1", "alice", 2, "#a", 1, 10.0)]
    assert sql(path, "SELECT seq FROM messages") == [(1,)]
    store.close()


def test_producers_in_memory_are_no_ops():
    store = History(limit=10)
    store.save_producer("p1", "alice", 2, "#a", 1, 10.0)
    store.drop_producer("p1")
    store.commit()
    assert store.producers(since=0.0) == []
    store.close()


def test_stored_bodies_are_json_objects_with_their_room_and_seq(tmp_path):
    path = make_store(tmp_path / "h.sqlite3", messages=2)
    for room, seq, stored in sql(path, "SELECT room, seq, body FROM messages"):
        obj = json.loads(stored)
        assert (obj["room"], obj["seq"]) == (room, seq)


# --------------------------------------------------------------------------------------------------
# the store behind the cache: retention on disk apart from the memory, reads in both directions


def test_scrollback_reads_the_disk_below_the_cache(tmp_path):
    path = tmp_path / "h.sqlite3"
    disk = SqliteStore(path, retention=500)
    store = Sequencer(disk, cache=20)
    for _ in range(300):
        say(store)
    store.submit()
    assert store.settle() == 1 and store.size() == 20  # memory holds 20, the disk all 300
    assert seqs(store.range("#a", before=281, limit=50)) == list(range(231, 281))  # a page older than the cache
    assert seqs(store.range("#a", before=50, limit=50)) == list(range(1, 50))  # back to the room's start
    assert seqs(store.range("#a", after=270, limit=20, newest=False)) == list(range(271, 291))  # disk, then cache
    assert seqs(store.range("#a", after=0, limit=1000, newest=False)) == list(range(1, 301))
    disk.close()
    again = Sequencer(SqliteStore(path, retention=500), cache=20)  # after a restart: the same pages
    assert again.size() == 20 and seqs(again.range("#a", before=50, limit=50)) == list(range(1, 50))
    again.store.close()


def test_retention_on_disk_is_kept_by_count_and_reads_stop_there(tmp_path):
    path = tmp_path / "h.sqlite3"
    disk = SqliteStore(path, retention=100)
    store = Sequencer(disk, cache=10)
    for _ in range(3):
        for _ in range(150):
            say(store)
        store.submit()
    assert seqs(store.range("#a", limit=1000, newest=False)) == list(range(351, 451))  # never past retention
    disk.close()  # the close trims what was not trimmed yet
    assert [seq for seq, in sql(path, "SELECT seq FROM messages ORDER BY seq")] == list(range(351, 451))


def test_a_cache_larger_than_the_retention_holds_only_what_the_disk_keeps(tmp_path):
    store = Sequencer(SqliteStore(tmp_path / "h.sqlite3", retention=5), cache=1000)
    for _ in range(20):
        say(store)
    store.submit()
    assert store.cache == 5 and seqs(store.range("#a", limit=100)) == [16, 17, 18, 19, 20]
    store.store.close()


def test_retention_counts_messages_not_numbers_across_a_skip(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = committed(path, 5, limit=10)
    crash(store)  # a new boot: 6..64 skipped
    disk = SqliteStore(path, retention=10)
    again = Sequencer(disk, cache=2)
    for _ in range(7):
        say(again)
    again.submit()
    assert seqs(again.range("#a", limit=100, newest=False)) == [3, 4, 5] + list(range(65, 72))
    disk.close()


def test_a_damaged_row_below_the_cache_is_skipped_by_a_read_and_logged_once(tmp_path, caplog):
    path = tmp_path / "h.sqlite3"
    disk = SqliteStore(path, retention=100)
    store = Sequencer(disk, cache=5)
    for _ in range(30):
        say(store)
    store.submit()
    sql(path, "UPDATE messages SET body = ? WHERE seq = 3", (b"{not json",))
    with caplog.at_level(logging.WARNING, logger="zmqchat.server"):
        assert seqs(store.range("#a", after=0, limit=5, newest=False)) == [1, 2, 4, 5, 6]  # on past it
        assert seqs(store.range("#a", after=0, limit=5, newest=False)) == [1, 2, 4, 5, 6]  # on past it
    assert [r.message for r in caplog.records].count(
        f"history database {path}: 1 damaged rows of '#a' left out of a read (start with --repair to delete them)") == 1
    disk.close()


def test_the_server_flags_keep_disk_and_memory_apart(tmp_path):
    args = build_parser().parse_args(["--history", "100000", "--history-cache", "200"])
    assert (args.history, args.history_cache) == (100000, 200)
    assert build_parser().parse_args([]).history_cache == 1000
