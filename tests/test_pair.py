"""The pair's rules without sockets (zmqchat.server.pair): roles, the active's Replica, the standby's
Follower, and the two joined by an in-memory link under a real ServerCore."""

from __future__ import annotations

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqchat import protocol as p
from zmqchat.server import pair
from zmqchat.server.core import ServerConfig, ServerCore
from zmqchat.server.pair import ACTIVE, STANDBY, STARTING, Follower, PeerError, Replica, Roles
from zmqchat.server.storage import Batch
from zmqchat.server.store import MemoryStore, SqliteStore


def room_seqs(frames_list: list[list[bytes]]) -> list[int]:
    """The seqs of the room messages among publications."""
    seqs = []
    for frames in frames_list:
        _topic, msg = p.decode_server(frames)
        if isinstance(msg, p.RoomMessages):
            seqs += [m.seq for m in msg.messages]
        elif type(msg) is p.RoomMessage:
            seqs.append(msg.seq)
    return seqs


def send(core: ServerCore, msg: p.Message) -> None:
    core.receive(p.encode_client(msg))


def link(replica: Replica, follower: Follower, standby: MemoryStore | SqliteStore) -> None:
    """Move everything in the replica's outbox to the follower, commit it as the loop does, and feed the
    acknowledgement back."""
    while replica.outbox:
        frames = replica.outbox.pop(0)
        kind, header, bodies = pair.decode(frames)
        batch = follower.receive(kind, header, bodies)
        if batch is not None:
            standby.submit(batch)
            if kind == b"synced":
                standby.set_term(follower.term, follower.terms)
                standby.skip(follower.skipped, follower.floor)
            replica.on_ack(pair.decode(follower.ack())[1])  # committed: rows of the catch-up, or a batch


def sync(replica: Replica, follower: Follower, standby, core: ServerCore) -> None:
    """A standby asks, and is caught up step by step until it follows the live stream."""
    info = standby.load(1)
    have = pair.rows_top(info.tops, info.skipped)  # as the loop asks: the rows it holds
    request = follower.sync(info.term, info.position, info.epoch, not any(info.tops.values()), have)
    assert request is not None
    _kind, header, _ = pair.decode(request)
    replica.on_sync(header, core.sequencer.epoch)
    link(replica, follower, standby)
    standby.unskip(have)  # and as the loop prepares: its own guesses above its rows give way to the active's
    if follower.epoch != info.epoch:
        standby.adopt(follower.epoch)
    for _ in range(1000):  # one step a turn of the loop, until the standby follows the live stream
        replica.catch_up(core.producers.rows(), core.sequencer.topic_rows(), core.sequencer.settled())
        link(replica, follower, standby)
        if replica.streaming or not replica.nonce:
            break


@pytest.fixture
def active(clock: FakeClock):
    replica = Replica(MemoryStore(100), clock, timeout=1.0)
    core = ServerCore(ServerConfig(rate=0, work_rate=0, address_rate=0), replica, clock=clock, term=1, role=ACTIVE)
    replica.start_term(1)
    return core, replica


def hello(core: ServerCore, session: str = "s1", name: str = "alice") -> None:
    send(core, p.Hello(session=session, name=name, rooms=["#general"]))
    core.flush()


def say(core: ServerCore, n: int, session: str = "s1", room: str = "#general") -> None:
    send(core, p.Say(session=session, room=room, text=f"m{n}", mid=f"{session}.{n}"))


# -- the active: published only once the standby holds it


def test_alone_the_active_publishes_at_its_own_commit(active):
    core, replica = active
    hello(core)
    say(core, 1)
    assert room_seqs(core.flush()) == [1]
    assert replica.status == "alone"


