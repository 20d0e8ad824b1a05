"""The full-screen client driven by Textual's Pilot against a real server process, and its snapshots.

Each test runs its scenario with ``asyncio.run`` (bounded as a whole): the app and its AsyncClient share
that loop. Most tests share one server (``--rate 0``: rooms are filled quickly; a room and names of their
own per test); the throttling and restart tests start their own. Waits are bounded polls of the app's
state or screen. The snapshot tests use a scripted link instead of a server, a fixed clock and UTC, so the
screen is the same on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import WAIT, Chat, one_server

from zmqchat import events as ev
from zmqchat.client.aio import AsyncClient
from zmqchat.tui.app import ChatApp
from zmqchat.tui.link import ClientLink, Said
from zmqchat.tui.state import Line
from zmqchat.tui.widgets import ChatInput, ConfirmScreen, MessageView, PeopleList, SearchScreen

BOUND = 40.0  # seconds: the most one scenario may take before it fails
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from one_server(tmp_path_factory, "tui", "--rate", "0", "--motd", "hello from the tui test")


class Names:
    """Rooms and names no other test on the shared server uses."""

    def __init__(self) -> None:
        self.n = next(_ids)

    def __call__(self, base: str) -> str:
        return f"{base}{self.n}"

    def room(self, base: str = "room") -> str:
        return f"#{base}{self.n}"


@pytest.fixture
def names() -> Names:
    return Names()


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario, BOUND))


def screen(app: ChatApp) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def until(pilot, check: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Wait, re-checking between the app's turns, until ``check()`` holds; fail with the screen if not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}; the screen:\n{screen(pilot.app)}")
        await pilot.pause(0.02)


async def until_on_screen(pilot, text: str, timeout: float = WAIT) -> None:
    await until(pilot, lambda: text in screen(pilot.app), repr(text), timeout)


async def type_line(pilot, text: str, enter: bool = True) -> None:
    """Type ``text`` at the cursor (pasted into the input in one go: Pilot's per-key presses wait for idle,
    which costs tens of ms a key), then press Enter."""
    pilot.app.query_one(ChatInput).insert_text_at_cursor(text)
    if enter:
        await pilot.press("enter")
    else:
        await pilot.pause()


@contextlib.asynccontextmanager
async def full_screen(port: int, name: str, rooms: list[str], size=(120, 40)) -> AsyncIterator[tuple[ChatApp, object]]:
    """A connected full-screen client (its bells counted in ``app.bells``), closed at the end."""
    client = AsyncClient(name, port=port, rooms=rooms, connect_timeout=WAIT)
    await client.connect()
    app = ChatApp(ClientLink(client), dark=True)
    app.bells = 0

    def bell() -> None:
        app.bells += 1

    app.bell = bell
    try:
        async with app.run_test(size=size) as pilot:
            yield app, pilot
    finally:
        await client.close(linger=0.5)


@contextlib.asynccontextmanager
async def other(port: int, name: str, rooms: list[str]) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(name, port=port, rooms=rooms, connect_timeout=WAIT) as client:
        yield client


def lines_of(app: ChatApp, room: str) -> list[Line]:
    return app.state.rooms[room].window.lines


def texts(app: ChatApp, room: str, sender: str) -> list[str]:
    return [line.text for line in lines_of(app, room) if line.kind == "message" and line.sender == sender]


async def fill(client: AsyncClient, room: str, count: int, word: str = "filler") -> None:
    for i in range(count):
        await client.say(f"{word} {i + 1:03d}", room=room)
    assert await client.drain(WAIT)


# -- against a real server


def test_two_people_chat_and_the_counts_rise_and_clear(server, names):
    general, side = names.room("general"), names.room("side")

    async def scenario():
        async with full_screen(server.port, names("alice"), [general, side]) as (app, pilot), \
                other(server.port, names("bob"), [general, side]) as bob:
            await until(pilot, lambda: names("bob") in app.state.rooms[general].people.names, "bob in the people")
            await until_on_screen(pilot, names("bob"))
            await type_line(pilot, "hello bob")
            got = await next_message(bob, "hello bob")
            assert got.sender == names("alice")
            await until(pilot, lambda: app.state.latency is not None, "the echo")
            mine = [line for line in lines_of(app, general) if line.text == "hello bob"]
            assert len(mine) == 1 and mine[0].state == "" and mine[0].seq == got.seq  # sending -> sent
            await until_on_screen(pilot, "echo ")
            await bob.say("in the side room", room=side)
            await bob.say(f"@{names('alice')} look here", room=side)
            view = app.state.rooms[side]
            await until(pilot, lambda: (view.unread, view.mentions) == (2, 1), "2 unread, 1 mention")
            assert app.bells == 1  # the mention rang, the other line did not
            await until_on_screen(pilot, "2 @1")
            await pilot.press("alt+2")  # view the room: its counts clear
            assert app.state.current == side and (view.unread, view.mentions) == (0, 0)
            await until_on_screen(pilot, f"<{names('bob')}> @{names('alice')} look here")
            await pilot.press("ctrl+p")  # back to general; then bob writes in side again
            assert app.state.current == general
            await bob.say("while you were away", room=side)
            await until(pilot, lambda: view.unread == 1, "1 unread")
            await pilot.press("ctrl+n")
            assert app.state.current == side and view.unread == 0
            await until_on_screen(pilot, "new messages")  # the marker, where we stopped reading
            rows = screen(app).splitlines()
            at = next(i for i, row in enumerate(rows) if "new messages" in row)
            assert "look here" in rows[at - 1] and "while you were away" in rows[at + 1]
            await bob.say("hi again", room=general)
            await pilot.click("#rooms", offset=(2, 0))  # a click on the first room
            assert app.state.current == general
            await until_on_screen(pilot, "hi again")

    run(scenario())


async def next_message(client: AsyncClient, text: str) -> ev.Message:
    async for event in client.events(WAIT):
        if isinstance(event, ev.Message) and event.text == text:
            return event
    pytest.fail(f"{client.name} never got {text!r}")


def test_typing_survives_a_burst_and_completion_and_history_work(server, names):
    room = names.room()

    async def scenario():
        async with full_screen(server.port, names("alice"), [room]) as (app, pilot), \
                other(server.port, names("bob"), [room]) as bob:
            box = app.query_one(ChatInput)
            await until(pilot, lambda: names("bob") in app.state.rooms[room].people.names, "bob in the people")
            await type_line(pilot, "hello wor", enter=False)
            await fill(bob, room, 300, "burst")
            await until(pilot, lambda: "burst 300" in texts(app, room, names("bob")), "the burst")
            assert box.value == "hello wor" and box.cursor_position == len("hello wor")
            assert texts(app, room, names("bob")) == [f"burst {i:03d}" for i in range(1, 301)]
            await type_line(pilot, "ld")
            await until(pilot, lambda: "hello world" in texts(app, room, names("alice")), "our line")
            await pilot.press("up")
            assert box.value == "hello world"
            await pilot.press("ctrl+u")
            await type_line(pilot, names("bob")[:2], enter=False)
            await pilot.press("tab")
            assert box.value == f"{names('bob')}: "
            await pilot.press("ctrl+u")
            await type_line(pilot, "/jo", enter=False)
            await pilot.press("tab")
            assert box.value == "/join "
            await type_line(pilot, room[:3], enter=False)
            await pilot.press("tab")
            assert box.value == f"/join {room} "
            await pilot.press("ctrl+u")
            await type_line(pilot, "/topic our topic here")
            await until(pilot, lambda: "our topic here" in screen(app).splitlines()[0], "the topic in the header")
            await type_line(pilot, "/bogus")
            await until_on_screen(pilot, "unknown command /bogus")

    run(scenario())


def test_multi_line_paste_sends_lines_in_order_and_asks_above_ten(server, names):
    room = names.room()

    async def scenario():
        async with full_screen(server.port, names("alice"), [room]) as (app, pilot), \
                other(server.port, names("bob"), [room]) as bob:
            box = app.query_one(ChatInput)
            box.post_message(ev_paste("one\ntwo\n\nthree\n"))
            await until(pilot, lambda: texts(app, room, names("alice")) == ["one", "two", "three"], "3 lines")
            box.post_message(ev_paste("\n".join(f"line {i}" for i in range(12))))
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
            assert "12 lines" in screen(app)
            await pilot.press("y")
            want = ["one", "two", "three", *(f"line {i}" for i in range(12))]
            await until(pilot, lambda: texts(app, room, names("alice")) == want, "12 more lines")
            got = []
            async for event in bob.events(WAIT):
                if isinstance(event, ev.Message) and event.sender == names("alice"):
                    got.append(event.text)
                    if len(got) == len(want):
                        break
            assert got == want
            box.post_message(ev_paste("\n".join(f"no {i}" for i in range(11))))
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
            await pilot.press("n")
            assert "no 10" in box.value and "no 0" not in texts(app, room, names("alice"))

    run(scenario())


def ev_paste(text: str):
    from textual.events import Paste

    return Paste(text)


def test_page_up_loads_older_history_page_by_page_until_the_start(server, names):
    room = names.room()

    async def scenario():
        async with other(server.port, names("bob"), [room]) as bob:
            await fill(bob, room, 250)
            async with full_screen(server.port, names("alice"), [room]) as (app, pilot):
                view = app.state.rooms[room]
                await until(pilot, lambda: "filler 250" in texts(app, room, names("bob")), "the backlog")
                assert view.window.oldest_seq == 231  # the server's backlog: 20
                await type_line(pilot, "typing while", enter=False)
                asked = []
                page = app.link.commands.page

                def recording(room: str, before: int, limit: int) -> None:
                    asked.append((before, view.rows()[0].kind))  # what the top row says meanwhile
                    page(room, before, limit)

                app.link.commands.page = recording
                for _ in range(40):  # PageUp until the start; never more than 40 presses
                    if view.window.at_start:
                        break
                    await pilot.press("pageup")
                    await until(pilot, lambda: view.paging is None, "the page")
                assert view.window.at_start
                assert asked == [(231, "loading"), (131, "loading"), (31, "loading")]  # 3 pages, the last short
                assert [line.seq for line in view.window.lines if line.seq] == list(range(1, 251))
                assert app.query_one(ChatInput).value == "typing while"  # never blocked nor disturbed
                messages = app.query_one(MessageView)
                for _ in range(40):  # the pages came in above what we were reading: scroll up to them
                    if round(messages.scroll_y) == 0:
                        break
                    await pilot.press("pageup")
                await until_on_screen(pilot, f"the start of {room}")
                await until_on_screen(pilot, "filler 001")
                await pilot.press("pageup")
                assert view.paging is None and len(asked) == 3  # nothing older to ask for

    run(scenario())


def test_search_finds_a_message_and_enter_jumps_to_it(server, names):
    room, here = names.room("old"), names.room("here")
    needle = f"zebracrossing{names.n}"

    async def scenario():
        async with other(server.port, names("bob"), [room]) as bob:
            await fill(bob, room, 40, "before")
            await bob.say(f"the {needle} was here", room=room)
            await fill(bob, room, 200, "after")  # the hit is far outside what a join replays
            async with full_screen(server.port, names("alice"), [here, room]) as (app, pilot):
                await pilot.press("alt+1")
                await type_line(pilot, f"/search {needle}")
                await until(pilot, lambda: isinstance(app.screen, SearchScreen), "the results")
                assert needle in screen(app) and room in screen(app)
                await bob.say("said while the results are up", room=room)
                await until(pilot, lambda: "said while the results are up" in texts(app, room, names("bob")),
                            "a message taken and drawn behind the overlay")
                assert isinstance(app.screen, SearchScreen)
                await pilot.press("enter")
                await until(pilot, lambda: app.state.current == room, "the jump to the room")
                live = [line.text for line in app.state.rooms[room].live.lines]
                assert "said while the results are up" in live  # kept at the live end meanwhile
                view = app.state.rooms[room]
                await until(pilot, lambda: view.window.find(41) is not None, "the lines around it")
                seqs = [line.seq for line in view.window.lines if line.seq]
                assert seqs[0] <= 41 - 20 and seqs[-1] >= 41 + 20 and view.detached
                await until_on_screen(pilot, f"the {needle} was here")
                await until_on_screen(pilot, "before 040")
                await until_on_screen(pilot, "after 001")
                await pilot.press("ctrl+end")  # back to the present
                assert not view.detached
                await until_on_screen(pilot, "said while the results are up")

    run(scenario())


def test_a_narrow_terminal_hides_the_people_list(server, names):
    room = names.room()

    async def scenario():
        async with full_screen(server.port, names("alice"), [room], size=(80, 24)) as (app, pilot):
            await until_on_screen(pilot, "Connected as")
            assert not app.query_one(PeopleList).display
            await pilot.resize_terminal(120, 40)
            await until(pilot, lambda: app.query_one(PeopleList).display, "the people list")
            await until(pilot, lambda: names("alice") in app.state.rooms[room].people.names, "ourselves")
            await until_on_screen(pilot, "1 here")
            await pilot.resize_terminal(99, 30)
            await until(pilot, lambda: not app.query_one(PeopleList).display, "no people list")

    run(scenario())


def test_own_messages_wait_when_throttled_and_fail_when_refused(tmp_path, names):
    chat = Chat(tmp_path)
    chat.server("--rate", "4", "--burst", "3")
    room = names.room()

    async def scenario():
        async with full_screen(chat.port, names("alice"), [room]) as (app, pilot), \
                other(chat.port, names("bob"), [room]) as bob:
            seen: set[str] = set()

            def states() -> set[str]:
                seen.update(line.state for line in lines_of(app, room) if line.own)
                return seen

            for i in range(8):
                app.run_command(f"quick {i}")
            await until(pilot, lambda: "waiting" in states(), "a message held back (waiting)")
            await until_on_screen(pilot, "(waiting: sending too fast)")
            assert "sending" in seen
            await until(pilot, lambda: texts(app, room, names("alice")) == [f"quick {i}" for i in range(8)]
                        and not app.state.pending, "all eight delivered", timeout=15)
            assert all(line.state == "" for line in lines_of(app, room) if line.own)
            got = []
            async for event in bob.events(WAIT):
                if isinstance(event, ev.Message) and event.sender == names("alice"):
                    got.append(event.text)
                    if len(got) == 8:
                        break
            assert got == [f"quick {i}" for i in range(8)]  # in order
            app.run_command("x" * (app.link.client.session.max_text_bytes + 1))  # refused by our own checks
            await until_on_screen(pilot, "✗ not sent: message too long")
            app.say_lines(["   "])  # passes our checks (only commands skip blank lines); the server refuses it
            await until(pilot, lambda: any(line.state == "failed" and "empty" in line.reason
                                           for line in lines_of(app, room)), "the server's refusal")
            await until_on_screen(pilot, "✗ not sent: empty message")

    try:
        run(scenario())
    finally:
        chat.stop_all()


def test_server_killed_and_restarted_the_status_bar_says_so_and_we_catch_up(tmp_path, names):
    chat = Chat(tmp_path)
    server = chat.server()
    room = names.room()

    async def scenario():
        async with full_screen(chat.port, names("alice"), [room]) as (app, pilot):
            await until_on_screen(pilot, f"{names('alice')} · connected")
            server.signal(9)
            await asyncio.to_thread(server.wait)
            await until_on_screen(pilot, "connection lost, retrying…")
            await type_line(pilot, "said while away")
            assert [line.state for line in lines_of(app, room) if line.text == "said while away"] == ["sending"]
            await asyncio.to_thread(chat.server)
            await until_on_screen(pilot, f"{names('alice')} · reconnected")
            await until(pilot, lambda: not app.state.pending, "our message delivered after all")
            async with other(chat.port, names("bob"), [room]) as bob:
                await bob.say("after the restart", room=room)
                await until(pilot, lambda: "after the restart" in texts(app, room, names("bob")), "bob's line")
            assert texts(app, room, names("alice")) == ["said while away"]

    try:
        run(scenario())
    finally:
        chat.stop_all()


# -- snapshots: a scripted link, a fixed clock, UTC


T0 = 1_767_268_800.0  # 2026-01-01 12:00:00 UTC


class ScriptedCommands:
    """A ChatClient that records what it is asked and answers nothing (the snapshots need no server)."""

    def __init__(self, link: ScriptedLink) -> None:
        self.link = link
        self.said: list[Said] = []
        self.user_whos = 0
        self.count = 0

    @property
    def room(self) -> str:
        return self.link.current

    def take_said(self) -> list[Said]:
        said, self.said = self.said, []
        return said

    def say(self, text: str, room: str | None = None, action: bool = False) -> str:
        self.count += 1
        mid = f"s.{self.count}"
        self.said.append(Said(room or self.room, text, action, mid=mid))
        self.link.states[mid] = "sending"
        return mid

    def join(self, room: str) -> str:
        if room not in self.link.rooms:
            self.link.rooms.append(room)
        self.link.current = room
        return room

    def part(self, room: str | None = None) -> str:
        return room or self.room

    def who(self, room: str = "") -> None:
        self.user_whos += 1

    def auto_who(self, room: str) -> None:
        pass

    def rooms(self) -> None: ...
    def stats(self) -> None: ...
    def history(self, count: int = 20, room: str | None = None) -> None: ...
    def page(self, room: str, before: int, limit: int) -> None: ...
    def set_topic(self, text: str, room: str | None = None) -> None: ...

    def search(self, query: str, sender: str = "", room: str = "", limit: int = 20) -> str:
        return "r1"

    def topic(self, room: str | None = None) -> ev.Topic | None:
        return self.link.topics.get(room or self.room)


class ScriptedLink:
    """A Link whose events are given by the test."""

    def __init__(self, batches: list[list[ev.Event]], rooms: list[str]) -> None:
        self.name = "alice"
        self.server = "tcp://127.0.0.1:4444"
        self.rooms = rooms
        self.current = rooms[0]
        self.queue = list(batches)  # one batch per poll
        self.commands = ScriptedCommands(self)
        self.topics: dict[str, ev.Topic] = {}
        self.states: dict[str, str] = {}
        self.news = asyncio.Event()

    def joined(self) -> list[str]:
        return list(self.rooms)

    def current_room(self) -> str:
        return self.current

    def message_state(self, mid: str) -> str:
        return self.states.get(mid, "")

    @property
    def unacknowledged(self) -> int:
        return 0

    async def poll(self, timeout: float) -> list[ev.Event]:
        if not self.queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.news.wait(), timeout)
            self.news.clear()
        return self.queue.pop(0) if self.queue else []

    async def drain(self, timeout: float) -> bool:
        return True

    async def close(self) -> None:
        pass


def scripted_chat() -> tuple[ChatApp, ScriptedLink]:
    def at(minutes: float) -> float:
        return T0 + minutes * 60

    topic = ev.Topic("#general", "release day: ship 2.0 by Friday", "carol", at(-600))
    first = [ev.Connected("alice", "welcome to the snapshot server"), ev.Presence("#general", "alice", "join", at(0)),
             topic]
    found = [ev.Who({"#general": ["alice", "bob", "carol", "dave", "日本"]})]  # the answer to our join's who
    found += [ev.Message("#general", seq, at(seq - 1500), sender, text, history=True)
              for seq, sender, text in ((1, "carol", "yesterday's talk is styled apart"),
                                        (2, "bob", "see https://example.com/notes for the plan"))]
    found += [ev.Message("#general", 3, at(1), "bob", "good morning, a long line that wraps around the message "
                         "area because it goes on and on well past the width of an 80 column terminal"),
              ev.Message("#general", 4, at(2), "carol", "waves", action=True),
              ev.Message("#general", 5, at(3), "dave", "@alice can you look at the deploy?"),
              ev.Message("#general", 6, at(4), "日本", "wide characters 日本語 and emoji 🎉 keep the layout"),
              ev.Message("#dev", 1, at(5), "bob", "build is green"),
              ev.Message("#dev", 2, at(6), "bob", "@alice review please")]
    link = ScriptedLink([first, found], ["#general", "#dev", "#random"])
    link.topics["#general"] = topic
    app = ChatApp(link, clock=lambda: 100.0, wall_clock=lambda: at(0), dark=True)
    return app, link


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def settle(pilot) -> None:
    app: ChatApp = pilot.app
    await until(pilot, lambda: not app.link.queue and app.state.rooms["#dev"].mentions == 1, "the script")
    link: ScriptedLink = app.link
    app.run_command("on my way")  # shown as sending: the script never echoes it
    await pilot.press(*"typing ")
    await pilot.pause()
    assert link.commands.said == []


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_snapshot(snap_compare, utc, size):
    app, _ = scripted_chat()
    assert snap_compare(app, terminal_size=size, run_before=settle)


# -- keys and flags


def test_alt_digits_from_a_terminal_reach_the_app_as_alt_keys():
    from textual._xterm_parser import XTermParser

    ChatApp(ScriptedLink([], ["#a"]))
    parser = XTermParser()
    keys = [*parser.feed("\x1b2"), *parser.feed("")]
    assert [(key.key, key.character) for key in keys] == [("alt+2", "2")]


@pytest.mark.parametrize(("argv", "environ", "ui"), [
    ([], {}, "full"), (["--line"], {}, "line"), (["--plain"], {}, "plain"), (["--ui", "line"], {}, "line"),
    (["--ui", "full", "--plain"], {}, "plain"), ([], {"ZMQCHAT_UI": "line"}, "line"),
    (["--ui", "full"], {"ZMQCHAT_UI": "plain"}, "full"), ([], {"ZMQCHAT_PLAIN": "1"}, "plain"),
])
def test_the_ui_flag_its_short_forms_and_environment(monkeypatch, argv, environ, ui):
    from zmqchat.cli.client import build_parser, chosen_ui

    for key in ("ZMQCHAT_UI", "ZMQCHAT_PLAIN", "ZMQCHAT_LINE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    parser = build_parser()
    assert chosen_ui(parser.parse_args(["--name", "x", *argv]), parser) == ui


def test_a_bad_ui_in_the_environment_is_a_clear_error(monkeypatch, capsys):
    from zmqchat.cli.client import main

    monkeypatch.setenv("ZMQCHAT_UI", "fancy")
    with pytest.raises(SystemExit) as exit:
        main(["--name", "x"])
    assert exit.value.code == 2 and "ZMQCHAT_UI='fancy' is not one of full, line, plain" in capsys.readouterr().err


def test_no_color_and_a_light_terminal(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLORFGBG", "0;15")  # black on white, as rxvt and Konsole say
    app = ChatApp(ScriptedLink([], ["#a"]))
    assert app.no_color and app.theme == "textual-light"  # Textual then renders in monochrome
    monkeypatch.setenv("COLORFGBG", "15;0")
    assert ChatApp(ScriptedLink([], ["#a"])).theme != "textual-light"
