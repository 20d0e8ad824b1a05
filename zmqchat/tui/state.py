"""What the full-screen client remembers and decides, with no terminal in sight.

Everything the screen shows is decided here, from the client's events and the user's actions: which rooms
are listed and their unread and mention counts, the lines of each room (a bounded window of them, paged
back from the server's history and forward again), the state of our own messages (sending, waiting,
failed), the "new messages" marker, who is in each room, the connection state and the echo latency, nick
completion and the input history. The Textual widgets only draw what this module says, so all of it is
tested without a terminal.

Pure: no Textual, no rich, no zmq, no asyncio, and no clock of its own (``clock`` is monotonic seconds,
injected). Timestamps are turned into local dates with ``time.localtime``, as ``display.clock_time`` does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from .. import events as ev
from ..client.display import PRESENCE_WORDS, clean, event_line, lost_line, mentions, topic_line

MAX_LINES = 5_000  # lines kept per room at its live end; older ones are fetched again on demand
TRIM_SLACK = 500  # lines allowed over MAX_LINES before a trim, so trimming is amortised, not per message
LIMIT = MAX_LINES + TRIM_SLACK  # the most lines one window of a room ever holds
PAGE_SIZE = 100  # messages asked for per scrollback page
AROUND = 25  # messages fetched on each side of a search result we jump to
RECONNECTED_FOR = 5.0  # seconds the status bar says "reconnected" before it says "connected" again
QUIET_ROOM = 500  # members above which the server (by default, --presence-limit) announces no joins/leaves
WHO_REFRESH = 30.0  # seconds between the who refreshes of a quiet room on screen
WHO_FORGET = 30.0  # seconds after which an unanswered who we asked for is forgotten
PASTE_CONFIRM = 10  # pasted lines above which sending them asks first
INPUT_HISTORY = 500  # input lines remembered for Up/Down
SPEAKERS = 50  # recent speakers remembered per room, for completion


def local_day(ts: float) -> tuple[int, int, int]:
    return time.localtime(ts)[:3]


@dataclass(eq=False, slots=True)
class Line:
    """One line of a room: a message (``seq`` > 0 once the server numbered it) or a local line (``kind``
    info, notice, error, presence, topic). Mutable; ``rev`` changes with it, so renderers cache by it."""

    kind: str
    text: str
    ts: float
    seq: int = 0
    sender: str = ""
    action: bool = False
    history: bool = False
    own: bool = False
    mid: str = ""
    mention: bool = False
    state: str = ""  # our messages: "sending", "waiting", "failed" or "" (delivered)
    reason: str = ""  # why a failed message failed
    rev: int = 0
    day: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        self.day = local_day(self.ts)

    def touch(self) -> None:
        self.rev += 1


@dataclass(frozen=True)
class Deco:
    """A row that is not a line: a day separator, the "new messages" marker, "loading…", the room's start."""

    kind: str  # "day", "marker", "loading", "start", "more", "detached"
    text: str


Row = Line | Deco


