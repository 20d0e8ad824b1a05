"""Pure server state: presence, rate limiting, history (in memory and SQLite). No sockets, no sleeps."""

from __future__ import annotations

import json
import sqlite3

import pytest
from journal import History

from zmqchat.server.presence import Roster
from zmqchat.server.ratelimit import RateLimiter, TokenBucket
from zmqchat.server.store import MemoryStore

# --------------------------------------------------------------------------------------------------
# presence


@pytest.fixture
def presence() -> Roster:
    return Roster(timeout=3.0)


def test_add_get_owner(presence):
    member = presence.add("s1", "alice", now=10.0)
    assert (member.session, member.name, member.last_seen, member.rooms, member.key) == ("s1", "alice", 10.0,
                                                                                         set(), None)
    assert presence.get("s1") is member
    assert presence.get("s2") is None
    assert presence.owner_of("alice") == "s1"
    assert presence.owner_of("bob") is None
    assert len(presence) == 1
    assert presence.members() == [member]


def test_join_and_part_report_changes(presence):
    alice = presence.add("s1", "alice", 0.0)
    assert presence.join(alice, "#general") is True
    assert presence.join(alice, "#general") is False
    assert presence.join(alice, "#dev") is True
    assert alice.rooms == {"#general", "#dev"}
    assert presence.part(alice, "#dev") is True
    assert presence.part(alice, "#dev") is False
    assert presence.part(alice, "#never") is False
    assert alice.rooms == {"#general"}


def test_names_in_and_room_counts(presence):
    carol = presence.add("s3", "carol", 0.0)
    alice = presence.add("s1", "alice", 0.0)
    bob = presence.add("s2", "bob", 0.0)
    for member in (carol, alice, bob):
        presence.join(member, "#general")
    presence.join(bob, "#dev")
    assert presence.names_in("#general") == ["alice", "bob", "carol"]
    assert presence.names_in("#dev") == ["bob"]
    assert presence.names_in("#nowhere") == []
    assert presence.room_counts() == {"#dev": 1, "#general": 3}
    assert list(presence.room_counts()) == ["#dev", "#general"]
    presence.part(bob, "#dev")
    assert presence.room_counts() == {"#general": 3}  # an empty room disappears
    assert presence.names_in("#dev") == []


def test_remove_frees_name_and_rooms(presence):
    alice = presence.add("s1", "alice", 0.0)
    bob = presence.add("s2", "bob", 0.0)
    presence.join(alice, "#general")
    presence.join(alice, "#dev")
    presence.join(bob, "#general")
    gone = presence.remove("s1")
    assert gone is alice
    assert gone.rooms == {"#general", "#dev"}  # kept so the caller can announce the leave per room
    assert presence.get("s1") is None
    assert presence.owner_of("alice") is None
    assert presence.room_counts() == {"#general": 1}
    assert presence.names_in("#general") == ["bob"]
    assert presence.remove("s1") is None
    assert len(presence) == 1


def test_remove_keeps_a_name_now_owned_by_another_session(presence):
    presence.add("old", "alice", 0.0)
    presence.add("new", "alice", 1.0)
    presence.remove("old")
    assert presence.owner_of("alice") == "new"


def test_touch(presence):
    presence.add("s1", "alice", 0.0)
    assert presence.touch("s1", 2.5).last_seen == 2.5
    assert presence.touch("nobody", 2.5) is None


def test_expire_after_timeout_of_silence(presence):
    alice = presence.add("s1", "alice", 0.0)
    presence.join(alice, "#general")
    presence.add("s2", "bob", 0.0)
    presence.touch("s2", 2.0)
    assert presence.expire(3.0) == []  # exactly the timeout: still alive
    expired = presence.expire(3.5)
    assert [m.name for m in expired] == ["alice"]
    assert expired[0].rooms == {"#general"}
    assert presence.owner_of("alice") is None
    assert presence.room_counts() == {}
    assert presence.expire(4.9) == []
    assert [m.name for m in presence.expire(5.1)] == ["bob"]
    assert len(presence) == 0


def test_expire_many_at_once(presence):
    for i in range(5):
        presence.add(f"s{i}", f"user{i}", float(i))
    assert sorted(m.name for m in presence.expire(6.5)) == ["user0", "user1", "user2", "user3"]
    assert [m.name for m in presence.members()] == ["user4"]


def test_a_mass_expiry_is_spread_by_the_announcements_it_makes(presence):
    for i in range(4):
        member = presence.add(f"s{i}", f"user{i}", 0.0)
        for k in range(99):  # 1 + 99 rooms: each leaving is announced in 99 rooms
            presence.join(member, f"#r{i}-{k}")
    assert [m.name for m in presence.expire(10.0, most=250)] == ["user0", "user1"]
    assert [m.name for m in presence.expire(10.0, most=50)] == ["user2"]  # the first always goes
    assert [m.name for m in presence.expire(10.0, most=250)] == ["user3"]


# --------------------------------------------------------------------------------------------------
# rate limiting


