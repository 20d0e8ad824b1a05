"""The zmqchat wire protocol: pure data in, pure data out.

Everything that crosses a socket is defined here and nowhere else. This module imports nothing of zmq:
``encode_*`` return ``list[bytes]`` and ``decode_*`` take ``list[bytes]``. docs/protocol.md is the
normative description; this module is its implementation.

Client -> server (PUSH -> PULL), three frames::

    [0] version   b"zmqchat/3"
    [1] kind      ASCII, e.g. b"msg"
    [2] body      UTF-8 JSON object; fields depend on the kind

Server -> client (PUB -> SUB), five frames::

    [0] topic     b"room:#general\\x00", b"sess:<session>\\x00" or b"all:\\x00"
    [1] version   b"zmqchat/3"
    [2] kind
    [3] body      UTF-8 JSON object
    [4] term      ASCII decimal: the server's term in a hot-standby pair (0 for a single server)

Topics end in NUL so that SUB prefix matching never lets ``#dev`` receive ``#devops``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from json.encoder import encode_basestring as _json_str  # C-accelerated; keeps non-ASCII as is
from typing import Any, ClassVar

import msgspec

VERSION = b"zmqchat/3"  # 2: one ``msgs`` publication per room per batch; 3: a term frame on every server message
VERSION_PREFIX = b"zmqchat/"
TOPIC_END = b"\x00"
ROOM_PREFIX = b"room:"
SESSION_PREFIX = b"sess:"
ALL_TOPIC = b"all:" + TOPIC_END

MAX_NAME_CHARS = 32
MAX_ROOM_CHARS = 48
MAX_SESSION_CHARS = 64
MAX_MID_CHARS = 96
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024  # whole multipart message; the PULL's MAXMSGSIZE caps each frame
DEFAULT_MAX_TEXT_BYTES = 16 * 1024  # UTF-8 bytes of one chat message's text
MIN_MAX_MESSAGE_BYTES = 1024
MAX_LIST_ITEMS = 256  # rooms taken from one hello
MAX_RID_CHARS = 64  # request ids
ANY_NAME = "\x00gateway"  # an allowlist binds a gateway's key to this: any name (it is no valid name)
MAX_TOPIC_CHARS = 300  # a room's topic, in code points
MAX_QUERY_CHARS = 200  # a search query, in code points
MAX_SEARCH_RESULTS = 100  # results of one search reply
MAX_SAFE_INT = 2**53 - 1  # no integer on the wire exceeds this: a JavaScript client reads each one exactly
MAX_INTERVAL = 3600.0  # seconds: the largest heartbeat interval or retry delay anyone may announce

ROOM_RE = re.compile(rf"#[A-Za-z0-9_.\-]{{1,{MAX_ROOM_CHARS - 1}}}")
SESSION_RE = re.compile(rf"[A-Za-z0-9_\-]{{1,{MAX_SESSION_CHARS}}}")
RID_RE = re.compile(rf"[A-Za-z0-9_.:\-]{{0,{MAX_RID_CHARS}}}")
COUNTER_RE = re.compile(r"[1-9][0-9]{0,15}")  # a message counter: 1 .. MAX_SAFE_INT, no leading zero

_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's decoder would accept NaN and Infinity


_JSON_DECODER = json.JSONDecoder(parse_constant=_no_constant)


class ProtocolError(Exception):
    """A peer sent frames that are not a valid zmqchat message (the text says why)."""


# --------------------------------------------------------------------------------------------------
# names, rooms, topics


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid nickname, or None if it is."""
    if not name:
        return "name must not be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"name is longer than {MAX_NAME_CHARS} characters"
    if not name.isprintable() or any(ch.isspace() for ch in name):
        return "name must be printable, without spaces"
    if name[0] in "#/@":
        return "name must not start with '#', '/' or '@'"
    return None


