"""ClientSession, the client's rules without sockets: server frames in, frames, subscriptions and events out."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import FakeClock
from journal import shut

from zmqchat import events as ev
from zmqchat import protocol as p
from zmqchat.client.session import GAP_CHUNK, HELLO_RETRY, HISTORY_RETRY, RESEND_AFTER, ClientSession
from zmqchat.server.core import ServerConfig, ServerCore
from zmqchat.server.store import MemoryStore, SqliteStore

SID = "s1"
MY_TOPIC = p.session_topic(SID)
GENERAL = p.room_topic("#general")
WALL = 5000.0


def make_session(clock: FakeClock, rooms=("#general",), name: str = "alice") -> ClientSession:
    return ClientSession(name, list(rooms), clock=clock, session_id=SID, wall_clock=lambda: WALL)


def sent(session: ClientSession, keep_rid: bool = False) -> list[p.Message]:
    """What the session queued for PUSH since the last call, decoded (request ids blanked unless asked for:
    their correlation has tests of its own)."""
    out = [p.decode_client(frames) for frames in session.outgoing]
    session.outgoing.clear()
    if keep_rid:
        return out
    return [dataclasses.replace(m, rid="") if hasattr(m, "rid") else m for m in out]


def nonce(session: ClientSession) -> str:
    """The rid of the session's latest hello: what a real answer to it echoes."""
    return session._hello_nonces[-1] if session._hello_nonces else "already-answered"


def events(session: ClientSession) -> list[ev.Event]:
    out = list(session.events)
    session.events.clear()
    return out


def deliver(session: ClientSession, msg: p.Message, topic: bytes | None = None) -> None:
    if topic is None:
        room = getattr(msg, "room", None)
        topic = p.room_topic(room) if type(msg) in (p.RoomMessage, p.PresenceEvent) else MY_TOPIC
    session.receive(p.encode_server(topic, msg))


def welcome(session: ClientSession, heartbeat: float = 1.0) -> None:
    deliver(session, p.Welcome(session=SID, name=session.name, motd="hello there", heartbeat_interval=heartbeat,
                               max_text_bytes=500, server_time=WALL, rid=nonce(session)))


def live(seq: int, room: str = "#general", sender: str = "bob", mid: str | None = None) -> p.RoomMessage:
    return p.RoomMessage(room=room, seq=seq, ts=float(seq), sender=sender, text=f"t{seq}", mid=mid or f"b.{seq}")


def hist(seq: int, room: str = "#general", sender: str = "bob", mid: str | None = None) -> p.HistoryMessage:
    return p.HistoryMessage(**live(seq, room, sender, mid).body())


def end(after: int, upto: int, count: int = 0, room: str = "#general", newest: int | None = None,
        before: int | None = None) -> p.HistoryEnd:
    """A history reply; ``before`` defaults to a bounded request's (upto + 1)."""
    return p.HistoryEnd(room=room, after=after, upto=upto, count=count, newest=upto if newest is None else newest,
                        before=upto + 1 if before is None else before)


def connected(clock: FakeClock, rooms=("#general",)) -> ClientSession:
    """A session past its handshake, every room synced at seq 0, queues emptied."""
    session = make_session(clock, rooms)
    session.start()
    welcome(session)
    for room in rooms:
        deliver(session, end(0, 0, room=room))
    sent(session)
    events(session)
    session.subscriptions.clear()
    return session


def seqs(evs: list[ev.Event]) -> list[int]:
    return [e.seq for e in evs if isinstance(e, ev.Message)]


def beat(session: ClientSession, **seqs_by_room: int) -> None:
    deliver(session, p.ServerHeartbeat(ts=WALL, seqs=seqs_by_room), topic=p.ALL_TOPIC)


# --------------------------------------------------------------------------------------------------
# handshake


def test_start_subscribes_before_the_hello(clock):
    session = make_session(clock, rooms=["#general", "#dev"])
    assert session.outgoing == [] and session.subscriptions == []  # nothing happens before start()
    session.start()
    assert session.subscriptions == [(True, MY_TOPIC), (True, p.ALL_TOPIC), (True, GENERAL),
                                     (True, p.room_topic("#dev"))]
    assert sent(session) == [p.Hello(session=SID, name="alice", rooms=["#general", "#dev"], last_seq={})]
    assert session.state == "connecting"
    assert not session.connected
    assert events(session) == []


def test_connected_on_welcome(clock):
    session = make_session(clock)
    session.start()
    welcome(session, heartbeat=0.5)
    assert events(session) == [ev.Connected("alice", "hello there", reconnected=False)]
    assert session.connected
    assert (session.heartbeat_interval, session.max_text_bytes) == (0.5, 500)
    deliver(session, end(0, 0))  # the server's answer to our join, on our session topic
    assert events(session) == [ev.Presence("#general", "alice", "join", WALL)]
    welcome(session)  # the answer to a retried hello: nothing new
    assert events(session) == []


def test_hello_retries_until_welcome(clock):
    session = make_session(clock)
    session.start()
    sent(session)
    clock.advance(HELLO_RETRY / 2)
    session.tick()
    assert sent(session) == []
    for _ in range(3):
        clock.advance(HELLO_RETRY / 2)
        session.tick()
        assert [type(m) for m in sent(session)] == [p.Hello]
        clock.advance(HELLO_RETRY / 2)
        session.tick()
    sent(session)
    welcome(session)
    deliver(session, end(0, 0))
    for _ in range(10):
        clock.advance(HELLO_RETRY)
        beat(session)
        session.tick()
        assert p.Hello not in [type(m) for m in sent(session)]