def test_bucket_starts_full_then_waits():
    bucket = TokenBucket(rate=2.0, burst=3.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.0) == pytest.approx(0.5)  # a refusal costs nothing


def test_bucket_refills_at_rate():
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token there, half to go
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_bucket_never_holds_more_than_burst():
    bucket = TokenBucket(rate=10.0, burst=2.0, now=0.0)
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) == pytest.approx(0.1)


def test_limiter_per_key():
    limiter = RateLimiter(rate=1.0, burst=2.0)
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) == pytest.approx(1.0)
    assert limiter.check("b", 0.0) == 0.0  # another sender is unaffected
    assert limiter.check("a", 1.0) == 0.0


def test_limiter_forget_gives_a_fresh_bucket():
    limiter = RateLimiter(rate=1.0, burst=1.0)
    limiter.check("a", 0.0)
    assert limiter.check("a", 0.0) > 0
    limiter.forget("a")
    limiter.forget("never-seen")
    assert limiter.check("a", 0.0) == 0.0


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_limiter_disabled(rate):
    limiter = RateLimiter(rate=rate, burst=1.0)
    assert all(limiter.check("a", 0.0) == 0.0 for _ in range(1000))


def test_limiter_burst_is_at_least_one():
    limiter = RateLimiter(rate=1.0, burst=0.0)
    assert limiter.burst == 1.0
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# history


def body(room: str, seq: int, text: str) -> bytes:
    """A stored body: like the server's, a JSON object carrying its room and seq (checked when loaded)."""
    return json.dumps({"room": room, "seq": seq, "text": text}, separators=(",", ":")).encode()


def body_of(room: str, text: str):
    return lambda seq: body(room, seq, text)


def fill(history: History, room: str, count: int, ts: float = 1.0, prefix: str = "k") -> list[int]:
    return [history.append(room, ts + i, f"{prefix}{room}{i}", body_of(room, str(i)))[0] for i in range(count)]


def seqs(rows: list[tuple[int, bytes]]) -> list[int]:
    return [seq for seq, _body in rows]


def test_sequence_per_room():
    history = History(limit=100)
    assert history.last_seq("#a") == 0
    assert history.append("#a", 1.0, "k1", body_of("#a", "x")) == (1, body("#a", 1, "x"))
    assert history.append("#a", 2.0, "k2", body_of("#a", "y")) == (2, body("#a", 2, "y"))
    assert history.append("#b", 3.0, "k3", body_of("#b", "z")) == (1, body("#b", 1, "z"))
    assert (history.last_seq("#a"), history.last_seq("#b"), history.last_seq("#c")) == (2, 1, 0)
    assert history.rooms() == ["#a", "#b"]
    assert history.size() == 3


def test_make_body_gets_the_sequence_number():
    history = History(limit=10)
    given = []
    history.append("#a", 0.0, "k", lambda seq: given.append(seq) or b"b")
    history.append("#a", 0.0, "k2", lambda seq: given.append(seq) or b"b")
    assert given == [1, 2]


@pytest.fixture
def ten() -> History:
    history = History(limit=100)
    fill(history, "#a", 10)
    return history


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, list(range(1, 11))),
    ({"after": 3}, list(range(4, 11))),
    ({"before": 5}, [1, 2, 3, 4]),
    ({"after": 3, "before": 8}, [4, 5, 6, 7]),
    ({"limit": 2}, [9, 10]),  # the newest when more exist
    ({"after": 3, "before": 8, "limit": 2}, [6, 7]),
    ({"after": 3, "limit": 2, "newest": False}, [4, 5]),  # gap filling: from the start of the gap
    ({"after": 3, "before": 8, "limit": 2, "newest": False}, [4, 5]),
    ({"after": 3, "before": 8, "limit": 50, "newest": False}, [4, 5, 6, 7]),
    ({"after": -5}, list(range(1, 11))),
    ({"before": 99}, list(range(1, 11))),
    ({"before": -1}, list(range(1, 11))),  # no upper bound
    ({"after": 9}, [10]),
    ({"after": 10}, []),
    ({"after": 50}, []),
    ({"before": 1}, []),
    ({"after": 4, "before": 5}, []),
    ({"after": 5, "before": 3}, []),
    ({"limit": 0}, []),
    ({"limit": -3}, []),
])
def test_range(ten, kwargs, expected):
    rows = ten.range("#a", **kwargs)
    assert seqs(rows) == expected
    assert [stored for _seq, stored in rows] == [body("#a", s, str(s - 1)) for s in expected]


def test_range_of_unknown_room(ten):
    assert ten.range("#b") == []


def test_trims_to_limit_in_memory():
    history = History(limit=5)
    fill(history, "#a", 12)
    fill(history, "#b", 2)
    assert seqs(history.range("#a")) == [8, 9, 10, 11, 12]
    assert seqs(history.range("#a", after=2)) == [8, 9, 10, 11, 12]  # trimmed ones are simply gone
    assert seqs(history.range("#a", before=10)) == [8, 9]
    assert seqs(history.range("#a", after=9, limit=1, newest=False)) == [10]
    assert history.last_seq("#a") == 12
    assert history.size() == 7


