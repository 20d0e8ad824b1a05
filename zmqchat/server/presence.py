"""Who is online and in which rooms; heartbeat expiry. Pure: the caller passes ``now``.

A session is one connected client (its random session id); a name belongs to at most one live session.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Member:
    """One live session."""

    session: str
    name: str
    last_seen: float
    rooms: set[str] = field(default_factory=set)
    key: str | None = None  # CURVE public key that opened the session, when CURVE is on
    identity: str = ""  # the key and the name it speaks for: who owns this session, its buckets, its messages
    unacked: int | None = None  # the hello's first message counter, until the server knows this sender


class Roster:
    """Sessions, names and room membership, with expiry after ``timeout`` seconds of silence."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # Ordered by last_seen (touch moves a session to the end), so expiry looks only at the front.
        self._sessions: OrderedDict[str, Member] = OrderedDict()
        self._names: dict[str, str] = {}  # name -> session
        self._rooms: dict[str, set[str]] = {}  # room -> sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session: str) -> Member | None:
        return self._sessions.get(session)

    def owner_of(self, name: str) -> str | None:
        """The session currently holding ``name``, if any."""
        return self._names.get(name)

    def add(self, session: str, name: str, now: float) -> Member:
        """Register a session; the caller has checked that the name is free."""
        member = Member(session, name, now)
        self._sessions[session] = member
        self._names[name] = session
        return member

    def touch(self, session: str, now: float) -> Member | None:
        member = self._sessions.get(session)
        if member is not None:
            member.last_seen = now
            self._sessions.move_to_end(session)
        return member

    def join(self, member: Member, room: str) -> bool:
        """Put ``member`` in ``room``; False if it was already there."""
        if room in member.rooms:
            return False
        member.rooms.add(room)
        self._rooms.setdefault(room, set()).add(member.session)
        return True

    def part(self, member: Member, room: str) -> bool:
        """Take ``member`` out of ``room``; False if it was not there."""
        if room not in member.rooms:
            return False
        member.rooms.discard(room)
        sessions = self._rooms.get(room)
        if sessions is not None:
            sessions.discard(member.session)
            if not sessions:
                del self._rooms[room]
        return True

    def remove(self, session: str) -> Member | None:
        """Forget a session entirely (quit or timeout); returns it with its rooms intact."""
        member = self._sessions.pop(session, None)
        if member is None:
            return None
        if self._names.get(member.name) == session:
            del self._names[member.name]
        for room in member.rooms:
            sessions = self._rooms.get(room)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self._rooms[room]
        return member

    def expire(self, now: float, most: int | None = None) -> list[Member]:
        """Remove and return the sessions silent for longer than the timeout, the stalest first, until
        ``most`` is spent: each costs 1 + its rooms (each room hears of its leaving), and the first always
        goes. The rest go at the next call."""
        deadline = now - self.timeout
        dead, spent = [], 0
        for member in self._sessions.values():
            if member.last_seen >= deadline or (most is not None and dead and spent + 1 + len(member.rooms) > most):
                break  # everyone after this one was seen later
            dead.append(member.session)
            spent += 1 + len(member.rooms)
        return [m for m in map(self.remove, dead) if m is not None]

    def size_of(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    def names_in(self, room: str) -> list[str]:
        return sorted(self._sessions[s].name for s in self._rooms.get(room, ()))

    def room_count(self) -> int:
        """How many rooms have members."""
        return len(self._rooms)

    def room_names(self) -> list[str]:
        """Occupied rooms, sorted."""
        return sorted(self._rooms)

    def room_counts(self) -> dict[str, int]:
        return {room: len(sessions) for room, sessions in sorted(self._rooms.items())}

    def members(self) -> list[Member]:
        return list(self._sessions.values())
