"""Budgets against crowds, without sockets: the work budget and its priorities, busy replies, replies built
once per tick, the per-session queue cap, per-address intake and new-session budgets, and how the client
takes "busy". Time is a FakeClock."""

from __future__ import annotations

import pytest
from conftest import FakeClock
from journal import shut
from test_core import hello, make_core, published, say, send
from test_session import beat, events, make_session, sent, welcome

from zmqchat import events as ev
from zmqchat import protocol as p
from zmqchat.client.session import BUSY_GIVE_UP
from zmqchat.server.core import ServerConfig, subscriber_queue
from zmqchat.server.ratelimit import BROWSE, DELIVERY, RateLimiter, TokenBucket, WorkBudget
from zmqchat.server.store import SqliteStore

# --------------------------------------------------------------------------------------------------
# the pieces


def test_browsing_stops_at_the_reserve_and_delivery_may_spend_it():
    budget = WorkBudget(rate=100.0, burst=100.0, now=0.0, reserve=0.5)
    assert budget.take(0.0, 50, BROWSE) == 0.0
    assert budget.take(0.0, 1, BROWSE) == pytest.approx(0.01)  # the rest is delivery's
    assert budget.take(0.0, 50, DELIVERY) == 0.0
    assert budget.take(0.0, 1, DELIVERY) == pytest.approx(0.01)
    assert budget.take(0.5, 50, DELIVERY) == 0.0  # refilled at its rate
    budget.refund(30)
    assert budget.available(0.5) == pytest.approx(30)


def test_a_request_dearer_than_the_budget_is_still_possible_when_it_is_full():
    budget = WorkBudget(rate=10.0, burst=20.0, now=0.0)
    assert (budget.take(0.0, 1000, BROWSE), budget.charged) == (0.0, 10)  # what browsing may hold
    assert budget.take(0.0, 1000, BROWSE) > 0 and budget.take(0.0, 1000, DELIVERY) > 0  # not while it is not full
    assert (budget.take(1.0, 1000, DELIVERY), budget.charged) == (0.0, 20)
    assert budget.take(1.0, 1, DELIVERY) > 0
    assert WorkBudget(rate=0.0, burst=0.0, now=0.0).take(0.0, 10**9, BROWSE) == 0.0  # 0: unlimited


def test_an_exempt_key_is_never_limited():
    limiter = RateLimiter(rate=1.0, burst=1.0, exempt=frozenset({"gateway"}))
    assert [limiter.check("gateway", 0.0) for _ in range(100)] == [0.0] * 100
    assert limiter.check("x", 0.0) == 0.0 and limiter.check("x", 0.0) > 0


def test_the_pub_queue_holds_the_byte_budget_of_the_largest_publications():
    assert subscriber_queue(64 * 1024 * 1024, 64 * 1024) == 1016
    assert subscriber_queue(64 * 1024 * 1024, 4096) == 14563
    assert subscriber_queue(1, 64 * 1024) == 100  # never below the floor
    assert [ServerConfig.reply_limit(hwm) for hwm in (1016, 14563, 100, 2)] == [254, 1000, 25, 1]


def test_a_cached_reply_takes_the_askers_rid():
    body = p.encode_body(p.RoomsReply(rooms={"#a": 2}))
    assert p.with_rid(body, "r9") == p.encode_body(p.RoomsReply(rooms={"#a": 2}, rid="r9"))
    with pytest.raises(ValueError):
        p.with_rid(p.encode_body(p.RoomsReply(rooms={}, rid="x")), "r9")


# --------------------------------------------------------------------------------------------------
# the server: a crowd within its buckets still meets one budget


def crowd(core, n: int, rooms=("#general",), prefix: str = "c") -> list[str]:
    sessions = [f"{prefix}{i}" for i in range(n)]
    for s in sessions:
        hello(core, s, f"u{s}", rooms)
    return sessions


def replies(out, cls=None):
    return [m for _t, m in out if cls is None or type(m) is cls]


