"""What a typed line means: a chat message, a /command, or leaving. Shared by every front end.

``run_line`` returns a small result (``Reply``, ``Error``, ``Help``, ``QUIT`` or None) that each front end
renders its own way; nobody parses text back. One table, ``COMMANDS``, gives every command its word, its
usage, its help line and its handler: ``/help``, completion lists and usage hints all come from it.
Commands need only the narrow ``ChatClient`` interface, not a particular client loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import ZmqchatError
from ..events import Topic
from ..protocol import MAX_QUERY_CHARS, MAX_TOPIC_CHARS, normalise_room


class ChatClient(Protocol):
    """What commands need of a client (the poll-loop ``Client`` is one)."""

    @property
    def room(self) -> str: ...
    def say(self, text: str, room: str | None = None, action: bool = False) -> str: ...
    def join(self, room: str) -> str: ...
    def part(self, room: str | None = None) -> str: ...
    def who(self, room: str = "") -> None: ...
    def rooms(self) -> None: ...
    def stats(self) -> None: ...
    def history(self, count: int = 20, room: str | None = None) -> None: ...
    def search(self, query: str, sender: str = "", room: str = "", limit: int = 20) -> str: ...
    def set_topic(self, text: str, room: str | None = None) -> None: ...
    def topic(self, room: str | None = None) -> Topic | None: ...


@dataclass(frozen=True)
class Reply:
    """A line for the user: a hint or a confirmation."""

    text: str


@dataclass(frozen=True)
class Error:
    """A local refusal; front ends show it as ``ERROR: message``."""

    message: str


@dataclass(frozen=True)
class Help:
    text: str


@dataclass(frozen=True)
class Quit:
    """The line means "leave"."""


QUIT = Quit()
Result = Reply | Error | Help | Quit | None


@dataclass(frozen=True)
class Command:
    word: str
    usage: str
    help: str
    run: Callable[[ChatClient, str], Result]


def _join(client: ChatClient, rest: str) -> Result:
    if not rest:
        return Reply("usage: /join #room")
    client.join(rest.split()[0])
    return None


def _part(client: ChatClient, rest: str) -> Result:
    left = client.part(rest.split()[0] if rest else None)
    return Reply(f"-- you left {left}" + (f"; now in {client.room}" if client.room else ""))


def _me(client: ChatClient, rest: str) -> Result:
    if not rest:
        return Reply("usage: /me waves")
    client.say(rest, action=True)
    return None


HISTORY_USAGE = "usage: /history [N], N from 1 to 1000"


def _history(client: ChatClient, rest: str) -> Result:
    try:
        count = int(rest) if rest else 20
    except ValueError:
        return Reply(HISTORY_USAGE)
    if not 0 < count <= 1000:
        return Reply(HISTORY_USAGE)
    client.history(count)
    return None


SEARCH_USAGE = "usage: /search WORDS [from:NAME] [in:#room]  (\"a phrase\", word* for a prefix)"


def parse_search(rest: str) -> tuple[str, str, str] | None:
    """(query, sender, room) of ``/search`` arguments, or None when there is no word to look for."""
    words, sender, room = [], "", ""
    for part in rest.split():
        if part.startswith("from:") and len(part) > 5:
            sender = part[5:].removeprefix("@")
        elif part.startswith("in:") and len(part) > 3:
            room = normalise_room(part[3:])
        else:
            words.append(part)
    query = " ".join(words)
    return (query, sender, room) if query.strip() else None


def _search(client: ChatClient, rest: str) -> Result:
    parsed = parse_search(rest)
    if parsed is None:
        return Reply(SEARCH_USAGE)
    if len(parsed[0]) > MAX_QUERY_CHARS:
        return Error(f"a search is at most {MAX_QUERY_CHARS} characters")
    client.search(*parsed)
    return None


def _topic(client: ChatClient, rest: str) -> Result:
    if not rest:
        topic = client.topic()
        if topic is None:
            return Reply(f"-- {client.room} has no topic; /topic TEXT sets one")
        return Reply(f"-- topic of {topic.room}: {topic.text} (set by {topic.by})")
    text = "" if rest == "--clear" else rest
    if len(text) > MAX_TOPIC_CHARS:
        return Error(f"a topic is at most {MAX_TOPIC_CHARS} characters")
    if not client.room:
        return Error("you are in no room: /join #room first")
    client.set_topic(text)
    return None


def _simple(action: Callable[[ChatClient], object]) -> Callable[[ChatClient, str], Result]:
    def run(client: ChatClient, rest: str) -> Result:
        action(client)
        return None

    return run


COMMANDS: tuple[Command, ...] = (
    Command("/join", "/join #room", "join a room (and make it current)", _join),
    Command("/part", "/part [#room]", "leave a room (default: the current one)", _part),
    Command("/rooms", "/rooms", "rooms with their member counts", _simple(lambda c: c.rooms())),
    Command("/who", "/who [#room]", "who is in your rooms (or one room)",
            lambda c, rest: c.who(rest.split()[0] if rest else "")),
    Command("/me", "/me ACTION", "say an action, e.g. /me waves", _me),
    Command("/history", "/history [N]", "show the last N messages of this room again (default 20)", _history),
    Command("/search", "/search WORDS", "search stored messages (from:NAME, in:#room narrow it)", _search),
    Command("/topic", "/topic [TEXT]", "show or set this room's topic (--clear clears it)", _topic),
    Command("/stats", "/stats", "server counters", _simple(lambda c: c.stats())),
    Command("/help", "/help", "this list", lambda c, rest: Help(HELP)),
    Command("/quit", "/quit or exit", "leave (Ctrl-D and Ctrl-C too)", lambda c, rest: QUIT),
)
BY_WORD = {command.word: command for command in COMMANDS}
WORDS = tuple(BY_WORD)  # for completion
HELP = "\n".join(["Commands:", *(f"  {c.usage:<18}{c.help}" for c in COMMANDS),
                  f"  {'//text':<18}send a message that starts with '/'"])


def run_line(client: ChatClient, line: str) -> Result:
    """Act on one input line; the result says what the user should see (None: nothing)."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if line.strip() == "exit":
        return QUIT
    if line.startswith("//"):
        line = line[1:]
    elif line.startswith("/"):
        word, _, rest = line.partition(" ")
        command = BY_WORD.get(word.lower())
        if command is None:
            return Reply(f"unknown command {word.lower()}; /help lists them (// sends a line starting with /)")
        try:
            return command.run(client, rest.strip())
        except ZmqchatError as exc:
            return Error(str(exc))
    if not client.room:
        return Error("you are in no room: /join #room first")
    try:
        client.say(line)
    except ZmqchatError as exc:
        return Error(str(exc))
    return None
