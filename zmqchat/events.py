"""What a client reports to its user (a person's terminal, a bot, or --json): plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    """Base of every client event; ``type`` is its name in --json output."""

    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class Connected(Event):
    """The server welcomed us (first time, or again after a reconnect)."""

    type: ClassVar[str] = "connected"
    name: str
    motd: str
    reconnected: bool = False


@dataclass(frozen=True)
class ConnectionLost(Event):
    """Nothing heard from the server for a while (or another server of a pair took over); the client keeps
    retrying. ``switching_to``: the server of a pair it tries now ("" with one server)."""

    type: ClassVar[str] = "connection_lost"
    switching_to: str = ""


@dataclass(frozen=True)
class Message(Event):
    """A room message. ``history``: old talk replayed on joining a room or by /history (messages recovered
    after a gap or a reconnect are new to us and are not marked); ``own``: ours."""

    type: ClassVar[str] = "message"
    room: str
    seq: int
    ts: float
    sender: str
    text: str
    action: bool = False
    history: bool = False
    own: bool = False
    mid: str = ""  # the sender's message id: ours is what say() returned


@dataclass(frozen=True)
class Presence(Event):
    """``name`` joined or left ``room``; event is join, part, quit or timeout."""

    type: ClassVar[str] = "presence"
    room: str
    name: str
    event: str
    ts: float


@dataclass(frozen=True)
class Page(Event):
    """A page of older talk of ``room``, asked for by scrolling back: ``messages`` oldest first, every one
    with ``seq < before``. ``start``: nothing older is held (the room's start, or the oldest kept)."""

    type: ClassVar[str] = "page"
    room: str
    before: int
    messages: tuple = ()  # of Message, each with history=True
    start: bool = False
    rid: str = ""  # the request's id, as page() returned it


@dataclass(frozen=True)
class Found:
    """One search result: ``marks`` are (start, end) code-point offsets of the matches in ``text``."""

    room: str
    seq: int
    ts: float
    sender: str
    text: str
    marks: tuple = ()


@dataclass(frozen=True)
class SearchResults(Event):
    """The answer to a search, newest first; ``more``: there were more than these."""

    type: ClassVar[str] = "search"
    query: str
    results: tuple = ()  # of Found
    more: bool = False
    rid: str = ""  # the request's id, as search() returned it


@dataclass(frozen=True)
class Topic(Event):
    """The topic of ``room``, as set by ``by`` (``text`` "": cleared); on joining a room, and when set."""

    type: ClassVar[str] = "topic"
    room: str
    text: str
    by: str
    ts: float


@dataclass(frozen=True)
class Who(Event):
    type: ClassVar[str] = "who"
    rooms: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rooms(Event):
    type: ClassVar[str] = "rooms"
    rooms: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stats(Event):
    type: ClassVar[str] = "stats"
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Notice(Event):
    """Something worth telling the user that is not a message (e.g. messages lost beyond history)."""

    type: ClassVar[str] = "notice"
    text: str


@dataclass(frozen=True)
class Error(Event):
    """The server refused something, or the client gave up; ``fatal`` errors end the session."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    fatal: bool = False
    mid: str = ""  # the message refused for good, when it was one of ours (what say() returned)


@dataclass(frozen=True)
class ServerShutdown(Event):
    type: ClassVar[str] = "shutdown"
    message: str


@dataclass(frozen=True)
class Closed(Event):
    """The server confirmed our goodbye."""

    type: ClassVar[str] = "closed"