def test_no_hellos_while_connecting_are_lost_to_the_loss_detector(clock):
    session = make_session(clock)
    session.start()
    clock.advance(60)  # no server at all: keep trying, never "lost" without having connected
    session.tick()
    assert [type(m) for m in sent(session)] == [p.Hello, p.Hello]
    assert session.state == "connecting"
    assert events(session) == []


def test_fatal_name_taken_while_connecting(clock):
    session = make_session(clock)
    session.start()
    deliver(session, p.ErrorReply(code=p.ERR_NAME_TAKEN, message="name 'alice' is already taken",
                                  rid=nonce(session)))
    assert events(session) == [ev.Error(p.ERR_NAME_TAKEN, "name 'alice' is already taken", fatal=True)]
    assert not session.connected


@pytest.mark.parametrize("code", [p.ERR_BAD_NAME, p.ERR_NOT_AUTHORIZED])
def test_other_fatal_codes_while_connecting(clock, code):
    session = make_session(clock)
    session.start()
    deliver(session, p.ErrorReply(code=code, message="no", rid=nonce(session)))
    assert events(session) == [ev.Error(code, "no", fatal=True)]


@pytest.mark.parametrize("code", [p.ERR_NAME_TAKEN, p.ERR_BAD_NAME, p.ERR_NOT_AUTHORIZED])
@pytest.mark.parametrize("state", ["connecting", "connected", "lost"])
def test_refusals_of_somebody_elses_hello_change_nothing(clock, code, state):
    # Another identity's hello that named our session was refused on our topic: not an answer to us.
    session = make_session(clock) if state == "connecting" else connected(clock)
    if state == "connecting":
        session.start()
    if state == "lost":
        clock.advance(10)
        session.tick()
        events(session)
    before = session.state
    for rid in ("", "0123456789abcdef", "r1"):
        deliver(session, p.ErrorReply(code=code, message="no", rid=rid))
    assert events(session) == []
    assert session.state == before and session.foreign_replies == 3
    sent(session)
    if state == "connected":
        mid = session.say("still here")
        assert [m.mid for m in sent(session) if isinstance(m, p.Say)] == [mid]


def test_a_welcome_for_somebody_elses_hello_is_ignored(clock):
    session = make_session(clock)
    session.start()
    deliver(session, p.Welcome(session=SID, name="alice", motd="m", heartbeat_interval=1.0, max_text_bytes=500,
                               server_time=WALL, rid="not-ours"))
    assert not session.connected and events(session) == []
    welcome(session)
    assert session.connected


def test_every_hello_carries_a_fresh_nonce_and_an_answer_to_any_recent_one_counts(clock):
    session = make_session(clock)
    session.start()
    clock.advance(HELLO_RETRY)
    session.tick()
    hellos = [m for m in sent(session, keep_rid=True) if isinstance(m, p.Hello)]
    assert len(hellos) == 2 and len({h.rid for h in hellos}) == 2 and all(len(h.rid) == 16 for h in hellos)
    deliver(session, p.Welcome(session=SID, name="alice", motd="m", heartbeat_interval=1.0, max_text_bytes=500,
                               server_time=WALL, rid=hellos[0].rid))  # the first one's answer, arriving late
    assert session.connected


def test_requests_carry_distinct_rids(clock):
    session = connected(clock)
    session.who()
    session.list_rooms()
    session.stats()
    session.history(5)
    session.join("#dev")
    rids = [m.rid for m in sent(session, keep_rid=True)]
    assert len(rids) == 5 and all(rids) and len(set(rids)) == 5


def test_revocation_is_fatal_whatever_it_answers(clock):
    session = connected(clock)
    deliver(session, p.ErrorReply(code=p.ERR_REVOKED, message="your key is no longer authorized"))
    assert events(session) == [ev.Error(p.ERR_REVOKED, "your key is no longer authorized", fatal=True)]


def test_errors_once_connected_are_not_fatal(clock):
    session = connected(clock)
    mid = session.say("hi", room="#dev")
    deliver(session, p.ErrorReply(code=p.ERR_NOT_IN_ROOM, message="you are not in #dev; /join it first", mid=mid))
    assert events(session) == [ev.Error(p.ERR_NOT_IN_ROOM, "you are not in #dev; /join it first", fatal=False,
                                        mid=mid)]
    assert session.pending == {}  # refused for good: not resent forever


def test_bad_frames_are_counted(clock):
    session = connected(clock)
    session.receive([b"junk"])
    session.receive([GENERAL, b"zmqchat/2", b"msg", b"{}"])
    session.receive([GENERAL, p.VERSION, b"msg", b'{"room": "#general"}'])
    assert session.bad_frames == 3
    assert events(session) == []


# --------------------------------------------------------------------------------------------------
# own messages


def test_own_message_acked_by_echo(clock):
    session = connected(clock)
    mid = session.say("hi")
    assert mid == "s1.1"
    assert sent(session) == [p.Say(session=SID, room="#general", text="hi", mid="s1.1")]
    assert list(session.pending) == [mid]
    deliver(session, live(1, sender="alice", mid=mid))
    assert session.pending == {}
    (message,) = events(session)
    assert (message.seq, message.sender, message.own, message.history) == (1, "alice", True, False)
    clock.advance(RESEND_AFTER + 1)
    beat(session)
    session.tick()
    assert [type(m) for m in sent(session)] == [p.Ping]


def test_duplicate_ack_clears_pending(clock):
    session = connected(clock)
    mid = session.say("hi")
    deliver(session, p.Ack(mid=mid, room="#general", seq=7))
    assert session.pending == {}