def test_in_sync_a_batch_waits_for_the_standby_acknowledgement(active, clock):
    core, replica = active
    standby, follower = MemoryStore(100), Follower(clock)
    sync(replica, follower, standby, core)
    assert replica.in_sync and follower.streaming
    hello(core)
    say(core, 1)
    say(core, 2)
    out = core.flush()
    assert room_seqs(out) == []  # committed here, not yet there
    assert all(isinstance(p.decode_server(f)[1], p.ServerHeartbeat) for f in out)
    link(replica, follower, standby)
    assert room_seqs(core.flush()) == [1, 2]
    assert [seq for seq, _ in standby.read("#general", 0, 0, 10, newest=False)] == [1, 2]
    # the term frame of everything the active publishes
    say(core, 3)
    core.flush()
    link(replica, follower, standby)
    assert {frames[-1] for frames in core.flush()} == {b"1"}


def test_a_silent_standby_makes_the_active_run_alone_after_the_timeout(active, clock):
    core, replica = active
    standby, follower = MemoryStore(100), Follower(clock)
    sync(replica, follower, standby, core)
    hello(core)
    say(core, 1)
    assert room_seqs(core.flush()) == []
    replica.outbox.clear()  # lost on the way: the standby died
    clock.advance(0.5)
    replica.tick()
    assert room_seqs(core.flush()) == [] and replica.in_sync
    clock.advance(0.6)
    replica.tick()
    assert not replica.in_sync and replica.status == "alone"
    assert room_seqs(core.flush()) == [1]  # published after the active's own commit
    assert any("running alone" in text for text in replica.notices)
    say(core, 2)
    assert room_seqs(core.flush()) == [2]
    assert replica.outbox == []  # nothing streams to a standby that is not caught up


def test_released_batches_never_go_back_when_the_standby_comes_in_sync(active, clock):
    core, replica = active
    hello(core)
    say(core, 1)
    assert room_seqs(core.flush()) == [1]
    standby, follower = MemoryStore(100), Follower(clock)
    sync(replica, follower, standby, core)
    assert replica.durable() >= 1
    say(core, 2)
    core.flush()
    link(replica, follower, standby)
    assert room_seqs(core.flush()) == [2]


# -- catching up


def test_catch_up_copies_rows_producers_and_topics_then_follows_live(active, clock):
    core, replica = active
    hello(core)
    send(core, p.Join(session="s1", room="#dev"))
    for n in range(1, 1201):  # more than one catch-up message's worth
        say(core, n, room="#dev" if n % 3 == 0 else "#general")
    send(core, p.TopicRequest(session="s1", room="#general", text="the plan"))
    core.flush()
    standby, follower = MemoryStore(1000), Follower(clock)
    sync(replica, follower, standby, core)
    assert follower.streaming
    loaded = standby.load(1000)
    assert loaded.epoch == core.sequencer.epoch
    assert loaded.tops == core.sequencer.committed()
    for room in ("#general", "#dev"):
        assert standby.read(room, 0, 0, 2000, False) == replica.read(room, 0, 0, 2000, False)
    assert [row[:3] for row in loaded.producers] == [row[:3] for row in core.producers.rows()]
    assert loaded.topics["#general"][1] == "the plan"
    assert loaded.position == replica.position
    # live from here: positions follow on
    say(core, 1201)
    core.flush()
    link(replica, follower, standby)
    assert standby.load(1).position == replica.position


def test_a_standby_behind_in_the_same_term_is_caught_up_from_its_tops(active, clock):
    core, replica = active
    standby, follower = MemoryStore(100), Follower(clock)
    hello(core)
    say(core, 1)
    core.flush()
    sync(replica, follower, standby, core)
    say(core, 2)
    core.flush()
    replica.outbox.clear()  # the standby restarts and misses one batch
    follower = Follower(clock)
    sync(replica, follower, standby, core)
    frames = [f for f in replica.outbox]
    assert frames == []
    assert [seq for seq, _ in standby.read("#general", 0, 0, 10, False)] == [1, 2]


def test_prefix_by_term_and_position():
    replica = Replica(MemoryStore(), FakeClock(), 1.0)
    replica.term, replica.position, replica.terms = 3, 40, {1: 1, 2: 11, 3: 31}
    assert replica.prefix(0, 0)
    assert replica.prefix(3, 40) and replica.prefix(3, 35)
    assert not replica.prefix(3, 41)
    assert replica.prefix(2, 30)  # term 2 ended at 30 here
    assert not replica.prefix(2, 33)  # a deposed active of term 2 committed 31..33 nobody acknowledged
    assert replica.prefix(1, 10) and not replica.prefix(1, 11)
    assert not replica.prefix(7, 1)  # a term this history never had


