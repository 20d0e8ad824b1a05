"""The terminal UI driven through prompt_toolkit's pipe input, against a real server process.

The UI runs in a thread of its own that also creates its Client (the sockets belong to that one thread);
the test types into the pipe and reads what the UI wrote to a VT100 output captured in memory.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable

import pytest
from conftest import WAIT, Proc
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output

from zmqchat import Client
from zmqchat import events as ev
from zmqchat.cli.lineui import ChatUI

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\a]*\a|\r")
COLOUR_CODE = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")


class Screen:
    """A terminal stand-in: collects everything written; waiters wake on each write."""

    encoding = "utf-8"

    def __init__(self) -> None:
        self.raw = ""
        self._cond = threading.Condition()

    def write(self, data: str) -> int:
        with self._cond:
            self.raw += data
            self._cond.notify_all()
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    @property
    def text(self) -> str:
        """What was written, without escape sequences."""
        with self._cond:
            return ESCAPES.sub("", self.raw)

    def wait_for(self, check: Callable[[], object], what: str, timeout: float = WAIT) -> None:
        """Wait until ``check()`` is true, re-checking whenever the UI writes (bounded; fails with context)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"timed out waiting for {what}; screen tail: {self.text[-1500:]!r}")
                self._cond.wait(min(remaining, 0.1))

    def wait_text(self, needle: str, timeout: float = WAIT) -> None:
        self.wait_for(lambda: needle in ESCAPES.sub("", self.raw), repr(needle), timeout)


class Terminal(Vt100_Output):
    """A VT100 terminal of 40x100 whose cursor is known to be at the top (as if it answered a CPR)."""

    def get_rows_below_cursor_position(self) -> int:
        return 40


def vt100(screen: Screen) -> Vt100_Output:
    return Terminal(screen, lambda: Size(rows=40, columns=100), term="xterm-256color", enable_cpr=False)


class Tui:
    """A ChatUI for ``name`` running in its own thread, typed into through a pipe."""

    def __init__(self, port: int, name: str = "alice", colour: bool = True) -> None:
        self.screen = Screen()
        self._pipe = create_pipe_input()
        self.input = self._pipe.__enter__()
        self.ui: ChatUI | None = None
        self.status: int | None = None
        self.error: BaseException | None = None
        self._args = (port, name, colour)
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        port, name, colour = self._args
        try:
            client = Client(name, port=port, connect_timeout=WAIT)
            self.ui = ChatUI(client, input=self.input, output=vt100(self.screen), colour=colour)
            self.status = self.ui.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def type(self, text: str) -> None:
        self.input.send_text(text)

    @property
    def buffer(self) -> str:
        return self.ui.session.default_buffer.text if self.ui else ""

    def finish(self, timeout: float = WAIT) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the UI did not exit; screen tail: {self.screen.text[-800:]!r}"
        if self.error is not None:
            raise self.error
        return self.status

    def stop(self) -> None:
        if self.thread.is_alive():
            self.type("\x03")  # Ctrl-C
            self.thread.join(WAIT)
        self._pipe.__exit__(None, None, None)


@pytest.fixture
def line_ui(chat):
    started: list[Tui] = []

    def start(name: str = "alice", colour: bool = True) -> Tui:
        t = Tui(chat.port, name, colour)
        started.append(t)
        t.screen.wait_text(f"Connected as {name}")
        return t

    yield start
    for t in started:
        t.stop()


def messages_from(proc: Proc, sender: str) -> list[dict]:
    events = (json.loads(line) for line in proc.lines["out"])
    return [e for e in events if e["type"] == "message" and e["sender"] == sender]