def test_unacked_message_is_resent(clock):
    session = connected(clock)
    mid = session.say("hi", action=True)
    sent(session)
    for _ in range(4):
        clock.advance(1.0)
        beat(session)
        session.tick()
    assert [type(m) for m in sent(session)] == [p.Ping] * 4
    clock.advance(1.0)
    beat(session)
    session.tick()
    assert sent(session) == [p.Ping(session=SID), p.Say(session=SID, room="#general", text="hi", mid=mid,
                                                        action=True)]


def test_say_while_connecting_is_sent_on_welcome(clock):
    session = make_session(clock)
    session.start()
    sent(session)
    first, second = session.say("one"), session.say("two", room="#dev")
    assert sent(session) == []
    welcome(session)
    assert [(m.mid, m.text, m.room) for m in sent(session)] == [(first, "one", "#general"), (second, "two", "#dev")]


def test_resend_after_reconnect(clock):
    session = connected(clock)
    deliver(session, live(1))
    mid = session.say("are you there?")
    sent(session)
    events(session)
    # the server restarted and forgot us
    deliver(session, p.ErrorReply(code=p.ERR_UNKNOWN_SESSION, message="unknown session; send hello"))
    assert session.state == "lost"
    assert sent(session) == [p.Hello(session=SID, name="alice", rooms=["#general"], last_seq={"#general": 1})]
    deliver(session, live(2))  # not trusted until welcomed again
    assert events(session) == []
    welcome(session)
    assert events(session) == [ev.Connected("alice", "hello there", reconnected=True)]
    assert sent(session) == [p.Say(session=SID, room="#general", text="are you there?", mid=mid)]
    deliver(session, hist(2))
    deliver(session, end(1, 2, count=1))
    assert seqs(events(session)) == [2]


def test_unknown_session_while_connecting_is_ignored(clock):
    session = make_session(clock)
    session.start()
    sent(session)
    deliver(session, p.ErrorReply(code=p.ERR_UNKNOWN_SESSION, message="unknown session; send hello"))
    assert (session.state, sent(session), events(session)) == ("connecting", [], [])


# --------------------------------------------------------------------------------------------------
# ordering and gaps


def test_gap_detected_held_back_and_filled_in_order(clock):
    session = connected(clock)
    for seq in (1, 2):
        deliver(session, live(seq))
    assert seqs(events(session)) == [1, 2]
    deliver(session, live(5))
    assert events(session) == []  # held back until the gap is filled
    assert sent(session) == [p.HistoryRequest(session=SID, room="#general", after=2, before=5, limit=2)]
    deliver(session, hist(3))
    deliver(session, hist(4))
    deliver(session, end(2, 4, count=2, newest=5))
    got = events(session)
    assert seqs(got) == [3, 4, 5]
    assert [e.history for e in got] == [False, False, False]  # recovered messages are new, not old talk
    for again in (live(5), hist(4), hist(3), live(2)):
        deliver(session, again)
    deliver(session, live(6))
    assert seqs(events(session)) == [6]
    assert sent(session) == []


def test_rows_of_a_gap_fill_lost_on_the_way_are_asked_for_again_not_given_up(clock):
    """The reply says it sent 4; 2 reached us (the PUB dropped the others at our full queue): not gone."""
    session = connected(clock)
    deliver(session, live(1))
    deliver(session, live(6))
    assert sent(session) == [p.HistoryRequest(session=SID, room="#general", after=1, before=6, limit=4)]
    deliver(session, hist(2))
    deliver(session, hist(4))
    deliver(session, end(1, 5, count=4, newest=6))
    got = events(session)
    assert seqs(got) == [1, 2] and not [e for e in got if isinstance(e, ev.Notice)]
    assert sent(session) == [p.HistoryRequest(session=SID, room="#general", after=2, before=4, limit=1)]
    deliver(session, hist(3))
    deliver(session, end(2, 3, count=1, newest=6, before=4))
    assert seqs(events(session)) == [3, 4]
    assert sent(session) == [p.HistoryRequest(session=SID, room="#general", after=4, before=6, limit=1)]
    deliver(session, hist(5))
    deliver(session, end(4, 5, count=1, newest=6))
    assert seqs(events(session)) == [5, 6]


def test_gap_replies_that_keep_losing_everything_on_the_way_are_given_up_after_a_few(clock):
    from zmqchat.client.session import REASKS

    session = connected(clock)
    deliver(session, live(1))
    deliver(session, live(6))
    sent(session)
    for _ in range(REASKS):  # nothing of each reply arrives: asked again each time
        deliver(session, end(1, 5, count=4, newest=6))
        assert [m.after for m in sent(session) if isinstance(m, p.HistoryRequest)] == [1]
    deliver(session, end(1, 5, count=4, newest=6))  # then it stops asking, says so, and goes on
    got = events(session)
    assert seqs(got) == [1, 6] and any(isinstance(e, ev.Notice) for e in got)
    assert sent(session) == []


def test_what_the_server_no_longer_has_is_still_given_up_with_a_notice(clock):
    session = connected(clock)
    deliver(session, live(1))
    deliver(session, live(6))
    sent(session)
    deliver(session, hist(4))
    deliver(session, end(1, 5, count=1, newest=6))  # it had only 4
    got = events(session)
    assert seqs(got) == [1, 4, 6]
    assert [e.text for e in got if isinstance(e, ev.Notice)] == ["3 message(s) in #general are no longer in history"]