def test_a_deposed_active_is_told_to_start_over(active, clock):
    core, replica = active
    hello(core)
    say(core, 1)
    core.flush()
    replica.start_term(2)  # this one took over at position 2 of ...
    request = pair.encode(b"sync", {"s": "n1", "term": 1, "position": 5, "epoch": core.sequencer.epoch,
                                    "empty": False, "tops": {"#general": 4}})
    replica.on_sync(pair.decode(request)[1], core.sequencer.epoch)
    kind, header, _ = pair.decode(replica.outbox[-1])
    assert kind == b"start" and header["reset"] is True


def test_a_store_of_another_history_is_refused(active, clock):
    core, replica = active
    request = pair.encode(b"sync", {"s": "n1", "term": 0, "position": 0, "epoch": "someone-else",
                                    "empty": False, "tops": {"#general": 4}})
    replica.on_sync(pair.decode(request)[1], core.sequencer.epoch)
    kind, header, _ = pair.decode(replica.outbox[-1])
    assert kind == b"refuse" and "different histories" in header["why"]
    follower = Follower(clock)
    follower.nonce = "n1"
    assert follower.receive(kind, header, []) is None and follower.refused
    assert follower.sync(0, 0, "x", False, {}) is None and not follower.due()  # never asks again by itself


# -- the follower


def test_follower_drops_stale_and_out_of_order_messages(clock):
    follower = Follower(clock)
    request = follower.sync(1, 0, "e", True, {})
    nonce = pair.decode(request)[1]["s"]
    assert follower.receive(b"rows", {"s": "old", "m": []}, []) is None and follower.dropped == 1
    batch = follower.receive(b"synced", {"s": nonce, "p": 4, "m": [], "term": 2, "terms": {"2": 1}}, [])
    assert batch is not None and batch.expire_before == float("inf") and follower.streaming
    assert follower.term == 2 and follower.terms == {2: 1}
    ok = follower.receive(b"batch", {"s": nonce, "p": 5, "m": [["#a", 1, 1.0, "s.1"]]}, [b"{}"])
    assert ok is not None and ok.messages[0][:2] == ("#a", 1)
    assert follower.receive(b"batch", {"s": nonce, "p": 7, "m": []}, []) is None  # 6 went missing
    assert not follower.streaming and follower.due()


@pytest.mark.parametrize("header, bodies", [
    ({"s": "n", "p": 1, "m": [["#a", 1, 1.0]]}, [b"{}"]),  # a short head
    ({"s": "n", "p": 1, "m": [["#a", 1, 1.0, "k"]]}, []),  # heads without bodies
    ({"s": "n", "p": -1, "m": []}, []),
    ({"s": "n", "p": 1, "m": [], "pr": {"x": [1, 2]}}, []),
    ({"s": "n", "p": 1, "m": [], "tp": 5}, []),
    ({"s": "n", "p": 1, "m": "nope"}, []),
])
def test_malformed_batches_raise_peer_error(header, bodies):
    with pytest.raises(PeerError):
        pair.batch_of(header, bodies, 0)


@pytest.mark.parametrize("frames", [[b"x"], [pair.VERSION, b"state", b"not json"], [pair.VERSION, b"state", b"[1]"],
                                    [b"zmqchat/3", b"state", b"{}"]])
def test_malformed_peer_messages_raise_peer_error(frames):
    with pytest.raises(PeerError):
        pair.decode(frames)


def test_peer_state_is_checked():
    with pytest.raises(PeerError):
        pair.peer_state({"role": "king"}, 0.0)
    with pytest.raises(PeerError):
        pair.peer_state({"role": "active", "term": "2"}, 0.0)