def test_limit_is_at_least_one():
    history = History(limit=0)
    fill(history, "#a", 3)
    assert seqs(history.range("#a")) == [3]


def test_in_memory_commit_and_close_are_harmless():
    history = History(limit=5)
    fill(history, "#a", 2)
    history.commit()
    history.close()
    assert isinstance(history.store, MemoryStore)
    assert seqs(history.range("#a")) == [1, 2]


def db_rows(path) -> list[tuple[str, int]]:
    with sqlite3.connect(str(path)) as db:
        return db.execute("SELECT room, seq FROM messages ORDER BY room, seq").fetchall()


def test_persists_across_close_and_reopen(tmp_path):
    path = tmp_path / "sub" / "history.db"  # the parent folder is created
    history = History(limit=100, path=path)
    fill(history, "#a", 3)
    history.append("#b", 50.0, "bob\x1fm1", body_of("#b", "hello"))
    history.commit()
    bodies_a = history.range("#a")
    history.close()

    again = History(limit=100, path=path)
    assert again.rooms() == ["#a", "#b"]
    assert (again.last_seq("#a"), again.last_seq("#b")) == (3, 1)
    assert again.range("#a") == bodies_a
    assert again.range("#b") == [(1, body("#b", 1, "hello"))]
    # the sequence continues, never reused
    assert again.append("#a", 99.0, "new", body_of("#a", "n"))[0] == 4
    again.close()
    assert History(limit=100, path=path).last_seq("#a") == 4


def test_appends_reach_disk_only_on_commit(tmp_path):
    path = tmp_path / "h.db"
    history = History(limit=100, path=path)
    fill(history, "#a", 3)
    assert db_rows(path) == []
    history.commit()
    assert db_rows(path) == [("#a", 1), ("#a", 2), ("#a", 3)]
    history.commit()  # nothing pending: no change
    fill(history, "#b", 1)
    assert db_rows(path) == [("#a", 1), ("#a", 2), ("#a", 3)]
    history.close()


def test_close_commits_what_is_pending(tmp_path):
    path = tmp_path / "h.db"
    history = History(limit=100, path=path)
    fill(history, "#a", 2)
    history.close()
    assert db_rows(path) == [("#a", 1), ("#a", 2)]
    assert History(limit=100, path=path).last_seq("#a") == 2


def test_disk_trimmed_in_batches_and_on_close(tmp_path):
    path = tmp_path / "h.db"
    history = History(limit=5, path=path)
    fill(history, "#a", 10)
    history.commit()
    assert len(db_rows(path)) == 10  # a small batch is not worth a DELETE yet
    fill(history, "#a", 100, prefix="more")
    history.commit()
    assert db_rows(path) == [("#a", s) for s in range(106, 111)]
    fill(history, "#a", 3, prefix="tail")
    history.close()
    assert db_rows(path) == [("#a", s) for s in range(109, 114)]
    again = History(limit=5, path=path)
    assert seqs(again.range("#a")) == [109, 110, 111, 112, 113]
    assert again.last_seq("#a") == 113


def test_reopen_with_a_smaller_limit(tmp_path):
    path = tmp_path / "h.db"
    history = History(limit=100, path=path)
    fill(history, "#a", 10)
    history.close()
    small = History(limit=3, path=path)
    assert seqs(small.range("#a")) == [8, 9, 10]
    assert small.last_seq("#a") == 10
    assert small.append("#a", 0.0, "x", body_of("#a", "x"))[0] == 11
    small.close()


def test_a_failed_commit_keeps_the_batch_for_the_next_one(tmp_path, monkeypatch):
    import sqlite3

    from zmqchat.server import store as history_module
    from zmqchat.server.store import StoreError

    monkeypatch.setattr(history_module, "BUSY_TIMEOUT", 0.05)
    path = tmp_path / "h.sqlite3"
    store = History(limit=10, path=path)
    store.append("#g", 1.0, "alice\x1fm1", body_of("#g", "one"))
    locker = sqlite3.connect(str(path), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    with pytest.raises(StoreError, match="locked"):
        store.commit()
    locker.execute("ROLLBACK")
    locker.close()
    store.commit()
    store.close()
    reopened = History(limit=10, path=path)
    assert reopened.range("#g") == [(1, body("#g", 1, "one"))]
    reopened.close()


def test_committed_seq_lags_until_the_commit(tmp_path):
    store = History(limit=10, path=tmp_path / "h.sqlite3")
    store.append("#g", 1.0, "k1", body_of("#g", "one"))
    assert (store.last_seq("#g"), store.committed_seq("#g")) == (1, 0)
    store.commit()
    assert store.committed_seq("#g") == 1
    store.close()
    assert History(limit=10).committed_seq("#g") == 0  # in memory: committed is last
