"""The full-screen client's widgets: each draws a part of ``ChatState`` and posts what the user did.

The message area is a line-API ``ScrollView`` over a room's rows: it wraps only the rows it shows (the
heights of the others are estimated, and corrected when they come into view), so a burst of thousands of
messages costs the screen what fits on it, and typing stays quick however fast they arrive.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.screen import ModalScreen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from .. import events as ev
from ..client.display import clean, clock_time
from . import render
from .state import ChatState, Completer, Deco, InputHistory, Line, RoomView, Row

PEOPLE_SHOWN = 1000  # names drawn in the people list at most (a bigger room says how many more)
DRAWN_MAX = 2000  # lines whose wrapped rows the message area keeps


class MessageView(ScrollView, can_focus=False):
    """The current room's rows; follows the bottom unless the user scrolled up."""

    DEFAULT_CSS = """
    MessageView { height: 1fr; overflow-x: hidden; overflow-y: auto; scrollbar-size-vertical: 1; }
    """

    class NeedOlder(Message):
        """Scrolled past the oldest row held."""

    def __init__(self, state: ChatState, th: render.Theme, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.th = th
        self.room: RoomView | None = None
        self.rows: list[Row] = []
        self.offsets: list[int] = [0]
        self._count = 0  # rows measured (``rows`` may grow in place)
        self._structure = -1  # the room's structure they were measured for
        self._shown = (None, -1, -1)  # (room, revision, width) drawn
        self._drawn: dict[Line, tuple[int, int, list[list[Segment]]]] = {}  # line -> (rev, width, rows)
        self._scrolled_to = 0  # the highlight we brought into view already
        self._quiet = False  # our own scroll changes: not the user's

    @property
    def width_cells(self) -> int:
        return max(1, self.scrollable_content_region.width or self.size.width)

    def on_resize(self, event: events.Resize) -> None:
        self.update_rows(force=True)

    def show(self, room: RoomView) -> None:
        """Show ``room`` from its bottom (or from its "new messages" marker, if that is above the screen)."""
        self.room = room
        self._scrolled_to = 0
        self.update_rows(force=True)
        marker = next((i for i, row in enumerate(self.rows) if isinstance(row, Deco) and row.kind == "marker"),
                      None)
        if marker is not None and self.offsets[marker] < self.scroll_y:
            self._scroll_quietly(max(0, self.offsets[marker] - 1))
            room.follow = self.scroll_y >= self.max_scroll_y

    def update_rows(self, force: bool = False) -> None:
        """Redraw if the room's rows (or our width) changed, keeping what the user looks at in place."""
        room = self.room
        if room is None:
            return
        width = self.width_cells
        key = (room, room.revision, width)
        if key == self._shown and not force:
            return
        same = self._shown[0] is room and self._shown[2] == width
        self._shown = key
        anchor = None if (room.follow or not same) else self._anchor()
        rows = room.rows()
        if same and rows is self.rows and room.structure == self._structure and self._count <= len(rows):
            # only rows added at the end (the rows list grew in place): measure those alone
            added = [self._height(row, width) for row in rows[self._count:]]
            self.offsets += list(accumulate(added, initial=self.offsets[-1]))[1:]
        else:
            self.rows = rows
            self.offsets = list(accumulate((self._height(row, width) for row in rows), initial=0))
        self._count, self._structure = len(rows), room.structure
        self._set_height()
        for _ in range(4):  # measure what is on screen exactly; stop when it no longer moves
            self._place(room, anchor)
            if not self._measure_visible(width):
                break
        else:
            self._place(room, anchor)
        if len(self._drawn) > DRAWN_MAX:  # forget lines that left the room (a burst draws thousands)
            shown = {row for row in self.rows if isinstance(row, Line)}
            self._drawn = {line: v for line, v in self._drawn.items() if line in shown}
            if len(self._drawn) > DRAWN_MAX:
                self._drawn = {}  # a room that only grew: wrapping them again is cheap
        self.refresh()

    def _set_height(self) -> None:
        self.virtual_size = Size(self.width_cells, self.offsets[-1])

    def _anchor(self) -> tuple[Row, int] | None:
        """The row at the top of the screen and how far into it we are."""
        if not self.rows:
            return None
        y = round(self.scroll_y)
        i = max(0, bisect_right(self.offsets, y) - 1)
        i = min(i, len(self.rows) - 1)
        row = self.rows[i]
        while isinstance(row, Deco) and i + 1 < len(self.rows):  # decorations come and go: anchor on a line
            i += 1
            row = self.rows[i]
        return row, y - self.offsets[i]

    def _place(self, room: RoomView, anchor: tuple[Row, int] | None) -> None:
        height = self.scrollable_content_region.height or self.size.height
        bottom = max(0, self.offsets[-1] - height)
        if room.highlight and room.highlight != self._scrolled_to:
            at = next((i for i, row in enumerate(self.rows) if isinstance(row, Line) and row.seq == room.highlight),
                      None)
            if at is not None:
                self._scroll_quietly(min(bottom, max(0, self.offsets[at] - height // 3)))
                self._scrolled_to = room.highlight
                room.follow = self.scroll_y >= bottom
                return
        if room.follow or anchor is None:
            self._scroll_quietly(bottom if room.follow else min(self.scroll_y, bottom))
            return
        row, into = anchor
        try:
            i = self.rows.index(row)
        except ValueError:
            self._scroll_quietly(min(self.scroll_y, bottom))
            return
        self._scroll_quietly(min(bottom, max(0, self.offsets[i] + into)))

    def _scroll_quietly(self, y: float) -> None:
        self._quiet = True
        try:
            self.set_scroll(None, y)
            if self.show_vertical_scrollbar:
                self.vertical_scrollbar.position = y
        finally:
            self._quiet = False

    def _height(self, row: Row, width: int) -> int:
        if isinstance(row, Deco):
            return 1
        drawn = self._drawn.get(row)
        if drawn is not None and drawn[0] == row.rev and drawn[1] == width:
            return len(drawn[2])
        return render.estimate(row, width)

    def _draw(self, row: Row, width: int) -> list[list[Segment]]:
        if isinstance(row, Deco):
            return render.render(row, width, self.state.name, self.th, self.app.console)
        drawn = self._drawn.get(row)
        if drawn is None or drawn[0] != row.rev or drawn[1] != width:
            highlight = self.room.highlight if self.room is not None else 0
            drawn = (row.rev, width, render.render(row, width, self.state.name, self.th, self.app.console, highlight))
            self._drawn[row] = drawn
        return drawn[2]

    def _measure_visible(self, width: int) -> bool:
        """Wrap the rows on screen exactly; True if that changed any height."""
        height = self.scrollable_content_region.height or self.size.height
        top = round(self.scroll_y)
        first = max(0, bisect_right(self.offsets, top) - 1)
        last = bisect_right(self.offsets, top + height)
        changed = False
        for i in range(first, min(last + 1, len(self.rows))):
            exact = len(self._draw(self.rows[i], width))
            if exact != self.offsets[i + 1] - self.offsets[i]:
                changed = True
                delta = exact - (self.offsets[i + 1] - self.offsets[i])
                for j in range(i + 1, len(self.offsets)):
                    self.offsets[j] += delta
        if changed:
            self._set_height()
        return changed

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if self._quiet or self.room is None:
            return
        if self._measure_visible(self.width_cells):
            self.refresh()
        self.room.follow = round(new) >= self.max_scroll_y
        if round(new) <= 0 < round(old):
            self.post_message(self.NeedOlder())

    def page_up(self) -> None:
        """PageUp: a screenful up, or, at the top already, the previous page from the server."""
        if round(self.scroll_y) <= 0:
            self.post_message(self.NeedOlder())
        else:
            self.scroll_page_up(animate=False)

    def render_line(self, y: int) -> Strip:
        width = self.width_cells
        absolute = round(self.scroll_y) + y
        base = self.rich_style
        if not self.rows or absolute >= self.offsets[-1]:
            return Strip.blank(width, base)
        i = bisect_right(self.offsets, absolute) - 1
        drawn = self._draw(self.rows[i], width)
        into = absolute - self.offsets[i]
        if into >= len(drawn):
            return Strip.blank(width, base)
        return Strip(drawn[into]).crop_extend(0, width, base).apply_style(base)


class RoomList(Widget):
    """Every joined room, the current one highlighted, with unread and (stronger) mention counts."""

    DEFAULT_CSS = """
    RoomList { width: 18; height: 1fr; border-right: vkey $panel-lighten-2; padding: 0 1 0 0; }
    """

    class Picked(Message):
        def __init__(self, room: str) -> None:
            super().__init__()
            self.room = room

    def __init__(self, state: ChatState, th: render.Theme, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.th = th
        self._seen: tuple = ()

    def update_rooms(self) -> None:
        seen = tuple((room, v.unread, v.mentions) for room, v in self.state.rooms.items()) + (self.state.current,)
        if seen != self._seen:
            self._seen = seen
            self.refresh()

    def render(self) -> Text:
        width = max(4, self.content_region.width or 16)
        lines = [render.room_label(i, room, view.unread, view.mentions, room == self.state.current, width, self.th)
                 for i, (room, view) in enumerate(self.state.rooms.items())]
        return Text("\n").join(lines) if lines else Text("(no room)", self.th.muted)

    def on_click(self, event: events.Click) -> None:
        room = self.state.room_at(event.y)
        if room is not None:
            self.post_message(self.Picked(room))


class PeopleList(Static):
    """The current room's members, from presence (or from who, in rooms too big for presence)."""

    DEFAULT_CSS = """
    PeopleList { width: 20; height: 1fr; border-left: vkey $panel-lighten-2; padding: 0 0 0 1; overflow-y: auto; }
    """

    def __init__(self, state: ChatState, th: render.Theme, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.state = state
        self.th = th
        self._seen: tuple = ()

    def update_people(self) -> None:
        view = self.state.rooms.get(self.state.current)
        if view is None:
            self._show((), Text("", self.th.muted))
            return
        people = view.people
        seen = (view.name, frozenset(people.names), people.quiet, people.known)
        if seen == self._seen:
            return
        names = sorted(people.names, key=str.lower)
        text = Text(f"{len(names)} here", Style(bold=True))
        if people.quiet:
            text.append("\n(big room: by /who)", self.th.muted + Style(italic=True))
        for name in names[:PEOPLE_SHOWN]:
            text.append("\n")
            text.append(clean(name), render.nick_style(name, self.th) + (Style(underline=True)
                                                                          if name == self.state.name else Style()))
        if len(names) > PEOPLE_SHOWN:
            text.append(f"\n… {len(names) - PEOPLE_SHOWN} more", self.th.muted)
        self._show(seen, text)

    def _show(self, seen: tuple, text: Text) -> None:
        self._seen = seen
        self.update(text)


class TopicBar(Static):
    """The header: the current room and its topic."""

    DEFAULT_CSS = "TopicBar { height: 1; background: $panel; color: $foreground; padding: 0 1; }"

    def show_topic(self, room: str, topic: ev.Topic | None) -> None:
        text = Text(room or "(no room)", Style(bold=True))
        if topic is not None and topic.text:
            text.append(" — ")
            text.append(clean(topic.text))
            text.append(f"  (set by {clean(topic.by)})", Style(dim=True))
        text.truncate(max(1, self.size.width - 2), overflow="ellipsis")
        self.update(text)


class StatusBar(Static):
    """Our name, the connection, the server, the latency of our messages' echoes."""

    DEFAULT_CSS = "StatusBar { height: 1; background: $panel; color: $foreground; padding: 0 1; }"

    def __init__(self, state: ChatState, th: render.Theme, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.state = state
        self.th = th
        self._seen = None

    def update_status(self) -> None:
        status = self.state.status()
        if status == self._seen:
            return
        self._seen = status
        text = Text(status.name, Style(bold=True))
        text.append(" · ")
        text.append(status.connection, self.th.error if status.lost else Style())
        text.append(f" · {status.server}")
        if status.latency_ms is not None:
            text.append(f" · echo {status.latency_ms} ms")
        if status.sending:
            text.append(f" · sending {status.sending}…")
        text.append("   /help · Alt-1..9 rooms", Style(dim=True))
        self.update(text)


class ChatInput(Input):
    """The line being typed: editing as Input gives it, Up/Down for history, Tab to complete; a paste of
    several lines goes to the app instead of being cut to its first line."""

    BINDINGS: ClassVar[list[Binding]] = [
        Binding("up", "history(-1)", show=False),
        Binding("down", "history(1)", show=False),
        Binding("tab", "complete", show=False),
    ]

    class Pasted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, state: ChatState, commands: tuple[str, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.commands = commands
        self.history = InputHistory()
        self.completer = Completer()

    def action_history(self, step: int) -> None:
        found = self.history.up(self.value) if step < 0 else self.history.down()
        if found is not None:
            self.value = found
            self.cursor_position = len(found)

    def action_complete(self) -> None:
        rooms = set(self.state.rooms) | self.state.known_rooms
        done = self.completer.complete(self.value, self.cursor_position, self.state.nicks(), self.commands, rooms)
        if done is not None:
            self.value, self.cursor_position = done[0], done[1]

    async def _on_key(self, event: events.Key) -> None:
        if event.key != "tab":
            self.completer.reset()
        await super()._on_key(event)

    def _on_paste(self, event: events.Paste) -> None:
        if "\n" in event.text.strip("\r\n") or "\r" in event.text.strip("\r\n"):
            event.stop()
            event.prevent_default()
            self.post_message(self.Pasted(event.text))
            return
        super()._on_paste(event)


class SearchScreen(ModalScreen[ev.Found | None]):
    """The results of /search, newest first; Enter jumps to one, Escape closes."""

    DEFAULT_CSS = """
    SearchScreen { align: center middle; }
    SearchScreen > Vertical { width: 90%; height: 80%; border: round $accent; background: $surface; }
    SearchScreen Static { height: auto; padding: 0 1; }
    SearchScreen OptionList { height: 1fr; }
    """
    BINDINGS: ClassVar[list[Binding]] = [Binding("escape", "dismiss_none", "close")]

    def __init__(self, results: ev.SearchResults, th: render.Theme) -> None:
        super().__init__()
        self.results = results
        self.th = th

    def compose(self):
        count = len(self.results.results)
        head = Text(f"{count} result{'s' if count != 1 else ''} for ", Style(bold=True))
        head.append(clean(self.results.query), Style(bold=True, italic=True))
        head.append("  (newest first" + ("; more not shown" if self.results.more else "") + ")  Enter: go there · Esc: close",
                    Style(dim=True))
        with Vertical():
            yield Static(head)
            yield OptionList(*[Option(self._label(found), id=str(i)) for i, found in enumerate(self.results.results)])

    def _label(self, found: ev.Found) -> Text:
        text = Text(f"{clock_time(found.ts)} ", self.th.time)
        text.append(f"{found.room} ", self.th.muted)
        text.append(f"<{clean(found.sender)}> ", render.nick_style(found.sender, self.th))
        at = 0
        for start, end in found.marks:
            text.append(clean(found.text[at:start]).replace("\n", " "))
            text.append(clean(found.text[start:end]).replace("\n", " "), Style(bold=True, reverse=True))
            at = end
        text.append(clean(found.text[at:]).replace("\n", " "))
        return text

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.results.results[int(event.option.id or 0)])

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question (a long paste): y or Enter says yes, n or Escape no."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Static { width: auto; max-width: 90%; border: round $warning; background: $surface; padding: 1 2; }
    """
    BINDINGS: ClassVar[list[Binding]] = [Binding("y,enter", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self):
        yield Static(Text(self.question + "  [y/N]"))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