class Window:
    """A contiguous run of a room's lines, oldest first, with its messages' numbers for de-duplication."""

    def __init__(self, lines: Iterable[Line] = ()) -> None:
        self.lines: list[Line] = []
        self.seqs: set[int] = set()
        self.newest_seq = 0  # the highest message number held
        self.reordered = False  # a line went in before the end since the last look
        self.at_start = False  # nothing older exists (the server said so, or we hold seq 1)
        self.extend(lines)

    def __len__(self) -> int:
        return len(self.lines)

    def _index(self, line: Line) -> None:
        if line.seq:
            self.seqs.add(line.seq)
            self.newest_seq = max(self.newest_seq, line.seq)
            if line.seq == 1:
                self.at_start = True

    def _reindex(self) -> None:
        self.seqs = {line.seq for line in self.lines if line.seq}
        self.newest_seq = max(self.seqs, default=0)

    def numbered(self, line: Line) -> None:
        """``line`` (held already) got its number: our message, echoed."""
        self._index(line)

    @property
    def oldest_seq(self) -> int:
        return next((line.seq for line in self.lines if line.seq), 0)

    def append(self, line: Line) -> bool:
        """Add a line at its place (at the end unless it is an older message); False if held already."""
        if line.seq:
            if line.seq in self.seqs:
                return False
            if line.seq < self.newest_seq:
                at = next((i for i, other in enumerate(self.lines) if other.seq > line.seq), len(self.lines))
                self.lines.insert(at, line)
                self.reordered = True
                self._index(line)
                return True
        self.lines.append(line)
        self._index(line)
        return True

    def extend(self, lines: Iterable[Line]) -> int:
        return sum(self.append(line) for line in lines)

    def prepend(self, lines: list[Line]) -> int:
        """Older messages (oldest first) before everything held; returns how many were new."""
        oldest = self.oldest_seq
        older = [line for line in lines if line.seq not in self.seqs and (not oldest or line.seq < oldest)]
        self.lines[:0] = older
        for line in older:
            self._index(line)
        rest = [line for line in lines if line.seq not in self.seqs]
        return len(older) + self.extend(rest)

    def trim_front(self, keep: int) -> None:
        """Keep the newest ``keep`` lines."""
        if len(self.lines) > keep:
            self.lines = self.lines[-keep:] if keep else []
            self._reindex()
            self.at_start = 1 in self.seqs

    def trim_back(self, keep: int) -> None:
        """Keep the oldest ``keep`` lines."""
        if len(self.lines) > keep:
            self.lines = self.lines[:keep]
            self._reindex()

    def find(self, seq: int) -> Line | None:
        if seq not in self.seqs:
            return None
        return next(line for line in self.lines if line.seq == seq)


@dataclass
class PageAsk:
    """A page the front end should ask the server for: ``page(room, before, limit)``."""

    room: str
    before: int
    limit: int
    kind: str  # "older", "newer", "around"


@dataclass
class People:
    names: set[str] = field(default_factory=set)
    known: bool = False  # a who reply has listed the room (presence alone starts from nobody)
    quiet: bool = False  # too big for presence: refreshed by who instead
    asked_at: float = float("-inf")
    stale: bool = False  # reconnected since the last who


