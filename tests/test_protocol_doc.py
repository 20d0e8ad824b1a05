"""docs/protocol.md's worked examples, rebuilt from the real encoder, byte for byte.

Section 15 of the doc is a run of fenced blocks. This module builds the same blocks from messages (and,
for the errors, the stats reply, pages, searches, topics and a pair's takeover, from what a real
``ServerCore`` over a ``MemoryStore`` answers), renders them the way the doc writes frames, and compares the
doc's text with them exactly, lengths included. When the wire changes, a test here fails and its diff is the
new block to paste into the doc.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from zmqchat import protocol as p
from zmqchat.server import pair
from zmqchat.server.core import DEFAULT_MOTD, ServerConfig, ServerCore
from zmqchat.server.pair import standby_beat
from zmqchat.server.store import MemoryStore, StoreError

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

SID = "3f9c2a7d1b4e8f60"  # the example client's session id
OTHER = "b81d0c5e2a9f4736"  # another client's session
EPOCH = "9b1e4c07d2a85f36"  # the server's history epoch
NONCE = "5e0b9d2c41a7f368"  # the rid of the first hello
NONCE2 = "c7a14f9e03d5b862"  # the rid of a later hello
KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # a CURVE public key, Z85 (40 characters)
T0 = 1763935569.0  # the server's clock in the examples
SESS = p.session_topic(SID)
GENERAL = p.room_topic("#general")
TEXT = "h\u00e9llo \u2713"  # héllo ✓


def mid(n: int) -> str:
    return f"{SID}.{n}"


# --------------------------------------------------------------------------------------------------
# how the doc writes things


def show(data: bytes) -> str:
    """Bytes as the doc writes them: printable ASCII as is (a backslash doubled), any other byte \\xNN."""
    return "".join("\\\\" if b == 0x5C else chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in data)


def hex_of(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def frame_line(index: int, frame: bytes) -> str:
    """One frame: its index, its length in bytes, its content."""
    return f"[{index}] {len(frame):3d}  {show(frame)}"


def body_index(frames: list[bytes]) -> int:
    """Where the body is: frame 2 of a client message (3 frames), frame 3 of a server one (5: the term last)."""
    return 2 if len(frames) == 3 else 3


def body_of(frames: list[bytes]) -> bytes:
    return frames[body_index(frames)]


def whole_message(messages: list[list[bytes]]) -> list[str]:
    """Every frame of one message."""
    (frames,) = messages
    return [frame_line(i, frame) for i, frame in enumerate(frames)]


def body_lines(messages: list[list[bytes]]) -> list[str]:
    """Only the body of each message."""
    return [frame_line(body_index(frames), body_of(frames)) for frames in messages]


def client(msg: p.Message) -> list[bytes]:
    return p.encode_client(msg)


def server(topic: bytes, msg: p.Message) -> list[bytes]:
    return p.encode_server(topic, msg)


def label_of(frames: list[bytes]) -> str:
    """``kind (topic)`` for a server message, ``client kind`` for a client one."""
    if len(frames) == 3:
        return f"client {frames[1].decode()}"
    topic = frames[0]
    short = "all:" if topic == p.ALL_TOPIC else topic[: topic.index(b":")].decode()
    return f"{frames[2].decode():<9}({short})"


def other_line(frames: list[bytes]) -> str:
    """``kind (topic)  length  body`` for a server message, ``client kind  length  body`` for a client one."""
    return f"{label_of(frames):<17}{len(body_of(frames)):4d}  {show(body_of(frames))}"


def other_lines(messages: list[list[bytes]]) -> list[str]:
    return [other_line(frames) for frames in messages]


def term_lines(messages: list[list[bytes]]) -> list[str]:
    """Like ``other_lines``, with the term frame of each server message after its label (blank for a client's)."""
    lines = []
    for frames in messages:
        term = "" if len(frames) == 3 else f"term {frames[4].decode()}"
        lines.append(f"{label_of(frames):<17}{term:<8}{len(body_of(frames)):4d}  {show(body_of(frames))}")
    return lines


def zmtp_lines(messages: list[list[bytes]]) -> list[str]:
    """Each frame of one message as a ZMTP 3 short frame: flags (0x01 more, 0x00 last), a 1-byte length,
    the content."""
    (frames,) = messages
    lines = []
    for i, frame in enumerate(frames):
        more = i < len(frames) - 1
        raw = bytes([1 if more else 0, len(frame)]) + frame
        chunks = [raw[j:j + 17] for j in range(0, len(raw), 17)]
        note = f"{'MORE' if more else 'LAST'}, {len(frame):2d} bytes  {show(frame)}"
        lines.append(f"{hex_of(chunks[0]):<52}  {note}")
        lines.extend(f"      {hex_of(chunk)}" for chunk in chunks[1:])
    return lines


# --------------------------------------------------------------------------------------------------
# what the server really says


def new_core() -> ServerCore:
    return ServerCore(ServerConfig(), MemoryStore(100), clock=lambda: T0)


def answers(core: ServerCore, msg: p.Message, key: str | None = None, bound_name: str | None = None,
            kind: bytes = p.ErrorReply.KIND) -> list[list[bytes]]:
    """What ``core`` publishes on SID's topic, of ``kind``, in answer to ``msg``."""
    core.receive(p.encode_client(msg), key, bound_name)
    return [f for f in core.flush() if f[0] == SESS and f[2] == kind]


def say(n: int, text: str = "hi", room: str = "#general") -> p.Say:
    return p.Say(session=SID, room=room, text=text, mid=mid(n))


def hello(**fields) -> p.Hello:
    return p.Hello(**{"session": SID, "name": "alice", "rooms": ["#general"], "rid": NONCE, **fields})


def first_refusal(make: Callable[[int], p.Message]) -> list[bytes]:
    """The first error that a run of ``make(1)``, ``make(2)``, ... sent at one instant gets (a bucket ran dry)."""
    core = new_core()
    answers(core, hello())
    for n in range(1, 1000):
        errors = answers(core, make(n))
        if errors:
            return errors[0]
    raise AssertionError("never refused")


def error_after(setup: list[p.Message], msg: p.Message, key: str | None = None,
                bound_name: str | None = None) -> list[bytes]:
    core = new_core()
    for earlier in setup:
        core.receive(p.encode_client(earlier), key)
    core.flush()
    (error,) = answers(core, msg, key, bound_name)
    return error


def server_busy() -> list[bytes]:
    core = new_core()
    for i in range(5000):  # the burst of new sessions, server-wide
        core.receive(p.encode_client(p.Hello(session=f"x{i}", name=f"u{i}")))
    core.flush()
    (error,) = answers(core, hello())
    return error


def work_busy() -> list[bytes]:
    """The first "busy": history pages (browsing) until the server-wide work budget's share for them is spent."""
    core = ServerCore(ServerConfig(rate=0), MemoryStore(1000), clock=lambda: T0)
    answers(core, hello())
    for n in range(1, 1001):
        core.receive(p.encode_client(say(n)))
    core.flush()
    for n in range(10):
        errors = answers(core, p.HistoryRequest(session=SID, room="#general", limit=1000, rid=f"r{n}"))
        if errors:
            return errors[0]
    raise AssertionError("never busy")


def revoked() -> list[bytes]:
    core = new_core()
    answers(core, hello(), key=KEY, bound_name="alice")
    core.revoke(set())
    (error,) = [f for f in core.flush() if f[0] == SESS and f[2] == p.ErrorReply.KIND]
    return error


def too_long_on_the_wire() -> list[bytes]:
    # Within max_text_bytes, but JSON writes U+0001 as \u0001 (6 bytes): 65540 bytes on the wire, and
    # every frame within MAXMSGSIZE, so it reaches the server's rules.
    text = "\x01" * 10904 + "x" * 4
    frames = client(say(9, text))
    assert len(text.encode()) <= p.DEFAULT_MAX_TEXT_BYTES
    assert max(map(len, frames)) <= p.DEFAULT_MAX_MESSAGE_BYTES < sum(map(len, frames))
    return error_after([hello(unacked=9)], say(9, text))


def stats_reply() -> list[bytes]:
    core = new_core()
    answers(core, hello())
    (reply,) = answers(core, p.StatsRequest(session=SID, rid="r5"), kind=p.StatsReply.KIND)
    return reply


# pages, searches and topics: alice (SID) and bob (OTHER) in #general, after these four messages
TALK = ((SID, "the build failed on staging"), (OTHER, "Build FAILED again, see staging-2"),
        (SID, "caf\u00e9 at noon?"), (OTHER, "Caf\u00e9 is closed, try the deli"))


class BrokenIndex(MemoryStore):
    """A store whose search index cannot be read (what a SqliteStore says once its index failed)."""

    def search(self, terms, sender, room, limit):
        raise StoreError("search index: disk I/O error")


def chat_core(store: MemoryStore | None = None, **config) -> ServerCore:
    """A core (over ``store``, a fresh MemoryStore by default) in which alice and bob have said TALK."""
    core = ServerCore(ServerConfig(**config), store or MemoryStore(100), clock=lambda: T0)
    for session, name in ((SID, "alice"), (OTHER, "bob")):
        core.receive(client(p.Hello(session=session, name=name, rooms=["#general"])))
    counters: dict[str, int] = {}
    for session, text in TALK:
        counters[session] = counters.get(session, 0) + 1
        core.receive(client(p.Say(session=session, room="#general", text=text, mid=f"{session}.{counters[session]}")))
    core.flush()
    return core


def exchange(core: ServerCore, *requests: p.Message) -> list[list[bytes]]:
    """Each request, then what ``core`` publishes for it on SID's session topic and on #general's topic."""
    out = []
    for msg in requests:
        frames = client(msg)
        core.receive(frames)
        out += [frames, *(f for f in core.flush() if f[0] in (SESS, GENERAL))]
    return out


def refused(msg: p.Message, core: ServerCore | None = None) -> list[bytes]:
    """The error ``msg`` gets from ``core`` (by default a fresh ``chat_core``)."""
    (error,) = answers(core or chat_core(), msg)
    return error


def topic_locked() -> list[bytes]:
    """With --topic-lock, alice changing the topic that bob set first."""
    core = chat_core(topic_lock=True)
    core.receive(client(p.TopicRequest(session=OTHER, room="#general", text="bob's room")))
    core.flush()
    return refused(p.TopicRequest(session=SID, room="#general", text="mine now", rid="r22"), core)


# a pair: the active A (term 3) dies, the standby B takes over (term 4) on alice's hello, her vote
ACTIVE_AT = "10.0.0.1:4444"  # A, as B names it (B's --peer)
PAIR = ServerConfig(heartbeat_interval=0.5)  # a pair's servers beat every 0.5 s


def not_active(msg: p.Hello, active: str, term: int) -> list[bytes]:
    """A standby's answer to a hello, naming the active when it knows it (what ``PairServer`` sends)."""
    return pair.not_active(msg.session, msg.rid, pair.STANDBY, active, term)


def takeover() -> list[list[bytes]]:
    """Alice first says hello to the standby B and is sent to A; on A (term 3) she says messages 1 to 42, and
    the echo of 42 is lost with A. Her hello to B is her vote: B, holding A's store (replicated: the same
    epoch, messages and message counters), is active in term 4, and her resent 42 counts once."""
    first = hello()
    out = [client(first), not_active(first, ACTIVE_AT, 3)]
    store = MemoryStore(100)
    store.epoch = EPOCH
    a = ServerCore(PAIR, store, clock=lambda: T0, term=3, role="active")
    a.receive(client(hello()))
    for n in range(1, 43):
        a.receive(client(say(n)))
    a.flush()
    a.tick()
    out += [f for f in a.flush() if f[0] == p.ALL_TOPIC] + [standby_beat(T0 + 0.25, 3)]  # the SUB hears both
    b = ServerCore(PAIR, store, clock=lambda: T0 + 2.0, term=4, role="active")  # B's store is A's, replicated
    vote = hello(last_seq={"#general": 41}, epoch=EPOCH, rid=NONCE2, unacked=42, term=3, vote=True)
    for msg in (vote, say(42)):
        out.append(client(msg))
        b.receive(client(msg))
        out += [f for f in b.flush() if f[0] in (SESS, GENERAL)]
    b.tick()
    return out + [f for f in b.flush() if f[0] == p.ALL_TOPIC]


def page(before: int, limit: int, rid: str) -> p.PageRequest:
    return p.PageRequest(session=SID, room="#general", before=before, limit=limit, rid=rid)


def find(query: str, rid: str, **fields) -> p.SearchRequest:
    return p.SearchRequest(session=SID, query=query, rid=rid, **fields)


def topic(text: str, rid: str, room: str = "#general") -> p.TopicRequest:
    return p.TopicRequest(session=SID, room=room, text=text, rid=rid)


# --------------------------------------------------------------------------------------------------
# the examples, in the order of section 15


def hist_end(**fields) -> list[bytes]:
    return server(SESS, p.HistoryEnd(room="#general", **fields))


def live_message() -> p.RoomMessage:
    return p.RoomMessage(room="#general", seq=42, ts=T0 + 0.25, sender="alice", text=TEXT, mid=mid(1))


@functools.cache
def examples() -> dict[str, tuple[Callable[[list[list[bytes]]], list[str]], list[list[bytes]]]]:
    """Section 15's blocks, by name, in order: how each is written, and the messages it shows (encoded)."""
    whole, bodies = whole_message, body_lines
    return {
        "first hello": (whole, [client(hello(last_seq={}, epoch="", unacked=1))]),
        "welcome": (whole, [server(SESS, p.Welcome(
            session=SID, name="alice", motd=DEFAULT_MOTD, heartbeat_interval=1.0,
            max_text_bytes=p.DEFAULT_MAX_TEXT_BYTES, server_time=T0 + 0.125, epoch=EPOCH,
            max_message_bytes=p.DEFAULT_MAX_MESSAGE_BYTES, rid=NONCE))]),
        "hello again": (whole, [client(hello(rooms=["#general", "#dev"], last_seq={"#general": 41, "#dev": 0},
                                             epoch=EPOCH, rid=NONCE2, unacked=1))]),
        "msg": (whole, [client(say(1, TEXT))]),
        "live msg": (whole, [server(GENERAL, live_message())]),
        "live msgs": (whole, [server(GENERAL, p.RoomMessages(messages=[
            live_message(), p.RoomMessage(room="#general", seq=43, ts=T0 + 0.25, sender="bob", text="hi",
                                          mid="7e1d0c9b8a6f5e42.9")]))]),
        "hist": (whole, [server(SESS, p.HistoryMessage(**live_message().body()))]),
        "backlog hist_end": (whole, [hist_end(after=0, upto=42, count=20, newest=42)]),
        "catch-up hist_end": (bodies, [hist_end(after=41, upto=42, count=1, newest=42)]),
        "gap fill": (bodies, [
            client(p.HistoryRequest(session=SID, room="#general", after=42, before=47, limit=4)),
            hist_end(after=42, upto=46, count=2, newest=47, before=47, lost=[[44, 45]])]),
        "rate_limited": (whole, [first_refusal(say)]),  # the burst is 60 messages
        "errors": (bodies, [
            error_after([hello(), *(say(n) for n in range(1, 5))], say(6)),  # resend
            error_after([], p.Ping(session=SID)),  # unknown_session
            first_refusal(lambda n: p.HistoryRequest(session=SID, room="#general", limit=1000, rid=f"r{n}")),
            server_busy(),
            work_busy(),
            error_after([p.Hello(session=OTHER, name="alice")], hello()),  # name_taken
            error_after([], hello(name="alicia"), key=KEY, bound_name="alice"),  # not_authorised
            revoked(),
            error_after([hello(unacked=5)], say(5, "   ")),  # empty
            error_after([hello(unacked=9)], say(9, "x" * (p.DEFAULT_MAX_TEXT_BYTES + 1))),  # too_long (text)
            too_long_on_the_wire(),
            error_after([hello(unacked=3)], say(3, room="#dev")),  # not_in_room
            error_after([hello()], p.Join(session=SID, room="dev", rid="r1")),  # bad_room
            error_after([hello()], p.HistoryRequest(session=SID, room="#general", limit=0, rid="r7")),
        ]),
        "other messages": (other_lines, [
            client(p.Join(session=SID, room="#dev", rid="r1")),
            server(SESS, p.HistoryEnd(room="#dev", after=0, upto=0, count=0, newest=0, rid="r1")),
            server(p.room_topic("#dev"), p.PresenceEvent(room="#dev", name="alice", event="join", ts=T0 + 0.126)),
            client(p.Part(session=SID, room="#dev", rid="r2")),
            client(p.WhoRequest(session=SID, room="#general", rid="r3")),
            server(SESS, p.WhoReply(rooms={"#general": ["alice", "bob"]}, rid="r3")),
            client(p.RoomsRequest(session=SID, rid="r4")),
            server(SESS, p.RoomsReply(rooms={"#dev": 1, "#general": 2}, rid="r4")),
            client(p.StatsRequest(session=SID, rid="r5")),
            stats_reply(),
            client(p.HistoryRequest(session=SID, room="#general", after=0, before=0, limit=20, rid="r6")),
            server(SESS, p.Ack(mid=mid(1), room="#general", seq=42)),
            server(SESS, p.Ack(mid=mid(1), room="", seq=0)),
            server(p.ALL_TOPIC, p.ServerHeartbeat(ts=T0 + 1.0, seqs={"#general": 42})),
            client(p.Ping(session=SID)),
            client(p.Bye(session=SID, rid="r7")),
            server(SESS, p.Goodbye(session=SID, rid="r7")),
            server(p.ALL_TOPIC, p.Shutdown(message="server shutting down")),
        ]),
        "page": (other_lines, exchange(chat_core(), page(4, 2, "r8"), page(2, 2, "r9"))),
        "search": (other_lines, exchange(chat_core(), find('"build failed" stag*', "r10"),
                                         find("CAFE", "r11", limit=1))),
        "topic": (other_lines, exchange(chat_core(), topic("release day: ship 2.0", "r12"),
                                        p.Join(session=SID, room="#general", last_seq=4, rid="r13"),
                                        topic("", "r14"))),
        "page, search and topic errors": (bodies, [
            refused(page(0, 0, "r15")),
            refused(find('"" * -', "r16")),
            refused(find("x" * (p.MAX_QUERY_CHARS + 1), "r17")),
            refused(find("deli", "r18", sender="@bob")),
            refused(topic("hi", "r19", room="#dev")),
            refused(topic("x" * (p.MAX_TOPIC_CHARS + 1), "r20")),
            refused(topic("two\nlines", "r21")),
            topic_locked(),
            refused(find("deli", "r23"), chat_core(BrokenIndex(100))),
        ]),
        "pair": (term_lines, takeover()),
        "zmtp": (zmtp_lines, [client(p.Ping(session=SID))]),
    }


BLOCK_NAMES = ["first hello", "welcome", "hello again", "msg", "live msg", "live msgs", "hist", "backlog hist_end",
               "catch-up hist_end", "gap fill", "rate_limited", "errors", "other messages", "page", "search",
               "topic", "page, search and topic errors", "pair", "zmtp"]
HEX_LINES = [f"Frame 0 in hex: `{hex_of(SESS)}`.", f"Frame 0 in hex: `{hex_of(GENERAL)}`.",
             f"Frame 0 of `hb` and `shutdown` (`all:` and NUL) in hex: `{hex_of(p.ALL_TOPIC)}`."]


def expected_block(name: str) -> str:
    render, messages = examples()[name]
    return "\n".join(render(messages))


def every_example() -> list[list[bytes]]:
    return [frames for _render, messages in examples().values() for frames in messages]


# --------------------------------------------------------------------------------------------------
# the doc


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def section_15() -> str:
    text = doc()
    start = text.index("\n## 15. ")
    return text[start:text.index("\n## 16. ", start)]


def fenced(text: str) -> list[str]:
    return re.findall(r"^```\n(.*?)\n```$", text, re.MULTILINE | re.DOTALL)


def test_section_15_says_it_is_checked():
    assert "tests/test_protocol_doc.py" in section_15().split("```")[0]


def test_section_15_has_exactly_these_blocks():
    assert list(examples()) == BLOCK_NAMES
    assert len(fenced(section_15())) == len(BLOCK_NAMES)


@pytest.mark.parametrize("index", range(len(BLOCK_NAMES)), ids=BLOCK_NAMES)
def test_block_is_what_the_encoder_writes(index):
    blocks = fenced(section_15())
    assert index < len(blocks), "a block is missing from section 15"
    assert blocks[index] == expected_block(BLOCK_NAMES[index])


def test_topic_hex_lines():
    text = section_15()
    for line in HEX_LINES:
        assert line in text
    assert text.count(" in hex: `") == len(HEX_LINES)


def test_every_example_decodes_to_what_was_encoded():
    # Every example is valid on the wire: mids, rids, numbers and the term frame within their ranges.
    for frames in every_example():
        if len(frames) == 3:
            assert p.encode_client(p.decode_client(frames)) == frames
        else:
            topic, msg, term = p.decode_server_term(frames)
            assert p.encode_server(topic, msg, p.term_frame(term)) == frames


def test_only_the_pair_example_has_a_term():
    # A single server's term frame is "0"; the pair's block is the one that shows others.
    for name, (_render, messages) in examples().items():
        terms = {frames[4] for frames in messages if len(frames) == 5}
        assert terms <= {b"0"} or name == "pair", name
    pair = [frames for frames in examples()["pair"][1] if len(frames) == 5]
    assert {frames[4] for frames in pair} == {b"3", b"4"}


def test_other_json_in_the_doc_is_an_example():
    # A JSON body quoted anywhere else in protocol.md must be one that section 15 checks.
    text = doc()
    outside = text.replace(section_15(), "")
    bodies = {show(body_of(frames)) for frames in every_example()}
    quoted = re.findall(r"`(\{\".*?\})`", outside)
    assert quoted, "the pattern finds nothing: has the doc's style changed?"
    for body in quoted:
        assert body in bodies, body