def test_live_messages_during_a_gap_fill_wait_their_turn(clock):
    session = connected(clock)
    deliver(session, live(1))
    deliver(session, live(4))
    deliver(session, live(5))
    deliver(session, live(6))
    assert seqs(events(session)) == [1]
    assert sent(session) == [p.HistoryRequest(session=SID, room="#general", after=1, before=4, limit=2)]
    deliver(session, hist(2))
    deliver(session, hist(3))
    deliver(session, end(1, 3, count=2, newest=6))
    assert seqs(events(session)) == [2, 3, 4, 5, 6]
    assert sent(session) == []


def test_unanswered_gap_request_is_repeated(clock):
    session = connected(clock)
    deliver(session, live(1))
    deliver(session, live(3))
    request = p.HistoryRequest(session=SID, room="#general", after=1, before=3, limit=1)
    assert sent(session) == [request]
    clock.advance(HISTORY_RETRY - 0.5)
    beat(session)
    session.tick()
    assert request not in sent(session)
    clock.advance(0.5)
    beat(session)
    session.tick()
    assert request in sent(session)


def test_gap_requests_are_chunked(clock):
    session = connected(clock)
    deliver(session, live(1))
    deliver(session, live(1000))
    assert sent(session) == [p.HistoryRequest(session=SID, room="#general", after=1, before=1000, limit=GAP_CHUNK)]
    for seq in range(2, 2 + GAP_CHUNK):
        deliver(session, hist(seq))
    deliver(session, end(1, 1 + GAP_CHUNK, count=GAP_CHUNK, newest=1000))
    assert sent(session) == [p.HistoryRequest(session=SID, room="#general", after=1 + GAP_CHUNK, before=1000,
                                              limit=GAP_CHUNK)]


def test_messages_gone_from_history_are_reported(clock):
    session = connected(clock)
    deliver(session, live(1))
    deliver(session, live(4))
    events(session)
    deliver(session, end(1, 3, count=0, newest=4))
    got = events(session)
    assert got[0] == ev.Notice("2 message(s) in #general are no longer in history")
    assert seqs(got) == [4]


def test_tail_loss_noticed_from_heartbeat(clock):
    session = connected(clock)
    deliver(session, live(1))
    events(session)
    beat(session, **{"#general": 3, "#elsewhere": 9})
    assert sent(session) == [p.HistoryRequest(session=SID, room="#general", after=1, before=4, limit=2)]
    deliver(session, hist(2))
    deliver(session, hist(3))
    deliver(session, end(1, 3, count=2))
    assert seqs(events(session)) == [2, 3]
    beat(session, **{"#general": 3})
    assert sent(session) == []


def test_join_backlog_then_live_with_overlap(clock):
    session = make_session(clock)
    session.start()
    welcome(session)
    events(session)
    deliver(session, live(3))  # the room topic can beat the backlog
    for seq in (1, 2, 3):
        deliver(session, hist(seq))
    deliver(session, live(4))
    assert seqs(session.events) == []  # nothing before the backlog is complete
    deliver(session, end(0, 3, count=3, before=0))
    got = events(session)
    assert got[0] == ev.Presence("#general", "alice", "join", WALL)
    assert seqs(got) == [1, 2, 3, 4]
    assert [e.history for e in got[1:]] == [True, True, True, False]
    deliver(session, live(4))
    deliver(session, live(5))
    assert seqs(events(session)) == [5]
    assert [m for m in sent(session) if isinstance(m, p.HistoryRequest)] == []


def test_backlog_that_starts_late_is_no_gap(clock):
    session = make_session(clock)
    session.start()
    welcome(session)
    for seq in (48, 49, 50):
        deliver(session, hist(seq))
    deliver(session, end(0, 50, count=3))
    assert seqs(events(session)) == [48, 49, 50]
    assert [type(m) for m in sent(session)] == [p.Hello]


def test_history_display_shows_old_messages_again(clock):
    session = connected(clock)
    for seq in (1, 2, 3):
        deliver(session, live(seq))
    events(session)
    session.history(2)
    assert sent(session) == [p.HistoryRequest(session=SID, room="#general", after=0, before=0, limit=2)]
    deliver(session, hist(2))
    deliver(session, hist(3))
    deliver(session, end(0, 3, count=2))
    got = events(session)
    assert [(e.seq, e.history) for e in got] == [(2, True), (3, True)]
    deliver(session, hist(3))  # only while the request is outstanding
    deliver(session, live(4))
    assert seqs(events(session)) == [4]


def test_messages_for_rooms_not_joined_are_ignored(clock):
    session = connected(clock)
    deliver(session, live(1, room="#other"))
    assert events(session) == [] and sent(session) == []


# --------------------------------------------------------------------------------------------------
# throttling


def test_rate_limited_stop_and_wait_resend_in_order(clock):
    session = connected(clock)
    m1, m2, m3 = (session.say(f"text {i}") for i in (1, 2, 3))
    assert [m.mid for m in sent(session)] == [m1, m2, m3]
    deliver(session, live(1, sender="alice", mid=m1))
    for mid in (m2, m3):
        deliver(session, p.ErrorReply(code=p.ERR_RATE_LIMITED, message="slow down: wait 0.5s", mid=mid,
                                      retry_after=0.5))
    got = events(session)
    assert [type(e) for e in got] == [ev.Message, ev.Notice]  # one notice for the burst
    assert "sending too fast" in got[1].text
    m4 = session.say("text 4")
    assert sent(session) == []  # queued behind the throttled ones
    clock.advance(0.4)
    session.tick()
    assert sent(session) == []
    clock.advance(0.1)
    session.tick()
    assert [m.mid for m in sent(session)] == [m2]  # one in flight at a time
    session.tick()
    assert sent(session) == []
    deliver(session, live(2, sender="alice", mid=m2))
    assert [m.mid for m in sent(session)] == [m3]
    deliver(session, live(3, sender="alice", mid=m3))
    assert [m.mid for m in sent(session)] == [m4]
    deliver(session, live(4, sender="alice", mid=m4))
    assert session.pending == {}
    m5 = session.say("text 5")
    assert [m.mid for m in sent(session)] == [m5]  # back to normal
    assert seqs(events(session)) == [2, 3, 4]