def test_a_crowd_of_browsers_shares_one_budget_and_hears_busy_with_its_rid(clock):
    core = make_core(clock, work_rate=100.0)  # 20 units held, 10 of them for browsing
    sessions = crowd(core, 30)
    clock.advance(1.0)
    before = core.stats["busy"]  # some of the crowd's own replays were put off too (20 units for 30)
    for s in sessions:
        send(core, p.RoomsRequest(session=s, rid=f"r-{s}"))
    out = published(core)
    answered, busy = replies(out, p.RoomsReply), replies(out, p.ErrorReply)
    assert len(answered) == 10 and len(busy) == 20
    assert {m.code for m in busy} == {p.ERR_BUSY}
    assert {m.rid for m in busy} == {f"r-c{i}" for i in range(10, 30)}  # each told on its own request
    assert all(0.05 <= m.retry_after <= 0.05 + 0.25 + 0.1 for m in busy)
    assert len({m.retry_after for m in busy}) > 5  # spread, so they do not all come back at once
    assert core.stats["busy"] - before == 20
    clock.advance(0.1)
    core.tick()
    send(core, p.RoomsRequest(session="c29", rid="again"))
    assert replies(published(core), p.RoomsReply)[0].rid == "again"


def test_gap_fills_are_served_while_browsing_is_told_busy(clock):
    core = make_core(clock, work_rate=100.0, max_history_reply=10)
    sessions = crowd(core, 2)
    for n in range(1, 6):
        say(core, "c0", f"m{n}", n)
    published(core)
    clock.advance(1.0)
    for _ in range(10):  # browsing spends down to the reserve
        send(core, p.StatsRequest(session="c1"))
    published(core)
    send(core, p.HistoryRequest(session="c1", room="#general", after=0, before=0, limit=5))  # a look: browse
    assert replies(published(core), p.ErrorReply)[0].code == p.ERR_BUSY
    send(core, p.HistoryRequest(session="c1", room="#general", after=2, before=6, limit=3))  # a gap: delivery
    out = published(core)
    assert [m.seq for m in replies(out, p.HistoryMessage)] == [3, 4, 5]
    assert sessions and not replies(out, p.ErrorReply)


def test_a_reply_many_ask_for_is_built_once_per_tick(clock, monkeypatch):
    core = make_core(clock)
    sessions = crowd(core, 5)
    built = []
    real = core.presence.room_counts
    monkeypatch.setattr(core.presence, "room_counts", lambda: built.append(1) or real())
    for s in sessions:
        send(core, p.RoomsRequest(session=s, rid=f"q{s}"))
    out = replies(published(core), p.RoomsReply)
    assert len(built) == 1 and [m.rid for m in out] == [f"q{s}" for s in sessions]
    assert all(m.rooms == {"#general": 5} for m in out)
    core.tick()  # a new tick: built again, so no answer is older than one tick
    send(core, p.RoomsRequest(session="c0"))
    published(core)
    assert len(built) == 2


def test_one_session_is_never_queued_more_than_two_full_replies_in_a_tick(clock):
    core = make_core(clock, max_history_reply=10)
    crowd(core, 1)
    for n in range(1, 41):
        say(core, "c0", f"m{n}", n)
    published(core)
    core.tick()
    for after in (0, 10, 20):
        send(core, p.HistoryRequest(session="c0", room="#general", after=after, before=0, limit=10, rid=f"h{after}"))
    out = published(core)
    assert len(replies(out, p.HistoryMessage)) == 20  # two replies of 10: far under the PUB queue (4 x 10)
    (busy,) = replies(out, p.ErrorReply)
    assert (busy.code, busy.rid) == (p.ERR_BUSY, "h20")
    core.tick()
    send(core, p.HistoryRequest(session="c0", room="#general", after=20, before=0, limit=10, rid="h20"))
    assert len(replies(published(core), p.HistoryMessage)) == 10