def room_problem(room: str) -> str | None:
    """Why ``room`` is not a valid room name, or None if it is."""
    if ROOM_RE.fullmatch(room):
        return None
    return f"invalid room {room!r}: '#' then 1-{MAX_ROOM_CHARS - 1} of A-Z a-z 0-9 _ . -"


def normalise_room(room: str) -> str:
    """Accept ``dev`` for ``#dev``: users forget the hash."""
    room = room.strip()
    return room if room.startswith("#") else "#" + room


@lru_cache(maxsize=4096)
def room_topic(room: str) -> bytes:
    """The PUB/SUB topic that carries one room's traffic."""
    return ROOM_PREFIX + room.encode() + TOPIC_END


@lru_cache(maxsize=16384)
def session_topic(session: str) -> bytes:
    """The PUB/SUB topic for replies to one client (visible to anyone who subscribes to it)."""
    return SESSION_PREFIX + session.encode() + TOPIC_END


# --------------------------------------------------------------------------------------------------
# messages


@dataclass(frozen=True)
class Message:
    """Base of every message; subclasses set KIND and declare their fields.

    Every integer field lies in ``0 .. MAX_SAFE_INT`` unless ``RANGES`` names other bounds; every float
    is finite and lies in ``RANGES`` where it names one. Decoding checks both, so no rule ever sees an
    unbounded number."""

    KIND: ClassVar[bytes] = b""
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {}

    def body(self) -> dict[str, Any]:
        names = _NAMES.get(type(self))
        if names is None:
            names = _NAMES[type(self)] = tuple(f.name for f in fields(self))
        return {name: getattr(self, name) for name in names}


_NAMES: dict[type, tuple[str, ...]] = {}


_CLIENT_KINDS: dict[bytes, type[Message]] = {}
_SERVER_KINDS: dict[bytes, type[Message]] = {}


def client_kinds() -> tuple[type[Message], ...]:
    """Every message a client may send (what the server's handler table must cover)."""
    return tuple(_CLIENT_KINDS.values())


def server_kinds() -> tuple[type[Message], ...]:
    """Every message the server may publish (what a client's handler table must cover)."""
    return tuple(_SERVER_KINDS.values())


def _client(cls: type[Message]) -> type[Message]:
    _CLIENT_KINDS[cls.KIND] = cls
    return cls


def _server(cls: type[Message]) -> type[Message]:
    _SERVER_KINDS[cls.KIND] = cls
    return cls


# client -> server; every one names the sender's session


@_client
@dataclass(frozen=True)
class Hello(Message):
    """Join the chat (or re-join after a reconnect) as ``name``, in ``rooms``."""

    KIND: ClassVar[bytes] = b"hello"
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"unacked": (1, MAX_SAFE_INT)}
    session: str
    name: str
    rooms: list = field(default_factory=list)
    last_seq: dict = field(default_factory=dict)  # room -> last sequence number seen (0 .. MAX_SAFE_INT)
    epoch: str = ""  # the history epoch those numbers belong to (from an earlier welcome)
    rid: str = ""  # a fresh nonce per hello: only a welcome or error echoing it is an answer to us
    unacked: int = 1  # counter of our oldest unacknowledged message (or of the next one we will send)
    term: int = 0  # the highest server term we have seen (a pair's takeover count): a lower server is stale
    vote: bool = False  # we lost the active (or found the other server dead): a pair's standby may take over


@_client
@dataclass(frozen=True)
class Say(Message):
    """A chat message to a room. ``mid`` is ``<session>.<n>``: the session's message counter n counts
    1, 2, 3, ... without gaps (exactly-once: the server accepts only the next n, see docs/protocol.md)."""

    KIND: ClassVar[bytes] = b"msg"
    session: str
    room: str
    text: str
    mid: str
    action: bool = False  # /me


@_client
@dataclass(frozen=True)
class Join(Message):
    KIND: ClassVar[bytes] = b"join"
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"last_seq": (-1, MAX_SAFE_INT)}
    session: str
    room: str
    last_seq: int = -1  # -1: send the default backlog
    rid: str = ""