def test_rate_limited_again_while_waiting(clock):
    session = connected(clock)
    m1, m2 = session.say("a"), session.say("b")
    sent(session)
    deliver(session, p.ErrorReply(code=p.ERR_RATE_LIMITED, message="slow", mid=m1, retry_after=1.0))
    deliver(session, p.ErrorReply(code=p.ERR_RATE_LIMITED, message="slow", mid=m2, retry_after=1.0))
    clock.advance(1.0)
    session.tick()
    assert [m.mid for m in sent(session) if isinstance(m, p.Say)] == [m1]
    deliver(session, p.ErrorReply(code=p.ERR_RATE_LIMITED, message="slow", mid=m1, retry_after=2.0))
    clock.advance(1.0)
    beat(session)
    session.tick()
    assert [m for m in sent(session) if isinstance(m, p.Say)] == []
    clock.advance(1.0)
    beat(session)
    session.tick()
    assert [m.mid for m in sent(session) if isinstance(m, p.Say)] == [m1]


# --------------------------------------------------------------------------------------------------
# liveness


def test_connection_lost_after_missed_heartbeats_then_hello(clock):
    session = connected(clock)
    clock.advance(3.0)  # exactly three missed heartbeats: not yet
    session.tick()
    assert session.connected
    assert events(session) == []
    clock.advance(0.1)
    session.tick()
    assert session.state == "lost"
    assert events(session) == [ev.ConnectionLost()]
    assert [type(m) for m in sent(session)] == [p.Ping, p.Hello]
    clock.advance(0.5)
    session.tick()
    assert sent(session) == []
    clock.advance(0.5)
    session.tick()
    assert [type(m) for m in sent(session)] == [p.Hello]
    beat(session)  # a heartbeat from a server that does not know us yet changes nothing
    assert session.state == "lost"
    welcome(session)
    assert events(session) == [ev.Connected("alice", "hello there", reconnected=True)]
    assert session.connected


def test_heartbeats_keep_the_connection(clock):
    session = connected(clock)
    for _ in range(20):
        clock.advance(1.0)
        beat(session)
        session.tick()
    assert session.connected
    assert events(session) == []


def test_pings_only_when_idle(clock):
    session = connected(clock)
    clock.advance(0.6)
    session.say("x")
    clock.advance(0.6)
    beat(session)
    session.tick()
    assert [type(m) for m in sent(session)] == [p.Say]  # the message was our liveness
    clock.advance(0.5)
    session.tick()
    assert [type(m) for m in sent(session)] == [p.Ping]


def test_shutdown_then_reconnect(clock):
    session = connected(clock)
    deliver(session, p.Shutdown(message="maintenance"), topic=p.ALL_TOPIC)
    assert events(session) == [ev.ServerShutdown("maintenance"), ev.ConnectionLost()]
    assert session.state == "lost"


def test_bye_and_goodbye(clock):
    session = connected(clock)
    session.bye()
    assert sent(session) == [p.Bye(session=SID)]
    assert session.state == "closing"
    welcome(session)  # a late welcome does not reopen
    deliver(session, p.Goodbye(session=SID))
    assert events(session) == [ev.Closed()]
    assert session.state == "closed"


# --------------------------------------------------------------------------------------------------
# rooms and queries


def test_join_subscribes_before_asking(clock):
    session = connected(clock)
    session.join("#dev")
    assert session.subscriptions == [(True, p.room_topic("#dev"))]
    assert sent(session) == [p.Join(session=SID, room="#dev", last_seq=-1)]
    assert session.current_room == "#dev"
    deliver(session, hist(7, room="#dev"))
    deliver(session, end(0, 7, count=1, room="#dev"))
    got = events(session)
    assert got[0] == ev.Presence("#dev", "alice", "join", WALL)
    assert [(e.room, e.seq) for e in got[1:]] == [("#dev", 7)]
    session.join("#dev")  # already in: just becomes current
    assert sent(session) == []


def test_part_unsubscribes(clock):
    session = connected(clock, rooms=("#general", "#dev"))
    assert session.part("#dev") == "#dev"
    assert session.subscriptions == [(False, p.room_topic("#dev"))]
    assert sent(session) == [p.Part(session=SID, room="#dev")]
    deliver(session, live(1, room="#dev"))
    assert events(session) == []
    assert session.part("#nowhere") == "#nowhere"
    assert sent(session) == []


def test_presence_of_others_and_queries(clock):
    session = connected(clock)
    deliver(session, p.PresenceEvent(room="#general", name="bob", event="join", ts=7.0))
    deliver(session, p.PresenceEvent(room="#general", name="alice", event="join", ts=7.0))  # told already
    deliver(session, p.PresenceEvent(room="#other", name="carol", event="join", ts=7.0))
    session.who()
    session.list_rooms()
    session.stats()
    assert sent(session) == [p.WhoRequest(session=SID), p.RoomsRequest(session=SID), p.StatsRequest(session=SID)]
    deliver(session, p.WhoReply(rooms={"#general": ["alice", "bob"]}))
    deliver(session, p.RoomsReply(rooms={"#general": 2}))
    deliver(session, p.StatsReply(stats={"clients": 2}))
    assert events(session) == [ev.Presence("#general", "bob", "join", 7.0), ev.Who({"#general": ["alice", "bob"]}),
                               ev.Rooms({"#general": 2}), ev.Stats({"clients": 2})]


