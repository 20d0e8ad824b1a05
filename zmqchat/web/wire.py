"""The page's half of the gateway's WebSocket protocol: JSON text in, typed commands out. Pure.

Every WebSocket message a page sends is one JSON object with a ``kind``. ``parse`` checks it in order
(JSON → object → kind → each field's presence, type, range and length) and returns a frozen dataclass,
or raises ``WireError``: its ``code`` and ``message`` are what the gateway sends back as an ``error``
event. Nothing else escapes. docs/web.md lists every kind with its fields; a test checks the list.

What the gateway sends back is the ``--json`` event schema (``events.Event.to_dict``) plus the few
gateway events named in ``GATEWAY_EVENTS``.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from .. import protocol as p

MAX_ID_CHARS = 64  # a page's own id for a line or message
ID_RE = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{MAX_ID_CHARS}}}")
MAX_TEXT_CHARS = 20_000  # a typed line or message, before the server's own byte limit is checked
MAX_PAGE = 200  # messages one page request may ask for
MAX_HISTORY = 1000  # messages one /history may ask for

# error codes of the gateway's own ``error`` events (the server's codes pass through unchanged)
BAD_JSON = "bad_json"  # not JSON, or JSON nested too deeply
BAD_MESSAGE = "bad_message"  # not an object, a field missing or of the wrong type or size
UNKNOWN_KIND = "unknown_kind"
NOT_TEXT = "not_text"  # a binary WebSocket frame
RATE_LIMITED = "rate_limited"  # more messages than the connection's budget: this one was dropped
NOT_READY = "not_ready"  # a command before ``resume``
LOCAL = "local"  # refused by the client's own checks (too long, not in that room), as in the CLI

# events only the gateway sends (every other ``type`` is an event of the --json schema)
GATEWAY_EVENTS = ("welcome", "synced", "reset", "sending", "sent", "failed", "reply", "help", "done", "joined",
                  "left", "pong")


class WireError(Exception):
    """A page's message that cannot be used; ``code`` says why in one word, ``message`` in a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Command:
    """Base of every page -> gateway message; ``KIND`` is its ``kind``."""

    KIND: ClassVar[str] = ""
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {}  # field -> (lowest, highest): ints, or string lengths


@dataclass(frozen=True)
class Resume(Command):
    """First message of every connection: where the page stands. ``rooms``: room -> the last seq it has
    (contiguously) of each; ``epoch``: the history epoch those numbers belong to; ``term``: the newest
    server term it was told (a pair's: a server of a lower one is a deposed active); ``room``: its current room."""

    KIND: ClassVar[str] = "resume"
    rooms: dict = field(default_factory=dict)
    epoch: str = ""
    room: str = ""
    term: int = 0


@dataclass(frozen=True)
class Say(Command):
    """A chat message (``action``: a /me line). ``id`` is the page's own id: sending it again (after a
    reconnect) never sends the message twice."""

    KIND: ClassVar[str] = "say"
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"text": (1, MAX_TEXT_CHARS)}
    id: str
    room: str
    text: str
    action: bool = False


@dataclass(frozen=True)
class Line(Command):
    """A typed line, exactly as in the terminal client: a message, or a /command (``//`` escapes)."""

    KIND: ClassVar[str] = "line"
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"text": (1, MAX_TEXT_CHARS)}
    id: str
    text: str
    room: str = ""


@dataclass(frozen=True)
class Join(Command):
    KIND: ClassVar[str] = "join"
    room: str
    id: str = ""


@dataclass(frozen=True)
class Part(Command):
    KIND: ClassVar[str] = "part"
    room: str
    id: str = ""


@dataclass(frozen=True)
class Who(Command):
    """Members of ``room`` ("": of every room of ours)."""

    KIND: ClassVar[str] = "who"
    room: str = ""


@dataclass(frozen=True)
class History(Command):
    KIND: ClassVar[str] = "history"
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"count": (1, MAX_HISTORY)}
    room: str
    count: int = 20


@dataclass(frozen=True)
class Page(Command):
    """Older talk of ``room``: the newest ``limit`` messages with seq < ``before`` (0: from the newest)."""

    KIND: ClassVar[str] = "page"
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"limit": (1, MAX_PAGE)}
    room: str
    before: int = 0
    limit: int = 50