def fill(core, clock, rooms, n: int = 5) -> None:
    """``n`` messages in each of ``rooms``, from a session of its own; then a second for the budget to refill."""
    hello(core, "filler", "filler", rooms)
    for k, room in enumerate(r for r in rooms for _ in range(n)):
        say(core, "filler", "x", k + 1, room=room)
    published(core)
    clock.advance(1.0)
    core.tick()


def test_a_hello_replays_what_the_budget_allows_and_says_busy_for_the_rest(clock):
    core = make_core(clock, work_rate=100.0, backlog=5)  # a room's replay costs 6 of 20 units
    rooms = [f"#r{i}" for i in range(6)]
    fill(core, clock, rooms)
    out = replies(hello(core, "s1", "alice", rooms))
    ends = [m.room for m in out if isinstance(m, p.HistoryEnd)]
    (busy,) = [m for m in out if isinstance(m, p.ErrorReply)]
    assert ends == rooms[:3] and busy.code == p.ERR_BUSY and busy.rid == ""
    assert core.presence.get("s1").rooms == set(rooms)  # in every room; the client asks for the rest
    clock.advance(1.0)
    send(core, p.Join(session="s1", room="#r5", rid="j5"))
    assert [m.room for m in replies(published(core), p.HistoryEnd)] == ["#r5"]


def test_a_join_over_budget_enters_the_room_and_says_busy(clock):
    core = make_core(clock, work_rate=10.0, backlog=5)  # 2 units: less than one replay
    crowd(core, 1)
    fill(core, clock, ["#dev", "#ops"])
    send(core, p.Join(session="c0", room="#dev", rid="j1"))  # the first one fits: the bucket is full
    assert replies(published(core), p.HistoryEnd)
    send(core, p.Join(session="c0", room="#ops", rid="j2"))
    out = replies(published(core))
    assert [(type(m), getattr(m, "code", ""), m.rid) for m in out if not isinstance(m, p.PresenceEvent)] == [
        (p.ErrorReply, p.ERR_BUSY, "j2")]
    assert "#ops" in core.presence.get("c0").rooms


def test_a_new_session_costs_in_proportion_to_its_rooms(clock):
    core = make_core(clock)
    core._new_sessions = TokenBucket(rate=1.0, burst=65.0, now=clock())  # one hello in 256 rooms
    many = [f"#r{i}" for i in range(256)]
    assert type(hello(core, "big", "big", many)[0][1]) is p.Welcome
    refused = hello(core, "small", "small")[0][1]
    assert (refused.code, refused.retry_after) == (p.ERR_RATE_LIMITED, pytest.approx(1.25))
    clock.advance(1.25)
    assert type(hello(core, "small", "small")[0][1]) is p.Welcome


def test_new_sessions_are_limited_per_address_and_a_trusted_one_is_not(clock):
    core = make_core(clock, trusted=frozenset({"10.0.0.9"}))
    welcomed = {"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.9": 0}
    for address in welcomed:
        for i in range(300):
            core.receive(p.encode_client(p.Hello(session=f"x{i}{address[-1]}", name=f"n{i}a{address[-1]}",
                                                 rooms=["#general"])), address=address)
            welcomed[address] += sum(type(m) is p.Welcome for m in replies(published(core)))
    assert welcomed == {"10.0.0.1": 200, "10.0.0.2": 200, "10.0.0.9": 300}  # 250 tokens, 1.25 a hello


def test_an_address_beyond_its_rate_is_dropped_unread(clock):
    core = make_core(clock, address_rate=10.0, trusted=frozenset({"10.0.0.9"}))  # 20 at once
    for address in ("10.0.0.1", "10.0.0.9"):
        for _ in range(30):
            core.receive([b"garbage"], address=address)
    assert core.stats["shed"] == 10 and core.stats["rejected"] == 50  # 20 + 30 parsed, and refused
    core.receive([b"garbage"], key="K" * 40, address="10.0.0.1")  # under CURVE the address still counts
    assert core.stats["shed"] == 11
    for i in range(30):  # and so does the key, from wherever it comes
        core.receive([b"garbage"], key="K" * 40, address=f"10.1.0.{i}")
    assert core.stats["shed"] == 21
    for i in range(30):  # an IPv6 host counts as its /64
        core.receive([b"garbage"], address=f"2001:db8:0:1::{i + 1:x}")
    assert core.stats["shed"] == 31
    clock.advance(1.0)
    core.receive([b"garbage"], address="10.0.0.1")
    assert core.stats["shed"] == 31