# --------------------------------------------------------------------------------------------------
# sessions and the server core together, frames moved as the sockets would (no sockets)


class Net:
    """PUSH/PULL and PUB/SUB between ClientSessions and one ServerCore, with SUB prefix filtering and an
    optional ``drop(client, frames)`` to lose published frames like a full PUB queue does."""

    def __init__(self, clock: FakeClock, core: ServerCore) -> None:
        self.clock = clock
        self.core = core
        self.subs: dict[ClientSession, set[bytes]] = {}
        self.drop = lambda client, frames: False

    def add(self, name: str, session_id: str, rooms=("#general",)) -> ClientSession:
        client = ClientSession(name, list(rooms), clock=self.clock, session_id=session_id, wall_clock=self.clock)
        self.subs[client] = set()
        client.start()
        self.pump()
        return client

    def pump(self) -> None:
        for _ in range(10_000):
            moved = False
            for client, subs in self.subs.items():
                for subscribe, topic in client.subscriptions:
                    (subs.add if subscribe else subs.discard)(topic)
                client.subscriptions.clear()
                frames_out, client.outgoing = client.outgoing, []
                for frames in frames_out:
                    self.core.receive(frames)
                    moved = True
            published = self.core.flush()
            for frames in published:
                for client, subs in self.subs.items():
                    if any(frames[0].startswith(t) for t in subs) and not self.drop(client, frames):
                        client.receive(frames)
            if not moved and not published:
                return
        raise AssertionError("the network never went quiet")

    def run(self, seconds: float, step: float = 0.25) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            for client in self.subs:
                client.tick()
            self.core.tick()
            self.pump()


def live_seq(frames: list[bytes]) -> int | None:
    if frames[2] != p.RoomMessage.KIND:
        assert frames[2] != p.RoomMessages.KIND, "a test that drops single messages must publish them singly"
        return None
    return p.decode_server(frames)[1].seq


def messages(client: ClientSession) -> list[tuple[int, str]]:
    return [(e.seq, e.text) for e in client.events if isinstance(e, ev.Message)]


def test_two_sessions_chat_through_the_core(clock):
    net = Net(clock, ServerCore(ServerConfig(), MemoryStore(100), clock=clock))
    alice = net.add("alice", "sa")
    bob = net.add("bob", "sb")
    assert alice.connected and bob.connected
    alice.say("hi bob")
    bob.say("hi alice")
    net.pump()
    for client in (alice, bob):
        assert messages(client) == [(1, "hi bob"), (2, "hi alice")]
        assert client.pending == {}
    assert ev.Presence("#general", "bob", "join", clock.now) in alice.events


def test_lost_live_messages_recovered_through_the_core(clock):
    net = Net(clock, ServerCore(ServerConfig(rate=0.0), MemoryStore(100), clock=clock))
    alice = net.add("alice", "sa")
    bob = net.add("bob", "sb")
    net.drop = lambda client, frames: client is bob and live_seq(frames) in {3, 4, 5, 6, 7, 12}
    for i in range(1, 21):  # one batch each: the PUB loses single publications, here single messages
        alice.say(f"m{i}")
        net.pump()
    assert messages(bob) == [(i, f"m{i}") for i in range(1, 21)]
    assert messages(alice) == messages(bob)
    assert not any(isinstance(e, ev.Notice) for e in bob.events)


def test_lost_tail_recovered_after_the_next_server_heartbeat(clock):
    net = Net(clock, ServerCore(ServerConfig(rate=0.0), MemoryStore(100), clock=clock))
    alice = net.add("alice", "sa")
    bob = net.add("bob", "sb")
    net.drop = lambda client, frames: client is bob and live_seq(frames) in {19, 20}
    for i in range(1, 21):  # one batch each: the PUB loses single publications, here single messages
        alice.say(f"m{i}")
        net.pump()
    assert [s for s, _ in messages(bob)] == list(range(1, 19))  # nothing came after the loss to show it
    net.run(1.0)  # the server heartbeat carries each room's newest seq
    assert messages(bob) == [(i, f"m{i}") for i in range(1, 21)]
    assert not any(isinstance(e, ev.Notice) for e in bob.events)


def test_flood_is_throttled_and_delivered_in_order(clock):
    net = Net(clock, ServerCore(ServerConfig(rate=2.0, burst=3.0), MemoryStore(100), clock=clock))
    alice = net.add("alice", "sa")
    bob = net.add("bob", "sb")
    for i in range(1, 11):
        alice.say(f"m{i}")
    net.pump()
    assert net.core.stats["throttled"] > 0
    net.run(6.0)
    assert messages(bob) == [(i, f"m{i}") for i in range(1, 11)]
    assert alice.pending == {}
    assert alice.connected and bob.connected


def test_server_restart_resend_is_deduplicated(clock, tmp_path):
    path = tmp_path / "history.db"
    net = Net(clock, ServerCore(ServerConfig(), SqliteStore(path, 100), clock=clock))
    alice = net.add("alice", "sa")
    bob = net.add("bob", "sb")
    net.drop = lambda client, frames: client is alice and live_seq(frames) is not None  # alice never sees the echo
    alice.say("did this arrive?")
    net.pump()
    net.drop = lambda client, frames: False
    shut(net.core)
    net.core = ServerCore(ServerConfig(), SqliteStore(path, 100), clock=clock)  # restarted, sessions gone
    net.run(3.0)
    assert alice.connected and bob.connected
    assert alice.pending == {}
    assert net.core.stats["duplicates"] == 1
    assert net.core.sequencer.last_seq("#general") == 1
    assert messages(bob) == [(1, "did this arrive?")]
    shut(net.core)