@dataclass(frozen=True)
class Search(Command):
    KIND: ClassVar[str] = "search"
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"query": (1, p.MAX_QUERY_CHARS),
                                                    "limit": (1, p.MAX_SEARCH_RESULTS)}
    query: str
    sender: str = ""
    room: str = ""
    limit: int = 20


@dataclass(frozen=True)
class SetTopic(Command):
    KIND: ClassVar[str] = "topic"
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"text": (0, p.MAX_TOPIC_CHARS)}
    room: str
    text: str


@dataclass(frozen=True)
class Rooms(Command):
    KIND: ClassVar[str] = "rooms"


@dataclass(frozen=True)
class Stats(Command):
    KIND: ClassVar[str] = "stats"


@dataclass(frozen=True)
class Ping(Command):
    KIND: ClassVar[str] = "ping"


KINDS: dict[str, type[Command]] = {cls.KIND: cls for cls in (Resume, Say, Line, Join, Part, Who, History, Page,
                                                             Search, SetTopic, Rooms, Stats, Ping)}
_TYPES = {"str": str, "int": int, "bool": bool, "dict": dict}
_ROOM_FIELDS = frozenset({"room"})  # strings that must be a room name ("" allowed where optional)


def parse(text: str) -> Command:
    """The command in one WebSocket text message. Raises WireError, nothing else."""
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except RecursionError as exc:
        raise WireError(BAD_JSON, "message is nested too deeply") from exc
    except ValueError as exc:  # also NaN/Infinity and integers of more than 4300 digits
        raise WireError(BAD_JSON, f"message is not JSON ({str(exc)[:60]})") from exc
    if type(raw) is not dict:
        raise WireError(BAD_MESSAGE, "message must be a JSON object with a \"kind\"")
    kind = raw.get("kind")
    if type(kind) is not str:
        raise WireError(BAD_MESSAGE, "message must have a string \"kind\"")
    cls = KINDS.get(kind)
    if cls is None:
        raise WireError(UNKNOWN_KIND, f"unknown kind {kind[:24]!r}; known: {', '.join(KINDS)}")
    return _build(cls, raw)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _build(cls: type[Command], raw: dict[str, Any]) -> Command:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        typ = _TYPES[str(f.type)]
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise WireError(BAD_MESSAGE, f"{cls.KIND}: missing field {f.name!r}")
            continue
        value = raw[f.name]
        if type(value) is not typ:  # exact: JSON true is no number, 1 no bool
            raise WireError(BAD_MESSAGE, f"{cls.KIND}: field {f.name!r} must be {_word(typ)}")
        _check(cls, f.name, value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _word(typ: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", dict: "an object"}[typ]


def _check(cls: type[Command], name: str, value: Any) -> None:
    kind = cls.KIND
    low, high = cls.LIMITS.get(name, (0, p.MAX_SAFE_INT if type(value) is int else MAX_TEXT_CHARS))
    if type(value) is int and not low <= value <= high:
        raise WireError(BAD_MESSAGE, f"{kind}: field {name!r} must be {low} to {high}")
    if type(value) is str:
        if not low <= len(value) <= high:
            raise WireError(BAD_MESSAGE, f"{kind}: field {name!r} must be {low} to {high} characters")
        try:
            value.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800") that no UTF-8 encoder accepts
            raise WireError(BAD_MESSAGE, f"{kind}: field {name!r} is not valid Unicode") from exc
        if name == "id" and value and not ID_RE.fullmatch(value):
            raise WireError(BAD_MESSAGE, f"{kind}: id must be 1 to {MAX_ID_CHARS} of A-Z a-z 0-9 _ . : -")
        if name in _ROOM_FIELDS and value:
            problem = p.room_problem(p.normalise_room(value))
            if problem:
                raise WireError(BAD_MESSAGE, f"{kind}: {problem}")
    if name == "rooms":
        if len(value) > p.MAX_LIST_ITEMS:
            raise WireError(BAD_MESSAGE, f"{kind}: at most {p.MAX_LIST_ITEMS} rooms")
        for room, seq in value.items():
            if p.room_problem(room) or type(seq) is not int or not 0 <= seq <= p.MAX_SAFE_INT:
                raise WireError(BAD_MESSAGE, f"{kind}: rooms must map room names to integers 0 .. {p.MAX_SAFE_INT}")


def encode(event: dict[str, Any]) -> str:
    """One event as the text of one WebSocket message."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))
