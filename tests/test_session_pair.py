"""ClientSession with a hot-standby pair: terms, standby beats, which server the PUSH goes to, and the
switch (frames in, frames and events out; time from a fake clock)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import FakeClock

from zmqchat import events as ev
from zmqchat import protocol as p
from zmqchat.client.session import FAST_HELLOS_FOR, HELLO_RETRY, LOST_HELLO_RETRY, ROTATE_AFTER, ClientSession

SID = "s1"
MY_TOPIC = p.session_topic(SID)
WALL = 5000.0
A, B = "127.0.0.1:4444", "127.0.0.1:5444"


def make_session(clock: FakeClock, servers=(A, B), **kwargs) -> ClientSession:
    return ClientSession("alice", ["#general"], clock=clock, session_id=SID, wall_clock=lambda: WALL,
                         servers=list(servers) if servers is not None else None, **kwargs)


def sent(session: ClientSession) -> list[p.Message]:
    out = [p.decode_client(frames) for frames in session.outgoing]
    session.outgoing.clear()
    return out


def hellos(session: ClientSession) -> list[p.Hello]:
    return [m for m in sent(session) if isinstance(m, p.Hello)]


def events(session: ClientSession) -> list[ev.Event]:
    out = list(session.events)
    session.events.clear()
    return out


def nonce(session: ClientSession) -> str:
    return session._hello_nonces[-1]


def deliver(session: ClientSession, msg: p.Message, term: int = 0, topic: bytes | None = None) -> None:
    """Through the wire: encoded with the term frame, decoded by the session."""
    if topic is None:
        topic = p.room_topic("#general") if type(msg) in (p.RoomMessage, p.RoomMessages) else MY_TOPIC
    session.receive(p.encode_server(topic, msg, p.term_frame(term)))


def welcome(session: ClientSession, term: int = 0, rid: str | None = None) -> None:
    deliver(session, p.Welcome(session=SID, name="alice", motd="hi", heartbeat_interval=1.0, max_text_bytes=500,
                               server_time=WALL, epoch="e1", rid=rid or nonce(session)), term)


def beat(session: ClientSession, term: int = 0, role: str = "active", **seqs: int) -> None:
    deliver(session, p.ServerHeartbeat(ts=WALL, seqs=seqs, role=role), term, p.ALL_TOPIC)


def not_active(session: ClientSession, active: str = "", term: int = 0, rid: str | None = None) -> None:
    deliver(session, p.ErrorReply(code=p.ERR_NOT_ACTIVE, message="this server is the standby",
                                  rid=rid or nonce(session), active=active), term)


def live(seq: int, sender: str = "bob", mid: str | None = None) -> p.RoomMessage:
    return p.RoomMessage(room="#general", seq=seq, ts=float(seq), sender=sender, text=f"t{seq}",
                         mid=mid or f"b.{seq}")


def end(after: int, upto: int) -> p.HistoryEnd:
    return p.HistoryEnd(room="#general", after=after, upto=upto, count=0, newest=upto, before=upto + 1)


def connected(clock: FakeClock, term: int = 1, servers=(A, B)) -> ClientSession:
    """Welcomed by servers[0] under ``term``, #general synced at 0, queues emptied."""
    session = make_session(clock, servers)
    session.start()
    welcome(session, term)
    deliver(session, end(0, 0), term)
    sent(session)
    events(session)
    session.subscriptions.clear()
    return session


def texts(evs: list[ev.Event]) -> list[str]:
    return [e.text for e in evs if isinstance(e, ev.Message)]


def lose(session: ClientSession, clock: FakeClock) -> None:
    """Let the server go silent past the loss rule (three missed heartbeats)."""
    clock.advance(3.1)
    session.tick()


# --------------------------------------------------------------------------------------------------
# terms


def test_the_hello_carries_the_highest_term_seen(clock):
    session = connected(clock, term=3)
    assert session.term == 3
    lose(session, clock)
    assert [h.term for h in hellos(session)] == [3]


def test_a_lower_term_is_dropped_and_counted_a_higher_one_adopted(clock):
    session = connected(clock, term=2)
    deliver(session, live(1), term=1)  # a deposed active still publishing
    assert texts(events(session)) == []
    assert session.stale_frames == 1
    deliver(session, live(1), term=2)
    assert texts(events(session)) == ["t1"]
    deliver(session, live(2), term=3)  # seqs continue across a takeover: delivered, and the term adopted
    assert texts(events(session)) == ["t2"]
    assert session.term == 3
    deliver(session, live(3), term=2)
    assert texts(events(session)) == [] and session.stale_frames == 2