def test_burst_into_an_empty_room_recovered_when_more_than_a_chunk_is_lost(clock):
    net = Net(clock, ServerCore(ServerConfig(rate=0.0), MemoryStore(1000), clock=clock))
    alice = net.add("alice", "sa")
    bob = net.add("bob", "sb")
    net.drop = lambda client, frames: client is bob and (live_seq(frames) or 999) <= 250
    for i in range(1, 301):  # one batch each: the PUB loses single publications, here single messages
        alice.say(f"m{i}")
        net.pump()
    net.run(4.0)
    assert not any(isinstance(e, ev.Notice) for e in bob.events)
    assert messages(bob) == [(i, f"m{i}") for i in range(1, 301)]


def test_messages_lost_while_disconnected_are_reported(clock):
    session = connected(clock)
    for seq in range(1, 6):
        deliver(session, live(seq))
    events(session)
    deliver(session, p.ErrorReply(code=p.ERR_UNKNOWN_SESSION, message="unknown session; send hello"))
    assert sent(session) == [p.Hello(session=SID, name="alice", rooms=["#general"], last_seq={"#general": 5})]
    welcome(session)
    for seq in (8, 9, 10):  # the server holds no more than that
        deliver(session, hist(seq))
    deliver(session, end(5, 10, count=3))
    got = events(session)
    assert seqs(got) == [8, 9, 10]
    assert ev.Notice("2 message(s) in #general are no longer in history") in got


# --------------------------------------------------------------------------------------------------
# history epochs


def _welcome_epoch(session: ClientSession, epoch: str) -> None:
    deliver(session, p.Welcome(session=SID, name=session.name, motd="m", heartbeat_interval=1.0,
                               max_text_bytes=500, server_time=WALL, epoch=epoch, rid=nonce(session)))


def test_new_history_epoch_resets_sequence_numbers(clock):
    session = make_session(clock)
    session.start()
    _welcome_epoch(session, "e1")
    deliver(session, end(0, 0))
    for seq in (1, 2, 3):
        deliver(session, live(seq))
    events(session)
    sent(session)
    # the server restarts without its history: seq starts at 1 again under a new epoch
    deliver(session, p.ErrorReply(code=p.ERR_UNKNOWN_SESSION, message="who?"))
    hello = [m for m in sent(session) if isinstance(m, p.Hello)][-1]
    assert (hello.epoch, hello.last_seq) == ("e1", {"#general": 3})
    _welcome_epoch(session, "e2")
    deliver(session, end(0, 0))
    deliver(session, live(1))
    got = events(session)
    assert any(isinstance(e, ev.Notice) and "reset" in e.text for e in got)
    assert seqs(got) == [1]  # not dropped as "already seen"


def test_history_display_reply_is_not_taken_for_a_gap_fill(clock):
    session = make_session(clock)
    session.start()
    welcome(session)
    deliver(session, end(0, 0, before=0))  # empty room
    deliver(session, live(3))  # 1 and 2 were dropped: a gap request with after=0 is outstanding
    events(session)
    session.history(1)
    deliver(session, hist(3))
    deliver(session, end(0, 3, count=1, before=0))  # the /history reply: must not close the gap
    assert seqs(events(session)) == []
    deliver(session, hist(1))
    deliver(session, hist(2))
    deliver(session, end(0, 2, count=2, before=3))
    assert seqs(events(session)) == [1, 2, 3]


def test_messages_missed_in_a_room_joined_while_empty_are_not_old_talk(clock):
    session = connected(clock)  # joined #general while it was empty: last = 0
    deliver(session, p.ErrorReply(code=p.ERR_UNKNOWN_SESSION, message="who?"))  # the server restarted
    hello = [m for m in sent(session) if isinstance(m, p.Hello)][-1]
    assert hello.last_seq == {"#general": 0}  # a catch-up from 0, not a backlog
    welcome(session)
    deliver(session, hist(1))
    deliver(session, end(0, 1, count=1, before=0))
    got = [e for e in events(session) if isinstance(e, ev.Message)]
    assert [(e.seq, e.history) for e in got] == [(1, False)]


def test_a_throttled_request_is_retried_quietly_when_allowed(clock):
    session = connected(clock)
    deliver(session, live(3))  # a gap: history request sent
    assert isinstance(sent(session)[-1], p.HistoryRequest)
    deliver(session, p.ErrorReply(code=p.ERR_RATE_LIMITED, message="slow down", retry_after=0.5))
    assert events(session) == []  # nothing for the user to see
    clock.advance(0.6)
    session.tick()
    assert [type(m) for m in sent(session)] == [p.HistoryRequest]


def test_part_waits_for_the_rooms_messages_to_come_back(clock):
    session = connected(clock, rooms=("#general", "#dev"))
    session.current_room = "#dev"
    mid = session.say("last words")
    sent(session)
    session.part("#dev")
    assert session.current_room == "#general"
    assert [m for m in sent(session) if isinstance(m, p.Part)] == []  # the echo is still due
    deliver(session, p.RoomMessage(room="#dev", seq=1, ts=1.0, sender="alice", text="last words", mid=mid))
    assert [m.room for m in sent(session) if isinstance(m, p.Part)] == ["#dev"]
    assert "#dev" not in session.rooms and not session.pending
    assert (False, p.room_topic("#dev")) in session.subscriptions


# --------------------------------------------------------------------------------------------------
# message counters: resend from where the server says, and say where they start