def test_merge_keeps_order_and_the_last_producer_state():
    one = Batch(1, [("#a", 1, 1.0, "s.1", b"1")], {"s": ("s", "i", 2, "#a", 1, 1.0)}, position=1)
    two = Batch(2, [("#a", 2, 2.0, "s.2", b"2")], {"s": ("s", "i", 3, "#a", 2, 2.0), "t": None}, position=2)
    merged = pair.merge([one, two], 9)
    assert [m[1] for m in merged.messages] == [1, 2] and merged.position == 2
    assert merged.producers == {"s": ("s", "i", 3, "#a", 2, 2.0), "t": None}


# -- roles


def roles(clock: FakeClock, **kw) -> Roles:
    made = Roles(node=kw.pop("node", "b"), term=kw.pop("term", 0), position=kw.pop("position", 0),
                 empty=kw.pop("empty", True), **kw)
    made.started = made.born = clock()
    return made


def state(clock: FakeClock, role: str, term: int = 0, position: int = 0, empty: bool = True, node: str = "a",
          up: float = 0.0, prefer: int = 0, synced: bool = False) -> pair.PeerState:
    return pair.PeerState(node, role, term, position, "e", empty, prefer, synced, clock(), up)


def test_the_first_server_up_with_an_empty_store_becomes_active(clock):
    first = roles(clock)
    clock.advance(first.silent_for * 2 + 0.1)
    assert first.tick(clock()) == ACTIVE
    first.became(ACTIVE, clock())
    assert first.term == 1


def test_a_backup_never_starts_alone_and_a_full_store_waits_for_its_peer(clock):
    backup = roles(clock, prefer=-1)
    full = roles(clock, empty=False, term=3, position=50)
    clock.advance(10)
    assert backup.tick(clock()) is None
    assert full.tick(clock()) is None
    assert any("waiting for the peer" in text for text in full.notices)
    full.forced = True  # the operator's order
    assert full.tick(clock()) == ACTIVE


def test_a_starting_server_that_hears_an_active_becomes_standby(clock):
    mine = roles(clock, empty=False, term=3, position=99)
    assert mine.on_peer(state(clock, ACTIVE, term=2)) == STANDBY


def test_of_two_starting_servers_the_one_holding_more_wins(clock):
    a = roles(clock, node="a", empty=False, term=2, position=10)
    b = roles(clock, node="b", empty=False, term=2, position=12)
    assert a.on_peer(state(clock, STARTING, term=2, position=12, empty=False, node="b")) is None
    assert b.on_peer(state(clock, STARTING, term=2, position=10, empty=False, node="a")) == ACTIVE
    b.became(ACTIVE, clock())
    assert b.term == 3


def test_of_two_empty_servers_the_first_up_wins_then_the_preferred(clock):
    old = roles(clock, node="a")
    clock.advance(1.5)
    young = roles(clock, node="z")
    assert young.on_peer(state(clock, STARTING, node="a", up=1.5)) is None
    assert old.on_peer(state(clock, STARTING, node="z", up=0.0)) == ACTIVE
    primary = roles(clock, node="a", prefer=1)
    assert primary.on_peer(state(clock, STARTING, node="z", up=100.0)) == ACTIVE


def test_a_standby_takes_over_only_on_silence_a_vote_and_in_sync(clock):
    standby = roles(clock)
    standby.became(STANDBY, clock())
    standby.on_peer(state(clock, ACTIVE, term=1, synced=True))
    standby.in_sync = True
    assert not standby.vote(clock())  # the active still talks on the link
    clock.advance(standby.silent_for + 0.01)
    standby.in_sync = False
    assert not standby.vote(clock())  # silent, but we were not in sync: never by ourselves
    assert any("not in sync" in text for text in standby.notices)
    standby.in_sync = True
    assert standby.vote(clock())
    standby.became(ACTIVE, clock())
    assert standby.term == 2


def test_an_active_that_hears_a_newer_term_steps_down(clock):
    old = roles(clock, term=1)
    old.became(ACTIVE, clock())
    assert old.term == 1 + 0 + 1 - 1 + 1  # became() started term 2 from 1
    assert old.on_peer(state(clock, ACTIVE, term=old.term + 1)) == STANDBY
    assert any("stepping down" in text for text in old.notices)