def test_a_deposed_active_cannot_welcome_us(clock):
    session = connected(clock, term=2)
    lose(session, clock)
    events(session)
    welcome(session, term=1)
    assert session.state == "lost" and events(session) == []
    welcome(session, term=2)
    assert session.connected


def test_terms_count_within_one_history_a_new_pair_or_a_single_server_starts_them_over(clock):
    session = connected(clock, term=7)
    lose(session, clock)
    events(session)
    # the pair was set up anew (new stores: another epoch, terms from 1): its answer to our hello counts
    deliver(session, p.Welcome(session=SID, name="alice", motd="hi", heartbeat_interval=1.0, max_text_bytes=500,
                               server_time=WALL, epoch="e2", rid=nonce(session)), 1)
    assert session.connected and session.term == 1
    assert any("history was reset" in e.text for e in events(session) if isinstance(e, ev.Notice))
    lose(session, clock)
    welcome(session, term=0)  # the same history served by one server alone (term 0): ours again
    assert session.connected and session.term == 0
    deliver(session, end(0, 0), term=0)
    deliver(session, live(1), term=0)
    assert texts(events(session))[-1:] == ["t1"]


def test_a_bad_term_frame_is_a_bad_frame(clock):
    session = connected(clock)
    frames = p.encode_server(p.room_topic("#general"), live(1), b"01")
    session.receive(frames)
    session.receive(frames[:4])  # the four frames of zmqchat/2
    assert session.bad_frames == 2 and events(session) == []


# --------------------------------------------------------------------------------------------------
# a standby's heartbeats


def test_a_standby_heartbeat_is_no_liveness_and_its_seqs_are_not_ours(clock):
    session = connected(clock, term=1)
    for _ in range(3):
        clock.advance(1.0)
        beat(session, term=1, role="standby", **{"#general": 9})
        session.tick()
    assert [type(m) for m in sent(session)] == [p.Ping, p.Ping, p.Ping]  # no gap request for seq 9
    clock.advance(0.2)
    beat(session, term=1, role="standby")
    session.tick()
    assert session.state == "lost"
    assert events(session) == [ev.ConnectionLost(switching_to=B)]


def test_the_active_heartbeat_keeps_us(clock):
    session = connected(clock, term=1)
    for _ in range(10):
        clock.advance(1.0)
        beat(session, term=1, role="standby")
        beat(session, term=1, role="active")
        session.tick()
    assert session.connected and session.server == 0


# --------------------------------------------------------------------------------------------------
# losing the active


def test_loss_switches_to_the_other_server_and_says_hello_there(clock):
    session = connected(clock, term=1)
    lose(session, clock)
    assert session.state == "lost"
    assert session.server == 1 and session.server_label == B
    assert events(session) == [ev.ConnectionLost(switching_to=B)]
    assert [type(m) for m in sent(session)] == [p.Hello]  # the hello is the client's vote
    # a new PUSH drops what it is given until its connection is up: hellos come fast for a while
    clock.advance(HELLO_RETRY)
    session.tick()
    assert len(hellos(session)) == 1
    clock.advance(FAST_HELLOS_FOR)
    session.tick()
    assert len(hellos(session)) == 1
    clock.advance(LOST_HELLO_RETRY / 2)
    session.tick()
    assert hellos(session) == []


def test_while_lost_it_keeps_rotating_so_a_dead_server_never_holds_it(clock):
    session = connected(clock, term=1)
    lose(session, clock)
    events(session)
    visited = []
    for _ in range(int(4 * ROTATE_AFTER / 0.25)):
        clock.advance(0.25)
        session.tick()
        if not visited or visited[-1] != session.server:
            visited.append(session.server)
    assert visited[:4] == [1, 0, 1, 0]
    assert events(session) == []  # one ConnectionLost for the outage, not one per rotation
    welcome(session, term=2)
    assert session.connected and events(session) == [ev.Connected("alice", "hi", reconnected=True)]
    clock.advance(ROTATE_AFTER * 2)
    beat(session, term=2)
    session.tick()
    assert session.connected  # connected: no more rotating


def test_connecting_moves_past_a_dead_first_server(clock):
    session = make_session(clock)
    session.start()
    assert session.server == 0
    for _ in range(int(ROTATE_AFTER / HELLO_RETRY)):
        clock.advance(HELLO_RETRY)
        session.tick()
    assert session.server == 1
    assert len(hellos(session)) == ROTATE_AFTER / HELLO_RETRY + 1  # the last one to B
    welcome(session, term=1)
    assert session.connected and session.server == 1


def test_a_welcome_for_a_hello_to_the_other_server_moves_back_to_it(clock):
    session = make_session(clock)
    session.start()
    first = nonce(session)  # went to A, which is slow to answer
    clock.advance(ROTATE_AFTER)
    session.tick()
    assert session.server == 1
    welcome(session, term=1, rid=first)
    assert session.connected and session.server == 0  # A answered: it is the active