class RoomView:
    """One joined room: its lines (``window``; while scrolled away from the present, the live lines go to
    ``tail``), counts, marker, pages in flight, members and topic."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.window = Window()
        self.tail: Window | None = None  # the live end while ``window`` shows older talk (detached)
        self.unread = 0
        self.mentions = 0
        self.marker: Line | None = None  # "new messages" goes after this line
        self.paging: PageAsk | None = None  # the page in flight
        self.newest_seq = 0  # the newest message number seen for this room
        self.follow = True  # the screen shows the bottom (set by the view)
        self.highlight = 0  # the seq a search jumped to
        self.people = People()
        self.speakers: deque[str] = deque(maxlen=SPEAKERS)  # most recent last
        self.revision = 0  # bumped whenever what is drawn changes
        self.structure = 0  # bumped when the rows change other than by lines added at the end
        self._rows: list[Row] = []
        self._built = (-1, -1, 0)  # (revision, structure, window lines covered) of ``_rows``
        self._day: tuple[int, int, int] | None = None  # the day of the last message row
        self._marker_shown = False
        self._built_top: Deco | None = None

    @property
    def live(self) -> Window:
        return self.tail if self.tail is not None else self.window

    @property
    def detached(self) -> bool:
        return self.tail is not None

    def changed(self, structure: bool = True) -> None:
        """Something to draw changed; ``structure``: more than lines added at the end of the window."""
        self.revision += 1
        if structure:
            self.structure += 1

    def rows(self) -> list[Row]:
        """What the message area shows, top to bottom. Cached; lines added at the end only extend the
        rows (a burst costs what it adds, not the whole room). The list may grow in place."""
        revision, structure, covered = self._built
        if revision == self.revision:
            return self._rows
        appendable = (structure == self.structure and not self.detached and self._top() == self._built_top
                      and (self.marker is None or self._marker_shown) and covered <= len(self.window.lines))
        if appendable:
            lines = self.window.lines
            for line in lines[covered:]:
                self._add_line(line)
        else:
            self._build()
        self._built = (self.revision, self.structure, len(self.window.lines))
        return self._rows

    def _add_line(self, line: Line) -> None:
        if line.seq and line.day != self._day:  # messages carry the server's time; local lines follow them
            self._day = line.day
            self._rows.append(Deco("day", time.strftime("%A %d %B %Y", time.localtime(line.ts))))
        self._rows.append(line)

    def _top(self) -> Deco | None:
        if self.paging is not None and self.paging.kind in ("older", "around"):
            return Deco("loading", "loading…")
        if self.window.at_start:
            return Deco("start", f"the start of {self.name}")
        if self.window.lines:
            return Deco("more", "PageUp for older messages")
        return None

    def _build(self) -> None:
        window = self.window
        self._rows = out = []
        self._built_top = top = self._top()
        if top is not None:
            out.append(top)
        lines = window.lines
        marker_at = -1
        if self.marker is not None:  # shown only when someone else has written since
            newer = False
            for i in range(len(lines) - 1, -1, -1):
                line = lines[i]
                if line is self.marker:
                    marker_at = i if newer else -1
                    break
                newer = newer or (line.kind == "message" and not line.own)
        self._marker_shown = marker_at >= 0
        self._day = None
        for i, line in enumerate(lines):
            self._add_line(line)
            if i == marker_at:
                out.append(Deco("marker", "new messages"))
        if self.detached:
            if self.paging is not None and self.paging.kind == "newer":
                out.append(Deco("loading", "loading…"))
            else:
                out.append(Deco("detached", "older talk: PageDown for newer, Ctrl-End for the present"))


@dataclass
class Effects:
    """What a batch of events asks of the front end besides redrawing."""

    bell: bool = False
    search: ev.SearchResults | None = None
    who: set[str] = field(default_factory=set)  # rooms whose members to ask for (a bounded, one-room who)
    fatal: str = ""  # the session ended: leave with status 1


@dataclass
class Status:
    """What the status bar says."""

    name: str
    connection: str  # "connecting", "connected", "connection lost, retrying…" (or "…, switching to X…"), "reconnected"
    lost: bool
    server: str
    latency_ms: int | None
    sending: int


class ChatState:
    """The full-screen client's state; ``apply`` takes events, the other methods the user's actions."""

    def __init__(self, name: str, server: str = "", clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.server = server
        self.clock = clock
        self.wall_clock = wall_clock
        self.rooms: dict[str, RoomView] = {}
        self.lobby = RoomView("")  # where lines go while we are in no room at all
        self.current = ""
        self.connection = "connecting"
        self._connection_since = clock()
        self._switching_to = ""  # the server of a pair tried since the connection was lost
        self.latency: float | None = None  # seconds: the last echo of one of our messages
        self.pending: dict[str, tuple[Line, str, float]] = {}  # mid -> (line, room, sent at)
        self.known_rooms: set[str] = set()  # from /rooms replies, for #completion
        self._who: deque[tuple[bool, float]] = deque()  # whos in flight, oldest first: (automatic?, asked at)
        self.motd_shown = False

    # -- rooms

    def view(self, room: str) -> RoomView:
        found = self.rooms.get(room)
        if found is None:
            found = self.rooms[room] = RoomView(room)
        return found

    @property
    def current_view(self) -> RoomView:
        return self.rooms.get(self.current) or self.lobby

    def sync_rooms(self, joined: Iterable[str], current: str) -> None:
        """Follow the client's joined rooms and current room (after a command, or a batch of events)."""
        joined = list(joined)
        for room in joined:
            self.view(room)
        for room in [r for r in self.rooms if r not in joined]:
            del self.rooms[room]
        if current != self.current:
            self.switch(current)

    def switch(self, room: str) -> None:
        """Show ``room``: its counts clear; the one we leave remembers where we stopped reading."""
        before = self.rooms.get(self.current)
        if before is not None and self.current != room:
            lines = before.live.lines
            before.marker = lines[-1] if lines else None
            before.changed()
        self.current = room
        view = self.rooms.get(room)
        if view is not None:
            view.unread = view.mentions = 0
            view.follow = True
            view.changed()

    def room_at(self, index: int) -> str | None:
        """The room at ``index`` (0-based) of the list, or None."""
        names = list(self.rooms)
        return names[index] if 0 <= index < len(names) else None

    def neighbour(self, step: int) -> str | None:
        """The room ``step`` places after the current one in the list, wrapping round."""
        names = list(self.rooms)
        if not names:
            return None
        at = names.index(self.current) if self.current in names else -1
        return names[(at + step) % len(names)]

    # -- what the user did

    def sent(self, room: str, mid: str, text: str, action: bool = False) -> Line:
        """Our message, shown at once as sending (it turns normal on the server's echo)."""
        view = self.view(room)
        if view.detached:
            self.back_to_present(room)
        line = Line("message", text, self.wall_clock(), sender=self.name, action=action, own=True, mid=mid,
                    state="sending")
        view.live.append(line)
        if view.marker is not None:
            view.marker = None  # we answered: read
            view.changed()
        self.pending[mid] = (line, room, self.clock())
        self._grew(view)
        return line

    def refused(self, room: str, text: str, reason: str, action: bool = False) -> Line:
        """Our message refused before it was sent (too long, not in the room): shown as failed."""
        view = self.view(room or self.current)
        line = Line("message", text, self.wall_clock(), sender=self.name, action=action, own=True,
                    state="failed", reason=reason)
        view.live.append(line)
        self._grew(view)
        return line

    def note(self, text: str, kind: str = "info", room: str | None = None, ts: float | None = None) -> None:
        """A local line (a command's reply, a hint, an error) in ``room`` (default: the current one)."""
        view = self.rooms.get(room) if room is not None else self.current_view
        if view is None:
            return
        for part in text.split("\n"):
            line = Line(kind, part, self.wall_clock() if ts is None else ts)
            view.live.append(line)
            if view.detached:
                view.window.append(line)  # where the user is looking, too
        self._grew(view)

    def asked_who(self, automatic: bool) -> None:
        """A who went out: its reply is shown as text unless we asked for it ourselves (the people list)."""
        self._who.append((automatic, self.clock()))

    def refresh_states(self, message_state: Callable[[str], str]) -> None:
        """Our messages in flight: "sending", or "waiting" while the server's throttle holds them."""
        for line, room, _ in self.pending.values():
            state = message_state(line.mid) or line.state
            if state != line.state:
                line.state = state
                line.touch()
                view = self.rooms.get(room)
                if view is not None:
                    view.changed()

    # -- scrollback

    def want_older(self, room: str | None = None) -> PageAsk | None:
        """The page to ask for when the user scrolls past the oldest line held; None when one is in flight
        or the room's start is on screen."""
        view = self.rooms.get(room or self.current)
        if view is None or view.paging is not None or view.window.at_start:
            return None
        view.paging = PageAsk(view.name, view.window.oldest_seq, PAGE_SIZE, "older")
        view.changed()
        return view.paging

    def want_newer(self, room: str | None = None) -> PageAsk | None:
        """The next page towards the present, when scrolled away from it (None when at the present)."""
        view = self.rooms.get(room or self.current)
        if view is None or not view.detached or view.paging is not None:
            return None
        newest = view.window.newest_seq
        view.paging = PageAsk(view.name, newest + PAGE_SIZE + 1, PAGE_SIZE, "newer")
        view.changed()
        return view.paging

    def jump(self, room: str, seq: int) -> PageAsk | None:
        """Show message ``seq`` of ``room`` (a search result) with the lines around it: at once if held,
        else the page to ask for."""
        if room != self.current:
            self.switch(room)
        view = self.view(room)
        view.highlight = seq
        view.follow = False
        view.changed()
        if view.window.find(seq) is not None:
            return None
        if view.tail is not None and view.tail.find(seq) is not None:
            self.back_to_present(room)
            view.highlight, view.follow = seq, False
            return None
        if view.tail is None:
            view.tail = view.window
        view.window = Window()
        view.paging = PageAsk(room, seq + AROUND + 1, 2 * AROUND + 1, "around")
        return view.paging

    def back_to_present(self, room: str | None = None) -> None:
        """Leave older talk for the live end of the room."""
        view = self.rooms.get(room or self.current)
        if view is None:
            return
        if view.tail is not None:
            view.window, view.tail = view.tail, None
            if view.paging is not None and view.paging.kind in ("newer", "around"):
                view.paging = None
        view.highlight = 0
        view.follow = True
        view.changed()

    def _on_page(self, page: ev.Page, effects: Effects) -> None:
        view = self.rooms.get(page.room)
        if view is None:
            return
        lines = [self._message_line(m) for m in page.messages]
        ask, view.paging = view.paging, None
        if ask is not None and ask.before != page.before:
            view.paging = ask  # an answer to something else (an older request): ours is still in flight
            ask = None
        kind = ask.kind if ask is not None else "older"
        if kind == "around":
            view.window = Window(lines)
            view.window.at_start = view.window.at_start or page.start
        elif kind == "newer":
            view.window.extend(lines)
            if len(view.window) > LIMIT:
                view.window.trim_front(LIMIT)
        else:
            view.window.prepend(lines)
            if page.start or not lines:
                view.window.at_start = True
            if len(view.window) > LIMIT:
                if view.tail is None:  # paged far back: keep the live end apart, bounded
                    view.tail = Window(view.window.lines[-MAX_LINES:])
                    view.tail.at_start = False
                view.window.trim_back(LIMIT)
        if view.tail is not None and kind in ("around", "newer"):
            self._maybe_rejoin(view, reached_end=kind == "newer" and not lines)
        view.changed()

    def _maybe_rejoin(self, view: RoomView, reached_end: bool) -> None:
        """A detached window that reaches the live end becomes it again."""
        tail = view.tail
        assert tail is not None
        newest = view.window.newest_seq
        touches = not tail.seqs or newest + 1 >= tail.oldest_seq or newest >= view.newest_seq
        if not (touches or reached_end):
            return
        held = set(map(id, view.window.lines))
        window = view.window
        window.extend(line for line in tail.lines if id(line) not in held and (not line.seq or line.seq > newest))
        view.tail = None
        if len(window) > LIMIT:
            window.trim_front(MAX_LINES)

    # -- events

    def apply(self, found: Iterable[ev.Event]) -> Effects:
        """Take a batch of the client's events; returns what else the front end must do."""
        effects = Effects()
        for event in found:
            handler = self._handlers.get(type(event))
            if handler is not None:
                handler(self, event, effects)
            else:
                line = event_line(event)
                if line:
                    self.note(line)
        return effects

    def _message_line(self, event: ev.Message) -> Line:
        return Line("message", event.text, event.ts, seq=event.seq, sender=event.sender, action=event.action,
                    history=event.history, own=event.own, mid=event.mid,
                    mention=not event.own and mentions(event.text, self.name))

    def _on_message(self, event: ev.Message, effects: Effects) -> None:
        view = self.view(event.room)
        view.newest_seq = max(view.newest_seq, event.seq)
        pending = self.pending.pop(event.mid, None) if event.own else None
        if pending is not None:
            line, _, sent_at = pending
            self.latency = self.clock() - sent_at
            line.seq, line.ts, line.state, line.history = event.seq, event.ts, "", event.history
            line.touch()
            view.live.numbered(line)
            view.changed()
            return
        line = self._message_line(event)
        target = view.live
        if view.detached and event.seq == view.window.newest_seq + 1 and event.seq > view.live.newest_seq:
            target = view.window  # continues what is on screen: the window reached the present
        if not target.append(line):
            return
        if target is view.window and view.tail is not None:
            self._maybe_rejoin(view, reached_end=True)
        if not event.history:
            if not event.own:
                view.speakers.append(event.sender)
                if event.room != self.current:
                    view.unread += 1
                    view.mentions += line.mention
            effects.bell = effects.bell or line.mention
        self._grew(view)

    def _grew(self, view: RoomView) -> None:
        """Lines were added to the live end of ``view``: keep it bounded."""
        live = view.live
        structure = view.detached or live.reordered
        live.reordered = False
        if len(live) > LIMIT and (view.follow or view.detached or len(live) > 2 * LIMIT):
            live.trim_front(MAX_LINES)
            structure = True
            if view.marker is not None and view.marker not in live.lines:
                view.marker = None
        view.changed(structure)

    def _on_error(self, event: ev.Error, effects: Effects) -> None:
        pending = self.pending.pop(event.mid, None) if event.mid else None
        if pending is not None:
            line, room, _ = pending
            line.state, line.reason = "failed", clean(event.message)
            line.touch()
            if room in self.rooms:
                self.rooms[room].changed()
            return
        if event.fatal:
            effects.fatal = event.message
        self.note(f"ERROR: {clean(event.message)}", "error")

    def _on_presence(self, event: ev.Presence, effects: Effects) -> None:
        view = self.rooms.get(event.room)
        if view is None:
            return
        people = view.people
        if event.event == "join":
            people.names.add(event.name)
            if event.name == self.name:
                effects.who.add(event.room)  # our join: who is there already?
        else:
            people.names.discard(event.name)
        word = PRESENCE_WORDS.get(event.event, event.event)
        self.note(f"-- {clean(event.name)} {word}", "presence", event.room, event.ts)

    def _on_who(self, event: ev.Who, effects: Effects) -> None:
        now = self.clock()
        while self._who and now - self._who[0][1] > WHO_FORGET:
            self._who.popleft()
        automatic = self._who.popleft()[0] if self._who else False
        for room, names in event.rooms.items():
            view = self.rooms.get(room)
            if view is None:
                continue
            people = view.people
            people.names = set(names)
            people.known = True
            people.stale = False
            people.quiet = len(names) > QUIET_ROOM
            view.changed(structure=False)
        if not automatic:
            self.note(event_line(event) or "")

    def _on_rooms(self, event: ev.Rooms, effects: Effects) -> None:
        self.known_rooms |= set(event.rooms)
        self.note(event_line(event) or "")

    def _on_topic(self, event: ev.Topic, effects: Effects) -> None:
        if event.room in self.rooms:
            self.note(topic_line(event), "topic", event.room)

    def _on_connected(self, event: ev.Connected, effects: Effects) -> None:
        self._set_connection("reconnected" if event.reconnected else "connected")
        if event.reconnected:
            for view in self.rooms.values():
                view.people.stale = True
            if self.current:
                effects.who.add(self.current)
            self.note("reconnected", "notice")
        elif not self.motd_shown:
            self.motd_shown = True
            self.note(event_line(event) or "")

    def _on_lost(self, event: ev.ConnectionLost, effects: Effects) -> None:
        self._set_connection("lost")
        self._switching_to = event.switching_to
        if event.switching_to:
            self.server = event.switching_to  # the server of the pair we try now: the status bar names it
        self.note(event_line(event) or "", "notice")

    def _on_shutdown(self, event: ev.ServerShutdown, effects: Effects) -> None:
        self.note(event_line(event) or "", "notice")

    def _on_notice(self, event: ev.Notice, effects: Effects) -> None:
        self.note(event_line(event) or "", "notice")

    def _on_search(self, event: ev.SearchResults, effects: Effects) -> None:
        if event.results:
            effects.search = event
        else:
            self.note(event_line(event) or "")

    def _on_page_event(self, event: ev.Page, effects: Effects) -> None:
        self._on_page(event, effects)

    def _on_closed(self, event: ev.Closed, effects: Effects) -> None:
        pass

    _handlers: ClassVar[dict[type, Callable[[ChatState, ev.Event, Effects], None]]] = {
        ev.Message: _on_message, ev.Error: _on_error, ev.Presence: _on_presence, ev.Who: _on_who,
        ev.Rooms: _on_rooms, ev.Topic: _on_topic, ev.Connected: _on_connected, ev.ConnectionLost: _on_lost,
        ev.ServerShutdown: _on_shutdown, ev.Notice: _on_notice, ev.SearchResults: _on_search,
        ev.Page: _on_page_event, ev.Closed: _on_closed,
    }  # type: ignore[dict-item]

    # -- time passing

    def tick(self) -> Effects:
        """Timers: "reconnected" fades to "connected"; a quiet room on screen gets its who refresh."""
        effects = Effects()
        now = self.clock()
        if self.connection == "reconnected" and now - self._connection_since > RECONNECTED_FOR:
            self.connection = "connected"
        view = self.rooms.get(self.current)
        if view is not None and self.connection in ("connected", "reconnected"):
            people = view.people
            due = people.quiet and now - people.asked_at > WHO_REFRESH
            if due or people.stale or (not people.known and now - people.asked_at > WHO_FORGET):
                effects.who.add(view.name)
        return effects

    def who_sent(self, room: str) -> None:
        """An automatic who for ``room`` went out."""
        view = self.rooms.get(room)
        if view is not None:
            view.people.asked_at = self.clock()
            view.people.stale = False
        self.asked_who(automatic=True)

    def _set_connection(self, state: str) -> None:
        self.connection = state
        self._connection_since = self.clock()

    def status(self) -> Status:
        words = {"lost": lost_line(self._switching_to)}
        return Status(self.name, words.get(self.connection, self.connection), self.connection == "lost",
                      self.server, None if self.latency is None else round(self.latency * 1000),
                      len(self.pending))

    # -- completion

    def nicks(self, room: str | None = None) -> list[str]:
        """Names to complete in ``room``: its recent speakers (latest first), then its members, sorted."""
        view = self.rooms.get(room or self.current)
        if view is None:
            return []
        out = list(dict.fromkeys(reversed(view.speakers)))
        out += sorted(view.people.names - set(out), key=str.lower)
        return [n for n in out if n != self.name]