def test_two_actives_in_one_term_the_one_with_less_steps_down(clock):
    a = roles(clock, node="a", position=5)
    a.role, a.term = ACTIVE, 4
    assert a.on_peer(state(clock, ACTIVE, term=4, position=9, node="b")) == STANDBY
    b = roles(clock, node="b", position=9)
    b.role, b.term = ACTIVE, 4
    assert b.on_peer(state(clock, ACTIVE, term=4, position=5, node="a")) is None


def test_state_message_round_trip(clock):
    mine = roles(clock, node="n1", term=2, position=7, empty=False, prefer=1)
    clock.advance(3)
    kind, header, _ = pair.decode(mine.state("ep", True, clock()))
    got = pair.peer_state(header, clock())
    assert kind == b"state" and (got.node, got.role, got.term, got.position, got.epoch, got.empty, got.prefer,
                                 got.synced, got.up) == ("n1", STARTING, 2, 7, "ep", False, 1, True, 3.0)


def test_sqlite_store_keeps_position_term_and_epoch(tmp_path):
    store = SqliteStore(tmp_path / "h.sqlite3", search=False)
    store.load(10)
    store.adopt("feedface")
    body = p.encode_body(p.RoomMessage(room="#a", seq=1, ts=1.0, sender="al", text="hi", mid="s.1"))
    store.submit(Batch(1, [("#a", 1, 1.0, "s.1", body)], position=5))
    store.set_term(3, {1: 1, 3: 4})
    with pytest.raises(Exception, match="holds messages"):
        store.adopt("other")
    store.close()
    again = SqliteStore(tmp_path / "h.sqlite3", search=False)
    loaded = again.load(10)
    assert (loaded.epoch, loaded.position, loaded.term, loaded.terms) == ("feedface", 5, 3, {1: 1, 3: 4})
    again.close()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                         max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"state", b"sync", b"start", b"refuse", b"rows", b"synced", b"batch", b"ack", b"x"]),
       st.dictionaries(st.sampled_from(["s", "p", "m", "pr", "tp", "x", "term", "terms", "role", "node", "epoch",
                                        "reset", "tops", "up", "prefer"]), json_values, max_size=8),
       st.lists(st.binary(max_size=20), max_size=3))
def test_whatever_the_peer_sends_only_peer_error_comes_out(kind, header, bodies):
    follower = Follower(FakeClock())
    follower.nonce = header.get("s") if isinstance(header.get("s"), str) else "n"
    follower.streaming = kind == b"batch"
    replica = Replica(MemoryStore(), FakeClock(), 1.0)
    for handle in (lambda: follower.receive(kind, header, bodies), lambda: pair.peer_state(header, 0.0),
                   lambda: replica.on_sync(header, "e"), lambda: replica.on_ack(header)):
        try:
            handle()
        except PeerError:
            pass