def test_the_active_shutting_down_moves_us_at_once(clock):
    session = connected(clock, term=1)
    deliver(session, p.Shutdown(message="maintenance"), 1, p.ALL_TOPIC)
    assert events(session) == [ev.ServerShutdown("maintenance"), ev.ConnectionLost(switching_to=B)]
    assert session.server == 1 and len(hellos(session)) == 1


# --------------------------------------------------------------------------------------------------
# a standby's answer: not_active


def test_not_active_naming_a_known_server_switches_at_once_with_one_notice(clock):
    session = make_session(clock, servers=(B, A))  # the standby first
    session.start()
    to_standby = [nonce(session)]
    for _ in range(2):
        clock.advance(HELLO_RETRY)
        session.tick()
        to_standby.append(nonce(session))
    sent(session)
    not_active(session, active=A, rid=to_standby[0])
    assert session.server == 1 and session.server_label == A
    assert events(session) == [ev.Notice(f"{B} is the standby; switching to {A}")]
    assert len(hellos(session)) == 1  # hello at the active at once
    for rid in to_standby[1:]:  # its answers to the other hellos: no second notice, no move
        not_active(session, active=A, rid=rid)
    assert events(session) == [] and session.server == 1
    assert session.standbys == {B}
    welcome(session, term=1)
    assert session.connected and session.standbys == set()


def test_not_active_naming_an_unknown_server_adds_it(clock):
    session = make_session(clock, servers=[B])  # a client that knows only the standby
    session.start()
    not_active(session, active=A)
    assert session.servers == [B, A] and session.server == 1
    assert events(session) == [ev.Notice(f"{B} is the standby; switching to {A}")]
    assert len(hellos(session)) == 2  # the first, then the one to the active


def test_not_active_with_an_address_the_session_may_not_add(clock):
    session = make_session(clock, discover=False)
    session.start()
    not_active(session, active="10.0.0.9:4444")
    assert session.servers == [A, B] and session.server == 0
    assert events(session) == [ev.Notice(f"{A} is the standby; the active is 10.0.0.9:4444, which is not one of "
                                         "the servers given")]
    not_active(session, active="not an address")  # garbage from a server is no server
    assert session.servers == [A, B]


def test_not_active_without_an_active_tries_the_next_after_the_usual_wait(clock):
    session = make_session(clock)
    session.start()
    not_active(session)
    assert events(session) == [ev.Notice(f"{A} is the standby and does not know the active; trying the other "
                                         "server")]
    assert session.server == 0  # the active may come back, or this standby take over on our next hello
    clock.advance(HELLO_RETRY)
    session.tick()
    not_active(session)
    assert events(session) == []
    clock.advance(ROTATE_AFTER)
    session.tick()
    assert session.server == 1


def test_not_active_for_somebody_elses_hello_is_not_ours(clock):
    session = make_session(clock, servers=(B, A))
    session.start()
    not_active(session, active=A, rid="someone-else")
    assert session.server == 0 and events(session) == [] and session.foreign_replies == 1


def test_not_active_is_a_standbys_answer_no_liveness_no_term(clock):
    session = make_session(clock)
    session.start()
    not_active(session, active=B, term=7)
    assert session.term == 0  # a standby's term says nothing of the active's


# --------------------------------------------------------------------------------------------------
# another server took over


def test_an_active_heartbeat_with_a_higher_term_means_a_takeover(clock):
    session = connected(clock, term=1)
    clock.advance(0.5)
    beat(session, term=1)  # ours
    beat(session, term=2)  # the other one took over (another client's vote)
    assert session.state == "lost" and session.server == 1
    assert events(session) == [ev.ConnectionLost(switching_to=B)]
    assert [h.term for h in hellos(session)] == [2]
    beat(session, term=1)  # the deposed one, still beating: stale
    assert session.stale_frames == 1
    welcome(session, term=2)
    assert session.connected
    beat(session, term=2)
    assert session.connected and session.server == 1


def test_a_single_server_ignores_pairs(clock):
    session = connected(clock, term=0, servers=None)
    beat(session, term=3)
    assert session.connected
    lose(session, clock)
    assert events(session) == [ev.ConnectionLost()]
    assert session.server == 0
    for _ in range(8):
        clock.advance(ROTATE_AFTER)
        session.tick()
    assert session.server == 0  # nowhere else to go
    assert len(hellos(session)) == 9  # every LOST_HELLO_RETRY, as before pairs


# --------------------------------------------------------------------------------------------------
# after the switch: nothing lost, nothing twice