def test_a_flooder_hears_one_refusal_per_wait(clock):
    core = make_core(clock, rate=1.0, burst=1.0)
    crowd(core, 1)
    say(core, "c0", "one", 1)
    say(core, "c0", "two", 2)
    (refusal,) = replies(published(core), p.ErrorReply)
    assert refusal.code == p.ERR_RATE_LIMITED and refusal.retry_after == pytest.approx(1.0)
    for _ in range(50):
        say(core, "c0", "two", 2)  # the held one again, too soon
        say(core, "c0", "three", 3)  # and later ones
    assert published(core) == [] and core.stats["throttled"] == 101
    clock.advance(1.0)
    say(core, "c0", "two", 2)
    assert [m.text for m in replies(published(core), p.RoomMessage)] == ["two"]


def test_made_up_sessions_hear_unknown_session_at_a_bounded_rate(clock):
    core = make_core(clock)
    for i in range(2000):
        send(core, p.Ping(session=f"ghost{i}"))
    assert len(published(core)) == 500


# --------------------------------------------------------------------------------------------------
# the client takes "busy" quietly


@pytest.fixture
def connected(clock: FakeClock):
    session = make_session(clock)
    session.start()
    welcome(session)
    session.receive(p.encode_server(session.session_topic, p.HistoryEnd(room="#general", after=0, upto=0, count=0,
                                                                        newest=0)))
    sent(session)
    events(session)
    return session


def busy(session, rid: str, retry: float = 0.5) -> None:
    session.receive(p.encode_server(session.session_topic, p.ErrorReply(code=p.ERR_BUSY, message="server busy",
                                                                        retry_after=retry, rid=rid)))


def test_a_busy_request_is_asked_again_after_the_wait_without_a_word(connected, clock):
    connected.who("#general")
    (request,) = sent(connected, keep_rid=True)
    busy(connected, request.rid)
    clock.advance(0.4)
    connected.tick()
    assert [m for m in sent(connected, keep_rid=True) if not isinstance(m, p.Ping)] == []
    clock.advance(0.2)
    connected.tick()
    assert [m for m in sent(connected, keep_rid=True) if not isinstance(m, p.Ping)] == [request]
    assert events(connected) == []
    connected.receive(p.encode_server(connected.session_topic, p.WhoReply(rooms={"#general": ["alice"]},
                                                                          rid=request.rid)))
    assert events(connected) == [ev.Who({"#general": ["alice"]})]


def test_a_request_busy_for_too_long_is_reported(connected, clock):
    connected.stats()
    (request,) = sent(connected, keep_rid=True)
    clock.advance(BUSY_GIVE_UP)
    busy(connected, request.rid)
    (error,) = events(connected)
    assert isinstance(error, ev.Error) and error.code == p.ERR_BUSY and not error.fatal


def test_a_join_told_busy_is_asked_again_after_the_wait(connected, clock):
    connected.join("#dev")
    (join,) = sent(connected, keep_rid=True)
    busy(connected, join.rid, retry=1.0)
    clock.advance(1.05)
    connected.tick()
    again = [m for m in sent(connected) if isinstance(m, p.Join)]
    assert [m.room for m in again] == ["#dev"] and events(connected) == []


