"""The full-screen client: a Textual ``App`` over one ``AsyncClient`` (through a ``Link``) and one ``ChatState``.

The app owns no rule. A worker takes the client's events in batches and hands them to ``ChatState``; typed
lines go to ``commands.run_line`` (the same commands, checks and replies as every other front end); the
widgets draw the state after each batch or keypress. Nothing here waits on the network: a page or a search
is asked for and the screen goes on; its answer is just another event.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections.abc import Callable
from typing import ClassVar

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal

from .. import events as ev
from ..client.aio import AsyncClient
from ..client.commands import WORDS, Error, Help, Quit, Reply, run_line
from ..errors import ZmqchatError
from . import render
from .link import ClientLink, Link
from .state import ChatState, PageAsk, needs_confirmation, paste_lines
from .widgets import ChatInput, ConfirmScreen, MessageView, PeopleList, RoomList, SearchScreen, StatusBar, TopicBar

POLL_WAIT = 0.5  # seconds the event worker waits for the client's next batch (it wakes at once on news)
CHUNK = 200  # events handled in one go; between two chunks of a burst the worker pauses for BREATHE
BREATHE = 0.004  # seconds: lets a keystroke travel through Textual's queues to the screen during a burst
FRAME = 1 / 30  # seconds: the screen is redrawn at most this often while events pour in
TICK_UI = 0.25  # seconds between status refreshes (latency, reconnected -> connected, waiting messages)
PEOPLE_MIN_WIDTH = 100  # columns below which the people list is hidden
EXIT_DRAIN = 3.0  # seconds to wait, on leaving, for the server to confirm what we sent
KEYS_HELP = ("Keys: Alt-1..9 / Ctrl-N / Ctrl-P or a click switch rooms; PageUp/PageDown scroll (past the top: "
             "older history); Ctrl-End back to the present; Up/Down input history; Tab completes nicks, "
             "/commands and #rooms; Ctrl-C, Ctrl-Q or Ctrl-D on an empty line leave.")


def alt_digits_as_keys() -> None:
    """Let Alt-1..9 arrive as ``alt+1``..``alt+9``. Terminals send them as ESC and the digit; Textual turns
    those into the symbols macOS's Option key types (ESC 2 -> "™", for WezTerm on macOS), so no binding
    could see them. Without those entries its parser reports them as alt+digit, as for every other key."""
    from textual import _ansi_sequences

    for digit in "123456789":
        _ansi_sequences.ANSI_SEQUENCES_KEYS.pop(f"\x1b{digit}", None)


def light_terminal(environ: dict[str, str] | None = None) -> bool:
    """Whether the terminal says (COLORFGBG, set by rxvt, Konsole and others) that its background is light."""
    value = (os.environ if environ is None else environ).get("COLORFGBG", "")
    try:
        background = int(value.split(";")[-1])
    except ValueError:
        return False
    return background in (7, 15) or 9 <= background <= 15 and background != 8


class ChatApp(App[int]):
    """The full-screen chat client for one connected ``Link``."""

    TITLE = "zmqchat"
    ENABLE_COMMAND_PALETTE = False  # Ctrl-P is "previous room"
    CSS = """
    Screen { layout: vertical; }
    #middle { height: 1fr; }
    ChatInput { height: 1; border: none; padding: 0 1; background: $surface; }
    ChatInput:focus { border: none; }
    """
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("ctrl+c", "leave", "leave", priority=True, show=False),
        Binding("ctrl+q", "leave", "leave", priority=True, show=False),
        *(Binding(f"alt+{n}", f"room({n - 1})", show=False, priority=True) for n in range(1, 10)),
        Binding("ctrl+n", "step(1)", show=False, priority=True),
        Binding("ctrl+p", "step(-1)", show=False, priority=True),
        Binding("pageup", "page_up", show=False),
        Binding("pagedown", "page_down", show=False),
        Binding("ctrl+end", "present", show=False),
        Binding("ctrl+d", "eof", show=False, priority=True),
    ]

    def __init__(self, link: Link, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, dark: bool | None = None) -> None:
        super().__init__()
        alt_digits_as_keys()
        self.link = link
        self.state = ChatState(link.name, link.server, clock=clock, wall_clock=wall_clock)
        dark = not light_terminal() if dark is None else dark
        if not dark:
            self.theme = "textual-light"
        self.th = render.theme(dark)
        self.exit_status = 0
        self.failure: BaseException | None = None
        state, th = self.state, self.th
        self.topic = TopicBar(id="topic")
        self.room_list = RoomList(state, th, id="rooms")
        self.messages = MessageView(state, th, id="messages")
        self.people = PeopleList(state, th, id="people")
        self.status = StatusBar(state, th, id="status")
        self.input = ChatInput(state, (*WORDS, "exit"), id="input", compact=True,
                               placeholder="type a message, /help for commands")
        self._shown_room: object = None
        self._last_redraw = float("-inf")
        self._redraw_timer = None

    def compose(self) -> ComposeResult:
        # Kept by reference: a modal screen (search results, a question) may be on top while they update.
        yield self.topic
        with Horizontal(id="middle"):
            yield self.room_list
            yield self.messages
            yield self.people
        yield self.status
        yield self.input

    def on_mount(self) -> None:
        self._follow_client()
        self.input.focus()
        self._fit(self.size.width)
        self.set_interval(TICK_UI, self._tick)
        self.run_worker(self._take_events(), name="zmqchat events", group="events", exclusive=True)
        self.redraw()

    def on_resize(self, event) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        self.people.display = width >= PEOPLE_MIN_WIDTH

    # -- events from the client

    async def _take_events(self) -> None:
        try:
            while True:
                found = await self.link.poll(POLL_WAIT)
                for start in range(0, len(found), CHUNK):
                    self.take(found[start:start + CHUNK])
                    # A key passes several message queues on its way to the screen, one turn of the loop
                    # each: a worker that took every turn would hold it up by a chunk per queue.
                    await asyncio.sleep(BREATHE if len(found) > CHUNK or start else 0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - shown, then we leave with status 1
            self.failure = exc
            self.state.note(f"ERROR: {exc}", "error")
            self.redraw()
            self.exit_status = 1
            self.exit(1)

    def take(self, found: list[ev.Event]) -> None:
        """Apply a batch of events and do what they ask (ring, open search results, ask who)."""
        effects = self.state.apply(found)
        self.state.refresh_states(self.link.message_state)
        self._follow_client()
        self._ask_who(effects.who)
        if effects.bell:
            self.bell()
        if effects.search is not None:
            self.push_screen(SearchScreen(effects.search, self.th), self._jump_to)
        if effects.fatal:
            self.exit_status = 1
            self.exit(1)
        self._redraw_soon()

    def _redraw_soon(self) -> None:
        """Redraw now, or (while events pour in) at the next frame: once per frame, however many came."""
        if self._redraw_timer is not None:
            return
        wait = self._last_redraw + FRAME - time.monotonic()
        if wait <= 0:
            self.redraw()
        else:
            self._redraw_timer = self.set_timer(wait, self._frame)

    def _frame(self) -> None:
        self._redraw_timer = None
        self.redraw()

    def _ask_who(self, rooms: set[str]) -> None:
        for room in sorted(rooms):
            if room in self.state.rooms:
                try:
                    self.link.commands.auto_who(room)
                except ZmqchatError:
                    continue
                self.state.who_sent(room)

    def _tick(self) -> None:
        self.state.refresh_states(self.link.message_state)
        self._ask_who(self.state.tick().who)
        self.redraw()

    def _follow_client(self) -> None:
        self.state.sync_rooms(self.link.joined(), self.link.current_room())

    # -- drawing

    def redraw(self) -> None:
        """Draw the state: every widget checks what changed and does only that."""
        self._last_redraw = time.monotonic()
        if not (self.messages.is_mounted and self.messages.is_attached):
            return  # not up yet, or leaving
        state = self.state
        view = state.current_view
        messages = self.messages
        if view is not self._shown_room:
            self._shown_room = view
            messages.show(view)
        else:
            messages.update_rows()
        self.room_list.update_rooms()
        self.people.update_people()
        self.topic.show_topic(state.current, self.link.commands.topic(state.current)
                                            if state.current else None)
        self.status.update_status()

    # -- what the user does

    @on(ChatInput.Submitted)
    def _submitted(self, event: ChatInput.Submitted) -> None:
        box = self.input
        line = event.value
        box.value = ""
        box.history.add(line)
        self.run_command(line)

    def run_command(self, line: str) -> None:
        """A typed line, as every front end takes it (``commands.run_line``)."""
        commands = self.link.commands
        whos = commands.user_whos
        result = run_line(commands, line)
        for _ in range(commands.user_whos - whos):
            self.state.asked_who(automatic=False)
        refused = self._take_said()
        self._follow_client()
        if isinstance(result, Quit):
            self.exit(0)
            return
        if isinstance(result, Help):
            self.state.note(result.text + "\n" + KEYS_HELP)
        elif isinstance(result, Reply):
            self.state.note(result.text)
        elif isinstance(result, Error) and not refused:
            self.state.note(f"ERROR: {result.message}", "error")
        self.redraw()

    def _take_said(self) -> bool:
        """Show what went out as sending, and what our checks refused as failed; True if any was refused."""
        refused = False
        for said in self.link.commands.take_said():
            if said.mid:
                self.state.sent(said.room, said.mid, said.text, said.action)
            else:
                refused = True
                self.state.refused(said.room, said.text, said.reason, said.action)
        return refused

    def say_lines(self, lines: list[str]) -> None:
        """Send each line as a message, in order (a paste: no line is taken for a command)."""
        if not self.link.current_room():
            self.state.note("ERROR: you are in no room: /join #room first", "error")
        else:
            for line in lines:
                try:
                    self.link.commands.say(line)
                except ZmqchatError:
                    pass  # noted in ``said``: shown as failed
            self._take_said()
        self.redraw()

    @on(ChatInput.Pasted)
    def _pasted(self, event: ChatInput.Pasted) -> None:
        box = self.input
        at = box.cursor_position
        text = box.value[:at] + event.text + box.value[at:]
        lines = paste_lines(text)
        box.value = ""
        if not needs_confirmation(lines):
            self.say_lines(lines)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.say_lines(lines)
            else:
                box.value = text.replace("\r", "").replace("\n", " ")
                box.cursor_position = len(box.value)

        self.push_screen(ConfirmScreen(f"Send these {len(lines)} lines to {self.state.current} as "
                                       f"{len(lines)} messages?"), answered)

    def switch_to(self, room: str) -> None:
        if room == self.state.current:
            return
        try:
            self.link.commands.join(room)  # a room we are in: only makes it current, nothing is sent
        except ZmqchatError as exc:
            self.state.note(f"ERROR: {exc}", "error")
        self._follow_client()
        self.redraw()

    @on(RoomList.Picked)
    def _picked(self, event: RoomList.Picked) -> None:
        self.switch_to(event.room)

    def action_room(self, index: int) -> None:
        room = self.state.room_at(index)
        if room is not None:
            self.switch_to(room)

    def action_step(self, step: int) -> None:
        room = self.state.neighbour(step)
        if room is not None:
            self.switch_to(room)

    def action_page_up(self) -> None:
        self.messages.page_up()

    def action_page_down(self) -> None:
        messages = self.messages
        if round(messages.scroll_y) >= messages.max_scroll_y:
            self._ask_page(self.state.want_newer())
        else:
            messages.scroll_page_down(animate=False)

    @on(MessageView.NeedOlder)
    def _need_older(self) -> None:
        self._ask_page(self.state.want_older())

    def _ask_page(self, ask: PageAsk | None) -> None:
        if ask is None:
            return
        try:
            self.link.commands.page(ask.room, ask.before, ask.limit)
        except ZmqchatError as exc:
            self.state.note(f"ERROR: {exc}", "error")
        self.redraw()

    def action_present(self) -> None:
        self.state.back_to_present()
        self.redraw()

    def _jump_to(self, found: ev.Found | None) -> None:
        """Enter on a search result: its room, with the lines around it."""
        if found is None:
            return
        try:
            self.link.commands.join(found.room)  # current (joined first if we were not in it)
        except ZmqchatError as exc:
            self.state.note(f"ERROR: {exc}", "error")
            self.redraw()
            return
        self._follow_client()
        self._ask_page(self.state.jump(found.room, found.seq))
        self.redraw()

    def action_eof(self) -> None:
        box = self.input
        if isinstance(self.screen, (SearchScreen, ConfirmScreen)):
            return
        if not box.value:
            self.exit(0)
        else:
            box.action_delete_right()

    def action_leave(self) -> None:
        self.exit(0)


def settle_memory() -> None:
    """Move what exists at start (modules, Textual's widgets and styles) out of the collector's sight:
    a full collection then walks only what the chat adds, and never stalls typing for long."""
    gc.collect()
    gc.freeze()


async def run_async(name: str, rooms: list[str], client_options: dict) -> int:
    """Connect (ConnectError if we cannot: before the screen changes), chat full-screen until the user
    leaves, wait briefly for the server to confirm what we sent, say goodbye; returns the exit status."""
    client = AsyncClient(name, rooms=rooms, **client_options)
    await client.connect()
    link = ClientLink(client)
    status = 1
    try:
        app = ChatApp(link)
        app.call_after_refresh(settle_memory)
        await app.run_async()
        status = app.exit_status
        if status == 0 and link.unacknowledged:
            print(f"-- waiting up to {EXIT_DRAIN:g}s for the server to confirm {link.unacknowledged} message(s)…",
                  file=sys.stderr)
            if not await link.drain(EXIT_DRAIN):
                print(f"ERROR: the server did not confirm {link.unacknowledged} message(s); they may be lost",
                      file=sys.stderr)
                status = 1
        if app.failure is not None and not isinstance(app.failure, ZmqchatError):
            raise app.failure  # a bug: let the traceback show
        if app.failure is not None:
            print(f"ERROR: {app.failure}", file=sys.stderr)
    finally:
        await link.close()
    return status


def run(name: str, rooms: list[str], client_options: dict) -> int:
    """The full-screen client, from the command line (``zmqchat-client --ui full``)."""
    return asyncio.run(run_async(name, rooms, client_options))