@_client
@dataclass(frozen=True)
class Part(Message):
    KIND: ClassVar[bytes] = b"part"
    session: str
    room: str
    rid: str = ""


@_client
@dataclass(frozen=True)
class WhoRequest(Message):
    KIND: ClassVar[bytes] = b"who"
    session: str
    room: str = ""  # "" means every room the session is in
    rid: str = ""


@_client
@dataclass(frozen=True)
class RoomsRequest(Message):
    KIND: ClassVar[bytes] = b"rooms"
    session: str
    rid: str = ""


@_client
@dataclass(frozen=True)
class HistoryRequest(Message):
    """Ask for room messages with ``after < seq < before`` (``before`` 0: up to the newest), at most
    ``limit``: the newest ones for a backlog (after = before = 0), else the oldest (see HistoryEnd)."""

    KIND: ClassVar[bytes] = b"history"
    session: str
    room: str
    after: int = 0
    before: int = 0
    limit: int = 100
    rid: str = ""


@_client
@dataclass(frozen=True)
class PageRequest(Message):
    """Ask for a page of older talk: the newest ``limit`` messages of ``room`` with ``seq < before``
    (``before`` 0: from the newest), read from the server's store (see PageEnd)."""

    KIND: ClassVar[bytes] = b"page"
    session: str
    room: str
    before: int = 0
    limit: int = 50
    rid: str = ""


@_client
@dataclass(frozen=True)
class SearchRequest(Message):
    """Search the stored messages for ``query`` (words, all of them; ``"a phrase"``; ``word*`` for a
    prefix), optionally only ``sender``'s and only in ``room``; at most ``limit`` results, newest first."""

    KIND: ClassVar[bytes] = b"search"
    session: str
    query: str
    sender: str = ""
    room: str = ""
    limit: int = 20
    rid: str = ""


@_client
@dataclass(frozen=True)
class TopicRequest(Message):
    """Set the topic of ``room`` (a room one is in); ``text`` "" clears it."""

    KIND: ClassVar[bytes] = b"topic"
    session: str
    room: str
    text: str
    rid: str = ""


@_client
@dataclass(frozen=True)
class StatsRequest(Message):
    KIND: ClassVar[bytes] = b"stats"
    session: str
    rid: str = ""


@_client
@dataclass(frozen=True)
class Ping(Message):
    """Client heartbeat; any message counts as liveness, this one is sent when there is nothing else."""

    KIND: ClassVar[bytes] = b"hb"
    session: str


@_client
@dataclass(frozen=True)
class Bye(Message):
    KIND: ClassVar[bytes] = b"bye"
    session: str
    rid: str = ""


# server -> client


@_server
@dataclass(frozen=True)
class Welcome(Message):
    KIND: ClassVar[bytes] = b"welcome"
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"heartbeat_interval": (0.01, MAX_INTERVAL)}
    session: str
    name: str
    motd: str
    heartbeat_interval: float
    max_text_bytes: int
    server_time: float
    epoch: str = ""  # identifies the history store; a new epoch means sequence numbers started over
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rid: str = ""  # the hello's nonce


@_server
@dataclass(frozen=True)
class RoomMessage(Message):
    """A sequenced room message, published live on the room topic."""

    KIND: ClassVar[bytes] = b"msg"
    room: str
    seq: int
    ts: float
    sender: str
    text: str
    mid: str
    action: bool = False


@_server
@dataclass(frozen=True)
class RoomMessages(Message):
    """Several room messages of one room, in seq order, as one publication on the room topic: what the
    server publishes when a batch holds more than one message of a room. Each is a RoomMessage body."""

    KIND: ClassVar[bytes] = b"msgs"
    messages: list = field(default_factory=list)  # of RoomMessage, decoded and checked one by one

    def body(self) -> dict[str, Any]:
        return {"messages": [m.body() for m in self.messages]}


