"""One name's zmqchat session, shared by every browser tab logged in as that name.

A ``Person`` owns a ``ClientSession`` (run by the ``Hub``) and the tabs that show it. It renders the
session's events for the tabs (the ``--json`` schema, text made safe with ``display.clean``), runs the
tabs' commands through the same checks and the same command table as the terminal client (a never-started
``sync.Client`` and ``commands.run_line``), and keeps the promises a tab relies on across reconnects:

- **Resume**: a tab says where it stands (last seq per room, the epoch); if the session was already running,
  the gap between that and where the session is gets filled from the server's history (``page`` requests,
  delivered as ordinary messages), then the tab hears ``synced``. A session started for the tab starts from
  the tab's numbers, so the session's own catch-up fills the gap.
- **Once**: a message carries the page's own id. The id is remembered with the session's message id; the
  same id again (the page resending after a reconnect) is answered with where the message stands, never
  sent twice.

Nothing here touches a socket or the event loop: a tab is anything with ``send(text)`` and
``close(code, reason)``; the hub moves the session's frames.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Protocol

from .. import events as ev
from .. import protocol as p
from ..client import commands
from ..client.display import clean, mention_pattern
from ..client.sync import Client
from ..errors import ZmqchatError
from . import wire

BACKLOG = 50  # messages a tab gets of a room it knows nothing of, when the session already runs
FILL_ROUNDS = 10  # page requests a tab's gap is filled with at most (x MAX_PAGE messages), then "scroll up"
ANSWERS_KEPT = 4096  # page ids remembered per name with what became of them
ASK_WAIT = 20.0  # seconds a page or search request is waited for before the tab is told it got no answer
SYNC_WAIT = 10.0  # seconds after which a tab is told ``synced`` even if the session is still catching up
EXPECTED = {"/who": "who", "/rooms": "rooms", "/stats": "stats"}  # typed commands whose answer the tab shows


class Tab(Protocol):
    """What a Person needs of a browser tab (the gateway's WebSocket connection)."""

    room: str  # the tab's current room
    awaiting_sync: bool
    sync_by: float
    fills: int  # gap fills outstanding
    expect: set[str]  # event types the tab asked for by a typed command

    def send(self, text: str) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


@dataclass
class Waiter:
    """A tab waiting for a page: to browse back ("browse"), for the backlog of a room it did not know
    ("backlog"), or for the messages it missed ("fill", those with seq > ``floor``)."""

    tab: Tab
    purpose: str
    floor: int = 0
    rounds: int = 0
    until: float = 0.0


@dataclass
class Answer:
    """What became of a tab's line or message ``id``: the event to repeat when the id comes again."""

    mid: str = ""
    event: dict[str, Any] = field(default_factory=dict)


def cleaned(value: Any) -> Any:
    """``value`` with every string made safe to show (``display.clean``: one code point for one, so search
    marks still point at the right characters)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k): cleaned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [cleaned(v) for v in value]
    return value


def render(event: ev.Event, **extra: Any) -> str:
    """One event as the text a tab is sent."""
    return wire.encode(cleaned({**event.to_dict(), **extra}))


@lru_cache(maxsize=8192)
def render_message(event: ev.Message, mention: bool) -> str:
    """A room message as a tab gets it: one broadcast reaches many sessions, each with an equal event, so
    the text is made once for all of them."""
    return render(event, mention=mention) if mention else render(event)


def gateway_event(kind: str, **fields: Any) -> str:
    return wire.encode(cleaned({"type": kind, **fields}))


class Person:
    """The session of ``name`` and the tabs that show it. ``on_end(person, code, reason)`` is called when
    the session cannot go on (a fatal refusal from the server)."""

    def __init__(self, name: str, *, context: Any, in_endpoint: str, out_endpoint: str,
                 rooms: list[str], resume: wire.Resume | None = None,
                 flush: Callable[[Person], None] = lambda person: None,
                 on_end: Callable[[Person, int, str], None] = lambda person, code, reason: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        rooms = [p.normalise_room(r) for r in rooms] or ["#general"]
        # A never-started Client: its actions run the checks every client shares and queue into the session.
        self.checks = Client(name, in_endpoint=in_endpoint, out_endpoint=out_endpoint, rooms=list(dict.fromkeys(rooms)),
                             context=context, connect=False)
        self.session = self.checks.session
        self.name = name
        self.clock = clock
        self._flush_hub = flush
        self.on_end = on_end
        self.tabs: dict[Tab, None] = {}
        self.idle_since: float | None = clock()
        self.welcome: ev.Connected | None = None
        self.fatal: ev.Error | None = None
        self.listeners: list[Callable[[ev.Event], None]] = []  # told of the welcome or a fatal refusal
        self.answers: OrderedDict[str, Answer] = OrderedDict()  # page id -> what became of it
        self.by_mid: dict[str, str] = {}  # our message id -> the page's id, until echoed or refused
        self.pages: dict[tuple[str, int], list[Waiter]] = {}  # (room, before) -> tabs waiting for that page
        self.searches: dict[tuple, list[tuple[Tab, float]]] = {}  # (query, sender, room, limit) -> tabs waiting
        self.search_rids: dict[str, tuple] = {}  # rid of a search asked -> its key in searches
        self._mention = mention_pattern(name)
        self._delivering = False
        self._epoch_told = ""
        if resume is not None:
            self._start_from(resume)

    def _start_from(self, resume: wire.Resume) -> None:
        """Start where the tab stands: its rooms count as joined up to its numbers, so the first hello asks
        for what came after (the session's catch-up) instead of a backlog."""
        if resume.epoch:
            self._epoch_told = resume.epoch
            self.session.resume_from(resume.rooms, resume.epoch, resume.term)

    # -- tabs

    def joined(self) -> list[str]:
        """Our rooms, as the session has them (not those being left)."""
        return [room for room in self.session.rooms if room not in self.session.parting]

    def attach(self, tab: Tab, resume: wire.Resume, fresh: bool) -> None:
        """Show this session in ``tab``: the welcome, then what the tab missed, then ``synced``."""
        self.tabs[tab] = None
        self.idle_since = None
        rooms = self.joined()
        wanted = p.normalise_room(resume.room) if resume.room else ""
        tab.room = wanted if wanted in rooms else (self.session.current_room if self.session.current_room in rooms
                                                   else (rooms[0] if rooms else ""))
        topics = {room: {"text": t.text, "by": t.by, "ts": t.ts} for room, t in self.session.topics.items()
                  if room in rooms and t.text}
        tab.send(gateway_event("welcome", name=self.name, rooms=rooms, room=tab.room, epoch=self.session.epoch,
                               term=self.session.term,
                               connected=self.session.connected, topics=topics,
                               max_text_bytes=self.session.max_text_bytes,
                               motd=self.welcome.motd if self.welcome else ""))
        tab.awaiting_sync = True
        tab.sync_by = self.clock() + SYNC_WAIT
        if not fresh:
            same = bool(resume.epoch) and resume.epoch == self.session.epoch
            for room in rooms:
                sync = self.session.rooms[room]
                if not sync.joined:
                    continue  # its join is in flight: its backlog reaches every tab
                known = resume.rooms.get(room) if same else None
                if known is None:
                    if sync.last:
                        self._ask_page(tab, room, sync.last + 1, BACKLOG, "backlog")
                elif known < sync.last:
                    tab.fills += 1
                    self._ask_page(tab, room, sync.last + 1, min(sync.last - known, wire.MAX_PAGE), "fill", known)
        self._check_synced()
        self.flush()

    def detach(self, tab: Tab) -> None:
        self.tabs.pop(tab, None)
        for waiters in self.pages.values():
            waiters[:] = [w for w in waiters if w.tab is not tab]
        for key in list(self.searches):
            self.searches[key] = [(t, until) for t, until in self.searches[key] if t is not tab]
        if not self.tabs:
            self.idle_since = self.clock()

    def to_all(self, text: str) -> None:
        for tab in list(self.tabs):
            tab.send(text)

    # -- commands from a tab

    def handle(self, tab: Tab, cmd: wire.Command) -> None:
        """Act on one command of ``tab`` (``Resume`` is the gateway's). Never raises for bad arguments:
        the tab is told."""
        handler = self.HANDLERS.get(type(cmd))
        if handler is None:
            tab.send(gateway_event("error", code=wire.BAD_MESSAGE, message=f"{cmd.KIND} is not expected now",
                                   fatal=False, mid=""))
            return
        try:
            handler(self, tab, cmd)
        except ZmqchatError as exc:
            tab.send(gateway_event("error", code=wire.LOCAL, message=str(exc), fatal=False, mid=""))
        self.flush()

    def _repeat(self, tab: Tab, page_id: str) -> bool:
        """Answer an id seen before (the page sent it again after a reconnect); False if it is new."""
        answer = self.answers.get(page_id)
        if answer is None:
            return False
        if answer.mid and self.session.message_state(answer.mid):
            tab.send(gateway_event("sending", id=page_id, mid=answer.mid, room=answer.event.get("room", "")))
        else:
            tab.send(wire.encode(answer.event))
        return True

    def _remember(self, page_id: str, answer: Answer) -> None:
        self.answers[page_id] = answer
        self.answers.move_to_end(page_id)
        while len(self.answers) > ANSWERS_KEPT:
            _, old = self.answers.popitem(last=False)
            self.by_mid.pop(old.mid, None)

    def _on_say(self, tab: Tab, cmd: wire.Say) -> None:
        if self._repeat(tab, cmd.id):
            return
        try:
            mid = self.checks.say(cmd.text, cmd.room, cmd.action)
        except ZmqchatError as exc:
            self._answer(tab, cmd.id, {"type": "failed", "id": cmd.id, "mid": "", "code": wire.LOCAL,
                                       "message": str(exc)})
            return
        self._sending(tab, cmd.id, mid, p.normalise_room(cmd.room))

    def _sending(self, tab: Tab, page_id: str, mid: str, room: str) -> None:
        self.by_mid[mid] = page_id
        self._remember(page_id, Answer(mid, {"type": "sent", "id": page_id, "mid": mid, "room": room, "seq": 0}))
        tab.send(gateway_event("sending", id=page_id, mid=mid, room=room))

    def _answer(self, tab: Tab, page_id: str, event: dict[str, Any]) -> None:
        event = cleaned(event)
        self._remember(page_id, Answer("", event))
        tab.send(wire.encode(event))

    def _on_line(self, tab: Tab, cmd: wire.Line) -> None:
        if self._repeat(tab, cmd.id):
            return
        if cmd.room:
            room = p.normalise_room(cmd.room)
            if room in self.joined():
                tab.room = room
        view = TabCommands(self, tab)
        result = commands.run_line(view, cmd.text)
        if view.said:
            self._sending(tab, cmd.id, view.said, view.said_room)
            return
        word = cmd.text.split()[0].lower() if cmd.text.split() else ""
        if word in EXPECTED and not isinstance(result, (commands.Reply, commands.Error)):
            tab.expect.add(EXPECTED[word])
        if isinstance(result, commands.Reply):
            event = {"type": "reply", "id": cmd.id, "text": result.text, "room": tab.room}
        elif isinstance(result, commands.Help):
            event = {"type": "help", "id": cmd.id, "text": result.text}
        elif isinstance(result, commands.Error):
            event = {"type": "failed", "id": cmd.id, "mid": "", "code": wire.LOCAL, "message": result.message}
        else:
            event = {"type": "done", "id": cmd.id, "room": tab.room, "quit": isinstance(result, commands.Quit)}
        self._answer(tab, cmd.id, event)

    def _on_join(self, tab: Tab, cmd: wire.Join) -> None:
        TabCommands(self, tab).join(cmd.room)
        if cmd.id:
            self._answer(tab, cmd.id, {"type": "done", "id": cmd.id, "room": tab.room, "quit": False})

    def _on_part(self, tab: Tab, cmd: wire.Part) -> None:
        TabCommands(self, tab).part(cmd.room)
        if cmd.id:
            self._answer(tab, cmd.id, {"type": "done", "id": cmd.id, "room": tab.room, "quit": False})

    def _on_who(self, tab: Tab, cmd: wire.Who) -> None:
        self.checks.who(cmd.room)

    def _on_history(self, tab: Tab, cmd: wire.History) -> None:
        self.checks.history(cmd.count, cmd.room)

    def _on_page(self, tab: Tab, cmd: wire.Page) -> None:
        room = p.normalise_room(cmd.room)
        if room not in self.session.rooms:
            raise ZmqchatError(f"you are not in {room}; join it first")
        self._ask_page(tab, room, cmd.before, cmd.limit, "browse")

    def _on_search(self, tab: Tab, cmd: wire.Search) -> None:
        self._search(tab, cmd.query, cmd.sender, p.normalise_room(cmd.room) if cmd.room else "", cmd.limit)

    def _search(self, tab: Tab, query: str, sender: str, room: str, limit: int) -> str:
        key = (query, sender, room, limit)
        waiting = self.searches.setdefault(key, [])
        waiting.append((tab, self.clock() + ASK_WAIT))
        if len(waiting) > 1:
            return ""  # the same search is already asked: its answer goes to every tab waiting
        rid = self.checks.search(query, sender, room, limit)
        self.search_rids[rid] = key
        return rid

    def _on_topic(self, tab: Tab, cmd: wire.SetTopic) -> None:
        self.checks.set_topic(cmd.text, cmd.room)

    def _on_rooms(self, tab: Tab, cmd: wire.Rooms) -> None:
        self.checks.rooms()

    def _on_stats(self, tab: Tab, cmd: wire.Stats) -> None:
        self.checks.stats()

    def _on_ping(self, tab: Tab, cmd: wire.Ping) -> None:
        tab.send(gateway_event("pong"))

    HANDLERS: ClassVar[dict[type[wire.Command], Callable[[Person, Tab, Any], None]]] = {
        wire.Say: _on_say, wire.Line: _on_line, wire.Join: _on_join, wire.Part: _on_part, wire.Who: _on_who,
        wire.History: _on_history, wire.Page: _on_page, wire.Search: _on_search, wire.SetTopic: _on_topic,
        wire.Rooms: _on_rooms, wire.Stats: _on_stats, wire.Ping: _on_ping,
    }

    def _ask_page(self, tab: Tab, room: str, before: int, limit: int, purpose: str, floor: int = 0,
                  rounds: int = 0) -> None:
        """Ask for a page for ``tab``; tabs asking for the same (room, before) share one request."""
        waiter = Waiter(tab, purpose, floor, rounds, self.clock() + ASK_WAIT)
        waiting = self.pages.get((room, before))
        if waiting is not None:
            waiting.append(waiter)
            return
        self.pages[(room, before)] = [waiter]
        self.checks.page(room, before, limit)

    # -- events from the session (the hub calls this)

    def deliver(self, events: list[ev.Event]) -> None:
        was, self._delivering = self._delivering, True
        try:
            for event in events:
                handler = self.EVENTS.get(type(event))
                if handler is not None:
                    handler(self, event)
                else:
                    self.to_all(render(event))
            self._check_synced()
        finally:
            self._delivering = was

    def flush(self) -> None:
        """Send what the session queued (not while delivering: the hub flushes again after that)."""
        if not self._delivering:
            self._flush_hub(self)

    def _ev_message(self, event: ev.Message) -> None:
        page_id = self.by_mid.pop(event.mid, None) if event.own else None
        if page_id is not None:
            self._remember(page_id, Answer("", {"type": "sent", "id": page_id, "mid": event.mid, "room": event.room,
                                                "seq": event.seq}))
            self.to_all(render(event, id=page_id))
            return
        mention = not event.own and not event.history and bool(self._mention.search(event.text))
        self.to_all(render_message(event, mention))

    def _ev_page(self, event: ev.Page) -> None:
        waiters = self.pages.pop((event.room, event.before), [])
        text = None
        for waiter in waiters:
            if waiter.tab not in self.tabs:
                continue
            if waiter.purpose != "fill":
                text = text or render(event)
                waiter.tab.send(text)
                continue
            for message in event.messages:
                if message.seq > waiter.floor:
                    new = dataclasses.replace(message, history=False)  # missed while away: new to the tab
                    mention = not new.own and bool(self._mention.search(new.text))
                    waiter.tab.send(render_message(new, mention))
            oldest = event.messages[0].seq if event.messages else 0
            if oldest > waiter.floor + 1 and not event.start:
                if waiter.rounds + 1 < FILL_ROUNDS:
                    self._ask_page(waiter.tab, event.room, oldest, min(oldest - 1 - waiter.floor, wire.MAX_PAGE),
                                   "fill", waiter.floor, waiter.rounds + 1)
                    continue
                waiter.tab.send(gateway_event("notice", text=f"{event.room}: {oldest - 1 - waiter.floor} older "
                                              "message(s) you missed were not loaded; scroll up to read them"))
            self._filled(waiter.tab)

    def _filled(self, tab: Tab) -> None:
        tab.fills = max(0, tab.fills - 1)

    def _ev_search(self, event: ev.SearchResults) -> None:
        key = self.search_rids.pop(event.rid, None)  # the request it answers, exactly (filters and all)
        waiting = self.searches.pop(key, []) if key is not None else []
        tabs = [tab for tab, _ in waiting if tab in self.tabs] or list(self.tabs)
        text = render(event)
        for tab in tabs:
            tab.send(text)

    def _ev_error(self, event: ev.Error) -> None:
        if event.mid:
            page_id = self.by_mid.pop(event.mid, "")
            answer = {"type": "failed", "id": page_id, "mid": event.mid, "code": event.code,
                      "message": event.message}
            if page_id:
                self._remember(page_id, Answer("", cleaned(answer)))
            self.to_all(gateway_event(**answer))
            return
        self.to_all(render(event))
        if event.fatal or event.code == p.ERR_REVOKED:
            self.fatal = event
            self._tell(event)
            self.on_end(self, 4403, event.message)

    def _ev_connected(self, event: ev.Connected) -> None:
        if self.session.epoch != self._epoch_told:
            if self._epoch_told:  # the server's history started over: every tab's numbers mean nothing now
                self.to_all(gateway_event("reset", epoch=self.session.epoch))
            self._epoch_told = self.session.epoch
        self.welcome = event
        self.to_all(render(event))
        self._tell(event)

    def _ev_answer(self, event: ev.Who | ev.Rooms | ev.Stats) -> None:
        plain = asked = None
        for tab in list(self.tabs):
            if event.type in tab.expect:
                tab.expect.discard(event.type)
                asked = asked or render(event, asked=True)
                tab.send(asked)
            else:
                plain = plain or render(event)
                tab.send(plain)

    def _ev_closed(self, event: ev.Closed) -> None:
        pass  # our goodbye was confirmed: the gateway has let the session go already

    EVENTS: ClassVar[dict[type[ev.Event], Callable[[Person, Any], None]]] = {
        ev.Message: _ev_message, ev.Page: _ev_page, ev.SearchResults: _ev_search, ev.Error: _ev_error,
        ev.Connected: _ev_connected, ev.Who: _ev_answer, ev.Rooms: _ev_answer, ev.Stats: _ev_answer,
        ev.Closed: _ev_closed,
    }

    def _tell(self, event: ev.Event) -> None:
        listeners, self.listeners = self.listeners, []
        for listener in listeners:
            listener(event)

    def _caught_up(self) -> bool:
        return self.session.connected and all(s.synced and s.requested_at is None and not s.buffer
                                              for s in self.session.rooms.values())

    def _check_synced(self) -> None:
        """Tell each waiting tab ``synced`` once its gap is filled and the session has caught up (or once it
        has waited SYNC_WAIT: a room that never answers must not hold the tab's unsent messages forever)."""
        caught_up = None
        now = self.clock()
        for tab in list(self.tabs):
            if not tab.awaiting_sync:
                continue
            if now < tab.sync_by:
                if tab.fills:
                    continue
                caught_up = self._caught_up() if caught_up is None else caught_up
                if not caught_up:
                    continue
            tab.awaiting_sync = False
            tab.send(gateway_event("synced", epoch=self.session.epoch, term=self.session.term,
                                   rooms={room: self.session.rooms[room].last for room in self.joined()}))

    # -- time

    def housekeep(self) -> None:
        """Give up on page and search answers that never came, and tell late tabs ``synced``."""
        now = self.clock()
        for key in list(self.pages):
            late = [w for w in self.pages[key] if now >= w.until]
            if not late:
                continue
            self.pages[key] = [w for w in self.pages[key] if now < w.until]
            if not self.pages[key]:
                del self.pages[key]
            for waiter in late:
                if waiter.purpose == "fill":
                    self._filled(waiter.tab)
                waiter.tab.send(gateway_event("error", code="no_answer", message=f"{key[0]}: the server did not "
                                              "send the older messages asked for", fatal=False, mid=""))
        for key in list(self.searches):
            self.searches[key] = [(tab, until) for tab, until in self.searches[key] if now < until]
            if not self.searches[key]:
                del self.searches[key]
        live = set(self.searches)
        self.search_rids = {rid: key for rid, key in self.search_rids.items() if key in live}
        self._check_synced()


class TabCommands:
    """The ``commands.ChatClient`` a tab's typed lines run against: the shared session's checks, with the
    tab's own current room (each tab of a name has its own)."""

    def __init__(self, person: Person, tab: Tab) -> None:
        self.person, self.tab = person, tab
        self.said = ""
        self.said_room = ""

    @property
    def room(self) -> str:
        return self.tab.room

    def say(self, text: str, room: str | None = None, action: bool = False) -> str:
        room = room or self.tab.room
        self.said = self.person.checks.say(text, room, action)
        self.said_room = p.normalise_room(room)
        return self.said

    def join(self, room: str) -> str:
        joined = self.person.checks.join(room)
        self.tab.room = joined
        self.person.to_all(gateway_event("joined", room=joined))
        return joined

    def part(self, room: str | None = None) -> str:
        left = p.normalise_room(room) if room else self.tab.room
        if not left:
            raise ZmqchatError("you are in no room")
        if left not in self.person.joined():
            raise ZmqchatError(f"you are not in {left}")
        self.person.checks.part(left)
        rest = self.person.joined()
        for tab in self.person.tabs:
            if tab.room == left:
                tab.room = rest[0] if rest else ""
        self.person.to_all(gateway_event("left", room=left))
        return left

    def who(self, room: str = "") -> None:
        self.person.checks.who(room)

    def rooms(self) -> None:
        self.person.checks.rooms()

    def stats(self) -> None:
        self.person.checks.stats()

    def history(self, count: int = 20, room: str | None = None) -> None:
        self.person.checks.history(count, room or self.tab.room)

    def search(self, query: str, sender: str = "", room: str = "", limit: int = 20) -> str:
        return self.person._search(self.tab, query, sender, room, limit)

    def set_topic(self, text: str, room: str | None = None) -> None:
        self.person.checks.set_topic(text, room or self.tab.room)

    def topic(self, room: str | None = None) -> ev.Topic | None:
        return self.person.checks.topic(room or self.tab.room)