def test_half_typed_line_survives_a_burst(chat, line_ui):
    chat.server()
    alice = line_ui()
    bob = chat.client("bob", "--json")
    alice.screen.wait_text("bob joined")
    alice.type("hello wor")
    alice.screen.wait_for(lambda: alice.buffer == "hello wor", "the half-typed line")
    bob.send(*(f"burst {i:02d}" for i in range(50)))
    alice.screen.wait_text("<bob> burst 49")
    assert alice.buffer == "hello wor"
    # the prompt is drawn again below the burst, with the line as typed
    alice.screen.wait_for(lambda: "#general> hello wor" in alice.screen.text.rsplit("burst 49", 1)[1],
                          "the prompt redrawn with the half-typed line")
    text = alice.screen.text
    assert [int(n) for n in re.findall(r"<bob> burst (\d\d)", text)] == list(range(50))
    alice.type("ld\r")
    bob.expect('"sender": "alice", "text": "hello world"')
    alice.screen.wait_text("<alice> hello world")
    alice.type("exit\r")
    assert alice.finish() == 0
    bob.expect('"name": "alice", "event": "quit"')
    assert [m["text"] for m in messages_from(bob, "alice")] == ["hello world"]


def test_mention_rings_the_bell_and_other_lines_do_not(chat, line_ui):
    chat.server()
    alice = line_ui()
    bob = chat.client("bob")
    alice.screen.wait_text("bob joined")
    bob.send("alicefoo: not you", "mail bob@alice.example", "marker one")
    alice.screen.wait_text("<bob> marker one")
    assert "\a" not in alice.screen.raw
    bob.send("@alice look at this")
    alice.screen.wait_text("<bob> @alice look at this")
    alice.screen.wait_for(lambda: "\a" in alice.screen.raw, "the bell")
    before = alice.screen.raw.count("\a")
    bob.send("alice: and this")
    alice.screen.wait_text("<bob> alice: and this")
    alice.screen.wait_for(lambda: alice.screen.raw.count("\a") > before, "a second bell")
    alice.type("alice: talking to myself\r")
    alice.screen.wait_text("<alice> alice: talking to myself")
    bob.send("marker two")
    alice.screen.wait_text("<bob> marker two")
    assert alice.screen.raw.count("\a") == before + 1  # our own line did not ring


def test_commands(chat, line_ui):
    chat.server()
    alice = line_ui()
    bob = chat.client("bob", "--json")
    alice.screen.wait_text("bob joined")
    alice.type("/bogus stuff\r")
    alice.screen.wait_text("unknown command /bogus")
    alice.type("/help\r")
    alice.screen.wait_text("Keys: Up/Down")
    for command in ("/join", "/part", "/rooms", "/who", "/me", "/quit", "exit"):
        assert command in alice.screen.text
    alice.type("/me waves\r")
    alice.screen.wait_text("* alice waves")
    alice.type("/join #dev\r")
    alice.screen.wait_text("#dev -- alice joined")
    alice.screen.wait_for(lambda: "#dev>" in alice.screen.text.rsplit("alice joined", 1)[1], "the #dev prompt")
    alice.type("/who\r")
    alice.screen.wait_text("#dev: alice")
    alice.screen.wait_text("#general: alice, bob")
    alice.type("/rooms\r")
    alice.screen.wait_text("#dev (1)")
    alice.type("//slash in #dev\r")
    alice.screen.wait_text("#dev <alice> /slash in #dev")
    alice.type("/part #dev\r")
    alice.screen.wait_text("you left #dev; now in #general")
    alice.type("back in general\r")
    bob.expect('"text": "back in general"')
    alice.type("/quit\r")
    assert alice.finish() == 0
    # nothing was sent for the unknown command or /help: bob saw only the action and the last line
    assert [(m["text"], m["action"]) for m in messages_from(bob, "alice")] == [
        ("waves", True), ("back in general", False)]


def test_input_history_with_up_arrow(chat, line_ui):
    chat.server()
    alice = line_ui()
    alice.type("first line\r")
    alice.screen.wait_text("<alice> first line")
    alice.type("\x1b[A")  # Up
    alice.screen.wait_for(lambda: alice.buffer == "first line", "the recalled line")
    alice.type(" again\r")
    alice.screen.wait_text("<alice> first line again")
    alice.type("\x04")  # Ctrl-D on an empty line leaves
    assert alice.finish() == 0