def test_the_client_survives_what_a_busy_server_says_end_to_end(clock):
    """The reference client and the real core, wire to wire: a busy who is answered in the end."""
    core = make_core(clock, work_rate=10.0)  # 2 units: one who in reach at a time
    session = make_session(clock)
    session.start()

    def pump():
        for frames in session.outgoing:
            core.receive(frames)
        session.outgoing.clear()
        for frames in core.flush():
            topic = frames[0]
            if topic in (session.session_topic, p.ALL_TOPIC) or topic.startswith(p.ROOM_PREFIX):
                session.receive(frames)

    pump()
    assert session.connected
    for _ in range(3):
        session.who("#general")
    pump()
    got = [e for e in events(session) if isinstance(e, ev.Who)]
    for _ in range(40):
        clock.advance(0.1)
        core.tick()
        session.tick()
        pump()
        got += [e for e in events(session) if isinstance(e, (ev.Who, ev.Error))]
    assert len(got) == 3 and all(isinstance(e, ev.Who) for e in got)
    assert core.stats["busy"] >= 1


def test_budgets_hold_with_a_persistent_history(tmp_path, clock):
    """The same refusal with the SQLite store behind the core (its reads are what the budget prices)."""
    from zmqchat.server.core import ServerCore

    core = ServerCore(ServerConfig(work_rate=10.0), SqliteStore(tmp_path / "h.sqlite3", 100), clock=clock)
    crowd(core, 2)
    fill(core, clock, ["#general"])
    send(core, p.HistoryRequest(session="c0", room="#general", after=0, before=0, limit=50, rid="a"))
    send(core, p.HistoryRequest(session="c1", room="#general", after=0, before=0, limit=50, rid="b"))
    out = published(core)
    assert [m.rid for m in replies(out, p.HistoryEnd)] == ["a"]
    assert [(m.code, m.rid) for m in replies(out, p.ErrorReply)] == [(p.ERR_BUSY, "b")]
    shut(core)


def test_a_crowd_from_one_address_spends_a_tenth_of_the_budget_whatever_it_claims(clock):
    """Twelve sessions of one address asking for catch-up joins (delivery) leave the rest to others."""
    core = make_core(clock, work_rate=10_000.0, rate=0)  # 2000 units held; a source holds 200 of its 1000/s
    fill(core, clock, ["#big"], n=200)
    for i in range(12):
        core.receive(p.encode_client(p.Hello(session=f"m{i}", name=f"m{i}", rooms=[])), address="10.6.6.6")
    core.receive(p.encode_client(p.Hello(session="ok", name="ok", rooms=[])), address="10.0.0.1")
    published(core)
    clock.advance(1.0)
    served = {"10.6.6.6": 0, "10.0.0.1": 0}
    for _ in range(10):
        for i in range(12):
            core.receive(p.encode_client(p.Join(session=f"m{i}", room="#big", last_seq=0)), address="10.6.6.6")
        core.receive(p.encode_client(p.Join(session="ok", room="#big", last_seq=0)), address="10.0.0.1")
        for topic, msg in (p.decode_server(f) for f in core.flush()):
            if isinstance(msg, p.HistoryEnd):
                served["10.0.0.1" if topic == p.session_topic("ok") else "10.6.6.6"] += 1
        core.tick()
        clock.advance(0.25)
    assert served["10.0.0.1"] == 10  # every time
    assert served["10.6.6.6"] <= 13  # of 120: its 1000 units a second buy one 201-unit replay per round


def test_a_gap_fill_for_a_room_one_is_not_in_is_browsing(clock):
    core = make_core(clock, work_rate=100.0)  # 20 units, 10 of them for browsing
    crowd(core, 1)
    fill(core, clock, ["#general", "#other"])
    for _ in range(10):
        send(core, p.StatsRequest(session="c0"))
    published(core)
    send(core, p.HistoryRequest(session="c0", room="#other", after=1, before=6, limit=4, rid="x"))
    assert [(m.code, m.rid) for m in replies(published(core), p.ErrorReply)] == [(p.ERR_BUSY, "x")]
    send(core, p.HistoryRequest(session="c0", room="#general", after=1, before=6, limit=4, rid="y"))
    assert [m.rid for m in replies(published(core), p.HistoryEnd)] == ["y"]