@_server
@dataclass(frozen=True)
class HistoryMessage(RoomMessage):
    """The same body as RoomMessage, replayed from history on a session topic."""

    KIND: ClassVar[bytes] = b"hist"


@_server
@dataclass(frozen=True)
class HistoryEnd(Message):
    """Closes a history reply. For a bounded request (gap fill, catch-up: replies come oldest first, in
    chunks) every message of ``room`` with ``after < seq <= upto`` that the server still holds has been
    sent; ``newest`` > ``upto`` means ask again from ``upto``. For a backlog (after = before = 0) the newest
    ``count`` messages up to ``upto`` were sent."""

    KIND: ClassVar[bytes] = b"hist_end"
    room: str
    after: int
    upto: int
    count: int
    newest: int = 0  # the room's newest sequence number; more than upto means "ask again from upto"
    before: int = 0  # the request's ``before``: 0 for a backlog or /history, > 0 for a gap fill
    rid: str = ""  # the request's rid ("" for the replies a hello or join asks for)
    lost: list = field(default_factory=list)  # [first, last] ranges in (after, upto] the server lost


@_server
@dataclass(frozen=True)
class PageEnd(Message):
    """Closes a page reply: ``count`` messages with ``seq < before`` came before it on the session topic
    (as ``hist``), oldest first; ``oldest`` is the first one's seq (0 if none). ``start``: nothing older
    is held, this page reaches the room's start (or the oldest message the server keeps)."""

    KIND: ClassVar[bytes] = b"page_end"
    room: str
    before: int
    count: int
    oldest: int = 0
    start: bool = False
    rid: str = ""


@_server
@dataclass(frozen=True)
class SearchReply(Message):
    """Answers a search: ``results`` newest first, each an object ``{room, seq, ts, sender, text,
    marks}`` where ``marks`` lists ``[start, end]`` code-point offsets of the matches in ``text``.
    ``more``: there were more results than were sent."""

    KIND: ClassVar[bytes] = b"found"
    query: str
    results: list = field(default_factory=list)
    more: bool = False
    rid: str = ""


@_server
@dataclass(frozen=True)
class Topic(Message):
    """The topic of ``room``: published on the room topic when someone sets it (``text`` "" when cleared),
    and sent on the session topic to whoever enters the room while it has one."""

    KIND: ClassVar[bytes] = b"topic"
    room: str
    text: str
    by: str
    ts: float


@_server
@dataclass(frozen=True)
class PresenceEvent(Message):
    """Someone joined or left a room (event: join, part, quit, timeout). Not sequenced."""

    KIND: ClassVar[bytes] = b"presence"
    room: str
    name: str
    event: str
    ts: float


@_server
@dataclass(frozen=True)
class Ack(Message):
    """A duplicate was dropped: ``mid`` was already published as ``room``/``seq``."""

    KIND: ClassVar[bytes] = b"ack"
    mid: str
    room: str
    seq: int


@_server
@dataclass(frozen=True)
class WhoReply(Message):
    KIND: ClassVar[bytes] = b"who"
    rooms: dict  # room -> sorted list of names
    rid: str = ""


@_server
@dataclass(frozen=True)
class RoomsReply(Message):
    KIND: ClassVar[bytes] = b"rooms"
    rooms: dict  # room -> member count
    rid: str = ""


@_server
@dataclass(frozen=True)
class StatsReply(Message):
    KIND: ClassVar[bytes] = b"stats"
    stats: dict
    rid: str = ""


@_server
@dataclass(frozen=True)
class ErrorReply(Message):
    """Something the client sent was refused; ``mid`` names the message when there was one, ``rid``
    the request. ``resend_from``: with code ``resend``, the message counter the server expects next."""

    KIND: ClassVar[bytes] = b"error"
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"retry_after": (0.0, MAX_INTERVAL)}
    code: str
    message: str
    mid: str = ""
    retry_after: float = 0.0
    rid: str = ""
    resend_from: int = 0
    active: str = ""  # with code ``not_active``: HOST:PORT of the pair's active server, when known


