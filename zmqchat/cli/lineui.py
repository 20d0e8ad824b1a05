"""The line UI: a prompt_toolkit prompt with the chat printed above it (the full-screen client will be tui/).

Incoming events print above the prompt through ``run_in_terminal``, which erases the prompt, prints, and
draws it again with the half-typed line intact, however fast messages arrive. The zmq ``Client`` stays on
the one thread that created it: the asyncio loop that runs the prompt also runs ``ChatUI._pump``, which
polls the client without blocking every ``POLL_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import ColorDepth, Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.renderer import print_formatted_text as render_fragments
from prompt_toolkit.styles import Style

from .. import events as ev
from ..client.commands import WORDS, Error, Help, Quit, Reply, run_line
from ..client.display import clean, clock_time, event_line, lost_line, mentions, name_colour
from ..client.sync import Client
from ..errors import ZmqchatError

POLL_INTERVAL = 0.025  # seconds between polls of the chat sockets: instant to the eye, idle for the CPU
EXIT_DRAIN = 3.0  # seconds to wait, on leaving, for the server to confirm what we sent
RECONNECTED_FOR = 5.0  # seconds the toolbar says "reconnected" before it says "connected" again

PALETTE = ("ansired", "ansigreen", "ansiyellow", "ansiblue", "ansimagenta", "ansicyan", "ansibrightred",
           "ansibrightgreen", "ansibrightyellow", "ansibrightblue", "ansibrightmagenta", "ansibrightcyan")
COLOUR_RULES = {
    "time": "ansibrightblack", "room": "ansibrightblack", "own": "bold underline",
    "mention": "bold bg:ansiyellow fg:ansiblack", "history": "italic",
    "system": "ansibrightblack", "notice": "ansiyellow", "error": "bold ansired", "hint": "ansicyan",
    "prompt.room": "bold", "toolbar.name": "bold", "toolbar.lost": "bold ansired",
    **{f"nick.{i}": colour for i, colour in enumerate(PALETTE)},
}
# NO_COLOR (https://no-color.org): attributes only, so own name, mentions and errors still stand out.
PLAIN_RULES = {"own": "bold", "mention": "bold reverse", "error": "bold", "history": "italic",
               "prompt.room": "bold", "toolbar.name": "bold", "toolbar.lost": "bold"}

KEYS_HELP = "Keys: Up/Down browse your input history, Tab completes a command, Ctrl-D or Ctrl-C leaves."


def colour_wanted(environ: dict[str, str] | None = None) -> bool:
    """False when NO_COLOR is set to anything but the empty string."""
    return not (os.environ if environ is None else environ).get("NO_COLOR")


def run_line_ui(client: Client, *, input: Input | None = None, output: Output | None = None,
            colour: bool | None = None) -> int:
    """Chat interactively with a connected ``client`` until the user leaves; 0, or 1 after a fatal error.
    ``input``/``output`` default to the terminal (tests pass pipes)."""
    ui = ChatUI(client, input=input, output=output, colour=colour)
    if input is None and output is None:
        with patch_stdout(raw=True):  # a stray print() from anywhere still lands above the prompt
            return ui.run()
    return ui.run()


class ChatUI:
    """The prompt, the event printer and the connection status of one terminal session."""

    def __init__(self, client: Client, *, input: Input | None = None, output: Output | None = None,
                 colour: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.colour = colour_wanted() if colour is None else colour
        self.style = Style.from_dict(COLOUR_RULES if self.colour else PLAIN_RULES)
        self.clock = clock
        self.state = "connected" if client.connected else "connecting"
        self._state_since = clock()
        self._switching_to = ""  # the server of a pair tried since the connection was lost
        self.exit_status: int | None = None
        self.failure: BaseException | None = None
        self._toolbar_seen: tuple = ()
        self.session: PromptSession[str] = PromptSession(
            message=self._prompt, bottom_toolbar=self._toolbar, history=InMemoryHistory(),
            completer=WordCompleter([*WORDS, "exit"], sentence=True), complete_while_typing=False,
            style=self.style, color_depth=None if self.colour else ColorDepth.DEPTH_1_BIT,
            erase_when_done=True,  # the line comes back as the server's echo, with its timestamp
            input=input, output=output)

    @property
    def output(self) -> Output:
        return self.session.app.output

    # -- running

    def run(self) -> int:
        """Run the prompt and the event pump in one asyncio loop on this thread, then leave; returns the exit
        status."""
        try:
            status = asyncio.run(self.run_async())
        except KeyboardInterrupt:  # Ctrl-C between two prompts, while no prompt was reading keys
            status = 0
        status = self._leave(status)
        if self.failure is not None and not isinstance(self.failure, ZmqchatError):
            raise self.failure  # a bug: let the traceback show
        return status

    async def run_async(self) -> int:
        """The prompt loop, with the event pump beside it; returns the exit status so far."""
        pump = asyncio.ensure_future(self._pump())
        try:
            return await self._read_lines()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _read_lines(self) -> int:
        while self.exit_status is None:
            try:
                line = await self.session.prompt_async()
            except (EOFError, KeyboardInterrupt):
                return 0
            if self.exit_status is not None:
                break
            result = run_line(self.client, line)
            if isinstance(result, Quit):
                return 0
            if isinstance(result, Help):
                await self._print(self._text(result.text + "\n" + KEYS_HELP, "hint"))
            elif isinstance(result, Reply):
                await self._print(self._text(result.text, "hint"))
            elif isinstance(result, Error):
                await self._print(self._text(f"ERROR: {result.message}", "error"))
        return self.exit_status

    async def _pump(self) -> None:
        """Poll the client (never blocking), print what came, keep the toolbar current."""
        try:
            while True:
                found, _ = self.client.poll(0)
                if found:
                    await self._show(found)
                if self.exit_status is not None:
                    self._stop_prompt()
                    return
                self._refresh_toolbar()
                await asyncio.sleep(POLL_INTERVAL)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported after the prompt is gone
            self.failure = exc
            self.exit_status = 1
            if isinstance(exc, ZmqchatError):
                await self._print(self._text(f"ERROR: {exc}", "error"))
            self._stop_prompt()

    def _stop_prompt(self) -> None:
        app = self.session.app
        if app.is_running and app.future is not None and not app.future.done():
            app.exit(result="")

    def _leave(self, status: int) -> int:
        """Drain briefly what we sent, show what is left, say goodbye."""
        client = self.client
        try:
            if status == 0 and client.unacknowledged:
                count = client.unacknowledged
                self._print_now(self._text(f"-- waiting up to {EXIT_DRAIN:g}s for the server to confirm "
                                           f"{count} message(s)…", "notice"))
                if not client.drain(EXIT_DRAIN):
                    self._print_now(self._text(f"ERROR: the server did not confirm {client.unacknowledged} "
                                               "message(s); they may be lost", "error"))
                    status = 1
            found, _ = client.poll(0)
            if found:
                self._print_now(self.format_events(found)[0])
        except KeyboardInterrupt:
            pass
        finally:
            client.close()
        return status

    # -- printing

    async def _show(self, found: list[ev.Event]) -> None:
        fragments, bell = self.format_events(found)
        await self._print(fragments, bell)

    async def _print(self, fragments: StyleAndTextTuples, bell: bool = False) -> None:
        """Print above the prompt (or plainly when no prompt is up), ringing the bell if asked."""
        if fragments or bell:
            await run_in_terminal(lambda: self._print_now(fragments, bell))

    def _print_now(self, fragments: StyleAndTextTuples, bell: bool = False) -> None:
        if fragments:
            render_fragments(self.output, fragments, self.style, color_depth=self.session.app.color_depth)
        if bell:
            self.output.bell()
        self.output.flush()

    def format_events(self, found: list[ev.Event]) -> tuple[StyleAndTextTuples, bool]:
        """All of ``found`` as one block of styled lines, and whether it mentions us (ring the bell)."""
        fragments: StyleAndTextTuples = []
        bell = False
        for event in found:
            self._track(event)
            if isinstance(event, ev.Message):
                line, mentioned = self.message_fragments(event)
                fragments += line
                bell = bell or (mentioned and not event.history)
            else:
                fragments += self.event_fragments(event)
        return fragments, bell

    def message_fragments(self, event: ev.Message) -> tuple[StyleAndTextTuples, bool]:
        """``[12:01:07] #general <bob> hi`` in colour; whether it mentions us."""
        me = self.client.name
        mentioned = not event.own and mentions(event.text, me)
        extra = " class:history" if event.history else ""
        nick = "class:own" if event.own else f"class:nick.{name_colour(event.sender, len(PALETTE))}"
        if event.own:
            nick += f" class:nick.{name_colour(me, len(PALETTE))}"
        who = f"* {clean(event.sender)}" if event.action else f"<{clean(event.sender)}>"
        text = clean(event.text).replace("\n", "\n    ")
        return [("class:time" + extra, f"[{clock_time(event.ts)}] "), ("class:room" + extra, f"{event.room} "),
                (nick + extra, who), (extra.strip(), " "),
                (("class:mention" if mentioned else "") + extra, text), ("", "\n")], mentioned

    def event_fragments(self, event: ev.Event) -> StyleAndTextTuples:
        line = event_line(event)
        if line is None:
            return []
        if isinstance(event, ev.Error):
            kind = "error"
        elif isinstance(event, (ev.ConnectionLost, ev.Notice, ev.ServerShutdown)) or (
                isinstance(event, ev.Connected) and event.reconnected):
            kind = "notice"
        elif isinstance(event, (ev.Who, ev.Rooms, ev.Stats)):
            kind = ""
        else:
            kind = "system"
        return self._text(line, kind)

    @staticmethod
    def _text(text: str, kind: str) -> StyleAndTextTuples:
        return [(f"class:{kind}" if kind else "", text), ("", "\n")]

    # -- connection state, prompt and toolbar

    def _track(self, event: ev.Event) -> None:
        if isinstance(event, ev.Connected):
            self._set_state("reconnected" if event.reconnected else "connected")
        elif isinstance(event, ev.ConnectionLost):
            self._set_state("lost")
            self._switching_to = event.switching_to
        elif isinstance(event, ev.Error) and event.fatal:
            self.exit_status = 1

    def _set_state(self, state: str) -> None:
        self.state = state
        self._state_since = self.clock()

    def status(self) -> str:
        """What the toolbar says about the connection."""
        if self.state == "lost":
            return lost_line(self._switching_to)
        if self.state == "reconnected" and self.clock() - self._state_since > RECONNECTED_FOR:
            self.state = "connected"
        return self.state

    def _prompt(self) -> StyleAndTextTuples:
        # The state shows here too: terminals that do not answer a cursor position request get no toolbar.
        offline = [("class:toolbar.lost", "(offline) ")] if self.state in ("lost", "connecting") else []
        return [*offline, ("class:prompt.room", self.client.room or "(no room)"), ("", "> ")]

    def _toolbar(self) -> StyleAndTextTuples:
        status = self.status()
        unconfirmed = self.client.unacknowledged
        return [("class:toolbar.name", f" {self.client.name} "), ("", f"· {self.client.room or 'no room'} · "),
                ("class:toolbar.lost" if self.state == "lost" else "", status),
                ("", f" · sending {unconfirmed}…" if unconfirmed else ""), ("", "   /help for commands ")]

    def _refresh_toolbar(self) -> None:
        seen = (self.status(), self.client.room, self.client.unacknowledged)
        if seen != self._toolbar_seen:
            self._toolbar_seen = seen
            self.session.app.invalidate()