class Completer:
    """Tab completion of the word before the cursor: nicks (``ali`` -> ``alice: `` at the line's start),
    /commands at the start, #rooms anywhere; Tab again cycles through the candidates."""

    def __init__(self) -> None:
        self._cycle: tuple[str, int, str, int, list[str], int, str] | None = None

    def reset(self) -> None:
        self._cycle = None

    def complete(self, text: str, cursor: int, nicks: list[str], commands: Iterable[str],
                 rooms: Iterable[str]) -> tuple[str, int] | None:
        """(new text, new cursor), or None when nothing matches."""
        if self._cycle is not None and (text, cursor) == self._cycle[:2]:
            _, _, original, start, candidates, index, tail = self._cycle
            index = (index + 1) % len(candidates)
            return self._apply(original, start, candidates, index, tail)
        start = text.rfind(" ", 0, cursor) + 1
        word = text[start:cursor]
        if not word:
            return None
        if start == 0 and word.startswith("/"):
            candidates = [w + " " for w in commands if w.startswith(word.lower())]
        elif word.startswith("#"):
            candidates = [r + " " for r in sorted(set(rooms)) if r.lower().startswith(word.lower())]
        else:
            at = "@" if word.startswith("@") else ""
            base = word[len(at):].lower()
            suffix = ": " if start == 0 and not at else " "
            candidates = [at + n + suffix for n in nicks if n.lower().startswith(base)]
        if not candidates:
            return None
        return self._apply(text[:start] + text[cursor:], start, candidates, 0, text[cursor:])

    def _apply(self, original: str, start: int, candidates: list[str], index: int, tail: str) -> tuple[str, int]:
        head = original[:start]
        choice = candidates[index]
        if tail.startswith(" ") and choice.endswith(" "):
            choice = choice[:-1]
        new = head + choice + tail
        cursor = len(head) + len(choice)
        self._cycle = (new, cursor, original, start, candidates, index, tail)
        return new, cursor


class InputHistory:
    """Lines typed before, for Up and Down; the line being typed is kept while browsing."""

    def __init__(self, size: int = INPUT_HISTORY) -> None:
        self.entries: deque[str] = deque(maxlen=size)
        self._at: int | None = None  # index into entries while browsing
        self._draft = ""

    def add(self, line: str) -> None:
        if line.strip() and (not self.entries or self.entries[-1] != line):
            self.entries.append(line)
        self._at = None

    def up(self, current: str) -> str | None:
        if not self.entries:
            return None
        if self._at is None:
            self._draft, self._at = current, len(self.entries)
        if self._at == 0:
            return None
        self._at -= 1
        return self.entries[self._at]

    def down(self) -> str | None:
        if self._at is None:
            return None
        self._at += 1
        if self._at >= len(self.entries):
            self._at = None
            return self._draft
        return self.entries[self._at]


def paste_lines(text: str) -> list[str]:
    """The lines of a paste that would be sent (blank ones are not: they would be refused as empty)."""
    return [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line.strip()]


def needs_confirmation(lines: list[str]) -> bool:
    return len(lines) > PASTE_CONFIRM