def test_ctrl_c_leaves_with_status_0(chat, line_ui):
    chat.server()
    watcher = chat.client("watcher")
    alice = line_ui()
    watcher.expect("alice joined")
    alice.type("half a line\x03")
    assert alice.finish() == 0
    watcher.expect("-- alice left$")


def test_connection_state_in_toolbar_across_a_server_restart(chat, line_ui):
    server = chat.server()
    alice = line_ui()
    alice.screen.wait_text(" alice · #general · connected")
    server.signal(9)
    server.wait()
    alice.screen.wait_text(" alice · #general · connection lost, retrying…")
    alice.screen.wait_text("(offline) #general>")  # the prompt says so too, for terminals with no toolbar
    chat.server()
    alice.screen.wait_text(" alice · #general · reconnected")
    alice.type("exit\r")
    assert alice.finish() == 0


def test_wide_characters_and_emoji_are_shown_intact(chat, line_ui):
    chat.server()
    alice = line_ui()
    bob = chat.client("bob")
    alice.screen.wait_text("bob joined")
    bob.send("日本語 and 🎉 emoji")
    alice.screen.wait_text("<bob> 日本語 and 🎉 emoji")
    alice.type("你好 👋\r")
    alice.screen.wait_text("<alice> 你好 👋")
    bob.expect("<alice> 你好 👋$")


# -- formatting and the fatal path, without a server


class StubClient:
    """Just enough of Client for ChatUI: canned events, no sockets."""

    name = "alice"
    room = "#general"
    connected = True
    unacknowledged = 0

    def __init__(self, found: list[ev.Event]) -> None:
        self.found = found
        self.closed = False

    def poll(self, timeout: float = 0.0, fds: tuple[int, ...] = ()) -> tuple[list[ev.Event], list[int]]:
        found, self.found = self.found, []
        return found, []

    def drain(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def _message(sender: str, text: str, **kw) -> ev.Message:
    return ev.Message(room="#general", seq=1, ts=0.0, sender=sender, text=text, **kw)


def _render(colour: bool, found: list[ev.Event]) -> str:
    screen = Screen()
    ui = ChatUI(StubClient([]), output=vt100(screen), colour=colour)
    fragments, _ = ui.format_events(found)
    ui._print_now(fragments)
    return screen.raw


def test_fatal_error_ends_the_ui_with_status_1():
    screen = Screen()
    client = StubClient([ev.Connected("alice", "hi"), ev.Error("name_taken", "name 'alice' is already taken",
                                                               fatal=True)])
    with create_pipe_input() as pipe:
        ui = ChatUI(client, input=pipe, output=vt100(screen), colour=False)
        assert ui.run() == 1
    assert "ERROR: name 'alice' is already taken" in ESCAPES.sub("", screen.raw)
    assert client.closed


def test_nick_colours_are_stable_and_own_name_and_mentions_stand_out():
    ui = ChatUI(StubClient([]), colour=True)
    bob1, _ = ui.message_fragments(_message("bob", "hi"))
    bob2, _ = ui.message_fragments(_message("bob", "again"))
    assert bob1[2][0] == bob2[2][0] and bob1[2][0].startswith("class:nick.")
    own, mentioned = ui.message_fragments(_message("alice", "@alice me", own=True))
    assert "class:own" in own[2][0] and not mentioned
    line, mentioned = ui.message_fragments(_message("bob", "@alice look"))
    assert mentioned and line[4][0] == "class:mention"
    _, bell = ui.format_events([_message("bob", "@alice old news", history=True)])
    assert not bell  # replayed history never rings


def test_colour_and_no_color(monkeypatch):
    found = [_message("bob", "hi"), _message("alice", "mine", own=True), ev.Presence("#general", "bob", "join", 0),
             ev.Error("x", "bad")]
    assert COLOUR_CODE.search(_render(True, found))
    monkeypatch.setenv("NO_COLOR", "1")
    screen = Screen()
    ui = ChatUI(StubClient([]), output=vt100(screen))
    assert not ui.colour
    ui._print_now(ui.format_events(found)[0])
    assert not COLOUR_CODE.search(screen.raw), repr(screen.raw)
    assert "<bob> hi" in ESCAPES.sub("", screen.raw)