@_server
@dataclass(frozen=True)
class Goodbye(Message):
    """Answer to Bye: the session is gone."""

    KIND: ClassVar[bytes] = b"bye"
    session: str
    rid: str = ""


@_server
@dataclass(frozen=True)
class ServerHeartbeat(Message):
    KIND: ClassVar[bytes] = b"hb"
    ts: float
    seqs: dict = field(default_factory=dict)  # room -> newest sequence number, for occupied rooms
    role: str = ""  # "" a single server; in a pair "active" or "standby" (whose beats prove nothing of the active)


@_server
@dataclass(frozen=True)
class Shutdown(Message):
    KIND: ClassVar[bytes] = b"shutdown"
    message: str


# error codes sent in ErrorReply.code
ERR_NAME_TAKEN = "name_taken"
ERR_BAD_NAME = "bad_name"
ERR_BAD_ROOM = "bad_room"
ERR_NOT_IN_ROOM = "not_in_room"
ERR_TOO_LONG = "too_long"
ERR_RATE_LIMITED = "rate_limited"
ERR_UNKNOWN_SESSION = "unknown_session"
ERR_NOT_AUTHORIZED = "not_authorised"  # the wire keeps its spelling: codes are frozen
ERR_EMPTY = "empty"
ERR_BAD_REQUEST = "bad_request"
ERR_REVOKED = "revoked"  # unsolicited: the session's key was removed from the allowlist (always fatal)
ERR_RESEND = "resend"  # a message counter jumped: resend from ``resend_from``
ERR_BUSY = "busy"  # the server's work budget is spent: ask again after ``retry_after`` (not the sender's fault)
ERR_UNAVAILABLE = "unavailable"  # the server cannot do this now (its store or search index failed)
ERR_NOT_ACTIVE = "not_active"  # this server of a pair is not the active one: reach ``active`` instead
ERR_FORBIDDEN = "forbidden"  # not allowed to anyone but its owner (a locked topic)

# --------------------------------------------------------------------------------------------------
# encode / decode


def encode_body(msg: Message) -> bytes:
    return _JSON_ENCODER.encode(msg.body()).encode()


def room_messages_body(bodies: list[bytes]) -> bytes:
    """The body of a ``msgs`` publication from the encoded RoomMessage bodies it carries."""
    return b'{"messages":[' + b",".join(bodies) + b"]}"


def room_message_body(room: str, seq: int, ts: float, sender: str, text: str, mid: str, action: bool) -> bytes:
    """``encode_body(RoomMessage(...))``, byte for byte, without building the message: the server's hot path."""
    return (f'{{"room":{_json_str(room)},"seq":{seq:d},"ts":{ts!r},"sender":{_json_str(sender)},'
            f'"text":{_json_str(text)},"mid":{_json_str(mid)},"action":{"true" if action else "false"}}}').encode()


def with_rid(body: bytes, rid: str) -> bytes:
    """``body``, the encoding of a reply whose last field is ``rid`` and was encoded empty, as if encoded with
    ``rid``: a reply that many ask for within one tick is encoded once."""
    if not body.endswith(b'"rid":""}'):
        raise ValueError("body does not end with an empty rid")
    return body[:-3] + _json_str(rid).encode() + b"}"


def encode_client(msg: Message) -> list[bytes]:
    """Frames a client sends on its PUSH socket."""
    return [VERSION, msg.KIND, encode_body(msg)]


def server_frames(topic: bytes, kind: bytes, body: bytes, term: bytes = b"0") -> list[bytes]:
    """The frames of one publication: topic, version, kind, body, term (``term_frame``)."""
    return [topic, VERSION, kind, body, term]


def encode_server(topic: bytes, msg: Message, term: bytes = b"0") -> list[bytes]:
    """Frames the server publishes on PUB under ``topic``."""
    return server_frames(topic, msg.KIND, encode_body(msg), term)