def test_a_forced_skip_numbers_old_rooms_past_it_and_new_rooms_above_the_floor(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = SqliteStore(path, search=False)
    store.load(10)
    body = p.encode_body(p.RoomMessage(room="#a", seq=1, ts=1.0, sender="al", text="hi", mid="s.1"))
    store.submit(Batch(1, [("#a", 1, 1.0, "s.1", body)]))
    store.skip({"#a": [(2, 1001)]}, 1000)
    store.close()
    core = ServerCore(ServerConfig(rate=0), SqliteStore(path, search=False), clock=FakeClock())
    send(core, p.Hello(session="s1", name="al", rooms=["#a", "#new"]))
    core.flush()
    say(core, 1, room="#a")
    say(core, 2, room="#new")
    assert room_seqs(core.flush()) == [1002, 1001]
    assert core.sequencer.lost("#a", 1, 1002) == [(2, 1001)]
    assert core.sequencer.lost("#new", 0, 1001) == [(1, 1000)]  # never ours: a deposed active may have used them
    core.sequencer.store.close()


def test_the_numbers_an_active_never_gives_out_are_copied_to_its_standby(clock):
    inner = MemoryStore(100)
    inner.skip({"#general": [(1, 50)]}, 500)
    replica = Replica(inner, clock, timeout=1.0)
    core = ServerCore(ServerConfig(rate=0), replica, clock=clock, term=1, role=ACTIVE)
    replica.start_term(1)
    hello(core)
    say(core, 1)
    assert room_seqs(core.flush()) == [51]
    standby, follower = MemoryStore(100), Follower(clock)
    sync(replica, follower, standby, core)
    assert standby.lost("#general", 0, 100) == [(1, 50)] and standby.load(1).floor == 500


def test_a_forced_term_is_at_least_the_wall_clock(clock):
    forced = roles(clock, term=3, empty=False)
    forced.forced = True
    assert forced.tick(clock()) == ACTIVE
    forced.became(ACTIVE, clock(), wall=1_796_000_000.7)
    assert forced.term == 1_796_000_000
    normal = roles(clock, term=3)
    normal.became(ACTIVE, clock())
    assert normal.term == 4


@pytest.mark.parametrize("header", [
    {"s": "n", "p": 1, "m": [], "pr": {"x": ["x", "i", 2**70, "#a", 1, 1.0]}},  # a counter past 2^53
    {"s": "n", "p": 1, "m": [["#a", 1, 2**2000, "k"]]},  # a time no float holds
    {"s": "n", "p": 1, "m": [], "x": 1e308 * 10},
    {"s": "n", "p": 2**60, "m": []},
    {"s": "n", "p": 1, "m": [["no room", 1, 1.0, "k"]]},
])
def test_numbers_and_names_a_store_cannot_keep_are_refused_at_the_door(header):
    bodies = [b"{}"] * len(header.get("m", []))
    with pytest.raises(PeerError):
        pair.batch_of(header, bodies, 0)


def test_a_store_error_of_any_kind_leaves_no_transaction_open(tmp_path):
    store = SqliteStore(tmp_path / "h.sqlite3", search=False)
    store.load(10)
    with pytest.raises(Exception, match="history database"):
        store.submit(Batch(1, producers={"x": ("x", "i", 2**70, "#a", 1, 1.0)}))  # OverflowError from SQLite
    body = p.encode_body(p.RoomMessage(room="#a", seq=1, ts=1.0, sender="al", text="hi", mid="s.1"))
    store.submit(Batch(2, [("#a", 1, 1.0, "s.1", body)]))  # the next one goes in
    assert store.durable() == 2
    store.close()


def test_rows_top_is_below_what_a_store_skipped_at_its_top():
    assert pair.rows_top({"#a": 64, "#b": 9}, {"#a": [(11, 64)], "#b": [(2, 3)]}) == {"#a": 10, "#b": 9}
    assert pair.rows_top({"#a": 64}, {"#a": [(5, 9), (11, 64)]}) == {"#a": 10}


def test_a_standby_whose_machine_rebooted_gets_the_rows_above_its_skipped_numbers(active, clock):
    core, replica = active
    hello(core)
    for n in range(1, 41):
        say(core, n)
    core.flush()
    standby, follower = MemoryStore(100), Follower(clock)
    sync(replica, follower, standby, core)
    replica.outbox.clear()
    # the standby had rows 1..40; a power cut took 11..40 and on restart it skipped what it had reserved
    rows = standby._rooms["#general"]
    while rows and rows[-1][0] > 10:
        rows.pop()
    standby.skip({"#general": [(11, 64)]})
    follower = Follower(clock)
    sync(replica, follower, standby, core)
    assert [seq for seq, _ in standby.read("#general", 0, 0, 100, False)] == list(range(1, 41))
    assert standby.lost("#general", 0, 64) == []  # its own guess is gone: the rows are there


def test_from_the_catch_ups_end_every_batch_waits_for_the_standby(active, clock):
    core, replica = active
    hello(core)
    say(core, 1)
    core.flush()
    follower = Follower(clock)
    request = follower.sync(0, 0, "", True, {})
    replica.on_sync(pair.decode(request)[1], core.sequencer.epoch)
    say(core, 2)  # sequenced, not yet handed to the store: no snapshot may be taken now
    assert not core.sequencer.settled()
    for _ in range(5):
        replica.catch_up(core.producers.rows(), core.sequencer.topic_rows(), core.sequencer.settled())
        for frames in replica.outbox:  # the standby commits the rows (acknowledged), not yet the end
            kind, header, bodies = pair.decode(frames)
            follower.receive(kind, header, bodies)
            if kind == b"rows":
                replica.on_ack(pair.decode(follower.ack())[1])
        replica.outbox.clear()
    assert not replica.streaming  # the snapshot waits for the flush
    assert room_seqs(core.flush()) == [2]  # the catch-up is not done: published alone, as before
    for _ in range(5):  # message 2's row, then the end
        replica.catch_up(core.producers.rows(), core.sequencer.topic_rows(), core.sequencer.settled())
        kind, header, bodies = pair.decode(replica.outbox.pop(0))
        follower.receive(kind, header, bodies)
        if kind == b"synced":
            break
        replica.on_ack(pair.decode(follower.ack())[1])
    assert replica.streaming and kind == b"synced"
    say(core, 3)
    assert room_seqs(core.flush()) == []  # the standby has not acknowledged the end: message 3 waits
    replica.on_ack({"s": replica.nonce, "p": replica.position, "c": 99})
    assert room_seqs(core.flush()) == [3] and replica.in_sync


def test_a_second_forced_takeover_floors_new_rooms_above_every_number_known():
    from zmqchat.server.storage import Loaded

    first = Loaded("e", {"#a": 5}, {}, [], 100)
    ranges, floor = pair.forced_skip(first, 1000)
    assert ranges == {"#a": [(6, 1005)]} and floor == 1005
    # later, forced again: rooms that numbered from the first floor are known; new ones go above all
    again = Loaded("e", {"#a": 1007, "#x": 1003}, {}, [], 100, floor=1005)
    ranges, floor = pair.forced_skip(again, 1000)
    assert ranges == {"#a": [(1008, 2007)], "#x": [(1004, 2003)]} and floor == 2007


def test_the_catch_up_is_paced_by_acknowledgements_and_not_asked_again_while_it_moves(clock):
    replica = Replica(MemoryStore(100_000), clock, timeout=1.0)
    core = ServerCore(ServerConfig(rate=0, work_rate=0, address_rate=0), replica, clock=clock, term=1, role=ACTIVE)
    replica.start_term(1)
    hello(core)
    for n in range(1, 12 * pair.CATCH_UP_ROWS + 1):  # 12 messages' worth of rows
        say(core, n)
    core.flush()
    follower = Follower(clock)
    replica.on_sync(pair.decode(follower.sync(0, 0, "", True, {}))[1], core.sequencer.epoch)
    for _ in range(50):  # nobody acknowledges: at most the window goes out
        replica.catch_up(core.producers.rows(), core.sequencer.topic_rows(), core.sequencer.settled())
    rows = [f for f in replica.outbox if f[1] == b"rows"]
    assert len(rows) == pair.CATCH_UP_WINDOW
    for frames in replica.outbox:  # the standby hears the start and the rows: the catch-up moves
        follower.receive(*pair.decode(frames))
    clock.advance(pair.SYNC_RETRY * 0.9)
    assert not follower.due()  # still moving: asking again would queue the whole store twice
    replica.on_ack(pair.decode(follower.ack())[1])
    replica.outbox.clear()
    replica.catch_up(core.producers.rows(), core.sequencer.topic_rows(), core.sequencer.settled())
    assert [f[1] for f in replica.outbox] == [b"rows"]  # acknowledged: the next step goes
    clock.advance(pair.SYNC_RETRY + 0.1)
    assert follower.due()  # a second without a word: ask again


def test_going_alone_mid_stream_is_told_before_anything_is_published(active, clock):
    core, replica = active
    standby, follower = MemoryStore(100), Follower(clock)
    sync(replica, follower, standby, core)
    hello(core)
    say(core, 1)
    core.flush()
    replica.outbox.clear()  # not acknowledged
    clock.advance(1.5)
    replica.tick()
    assert replica.went_alone and not replica.streaming  # the loop sends a state message now, then flushes
