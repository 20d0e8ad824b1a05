"""What the full-screen client needs of a chat client, and the one that gives it over an ``AsyncClient``.

``commands.run_line`` is synchronous and wants a ``ChatClient`` (say, join, who, ... returning at once).
The ``AsyncClient``'s actions are coroutines, but all they do is run the argument checks (``checks``: they
queue into the shared session) and send what the session queued (``send_queued``). ``Commands`` calls
those two directly, so every check is the one the line UI and the bots get, and nothing is re-implemented
here. It also notes what was said (the message ids to follow on screen) and what our checks refused, for
the screen to show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .. import events as ev
from ..client.aio import AsyncClient
from ..errors import ZmqchatError
from ..protocol import normalise_room


@dataclass(frozen=True)
class Said:
    """A message that went out (``mid``) or that our checks refused (``reason``)."""

    room: str
    text: str
    action: bool
    mid: str = ""
    reason: str = ""


class Link(Protocol):
    """What the full-screen client needs: a name, the server's address, a ``ChatClient`` for commands
    (``commands``, with ``said`` and ``user_whos`` noted), the joined rooms, our messages' states, pages,
    and the events."""

    name: str
    server: str
    commands: Commands

    def joined(self) -> list[str]: ...
    def current_room(self) -> str: ...
    def message_state(self, mid: str) -> str: ...
    @property
    def unacknowledged(self) -> int: ...
    async def poll(self, timeout: float) -> list[ev.Event]: ...
    async def drain(self, timeout: float) -> bool: ...
    async def close(self) -> None: ...


class Commands:
    """A synchronous ``ChatClient`` (see ``client.commands``) over an ``AsyncClient``'s checks and sender.
    Actions raise ZmqchatError for bad arguments, exactly as the sync ``Client``'s do."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.said: list[Said] = []  # taken by the screen after each command
        self.user_whos = 0  # whos the user asked for (their replies are shown as text)

    @property
    def _checks(self):  # the AsyncClient's synchronous argument checks, queueing into its session
        return self._client.checks

    def _send(self) -> None:
        self._client.send_queued()

    def _act(self, action: Callable[[], object]) -> object:
        try:
            return action()
        finally:
            self._send()

    def take_said(self) -> list[Said]:
        said, self.said = self.said, []
        return said

    @property
    def room(self) -> str:
        return self._client.room

    def say(self, text: str, room: str | None = None, action: bool = False) -> str:
        target = normalise_room(room) if room else self.room
        try:
            mid = self._act(lambda: self._checks.say(text, room, action))
        except ZmqchatError as exc:
            self.said.append(Said(target, text, action, reason=str(exc)))
            raise
        self.said.append(Said(target, text, action, mid=str(mid)))
        return str(mid)

    def join(self, room: str) -> str:
        return str(self._act(lambda: self._checks.join(room)))

    def part(self, room: str | None = None) -> str:
        return str(self._act(lambda: self._checks.part(room)))

    def who(self, room: str = "") -> None:
        self.user_whos += 1
        self._act(lambda: self._checks.who(room))

    def auto_who(self, room: str) -> None:
        """A who for the people list (not shown as text)."""
        self._act(lambda: self._checks.who(room))

    def rooms(self) -> None:
        self._act(self._checks.rooms)

    def stats(self) -> None:
        self._act(self._checks.stats)

    def history(self, count: int = 20, room: str | None = None) -> None:
        self._act(lambda: self._checks.history(count, room))

    def page(self, room: str, before: int, limit: int) -> None:
        self._act(lambda: self._checks.page(room, before, limit))

    def search(self, query: str, sender: str = "", room: str = "", limit: int = 20) -> str:
        return str(self._act(lambda: self._checks.search(query, sender, room, limit)))

    def set_topic(self, text: str, room: str | None = None) -> None:
        self._act(lambda: self._checks.set_topic(text, room))

    def topic(self, room: str | None = None) -> ev.Topic | None:
        return self._client.topic(room)


class ClientLink:
    """The ``Link`` over a connected ``AsyncClient`` (used from the event loop that owns it)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.name = client.name
        # one server: its endpoint, as always; a pair's: the label of the one we are connected to
        self.server = client.in_endpoint if len(client.servers) < 2 else client.server
        self.commands = Commands(client)

    def joined(self) -> list[str]:
        session = self.client.session
        return [room for room in session.rooms if room not in session.parting]

    def current_room(self) -> str:
        return self.client.room

    def message_state(self, mid: str) -> str:
        return self.client.session.message_state(mid)

    @property
    def unacknowledged(self) -> int:
        return self.client.unacknowledged

    async def poll(self, timeout: float) -> list[ev.Event]:
        return await self.client.poll(timeout)

    async def drain(self, timeout: float) -> bool:
        return await self.client.drain(timeout)

    async def close(self) -> None:
        await self.client.close()