def term_frame(term: int) -> bytes:
    """The last frame of every server message: the publishing server's term, in ASCII decimal (0 for a
    server that is not one of a pair)."""
    return str(term).encode()


_Spec = tuple[str, type, bool, float, float]  # name, python type, required, lowest, highest
_TYPES: dict[type[Message], list[_Spec]] = {}
# dict fields whose values are numbers a rule uses: each value is checked like an integer field
_INT_MAPS = frozenset({"last_seq", "seqs"})
_FINITE = sys.float_info.max  # a float range that excludes infinities (and NaN fails every comparison)


def _field_types(cls: type[Message]) -> list[_Spec]:
    """(name, python type, required, lowest, highest) per field, from the dataclass (cached)."""
    spec = _TYPES.get(cls)
    if spec is None:
        probe = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}
        spec = []
        for f in fields(cls):
            typ = probe[str(f.type)]
            required = f.default is MISSING and f.default_factory is MISSING
            lo, hi = cls.RANGES.get(f.name, (0, MAX_SAFE_INT) if typ is int else (-_FINITE, _FINITE))
            spec.append((f.name, typ, required, lo, hi))
        _TYPES[cls] = spec
    return spec


# msgspec decodes a body straight into the message's dataclass, checking the type of every field, in C: a
# fifth of what the hand checks cost (scripts/microbench.py decode). It serves kinds whose fields are all
# str, int, float or bool; what is left of the rules (ranges, the request id) is checked after it. Whatever
# it refuses goes the hand-checked way (``_build_checked``), which says what is wrong, so a bad body gets the
# same ProtocolError either way, and a good one the same message. One difference is known: a field no kind
# has, holding an integer of over 4,300 digits, is skipped by msgspec and refused by Python's json.
_Finish = Callable[[Any], "Message | None"]  # the rules msgspec does not know; None: go the checked way
_FAST: dict[type[Message], tuple[msgspec.json.Decoder | None, _Finish]] = {}


class _Batch(msgspec.Struct):
    """A ``msgs`` body as msgspec decodes it: each message straight into a RoomMessage."""

    messages: list[RoomMessage] = msgspec.field(default_factory=list)


def _ranges_of(cls: type[Message]) -> list[tuple[str, float, float]]:
    return [(name, lo, hi) for name, typ, _req, lo, hi in _field_types(cls) if typ is int or typ is float]


def _fast_decoder(cls: type[Message]) -> tuple[msgspec.json.Decoder | None, _Finish]:
    fast = _FAST.get(cls)
    if fast is not None:
        return fast
    ranges = _ranges_of(cls)

    def finish(msg: Any) -> Message | None:
        for name, lo, hi in ranges:
            if not lo <= getattr(msg, name) <= hi:
                return None
        rid = getattr(msg, "rid", "")
        return msg if not rid or RID_RE.fullmatch(rid) else None

    if cls is RoomMessages:
        one = _ranges_of(RoomMessage)

        def finish_batch(batch: Any) -> Message | None:
            messages = batch.messages
            if len(messages) > MAX_BATCH_MESSAGES:
                return None
            for msg in messages:
                for name, lo, hi in one:
                    if not lo <= getattr(msg, name) <= hi:
                        return None
            return RoomMessages(messages=messages)

        fast = (msgspec.json.Decoder(_Batch), finish_batch)
    elif all(typ in (str, int, float, bool) for _name, typ, _req, _lo, _hi in _field_types(cls)):
        fast = (msgspec.json.Decoder(cls), finish)
    else:
        fast = (None, finish)
    _FAST[cls] = fast
    return fast


def _build(cls: type[Message], raw: bytes) -> Message:
    decoder, finish = _FAST.get(cls) or _fast_decoder(cls)
    if decoder is not None:
        try:
            if not raw.isascii():
                raw.decode("utf-8")  # msgspec does not look at keys it skips: the whole body must be UTF-8
            msg = finish(decoder.decode(raw))
        except (msgspec.MsgspecError, RecursionError, ValueError):  # UnicodeDecodeError is a ValueError
            msg = None  # not a valid body: the checked way says why
        if msg is not None:
            return msg
    return _build_checked(cls, raw)