def test_resend_from_sends_the_named_message_and_the_later_ones_again(clock):
    session = connected(clock)
    mids = [session.say(f"m{i}") for i in range(1, 5)]
    sent(session)
    deliver(session, live(1, sender="alice", mid=mids[0]))
    deliver(session, p.ErrorReply(code=p.ERR_RESEND, message="resend", mid=mids[3], resend_from=2))
    assert [m.mid for m in sent(session)] == mids[1:]
    assert [type(e) for e in events(session)] == [ev.Message]  # our echo; the resend request is quiet


def test_hello_says_where_our_unacknowledged_messages_start(clock):
    session = connected(clock)
    first = session.say("one")
    session.say("two")
    deliver(session, live(1, sender="alice", mid=first))
    sent(session)
    clock.advance(10)
    session.tick()  # lost: hello again
    hello, = [m for m in sent(session) if isinstance(m, p.Hello)]
    assert hello.unacked == 2
    fresh = make_session(clock)
    fresh.start()
    assert sent(fresh)[0].unacked == 1


def test_an_answered_hello_nonce_never_counts_again(clock):
    session = connected(clock)  # its welcome published the nonce: anyone may replay it
    used = "already-answered"
    clock.advance(10)
    session.tick()  # lost: hello again, with a fresh nonce
    for code in (p.ERR_BAD_NAME, p.ERR_NAME_TAKEN, p.ERR_NOT_AUTHORIZED):
        deliver(session, p.ErrorReply(code=code, message="replayed", rid=used))
    assert [e for e in events(session) if isinstance(e, ev.Error)] == []


def test_a_goodbye_we_did_not_ask_for_changes_nothing(clock):
    session = connected(clock)
    deliver(session, p.Goodbye(session=SID, rid="r9"))
    assert session.state == "connected" and session.foreign_replies == 1


def test_every_server_message_kind_has_a_handler_or_is_ignored_on_purpose(clock):
    from zmqchat.client.session import IGNORED

    handled = set(make_session(clock)._handlers)
    assert handled | IGNORED == set(p.server_kinds()) and not handled & IGNORED


def test_pages_of_older_talk_come_as_one_event_and_do_not_disturb_the_room(clock):
    net = Net(clock, ServerCore(ServerConfig(rate=0.0), MemoryStore(1000), clock=clock))
    alice = net.add("alice", "sa")
    for i in range(1, 61):
        alice.say(f"m{i}")
    net.pump()
    bob = net.add("bob", "sb")  # joins: the backlog (the newest 20) as old talk
    bob.events.clear()
    bob.page(before=41, limit=15)
    bob.history(3)  # a /history asked meanwhile keeps its own rows
    net.pump()
    pages = [e for e in bob.events if isinstance(e, ev.Page)]
    assert len(pages) == 1 and pages[0].before == 41 and not pages[0].start
    assert [m.seq for m in pages[0].messages] == list(range(26, 41)) and all(m.history for m in pages[0].messages)
    assert [(e.seq, e.history) for e in bob.events if isinstance(e, ev.Message)] == [(58, True), (59, True),
                                                                                     (60, True)]
    bob.events.clear()
    bob.page(before=26, limit=50)
    net.pump()
    (page,) = [e for e in bob.events if isinstance(e, ev.Page)]
    assert [m.seq for m in page.messages] == list(range(1, 26)) and page.start
    alice.say("live after paging")
    net.pump()
    assert messages(bob)[-1] == (61, "live after paging")  # the room goes on as before


def test_search_results_and_topics_reach_the_session(clock):
    net = Net(clock, ServerCore(ServerConfig(rate=0.0), MemoryStore(100), clock=clock))
    alice = net.add("alice", "sa")
    bob = net.add("bob", "sb")
    alice.say("the deploy failed")
    alice.set_topic("release Friday")
    net.pump()
    bob.search("deploy")
    net.pump()
    (results,) = [e for e in bob.events if isinstance(e, ev.SearchResults)]
    assert results.query == "deploy" and not results.more
    assert [(f.room, f.seq, f.sender, f.text, f.marks) for f in results.results] == [
        ("#general", 1, "alice", "the deploy failed", ((4, 10),))]
    assert not [e for e in alice.events if isinstance(e, ev.SearchResults)]  # only the asker's
    topic = ev.Topic("#general", "release Friday", "alice", clock.now)
    assert topic in bob.events and bob.topics["#general"] == topic
    carol = net.add("carol", "sc")
    assert carol.topics["#general"] == topic  # told on joining
    assert [e for e in carol.events if isinstance(e, ev.Topic)] == [topic]


def test_a_refused_page_does_not_swallow_the_next_one(clock):
    net = Net(clock, ServerCore(ServerConfig(rate=0.0), MemoryStore(1000), clock=clock))
    alice = net.add("alice", "sa")
    for i in range(1, 11):
        alice.say(f"m{i}")
    net.pump()
    alice.page(limit=0)  # refused: bad_request
    net.pump()
    alice.events.clear()
    alice.page(before=6, limit=3)
    net.pump()
    (page,) = [e for e in alice.events if isinstance(e, ev.Page)]
    assert [m.seq for m in page.messages] == [3, 4, 5]


def test_setting_a_topic_is_answered_by_its_publication(clock):
    net = Net(clock, ServerCore(ServerConfig(rate=0.0), MemoryStore(100), clock=clock))
    alice = net.add("alice", "sa")
    alice.set_topic("plans")
    assert any(isinstance(asked[0], p.TopicRequest) for asked in alice._asked.values())
    net.pump()
    assert not any(isinstance(asked[0], p.TopicRequest) for asked in alice._asked.values())