def test_unacknowledged_messages_are_resent_after_the_switch(clock):
    session = connected(clock, term=1)
    first, second = session.say("one"), session.say("two")
    assert [m.mid for m in sent(session) if isinstance(m, p.Say)] == [first, second]
    deliver(session, live(1), term=1)  # bob's message made it before A went down
    lose(session, clock)
    hello = hellos(session)[-1]
    assert (hello.unacked, hello.last_seq, hello.epoch, hello.term) == (1, {"#general": 1}, "e1", 1)
    welcome(session, term=2)
    assert events(session)[-1] == ev.Connected("alice", "hi", reconnected=True)
    assert [m.mid for m in sent(session) if isinstance(m, p.Say)] == [first, second]
    # the new active holds the replicated dedupe state: one echo each, nothing counted twice
    deliver(session, end(1, 1), term=2)
    deliver(session, live(2, sender="alice", mid=first), term=2)
    deliver(session, p.Ack(mid=second, room="#general", seq=3), term=2)
    assert [(e.mid, e.own) for e in events(session) if isinstance(e, ev.Message)] == [(first, True)]
    assert session.pending == {}


def test_the_catch_up_after_the_switch_fills_the_gap_by_seq(clock):
    session = connected(clock, term=1)
    deliver(session, live(1), term=1)
    events(session)
    lose(session, clock)
    welcome(session, term=2)
    deliver(session, live(4), term=2)  # live traffic on the new active before the catch-up's end
    deliver(session, p.HistoryMessage(**live(2).body()), term=2, topic=MY_TOPIC)
    deliver(session, p.HistoryMessage(**live(3).body()), term=2, topic=MY_TOPIC)
    deliver(session, end(1, 3), term=2)
    assert [e.seq for e in events(session) if isinstance(e, ev.Message)] == [2, 3, 4]


def test_a_message_heard_from_both_servers_is_delivered_once(clock):
    session = connected(clock, term=1)
    deliver(session, live(1), term=1)
    deliver(session, live(1), term=1)  # the same seq from the other server's PUB
    deliver(session, p.RoomMessages(messages=[live(1), live(2)]), term=1)
    deliver(session, live(2), term=1)
    assert [e.seq for e in events(session) if isinstance(e, ev.Message)] == [1, 2]


# --------------------------------------------------------------------------------------------------
# switch_to: the gateway's hub moves all its sessions together


def test_switch_to_moves_a_connected_session_and_says_hello(clock):
    session = connected(clock, term=1)
    session.switch_to(1)
    assert session.state == "lost" and session.server == 1
    assert events(session) == [ev.ConnectionLost(switching_to=B)]
    assert len(hellos(session)) == 1
    session.switch_to(1)
    assert hellos(session) == []  # already there
    with pytest.raises(ValueError):
        session.switch_to(2)


def test_switch_to_before_start_only_points(clock):
    session = make_session(clock)
    session.switch_to(1)
    assert session.server == 1 and sent(session) == [] and events(session) == []
    session.start()
    assert len(hellos(session)) == 1


def test_the_events_say_where_we_went():
    lost = ev.ConnectionLost(switching_to=B)
    assert lost.to_dict() == {"type": "connection_lost", "switching_to": B}
    assert dataclasses.replace(lost, switching_to="") == ev.ConnectionLost()


def test_resume_from_starts_where_an_earlier_session_stood(clock):
    session = make_session(clock)
    session.resume_from({"#general": 41, "#elsewhere": 7}, "e1", term=3)
    session.start()
    (first,) = hellos(session)
    assert (first.last_seq, first.epoch, first.term) == ({"#general": 41}, "e1", 3)
    welcome(session, term=3)
    deliver(session, end(41, 41), 3)
    deliver(session, live(42), 3)
    assert texts(events(session)) == ["t42"]  # on from 41: no backlog, nothing twice
    other = make_session(clock)
    other.resume_from({"#general": 41}, "")  # no epoch: the numbers mean nothing; a fresh start
    other.start()
    assert hellos(other)[0].last_seq == {}


def test_a_hello_is_a_vote_only_after_the_active_was_lost_or_a_server_found_dead(clock):
    fresh = make_session(clock)
    fresh.start()
    assert [h.vote for h in hellos(fresh)] == [False]  # a client just started that asks the standby first
    clock.advance(ROTATE_AFTER + 0.01)
    fresh.tick()  # servers[0] never answered: dead to us, so the other one may take over on our hello
    assert fresh.server == 1 and hellos(fresh)[-1].vote is True
    welcome(fresh, term=2)
    lose(fresh, clock)
    assert hellos(fresh)[-1].vote is True  # lost the active: our hello to the other one is a vote
    welcome(fresh, term=3)
    clock.advance(0.5)
    beat(fresh, term=3)
    assert fresh.connected and fresh._vote is False  # welcomed: no longer voting