def test_a_catch_up_join_costs_like_the_history_it_asks_for(clock):
    core = make_core(clock, rate=1.0, burst=10.0)
    crowd(core, 1)
    clock.advance(10.0)
    send(core, p.Join(session="c0", room="#a", last_seq=0, rid="j1"))  # 6 tokens
    send(core, p.Join(session="c0", room="#b", last_seq=0, rid="j2"))  # 4 left: refused
    send(core, p.Join(session="c0", room="#c", rid="j3"))  # a plain join: 1
    out = replies(published(core))
    assert [m.rid for m in out if isinstance(m, p.HistoryEnd)] == ["j1", "j3"]
    assert [(m.code, m.rid) for m in out if isinstance(m, p.ErrorReply)] == [(p.ERR_RATE_LIMITED, "j2")]


def test_strangers_cannot_spend_the_answers_a_remembered_member_gets_after_a_restart(clock, tmp_path):
    core = make_core(clock, store=SqliteStore(tmp_path / "h.sqlite3", 100))
    hello(core, "real", "alice")
    say(core, "real", "hi", 1)
    published(core)
    shut(core)
    # the same store after a restart: alice's counters are remembered
    restarted = make_core(clock, store=SqliteStore(tmp_path / "h.sqlite3", 100))
    for i in range(2000):  # made-up sessions from many addresses use up the total
        restarted.receive(p.encode_client(p.Ping(session=f"ghost{i}")), address=f"10.9.{i // 200}.{i % 200}")
    assert len(published(restarted)) == 500
    restarted.receive(p.encode_client(p.Ping(session="real")), address="10.0.0.1")
    assert [m.code for m in replies(published(restarted), p.ErrorReply)] == [p.ERR_UNKNOWN_SESSION]
    for i in range(100):  # one address gets 40 at once
        restarted.receive(p.encode_client(p.Ping(session=f"one{i}")), address="10.8.0.1")
    clock.advance(1.0)
    restarted.tick()
    for i in range(100):
        restarted.receive(p.encode_client(p.Ping(session=f"two{i}")), address="10.8.0.1")
    assert len(replies(published(restarted), p.ErrorReply)) == 20  # its own 20 a second, though the total refilled
    shut(restarted)


def test_who_of_too_many_names_is_refused_and_who_changes_with_a_join_in_the_same_tick(clock):
    core = make_core(clock)
    crowd(core, 2)
    send(core, p.WhoRequest(session="c0", room="#general", rid="w1"))
    hello(core, "late", "late")
    send(core, p.WhoRequest(session="c0", room="#general", rid="w2"))
    answers = [m for m in replies(published(core), p.WhoReply)]
    assert [sorted(m.rooms["#general"]) for m in answers] == [["late", "uc0", "uc1"]]  # built after the join
    import zmqchat.server.core as core_module

    core_module.WHO_MAX_NAMES, limit = 2, core_module.WHO_MAX_NAMES
    try:
        send(core, p.WhoRequest(session="c0", room="#general", rid="w3"))
        (refusal,) = replies(published(core), p.ErrorReply)
    finally:
        core_module.WHO_MAX_NAMES = limit
    assert (refusal.code, refusal.rid, "3 names" in refusal.message) == (p.ERR_BAD_REQUEST, "w3", True)


def test_busy_for_one_rooms_request_puts_off_that_room_only(connected, clock):
    connected.join("#dev")
    connected.join("#ops")
    joins = {m.room: m for m in sent(connected, keep_rid=True) if isinstance(m, p.Join)}
    busy(connected, joins["#dev"].rid, retry=10.0)
    clock.advance(3.05)  # past the join retry, not past the busy wait
    beat(connected)
    connected.tick()
    again = [m.room for m in sent(connected) if isinstance(m, p.Join)]
    assert again == ["#ops"]
