"""The wire protocol without sockets: encode/decode roundtrips, every validation path, topics, names."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zmqchat import protocol as p

TOPIC = p.room_topic("#general")

CLIENT_SAMPLES: list[p.Message] = [
    p.Hello(session="s1", name="alice", rooms=["#general", "#dev"], last_seq={"#dev": 7}),
    p.Hello(session="s1", name="alice"),
    p.Say(session="s1", room="#general", text="héllo ✓ wörld", mid="s1.1"),
    p.Say(session="s1", room="#general", text="waves", mid="s1.2", action=True),
    p.Join(session="s1", room="#dev"),
    p.Join(session="s1", room="#dev", last_seq=12),
    p.Part(session="s1", room="#dev"),
    p.WhoRequest(session="s1"),
    p.WhoRequest(session="s1", room="#dev"),
    p.RoomsRequest(session="s1"),
    p.HistoryRequest(session="s1", room="#dev", after=3, before=9, limit=5),
    p.PageRequest(session="s1", room="#dev", before=40, limit=50, rid="r1"),
    p.SearchRequest(session="s1", query='deploy "it failed" fix*', sender="bob", room="#dev", limit=5),
    p.TopicRequest(session="s1", room="#dev", text="release on Friday ✓"),
    p.StatsRequest(session="s1"),
    p.Ping(session="s1"),
    p.Bye(session="s1"),
]

SERVER_SAMPLES: list[p.Message] = [
    p.Welcome(session="s1", name="alice", motd="hi", heartbeat_interval=0.5, max_text_bytes=1000,
              server_time=1700000000.25),
    p.RoomMessage(room="#general", seq=4, ts=1.5, sender="bob", text="yo \u00e9", mid="s2.9"),
    p.RoomMessage(room="#general", seq=5, ts=2.5, sender="bob", text="waves", mid="s2.10", action=True),
    p.HistoryMessage(room="#general", seq=3, ts=1.0, sender="bob", text="old", mid="s2.8"),
    p.RoomMessages(messages=[p.RoomMessage(room="#general", seq=6, ts=3.5, sender="bob", text="a", mid="s2.11"),
                             p.RoomMessage(room="#general", seq=7, ts=3.5, sender="bob", text="b ✓", mid="s2.12",
                                           action=True)]),
    p.HistoryEnd(room="#general", after=0, upto=3, count=3),
    p.PageEnd(room="#general", before=40, count=2, oldest=38, start=True, rid="r1"),
    p.SearchReply(query="deploy", results=[{"room": "#dev", "seq": 9, "ts": 1.5, "sender": "bob",
                                            "text": "deploy failed", "marks": [[0, 6]]}], more=True, rid="r2"),
    p.Topic(room="#general", text="release ✓", by="bob", ts=4.0),
    p.PresenceEvent(room="#general", name="bob", event="join", ts=3.0),
    p.Ack(mid="s1.1", room="#general", seq=4),
    p.WhoReply(rooms={"#general": ["alice", "bob"]}),
    p.RoomsReply(rooms={"#general": 2, "#dev": 1}),
    p.StatsReply(stats={"clients": 2, "messages": 10}),
    p.ErrorReply(code=p.ERR_RATE_LIMITED, message="slow down", mid="s1.3", retry_after=0.25),
    p.ErrorReply(code=p.ERR_UNKNOWN_SESSION, message="unknown session; send hello"),
    p.Goodbye(session="s1"),
    p.ServerHeartbeat(ts=10.0),
    p.Shutdown(message="bye all"),
]


def client_frames(kind: bytes, body: object) -> list[bytes]:
    return [p.VERSION, kind, json.dumps(body).encode()]


def server_frames(kind: bytes, body: object) -> list[bytes]:
    return [TOPIC, p.VERSION, kind, json.dumps(body).encode(), b"0"]


SAY = {"session": "s1", "room": "#general", "text": "hi", "mid": "s1.1"}
WELCOME = {"session": "s1", "name": "alice", "motd": "m", "heartbeat_interval": 1.0, "max_text_bytes": 10,
           "server_time": 5.0}


# --------------------------------------------------------------------------------------------------
# roundtrips


def test_samples_cover_every_kind():
    assert {type(m) for m in CLIENT_SAMPLES} == set(p._CLIENT_KINDS.values())
    assert {type(m) for m in SERVER_SAMPLES} == set(p._SERVER_KINDS.values())


@pytest.mark.parametrize("msg", CLIENT_SAMPLES, ids=lambda m: type(m).__name__)
def test_client_roundtrip(msg):
    frames = p.encode_client(msg)
    assert frames[:2] == [p.VERSION, msg.KIND]
    assert json.loads(frames[2]) == msg.body()
    assert p.decode_client(frames) == msg


@pytest.mark.parametrize("msg", SERVER_SAMPLES, ids=lambda m: type(m).__name__)
def test_server_roundtrip(msg):
    frames = p.encode_server(TOPIC, msg)
    assert frames[:3] == [TOPIC, p.VERSION, msg.KIND]
    assert json.loads(frames[3]) == msg.body()
    topic, decoded = p.decode_server(frames)
    assert topic == TOPIC
    assert decoded == msg
    assert type(decoded) is type(msg)


def test_history_message_is_a_room_message_with_its_own_kind():
    live = p.RoomMessage(room="#g", seq=1, ts=1.0, sender="a", text="t", mid="m")
    hist = p.HistoryMessage(**live.body())
    assert isinstance(hist, p.RoomMessage)
    assert hist.KIND == b"hist" and live.KIND == b"msg"
    assert p.encode_body(hist) == p.encode_body(live)  # same body: the server replays stored bytes


def test_body_is_compact_utf8_json_not_ascii_escaped():
    body = p.encode_client(p.Say(session="s1", room="#g", text="é✓", mid="m"))[2]
    assert "é✓".encode() in body
    assert b" " not in body


def test_optional_fields_default_when_absent():
    msg = p.decode_client(client_frames(b"msg", SAY))
    assert msg == p.Say(session="s1", room="#general", text="hi", mid="s1.1", action=False)
    hello = p.decode_client(client_frames(b"hello", {"session": "s1", "name": "bob"}))
    assert hello == p.Hello(session="s1", name="bob", rooms=[], last_seq={})
    join = p.decode_client(client_frames(b"join", {"session": "s1", "room": "#dev"}))
    assert join.last_seq == -1
    req = p.decode_client(client_frames(b"history", {"session": "s1", "room": "#dev"}))
    assert (req.after, req.before, req.limit) == (0, 0, 100)
    _, err = p.decode_server(server_frames(b"error", {"code": "x", "message": "y"}))
    assert (err.mid, err.retry_after) == ("", 0.0)


def test_unknown_fields_are_ignored():
    msg = p.decode_client(client_frames(b"msg", {**SAY, "colour": "red", "KIND": "evil"}))
    assert msg == p.Say(session="s1", room="#general", text="hi", mid="s1.1")
    assert msg.KIND == b"msg"


def test_int_is_accepted_for_float_and_becomes_float():
    _, msg = p.decode_server(server_frames(b"welcome", {**WELCOME, "heartbeat_interval": 2, "server_time": 7}))
    assert msg.heartbeat_interval == 2.0 and isinstance(msg.heartbeat_interval, float)
    assert isinstance(msg.server_time, float)


# --------------------------------------------------------------------------------------------------
# validation errors


@pytest.mark.parametrize("frames", [[], [p.VERSION], [p.VERSION, b"hb"], [p.VERSION, b"hb", b"{}", b""]])
def test_client_frame_count(frames):
    with pytest.raises(p.ProtocolError, match=f"expected 3 frames, got {len(frames)}"):
        p.decode_client(frames)


@pytest.mark.parametrize("count", [0, 1, 4, 6])
def test_server_frame_count(count):
    frames = [TOPIC, p.VERSION, b"hb", b'{"ts": 1}', b"0", b"extra"][:count]
    with pytest.raises(p.ProtocolError, match=f"expected 5 frames, got {count}"):
        p.decode_server(frames)


@pytest.mark.parametrize("term", [b"", b"01", b"-1", b"1.5", b" 1", b"x", b"\xff", b"9007199254740992", b"1" * 30])
def test_bad_term_frame(term):
    with pytest.raises(p.ProtocolError, match="term"):
        p.decode_server([TOPIC, p.VERSION, b"hb", b'{"ts": 1}', term])


def test_term_frame_round_trip():
    frames = p.encode_server(TOPIC, p.ServerHeartbeat(ts=1.0, role="standby"), p.term_frame(42))
    topic, msg, term = p.decode_server_term(frames)
    assert (topic, msg.role, term) == (TOPIC, "standby", 42)
    assert p.decode_server_term(p.encode_server(TOPIC, p.ServerHeartbeat(ts=1.0)))[2] == 0


@pytest.mark.parametrize("version", [b"", b"http/1.1", b"ZMQCHAT/1", b"zmqchat1", b"\xff\xfe"])
def test_bad_version(version):
    with pytest.raises(p.ProtocolError, match=r"not a zmqchat message \(bad version frame\)"):
        p.decode_client([version, b"hb", b'{"session": "s1"}'])
    with pytest.raises(p.ProtocolError, match=r"not a zmqchat message \(bad version frame\)"):
        p.decode_server([TOPIC, version, b"hb", b'{"ts": 1}', b"0"])


@pytest.mark.parametrize("version", [b"zmqchat/4", b"zmqchat/2", b"zmqchat/3.1", b"zmqchat/", b"zmqchat/1"])
def test_future_version_is_named_unsupported(version):
    with pytest.raises(p.ProtocolError, match=r"unsupported protocol version .*this is zmqchat/3"):
        p.decode_client([version, b"hb", b'{"session": "s1"}'])
    with pytest.raises(p.ProtocolError, match=r"unsupported protocol version b'zmqchat/"):
        p.decode_server([TOPIC, version, b"hb", b'{"ts": 1}', b"0"])


def test_unsupported_version_text_is_bounded():
    with pytest.raises(p.ProtocolError) as info:
        p.decode_client([b"zmqchat/" + b"9" * 10_000, b"hb", b"{}"])
    assert len(str(info.value)) < 100


@pytest.mark.parametrize("kind", [b"", b"nope", b"HELLO", b"welcome", b"hist_end", b"x" * 1000])
def test_unknown_client_kind(kind):
    with pytest.raises(p.ProtocolError, match="unknown message kind") as info:
        p.decode_client([p.VERSION, kind, b'{"session": "s1"}'])
    assert len(str(info.value)) < 80


@pytest.mark.parametrize("kind", [b"nope", b"hello", b"join", b"history"])
def test_unknown_server_kind(kind):
    with pytest.raises(p.ProtocolError, match="unknown message kind"):
        p.decode_server([TOPIC, p.VERSION, kind, b"{}", b"0"])


@pytest.mark.parametrize("body", [b"\xff", b'{"session": "s\xc3"}', b"\xed\xa0\x80"])
def test_invalid_utf8(body):
    with pytest.raises(p.ProtocolError, match="hb: body is not valid UTF-8"):
        p.decode_client([p.VERSION, b"hb", body])
    with pytest.raises(p.ProtocolError, match="hb: body is not valid UTF-8"):
        p.decode_server([TOPIC, p.VERSION, b"hb", body, b"0"])


@pytest.mark.parametrize("body", [b"", b"{", b"{'session': 's1'}", b'{"session": "s1",}', b"nul", b"{}{}"])
def test_invalid_json(body):
    with pytest.raises(p.ProtocolError, match="hb: body is not valid JSON"):
        p.decode_client([p.VERSION, b"hb", body])


@pytest.mark.parametrize("body", [b"[]", b"1", b"null", b'"session"', b"true", b'[{"session": "s1"}]'])
def test_body_must_be_an_object(body):
    with pytest.raises(p.ProtocolError, match="hb: body must be a JSON object"):
        p.decode_client([p.VERSION, b"hb", body])
    with pytest.raises(p.ProtocolError, match="hb: body must be a JSON object"):
        p.decode_server([TOPIC, p.VERSION, b"hb", body, b"0"])


@pytest.mark.parametrize("missing", ["session", "room", "text", "mid"])
def test_missing_client_field(missing):
    body = {k: v for k, v in SAY.items() if k != missing}
    with pytest.raises(p.ProtocolError, match=f"msg: missing field '{missing}'"):
        p.decode_client(client_frames(b"msg", body))


@pytest.mark.parametrize("missing", list(WELCOME))
def test_missing_server_field(missing):
    body = {k: v for k, v in WELCOME.items() if k != missing}
    with pytest.raises(p.ProtocolError, match=f"welcome: missing field '{missing}'"):
        p.decode_server(server_frames(b"welcome", body))


@pytest.mark.parametrize(("kind", "body", "field", "typ"), [
    (b"msg", {**SAY, "session": 1}, "session", "str"),
    (b"msg", {**SAY, "text": ["hi"]}, "text", "str"),
    (b"msg", {**SAY, "text": None}, "text", "str"),
    (b"msg", {**SAY, "mid": 5}, "mid", "str"),
    (b"msg", {**SAY, "action": 1}, "action", "bool"),
    (b"msg", {**SAY, "action": "yes"}, "action", "bool"),
    (b"hello", {"session": "s1", "name": "a", "rooms": "#general"}, "rooms", "list"),
    (b"hello", {"session": "s1", "name": "a", "last_seq": [1]}, "last_seq", "dict"),
    (b"join", {"session": "s1", "room": "#d", "last_seq": True}, "last_seq", "int"),
    (b"join", {"session": "s1", "room": "#d", "last_seq": 1.5}, "last_seq", "int"),
    (b"join", {"session": "s1", "room": "#d", "last_seq": "3"}, "last_seq", "int"),
    (b"history", {"session": "s1", "room": "#d", "after": False}, "after", "int"),
    (b"history", {"session": "s1", "room": "#d", "limit": 10.0}, "limit", "int"),
])
def test_wrong_client_field_type(kind, body, field, typ):
    with pytest.raises(p.ProtocolError, match=f"{kind.decode()}: field '{field}' must be {typ}"):
        p.decode_client(client_frames(kind, body))


@pytest.mark.parametrize(("kind", "body", "field", "typ"), [
    (b"welcome", {**WELCOME, "heartbeat_interval": True}, "heartbeat_interval", "float"),
    (b"welcome", {**WELCOME, "heartbeat_interval": "1"}, "heartbeat_interval", "float"),
    (b"welcome", {**WELCOME, "max_text_bytes": True}, "max_text_bytes", "int"),
    (b"welcome", {**WELCOME, "max_text_bytes": 10.0}, "max_text_bytes", "int"),
    (b"msg", {"room": "#g", "seq": True, "ts": 1.0, "sender": "a", "text": "t", "mid": "m"}, "seq", "int"),
    (b"hb", {"ts": None}, "ts", "float"),
    (b"who", {"rooms": []}, "rooms", "dict"),
    (b"error", {"code": "x", "message": "y", "retry_after": False}, "retry_after", "float"),
])
def test_wrong_server_field_type(kind, body, field, typ):
    with pytest.raises(p.ProtocolError, match=f"{kind.decode()}: field '{field}' must be {typ}"):
        p.decode_server(server_frames(kind, body))


@pytest.mark.parametrize("session", ["", "a b", "a.b", "é", "x" * 65, "s1\n", "../x"])
def test_bad_session_id(session):
    with pytest.raises(p.ProtocolError, match="invalid session id"):
        p.decode_client(client_frames(b"hb", {"session": session}))


def test_session_id_limits_accepted():
    assert p.decode_client(client_frames(b"hb", {"session": "x" * 64})).session == "x" * 64
    assert p.decode_client(client_frames(b"hb", {"session": "A-z_0"})).session == "A-z_0"


@pytest.mark.parametrize("mid", ["", "m" * 97, "m1", "s1.", "s1.0", "s1.01", "s1.-1", "s2.1", "s1.1.1", ".1",
                                 "s1.x", "s1.9007199254740992", "s1.99999999999999999", "s1. 1", "s1.１"])
def test_bad_mid(mid):
    with pytest.raises(p.ProtocolError, match="invalid message id"):
        p.decode_client(client_frames(b"msg", {**SAY, "mid": mid}))


def test_mid_limits_accepted():
    session = "x" * 64
    for n in (1, 9, 10, p.MAX_SAFE_INT):
        body = {**SAY, "session": session, "mid": f"{session}.{n}"}
        assert p.decode_client(client_frames(b"msg", body)).mid == f"{session}.{n}"
    assert p.mid_counter(f"{session}.{p.MAX_SAFE_INT}", session) == p.MAX_SAFE_INT
    assert p.mid_counter("s1.7", "s1") == 7 and p.mid_counter("s1.7", "s") is None


# every integer field of every kind, at and just past its documented bounds
INT_FIELDS = [(cls, name, lo, hi) for cls in [*p._CLIENT_KINDS.values(), *p._SERVER_KINDS.values()]
              for name, typ, _req, lo, hi in p._field_types(cls) if typ is int]


@pytest.mark.parametrize(("cls", "name", "lo", "hi"), INT_FIELDS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_integer_field_is_range_checked(cls, name, lo, hi):
    sample = next(m for m in CLIENT_SAMPLES + SERVER_SAMPLES if type(m) is cls)
    is_client = sample in CLIENT_SAMPLES

    def decode(value):
        body = json.dumps({**sample.body(), name: value}).encode()
        if is_client:
            return p.decode_client([p.VERSION, cls.KIND, body])
        return p.decode_server([TOPIC, p.VERSION, cls.KIND, body, b"0"])[1]

    assert hi <= p.MAX_SAFE_INT and lo >= -1
    for good in (lo, hi):
        assert getattr(decode(good), name) == good
    for bad in (lo - 1, hi + 1, 2**64, -(2**64)):
        with pytest.raises(p.ProtocolError, match="out of range"):
            decode(bad)


@pytest.mark.parametrize("raw", [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity"])
def test_floats_are_finite(raw):
    body = b'{"ts": ' + raw + b"}"
    with pytest.raises(p.ProtocolError):
        p.decode_server([TOPIC, p.VERSION, b"hb", body, b"0"])


@pytest.mark.parametrize(("kind", "body"), [
    (b"hello", {"session": "s1", "name": "a", "last_seq": {"#a": -1}}),
    (b"hello", {"session": "s1", "name": "a", "last_seq": {"#a": 2**53}}),
    (b"hello", {"session": "s1", "name": "a", "last_seq": {"#a": "7"}}),
    (b"hello", {"session": "s1", "name": "a", "last_seq": {"#a": True}}),
    (b"hello", {"session": "s1", "name": "a", "last_seq": {"#a": 1.5}}),
    (b"hello", {"session": "s1", "name": "a", "rid": "no spaces"}),
    (b"hello", {"session": "s1", "name": "a", "rid": "r" * 65}),
    (b"hello", {"session": "s1", "name": "a", "unacked": 0}),
])
def test_nested_numbers_and_request_ids_are_checked(kind, body):
    with pytest.raises(p.ProtocolError):
        p.decode_client(client_frames(kind, body))


def test_server_side_nested_numbers_are_checked():
    for body in ({"ts": 1.0, "seqs": {"#a": 2**53}}, {"ts": 1.0, "seqs": {"#a": -1}}):
        with pytest.raises(p.ProtocolError):
            p.decode_server(server_frames(b"hb", body))
    end = {"room": "#a", "after": 0, "upto": 9, "count": 0}
    for lost in ([[0, 3]], [[5, 4]], [[1]], [[1, 2**53]], [["1", 2]], [1, 2]):
        with pytest.raises(p.ProtocolError):
            p.decode_server(server_frames(b"hist_end", {**end, "lost": lost}))
    assert p.decode_server(server_frames(b"hist_end", {**end, "lost": [[2, 5]]}))[1].lost == [[2, 5]]


def test_deeply_nested_json_is_a_protocol_error():
    # 50 kB: passes the 64 kB MAXMSGSIZE, so any peer can send it
    body = b'{"session": "s1", "x": ' + b"[" * 50_000 + b"}"
    with pytest.raises(p.ProtocolError):
        p.decode_client([p.VERSION, b"hb", body])


def test_deeply_nested_json_is_a_protocol_error_on_the_client_side():
    with pytest.raises(p.ProtocolError):
        p.decode_server([TOPIC, p.VERSION, b"hb", b"[" * 50_000, b"0"])


def test_huge_integer_is_a_protocol_error():
    with pytest.raises(p.ProtocolError, match="not valid JSON"):
        p.decode_client([p.VERSION, b"join", b'{"session": "s1", "room": "#d", "last_seq": ' + b"9" * 5000 + b"}"])


# --------------------------------------------------------------------------------------------------
# topics, names, rooms


def test_topics_are_terminated():
    assert p.room_topic("#dev") == b"room:#dev\x00"
    assert p.session_topic("abc") == b"sess:abc\x00"
    assert p.ALL_TOPIC == b"all:\x00"
    for topic in (p.room_topic("#dev"), p.session_topic("abc"), p.ALL_TOPIC):
        assert topic.endswith(p.TOPIC_END)


def test_room_topic_is_not_a_prefix_of_a_longer_room():
    dev, devops = p.room_topic("#dev"), p.room_topic("#devops")
    assert not devops.startswith(dev)
    assert not p.room_topic("#dev.ops").startswith(dev)
    assert not p.session_topic("ab12").startswith(p.session_topic("ab1"))
    assert dev.startswith(dev)


def test_topic_families_do_not_overlap():
    topics = [p.room_topic("#all"), p.session_topic("all"), p.ALL_TOPIC, p.room_topic("#sess")]
    for a in topics:
        for b in topics:
            assert a == b or not b.startswith(a)


@pytest.mark.parametrize("name", ["alice", "Bob_2", "x", "n" * 32, "Zoë", "a-b.c", "李"])
def test_good_names(name):
    assert p.name_problem(name) is None


@pytest.mark.parametrize(("name", "why"), [
    ("", "name must not be empty"),
    ("n" * 33, "name is longer than 32 characters"),
    ("a b", "name must be printable, without spaces"),
    ("a\tb", "name must be printable, without spaces"),
    ("ab\u00a0", "name must be printable, without spaces"),
    ("bell\x07", "name must be printable, without spaces"),
    ("esc\x1b[31m", "name must be printable, without spaces"),
    ("#alice", "name must not start with '#', '/' or '@'"),
    ("/quit", "name must not start with '#', '/' or '@'"),
    ("@bob", "name must not start with '#', '/' or '@'"),
])
def test_bad_names(name, why):
    assert p.name_problem(name) == why


@pytest.mark.parametrize("room", ["#general", "#a", "#dev.ops-2_x", "#" + "r" * 47, "#UPPER"])
def test_good_rooms(room):
    assert p.room_problem(room) is None


@pytest.mark.parametrize("room", ["", "#", "general", "#" + "r" * 48, "#dev ops", "#dév", "#dev\n", "##",
                                  "#a/b", " #dev"])
def test_bad_rooms(room):
    assert p.room_problem(room) == f"invalid room {room!r}: '#' then 1-47 of A-Z a-z 0-9 _ . -"


@pytest.mark.parametrize(("given", "room"), [("dev", "#dev"), ("#dev", "#dev"), ("  #dev ", "#dev"), (" x", "#x")])
def test_normalise_room(given, room):
    assert p.normalise_room(given) == room


# --------------------------------------------------------------------------------------------------
# properties: decode returns a message or raises ProtocolError, nothing else

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
frames_lists = st.lists(st.binary(max_size=64), max_size=6)
versions = st.sampled_from([p.VERSION, b"zmqchat/2", b"", b"junk"]) | st.binary(max_size=12)
client_kinds = st.sampled_from(sorted(p._CLIENT_KINDS) + [b"bogus"])
server_kinds = st.sampled_from(sorted(p._SERVER_KINDS) + [b"bogus"])
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_client(frames: list[bytes]) -> None:
    try:
        msg = p.decode_client(frames)
    except p.ProtocolError:
        return
    assert isinstance(msg, p.Message)
    assert p.decode_client(p.encode_client(msg)) == msg


def _check_server(frames: list[bytes]) -> None:
    try:
        topic, msg = p.decode_server(frames)
    except p.ProtocolError:
        return
    assert topic == frames[0]
    assert p.decode_server(p.encode_server(topic, msg)) == (topic, msg)


@FAST
@given(frames_lists)
@example([p.VERSION, b"msg", b"{}"])
@example([b"t", p.VERSION, b"msg", b"{}"])
def test_decode_arbitrary_frames(frames):
    _check_client(frames)
    _check_server(frames)


@FAST
@given(versions, client_kinds, st.binary(max_size=200))
def test_decode_client_arbitrary_body(version, kind, body):
    _check_client([version, kind, body])


@FAST
@given(versions, server_kinds, st.binary(max_size=200))
def test_decode_server_arbitrary_body(version, kind, body):
    _check_server([TOPIC, version, kind, body, b"0"])


@FAST
@given(st.sampled_from(CLIENT_SAMPLES), st.dictionaries(st.text(max_size=12), json_values, max_size=4),
       st.lists(st.sampled_from(["session", "room", "text", "mid", "name", "rooms", "last_seq", "after",
                                 "before", "limit", "action"]), max_size=3))
def test_decode_client_mutated_fields(msg, changes, dropped):
    body = {**msg.body(), **changes}
    for name in dropped:
        body.pop(name, None)
    frames = [p.VERSION, msg.KIND, json.dumps(body).encode()]
    try:
        decoded = p.decode_client(frames)
    except p.ProtocolError:
        return
    # whatever passes has the declared types (bool never standing in for a number)
    for f, typ, _required, lo, hi in p._field_types(type(decoded)):
        value = getattr(decoded, f)
        assert isinstance(value, typ) and (typ is bool or not isinstance(value, bool))
        if typ in (int, float):
            assert lo <= value <= hi


@FAST
@given(st.sampled_from(SERVER_SAMPLES), st.dictionaries(st.text(max_size=12), json_values, max_size=4))
def test_decode_server_mutated_fields(msg, changes):
    frames = [TOPIC, p.VERSION, msg.KIND, json.dumps({**msg.body(), **changes}).encode(), b"0"]
    _check_server(frames)


@FAST
@given(st.sampled_from(CLIENT_SAMPLES + SERVER_SAMPLES), st.data())
def test_decode_byte_mutations(msg, data):
    is_client = msg in CLIENT_SAMPLES
    frames = p.encode_client(msg) if is_client else p.encode_server(TOPIC, msg)
    index = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[index])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] ^= data.draw(st.integers(1, 255))
        elif op == "delete" and frame:
            del frame[pos]
        elif op == "insert":
            frame.insert(pos, data.draw(st.integers(0, 255)))
        else:
            del frame[pos:]
    frames[index] = bytes(frame)
    (_check_client if is_client else _check_server)(frames)


def _outcome(build, cls, raw: bytes):
    try:
        return build(cls, raw)
    except p.ProtocolError as exc:
        return ("refused", str(exc))


def _same_either_way(cls, raw: bytes) -> None:
    """The msgspec way and the hand-checked way agree: the same message, or the same refusal."""
    fast, checked = _outcome(p._build, cls, raw), _outcome(p._build_checked, cls, raw)
    assert fast == checked
    if not isinstance(fast, tuple):
        assert type(fast) is cls and all(type(getattr(fast, f)) is typ for f, typ, *_ in p._field_types(cls))


ALL_SAMPLES = CLIENT_SAMPLES + SERVER_SAMPLES


@FAST
@given(st.sampled_from(ALL_SAMPLES), st.dictionaries(st.sampled_from(
    ["session", "room", "text", "mid", "name", "rid", "last_seq", "after", "before", "limit", "action", "seq", "ts",
     "sender", "retry_after", "resend_from", "x"]), json_values, max_size=4),
    st.lists(st.sampled_from(["session", "room", "text", "mid", "name", "rid", "seq", "limit"]), max_size=2),
    st.booleans())
@example(CLIENT_SAMPLES[0], {"text": "x\ud800"}, [], True)
@example(CLIENT_SAMPLES[0], {"rid": "not a rid!"}, [], False)
def test_the_fast_decoder_agrees_with_the_checked_one(msg, changes, dropped, ascii_only):
    body = {**msg.body(), **changes}
    for name in dropped:
        body.pop(name, None)
    _same_either_way(type(msg), json.dumps(body, ensure_ascii=ascii_only).encode())


@FAST
@given(st.sampled_from(ALL_SAMPLES), st.data())
def test_the_fast_decoder_agrees_on_damaged_bytes(msg, data):
    raw = bytearray(p.encode_body(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "duplicate"]))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "delete" and raw:
            del raw[pos]
        elif op == "insert":
            raw[pos:pos] = data.draw(st.sampled_from([b"\\", b'"', b",", b"\xff", b"\\ud800", b" ", b"1e999", b"[", b"}"]))
        else:  # a key given twice: both ways take the last
            raw[1:1] = b'"text":"first","seq":1,"session":"s0",'
    _same_either_way(type(msg), bytes(raw))


@FAST
@given(st.lists(st.dictionaries(st.sampled_from(["room", "seq", "ts", "sender", "text", "mid", "action", "x"]),
                                json_values, max_size=3), max_size=4), st.booleans())
def test_the_fast_decoder_agrees_on_batches(changes, ascii_only):
    # a msgs body: each message checked as a RoomMessage either way, one bad one refuses the batch
    good = p.RoomMessage(room="#a", seq=1, ts=1.5, sender="alice", text="hi", mid="s.1").body()
    body = {"messages": [{**good, **change} for change in changes]}
    _same_either_way(p.RoomMessages, json.dumps(body, ensure_ascii=ascii_only).encode())


def test_the_fast_decoder_serves_the_plain_kinds():
    # every client kind but those with lists or maps is decoded by msgspec (the server's hot path)
    assert p._fast_decoder(p.Say)[0] is not None and p._fast_decoder(p.RoomMessages)[0] is not None
    plain = [cls for cls in p._CLIENT_KINDS.values() if p._fast_decoder(cls)[0] is not None]
    assert len(plain) >= len(p._CLIENT_KINDS) // 2


@pytest.mark.parametrize("field", ["text", "mid", "room"])
def test_lone_surrogates_are_a_protocol_error(field):
    # valid JSON, but no UTF-8 encoder accepts "\ud800": it must not reach code that encodes it
    body = {"session": "s1", "room": "#general", "text": "hi", "mid": "s1.1", field: "x\ud800"}
    raw = json.dumps(body).encode()
    with pytest.raises(p.ProtocolError, match="not valid Unicode"):
        p.decode_client([p.VERSION, b"msg", raw])


@given(room=st.text(max_size=48), seq=st.integers(0, p.MAX_SAFE_INT),
       ts=st.floats(min_value=0, max_value=4e9, allow_nan=False), sender=st.text(max_size=32),
       text=st.text(max_size=200), mid=st.text(max_size=96), action=st.booleans())
@example(room="#général", seq=1, ts=1.5, sender='"q"', text="\x00\u2028\\", mid="s.1", action=True)
def test_the_servers_fast_room_message_body_is_the_encoders_byte_for_byte(room, seq, ts, sender, text, mid, action):
    fast = p.room_message_body(room, seq, ts, sender, text, mid, action)
    assert fast == p.encode_body(p.RoomMessage(room=room, seq=seq, ts=ts, sender=sender, text=text, mid=mid,
                                               action=action))


@pytest.mark.parametrize("result", [
    "not an object",
    {"room": "#dev", "seq": 9, "ts": 1.5, "sender": "bob", "text": "x"},  # no marks
    {"room": "#dev", "seq": -1, "ts": 1.5, "sender": "bob", "text": "x", "marks": []},
    {"room": "#dev", "seq": 9, "ts": 1.5, "sender": 7, "text": "x", "marks": []},
    {"room": "#dev", "seq": 9, "ts": 1.5, "sender": "bob", "text": "x", "marks": [[0, 2]]},  # past the text
    {"room": "#dev", "seq": 9, "ts": 1.5, "sender": "bob", "text": "xy", "marks": [[1, 1]]},  # empty mark
    {"room": "#dev", "seq": 9, "ts": 1.5, "sender": "bob", "text": "xy", "marks": [[True, 2]]},
])
def test_a_malformed_search_result_is_refused(result):
    with pytest.raises(p.ProtocolError, match="result"):
        p.decode_server(server_frames(b"found", {"query": "q", "results": [result]}))


def test_too_many_search_results_are_refused():
    one = {"room": "#dev", "seq": 9, "ts": 1.5, "sender": "bob", "text": "x", "marks": []}
    with pytest.raises(p.ProtocolError, match="too many"):
        p.decode_server(server_frames(b"found", {"query": "q", "results": [one] * (p.MAX_SEARCH_RESULTS + 1)}))



@pytest.mark.parametrize(("messages", "why"), [
    ("not a list", "must be list"),
    (["x"], "each message must be an object"),
    ([{"room": "#a", "seq": 1}], "missing field"),
    ([{"room": "#a", "seq": -1, "ts": 1.0, "sender": "b", "text": "t", "mid": "m"}], "out of range"),
])
def test_a_malformed_msgs_publication_is_refused(messages, why):
    with pytest.raises(p.ProtocolError, match=why):
        p.decode_server(server_frames(b"msgs", {"messages": messages}))


def test_msgs_body_is_the_message_bodies_in_a_list():
    bodies = [p.room_message_body("#a", n, 1.0, "bob", f"t{n}", f"s.{n}", False) for n in (1, 2)]
    body = p.room_messages_body(bodies)
    assert json.loads(body) == {"messages": [json.loads(b) for b in bodies]}


@given(st.text(alphabet="0123456789²٣.x", max_size=20))
@example("0")
@example("1" * 16)
@example("1" * 17)
def test_mid_counter_reads_what_counter_re_admits(tail):
    expected = int(tail) if p.COUNTER_RE.fullmatch(tail) and int(tail) <= p.MAX_SAFE_INT else None
    assert p.mid_counter(f"s1.{tail}", "s1") == expected


def test_an_integer_too_big_for_a_float_field_is_a_protocol_error():
    # 400 digits: under the 4,300 of Python's int parsing, over what a float holds
    body = json.dumps({"room": "#a", "seq": 1, "ts": int("9" * 400), "sender": "a", "text": "x", "mid": "s.1"})
    with pytest.raises(p.ProtocolError, match="out of range"):
        p.decode_server([TOPIC, p.VERSION, b"msg", body.encode(), b"0"])