def _build_checked(cls: type[Message], raw: bytes) -> Message:
    kind = cls.KIND.decode()
    try:
        body = _JSON_DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{kind}: body is not valid UTF-8") from exc
    except ValueError as exc:  # also integers of more than 4300 digits, NaN and Infinity
        raise ProtocolError(f"{kind}: body is not valid JSON ({exc.args[0][:60]})") from exc
    except RecursionError as exc:  # "[[[[…" under the size limit must not take a peer down
        raise ProtocolError(f"{kind}: body is nested too deeply") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind}: body must be a JSON object")
    return _from_object(cls, body)


def _from_object(cls: type[Message], body: dict) -> Message:
    kind = cls.KIND.decode()
    kwargs: dict[str, Any] = {}
    for name, typ, required, lo, hi in _field_types(cls):
        if name not in body:
            if required:
                raise ProtocolError(f"{kind}: missing field {name!r}")
            continue
        value = body[name]
        if type(value) is not typ:  # the JSON decoder makes exact types: this is the rare path
            if typ is float and type(value) is int:
                if not -_FINITE <= value <= _FINITE:  # float() would overflow (309 to 4300 digits)
                    raise ProtocolError(f"{kind}: field {name!r} out of range")
                value = float(value)
            else:  # bool is an int subclass: JSON true must not pass as a number, nor 1 as a bool
                raise ProtocolError(f"{kind}: field {name!r} must be {typ.__name__}")
        if typ is str:
            if not value.isascii():
                _check_text(cls, name, value)
        elif typ is int or typ is float:
            if not lo <= value <= hi:  # also false for NaN
                raise ProtocolError(f"{kind}: field {name!r} out of range ({_num(lo)} .. {_num(hi)})")
        elif typ is dict and name in _INT_MAPS:
            _check_int_map(kind, name, value)
        elif name == "lost":
            _check_ranges(kind, value)
        elif name == "results":
            _check_results(kind, value)
        elif name == "messages":
            value = _room_messages(kind, value)
        kwargs[name] = value
    rid = kwargs.get("rid")
    if rid and not RID_RE.fullmatch(rid):
        raise ProtocolError(f"{kind}: invalid request id")
    return cls(**kwargs)


def _num(bound: float) -> str:
    return str(int(bound)) if math.isfinite(bound) and bound == int(bound) else str(bound)


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_SAFE_INT  # type: ignore[operator]


def _check_int_map(kind: str, name: str, value: dict) -> None:
    if len(value) > 4 * MAX_LIST_ITEMS and name != "seqs":
        raise ProtocolError(f"{kind}: field {name!r} has too many entries")
    for key, number in value.items():
        if len(key) > MAX_ROOM_CHARS or not _is_count(number):
            raise ProtocolError(f"{kind}: field {name!r} must map rooms to integers 0 .. {MAX_SAFE_INT}")


def _check_ranges(kind: str, value: list) -> None:
    for pair in value:
        if not (type(pair) is list and len(pair) == 2 and _is_count(pair[0]) and _is_count(pair[1])
                and 1 <= pair[0] <= pair[1]):
            raise ProtocolError(f"{kind}: field 'lost' must be a list of [first, last] pairs")


MAX_BATCH_MESSAGES = 4096  # room messages in one ``msgs`` publication, at most


def _room_messages(kind: str, value: list) -> list[RoomMessage]:
    if len(value) > MAX_BATCH_MESSAGES:
        raise ProtocolError(f"{kind}: field 'messages' has too many entries")
    out = []
    for item in value:
        if type(item) is not dict:
            raise ProtocolError(f"{kind}: each message must be an object")
        out.append(_from_object(RoomMessage, item))
    return out  # type: ignore[return-value]


_RESULT_FIELDS = (("room", str), ("seq", int), ("ts", float), ("sender", str), ("text", str), ("marks", list))


def _check_results(kind: str, value: list) -> None:
    if len(value) > MAX_SEARCH_RESULTS:
        raise ProtocolError(f"{kind}: field 'results' has too many entries")
    for result in value:
        if type(result) is not dict:
            raise ProtocolError(f"{kind}: each result must be an object")
        for name, typ in _RESULT_FIELDS:
            item = result.get(name)
            if not (type(item) is typ or (typ is float and type(item) is int)):
                raise ProtocolError(f"{kind}: result field {name!r} must be {typ.__name__}")
        if not (_is_count(result["seq"]) and math.isfinite(result["ts"])):
            raise ProtocolError(f"{kind}: result seq or ts out of range")
        length = len(result["text"])
        for mark in result["marks"]:
            if not (type(mark) is list and len(mark) == 2 and type(mark[0]) is int and type(mark[1]) is int
                    and 0 <= mark[0] < mark[1] <= length):
                raise ProtocolError(f"{kind}: result marks must be [start, end] offsets within its text")


def _check_text(cls: type[Message], name: str, value: str) -> None:
    # JSON may carry lone surrogates ("\ud800") that no UTF-8 encoder accepts: refuse them here, once.
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"{cls.KIND.decode()}: field {name!r} is not valid Unicode") from exc


def _check_header(version: bytes, kind: bytes, table: dict[bytes, type[Message]]) -> type[Message]:
    if version != VERSION:
        if version.startswith(VERSION_PREFIX):
            raise ProtocolError(f"unsupported protocol version {version[:16]!r} (this is {VERSION.decode()})")
        raise ProtocolError("not a zmqchat message (bad version frame)")
    cls = table.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind[:24]!r}")
    return cls


def decode_client(frames: list[bytes]) -> Message:
    """Parse what arrived on the server's PULL socket. Raises ProtocolError, nothing else."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    cls = _check_header(frames[0], frames[1], _CLIENT_KINDS)
    msg = _build(cls, frames[2])
    session = msg.session  # type: ignore[attr-defined]
    if not SESSION_RE.fullmatch(session):
        raise ProtocolError("invalid session id")
    mid = getattr(msg, "mid", None)
    if mid is not None and mid_counter(mid, session) is None:
        raise ProtocolError("invalid message id (must be <session>.<counter>)")
    return msg


def mid_counter(mid: str, session: str) -> int | None:
    """The counter n of ``mid`` if it reads ``<session>.<n>`` (1 <= n <= MAX_SAFE_INT), else None."""
    head, dot, tail = mid.rpartition(".")
    # COUNTER_RE's rule without a regex (twice a message on the server's hot path): 1-16 ASCII digits, no
    # leading zero
    if head != session or not dot or not (tail.isdigit() and tail.isascii()) or tail[0] == "0" or len(tail) > 16:
        return None
    n = int(tail)
    return n if n <= MAX_SAFE_INT else None


def decode_server(frames: list[bytes]) -> tuple[bytes, Message]:
    """Parse what arrived on a client's SUB socket: (topic, message). Raises ProtocolError only."""
    topic, msg, _term = decode_server_term(frames)
    return topic, msg


def decode_server_term(frames: list[bytes]) -> tuple[bytes, Message, int]:
    """Parse what arrived on a client's SUB socket: (topic, message, the server's term)."""
    if len(frames) != 5:
        raise ProtocolError(f"expected 5 frames, got {len(frames)}")
    cls = _check_header(frames[1], frames[2], _SERVER_KINDS)
    term = frames[4]
    if not (term == b"0" or COUNTER_RE.fullmatch(term.decode("ascii", "replace"))):
        raise ProtocolError("bad term frame (must be a decimal integer, no leading zero)")
    if int(term) > MAX_SAFE_INT:
        raise ProtocolError("term out of range")
    return frames[0], _build(cls, frames[3]), int(term)
